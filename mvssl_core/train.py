"""The training loop: one loop for every method, on CPU, on 2 CPU processes (gloo) and on GPUs (NCCL).

``train(cfg)`` pre-trains ``cfg.method`` and writes, in the run's folder ``cfg.run_dir()``, its
``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt`` and ``results.json`` (:mod:`mvssl_core.runstate`
describes each). The parts live in modules of their own: the data order in :mod:`mvssl_core.sampler`,
config -> data sets, model and optimizer in :mod:`mvssl_core.build`, the run folder's files (checkpoints,
metrics log, results) in :mod:`mvssl_core.runstate`, process-group setup in :mod:`mvssl_core.dist`, the final
evaluation in :func:`mvssl_core.evaluate.evaluate_run`. This module is the loop: :func:`train` opens the
run, :func:`_loop` runs its steps (:func:`_one_step`, one per optimizer step, of ``accumulate``
:func:`_micro_step`), :func:`_maybe_checkpoint` saves, stops or checks after each.

One writer per run folder: the process that writes (rank 0) holds an OS lock on ``<run>/.run.lock``
(:mod:`mvssl_core.runlock`) for the whole run; a second ``pretrain`` or ``linear-eval`` on the folder is
refused at once, naming the holder's pid. The kernel releases the lock when its process ends, however.

Distributed runs. Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised with
NCCL on GPU and gloo on CPU (:func:`mvssl_core.dist.init_runtime`), the method is built with
``distributed=True`` (its coupled losses and estimators then run over the global batch) and wrapped in
``DistributedDataParallel`` with ``broadcast_buffers=False``; with ``model.sync_bn`` its BatchNorm layers
first become ``nn.SyncBatchNorm`` (:func:`mvssl_core.dist.sync_batchnorm`: GPU runs only; one process or
gloo on CPU keep plain BatchNorm). Rank 0 writes every file. Every rank reads the same global batches
(:class:`mvssl_core.sampler.GlobalBatchSampler`).

Exact resume (:mod:`mvssl_core.runstate`): the checkpoint holds the step and the whole state of the run,
and the metrics log is cut back to its step, so a killed-and-resumed run ends with the same parameters and
log as an uninterrupted one. SIGTERM and SIGUSR1 (:mod:`mvssl_core.preempt`) stop the run after the step in
progress, the same step on every rank, with a checkpoint of that step: ``--resume`` then loses no step.

Gradient accumulation: the loss of each of the ``accumulate`` micro-batches is divided by
``accumulate``; DDP synchronises only on the last one; the optimizer steps and the method's
:meth:`after_optimizer_step` (EMA teachers) run once per real step.

GPU data pipeline (:func:`mvssl_core.build.use_gpu_pipeline`): each micro-batch is decoded and augmented
on the device, from a generator seeded by (seed, step, micro-batch, rank): resuming stays exact, but the
views then depend on the world size.

Per-step cost: the method's metrics (ER terms, effective rank, assignments) and the probe's values are
computed, gathered and copied to the host only on the steps that write a log line (every ``log_every``-th
and the last; the forward's ``metrics`` flag), the metrics of a step with one copy. Every step copies the
loss to the host once, checked finite on every rank with one all-reduce (``scripts/count_step_sync.py``
counts a step's collectives and host syncs with 2 processes). On CUDA ``torch.backends.cudnn.benchmark``
is on (as in ``scripts/bench_gpu.py``): cuDNN times its convolution algorithms at the first batch of each
shape and keeps the fastest, so the convolutions of a GPU run are not bitwise repeatable from run to run.

Precision: bf16 autocast and channels-last memory format on GPU only (``precision``,
``channels_last``). Data loading on CPU: :mod:`mvssl_core.sampler`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mvssl_core import _checks as checks
from mvssl_core import dist, preempt, runlock
from mvssl_core import sampler as sampler_mod
from mvssl_core.build import build_model, build_optimizer, build_train_set, n_classes, use_gpu_pipeline
from mvssl_core.config import ConfigError, RunConfig, save_config, to_dict, validate
from mvssl_core.dist import Runtime
from mvssl_core.evaluate import evaluate_run
from mvssl_core.gpu_views import batch_generator, decode_batch
from mvssl_core.optim import scaled_lr, set_lr, warmup_cosine
from mvssl_core.runstate import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    CheckpointError,
    CheckpointWriter,
    MetricsLogError,
    check_config_file,
    check_log_steps,
    checkpoint_config,
    config_changes,
    finite_or_none,
    load_checkpoint,
    logged_steps,
    read_log,
    remove_stale_temporaries,
    rewrite_log,
    rng_state,
    run_folder,
    set_rng_state,
    write_run_results,
)
from mvssl_core.sampler import GlobalBatchSampler, build_loader, end_workers, fill_batches, next_batch, one_thread

__all__ = ["train", "DivergenceError"]

log = logging.getLogger(__name__)


class DivergenceError(FloatingPointError):
    """A run diverged: its loss or its state (parameters, buffers such as BatchNorm statistics, optimizer state)
    is not finite, or the model failed its own input checks after training steps. No checkpoint with non-finite
    state is written: the last one written is intact. The command line prints it in one line (exit status 1)."""


_KEPT = " (no checkpoint of a non-finite state is written: the last one is intact)"


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
    rt = dist.init_runtime(cfg)
    try:
        with runlock.hold(run_dir if rt.rank == 0 else None, command), preempt.StopSignals() as stop:
            return _train(cfg, rt, resume=resume, stop_after=stop_after, command=command, stop=stop)
    finally:
        dist.end_runtime(rt)


@dataclass
class _Run:
    """One run's parts and position, shared by the loop's functions."""

    cfg: RunConfig
    rt: Runtime
    run_dir: Path
    dataset: Dataset
    gpu_pipeline: bool
    sampler: GlobalBatchSampler
    total: int
    warmup: int
    peak_lr: float
    method: nn.Module  # the method (after SyncBatchNorm conversion); ``model`` is what the forward calls
    optimizer: torch.optim.Optimizer
    probe: nn.Linear | None
    probe_opt: torch.optim.Optimizer | None
    stop: preempt.StopSignals
    stop_after: int | None
    model: nn.Module | None = None  # the method, or its DistributedDataParallel wrapper
    captured: list[torch.Tensor] = field(default_factory=list)  # the backbone's first output of each forward
    hook: Any = None
    step: int = 0
    resumed_at: int = 0
    logged: list[int] = field(default_factory=list)  # the log's steps up to the checkpoint resumed from
    batches: Any = None  # the loader's iterator of the current epoch
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)  # rank 0's checkpoints, in a thread

    @property
    def main(self) -> bool:
        return self.rt.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.run_dir / METRICS_NAME

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.rt.bf16 else contextlib.nullcontext()


def _train(cfg: RunConfig, rt: Runtime, *, resume: bool, stop_after: int | None, command: str | None,
           stop: preempt.StopSignals) -> dict | None:
    """The run under its lock: open or resume it, train, then (rank 0) evaluate and write the results."""
    run_dir = run_folder(cfg)
    if cfg.results_file is not None:  # stored absolute: a later --resume or linear-eval elsewhere writes the same file
        cfg = replace(cfg, results_file=str(Path(cfg.results_file).resolve()))
    state, saved = _open_checkpoint(cfg, run_dir, resume)
    if rt.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        save_config(cfg, run_dir / CONFIG_NAME)
    run = _build(cfg, rt, run_dir, stop, stop_after)
    if state is not None:
        _resume(run, state, saved)
        del state
    elif run.main and run.log_path.exists():
        run.log_path.unlink()
    run.resumed_at = run.step
    _distribute(run)
    if not _loop(run):
        return None
    # rank 0 evaluates alone (no collective follows, so the other ranks may finish meanwhile)
    if not run.main:
        return None
    final = evaluate_run(cfg, run.method.backbone, rt)
    return write_run_results(cfg, run_dir, final, run.total, command,
                             expected_steps=run.logged + logged_steps(run.resumed_at, run.total, cfg.log_every,
                                                                      run.total))


def _open_checkpoint(cfg: RunConfig, run_dir: Path, resume: bool) -> tuple[dict | None, RunConfig | None]:
    """With ``resume``, the run's checkpoint and its stored configuration, checked against ``cfg`` and the
    folder's ``config.yaml``; without, (None, None) once the folder is known to hold no checkpoint."""
    ckpt_path = run_dir / CHECKPOINT_NAME
    if not resume:
        if ckpt_path.exists():
            raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume to continue it, or choose "
                                  "another out folder")
        return None, None
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; start the run without --resume")
    state = load_checkpoint(ckpt_path)
    saved = checkpoint_config(state, str(ckpt_path))
    changed = config_changes(saved, cfg)
    if changed:
        raise ConfigError(
            f"--resume: the configuration differs from the one in {ckpt_path} at {changed}; "
            "resume with the same configuration (or start a new run in another folder)"
        )
    check_config_file(run_dir / CONFIG_NAME, saved, ckpt_path)
    return state, saved


def _build(cfg: RunConfig, rt: Runtime, run_dir: Path, stop: preempt.StopSignals, stop_after: int | None) -> _Run:
    """The run's data set, sampler, schedule, model (on its device), optimizer and online probe."""
    gpu_pipeline = use_gpu_pipeline(cfg, rt)
    dataset = build_train_set(cfg, gpu_pipeline)
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, accumulate=cfg.accumulate,
                                 world_size=rt.world_size, rank=rt.rank, seed=cfg.seed, with_epoch=True,
                                 piece=sampler_mod.WORKER_TASK)
    steps_per_epoch = sampler.steps_per_epoch
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.optim.warmup_epochs * steps_per_epoch)), total - 1)
    peak_lr = scaled_lr(cfg.optim.lr, cfg.batch_size) if cfg.optim.scale_lr else cfg.optim.lr

    method = build_model(cfg, len(dataset), distributed=rt.distributed)
    feature_dim = method.backbone.feature_dim
    method = method.to(rt.device)
    if rt.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, method, peak_lr)

    probe = nn.Linear(feature_dim, n_classes(dataset)).to(rt.device) if cfg.probe.enabled else None
    probe_opt = torch.optim.AdamW(probe.parameters(), lr=cfg.probe.lr, weight_decay=0.0) if probe is not None else None
    run = _Run(cfg, rt, run_dir, dataset, gpu_pipeline, sampler, total, warmup, peak_lr, method, optimizer, probe,
               probe_opt, stop, stop_after)

    def _capture(_module, _inputs, output):
        if not run.captured:
            run.captured.append(output)

    run.hook = method.backbone.register_forward_hook(_capture) if probe is not None else None
    return run


def _resume(run: _Run, state: dict, saved: RunConfig) -> None:
    """Restore the checkpoint's state, step and RNG states; check the metrics log and cut it back to the step."""
    _load_state(run, state)
    step = run.step = int(state["step"])
    if step > run.total:
        raise CheckpointError(
            f"checkpoint {run.ckpt_path}: step {step} is beyond this run's last step {run.total}; the checkpoint was "
            "edited or belongs to another run: restore it or start over")
    set_rng_state(state["rng"])
    log.info("resuming %s from %s at step %d of %d", run.cfg.method, run.ckpt_path, step, run.total)
    logged = state.get("logged_steps")  # the steps of the log's lines up to the checkpoint (older: from the rule)
    run.logged = (logged.tolist() if isinstance(logged, torch.Tensor)
                  else logged_steps(0, step, saved.log_every, run.total))
    if not run.main:
        return
    log_path = run.log_path
    rows = read_log(log_path, upto_step=step)
    beyond = [row["step"] for row in read_log(log_path) if row["step"] > run.total]
    if beyond:  # lines after the checkpoint are cut, but a step past the run's end was never logged by it
        raise MetricsLogError(f"{log_path}: steps {beyond[:5]} are beyond this run's last step {run.total}; the "
                              "log was edited or written by another run: restore it or start over")
    check_log_steps(log_path, rows, run.logged, f"to resume {run.ckpt_path} at step {step}")
    rewrite_log(log_path, rows)


def _load_state(run: _Run, state: dict) -> None:
    """Load the checkpoint's model, optimizer and probe; a CheckpointError if they do not fit the configured ones."""
    try:
        run.method.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        if run.probe is not None:
            run.probe.load_state_dict(state["probe"])
            run.probe_opt.load_state_dict(state["probe_optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # shapes or keys that do not fit the configured model
        first = (str(e).strip().splitlines() or [""])
        detail = next((line.strip() for line in first if "size mismatch" in line or "Missing" in line
                       or "Unexpected" in line), first[0].strip())[:300]
        raise CheckpointError(f"checkpoint {run.ckpt_path} does not fit the model its configuration builds "
                              f"({detail}); the checkpoint was edited or written by another version: start over"
                              ) from None


def _distribute(run: _Run) -> None:
    """``run.model``: the method, or, distributed, the method (SyncBatchNorm with ``model.sync_bn``) in DDP."""
    run.model = run.method
    if not run.rt.distributed:
        return
    if run.cfg.model.sync_bn:  # same parameter objects: the optimizer and the probe hook are unaffected
        run.method = dist.sync_batchnorm(run.method, run.rt.device)
    with warnings.catch_warnings():
        # torch >= 2.14 deprecates broadcast_buffers, but its replacement still syncs buffers at
        # construction; the methods' per-process buffers (SwAV queue) must not be synced at all
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        run.model = nn.parallel.DistributedDataParallel(
            run.method, device_ids=[run.rt.device.index] if run.rt.device.type == "cuda" else None,
            broadcast_buffers=False
        )


def _loader(run: _Run, batch_sampler, persistent: bool) -> DataLoader:
    cfg = run.cfg
    return build_loader(run.dataset, batch_sampler, seed=cfg.seed, num_workers=cfg.num_workers,
                        pin_memory=run.rt.device.type == "cuda", persistent=persistent)


def _on_device(run: _Run, batch, step: int, micro: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """A loader's batch on the run's device: ``(views, labels, indices)``; with the GPU pipeline, its views drawn
    there."""
    views, labels, indices = batch
    rt = run.rt
    if run.gpu_pipeline:  # views of (seed, step, micro-batch, rank): exact on resume
        gen = batch_generator(rt.device, run.cfg.seed, step, micro, rt.rank)
        images = views.to(rt.device) if isinstance(views, torch.Tensor) else decode_batch(views, rt.device)
        views = run.dataset.views(images, generator=gen)
    return (_to_device(views, rt), labels.to(rt.device, non_blocking=True),
            indices.to(rt.device, non_blocking=True))


def _to_device(views: list[torch.Tensor], rt: Runtime) -> list[torch.Tensor]:
    out = []
    for v in views:
        v = v.to(rt.device, non_blocking=True)
        if rt.channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        out.append(v)
    return out


def _prefill(run: _Run) -> None:
    """DeepCluster-v2's pass over the data before training: every sample's projection in the bank."""
    cfg, rt = run.cfg, run.rt
    fill = [[(0, i) for i in b] for b in fill_batches(len(run.dataset), cfg.batch_size // cfg.accumulate,
                                                      rt.world_size, rt.rank)]
    with torch.no_grad(), one_thread(cfg.num_workers == 0):
        for i, batch in enumerate(_loader(run, fill, persistent=False)):
            views, _, indices = _on_device(run, batch, i, 0)
            run.method.fill_memory_(views, indices)
    run.captured.clear()


def _loop(run: _Run) -> bool:
    """Train from ``run.step`` to the last step; False if ``stop_after`` ended the run first."""
    cfg, total = run.cfg, run.total
    steps_per_epoch = run.sampler.steps_per_epoch
    if run.rt.device.type == "cuda":  # the fastest convolution algorithms for the run's fixed shapes (module docstring)
        torch.backends.cudnn.benchmark = True
    run.method.train()
    if run.step == 0 and getattr(run.method, "prefill", False):
        _prefill(run)
    progress_bar = _Progress(total, run.step, run.main, desc=f"{cfg.method} {cfg.data.name}", bar=cfg.progress,
                             samples_per_step=cfg.batch_size)
    log_file = open(run.log_path, "a", encoding="utf-8") if run.main else None
    # one loader for the run: its workers (persistent) live across epochs; each epoch a new pass of the
    # sampler, which carries the epoch to the workers with the indices
    children = set(multiprocessing.active_children())
    loader = _loader(run, run.sampler, persistent=True)
    try:
        while run.step < total:
            epoch, position = divmod(run.step, steps_per_epoch)
            if position == 0:
                run.method.start_epoch(epoch)
            run.sampler.set_epoch(epoch, position)
            run.batches = iter(loader)
            for _ in range(position, steps_per_epoch):
                if run.step >= total:
                    break
                row = _one_step(run, epoch)
                progress_bar.update(row)
                _write_row(run, log_file, row)
                if _maybe_checkpoint(run, epoch):
                    return False
    finally:
        loader = run.batches = None  # the workers stop now, even while a traceback holds this frame
        end_workers(children)
        progress_bar.close()
        if log_file is not None:
            log_file.close()
        if run.hook is not None:
            run.hook.remove()
        run.writer.wait()  # the last checkpoint on disk before results, an exit or an error leaves this loop
    return True


def _write_row(run: _Run, log_file: TextIO | None, row: dict) -> None:
    """Append the step's row to the metrics log (rank 0, every ``log_every`` steps and the last)."""
    step = run.step
    if run.main and (step % run.cfg.log_every == 0 or step == run.total):
        log_file.write(json.dumps(row) + "\n")
        log_file.flush()


def _one_step(run: _Run, epoch: int) -> dict:
    """One optimizer step of ``accumulate`` micro-batches; returns its log row (the metrics' means)."""
    cfg, step = run.cfg, run.step
    t0 = time.perf_counter()
    progress = step / run.total
    lr = warmup_cosine(step, run.total, run.warmup, run.peak_lr, cfg.optim.final_lr * run.peak_lr)
    set_lr(run.optimizer, lr)
    run.optimizer.zero_grad(set_to_none=True)
    if run.probe_opt is not None:
        run.probe_opt.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    logged_step = (step + 1) % cfg.log_every == 0 or step + 1 == run.total  # metrics on these steps only
    for micro in range(cfg.accumulate):
        metrics = _micro_step(run, micro, epoch, progress, logged_step)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v / cfg.accumulate
    run.optimizer.step()
    if run.probe_opt is not None:
        run.probe_opt.step()
    run.method.after_optimizer_step(min(1.0, (step + 1) / run.total))
    run.step = step + 1
    return {"step": run.step, "epoch": epoch, "lr": lr, **{k: finite_or_none(v) for k, v in sums.items()},
            "time_s": time.perf_counter() - t0}


def _micro_step(run: _Run, micro: int, epoch: int, progress: float, logged_step: bool) -> dict[str, float]:
    """Forward and backward of one micro-batch (and the probe's); its metrics (on ``logged_step``: all)."""
    cfg, step = run.cfg, run.step
    with one_thread(cfg.num_workers == 0):
        batch = next_batch(run.batches, step, run.sampler.pieces)
    views, labels, indices = _on_device(run, batch, step, micro)
    last = micro == cfg.accumulate - 1
    sync = run.model.no_sync() if run.rt.distributed and not last else contextlib.nullcontext()
    run.captured.clear()
    # equal micro-batches on every rank: no size exchange; value checks only where they are logged (and on the
    # first step of this process): each is a host sync, and a NaN reaches the loss check anyway
    checked = logged_step or step == run.resumed_at
    with sync, dist.equal_batches(), checks.value_checks(checked):
        out = _forward(run, views, indices, progress, logged_step, epoch)
        loss_value, loss_ok = _loss_check(out.loss, run.rt)
        if not loss_ok:
            raise DivergenceError(
                f"{cfg.method}: the loss is {loss_value} at step {step} (epoch {epoch}); "
                f"lower optim.lr or check the data{_KEPT}"
            )
        (out.loss / cfg.accumulate).backward()
    metrics = {**out.metrics, "loss": loss_value}
    if run.probe is not None:
        with dist.equal_batches():
            metrics.update(_probe_step(run.probe, run.captured[0], labels, views[0].shape[0], cfg.accumulate,
                                       run.rt, values=logged_step))
    return metrics


def _forward(run: _Run, views: list[torch.Tensor], indices: torch.Tensor, progress: float, logged_step: bool,
             epoch: int):
    """The model's forward (a :class:`~mvssl_core.methods.StepOutput`); an estimator's input check that fails
    after this process's first update is a divergence."""
    try:
        with run.autocast():
            return run.model(views, progress, indices, metrics=logged_step)
    except ValueError as e:  # an estimator's input check: NaN features, zero rows...
        if run.step == run.resumed_at and not _non_finite(run.method, run.probe):
            raise  # before any update of this process: not a divergence
        raise DivergenceError(
            f"{run.cfg.method}: training diverged by step {run.step} (epoch {epoch}): {e}; "
            f"lower optim.lr or check the data{_KEPT}") from e


def _maybe_checkpoint(run: _Run, epoch: int) -> bool:
    """After a step: the checkpoint (every ``checkpoint_every`` steps, at the end, on a stop signal), the stop
    itself (:class:`~mvssl_core.preempt.Stopped`); True once ``stop_after`` steps are done (before the end)."""
    cfg, step, total = run.cfg, run.step, run.total
    # a stop signal on any rank: every rank stops after this same step (one all-reduce per step)
    stopping = step < total and run.stop.agreed(run.rt.device)
    if step == total or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stopping:
        # never a checkpoint (nor, at the end, results) of a non-finite state; every rank agrees
        _check_state(run, epoch)
        if run.main:
            _save(run)
    if stopping:
        run.writer.wait()  # on disk before any rank may exit
        dist.global_count(0, run.rt.device)  # a barrier: no rank exits before rank 0 has written
        raise preempt.Stopped(step, total, str(run.ckpt_path), run.stop.signal_name, run.rt.rank, run.rt.world_size)
    return run.stop_after is not None and step >= run.stop_after and step < total


def _check_state(run: _Run, epoch: int) -> None:
    """A DivergenceError, on every rank, if any rank's model, probe or optimizer state is not finite."""
    bad = _non_finite(run.method, run.probe, run.optimizer, run.probe_opt)
    n_bad = dist.global_count(len(bad), run.rt.device) if run.rt.distributed else len(bad)
    if n_bad:
        where = f": {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}" if bad else " (another rank)"
        lower = "probe.lr" if bad and all(b.startswith("probe") for b in bad) else "optim.lr"
        raise DivergenceError(
            f"{run.cfg.method}: the model's state is not finite at step {run.step} (epoch {epoch}){where}; "
            f"lower {lower} or check the data{_KEPT}")


def _save(run: _Run) -> None:
    cfg, step = run.cfg, run.step
    run.writer.submit(run.ckpt_path, {
        "config": json.dumps(to_dict(cfg)),
        "step": step,
        "world_size": run.rt.world_size,
        "model": run.method.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "probe": run.probe.state_dict() if run.probe is not None else {},
        "probe_optimizer": run.probe_opt.state_dict() if run.probe_opt is not None else {},
        "rng": rng_state(),
        "logged_steps": torch.tensor(run.logged + logged_steps(run.resumed_at, step, cfg.log_every, run.total),
                                     dtype=torch.int64),
    })


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
