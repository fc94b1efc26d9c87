"""How long a checkpoint holds up the training thread: written in that thread, or by the background writer.

    python scripts/bench_checkpoint.py               # a DeepCluster-v2 ImageNet bank: 2 x 1,281,167 x 128 fp32
    python scripts/bench_checkpoint.py --gib 0.1     # a smaller state

The state is a ResNet-50's worth of parameters (25.6 M float32) and their momenta, plus a memory bank of
``--gib`` GiB (DeepCluster-v2 keeps the projections of both global crops of every ImageNet image: 1.22 GiB),
on CUDA when present. Printed, each the median of ``--repeats`` writes to ``--dir``: the stall of a write in
the training thread (:func:`mvssl_core.runstate.save_checkpoint`: hash, ``torch.save``, fsync, rename), the
stall with :class:`mvssl_core.runstate.CheckpointWriter` (its ``submit``: the host copy), and how long the
background write then takes. The trainer uses the writer (issue 13, item 7).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mvssl_core.runstate import CHECKPOINT_NAME, CheckpointWriter, save_checkpoint


def _state(gib: float, device: torch.device) -> dict:
    params = torch.randn(25_600_000, device=device)
    bank = torch.randn(int(gib * 2**30 / 4), device=device)
    return {"config": "{}", "step": 1, "model": {"params": params, "memory_bank": bank},
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros_like(params)}}, "param_groups": []},
            "rng": {}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.22, help="memory bank size in GiB (default: ImageNet's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="folder to write to (default: a temporary folder)")
    parser.add_argument("--cpu", action="store_true", help="keep the state on the CPU even where CUDA is present")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    state = _state(args.gib, device)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / CHECKPOINT_NAME
        blocking, submit, background = [], [], []
        for _ in range(args.repeats):
            _sync(device)
            t0 = time.perf_counter()
            save_checkpoint(path, state)
            blocking.append(time.perf_counter() - t0)
            writer = CheckpointWriter()
            _sync(device)
            t0 = time.perf_counter()
            writer.submit(path, state)
            submit.append(time.perf_counter() - t0)
            writer.wait()
            background.append(time.perf_counter() - t0)
    stall_sync, stall_async = statistics.median(blocking), statistics.median(submit)
    tensors = [*state["model"].values(), state["optimizer"]["state"][0]["momentum_buffer"]]
    print(f"state: {sum(t.numel() * t.element_size() for t in tensors) / 2**30:.2f} GiB on {device}, "
          f"median of {args.repeats} writes")
    print("| write | training thread held (s) | whole write (s) |")
    print("|---|---|---|")
    print(f"| in the training thread (save_checkpoint) | {stall_sync:.2f} | {stall_sync:.2f} |")
    print(f"| background (CheckpointWriter) | {stall_async:.2f} | {statistics.median(background):.2f} |")
    print(f"stall ratio (background / in thread): {stall_async / stall_sync:.3f}")


if __name__ == "__main__":
    main()
