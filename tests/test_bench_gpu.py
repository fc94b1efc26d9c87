"""scripts/bench_gpu.py: its CPU smoke mode runs every part, and it refuses to measure without a GPU.

The script runs as a command, as a user runs it (it imports the installed ``mvssl_core``)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH_GPU = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH_GPU), *args], cwd=BENCH_GPU.parents[1], capture_output=True,
                          text=True, timeout=600)


def test_cpu_quick_smoke_run():
    methods = ["simclr", "byol_er", "dino", "swav_er", "deepcluster"]  # one per family; every view recipe
    done = bench("--cpu", "--quick", "--methods", *methods)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("resnet18, batch 4 per device, 32 px, fp32")
    for m in methods:
        row = next(line for line in out.splitlines() if line.startswith(f"| {m} |"))
        assert row.count("|") == 6 and row.rstrip().endswith("% |")
    for recipe in ("simclr", "byol", "dino", "swav", "deepcluster"):
        assert any(line.startswith(f"| {recipe} |") and line.count("|") == 6 for line in out.splitlines()
                   if "." in line)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_without_cuda():
    done = bench("--methods", "simclr")
    assert done.returncode == 2
    assert "no CUDA device found" in done.stderr and "--cpu --quick" in done.stderr


def test_cpu_needs_quick():
    done = bench("--cpu")
    assert done.returncode == 2 and "pass --cpu --quick" in done.stderr
