"""Run folders: one writer at a time (an OS lock), checkpoints whose content is checked on load, paths from
the command line, a metrics log whose steps are exactly those expected, and an exact RNG state on resume.

Tiny runs as in tests/test_train.py (ConvNet 8-16, 16x16 shapes, 32 images).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mvssl_core.cli import main
from mvssl_core.config import ConfigError, load_config
from mvssl_core.results import ResultsError, load_results, write_results
from mvssl_core.runstate import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    RESULTS_NAME,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    write_run_results,
)
from mvssl_core.train import train

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import _cfg, _values  # noqa: E402

TINY = ["--data", "shapes", "--size", "16", "--backbone", "convnet", "--batch-size", "16", "--num-workers", "0",
        "--no-progress", "--set", "data.n=32", "--set", "model.kwargs={widths: [8, 16]}",
        "--set", "hyper.projector={hidden: 16, out: 8}", "--set", "optim.name=sgd",
        "--set", "eval={knn: false, linear: false}"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


# ------------------------------------------------------------------------------------------------
# one writer per run folder


def test_second_pretrain_on_a_running_folder_is_refused(tmp_path, capsys):
    """A real run in another process holds the folder: a second pretrain (with or without --resume, another
    seed) exits 2 with one line naming the folder and the first's pid, and touches none of its files."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mvssl_core", "pretrain", "--method", "simclr", "--out", str(run), "--seed", "0",
           "--steps", "100000", "--set", "checkpoint_every=1", *TINY]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not (run / CHECKPOINT_NAME).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, first.communicate()[1].decode()[-2000:]
        first.send_signal(signal.SIGSTOP)  # frozen, still holding the lock: its files must not change under us
        before = _snapshot(run)
        for extra in ([], ["--resume"]):
            argv = ["pretrain", "--method", "simclr", "--out", str(run), "--seed", "1", "--steps", "3", *TINY, *extra]
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"run folder {run} is in use by another process" in err, err
            assert f"pid {first.pid} " in err and "pretrain" in err
        assert _snapshot(run) == before
        assert json.loads(load_checkpoint(run / CHECKPOINT_NAME)["config"])["seed"] == 0
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # the kernel released the dead process's lock: the run resumes (and is refused nothing)
    from mvssl_core import runlock

    with runlock.hold(run, "test"):
        pass


def test_lock_of_a_killed_process_is_released(tmp_path):
    from mvssl_core import runlock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mvssl_core import runlock\n"
         f"with runlock.hold({str(tmp_path)!r}, 'holder'):\n    print('held', flush=True)\n    time.sleep(60)"],
        env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runlock.RunFolderBusy, match=rf"pid {holder.pid} on .*: holder"):
            with runlock.hold(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with runlock.hold(tmp_path, "after"):  # no stale lock: acquired at once
        info = json.loads((tmp_path / runlock.OWNER_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "after"
    assert not (tmp_path / runlock.OWNER_NAME).exists()


def test_lock_is_released_when_a_run_fails(tmp_path):
    from mvssl_core import runlock

    cfg = _cfg("simclr", tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(cfg, resume=True)
    with runlock.hold(tmp_path / "run"):  # not held by the failed run
        with pytest.raises(runlock.RunFolderBusy, match=str(tmp_path / "run")):
            train(cfg)  # nor may a run start in a folder another writer holds
    train(cfg)


def test_linear_eval_is_refused_while_the_folder_is_held(tmp_path, capsys):
    from mvssl_core import runlock

    run = tmp_path / "run"
    train(_cfg("simclr", run))
    before = _snapshot(run)
    with runlock.hold(run, "python -m mvssl_core pretrain --resume"):
        assert main(["linear-eval", str(run), "--epochs", "1", "--device", "cpu", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"run folder {run} is in use" in err and "pretrain --resume" in err
        assert main(["evaluate", "--checkpoint", str(run / CHECKPOINT_NAME), "--device", "cpu",
                     "--set", "eval={knn: true, linear: false, max_train: 16}",
                     "--results", str(run / "eval.json")]) == 2
        assert "in use" in capsys.readouterr().err
    assert _snapshot(run) == before


# ------------------------------------------------------------------------------------------------
# checkpoints: content hash, step range


@pytest.fixture
def finished(tmp_path):
    cfg = _cfg("simclr", tmp_path / "run", steps=4, checkpoint_every=2)
    train(cfg)
    return cfg, tmp_path / "run" / CHECKPOINT_NAME


def test_empty_checkpoint_gives_clear_error(finished):
    cfg, ckpt = finished
    ckpt.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"checkpoint {ckpt} is empty \(0 bytes\)"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="empty"):
        train(cfg, resume=True)


def test_flipped_bit_in_a_weight_is_detected(finished):
    cfg, ckpt = finished
    data = ckpt.read_bytes()
    weight = load_checkpoint(ckpt)["model"]["backbone.features.0.weight"]
    at = data.find(weight.numpy().tobytes()[:16])
    assert at > 0
    flipped = bytearray(data)
    flipped[at + 2] ^= 0x10  # one bit of the first weight's mantissa
    ckpt.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=rf"checkpoint {ckpt} is corrupted: the content of 'model' does not"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="sha256"):
        train(cfg, resume=True)


def test_hash_covers_every_entry_and_unhashed_checkpoints_load_with_a_warning(tmp_path):
    path = tmp_path / CHECKPOINT_NAME
    state = {"config": "{}", "step": 1, "model": {"w": torch.arange(4.0)}, "optimizer": {"state": {0: {}}},
             "rng": {}}
    save_checkpoint(path, state)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(4.0))
    raw = torch.load(path, weights_only=True)
    for key, value in (("step", 2), ("model", {"w": torch.arange(4.0) * 2}), ("config", '{"seed": 1}'),
                       ("extra", 1)):
        torch.save({**raw, key: value}, path)  # content changed (or added), hashes kept
        with pytest.raises(CheckpointError, match=f"the content of '{key}' does not match its sha256"):
            load_checkpoint(path)
    torch.save({k: v for k, v in raw.items() if k != "sha256"}, path)
    with pytest.raises(CheckpointError, match=r"content hash \(field 'sha256'\) is missing"):
        load_checkpoint(path)
    # written before content hashes: loaded, with a warning naming the file
    torch.save({**{k: v for k, v in raw.items() if k != "sha256"}, "format": "mvssl-checkpoint/1"}, path)
    with pytest.warns(UserWarning, match=rf"{path} has no content hash"):
        assert load_checkpoint(path)["step"] == 1


@pytest.mark.parametrize("step", [5, 100])
def test_step_beyond_the_runs_end_is_refused(finished, step):
    cfg, ckpt = finished
    state = load_checkpoint(ckpt)
    state["step"] = step
    save_checkpoint(ckpt, state)  # a well-formed file (hash recomputed) with a step past the run's 4
    results_before = (ckpt.parent / RESULTS_NAME).read_bytes()
    with pytest.raises(CheckpointError, match=rf"step {step} is beyond this run's last step 4"):
        train(cfg, resume=True)
    assert (ckpt.parent / RESULTS_NAME).read_bytes() == results_before


@pytest.mark.parametrize("step", [-1, "3", 2.0])
def test_step_of_wrong_type_is_refused(tmp_path, step):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"config": "{}", "step": step, "model": {}, "optimizer": {}, "rng": {}})
    with pytest.raises(CheckpointError, match=r"field 'step' must be an integer >= 0"):
        load_checkpoint(path)


def test_cuda_rng_states_are_restored_only_for_visible_devices(monkeypatch):
    """A checkpoint of a 4-GPU node resumed with 1 visible GPU: device 0's state restored, no IndexError."""
    restored = []

    def set_all(states):  # what torch does with more states than devices
        if len(states) > 1:
            raise IndexError("list index out of range")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    cpu_state = torch.random.get_rng_state()
    state = {"torch": cpu_state, "cuda": [torch.full((8,), i, dtype=torch.uint8) for i in range(4)],
             "numpy_keys": torch.zeros(624, dtype=torch.int64) + 1, "numpy_pos": torch.tensor([624, 0]),
             "numpy_gauss": torch.tensor([0.0], dtype=torch.float64),
             "python": torch.tensor([3, *range(1, 625), 624]), "python_gauss": torch.tensor([float("nan")])}
    set_rng_state(state)
    assert [(int(s[0]), d) for s, d in restored] == [(0, 0)]


# ------------------------------------------------------------------------------------------------
# the metrics log


@pytest.mark.parametrize("line, match", [
    ("42", r"line 5: expected a JSON object with an integer 'step' >= 1, got 42"),
    ('{"step": "x"}', r"line 5: expected a JSON object with an integer 'step' >= 1, got 'step' 'x'"),
    ('{"loss": 1.0}', r"line 5: .*got 'step' None"),
    ("{not json", r"line 5: not valid JSON"),
    ('{"step": 5, "loss": NaN}', r"line 5: not valid JSON \(NaN is not a JSON number\)"),
])
def test_malformed_log_line_names_file_and_line(finished, line, match, capsys):
    cfg, ckpt = finished
    log = ckpt.parent / METRICS_NAME
    log.write_text(log.read_text() + line + "\n")
    with pytest.raises(CheckpointError, match=rf"{log} {match}"):
        train(cfg, resume=True)
    assert main(["pretrain", "--out", str(ckpt.parent), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{log} line 5" in err


@pytest.mark.parametrize("edit, match", [
    (lambda rows: rows[:1] + rows[2:], r"missing steps \[2\]"),
    (lambda rows: rows[:2] + rows[1:], r"repeated steps \[2\]"),
    (lambda rows: rows[:1] + [rows[2], rows[1]] + rows[3:], "out of order"),
])
def test_log_lines_lost_or_repeated_are_refused_on_resume(finished, edit, match):
    cfg, ckpt = finished
    log = ckpt.parent / METRICS_NAME
    rows = log.read_text().splitlines()
    log.write_text("\n".join(edit(rows)) + "\n")
    with pytest.raises(CheckpointError, match=rf"to resume {ckpt} at step 4, the log must hold steps "
                                              rf"\[1, 2, 3, 4\]; {match}"):
        train(cfg, resume=True)


def test_log_lines_past_the_checkpoint_are_cut_but_not_past_the_runs_end(tmp_path):
    """Lines after the checkpoint's step are what a killed run leaves (cut on resume); a step past the run's last
    step was never written by this run (refused, naming it)."""
    cfg = _cfg("simclr", tmp_path / "run", steps=4, checkpoint_every=2)
    train(cfg, stop_after=2)
    log = tmp_path / "run" / METRICS_NAME
    rows = log.read_text().splitlines()
    log.write_text("\n".join(rows + [rows[-1].replace('"step": 2', '"step": 3')]) + "\n")  # logged, then killed
    assert train(cfg, resume=True)["metrics"]["history"]["step"] == [1, 2, 3, 4]
    cfg = _cfg("simclr", tmp_path / "other", steps=4, checkpoint_every=2)
    train(cfg, stop_after=2)
    log = tmp_path / "other" / METRICS_NAME
    rows = log.read_text().splitlines()
    log.write_text("\n".join(rows + [rows[-1].replace('"step": 2', '"step": 99')]) + "\n")
    with pytest.raises(CheckpointError, match=rf"{log}: steps \[99\] are beyond this run's last step 4"):
        train(cfg, resume=True)


def test_log_checked_at_the_end_of_the_run(finished):
    cfg, ckpt = finished
    run = ckpt.parent
    log = run / METRICS_NAME
    rows = log.read_text().splitlines()
    log.write_text("\n".join(rows[:3]) + "\n")  # the last line lost
    with pytest.raises(CheckpointError, match=r"at the end of the run \(4 steps\).*missing steps \[4\]"):
        write_run_results(cfg, run, {}, 4, None, expected_steps=[1, 2, 3, 4])


def test_log_every_changed_on_resume_gives_the_expected_history(tmp_path):
    """The steps logged before the checkpoint follow the old log_every, those after it the new one."""
    cfg = _cfg("simclr", tmp_path / "run", steps=6, checkpoint_every=3, log_every=1)
    assert train(cfg, stop_after=4) is None
    resumed = _cfg("simclr", tmp_path / "run", steps=6, checkpoint_every=3, log_every=2)
    record = train(resumed, resume=True)
    assert record["metrics"]["history"]["step"] == [1, 2, 3, 4, 6]
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["logged_steps"].tolist() == [1, 2, 3, 4, 6]


# ------------------------------------------------------------------------------------------------
# global RNG on resume


def test_global_rng_after_a_mid_epoch_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """The global torch RNG when each step ends (what dropout would draw from) is the same in a run resumed
    mid-epoch (2 steps per epoch, checkpoint at step 3) as in the uninterrupted run."""
    from mvssl_core.methods import SimCLR

    seen: list[tuple[float, torch.Tensor]] = []
    original = SimCLR.after_optimizer_step

    def record(self, progress):
        seen.append((progress, torch.random.get_rng_state().clone()))
        return original(self, progress)

    monkeypatch.setattr(SimCLR, "after_optimizer_step", record)
    train(_cfg("simclr", tmp_path / "straight", steps=6))
    straight = dict(seen)
    seen.clear()
    cfg = _cfg("simclr", tmp_path / "broken", steps=6, checkpoint_every=3)
    train(cfg, stop_after=4)
    seen.clear()
    train(cfg, resume=True)
    assert [p for p, _ in seen] == pytest.approx([4 / 6, 5 / 6, 1.0])
    for progress, state in seen:
        assert torch.equal(state, straight[progress]), f"global RNG differs at progress {progress}"


# ------------------------------------------------------------------------------------------------
# paths from the command line


def test_empty_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--method", "simclr", "--out", "", "--steps", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config key 'out' is empty" in err
    assert main(["pretrain", "--out", " ", "--resume"]) == 2
    assert "'out' is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="'out' is empty"):
        train(load_config(None, base={**_values("simclr", Path("x")), "out": ""}))


def test_results_file_is_resolved_when_the_run_starts(tmp_path, monkeypatch):
    """A relative results_file names a file of the working directory of the run's start; a later --resume or
    linear-eval from another folder writes that same file, not one relative to its own working directory."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    run = tmp_path / "run"
    assert main(["pretrain", "--method", "simclr", "--out", str(run), "--steps", "2", *TINY,
                 "--set", "results_file=pub/run.json"]) == 0
    published = tmp_path / "a" / "pub" / "run.json"
    assert load_results(published)["config"]["results_file"] == str(published)
    monkeypatch.chdir(tmp_path / "b")
    assert main(["linear-eval", str(run), "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet",
                 "--set", "eval.max_train=16"]) == 0
    assert "linear_eval" in load_results(published)["metrics"]
    assert list((tmp_path / "b").iterdir()) == []


def _relative_results_file_run(tmp_path: Path) -> Path:
    """A finished run whose checkpoint stores a relative results_file (as older versions wrote)."""
    run = tmp_path / "run"
    train(_cfg("simclr", run))
    ckpt = run / CHECKPOINT_NAME
    state = load_checkpoint(ckpt)
    values = json.loads(state["config"])
    values["results_file"] = "pub/run.json"
    state["config"] = json.dumps(values)
    save_checkpoint(ckpt, state)
    return run


def test_relative_results_file_in_a_checkpoint_is_not_written_from_elsewhere(tmp_path, monkeypatch, capsys):
    run = _relative_results_file_run(tmp_path)
    (tmp_path / "elsewhere" / "pub").mkdir(parents=True)
    victim = tmp_path / "elsewhere" / "pub" / "run.json"
    victim.write_text("precious")
    monkeypatch.chdir(tmp_path / "elsewhere")
    for argv in (["linear-eval", str(run), "--epochs", "1", "--device", "cpu", "--quiet"],
                 ["pretrain", "--out", str(run), "--resume", "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "relative results_file 'pub/run.json'" in err and "--set results_file" in err
    assert victim.read_text() == "precious"
    # named on the command line, it is written (relative to the working directory of that command)
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress",
                 "--set", "results_file=mine.json"]) == 0
    assert load_results(tmp_path / "elsewhere" / "mine.json")["method"] == "simclr"


def test_linear_eval_does_not_overwrite_another_runs_results_file(tmp_path, capsys):
    other = tmp_path / "other"
    train(_cfg("simclr", other, seed=1))
    published = tmp_path / "published.json"
    write_results(published, load_results(other / RESULTS_NAME))
    run = tmp_path / "run"
    train(_cfg("simclr", run, results_file=str(published)))  # publishes run's record
    write_results(published, load_results(other / RESULTS_NAME))  # ... later replaced by another run's
    before = published.read_bytes()
    assert main(["linear-eval", str(run), "--epochs", "1", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"the results_file {published} stored in" in err and "another run's record" in err
    assert published.read_bytes() == before
    assert CONFIG_NAME in _snapshot(run)


def test_config_yaml_of_another_run_is_refused_on_resume(finished):
    """config.yaml is written by the run, not read: an edited one (or another run's) is not silently ignored."""
    cfg, ckpt = finished
    path = ckpt.parent / CONFIG_NAME
    text = path.read_text()
    path.write_text(text.replace("seed: 0", "seed: 1").replace("lr: 0.1", "lr: 0.7"))
    with pytest.raises(ConfigError, match=rf"{path} differs from the configuration in {ckpt} at "
                                          r"\['optim.lr', 'seed'\]"):
        train(cfg, resume=True)
    path.write_text(text.replace("num_workers: 0", "num_workers: 3"))  # a key that may change on resume
    assert train(cfg, resume=True) is not None
    assert path.read_text() == text


# ------------------------------------------------------------------------------------------------
# evaluate and linear-eval on damaged run folders


def test_evaluate_with_empty_results_is_refused(finished, capsys):
    _, ckpt = finished
    assert main(["evaluate", "--checkpoint", str(ckpt), "--device", "cpu", "--results", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--results is empty" in err


def test_non_finite_encoder_weights_are_refused_by_evaluate(finished, capsys):
    _, ckpt = finished
    state = load_checkpoint(ckpt)
    state["model"]["backbone.features.0.weight"][0, 0, 0, 0] = float("nan")
    save_checkpoint(ckpt, state)  # a well-formed file (hash recomputed) with a NaN weight
    assert main(["evaluate", "--checkpoint", str(ckpt), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights hold NaN or inf (features.0.weight)" in err


def test_resume_with_weights_of_another_shape_is_refused(finished, capsys):
    cfg, ckpt = finished
    state = load_checkpoint(ckpt)
    w = state["model"]["backbone.features.0.weight"]
    state["model"]["backbone.features.0.weight"] = torch.zeros(w.shape[0], w.shape[1], w.shape[2] + 2, w.shape[3])
    save_checkpoint(ckpt, state)
    with pytest.raises(CheckpointError, match=rf"checkpoint {ckpt} does not fit the model .*size mismatch for "
                                              r"backbone.features.0.weight"):
        train(cfg, resume=True)


def test_linear_eval_refuses_a_checkpoint_that_is_not_the_finished_runs(finished, capsys):
    _, ckpt = finished
    state = load_checkpoint(ckpt)
    state["step"] = 10**6
    save_checkpoint(ckpt, state)
    assert main(["linear-eval", str(ckpt.parent), "--epochs", "1", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is at step 1000000 but" in err and "records a run of 4 steps" in err
