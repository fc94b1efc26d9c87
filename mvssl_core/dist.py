"""The one place for ``torch.distributed``: rank helpers and collectives with gradients.

Estimators and bounds that couple samples take one argument, ``distributed: bool``. With
``distributed=True`` (and a process group initialised) they gather the other processes' samples
with :func:`gather`, and every rank returns the value over the *global* batch.

Gradient convention. The collectives here carry their true adjoints: the backward of an
all-gather sums the incoming gradients over ranks and keeps this rank's slice, the backward of an
all-reduce-sum all-reduces the gradients. A function that returns the same global value ``L`` on
each of ``W`` ranks therefore back-propagates ``W * dL/dz`` into each rank's local inputs ``z``:
the gradient of the sum of the ``W`` identical copies. DistributedDataParallel averages parameter
gradients over the ranks, which turns this into exactly ``dL/dtheta`` of the single-process loss
over the concatenated batch. (Tested with two gloo processes in ``tests/test_dist.py``.)

Without an initialised process group, or with one process, everything here is the identity.

State that must be equal on every rank but is computed with nondeterministic kernels (DeepCluster's
k-means: ``index_add_`` on CUDA) is computed on rank 0 and copied with :func:`broadcast_`.
BatchNorm over the global batch (``model.sync_bn``) is :func:`sync_batchnorm`.

Timeout. The trainer initialises the process group with the timeout of :func:`process_group_timeout`:
``MVSSL_DIST_TIMEOUT_S`` seconds (default :data:`DEFAULT_TIMEOUT_S`, 10 minutes, instead of torch's 30),
so that a stopped or crashed rank ends the others' wait at a collective with an error within minutes.
It bounds every collective, so it must exceed the longest time one rank works alone between two of
them (rank 0 writing a checkpoint, a DeepCluster re-clustering); raise it for a slow file system. (With
NCCL the timeout is enforced by its watchdog, on by default since torch 2.2.)

Process group. :func:`init_runtime` picks a process's device and precision and, under ``torchrun``
(``WORLD_SIZE > 1``), initialises the process group with NCCL on GPU and gloo on CPU; :func:`end_runtime`
destroys a group that :func:`init_runtime` initialised. Collectives without gradients (in place or on
Python objects) are :func:`all_reduce_`, :func:`broadcast_objects` and :func:`all_gather_objects`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as torch_dist
from torch import nn

from mvssl_core.errors import ConfigError

if TYPE_CHECKING:
    from mvssl_core.config import RunConfig

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "is_main_process",
    "gather",
    "all_reduce_sum",
    "global_count",
    "global_mean",
    "local_slice",
    "broadcast_",
    "all_reduce_",
    "broadcast_objects",
    "all_gather_objects",
    "Runtime",
    "init_runtime",
    "end_runtime",
    "sync_batchnorm",
    "process_group_timeout",
    "TIMEOUT_ENV",
    "DEFAULT_TIMEOUT_S",
]

TIMEOUT_ENV = "MVSSL_DIST_TIMEOUT_S"
"""Environment variable: the process group's timeout in seconds."""

DEFAULT_TIMEOUT_S = 600.0
"""The process group's timeout when :data:`TIMEOUT_ENV` is unset: 10 minutes."""

log = logging.getLogger(__name__)


def process_group_timeout() -> datetime.timedelta:
    """The timeout for ``init_process_group``: ``$MVSSL_DIST_TIMEOUT_S`` seconds, else :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        ConfigError: the variable is not a finite number of seconds > 0 (at most a year).
    """
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= 366 * 86400):
        raise ConfigError(f"environment variable {TIMEOUT_ENV} must be a number of seconds > 0 (at most a year), "
                          f"got {text[:80]!r}")
    return datetime.timedelta(seconds=seconds)


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return torch_dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, the process that writes logs, checkpoints and results."""
    return rank() == 0


class _Gather(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradients over ranks and keeps the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, equal_sizes: bool) -> torch.Tensor:
        sizes = [x.shape[0]] * torch_dist.get_world_size() if equal_sizes else _gather_sizes(x.shape[0], x.device)
        ctx.sizes = sizes
        ctx.rank = torch_dist.get_rank()
        max_n = max(sizes)
        padded = x
        if x.shape[0] < max_n:  # all_gather needs equal shapes: pad, gather, strip.
            padded = torch.cat([x, x.new_zeros((max_n - x.shape[0], *x.shape[1:]))])
        out = [torch.empty_like(padded) for _ in sizes]
        torch_dist.all_gather(out, padded.contiguous())
        return torch.cat([o[:n] for o, n in zip(out, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


class _AllReduceSum(torch.autograd.Function):
    """All-reduce (sum); its adjoint is again an all-reduce-sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        return grad


_EQUAL_BATCHES: ContextVar[bool] = ContextVar("mvssl_equal_batches", default=False)


@contextlib.contextmanager
def equal_batches() -> Iterator[None]:
    """Inside, every rank holds as many rows as this one in what it passes to :func:`gather`,
    :func:`local_slice` and :func:`global_mean`: the caller's promise, as ``gather(equal_sizes=True)``.

    The sizes are then not exchanged: each such call makes one collective and one host sync fewer. The
    trainer's micro-step runs inside (its per-rank micro-batches are equal, :class:`~mvssl_core.sampler.
    GlobalBatchSampler`). A broken promise is not checked: an all-gather of unequal shapes then fails or
    misbehaves, depending on the backend.
    """
    token = _EQUAL_BATCHES.set(True)
    try:
        yield
    finally:
        _EQUAL_BATCHES.reset(token)


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    if _EQUAL_BATCHES.get():
        return [n] * torch_dist.get_world_size()
    local = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(local) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(sizes, local)
    return torch.cat(sizes).tolist()  # one host copy for all ranks' sizes


def gather(x: torch.Tensor, equal_sizes: bool = False) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, in rank order, keeping gradients.

    Ranks may hold different numbers of rows: the sizes are all-gathered first (one more collective
    and a host sync). ``equal_sizes=True`` is the caller's promise that every rank holds as many rows
    as this one (the trainer's per-rank batches are equal): one all-gather, no sync. A broken promise
    is not checked: the all-gather of unequal shapes then fails or misbehaves, depending on the backend.
    Returns ``x`` itself when not distributed.
    """
    if not is_distributed():
        return x
    return _Gather.apply(x, bool(equal_sizes))


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over all ranks, keeping gradients. Returns ``x`` itself when not distributed."""
    if not is_distributed():
        return x
    return _AllReduceSum.apply(x)


def global_count(n: int, device: torch.device | str = "cpu") -> int:
    """Total of the local counts ``n`` over all ranks."""
    if not is_distributed():
        return n
    t = torch.tensor([n], device=device, dtype=torch.long)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return int(t.item())


def local_slice(n_local: int, device: torch.device | str = "cpu") -> slice:
    """Rows of this rank's samples inside the output of :func:`gather`."""
    if not is_distributed():
        return slice(0, n_local)
    sizes = _gather_sizes(n_local, torch.device(device))
    start = sum(sizes[: rank()])
    return slice(start, start + n_local)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over dim 0 of the global batch (all ranks' rows), keeping gradients."""
    n = x.shape[0] * torch_dist.get_world_size() if _EQUAL_BATCHES.get() and is_distributed() else \
        global_count(x.shape[0], x.device)
    return all_reduce_sum(x.sum(dim=0)) / n


@torch.no_grad()
def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In place: every rank's ``x`` becomes rank ``src``'s ``x``; returns ``x``. The identity when not distributed.

    A copy of state, not a differentiable operation (no gradient flows). ``x`` must have the same shape and
    dtype on every rank, be contiguous, and lie on this rank's device of the process group's backend
    (CUDA for NCCL, CPU for gloo).
    """
    if not is_distributed():
        return x
    if not x.is_contiguous():
        raise ValueError(f"broadcast_ needs a contiguous tensor, got one of shape {tuple(x.shape)} and strides "
                         f"{x.stride()}")
    torch_dist.broadcast(x, src=src)
    return x


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer normalising over the global batch (``nn.SyncBatchNorm``).

    SimCLR's "global BN" [0]: per-process statistics let positives, which sit on one process, leak
    through the batch statistics. Every sub-module is converted, EMA teachers included (they run in
    training mode, so their BatchNorm also uses batch statistics, converted as in DINO's official
    code). The conversion keeps the parameter and buffer objects (an optimizer built before it holds the
    same tensors), their order and the state-dict keys; in eval mode ``nn.SyncBatchNorm`` uses its running
    statistics with no collective, so a rank-0-only evaluation does not wait for the others.

    Returns ``module`` unchanged with one process (the identity: the local batch is the global one),
    and on a device other than CUDA, where torch's SyncBatchNorm refuses its input in training (torch
    2.14: "expected input tensor to be on GPU"): with gloo on CPU the run keeps per-process BatchNorm,
    and rank 0 logs a warning.

    [0] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
        Sec. 2.2 ("Global BN").
    """
    if not is_distributed():
        return module
    kind = torch.device(device).type
    if kind != "cuda":
        if is_main_process():
            log.warning("model.sync_bn: torch's SyncBatchNorm needs a GPU; this %s run keeps per-process "
                        "BatchNorm statistics (each process normalises over its own share of the batch)", kind)
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


@torch.no_grad()
def all_reduce_(x: torch.Tensor) -> torch.Tensor:
    """In place: ``x`` becomes its sum over all ranks; returns ``x``. No gradient; the identity when not
    distributed."""
    if is_distributed():
        torch_dist.all_reduce(x, op=torch_dist.ReduceOp.SUM)
    return x


def broadcast_objects(objects: list[Any], src: int = 0) -> list[Any]:
    """In place: every rank's list ``objects`` becomes rank ``src``'s (picklable objects, the same length on
    every rank); returns it. The identity when not distributed."""
    if is_distributed():
        torch_dist.broadcast_object_list(objects, src=src)
    return objects


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order: ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------------------------------------
# the process group of a run


@dataclass
class Runtime:
    """Where and how this process runs: its device, rank and world size, whether a process group couples it
    to others, bf16 autocast and channels-last, and whether :func:`init_runtime` initialised the group
    (``owns_group``: :func:`end_runtime` then destroys it)."""

    device: torch.device
    rank: int
    world_size: int
    distributed: bool
    bf16: bool
    channels_last: bool
    owns_group: bool


def init_runtime(cfg: RunConfig) -> Runtime:
    """The device, precision and process group of this process (the group initialised under torchrun, with the
    timeout of :func:`process_group_timeout`).

    Raises:
        ConfigError: ``device`` is 'cuda' without a CUDA device, or ``precision`` is 'bf16' on the CPU.
    """
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
        torch_dist.init_process_group(backend="nccl" if want_cuda else "gloo", timeout=process_group_timeout())
        owns = True
    distributed = is_distributed()
    on_gpu = device.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_gpu)
    if bf16 and not on_gpu:
        raise ConfigError("precision 'bf16' is for GPU runs; use precision: auto or fp32 on CPU")
    channels_last = on_gpu if cfg.channels_last is None else cfg.channels_last
    return Runtime(device, rank(), world_size(), distributed, bf16, channels_last, owns)


def end_runtime(rt: Runtime) -> None:
    """Destroy the process group if :func:`init_runtime` initialised it (``rt.owns_group``)."""
    if rt.owns_group and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
