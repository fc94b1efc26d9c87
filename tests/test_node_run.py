"""Issue 13's "done when", end to end through ``scripts/pretrain.sh --cpu`` (2 gloo processes, DataLoader workers):
every method (the 5 families and their ER variants) on both data pipelines (PIL views in the workers; the batched views of
``mvssl_core.gpu_views`` from undecoded JPEG bytes), stopped after 3 steps and resumed on another process count;
and SIGUSR1 with workers: no step lost, resumed on one process.

Tiny recipes as in test_scripts.py (24 JPEGs, batch 8, 2 epochs = 6 steps).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mvssl_core.methods import METHODS

from test_preempt import usr1_to_pretrain_sh  # noqa: E402
from test_scripts import PRETRAIN, _env, _run, imagefolder, tiny  # noqa: E402,F401  (imagefolder: a fixture)

pytestmark = pytest.mark.slow


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_step(run: Path) -> int:
    return int(torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["step"])


@pytest.mark.parametrize("pipeline", ["workers", "device"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_on_both_pipelines_and_resumes_on_another_process_count(method, pipeline, imagefolder,
                                                                                   tmp_path):
    out = tmp_path / "run"
    common = ["--results-dir", tmp_path / "results", "--", *tiny(method), "num_workers=1", "checkpoint_every=1",
              f"data.gpu_pipeline={'true' if pipeline == 'device' else 'false'}"]
    env = _env(tmp_path)
    first = _run(PRETRAIN, [method, imagefolder, out, "--cpu", "--nproc", "2", "--stop-after", "3", *common], env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _checkpoint_step(out) == 3 and _steps(out) == [1, 2, 3]
    assert not (out / "results.json").exists()

    again = _run(PRETRAIN, [method, imagefolder, out, "--cpu", "--nproc", "1", *common], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr
    assert _steps(out) == [1, 2, 3, 4, 5, 6] and _checkpoint_step(out) == 6
    record = json.loads((out / "results.json").read_text())
    assert record["method"] == method and record["config"]["data"]["gpu_pipeline"] is (pipeline == "device")
    assert record["config"]["num_workers"] == 1


def test_sigusr1_with_workers_loses_no_step_and_resumes_on_one_process(imagefolder, tmp_path):
    """SIGUSR1 to pretrain.sh (2 processes, 2 workers each, persistent): both ranks stop after the same step,
    whose checkpoint is written (no step lost: the log ends at that step), exit 0; resumed on 1 process, the run
    finishes with every step logged once."""
    out = tmp_path / "run"
    args = ["dino", imagefolder, out, "--cpu", "--nproc", "2", "--results-dir", tmp_path / "results", "--",
            *tiny("dino"), "epochs=20", "checkpoint_every=0", "num_workers=2"]  # 60 steps
    step, _ = usr1_to_pretrain_sh(args, _env(tmp_path), out / "metrics.jsonl", total=60)
    assert _checkpoint_step(out) == step and _steps(out) == list(range(1, step + 1))

    args[args.index("2")] = "1"  # --nproc 1
    again = _run(PRETRAIN, args, _env(tmp_path), timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _steps(out) == list(range(1, 61)) and (out / "results.json").exists()
