"""Step time of every method, and the share of it spent in the loss and the estimators.

    python scripts/bench_methods.py            # ResNet-18 (small-image stem), batch 256, 32x32, CPU
    python scripts/bench_methods.py --quick    # batch 64, one timed step: a smoke run

A step is what the trainer does: forward of every view, loss, backward, LARS step, and the
method's after-step update (EMA teacher). Views are random tensors (no data loading), with the
paper's multi-crop where the method uses it (DINO: 2 global + 8 local crops, SwAV and
DeepCluster-v2: 2 + 6; local crops 14 px, the 96/224 scaling of 32 px). Heads have the papers'
sizes (``mvssl_core.heads``).

How the loss share is measured: during a step, every call of a loss or estimator function (the
outermost one, when they nest) is recorded with its inputs; after the step each recorded call is
replayed on copies of its inputs and timed, forward *and* backward (for outputs with a gradient).
"loss" covers the training objective (NT-Xent, BYOL, DINO, SwAV + Sinkhorn, DeepCluster, the ER
bound and its KDE / discrete entropies, the DINO centre update); "report" covers the detached ER
terms every method reports (``projection_metrics``, ``assignment_metrics``). The target of issue 3:
the ER loss takes at most 3% of the step.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time

import torch

from mvssl_core import bounds, entropy, losses
from mvssl_core.backbones import build_backbone
from mvssl_core.config import apply_overrides
from mvssl_core.methods import METHODS, build_method
from mvssl_core.methods import byol, deepcluster, dino, simclr, swav
from mvssl_core.optim import LARS, param_groups

# (module, attribute, category) of every function whose time counts as loss or report
PATCHES = [
    (simclr, "nt_xent", "loss"),
    (byol, "byol_loss", "loss"),
    (dino, "dino_loss", "loss"),
    (swav, "swav_loss", "loss"),
    (swav, "sinkhorn", "loss"),
    (deepcluster, "deepcluster_loss", "loss"),
    (bounds, "er_bound", "loss"),
    (bounds, "er_bound_discrete", "loss"),
    (bounds, "er_bound_discrete_multicrop", "loss"),
    (entropy, "kde_entropy", "loss"),
    (entropy, "discrete_entropy", "loss"),
    (losses.DINOCenter, "update_", "loss"),
    *[(m, "projection_metrics", "report") for m in (simclr, byol, dino, swav, deepcluster)],
    *[(m, "assignment_metrics", "report") for m in (dino, swav, deepcluster)],
]


class Recorder:
    """Records the outermost calls of the patched functions during a step."""

    def __init__(self) -> None:
        self.depth, self.calls, self.active = 0, [], False

    def wrap(self, fn, category):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not self.active or self.depth > 0:
                return fn(*args, **kwargs)
            self.depth += 1
            try:
                self.calls.append((fn, category, _copy(args), _copy(kwargs)))
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1

        return wrapper


def _copy(x):
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():
            return x.detach().clone().requires_grad_(x.requires_grad)
        return x.clone()
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_copy(v) for v in x)
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return x


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def replay(calls) -> dict[str, float]:
    """Forward + backward time of each recorded call, summed per category (seconds)."""
    out = {"loss": 0.0, "report": 0.0}
    for fn, category, args, kwargs in calls:
        args, kwargs = _copy(args), _copy(kwargs)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        grads = [t for t in _tensors(result) if t.requires_grad and t.is_floating_point()]
        if grads:
            sum(t.float().sum() for t in grads).backward()
        out[category] += time.perf_counter() - start
    return out


def make_method(name: str, dataset_size: int, hyper: dict | None = None) -> torch.nn.Module:
    backbone, dim = build_backbone("resnet18", small_images=True)
    hyper = dict(hyper or {})
    if name.startswith("deepcluster"):
        hyper["dataset_size"] = dataset_size
    method = build_method(name, backbone, dim, **hyper)
    if name == "deepcluster":  # fill the bank and cluster once, so the step has targets
        with torch.no_grad():
            method.memory.copy_(torch.nn.functional.normalize(torch.randn_like(method.memory), dim=-1))
            method.seen.fill_(True)
        method.start_epoch(0)
    return method


def views_for(name: str, batch: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    family = name.removesuffix("_er")
    n_local = {"dino": 8, "swav": 6, "deepcluster": 6}.get(family, 0)
    local = max(4, round(size * 96 / 224))
    shapes = [size] * 2 + [local] * n_local
    return [torch.randn(batch, 3, s, s, generator=generator) for s in shapes]


def bench(name: str, batch: int, size: int, steps: int, warmup: int, hyper: dict | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    method = make_method(name, dataset_size=max(3000, batch), hyper=hyper)
    method.train()
    opt = LARS(param_groups(method, 1e-6), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    indices = torch.arange(batch)
    recorder = RECORDER
    step_times, shares = [], {"loss": [], "report": []}
    for i in range(warmup + steps):
        views = views_for(name, batch, size, gen)
        recorder.calls, recorder.active = [], i >= warmup
        start = time.perf_counter()
        out = method(views, 0.5, indices)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        method.after_optimizer_step(0.5)
        elapsed = time.perf_counter() - start
        recorder.active = False
        if i >= warmup:
            step_times.append(elapsed)
            t = replay(recorder.calls)
            for k in shares:
                shares[k].append(t[k])
    step = sum(step_times) / len(step_times)
    return {
        "step_s": step,
        "loss_s": sum(shares["loss"]) / len(step_times),
        "report_s": sum(shares["report"]) / len(step_times),
    }


RECORDER = Recorder()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 64, no warm-up, one timed step")
    parser.add_argument("--batch", type=int, help="batch size (default 256, 64 with --quick)")
    parser.add_argument("--size", type=int, default=32, help="image side of the global crops")
    parser.add_argument("--steps", type=int, help="timed steps (default 2, 1 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 1, 0 with --quick)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--hyper", action="append", default=[], metavar="FAMILY.KEY=VALUE",
                        help="a method family's hyper-parameter, e.g. --hyper dino.head.out=4096 (value read as YAML)")
    args = parser.parse_args(argv)
    hyper_by_family = apply_overrides({}, args.hyper)
    batch = args.batch or (64 if args.quick else 256)
    steps = args.steps or (1 if args.quick else 2)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    for module, attr, category in PATCHES:
        setattr(module, attr, RECORDER.wrap(getattr(module, attr), category))

    print(f"ResNet-18 (small-image stem), batch {batch}, {args.size}x{args.size}, CPU "
          f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}; {warmup} warm-up + {steps} timed step(s)"
          + (f"; hyper {hyper_by_family}" if hyper_by_family else ""))
    print()
    print("| method | step (s) | loss + estimators (s) | loss share | ER report (s) | report share |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.methods:
        r = bench(name, batch, args.size, steps, warmup, hyper_by_family.get(name.removesuffix("_er")))
        print(f"| {name} | {r['step_s']:.2f} | {r['loss_s']:.3f} | {100 * r['loss_s'] / r['step_s']:.1f}% "
              f"| {r['report_s']:.3f} | {100 * r['report_s'] / r['step_s']:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
