"""The training loop: one loop for every method, on CPU, on 2 CPU processes (gloo) and on GPUs (NCCL).

``train(cfg)`` pre-trains ``cfg.method`` and writes, in the run's folder ``cfg.run_dir()``:

- ``config.yaml``: the full resolved configuration;
- ``metrics.jsonl``: one JSON line every ``log_every`` steps: step, epoch, lr, the method's
  :class:`~mvssl_core.methods.StepOutput` metrics (loss, entropy, reconstruction, collapse_std,
  effective_rank, discrete terms, ...), the online probe's loss and accuracy, and the step time;
- ``checkpoint.pt``: written atomically (temporary file + ``os.replace``) every
  ``checkpoint_every`` steps and at the end; loaded with ``torch.load(weights_only=True)``; it holds a
  sha256 of its content (every tensor's bytes, every key and value), checked on load: a flipped bit is a
  :class:`CheckpointError`, not a silently different run (checkpoints of the older format
  ``mvssl-checkpoint/1``, without a hash, load with a warning);
- ``results.json`` (:mod:`mvssl_core.results`): method, config, data, seed, provenance, the metrics
  over time and the final kNN / linear-probe accuracy (also written to ``cfg.results_file`` when set,
  resolved to an absolute path when the run starts, so that a later ``--resume`` or ``linear-eval`` run
  from another folder writes the same file).

One writer per run folder: the process that writes (rank 0) holds an OS lock on ``<run>/.run.lock``
(:mod:`mvssl_core.runlock`) for the whole run; a second ``pretrain`` or ``linear-eval`` on the folder is
refused at once, naming the holder's pid. The kernel releases the lock when its process ends, however.

Distributed runs. Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised with
NCCL on GPU and gloo on CPU, the method is built with ``distributed=True`` (its coupled losses and
estimators then run over the global batch) and wrapped in ``DistributedDataParallel`` with
``broadcast_buffers=False``; with ``model.sync_bn`` its BatchNorm layers first become ``nn.SyncBatchNorm``
(:func:`mvssl_core.dist.sync_batchnorm`: GPU runs only; one process or gloo on CPU keep plain BatchNorm).
Rank 0 writes every file.

Same data whatever the world size. :class:`GlobalBatchSampler` draws one permutation of the data set
per epoch from ``(seed, epoch)``; optimizer step ``s`` uses global batch ``perm[s*B:(s+1)*B]``, cut
into ``accumulate`` consecutive micro-batches, each cut into ``world_size`` consecutive slices, one
per rank. The all-gather of the estimators concatenates the slices in rank order, so every coupled
loss sees the same micro-batch, in the same order, as a single process (the 2-process test checks
equal losses and parameters). Each item's views are drawn under the seed ``(seed, epoch, index)``
(:class:`mvssl_core.data.MultiViewDataset`), so they do not depend on workers, processes or resuming.

Exact resume. The position in the data is a function of the step (epoch = step // steps per epoch,
the batch inside it = step % steps per epoch) and the learning rate is a function of the step, so
the checkpoint holds the step, the method's whole state (parameters and buffers: EMA teacher, DINO
centre, SwAV queue, DeepCluster memory bank and assignments), the optimizer state, the online
probe and its optimizer, the RNG states (torch, CUDA, numpy, python) as tensors, and the steps of the
metrics log's lines so far. The configuration is stored as a JSON string. On ``resume`` the metrics log is
checked (each line a JSON object with an integer step; its steps exactly those the checkpoint lists; the
same check on the whole log before ``results.json`` is written) and cut back to the checkpoint's step, so a
killed-and-resumed run ends with the same parameters and log as an uninterrupted one. The DataLoader draws
its workers' seed from its own generator, so the global torch RNG at step k of a resumed run is that of the
uninterrupted run (what a method with dropout would draw from); CUDA RNG states are restored for the
devices that exist. SIGTERM and SIGUSR1 (:mod:`mvssl_core.preempt`) stop the run after the step in progress,
the same step on every rank, with a checkpoint of that step: ``--resume`` then loses no step.

Gradient accumulation: the loss of each of the ``accumulate`` micro-batches is divided by
``accumulate``; DDP synchronises only on the last one; the optimizer steps and the method's
:meth:`after_optimizer_step` (EMA teachers) run once per real step.

GPU data pipeline (``data.gpu_pipeline``: true, or "auto" for an ImageFolder on CUDA): the workers only
read the JPEG files (:class:`mvssl_core.gpu_views.JpegBytes`); each micro-batch is decoded and augmented on
the device with the recipe of ``mvssl_core.views``, from a generator seeded by (seed, step, micro-batch,
rank): resuming stays exact, but the views then depend on the world size.

Per-step cost: the method's metrics (ER terms, effective rank, assignments) and the probe's values are
computed, gathered and copied to the host only on the steps that write a log line (every ``log_every``-th
and the last; the forward's ``metrics`` flag), the metrics of a step with one copy. Every step copies the
loss to the host once, checked finite on every rank with one all-reduce (``scripts/count_step_sync.py``
counts a step's collectives and host syncs with 2 processes). On CUDA ``torch.backends.cudnn.benchmark``
is on (as in ``scripts/bench_gpu.py``): cuDNN times its convolution algorithms at the first batch of each
shape and keeps the fastest, so the convolutions of a GPU run are not bitwise repeatable from run to run.

Precision: bf16 autocast and channels-last memory format on GPU only (``precision``,
``channels_last``). On CPU DataLoader workers run with one thread each (torchvision's v2 colour
jitter is slow with many threads); ``num_workers >= 1`` keeps augmentation off the training thread.
The DataLoader is built once per run, its workers persistent (no start-up stall at each epoch); the
sampler's batches are ``(epoch, index)`` keys, so a worker draws each epoch's views from the right seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mvssl_core import dist, preempt, results, runlock
from mvssl_core.atomic import atomic_write
from mvssl_core.backbones import build_backbone
from mvssl_core.config import ConfigError, RunConfig, from_dict, save_config, to_dict, validate
from mvssl_core.data import MultiViewDataset, build_dataset
from mvssl_core.gpu_views import GpuMultiView, JpegBytes, TensorImages, batch_generator, collate_bytes, decode_batch
from mvssl_core.methods import build_method
from mvssl_core.optim import LARS, param_groups, scaled_lr, set_lr, warmup_cosine
from mvssl_core.views import IMAGENET_NORMALIZE, build_views, eval_transform, item_seed

__all__ = [
    "train",
    "build_model",
    "build_train_set",
    "build_eval_sets",
    "evaluate_run",
    "CheckpointError",
    "DivergenceError",
    "MetricsLogError",
    "GlobalBatchSampler",
    "load_checkpoint",
    "save_checkpoint",
    "run_folder",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "RESULTS_NAME",
    "CONFIG_NAME",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mvssl-checkpoint/2"  # /2: a sha256 of the content ("sha256"), checked on load
_UNHASHED_FORMAT = "mvssl-checkpoint/1"  # written before content hashes: loaded with a warning
CHECKPOINT_NAME = "checkpoint.pt"
LOADER_TIMEOUT_S = 600
"""Seconds the trainer's DataLoader waits for a worker's batch (with workers): a worker that dies or drops a
batch ends the run with torch's "DataLoader timed out" instead of a wait without end."""
METRICS_NAME = "metrics.jsonl"
RESULTS_NAME = "results.json"
CONFIG_NAME = "config.yaml"

# recipe of each method family's views
_METHOD_VIEWS = {"simclr": "simclr", "byol": "byol", "dino": "dino", "swav": "swav", "deepcluster": "deepcluster"}
# configuration keys that may change on resume without changing the result
_RESUMABLE_CHANGES = {"num_workers", "progress", "log_every", "checkpoint_every", "out", "results_file", "device",
                      "eval"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not a checkpoint of this trainer."""


class DivergenceError(FloatingPointError):
    """A run diverged: its loss or its state (parameters, buffers such as BatchNorm statistics, optimizer state)
    is not finite, or the model failed its own input checks after training steps. No checkpoint with non-finite
    state is written: the last one written is intact. The command line prints it in one line (exit status 1)."""


class MetricsLogError(CheckpointError):
    """A run folder's ``metrics.jsonl`` is malformed, or its steps are not those its checkpoint expects."""


# ------------------------------------------------------------------------------------------------
# data


class GlobalBatchSampler:
    """This rank's micro-batches of a seeded per-epoch shuffle; the same global batches for any world size.

    Step ``s`` of an epoch uses ``perm[s*B:(s+1)*B]`` (B = ``batch_size``, the global batch),
    split into ``accumulate`` consecutive micro-batches, each split into ``world_size`` consecutive
    slices; rank r gets slice r. The incomplete last batch is dropped. Like
    ``DistributedSampler``, call :meth:`set_epoch` before each epoch; ``start_step`` skips the
    epoch's first steps (resuming mid-epoch). The sampler runs in the training process, so a DataLoader
    built once with persistent workers follows :meth:`set_epoch`; with ``with_epoch`` each item of a
    batch is an ``(epoch, index)`` pair, so the epoch reaches the workers with the indices
    (:class:`_WithIndex`), where a ``set_epoch`` of the data set in the training process would not.

    Args:
        n: size of the data set.
        batch_size: the global batch B.
        accumulate: micro-batches per step.
        world_size, rank: the process group's size and this process's rank.
        seed: the run's seed (the epoch's permutation is drawn from ``(seed, epoch)``).
        shuffle: shuffle (else the data set's order).
        with_epoch: yield ``[(epoch, index), ...]`` instead of ``[index, ...]``.
    """

    def __init__(self, n: int, batch_size: int, *, accumulate: int = 1, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, with_epoch: bool = False) -> None:
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
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = int(epoch), int(start_step)

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        gen = torch.Generator().manual_seed(item_seed(self.seed, epoch, -1))
        return torch.randperm(self.n, generator=gen)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulate

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        epoch, perm = self.epoch, self.permutation(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            for m in range(self.accumulate):
                start = step * self.batch_size + m * self.micro + self.rank * self.per_rank
                indices = perm[start : start + self.per_rank].tolist()
                yield [(epoch, i) for i in indices] if self.with_epoch else indices


class _WithIndex(Dataset):
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


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    preempt.ignore_in_worker()  # torchrun signals the process group; the training process stops its workers


@contextlib.contextmanager
def _one_thread(enabled: bool) -> Iterator[None]:
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


def _split(cfg: RunConfig, which: str) -> str | None:
    name = cfg.data.name
    if which == "train":
        if cfg.data.split is not None:
            return cfg.data.split
        return "train+unlabeled" if name == "stl10" else "train"
    if which == "eval_train":
        return cfg.data.eval_train_split or "train"
    return cfg.data.eval_split or ("val" if name == "imagefolder" else "test")


def _dataset_kwargs(cfg: RunConfig) -> dict:
    kw: dict[str, Any] = {"root": cfg.data.root, "download": cfg.data.download}
    if cfg.data.name in ("digits", "shapes"):
        kw["size"] = cfg.data.size
    if cfg.data.name == "shapes" and cfg.data.n is not None:
        kw["n"] = cfg.data.n
    kw.update(cfg.data.kwargs)
    return kw


def build_train_set(cfg: RunConfig, gpu_pipeline: bool = False) -> Dataset:
    """The pre-training data set with the method's views, seeded per item.

    With ``gpu_pipeline``, a :class:`~mvssl_core.gpu_views.JpegBytes` of undecoded files (an ImageFolder) or a
    :class:`~mvssl_core.gpu_views.TensorImages` of uint8 tensors (digits, shapes), whose ``views`` the training
    loop applies on the device, a batch at a time.
    """
    recipe = cfg.data.views or _METHOD_VIEWS[cfg.method.removesuffix("_er")]
    with _config_errors("data.view_kwargs"):
        views = build_views(recipe, cfg.data.size, **cfg.data.view_kwargs)
    if gpu_pipeline and cfg.data.name == "imagefolder":
        split = _split(cfg, "train")
        root = Path(cfg.data.root) if split is None else Path(cfg.data.root) / split
        return JpegBytes(root, views=GpuMultiView.from_cpu(views))
    with _config_errors("data"):
        base = build_dataset(cfg.data.name, split=_split(cfg, "train"), **_dataset_kwargs(cfg))
    if gpu_pipeline:  # digits, shapes: uint8 tensors in memory, views made in batches on the device
        return TensorImages(base, views=GpuMultiView.from_cpu(views))
    return MultiViewDataset(base, views, seed=cfg.seed)


@contextlib.contextmanager
def _config_errors(key: str) -> Iterator[None]:
    """Report a bad keyword argument or value of a part built from the config as a ConfigError on ``key``."""
    try:
        yield
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: {e}") from e


def build_eval_sets(cfg: RunConfig, name: str | None = None,
                    train_transform: Callable | None = None) -> tuple[Dataset, Dataset]:
    """The (train, test) sets of the offline evaluation, with the evaluation transform.

    ``train_transform`` replaces it on the training split (the linear-evaluation protocol augments).
    """
    t = eval_transform(cfg.data.size, normalize=cfg.data.view_kwargs.get("normalize", IMAGENET_NORMALIZE))
    kw = _dataset_kwargs(cfg)
    name = name or cfg.data.name
    train_split, test_split = _split(cfg, "eval_train"), _split(cfg, "eval")
    train_set = build_dataset(name, split=train_split, transform=t if train_transform is None else train_transform, **kw)
    test_set = build_dataset(name, split=test_split, transform=t, **kw)
    # Each split numbers its own sorted classes: with other class folders, a label would name another class
    # in the other split and every accuracy would be scored against shifted labels.
    train_classes, test_classes = getattr(train_set, "classes", None), getattr(test_set, "classes", None)
    if train_classes is not None and test_classes is not None and list(train_classes) != list(test_classes):
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise ConfigError(
            f"data.root {cfg.data.root}: the evaluation splits {train_split!r} and {test_split!r} must hold the "
            f"same classes (one label index for both); only in {train_split!r}: {only_train or 'none'}; only in "
            f"{test_split!r}: {only_test or 'none'}")
    return train_set, test_set


# ------------------------------------------------------------------------------------------------
# runtime


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    distributed: bool
    bf16: bool
    channels_last: bool
    owns_group: bool


def _use_gpu_pipeline(cfg: RunConfig, rt: Runtime) -> bool:
    if cfg.data.gpu_pipeline == "auto":
        return rt.device.type == "cuda" and cfg.data.name == "imagefolder"
    return bool(cfg.data.gpu_pipeline)


def _init_runtime(cfg: RunConfig) -> Runtime:
    """The device, precision and process group of this process (the group initialised under torchrun, with the
    timeout of :func:`mvssl_core.dist.process_group_timeout`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is available (use device: auto or cpu)")
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and not torch_dist.is_initialized():
        # a bounded wait (dist.process_group_timeout): a stopped rank ends the others' runs within minutes
        torch_dist.init_process_group(backend="nccl" if want_cuda else "gloo", timeout=dist.process_group_timeout())
        owns = True
    distributed = dist.is_distributed()
    on_gpu = device.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_gpu)
    if bf16 and not on_gpu:
        raise ConfigError("precision 'bf16' is for GPU runs; use precision: auto or fp32 on CPU")
    channels_last = on_gpu if cfg.channels_last is None else cfg.channels_last
    return Runtime(device, dist.rank(), dist.world_size(), distributed, bf16, channels_last, owns)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor([py_version, *py_state], dtype=torch.int64),
        "python_gauss": torch.tensor([math.nan if py_gauss is None else py_gauss], dtype=torch.float64),
    }


def _set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # one state per device visible when saved; a resume may see fewer devices (or others): restore
        # those that exist (set_rng_state_all would raise IndexError on the first device missing)
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    pos, has_gauss = state["numpy_pos"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    py = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:]), None if math.isnan(gauss) else gauss))


# ------------------------------------------------------------------------------------------------
# checkpoints


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def _feed(h: Any, obj: Any) -> None:
    """Feed ``obj`` (tensors, dicts, lists, tuples, scalars, strings) to the hash ``h``, with types and shapes."""
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{flat.dtype}{tuple(obj.shape)}:".encode())
        h.update(flat.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):  # optimizer states mix int and str keys
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for item in obj:
            _feed(h, item)
    else:  # None, bool, int, float (repr round-trips exactly), str, torch.dtype
        h.update(f"{type(obj).__name__}:{obj!r};".encode("utf-8", "surrogatepass"))


def _content_hash(state: dict) -> dict[str, str]:
    """sha256 of each entry of a checkpoint but ``sha256`` (the bytes of every tensor, every key and value)."""
    out = {}
    for key, value in state.items():
        if key != "sha256":
            h = hashlib.sha256()
            _feed(h, value)
            out[str(key)] = h.hexdigest()
    return out


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint atomically: a reader sees the old file or the new one, never half of one.

    The file holds ``state`` with ``format`` and ``sha256``, the hash of each entry's content that
    :func:`load_checkpoint` checks (a flipped bit inside a weight is an error, not a silently different run).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, **{k: v for k, v in state.items() if k not in ("format", "sha256")}}
    payload["sha256"] = _content_hash(payload)
    _atomic_torch_save(payload, path)
    return path


_CHECKPOINT_KEYS = ("format", "config", "step", "model", "optimizer", "rng")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` on the CPU and check its content hash.

    A checkpoint of format ``mvssl-checkpoint/1`` (written before content hashes) is loaded unverified, with
    a warning; the run's next checkpoint carries a hash.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is empty, truncated, corrupted (its content does not match its hash), or not
            a checkpoint of this trainer (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    restore = "delete it to start over, or restore it from a copy"
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {restore}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip errors, unpickling errors, truncated files: all mean "unreadable"
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"checkpoint {path} is unreadable or corrupted ({type(e).__name__}{': ' + first if first else ''}); "
            f"{restore}"
        ) from e
    if not isinstance(state, dict) or state.get("format") not in (CHECKPOINT_FORMAT, _UNHASHED_FORMAT):
        raise CheckpointError(f"{path} is not an mvssl checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the fields {missing}")
    if state["format"] == _UNHASHED_FORMAT:
        warnings.warn(f"checkpoint {path} has no content hash (format {_UNHASHED_FORMAT!r}): loaded unverified",
                      stacklevel=2)
    else:
        stored = state.get("sha256")
        if not isinstance(stored, dict):
            raise CheckpointError(f"checkpoint {path} is corrupted: its content hash (field 'sha256') is missing; "
                                  f"{restore}")
        actual = _content_hash(state)
        bad = sorted(k for k in set(actual) | set(stored) if actual.get(k) != stored.get(k))
        if bad:
            raise CheckpointError(
                f"checkpoint {path} is corrupted: the content of {', '.join(repr(k) for k in bad)} does not match "
                f"its sha256 (edited or damaged); {restore}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {path}: field 'step' must be an integer >= 0, got {step!r}")
    return state


def checkpoint_config(state: dict, source: str = "checkpoint") -> RunConfig:
    """The :class:`RunConfig` stored in a checkpoint."""
    try:
        values = json.loads(state["config"])
    except (TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{source}: the stored config is not valid JSON ({e})") from None
    return validate(from_dict(RunConfig, values))


def run_folder(cfg: RunConfig) -> Path:
    """The run's folder, ``cfg.run_dir()``; an empty ``out`` (which would mean the working directory) is refused."""
    if cfg.out is not None and not cfg.out.strip():
        raise ConfigError("config key 'out' is empty, which would write the run into the working directory; "
                          "name the run's folder (e.g. --out runs/my_run), or leave it out for "
                          "runs/<method>-<data>-s<seed>")
    return cfg.run_dir()


def _flat(values: Any, where: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for k, v in values.items():
            out.update(_flat(v, f"{where}{k}."))
        return out
    return {where.rstrip("."): values}


def _check_config_file(path: Path, saved: RunConfig, ckpt_path: Path) -> None:
    """On resume, ``config.yaml`` must describe the checkpoint's run: an edit there would change nothing (the run
    keeps its checkpoint's configuration), and another run's file means two runs wrote this folder."""
    if not path.is_file():
        return
    from mvssl_core.config import read_yaml

    mine, theirs = _flat(read_yaml(path)), _flat(to_dict(saved))
    changed = sorted(k for k in set(mine) & set(theirs)  # keys added or removed by a library upgrade: not compared
                     if mine[k] != theirs[k] and k.split(".")[0] not in _RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"{path} differs from the configuration in {ckpt_path} at {changed}: the run resumes with its "
            "checkpoint's configuration and rewrites config.yaml (a changed setting needs a new run in another "
            "folder); restore or delete config.yaml to resume")


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove temporary files left by a process killed during an atomic write."""
    for name in (CHECKPOINT_NAME, RESULTS_NAME, CONFIG_NAME, METRICS_NAME, runlock.OWNER_NAME):
        for tmp in folder.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{where}{k}.")
        return out
    return [] if a == b else [where.rstrip(".")]


# ------------------------------------------------------------------------------------------------
# metrics log and progress


def _finite_or_none(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def _read_log(path: Path, upto_step: int | None = None) -> list[dict]:
    """The log's lines, optionally up to a step; a last line cut by a crash (no newline at its end) is dropped.

    Raises:
        MetricsLogError: a line is not a JSON object with an integer ``step`` >= 1 (names the file and line).
    """
    rows = []
    if not path.is_file():
        return rows
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MetricsLogError(f"{path}: cannot read the metrics log ({e})") from e
    lines = text.split("\n")
    if lines[-1]:  # the last write was cut by a crash: that line never counted
        log.warning("%s: dropping the incomplete last line (a write cut by a crash)", path)
    for number, line in enumerate(lines[:-1], start=1):
        try:
            row = json.loads(line, parse_constant=_refuse_constant)
        except ValueError as e:  # JSONDecodeError, or NaN / Infinity (the loop writes non-finite values as null)
            raise MetricsLogError(f"{path} line {number}: not valid JSON ({getattr(e, 'msg', e)}); the log was "
                                  "edited or damaged, restore it or start the run over") from None
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            got = f"'step' {step!r}" if isinstance(row, dict) else repr(row)[:80]
            raise MetricsLogError(f"{path} line {number}: expected a JSON object with an integer 'step' >= 1, got "
                                  f"{got}; the log was edited or damaged, restore it or start the run over")
        if upto_step is None or step <= upto_step:
            rows.append(row)
    return rows


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _logged_steps(start: int, end: int, log_every: int, total: int) -> list[int]:
    """The steps in (start, end] that the loop logs: every ``log_every`` steps and the last one."""
    return [s for s in range(start + 1, end + 1) if s % log_every == 0 or s == total]


def _check_log_steps(path: Path, rows: list[dict], expected: list[int], when: str) -> None:
    """Refuse a log whose steps are not exactly ``expected`` (a lost, duplicated or foreign line)."""
    steps = [row["step"] for row in rows]
    if steps == expected:
        return
    missing = sorted(set(expected) - set(steps))
    extra = sorted(set(steps) - set(expected))
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    what = "; ".join(f"{name} {values[:10]}{' ...' if len(values) > 10 else ''}" for name, values in
                     (("missing steps", missing), ("unexpected steps", extra), ("repeated steps", repeated)) if values)
    raise MetricsLogError(f"{path}: {when}, the log must hold steps {_span(expected)}; {what or 'out of order'}; "
                          "the log was edited, damaged, or written by another process: restore it or start over")


def _span(steps: list[int]) -> str:
    if len(steps) <= 6:
        return str(steps)
    return f"[{steps[0]}, {steps[1]}, ..., {steps[-1]}] ({len(steps)} lines)"


def _rewrite_log(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda f: f.writelines(json.dumps(row) + "\n" for row in rows))


class _Progress:
    """Progress of the run on the main rank: the interactive tqdm bar (``bar``, when tqdm is installed and
    stderr is a terminal) or, in its place (``progress: false``, ``--no-progress``, stderr a file as under
    sbatch, tqdm missing), one INFO line of :data:`log` at each tenth of the run
    (``step n/total (p%) loss=... lr=... samples/s=...``: at most 10 lines, ``min(10, total)`` for a run from
    step 0, the last one at step ``total``). ``samples/s`` is the global batch's samples per second of wall
    time since the previous line. ``enabled`` false (ranks other than 0): nothing at all."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str, bar: bool = True,
                 samples_per_step: int = 0) -> None:
        self.enabled, self.total, self.n, self.bar = enabled, total, initial, None
        self.samples_per_step, self.since_n, self.since_t = samples_per_step, initial, time.perf_counter()
        if not enabled or not bar or not sys.stderr.isatty():  # a log file (sbatch) gets the lines
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)

    def update(self, metrics: dict) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            shown = {k: f"{metrics[k]:.3g}" for k in ("loss", "entropy", "probe_acc") if metrics.get(k) is not None}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        elif 10 * self.n // self.total > 10 * (self.n - 1) // self.total:  # crossed a tenth of the run
            now = time.perf_counter()
            rate = self.samples_per_step * (self.n - self.since_n) / max(now - self.since_t, 1e-9)
            self.since_n, self.since_t = self.n, now
            shown = " ".join(f"{k}={metrics[k]:.4g}" for k in ("loss", "entropy", "probe_acc", "lr")
                             if metrics.get(k) is not None)
            log.info("step %d/%d (%d%%) %s samples/s=%.1f", self.n, self.total, 100 * self.n // self.total, shown,
                     rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------
# the loop


def _build_optimizer(cfg: RunConfig, model: nn.Module, peak_lr: float) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.optim.weight_decay)
    if cfg.optim.name == "lars":
        return LARS(groups, lr=peak_lr, momentum=cfg.optim.momentum)
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr, momentum=cfg.optim.momentum)
    return torch.optim.AdamW(groups, lr=peak_lr, betas=(cfg.optim.momentum, 0.999))


def _to_device(views: list[torch.Tensor], rt: Runtime) -> list[torch.Tensor]:
    out = []
    for v in views:
        v = v.to(rt.device, non_blocking=True)
        if rt.channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        out.append(v)
    return out


def _n_classes(dataset: Dataset) -> int:
    base = dataset.dataset if isinstance(dataset, (MultiViewDataset, TensorImages)) else dataset
    classes = getattr(base, "classes", None)
    if classes is not None:
        return len(classes)
    return int(max(getattr(base, "targets", [0]))) + 1


def build_model(cfg: RunConfig, dataset_size: int, distributed: bool = False) -> nn.Module:
    """The method of ``cfg`` around its backbone, initialised from ``cfg.seed`` (seeds torch, numpy, random).

    Every rank builds the same model (DDP also broadcasts rank 0's parameters). DeepCluster gets
    ``dataset_size`` unless ``hyper`` sets it.
    """
    _seed_everything(cfg.seed)
    with _config_errors("model.kwargs"):
        backbone, feature_dim = build_backbone(cfg.model.backbone, **cfg.model.kwargs)
    backbone.feature_dim = feature_dim
    hyper = dict(cfg.hyper)
    if cfg.method.startswith("deepcluster"):
        hyper.setdefault("dataset_size", dataset_size)
    with _config_errors("hyper"):  # an unknown hyper-parameter or a value the method rejects
        return build_method(cfg.method, backbone, feature_dim, distributed=distributed, **hyper)


def train(cfg: RunConfig, *, resume: bool = False, stop_after: int | None = None,
          command: str | None = None) -> dict | None:
    """Pre-train ``cfg.method``; returns the results record (rank 0; other ranks get None).

    Args:
        cfg: the run's configuration (validated).
        resume: continue from ``<run dir>/checkpoint.pt`` exactly where it stopped; its stored
            configuration must equal ``cfg`` except for the keys that do not change the result
            (num_workers, progress, log_every, checkpoint_every, out, device, eval).
        stop_after: stop (as if the process were killed) once this many steps are done, without
            the final checkpoint or results: lets tests interrupt a run.
        command: the command line recorded in the results' provenance.

    Raises:
        mvssl_core.preempt.Stopped: SIGTERM or SIGUSR1 arrived (on any rank); every rank finished the same
            step and the checkpoint holds it.
    """
    validate(cfg)
    run_dir = run_folder(cfg)
    rt = _init_runtime(cfg)
    try:
        with runlock.hold(run_dir if rt.rank == 0 else None, command), preempt.StopSignals() as stop:
            return _train(cfg, rt, resume=resume, stop_after=stop_after, command=command, stop=stop)
    finally:
        if rt.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _train(cfg: RunConfig, rt: Runtime, *, resume: bool, stop_after: int | None, command: str | None,
           stop: preempt.StopSignals) -> dict | None:
    main = rt.rank == 0
    run_dir = run_folder(cfg)
    ckpt_path, log_path = run_dir / CHECKPOINT_NAME, run_dir / METRICS_NAME
    if cfg.results_file is not None:  # stored absolute: a later --resume or linear-eval elsewhere writes the same file
        cfg = replace(cfg, results_file=str(Path(cfg.results_file).resolve()))

    state = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; start the run without --resume")
        state = load_checkpoint(ckpt_path)
        saved = checkpoint_config(state, str(ckpt_path))
        changed = [k for k in _diff(to_dict(saved), to_dict(cfg)) if k.split(".")[0] not in _RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"--resume: the configuration differs from the one in {ckpt_path} at {changed}; "
                "resume with the same configuration (or start a new run in another folder)"
            )
        _check_config_file(run_dir / CONFIG_NAME, saved, ckpt_path)
    elif ckpt_path.exists():
        raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, or choose another out folder")

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(run_dir)
        save_config(cfg, run_dir / CONFIG_NAME)
    gpu_pipeline = _use_gpu_pipeline(cfg, rt)
    dataset = build_train_set(cfg, gpu_pipeline)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, accumulate=cfg.accumulate,
                                 world_size=rt.world_size, rank=rt.rank, seed=cfg.seed, with_epoch=True)
    steps_per_epoch = sampler.steps_per_epoch
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.optim.warmup_epochs * steps_per_epoch)), total - 1)
    peak_lr = scaled_lr(cfg.optim.lr, cfg.batch_size) if cfg.optim.scale_lr else cfg.optim.lr

    method = build_model(cfg, len(dataset), distributed=rt.distributed)
    feature_dim = method.backbone.feature_dim
    method = method.to(rt.device)
    if rt.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = _build_optimizer(cfg, method, peak_lr)

    n_classes = _n_classes(dataset)
    probe = nn.Linear(feature_dim, n_classes).to(rt.device) if cfg.probe.enabled else None
    probe_opt = torch.optim.AdamW(probe.parameters(), lr=cfg.probe.lr, weight_decay=0.0) if probe is not None else None

    captured: list[torch.Tensor] = []  # the backbone's first output of each forward (global crops)

    def _capture(_module, _inputs, output):
        if not captured:
            captured.append(output)

    hook = method.backbone.register_forward_hook(_capture) if probe is not None else None

    step = 0
    if state is not None:
        try:
            method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if probe is not None:
                probe.load_state_dict(state["probe"])
                probe_opt.load_state_dict(state["probe_optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:  # shapes or keys that do not fit the configured model
            first = (str(e).strip().splitlines() or [""])
            detail = next((line.strip() for line in first if "size mismatch" in line or "Missing" in line
                           or "Unexpected" in line), first[0].strip())[:300]
            raise CheckpointError(f"checkpoint {ckpt_path} does not fit the model its configuration builds ({detail}); "
                                  "the checkpoint was edited or written by another version: start over") from None
        step = int(state["step"])
        if step > total:
            raise CheckpointError(
                f"checkpoint {ckpt_path}: step {step} is beyond this run's last step {total}; the checkpoint was "
                "edited or belongs to another run: restore it or start over")
        _set_rng_state(state["rng"])
        log.info("resuming %s from %s at step %d of %d", cfg.method, ckpt_path, step, total)
        logged = state.get("logged_steps")  # the steps of the log's lines up to the checkpoint (older: from the rule)
        logged = logged.tolist() if isinstance(logged, torch.Tensor) else _logged_steps(0, step, saved.log_every, total)
        if main:
            rows = _read_log(log_path, upto_step=step)
            beyond = [row["step"] for row in _read_log(log_path) if row["step"] > total]
            if beyond:  # lines after the checkpoint are cut, but a step past the run's end was never logged by it
                raise MetricsLogError(f"{log_path}: steps {beyond[:5]} are beyond this run's last step {total}; the "
                                      "log was edited or written by another run: restore it or start over")
            _check_log_steps(log_path, rows, logged, f"to resume {ckpt_path} at step {step}")
            _rewrite_log(log_path, rows)
        del state
    else:
        logged = []
        if main and log_path.exists():
            log_path.unlink()
    resumed_at = step

    model: nn.Module = method
    if rt.distributed:
        if cfg.model.sync_bn:  # same parameter objects: the optimizer and the probe hook are unaffected
            method = dist.sync_batchnorm(method, rt.device)
        with warnings.catch_warnings():
            # torch >= 2.14 deprecates broadcast_buffers, but its replacement still syncs buffers at
            # construction; the methods' per-process buffers (SwAV queue) must not be synced at all
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            model = nn.parallel.DistributedDataParallel(
                method, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, broadcast_buffers=False
            )

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if rt.bf16 else contextlib.nullcontext
    loader_kw = dict(num_workers=cfg.num_workers, pin_memory=rt.device.type == "cuda",
                     worker_init_fn=_worker_init if cfg.num_workers > 0 else None,
                     timeout=LOADER_TIMEOUT_S if cfg.num_workers > 0 else 0)

    def _save() -> None:
        save_checkpoint(ckpt_path, {
            "config": json.dumps(to_dict(cfg)),
            "step": step,
            "world_size": rt.world_size,
            "model": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "probe": probe.state_dict() if probe is not None else {},
            "probe_optimizer": probe_opt.state_dict() if probe_opt is not None else {},
            "rng": _rng_state(),
            "logged_steps": torch.tensor(logged + _logged_steps(resumed_at, step, cfg.log_every, total),
                                         dtype=torch.int64),
        })

    def _loader(batch_sampler, persistent: bool) -> DataLoader:
        # batches of (epoch, index) keys (_WithIndex). The workers' base seed comes from the loader's own
        # generator, not the global one: a loader made at a mid-epoch resume would otherwise draw once more
        # than the uninterrupted run (the views are seeded per item)
        return DataLoader(_WithIndex(dataset), batch_sampler=batch_sampler,
                          collate_fn=collate_bytes if isinstance(dataset, JpegBytes) else None,
                          generator=torch.Generator().manual_seed(item_seed(cfg.seed, 0, -2)),
                          persistent_workers=persistent and cfg.num_workers > 0, **loader_kw)

    def _on_device(batch, step: int, micro: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        views, labels, indices = batch
        if gpu_pipeline:  # views of (seed, step, micro-batch, rank): exact on resume
            gen = batch_generator(rt.device, cfg.seed, step, micro, rt.rank)
            images = views.to(rt.device) if isinstance(views, torch.Tensor) else decode_batch(views, rt.device)
            views = dataset.views(images, generator=gen)
        return (_to_device(views, rt), labels.to(rt.device, non_blocking=True),
                indices.to(rt.device, non_blocking=True))

    if rt.device.type == "cuda":  # the fastest convolution algorithms for the run's fixed shapes (module docstring)
        torch.backends.cudnn.benchmark = True
    method.train()
    if step == 0 and getattr(method, "prefill", False):
        # DeepCluster-v2's pass over the data before training: every sample's projection in the bank
        fill = [[(0, i) for i in b] for b in _fill_batches(len(dataset), cfg.batch_size // cfg.accumulate,
                                                           rt.world_size, rt.rank)]
        with torch.no_grad(), _one_thread(cfg.num_workers == 0):
            for i, batch in enumerate(_loader(fill, persistent=False)):
                views, _, indices = _on_device(batch, i, 0)
                method.fill_memory_(views, indices)
        captured.clear()
    progress_bar = _Progress(total, step, main, desc=f"{cfg.method} {cfg.data.name}", bar=cfg.progress,
                             samples_per_step=cfg.batch_size)
    log_file = open(log_path, "a", encoding="utf-8") if main else None
    # one loader for the run: its workers (persistent) live across epochs; each epoch a new pass of the
    # sampler, which carries the epoch to the workers with the indices
    children = set(multiprocessing.active_children())
    loader = _loader(sampler, persistent=True)
    batches = None
    try:
        while step < total:
            epoch, position = divmod(step, steps_per_epoch)
            if position == 0:
                method.start_epoch(epoch)
            sampler.set_epoch(epoch, position)
            batches = iter(loader)
            for _ in range(position, steps_per_epoch):
                if step >= total:
                    break
                t0 = time.perf_counter()
                progress = step / total
                lr = warmup_cosine(step, total, warmup, peak_lr, cfg.optim.final_lr * peak_lr)
                set_lr(optimizer, lr)
                optimizer.zero_grad(set_to_none=True)
                if probe_opt is not None:
                    probe_opt.zero_grad(set_to_none=True)
                sums: dict[str, float] = {}
                logged_step = (step + 1) % cfg.log_every == 0 or step + 1 == total  # metrics on these steps only
                for micro in range(cfg.accumulate):
                    with _one_thread(cfg.num_workers == 0):
                        batch = _next_batch(batches, step)
                    views, labels, indices = _on_device(batch, step, micro)
                    last = micro == cfg.accumulate - 1
                    sync = model.no_sync() if rt.distributed and not last else contextlib.nullcontext()
                    captured.clear()
                    with sync:
                        try:
                            with autocast():
                                out = model(views, progress, indices, metrics=logged_step)
                        except ValueError as e:  # an estimator's input check: NaN features, zero rows...
                            if step == resumed_at and not _non_finite(method, probe):
                                raise  # before any update of this process: not a divergence
                            raise DivergenceError(
                                f"{cfg.method}: training diverged by step {step} (epoch {epoch}): {e}; "
                                f"lower optim.lr or check the data{_KEPT}") from e
                        loss_value, loss_ok = _loss_check(out.loss, rt)
                        if not loss_ok:
                            raise DivergenceError(
                                f"{cfg.method}: the loss is {loss_value} at step {step} (epoch {epoch}); "
                                f"lower optim.lr or check the data{_KEPT}"
                            )
                        (out.loss / cfg.accumulate).backward()
                    metrics = {**out.metrics, "loss": loss_value}
                    if probe is not None:
                        metrics.update(_probe_step(probe, captured[0], labels, views[0].shape[0], cfg.accumulate, rt,
                                                   values=logged_step))
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v / cfg.accumulate
                optimizer.step()
                if probe_opt is not None:
                    probe_opt.step()
                method.after_optimizer_step(min(1.0, (step + 1) / total))
                step += 1

                row = {"step": step, "epoch": epoch, "lr": lr, **{k: _finite_or_none(v) for k, v in sums.items()},
                       "time_s": time.perf_counter() - t0}
                progress_bar.update(row)
                if main and (step % cfg.log_every == 0 or step == total):
                    log_file.write(json.dumps(row) + "\n")
                    log_file.flush()
                # a stop signal on any rank: every rank stops after this same step (one all-reduce per step)
                stopping = step < total and stop.agreed(rt.device)
                if step == total or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stopping:
                    # never a checkpoint (nor, at the end, results) of a non-finite state; every rank agrees
                    bad = _non_finite(method, probe, optimizer, probe_opt)
                    n_bad = dist.global_count(len(bad), rt.device) if rt.distributed else len(bad)
                    if n_bad:
                        where = f": {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}" if bad else " (another rank)"
                        lower = "probe.lr" if bad and all(b.startswith("probe") for b in bad) else "optim.lr"
                        raise DivergenceError(
                            f"{cfg.method}: the model's state is not finite at step {step} (epoch {epoch}){where}; "
                            f"lower {lower} or check the data{_KEPT}")
                    if main:
                        _save()
                if stopping:
                    dist.global_count(0, rt.device)  # a barrier: no rank exits before rank 0 has written
                    raise preempt.Stopped(step, total, str(ckpt_path), stop.signal_name, rt.rank, rt.world_size)
                if stop_after is not None and step >= stop_after and step < total:
                    return None
    finally:
        loader = batches = None  # the workers stop now, even while a traceback holds this frame
        _end_workers(children)
        progress_bar.close()
        if log_file is not None:
            log_file.close()
        if hook is not None:
            hook.remove()

    # rank 0 evaluates alone (no collective follows, so the other ranks may finish meanwhile)
    if not main:
        return None
    final = evaluate_run(cfg, method.backbone, rt)
    return _write_results(cfg, run_dir, final, total, command,
                          expected_steps=logged + _logged_steps(resumed_at, total, cfg.log_every, total))


_KEPT = " (no checkpoint of a non-finite state is written: the last one is intact)"


def _non_finite(method: nn.Module, probe: nn.Module | None, *optimizers: torch.optim.Optimizer | None) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or inf: the method's and the probe's parameters and
    buffers (BatchNorm running statistics, EMA teacher, queues) and the optimizers' state (momenta)."""
    tensors = [(f"model.{k}", v) for k, v in method.state_dict().items()]
    if probe is not None:
        tensors += [(f"probe.{k}", v) for k, v in probe.state_dict().items()]
    for name, opt in zip(("optimizer", "probe_optimizer"), optimizers):
        if opt is not None:
            tensors += [(f"{name}.state.{i}.{k}", v) for i, st in opt.state_dict()["state"].items()
                        for k, v in st.items()]
    tensors = [(name, v) for name, v in tensors if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not tensors:
        return []
    device = tensors[0][1].device  # one transfer to the host, not one per tensor
    finite = torch.stack([torch.isfinite(v).all().to(device) for _, v in tensors]).tolist()
    return [name for (name, _), ok in zip(tensors, finite) if not ok]


def _next_batch(batches: Iterator, step: int):
    """The loader's next batch; a loader failure (a worker that timed out, died or raised) is raised again
    without the loader's frames, which would keep the loader and its workers alive with the traceback."""
    try:
        return next(batches)
    except RuntimeError as e:
        failure = str(e).strip()
    del batches  # nor in this frame, which the new traceback holds
    raise RuntimeError(f"step {step}: the training data loader failed: {failure}")


def _end_workers(before: set) -> None:
    """Kill the loader workers started since ``before`` (``multiprocessing.active_children()``) that are still
    alive once their loader is gone: a worker stuck in an item (the run then ends with the loader's timeout)
    ignores SIGTERM (:func:`mvssl_core.preempt.ignore_in_worker`), so torch's ``terminate`` leaves it running,
    and the interpreter's exit would wait for it without end."""
    for process in multiprocessing.active_children():
        if process not in before and process.daemon:
            process.kill()
            process.join(timeout=10)


def _fill_batches(n: int, per_rank: int, world_size: int, rank: int) -> list[list[int]]:
    """Index batches of one pass over all ``n`` samples for ``rank``: every rank gets the same number of
    full batches (the last wraps around to the first samples), and together they cover every sample."""
    step = per_rank * world_size
    return [[(start + rank * per_rank + t) % n for t in range(per_rank)] for start in range(0, n, step)]


def _loss_check(loss: torch.Tensor, rt: Runtime) -> tuple[float, bool]:
    """The loss as a number, and whether it is finite on every rank: one host sync, and one all-reduce when
    distributed (all ranks stop together: a lone rank would leave the others waiting)."""
    loss = loss.detach()
    bad = (~torch.isfinite(loss)).to(torch.float64).reshape(1)
    if rt.distributed:
        bad = dist.all_reduce_sum(bad)
    value, n_bad = torch.cat([loss.to(torch.float64).reshape(1), bad]).tolist()
    return value, n_bad == 0


def _probe_step(probe: nn.Linear, features: torch.Tensor, labels: torch.Tensor, n: int, accumulate: int,
                rt: Runtime, values: bool = True) -> dict[str, float]:
    """One online-probe gradient on the detached features of the first view (global batch); its loss and
    accuracy as numbers when ``values`` (the steps that are logged), else {} (no host copy)."""
    feats = features[:n].detach().float()
    if rt.distributed:  # every rank fits the probe on the same global batch: no gradient sync needed
        # the trainer's per-rank batches are equal: one all-gather each, no all-gather of the sizes
        feats, labels = dist.gather(feats, equal_sizes=True), dist.gather(labels, equal_sizes=True)
    logits = probe(feats)
    labelled = labels >= 0
    if not bool(labelled.any()):
        return {}
    loss = F.cross_entropy(logits[labelled], labels[labelled])
    (loss / accumulate).backward()
    if not values:
        return {}
    acc = (logits[labelled].argmax(1) == labels[labelled]).float().mean()
    values = torch.stack([loss.detach(), acc]).tolist()
    return {"probe_loss": values[0], "probe_acc": values[1]}


def evaluate_run(cfg: RunConfig, backbone: nn.Module, rt: Runtime | None = None) -> dict[str, float]:
    """kNN and linear-probe accuracy of the backbone on the run's evaluation splits (empty if both off).

    Runs on ``rt.device`` (the CPU without ``rt``), loading images with ``cfg.num_workers`` processes.
    """
    from mvssl_core.evaluate import evaluate_backbone

    if not (cfg.eval.knn or cfg.eval.linear):
        return {}
    device = rt.device if rt is not None else torch.device("cpu")
    train_set, test_set = build_eval_sets(cfg)
    return evaluate_backbone(
        backbone, train_set, test_set, knn=cfg.eval.knn, linear=cfg.eval.linear, k=cfg.eval.k,
        temperature=cfg.eval.temperature, max_train=cfg.eval.max_train, batch_size=cfg.eval.batch_size,
        device=device, num_workers=cfg.num_workers, bf16=bool(rt and rt.bf16),
        channels_last=bool(rt and rt.channels_last), seed=cfg.seed, worker_init_fn=_worker_init,
    )


def run_record(cfg: RunConfig, metrics: dict, command: str | None) -> dict:
    """A results record (schema of mvssl_core.results) of a run with config ``cfg``."""
    return {
        "schema": results.SCHEMA,
        "method": cfg.method,
        "dataset": cfg.data.name,
        "config": to_dict(cfg),
        "seed": cfg.seed,
        "provenance": results.provenance(command=command),
        "metrics": metrics,
    }


def _write_results(cfg: RunConfig, run_dir: Path, final: dict, total: int, command: str | None,
                   expected_steps: list[int] | None = None) -> dict:
    rows = _read_log(run_dir / METRICS_NAME)
    if expected_steps is not None:  # a lost or repeated line must not reach results.json
        _check_log_steps(run_dir / METRICS_NAME, rows, expected_steps, f"at the end of the run ({total} steps)")
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    history = {k: [_finite_or_none(r.get(k)) for r in rows] for k in keys}
    last = {k: v for k, v in rows[-1].items() if k not in ("time_s",)} if rows else {}
    if "probe_acc" in last:  # on the augmented training batch of the last logged step
        final = {**final, "online_probe_train_acc": last["probe_acc"]}
    record = run_record(cfg, {"steps": total, "history": history, "last": last, "final": final}, command)
    results.write_results(run_dir / RESULTS_NAME, record)
    if cfg.results_file is not None:
        results.write_results(cfg.results_file, record)
    return record
