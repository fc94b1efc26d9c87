"""Progress of a run through ``logging``: ``--no-progress`` turns off only the interactive bar; rank 0 logs one
line per tenth of the run (step, loss, lr, samples/s); the CLI configures logging (INFO, time and rank, stderr)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mvssl_core import cli, train

REPO = Path(__file__).resolve().parents[1]

TINY_10 = [
    "pretrain", "--method", "simclr", "--data", "shapes", "--size", "16", "--backbone", "convnet", "--steps", "10",
    "--batch-size", "8", "--num-workers", "0", "--no-progress",
    "--set", "data.n=32", "--set", "model.kwargs={widths: [8, 16]}", "--set", "hyper.projector={hidden: 16, out: 8}",
    "--set", "optim.name=sgd", "--set", "eval.max_train=16",
]
LINE = re.compile(r"step (\d+)/(\d+) \((\d+)%\) loss=\S+ (?:\w+=\S+ )*lr=\S+ samples/s=\d+\.\d$")


def progress_lines(caplog) -> list[re.Match]:
    return [m for r in caplog.records if r.name == "mvssl_core.train" and (m := LINE.match(r.getMessage()))]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_no_progress_keeps_ten_log_lines(tmp_path, caplog, one_thread):
    caplog.set_level(logging.INFO, logger="mvssl_core.train")
    assert cli.main([*TINY_10, "--out", str(tmp_path / "run")]) == 0
    lines = progress_lines(caplog)
    assert [int(m[1]) for m in lines] == list(range(1, 11))
    assert all(m[2] == "10" for m in lines) and [int(m[3]) for m in lines] == list(range(10, 101, 10))


@pytest.mark.parametrize("total, initial, steps", [
    (25, 0, [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]),  # one line per tenth, the last at the end
    (5, 0, [1, 2, 3, 4, 5]),
    (100, 37, [40, 50, 60, 70, 80, 90, 100]),  # resumed: the tenths still ahead
])
def test_a_line_per_tenth(caplog, monkeypatch, total, initial, steps):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # even on a terminal: no bar asked
    caplog.set_level(logging.INFO, logger="mvssl_core.train")
    p = train._Progress(total, initial, True, "x", bar=False, samples_per_step=64)
    for _ in range(initial, total):
        p.update({"loss": 1.5, "lr": 0.1})
    p.close()
    lines = progress_lines(caplog)
    assert [int(m[1]) for m in lines] == steps
    assert "loss=1.5 lr=0.1 samples/s=" in lines[0][0]
    rate = float(lines[-1][0].rsplit("=", 1)[1])
    assert rate > 0


@pytest.mark.parametrize("tty, lines", [(False, 10), (True, 0)])
def test_the_bar_only_on_a_terminal(caplog, monkeypatch, capsys, tty, lines):
    """``progress: true`` with stderr a log file (sbatch): the lines, not a bar's carriage returns."""
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    caplog.set_level(logging.INFO, logger="mvssl_core.train")
    p = train._Progress(10, 0, True, "x", bar=True, samples_per_step=8)
    for _ in range(10):
        p.update({"loss": 1.0, "lr": 0.1})
    p.close()
    assert len(progress_lines(caplog)) == lines
    assert ("10/10" in capsys.readouterr().err) == tty  # the bar's own output


def test_other_ranks_log_nothing(caplog):
    caplog.set_level(logging.INFO, logger="mvssl_core.train")
    p = train._Progress(10, 0, False, "x", bar=False, samples_per_step=8)  # the loop passes enabled=rank == 0
    for _ in range(10):
        p.update({"loss": 1.0, "lr": 0.1})
    assert progress_lines(caplog) == []


@contextlib.contextmanager
def bare_root_logger():
    """The root logger as a fresh process has it: pytest's capture handlers removed meanwhile (they are added
    again for each test phase, so this runs inside the test)."""
    root, ours = logging.getLogger(), logging.getLogger("mvssl_core")
    handlers, level, our_level = root.handlers[:], root.level, ours.level
    root.handlers = []
    try:
        yield root
    finally:
        for h in root.handlers:
            h.close()
        root.handlers, root.level = handlers, level
        ours.setLevel(our_level)


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_configures_logging(monkeypatch, capsys, quiet):
    monkeypatch.setenv("RANK", "3")
    with bare_root_logger():
        cli._configure_logging(quiet=quiet)
        logging.getLogger("mvssl_core.train").info("step 1/10 (10%%) loss=%.1f", 2.0)
        logging.getLogger("mvssl_core.train").warning("careful")
        logging.getLogger("torch.nn.parallel.distributed").info("a library's note")  # not shown
    err = capsys.readouterr().err.splitlines()
    warn = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} rank 3 WARNING mvssl_core.train: careful"
    info = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} rank 3 INFO mvssl_core.train: step 1/10 \(10%\) loss=2.0"
    assert len(err) == (1 if quiet else 2)
    assert re.fullmatch(warn, err[-1])
    if not quiet:
        assert re.fullmatch(info, err[0])


def test_cli_keeps_a_programs_own_logging(capsys):
    root = logging.getLogger()
    before = root.handlers[:]  # pytest's capture handlers: a configuration of its own
    cli._configure_logging()
    assert root.handlers == before


def test_two_processes_only_rank_0_logs_progress(tmp_path):
    """Under torchrun (2 gloo processes), stderr as under sbatch: rank 0's 10 lines, in the CLI's format
    (time, rank, level, logger), and none from rank 1."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mvssl_core", *TINY_10, "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "mvssl_core.train: step " in line]
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert len(lines) == 10, proc.stderr[-3000:]
    for i, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"{stamp} rank 0 INFO mvssl_core\.train: step {i}/10 \({10 * i}%\) loss=.* samples/s=\S+",
                            line), line
