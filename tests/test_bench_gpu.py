"""scripts/bench_gpu.py: its CPU smoke mode runs every part, and it refuses to measure without a GPU; its
limit includes the EMA teacher's forward, its rates are named samples/s, its pipeline timing starts after the
workers' prefetched batches.

The script runs as a command, as a user runs it (it imports the installed ``mvssl_core``)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

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
    lines = out.splitlines()
    assert "| method | samples/s | backbone(+teacher) limit samples/s | method / limit |" in out
    assert "img/s" not in out and "1 warm-up + 1 timed batches" in out
    for m in methods:
        row = next(line for line in out.splitlines() if line.startswith(f"| {m} |"))
        assert row.count("|") == 7 and row.rstrip().endswith("| n/a (n/a) |")  # no peak memory off CUDA
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


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH_GPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Counting(nn.Module):
    """``(N, 3, H, W) -> (N, 2)``; counts its forward calls and whether each one recorded gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.calls: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(torch.is_grad_enabled())
        return self.lin(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("name, teacher_views", [("simclr", 0), ("swav", 0), ("deepcluster", 0), ("byol", 2),
                                                  ("byol_er", 2), ("dino", 2), ("dino_er", 2)])
def test_the_limit_includes_the_teachers_forward(name, teacher_views):
    bench = load_bench()
    student = Counting()
    method = bench.make_method(name, student, 2, 4096)
    teacher, n = bench.limit_teacher(method, student)
    assert n == teacher_views and (teacher is None) == (teacher_views == 0)
    if teacher is not None:
        assert teacher is not student and not any(p.requires_grad for p in teacher.parameters())
        teacher.calls.clear()
    views_ = [torch.randn(4, 3, s, s) for s in bench.view_sizes(name, 16)]
    student.calls.clear()
    loss = bench.limit_loss(student, teacher, views_, n)
    loss.backward()
    assert student.calls == [True] * len(views_)  # every view, with gradients
    if teacher is not None:
        assert teacher.calls == [False] * 2  # the two global views, without
    assert student.lin.weight.grad is not None


def test_pipeline_warmup_drains_the_prefetched_batches():
    bench = load_bench()
    assert bench.pipeline_warmup_batches(8) == 17 and bench.pipeline_warmup_batches(8, 4) == 33
    assert bench.pipeline_warmup_batches(0) == 1
    assert "img/s" not in bench.METHOD_HEADER and bench.METHOD_HEADER.count("samples/s") == 2


def test_views_are_the_imagenet_recipes_crops():
    """The bench times the crops the recipes train with (before: DINO 2 + 8, DeepCluster 2 x 224 + 6 x 96)."""
    bench = load_bench()
    assert bench.view_sizes("dino_er", 224) == [224, 224] + [96] * 6
    assert bench.view_sizes("deepcluster", 224) == [160, 160] + [96] * 4
    assert bench.view_sizes("simclr", 32) == [32, 32]
    assert bench.peak_gib_at_512(torch.device("cpu"), 4) is None


def test_check_gpu_reads_the_targets_from_its_logs(tmp_path):
    """scripts/check_gpu.sh's last part: the issue's targets judged from bench_gpu's table (the columns this
    script prints) and the decode rate; a row that misses a target says NOT met."""
    text = (Path(__file__).resolve().parents[1] / "scripts" / "check_gpu.sh").read_text()
    tail = text[text.index("== targets"):]
    code = tail[tail.index("<<'EOF'\n") + 8: tail.index("\nEOF\n")]
    header = load_bench().METHOD_HEADER
    (tmp_path / "bench_gpu.log").write_text(
        f"{header}\n|---|---:|---:|---:|---:|---:|\n| dino | 1400 | 1500 | 93.3% | 2.1% | 60.2 (65.4) |\n"
        "| simclr | 1700 | 1750 | 97.1% | 4.0% | n/a (42.0) |\n")
    (tmp_path / "decode_rate.log").write_text("decode: 3000 images/s (500 x 375 JPEGs, batches of 64)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("dino: step 93.3% ") and lines[0].endswith("60.2 (65.4): met")
    assert lines[1].startswith("simclr: ") and lines[1].endswith("NOT met")  # heads + loss 4.0 % > 3 %
    assert lines[2] == "decode 3000 images/s = 1.8 x the fastest method's 1700 samples/s (>= 2): NOT met"
