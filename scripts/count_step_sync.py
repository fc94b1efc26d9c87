"""Collectives and host syncs per training step of every method, with 2 gloo processes (issue 13 item 7).

    python scripts/count_step_sync.py                  # the 5 methods, 7 steps, a line logged every 3 steps
    python scripts/count_step_sync.py --methods simclr dino_er
    COUNT_WHERE=1 python scripts/count_step_sync.py --methods dino   # also where each call comes from (stderr)

Each of 2 processes (gloo, CPU) runs :func:`mvssl_core.train.train` on a tiny run (ConvNet, 16 x 16 images,
batch 16, no accumulation, so a step is one micro-step, online probe on) while ``torch.distributed``'s
collectives and the tensor methods that copy a value to the host (``item``, ``tolist``, ``__bool__``,
``__float__``, ``__int__``) count their calls. A step runs from one ``set_lr`` call of the loop to the next:
its forward, backward, optimizer step, log line and stop agreement. The last step (checkpoint, results) is
left out, and so is the loading of the batch (the views are drawn on the host). Printed: rank 0's mean
count per step, over the steps that write a log line and over the others.

What is not counted: the gradient all-reduce of DistributedDataParallel (its C++ reducer calls the process
group directly: one all-reduce per bucket, the same for every method and step). On the CPU every tensor is
on the host, so a host "sync" here is every such call, also on tensors that stay on the CPU on a GPU run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections import Counter

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch.utils.data.dataloader import _BaseDataLoaderIter

COLLECTIVES = ("all_gather", "all_gather_into_tensor", "all_reduce", "broadcast", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "gather", "scatter", "barrier",
               "all_gather_object", "broadcast_object_list")
HOST_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__")
METHODS = ("simclr", "byol", "dino", "swav", "deepcluster")
WORLD = 2


def _values(method: str, out: str, steps: int, log_every: int) -> dict:
    """A tiny run of ``method`` (the heads and data of ``tests/test_train.py``), one epoch long."""
    head = {"hidden": 32, "out": 16}
    family = method.removesuffix("_er")
    hyper = {
        "simclr": {"projector": head},
        "byol": {"projector": head, "predictor": head, "base_momentum": 0.9},
        "dino": {"head": {"hidden": 32, "bottleneck": 16, "out": 32}, "base_momentum": 0.9},
        "swav": {"projector": head, "prototypes": {"n_prototypes": 16}},
        "deepcluster": {"projector": head, "prototypes": {"n_prototypes": 8, "heads": 2}},
    }[family]
    view_kwargs = {"n_local": 2} if family in ("dino", "swav", "deepcluster") else {}
    return {
        "method": method, "hyper": hyper,
        "data": {"name": "shapes", "size": 16, "n": 16 * (steps + 1), "view_kwargs": view_kwargs},
        "model": {"backbone": "convnet", "kwargs": {"widths": [8, 16]}},
        "optim": {"name": "sgd", "lr": 0.1, "warmup_epochs": 0.0},
        "batch_size": 16, "steps": steps, "num_workers": 0, "log_every": log_every, "checkpoint_every": 0,
        "progress": False, "out": out, "eval": {"knn": False, "linear": False},
    }


def _caller() -> str:
    """The innermost mvssl_core frame of the call outside ``dist.py`` (file:line function)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "mvssl_core" in frame.filename and not frame.filename.endswith("dist.py"):
            return f"{frame.filename.split('mvssl_core')[-1]}:{frame.lineno} {frame.name}"
    return "?"


class _Counts:
    """Counts calls of the collectives and host-sync methods; ``marks`` are snapshots taken at each step start."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.marks: list[Counter[str]] = []
        self._undo: list[tuple[object, str, object]] = []
        self.paused = False
        self.where: Counter[tuple[str, str]] | None = Counter() if os.environ.get("COUNT_WHERE") else None

    def _wrap(self, owner: object, name: str, key: str) -> None:
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            if not self.paused:
                self.calls[key] += 1
                if self.where is not None:
                    self.where[(key, _caller())] += 1
            return original(*args, **kwargs)

        self._undo.append((owner, name, original))
        setattr(owner, name, counted)

    def install(self) -> None:
        import mvssl_core.train as train_mod

        for name in COLLECTIVES:
            if hasattr(torch_dist, name):
                self._wrap(torch_dist, name, "collective")
        for name in HOST_SYNCS:
            self._wrap(torch.Tensor, name, "sync")
        set_lr = train_mod.set_lr

        def marking(*args, **kwargs):
            self.marks.append(Counter(self.calls))
            return set_lr(*args, **kwargs)

        self._undo.append((train_mod, "set_lr", set_lr))
        train_mod.set_lr = marking
        loader_next = _BaseDataLoaderIter.__next__

        def loading(*args, **kwargs):  # the data pipeline (views drawn on the host) is not the step's overhead
            self.paused = True
            try:
                return loader_next(*args, **kwargs)
            finally:
                self.paused = False
        self.where: Counter[tuple[str, str]] | None = Counter() if os.environ.get("COUNT_WHERE") else None

        self._undo.append((_BaseDataLoaderIter, "__next__", loader_next))
        _BaseDataLoaderIter.__next__ = loading

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()

    def per_step(self) -> list[dict[str, int]]:
        """Counts of each step but the last (from its start to the next step's start)."""
        return [{k: b[k] - a[k] for k in ("collective", "sync")} for a, b in zip(self.marks, self.marks[1:])]


def _worker(rank: int, init_file: str, out_dir: str, methods: list[str], steps: int, log_every: int) -> None:
    from mvssl_core.config import load_config
    from mvssl_core.train import train

    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {}
    try:
        for method in methods:
            cfg = load_config(None, base=_values(method, os.path.join(out_dir, method), steps, log_every))
            counts = _Counts()
            counts.install()
            try:
                train(cfg)
            finally:
                counts.uninstall()
            results[method] = counts.per_step()
            if counts.where is not None and rank == 0:
                for (key, where), n in sorted(counts.where.items(), key=lambda kv: -kv[1]):
                    print(f"{method} {key} {n} {where}", file=sys.stderr)
            torch_dist.barrier()  # rank 0 has finished the run's results before the next run starts
        torch.save(results, os.path.join(out_dir, f"counts{rank}.pt"))
    finally:
        torch_dist.destroy_process_group()


def count(methods: list[str], steps: int = 7, log_every: int = 3) -> dict[str, dict[str, dict[str, float]]]:
    """Per method: {"logged" | "not_logged": {"collective": mean, "sync": mean, "max_collective": max}} of rank 0.

    The steps counted are 1 .. steps - 1; the logged ones among them are the multiples of ``log_every``.
    """
    os.environ.pop("WORLD_SIZE", None)  # the process group is made here, not from torchrun's variables
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp, list(methods), steps, log_every), nprocs=WORLD,
                 join=True)
        per_step = torch.load(os.path.join(tmp, "counts0.pt"))
    out = {}
    for method, rows in per_step.items():
        groups = {"logged": [], "not_logged": []}
        for i, row in enumerate(rows):
            groups["logged" if (i + 1) % log_every == 0 else "not_logged"].append(row)
        out[method] = {
            name: {"collective": sum(r["collective"] for r in g) / len(g), "sync": sum(r["sync"] for r in g) / len(g),
                   "max_collective": max(r["collective"] for r in g)}
            for name, g in groups.items() if g
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from mvssl_core.methods import METHODS as NAMES

    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(NAMES), metavar="METHOD",
                        help="method names (default: the 5 methods without their ER variants)")
    parser.add_argument("--steps", type=int, default=7, help="steps of each run (7)")
    parser.add_argument("--log-every", type=int, default=3, help="a log line every N steps (3)")
    args = parser.parse_args(argv)
    if args.log_every < 1 or args.steps < args.log_every + 2:
        parser.error(f"--log-every must be >= 1 and --steps >= --log-every + 2, got {args.log_every} and {args.steps}")
    result = count(args.methods, args.steps, args.log_every)
    print("| method | collectives / step, not logged | host syncs / step, not logged "
          "| collectives / step, logged | host syncs / step, logged |")
    print("|---|---|---|---|---|")
    for method, groups in result.items():
        quiet, loud = groups.get("not_logged", {}), groups.get("logged", {})
        print(f"| {method} | {quiet.get('collective', float('nan')):.1f} | {quiet.get('sync', float('nan')):.1f} "
              f"| {loud.get('collective', float('nan')):.1f} | {loud.get('sync', float('nan')):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
