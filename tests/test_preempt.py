"""SIGTERM / SIGUSR1 stop a run after the step in progress with a checkpoint of that step (mvssl_core.preempt):
one process, 2 gloo processes under torchrun (the signal to the launcher, or to one rank only), and
scripts/pretrain.sh --cpu under a faked SLURM job (SIGUSR1 to the script: checkpoint, `scontrol requeue`, exit 0).

Real signals to real subprocesses; tiny runs as in tests/test_train.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mvssl_core import preempt
from mvssl_core.config import load_config
from mvssl_core.runstate import CHECKPOINT_NAME, METRICS_NAME, RESULTS_NAME, load_checkpoint
from mvssl_core.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_scripts import PRETRAIN, imagefolder, tiny  # noqa: E402,F401  (imagefolder: a fixture)
from test_scripts import _env as _script_env  # noqa: E402
from test_train import _env, _log, _params, _values  # noqa: E402

STEPS = 60
# no periodic checkpoint: the only checkpoint before the end is the one the signal writes
KW = dict(steps=STEPS, checkpoint_every=0, optim={"name": "sgd", "lr": 0.1, "warmup_epochs": 1.0})
# nothing that depends on the per-process batch (GroupNorm, no BatchNorm in the heads): 2 processes equal 1
NO_BN = dict(KW, model={"backbone": "convnet", "kwargs": {"widths": [8, 16], "norm": "group"}},
             hyper={"projector": {"hidden": 32, "out": 16, "bn": False},
                    "predictor": {"hidden": 32, "out": 16, "bn": False}, "base_momentum": 0.9})
STOPPED = re.compile(r"stopped by (SIG\w+|a signal received by another rank) at step (\d+) of (\d+)")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wait_for_lines(proc: subprocess.Popen, log: Path, n: int, timeout: float = 120) -> int:
    """Wait until ``log`` has ``n`` lines (the run is mid-way); returns the lines seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and (lines := len(log.read_text().splitlines())) >= n:
            return lines
        time.sleep(0.02)
    _, err = proc.communicate(timeout=60)
    raise AssertionError(f"the run ended or stalled before step {n}: {err[:3000]} ... {err[-1500:]}")


def _stops(stderr: str) -> list[tuple[str, int, int]]:
    return [(m[1], int(m[2]), int(m[3])) for m in STOPPED.finditer(stderr)]


def _assert_same_params(a: Path, b: Path) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key


def _straight(tmp_path_factory, kw: dict) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(None, base=_values("byol", out, **kw)))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run of the configuration the one-process tests interrupt."""
    return _straight(tmp_path_factory, KW)


@pytest.fixture(scope="module")
def straight_no_bn(tmp_path_factory) -> Path:
    """An uninterrupted one-process run of the configuration the 2-process tests interrupt."""
    return _straight(tmp_path_factory, NO_BN)


def _config(tmp_path: Path, run: str, kw: dict = KW) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(_values("byol", tmp_path / run, **kw)))  # JSON is YAML
    return cfg


def _resume_and_compare(cmd: list[str], tmp_path: Path, run: Path, straight: Path) -> None:
    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == STEPS
    assert _log(run) == _log(straight)
    _assert_same_params(run, straight)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_stops_with_a_checkpoint_of_that_step_then_resumes_exactly(sig, tmp_path, straight):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mvssl_core", "pretrain", "--config", str(_config(tmp_path, "run"))]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = _wait_for_lines(proc, run / METRICS_NAME, 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == preempt.EXIT_STOPPED == 0, err[-3000:]
    stops = _stops(err)
    assert len(stops) == 1, err[-3000:]
    name, step, total = stops[0]
    assert name == sig.name and total == STEPS and seen <= step < STEPS
    assert "resume with --resume" in err and "Traceback" not in err
    # the checkpoint is at the step where it stopped, the log ends there, the run is not finished
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == step
    assert [row["step"] for row in _log(run)] == list(range(1, step + 1))
    assert not (run / RESULTS_NAME).exists()
    _resume_and_compare(cmd, tmp_path, run, straight)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _rank_pid(launcher: int, rank: int) -> int:
    for pid in _children(launcher):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker of rank {rank} under torchrun (pid {launcher})")


@pytest.mark.parametrize("target", ["launcher", "rank1"])
def test_two_gloo_processes_stop_at_the_same_step(target, tmp_path, straight_no_bn):
    """SIGTERM to torchrun (it passes it on to both workers, as pretrain.sh's trap does), or SIGUSR1 to rank 1
    alone (rank 0 learns it from the all-reduce): both ranks stop after the same step, rank 0's checkpoint
    holds it, and --resume on one process ends where the uninterrupted one-process run does (up to rounding:
    2 processes sum their gradients in another order)."""
    run = tmp_path / "run"
    cfg = _config(tmp_path, "run", NO_BN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mvssl_core", "pretrain", "--config", str(cfg), "--set", "num_workers=1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = _wait_for_lines(proc, run / METRICS_NAME, 3)
    if target == "launcher":
        proc.send_signal(signal.SIGTERM)
    else:
        os.kill(_rank_pid(proc.pid, 1), signal.SIGUSR1)
    _, err = proc.communicate(timeout=180)
    if target == "rank1":  # every worker exited 0: torchrun did too (after a signal of its own it exits 1)
        assert proc.returncode == 0, err[-3000:]
    stops = _stops(err)
    assert len(stops) == 2, err[-3000:]
    assert {s[1] for s in stops} == {stops[0][1]}, f"the ranks stopped at different steps: {stops}"
    step = stops[0][1]
    assert seen <= step < STEPS
    if target == "rank1":
        assert sorted(s[0] for s in stops) == ["SIGUSR1", "a signal received by another rank"]
    assert load_checkpoint(run / CHECKPOINT_NAME)["step"] == step
    assert load_checkpoint(run / CHECKPOINT_NAME)["world_size"] == 2
    assert [row["step"] for row in _log(run)] == list(range(1, step + 1))
    # resumed on one process: the data and the updates do not depend on the process count
    single = [sys.executable, "-m", "mvssl_core", "pretrain", "--config", str(cfg)]
    resumed = subprocess.run(single + ["--resume"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [row["step"] for row in _log(run)] == list(range(1, STEPS + 1))
    pa, pb = _params(run), _params(straight_no_bn)
    for key in pa:  # 2 processes sum their gradients in another order: equal up to rounding
        torch.testing.assert_close(pa[key], pb[key], rtol=1e-4, atol=1e-5, msg=key)


def usr1_to_pretrain_sh(args: list, env: dict, log: Path, total: int) -> tuple[int, str]:
    """Run scripts/pretrain.sh (2 processes), send it SIGUSR1 once 2 log lines are written; it must exit 0 with
    both ranks stopped at the same step. Returns (that step, the script's stderr)."""
    proc = subprocess.Popen([str(PRETRAIN), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = _wait_for_lines(proc, log, 2, timeout=240)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    stops = _stops(err)
    assert len(stops) == 2 and stops[0][1] == stops[1][1], err[-3000:]
    assert seen <= stops[0][1] < total
    return stops[0][1], err


@pytest.mark.slow
def test_pretrain_sh_requeues_on_sigusr1_under_slurm(imagefolder, tmp_path):
    """SLURM's B:USR1 to the batch shell (pretrain.sh --cpu, 2 gloo processes): the script passes it on,
    both ranks stop at the same step with its checkpoint, the script runs `scontrol requeue JOB` and exits 0;
    run again it resumes at that step and finishes."""
    out = tmp_path / "run"
    env = _script_env(tmp_path, slurm={"SLURM_JOB_ID": "4242"})
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "scontrol.calls"
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (fake / "scontrol").chmod(0o755)
    env["PATH"] = f"{fake}:{env['PATH']}"
    args = ["byol", imagefolder, out, "--cpu", "--results-dir", tmp_path / "results", "--",
            *tiny("byol"), "epochs=20", "checkpoint_every=0"]  # 60 steps
    step, err = usr1_to_pretrain_sh(args, env, out / METRICS_NAME, total=60)
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == step
    assert f"stopped at step {step}" in err and "requeueing SLURM job 4242" in err
    assert calls.read_text().split("\n")[0] == "requeue 4242"
    assert not (out / RESULTS_NAME).exists()

    again = subprocess.run([str(PRETRAIN), *map(str, args)], env=_script_env(tmp_path), capture_output=True,
                           text=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {out}/checkpoint.pt" in again.stderr
    assert [json.loads(line)["step"] for line in (out / METRICS_NAME).read_text().splitlines()] == list(range(1, 61))
    assert (out / RESULTS_NAME).exists()


def test_stop_signals_only_set_a_flag_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with preempt.StopSignals() as stop:
        assert not stop.agreed()
        signal.raise_signal(signal.SIGUSR1)  # the process goes on
        signal.raise_signal(signal.SIGTERM)
        assert stop.agreed() and stop.signal_name == "SIGUSR1"  # the first signal names the stop
    assert signal.getsignal(signal.SIGUSR1) is before
