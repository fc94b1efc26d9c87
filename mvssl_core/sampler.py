"""The trainer's data order: the global-batch sampler, the keyed data set and the DataLoader built on them.

Same data whatever the world size. :class:`GlobalBatchSampler` draws one permutation of the data set
per epoch from ``(seed, epoch)``; optimizer step ``s`` uses global batch ``perm[s*B:(s+1)*B]``, cut
into ``accumulate`` consecutive micro-batches, each cut into ``world_size`` consecutive slices, one
per rank. The all-gather of the estimators concatenates the slices in rank order, so every coupled
loss sees the same micro-batch, in the same order, as a single process (the 2-process test checks
equal losses and parameters). Each item's views are drawn under the seed ``(seed, epoch, index)``
(:class:`mvssl_core.data.MultiViewDataset`), so they do not depend on workers, processes or resuming.

On CPU DataLoader workers run with one thread each (torchvision's v2 colour jitter is slow with many
threads); ``num_workers >= 1`` keeps augmentation off the training thread. The trainer builds its
DataLoader (:func:`build_loader`) once per run, its workers persistent (no start-up stall at each epoch);
the sampler's batches are ``(epoch, index)`` keys (:class:`KeyedDataset`), so a worker draws each epoch's
views from the right seed. The DataLoader draws its workers' seed from its own generator, so the global
torch RNG at step k of a resumed run is that of the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from mvssl_core import preempt
from mvssl_core.config import ConfigError
from mvssl_core.gpu_views import JpegBytes, TensorImages, collate_bytes
from mvssl_core.views import item_seed

__all__ = [
    "GlobalBatchSampler",
    "KeyedDataset",
    "LOADER_TIMEOUT_S",
    "WORKER_TASK",
    "join_pieces",
    "build_loader",
    "fill_batches",
    "next_batch",
    "end_workers",
    "worker_init",
    "one_thread",
]

LOADER_TIMEOUT_S = 600
"""Seconds the trainer's DataLoader waits for a worker's batch (with workers): a worker that dies or drops a
batch ends the run with torch's "DataLoader timed out" instead of a wait without end."""


WORKER_TASK = 64
"""Most samples in one loader item (one worker's task): a rank's micro-batch is read as ``ceil(per_rank / 64)``
items that the training process joins (:func:`next_batch`, :func:`join_pieces`). With ImageNet's 512 per GPU and
8 workers, the first micro-batch is built by all workers in parallel (not one worker's 512 samples: 18-40 s at
36-77 ms of CPU a sample), and a loader's prefetch holds 2 items per worker, not 2 micro-batches per worker (the
CPU pipeline's float views in /dev/shm). The views are drawn per item, so the pieces change no number."""


class GlobalBatchSampler:
    """This rank's micro-batches of a seeded per-epoch shuffle; the same global batches for any world size.

    Step ``s`` of an epoch uses ``perm[s*B:(s+1)*B]`` (B = ``batch_size``, the global batch),
    split into ``accumulate`` consecutive micro-batches, each split into ``world_size`` consecutive
    slices; rank r gets slice r. The incomplete last batch is dropped. Like
    ``DistributedSampler``, call :meth:`set_epoch` before each epoch; ``start_step`` skips the
    epoch's first steps (resuming mid-epoch). The sampler runs in the training process, so a DataLoader
    built once with persistent workers follows :meth:`set_epoch`; with ``with_epoch`` each item of a
    batch is an ``(epoch, index)`` pair, so the epoch reaches the workers with the indices
    (:class:`KeyedDataset`), where a ``set_epoch`` of the data set in the training process would not.

    Args:
        n: size of the data set.
        batch_size: the global batch B.
        accumulate: micro-batches per step.
        world_size, rank: the process group's size and this process's rank.
        seed: the run's seed (the epoch's permutation is drawn from ``(seed, epoch)``).
        shuffle: shuffle (else the data set's order).
        with_epoch: yield ``[(epoch, index), ...]`` instead of ``[index, ...]``.
        piece: yield each micro-batch of this rank as ``pieces`` consecutive lists of at most ``piece`` items
            (the loader's tasks; the trainer joins them, :func:`next_batch`); default: whole micro-batches.
    """

    def __init__(self, n: int, batch_size: int, *, accumulate: int = 1, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, with_epoch: bool = False, piece: int | None = None) -> None:
        if batch_size % (accumulate * world_size):
            raise ConfigError(
                f"batch_size ({batch_size}) must be a multiple of accumulate x processes ({accumulate} x {world_size})"
            )
        if batch_size // (accumulate * world_size) < 1:
            raise ConfigError("batch_size / (accumulate x processes) must be >= 1")
        if n < batch_size:
            raise ConfigError(f"the data set has {n} items, fewer than batch_size ({batch_size})")
        self.n, self.batch_size, self.accumulate = n, batch_size, accumulate
        self.world_size, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.with_epoch = with_epoch
        self.micro = batch_size // accumulate
        self.per_rank = self.micro // world_size
        self.steps_per_epoch = n // batch_size
        if piece is not None and (isinstance(piece, bool) or not isinstance(piece, int) or piece < 1):
            raise ValueError(f"piece must be an int >= 1 or None, got {piece!r}")
        self.piece = self.per_rank if piece is None else min(piece, self.per_rank)
        self.pieces = -(-self.per_rank // self.piece)  # loader items per micro-batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = int(epoch), int(start_step)

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        gen = torch.Generator().manual_seed(item_seed(self.seed, epoch, -1))
        return torch.randperm(self.n, generator=gen)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulate * self.pieces

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        epoch, perm = self.epoch, self.permutation(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            for m in range(self.accumulate):
                start = step * self.batch_size + m * self.micro + self.rank * self.per_rank
                indices = perm[start : start + self.per_rank].tolist()
                keys = [(epoch, i) for i in indices] if self.with_epoch else indices
                for first in range(0, self.per_rank, self.piece):
                    yield keys[first : first + self.piece]


class KeyedDataset(Dataset):
    """The training set read by ``(epoch, index)`` keys: items ``(views, label, index)`` (DeepCluster needs
    the samples' indices).

    The epoch comes with each key (:class:`GlobalBatchSampler` ``with_epoch``) and is set on this process's
    copy of the data set before the item is read: a worker that lives for the whole run (persistent workers)
    draws each epoch's views under ``item_seed(seed, epoch, index)``, as the training process would.
    ``dataset``: a :class:`~mvssl_core.data.MultiViewDataset` (items ``(views, label)``), or a
    :class:`~mvssl_core.gpu_views.JpegBytes` / :class:`~mvssl_core.gpu_views.TensorImages` (items
    ``(data, label, index)`` already; their views are drawn on the device, whatever the epoch).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.indexed = isinstance(dataset, (JpegBytes, TensorImages))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        self.dataset.set_epoch(epoch)
        if self.indexed:
            return self.dataset[index]
        views, label = self.dataset[index]
        return views, label, index


def worker_init(_: int) -> None:
    torch.set_num_threads(1)
    preempt.ignore_in_worker()  # torchrun signals the process group; the training process stops its workers


@contextlib.contextmanager
def one_thread(enabled: bool) -> Iterator[None]:
    """Load a batch in the main process with one intra-op thread (v2 colour jitter is slower with more)."""
    if not enabled:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_loader(dataset: Dataset, batch_sampler, *, seed: int, num_workers: int, pin_memory: bool,
                 persistent: bool) -> DataLoader:
    """A DataLoader of ``dataset`` read by the ``(epoch, index)`` keys of ``batch_sampler`` (:class:`KeyedDataset`).

    The workers' base seed comes from the loader's own generator, not the global one: a loader made at a
    mid-epoch resume would otherwise draw once more than the uninterrupted run (the views are seeded per
    item). With workers, they run :func:`worker_init` and a batch waits at most :data:`LOADER_TIMEOUT_S`;
    ``persistent`` keeps them alive across the sampler's passes (epochs).
    """
    return DataLoader(KeyedDataset(dataset), batch_sampler=batch_sampler,
                      collate_fn=collate_bytes if isinstance(dataset, JpegBytes) else None,
                      generator=torch.Generator().manual_seed(item_seed(seed, 0, -2)),
                      persistent_workers=persistent and num_workers > 0, num_workers=num_workers,
                      pin_memory=pin_memory, worker_init_fn=worker_init if num_workers > 0 else None,
                      timeout=LOADER_TIMEOUT_S if num_workers > 0 else 0)


def join_pieces(pieces: list) -> tuple:
    """One micro-batch ``(views, labels, indices)`` from the loader's items of its pieces, in order. ``views``:
    a list of view tensors (the CPU pipeline: each view's pieces concatenated), a tensor of images
    (:class:`~mvssl_core.gpu_views.TensorImages`) or a list of encoded files (:class:`~mvssl_core.gpu_views.
    JpegBytes`, whose file tensors differ in length: the lists are concatenated)."""
    if len(pieces) == 1:
        return pieces[0]
    views = [p[0] for p in pieces]
    if isinstance(views[0], torch.Tensor):
        joined = torch.cat(views)
    elif all(v.dim() == 1 and v.dtype == torch.uint8 for v in views[0]):  # encoded files
        joined = [f for v in views for f in v]
    else:
        joined = [torch.cat(parts) for parts in zip(*views)]
    return joined, torch.cat([p[1] for p in pieces]), torch.cat([p[2] for p in pieces])


def next_batch(batches: Iterator, step: int, pieces: int = 1):
    """The loader's next micro-batch, from its next ``pieces`` items (:func:`join_pieces`); a loader failure
    (a worker that timed out, died or raised) is raised again without the loader's frames, which would keep
    the loader and its workers alive with the traceback."""
    try:
        return join_pieces([next(batches) for _ in range(pieces)])
    except RuntimeError as e:
        failure = str(e).strip()
    del batches  # nor in this frame, which the new traceback holds
    raise RuntimeError(f"step {step}: the training data loader failed: {failure}")


def end_workers(before: set) -> None:
    """Kill the loader workers started since ``before`` (``multiprocessing.active_children()``) that are still
    alive once their loader is gone: a worker stuck in an item (the run then ends with the loader's timeout)
    ignores SIGTERM (:func:`mvssl_core.preempt.ignore_in_worker`), so torch's ``terminate`` leaves it running,
    and the interpreter's exit would wait for it without end."""
    for process in multiprocessing.active_children():
        if process not in before and process.daemon:
            process.kill()
            process.join(timeout=10)


def fill_batches(n: int, per_rank: int, world_size: int, rank: int) -> list[list[int]]:
    """Index batches of one pass over all ``n`` samples for ``rank``: every rank gets the same number of
    full batches (the last wraps around to the first samples), and together they cover every sample."""
    step = per_rank * world_size
    return [[(start + rank * per_rank + t) % n for t in range(per_rank)] for start in range(0, n, step)]

