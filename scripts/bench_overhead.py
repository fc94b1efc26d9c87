"""Per-step overhead of issue 13 item 7: the old and the new way of four small parts of a training step.

    python scripts/bench_overhead.py            # ResNet-50 LARS, 4096 x 256 effective rank, on CUDA if present
    python scripts/bench_overhead.py --quick    # ResNet-18, smaller inputs, few repeats: a smoke run of seconds
    python scripts/bench_overhead.py --cpu      # on the CPU even where CUDA is present

Parts, old -> new (the old ways are the reference implementations kept in the library or written out here):
  - LARS step over a backbone's parameters (``param_groups``, weight decay 1e-6, momentum 0.9): the loop over
    tensors (``LARS(foreach=False)``) -> ``torch._foreach_*`` operations (``foreach=True``, the default on
    CUDA; on the CPU the default stays the loop, which is faster there). Also the number of operators
    dispatched per step (counted with a ``TorchDispatchMode``: one foreach operator counts once);
  - vMF log-normaliser log C_d(kappa) for a number kappa (d = 128, kappa = 10): computed on every call
    -> cached per (d, kappa);
  - Sinkhorn codes of SwAV's 256 x 3000 cosines (epsilon 0.05, 3 rounds, float32): the log-domain kernel
    alone -> the whole public ``losses.sinkhorn`` (input checks, the choice of domain with its one host sync,
    and the linear-domain kernel), so the ratio understates the gain of the kernel;
  - effective rank of ``projection_metrics`` (unit rows, N x d float32): ``svdvals`` of the batch ->
    ``eigvalsh`` of the float64 Gram matrix.
Times are the minimum over ``--repeats`` rounds of the mean time per call in a round (the minimum is the
least disturbed by other processes on a shared machine), after one untimed round; CUDA is synchronised
around each round.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mvssl_core import losses, special
from mvssl_core.backbones import build_backbone
from mvssl_core.methods.step import _effective_rank
from mvssl_core.optim import LARS, param_groups


class _CountOps(TorchDispatchMode):
    """Counts the operators dispatched while active (what a step launches, before any fusion)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, calls: int, repeats: int) -> float:
    """Seconds per call of ``fn``: the minimum over ``repeats`` rounds of ``calls`` calls, after one round."""
    best = float("inf")
    for round_ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        if round_ > 0:
            best = min(best, (time.perf_counter() - start) / calls)
    return best


def bench_lars(backbone: str, device: torch.device, calls: int, repeats: int) -> dict:
    """LARS step time and dispatched operators, loop vs foreach, on ``backbone``'s parameters."""
    model, _ = build_backbone(backbone)
    model = model.to(device)
    gen = torch.Generator(device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, device=device, generator=gen) * 1e-3
    out = {"tensors": sum(1 for _ in model.parameters())}
    for name, foreach in (("old", False), ("new", True)):
        opt = LARS(param_groups(model, 1e-6), lr=1e-6, momentum=0.9, foreach=foreach)  # tiny lr: weights stay
        opt.step()  # momentum buffers exist from here on, as in training
        with _CountOps() as counter:
            opt.step()
        out[f"{name}_ops"] = counter.count
        out[name] = time_call(opt.step, device, calls, repeats)
    return out


def bench_vmf(device: torch.device, calls: int, repeats: int, d: int = 128, kappa: float = 10.0) -> dict:
    """log C_d(kappa) for a number kappa: uncached (the kernel on a float64 tensor) vs the cached public call."""

    def old():
        return special._vmf_log_normalizer(d, torch.tensor(kappa, dtype=torch.float64))

    def new():
        return special.vmf_log_normalizer(d, kappa)

    assert torch.equal(old(), new())
    return {"old": time_call(old, device, calls, repeats), "new": time_call(new, device, calls, repeats)}


def bench_sinkhorn(device: torch.device, calls: int, repeats: int, n: int = 256, k: int = 3000) -> dict:
    """SwAV's codes: the log-domain kernel vs the public sinkhorn (which takes the linear domain here)."""
    gen = torch.Generator(device).manual_seed(1)
    z = F.normalize(torch.randn(n, 128, device=device, generator=gen), dim=1)
    scores = z @ F.normalize(torch.randn(k, 128, device=device, generator=gen), dim=1).T
    eps, iters = 0.05, 3

    def old():
        return losses._sinkhorn_log(scores / eps, n, iters, False)

    def new():
        return losses.sinkhorn(scores, eps, iters)

    diff = float(((new() - old()).abs() / old()).max())
    return {"old": time_call(old, device, calls, repeats), "new": time_call(new, device, calls, repeats),
            "shape": f"{n} x {k}", "max_rel_diff": diff}


def _effective_rank_svd(z: torch.Tensor) -> torch.Tensor:
    """The effective rank as ``projection_metrics`` computed it before: ``svdvals`` of the batch."""
    s = torch.linalg.svdvals(z)
    p = s / s.sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum())


def bench_effective_rank(device: torch.device, calls: int, repeats: int, n: int, d: int) -> dict:
    gen = torch.Generator(device).manual_seed(2)
    z = F.normalize(torch.randn(n, d, device=device, generator=gen), dim=1)
    old_value, new_value = float(_effective_rank_svd(z)), float(_effective_rank(z))
    return {"old": time_call(lambda: _effective_rank_svd(z), device, calls, repeats),
            "new": time_call(lambda: _effective_rank(z), device, calls, repeats),
            "shape": f"{n} x {d}", "rel_diff": abs(new_value - old_value) / old_value}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-18, N = 512, 1 call x 2 rounds: a smoke run")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is present")
    parser.add_argument("--repeats", type=int, help="timed rounds per part (default 5, 2 with --quick)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    repeats = args.repeats or (2 if args.quick else 5)
    calls = 1 if args.quick else 10
    backbone = "resnet18" if args.quick else "resnet50"
    n_rank, d_rank = (512, 128) if args.quick else (4096, 256)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print(f"{where}, torch {torch.__version__}; min over {repeats} rounds of {calls} call(s) after one untimed round")
    print()
    print("| part | size | old (ms) | new (ms) | old / new | note |")
    print("|---|---|---:|---:|---:|---|")

    def row(part: str, size: str, r: dict, note: str) -> None:
        print(f"| {part} | {size} | {1e3 * r['old']:.3f} | {1e3 * r['new']:.3f} | {r['old'] / r['new']:.1f}x "
              f"| {note} |", flush=True)

    r = bench_lars(backbone, device, calls, repeats)
    row("LARS step", f"{backbone}, {r['tensors']} tensors", r, f"operators per step {r['old_ops']} -> {r['new_ops']}")
    r = bench_vmf(device, calls * 10, repeats)
    row("vMF log-normaliser", "d = 128, kappa = 10", r, "equal values")
    r = bench_sinkhorn(device, calls, repeats)
    row("Sinkhorn", r["shape"], r, f"max relative difference {r['max_rel_diff']:.1e}")
    r = bench_effective_rank(device, calls, repeats, n_rank, d_rank)
    row("effective rank", r["shape"], r, f"relative difference {r['rel_diff']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
