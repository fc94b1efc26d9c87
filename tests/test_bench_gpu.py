"""scripts/bench_gpu.py: its CPU smoke mode runs every part, and it refuses to measure without a GPU."""

import pytest
import torch

from _scripts import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("scripts/bench_gpu.py", "bench_gpu")


def test_cpu_quick_smoke_run(bench, capsys):
    methods = ["simclr", "byol_er", "dino", "swav_er", "deepcluster"]  # one per family; every view recipe
    assert bench.main(["--cpu", "--quick", "--methods", *methods]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet18, batch 4 per device, 32 px, fp32")
    for m in methods:
        row = next(line for line in out.splitlines() if line.startswith(f"| {m} |"))
        assert row.count("|") == 6 and row.rstrip().endswith("% |")
    for recipe in ("simclr", "byol", "dino", "swav", "deepcluster"):
        assert any(line.startswith(f"| {recipe} |") and line.count("|") == 6 for line in out.splitlines()
                   if "." in line)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_without_cuda(bench, capsys):
    assert bench.main(["--methods", "simclr"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device found" in err and "--cpu --quick" in err


def test_cpu_needs_quick(bench, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--cpu"])
    assert e.value.code == 2 and "pass --cpu --quick" in capsys.readouterr().err
