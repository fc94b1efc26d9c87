"""Checkpoints written in a background thread (issue 13, item 7: DeepCluster's 1.22 GiB bank stalled every
checkpoint): the training thread only takes a host copy; the file on disk is always a whole checkpoint; a
failed write is raised; nothing (results, a stop, an error) leaves the loop before the last write is on disk."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import torch

from mvssl_core import runstate
from mvssl_core import train as train_mod
from mvssl_core.preempt import Stopped
from mvssl_core.runstate import CHECKPOINT_NAME, CheckpointWriter, host_copy, load_checkpoint, save_checkpoint
from mvssl_core.train import train
from mvssl_core.config import load_config
from tests.test_train import _one_thread, _values  # noqa: F401  (the fixture: one intra-op thread)


def _cfg(method: str, out, n: int, **top):
    values = _values(method, out, **top)
    values["data"]["n"] = n
    return load_config(None, base=values)


def _state(step: int, weight: torch.Tensor | None = None) -> dict:
    return {"config": "{}", "step": step, "model": {"w": torch.zeros(3) if weight is None else weight},
            "optimizer": {"state": {0: {"momentum": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "rng": {}}


def _gated_saves(monkeypatch) -> tuple[threading.Event, list[int]]:
    """save_checkpoint made to wait for an event before it writes; returns the event and the steps written."""
    go, written = threading.Event(), []
    real = runstate.save_checkpoint

    def gated(path, state):
        assert go.wait(30), "the test never released the write"
        real(path, state)
        written.append(state["step"])

    monkeypatch.setattr(runstate, "save_checkpoint", gated)
    return go, written


def test_host_copy_is_a_new_tensor_for_every_tensor_and_keeps_the_rest():
    state = _state(4, torch.arange(3.0))
    copy = host_copy(state)
    state["model"]["w"].add_(10)
    state["optimizer"]["state"][0]["momentum"].mul_(0)
    assert copy["model"]["w"].tolist() == [0.0, 1.0, 2.0]
    assert copy["optimizer"]["state"][0]["momentum"].tolist() == [1.0, 1.0]
    assert copy["optimizer"]["param_groups"] == [{"lr": 0.1, "params": [0]}] and copy["step"] == 4
    assert isinstance(host_copy((1, [torch.ones(1)]))[1], list)


def test_submit_returns_before_the_write_and_the_file_holds_the_submitted_values(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, _state(1))
    go, written = _gated_saves(monkeypatch)
    weight = torch.full((3,), 5.0)
    writer = CheckpointWriter()
    writer.submit(path, _state(2, weight))
    assert writer.busy and load_checkpoint(path)["step"] == 1  # the old file until the new one is whole
    weight.add_(1)  # training goes on updating the parameters in place
    go.set()
    writer.wait()
    assert not writer.busy and written == [2]
    saved = load_checkpoint(path)
    assert saved["step"] == 2 and saved["model"]["w"].tolist() == [5.0, 5.0, 5.0]


def test_writes_happen_one_at_a_time_in_order(tmp_path, monkeypatch):
    path, active, peak, order = tmp_path / CHECKPOINT_NAME, [0], [0], []
    real = runstate.save_checkpoint

    def slow(p, state):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        real(p, state)
        order.append(state["step"])
        active[0] -= 1

    monkeypatch.setattr(runstate, "save_checkpoint", slow)
    writer = CheckpointWriter()
    for step in (1, 2, 3):
        writer.submit(path, _state(step))
    writer.wait()
    assert order == [1, 2, 3] and peak[0] == 1 and load_checkpoint(path)["step"] == 3


def test_a_failed_write_is_raised_once_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, _state(1))

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    writer = CheckpointWriter()
    writer.submit(path, _state(2))  # returns: the failure happens in the thread
    with pytest.raises(OSError, match="disk full") as info:
        writer.wait()
    assert any(str(path) in note and "previous checkpoint" in note for note in info.value.__notes__)
    writer.wait()  # raised once
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # no temporary file left


def test_the_next_submit_raises_the_error_of_the_previous_write(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    writer = CheckpointWriter()
    writer.submit(tmp_path / CHECKPOINT_NAME, _state(1))
    with pytest.raises(OSError, match="disk full"):
        writer.submit(tmp_path / CHECKPOINT_NAME, _state(2))


def _steps_seen(monkeypatch) -> tuple[threading.Event, list[int]]:
    """The trainer's _one_step wrapped: an event set after each step, and the steps done."""
    stepped, done = threading.Event(), []
    real = train_mod._one_step

    def one_step(run, epoch):
        row = real(run, epoch)
        done.append(run.step)
        stepped.set()
        return row

    monkeypatch.setattr(train_mod, "_one_step", one_step)
    return stepped, done


def test_training_goes_on_while_a_checkpoint_is_written(tmp_path, monkeypatch):
    # each periodic write waits until the training thread has done one more step: with a write in the
    # training thread this could never happen (the wait times out and the test fails)
    stepped, _ = _steps_seen(monkeypatch)
    overlapped = []
    real = runstate.save_checkpoint

    def write_while_training(path, state):
        if state["step"] < 6:
            stepped.clear()
            overlapped.append(stepped.wait(20))
        real(path, state)

    monkeypatch.setattr(runstate, "save_checkpoint", write_while_training)
    cfg = _cfg("deepcluster_er", tmp_path / "run", 96, steps=6, checkpoint_every=2)
    record = train(cfg)
    assert overlapped == [True, True]  # the writes of steps 2 and 4 each overlapped a training step
    assert record is not None and load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 6


def test_the_results_equal_those_of_a_run_whose_writes_are_slow(tmp_path, monkeypatch):
    # the snapshot, not the live tensors, is written: slow writes change nothing in the checkpoints
    cfg = _cfg("deepcluster_er", tmp_path / "a", 64, steps=4, checkpoint_every=1)
    train(cfg, stop_after=3)
    fast = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)
    real = runstate.save_checkpoint
    monkeypatch.setattr(runstate, "save_checkpoint", lambda p, s: (time.sleep(0.3), real(p, s)))
    train(_cfg("deepcluster_er", tmp_path / "b", 64, steps=4, checkpoint_every=1), stop_after=3)
    slow = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert fast["step"] == slow["step"] == 3
    assert fast["sha256"]["model"] == slow["sha256"]["model"]
    assert fast["sha256"]["optimizer"] == slow["sha256"]["optimizer"]


def test_a_stop_signal_leaves_only_once_its_checkpoint_is_on_disk(tmp_path, monkeypatch):
    real_one_step = train_mod._one_step

    def signal_at_3(run, epoch):
        row = real_one_step(run, epoch)
        if run.step == 3:
            signal.raise_signal(signal.SIGUSR1)
        return row

    monkeypatch.setattr(train_mod, "_one_step", signal_at_3)
    real = runstate.save_checkpoint
    monkeypatch.setattr(runstate, "save_checkpoint", lambda p, s: (time.sleep(1.0), real(p, s)))
    with pytest.raises(Stopped, match="at step 3 of 6"):
        train(_cfg("simclr", tmp_path / "run", 96, steps=6))
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 3


def test_an_error_after_a_checkpoint_leaves_that_checkpoint_whole(tmp_path, monkeypatch):
    go, written = _gated_saves(monkeypatch)
    real_one_step = train_mod._one_step

    def fail_at_3(run, epoch):
        if run.step == 3:
            go.set()  # the write of step 2 may finish only now, after the failure began
            raise RuntimeError("a failing step")
        return real_one_step(run, epoch)

    monkeypatch.setattr(train_mod, "_one_step", fail_at_3)
    with pytest.raises(RuntimeError, match="a failing step"):
        train(_cfg("simclr", tmp_path / "run", 96, steps=6, checkpoint_every=2))
    assert written == [2] and load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 2
