"""A run folder's state: its checkpoint, configuration file, metrics log and results.

The trainer (:func:`mvssl_core.train.train`) writes, in the run's folder :func:`run_folder`:

- ``config.yaml``: the full resolved configuration;
- ``metrics.jsonl``: one JSON line every ``log_every`` steps: step, epoch, lr, the method's
  :class:`~mvssl_core.methods.StepOutput` metrics (loss, entropy, reconstruction, collapse_std,
  effective_rank, discrete terms, ...), the online probe's loss and accuracy, and the step time
  (non-finite values written as null: :func:`finite_or_none`);
- ``checkpoint.pt`` (:func:`save_checkpoint`): written atomically (temporary file + ``os.replace``) every
  ``checkpoint_every`` steps and at the end, by a background thread from a host copy of the state
  (:class:`CheckpointWriter`; the trainer waits for it before a stop, its results or an exit); loaded with ``torch.load(weights_only=True)``
  (:func:`load_checkpoint`); it holds a sha256 of its content (every tensor's bytes, every key and value),
  checked on load: a flipped bit is a :class:`CheckpointError`, not a silently different run (checkpoints
  of the older format ``mvssl-checkpoint/1``, without a hash, load with a warning);
- ``results.json`` (:mod:`mvssl_core.results`, :func:`write_run_results`): method, config, data, seed,
  provenance, the metrics over time and the final kNN / linear-probe accuracy (also written to
  ``cfg.results_file`` when set, resolved to an absolute path when the run starts, so that a later
  ``--resume`` or ``linear-eval`` run from another folder writes the same file).

Exact resume. The position in the data is a function of the step (epoch = step // steps per epoch,
the batch inside it = step % steps per epoch) and the learning rate is a function of the step, so
the checkpoint holds the step, the method's whole state (parameters and buffers: EMA teacher, DINO
centre, SwAV queue, DeepCluster memory bank and assignments), the optimizer state, the online
probe and its optimizer, the RNG states (torch, CUDA, numpy, python) as tensors (:func:`rng_state`), and
the steps of the metrics log's lines so far. The configuration is stored as a JSON string
(:func:`checkpoint_config`). On ``resume`` the metrics log is checked (:func:`read_log`: each line a JSON
object with an integer step; :func:`check_log_steps`: its steps exactly those the checkpoint lists; the same
check on the whole log before ``results.json`` is written) and cut back to the checkpoint's step
(:func:`rewrite_log`), so a killed-and-resumed run ends with the same parameters and log as an uninterrupted
one. CUDA RNG states are restored for the devices that exist (:func:`set_rng_state`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvssl_core import results, runlock
from mvssl_core.atomic import atomic_write
from mvssl_core.config import ConfigError, RunConfig, from_dict, to_dict, validate

__all__ = [
    "CheckpointError",
    "MetricsLogError",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "RESULTS_NAME",
    "CONFIG_NAME",
    "save_checkpoint",
    "CheckpointWriter",
    "host_copy",
    "load_checkpoint",
    "checkpoint_config",
    "config_changes",
    "check_config_file",
    "run_folder",
    "remove_stale_temporaries",
    "rng_state",
    "set_rng_state",
    "finite_or_none",
    "read_log",
    "logged_steps",
    "check_log_steps",
    "rewrite_log",
    "run_record",
    "write_run_results",
]

log = logging.getLogger("mvssl_core.train")  # the trainer's logger: its log lines keep their name

CHECKPOINT_FORMAT = "mvssl-checkpoint/2"  # /2: a sha256 of the content ("sha256"), checked on load
_UNHASHED_FORMAT = "mvssl-checkpoint/1"  # written before content hashes: loaded with a warning
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
RESULTS_NAME = "results.json"
CONFIG_NAME = "config.yaml"
# configuration keys that may change on resume without changing the result
_RESUMABLE_CHANGES = {"num_workers", "progress", "log_every", "checkpoint_every", "out", "results_file", "device",
                      "eval"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not a checkpoint of this trainer."""


class MetricsLogError(CheckpointError):
    """A run folder's ``metrics.jsonl`` is malformed, or its steps are not those its checkpoint expects."""


def rng_state() -> dict:
    """The RNG states of torch, CUDA (every visible device), numpy and python, as tensors (a checkpoint's ``rng``)."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor([py_version, *py_state], dtype=torch.int64),
        "python_gauss": torch.tensor([math.nan if py_gauss is None else py_gauss], dtype=torch.float64),
    }


def set_rng_state(state: dict) -> None:
    """Restore the RNG states of :func:`rng_state`; CUDA only for the devices that exist."""
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # one state per device visible when saved; a resume may see fewer devices (or others): restore
        # those that exist (set_rng_state_all would raise IndexError on the first device missing)
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    pos, has_gauss = state["numpy_pos"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    py = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:]), None if math.isnan(gauss) else gauss))


# ------------------------------------------------------------------------------------------------
# checkpoints


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def _feed(h: Any, obj: Any) -> None:
    """Feed ``obj`` (tensors, dicts, lists, tuples, scalars, strings) to the hash ``h``, with types and shapes."""
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{flat.dtype}{tuple(obj.shape)}:".encode())
        h.update(flat.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):  # optimizer states mix int and str keys
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for item in obj:
            _feed(h, item)
    else:  # None, bool, int, float (repr round-trips exactly), str, torch.dtype
        h.update(f"{type(obj).__name__}:{obj!r};".encode("utf-8", "surrogatepass"))


def _content_hash(state: dict) -> dict[str, str]:
    """sha256 of each entry of a checkpoint but ``sha256`` (the bytes of every tensor, every key and value)."""
    out = {}
    for key, value in state.items():
        if key != "sha256":
            h = hashlib.sha256()
            _feed(h, value)
            out[str(key)] = h.hexdigest()
    return out


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write a checkpoint atomically: a reader sees the old file or the new one, never half of one.

    The file holds ``state`` with ``format`` and ``sha256``, the hash of each entry's content that
    :func:`load_checkpoint` checks (a flipped bit inside a weight is an error, not a silently different run).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, **{k: v for k, v in state.items() if k not in ("format", "sha256")}}
    payload["sha256"] = _content_hash(payload)
    _atomic_torch_save(payload, path)
    return path


def host_copy(obj: Any) -> Any:
    """A copy of ``obj`` (tensors in dicts, lists, tuples; other values as they are) whose every tensor is a new
    tensor in host memory: training may go on updating the originals in place while the copy is written."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Checkpoints written in a background thread: the training thread only copies the state to host memory.

    :meth:`submit` waits for the write in progress (raising its error), takes a host copy of the state
    (:func:`host_copy`: on a GPU one device-to-host copy of each tensor; it costs one more copy of the state in
    host memory while it is written), and returns; a thread hashes and writes the copy with
    :func:`save_checkpoint` (atomic: the file on disk is the previous checkpoint until the new one is complete).
    :meth:`wait` returns once the last submitted checkpoint is on disk and raises the error of a write that
    failed. The trainer waits before a stop signal's barrier and at the end of its loop (also when it fails), so
    a run never exits, nor writes its results, before its last checkpoint is on disk. Why: a DeepCluster bank of
    ImageNet (1.22 GiB) made every checkpoint stall the step for seconds (issue 13, item 7;
    ``scripts/bench_checkpoint.py`` measures the stall).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.path: Path | None = None  # the checkpoint being written, or last written

    def submit(self, path: str | os.PathLike, state: dict) -> None:
        """Start writing ``state`` (as :func:`save_checkpoint` would) to ``path``, after the previous write."""
        self.wait()
        snapshot, self.path = host_copy(state), Path(path)
        self._thread = threading.Thread(target=self._write, args=(self.path, snapshot),
                                        name="mvssl-checkpoint-writer")
        self._thread.start()

    def _write(self, path: Path, snapshot: dict) -> None:
        try:
            save_checkpoint(path, snapshot)
        except BaseException as e:  # kept for the training thread, which raises it in wait()
            self._error = e

    @property
    def busy(self) -> bool:
        """A write is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Until the submitted checkpoint is on disk; the error of a failed write is raised here (once)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            error.add_note(f"(while writing the checkpoint {self.path} in the background; the file on disk is the "
                           "previous checkpoint)")
            raise error


_CHECKPOINT_KEYS = ("format", "config", "step", "model", "optimizer", "rng")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` on the CPU and check its content hash.

    A checkpoint of format ``mvssl-checkpoint/1`` (written before content hashes) is loaded unverified, with
    a warning; the run's next checkpoint carries a hash.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is empty, truncated, corrupted (its content does not match its hash), or not
            a checkpoint of this trainer (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    restore = "delete it to start over, or restore it from a copy"
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {restore}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip errors, unpickling errors, truncated files: all mean "unreadable"
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"checkpoint {path} is unreadable or corrupted ({type(e).__name__}{': ' + first if first else ''}); "
            f"{restore}"
        ) from e
    if not isinstance(state, dict) or state.get("format") not in (CHECKPOINT_FORMAT, _UNHASHED_FORMAT):
        raise CheckpointError(f"{path} is not an mvssl checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the fields {missing}")
    if state["format"] == _UNHASHED_FORMAT:
        warnings.warn(f"checkpoint {path} has no content hash (format {_UNHASHED_FORMAT!r}): loaded unverified",
                      stacklevel=2)
    else:
        stored = state.get("sha256")
        if not isinstance(stored, dict):
            raise CheckpointError(f"checkpoint {path} is corrupted: its content hash (field 'sha256') is missing; "
                                  f"{restore}")
        actual = _content_hash(state)
        bad = sorted(k for k in set(actual) | set(stored) if actual.get(k) != stored.get(k))
        if bad:
            raise CheckpointError(
                f"checkpoint {path} is corrupted: the content of {', '.join(repr(k) for k in bad)} does not match "
                f"its sha256 (edited or damaged); {restore}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint {path}: field 'step' must be an integer >= 0, got {step!r}")
    return state


def checkpoint_config(state: dict, source: str = "checkpoint") -> RunConfig:
    """The :class:`RunConfig` stored in a checkpoint."""
    try:
        values = json.loads(state["config"])
    except (TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{source}: the stored config is not valid JSON ({e})") from None
    return validate(from_dict(RunConfig, values))


def run_folder(cfg: RunConfig) -> Path:
    """The run's folder, ``cfg.run_dir()``; an empty ``out`` (which would mean the working directory) is refused."""
    if cfg.out is not None and not cfg.out.strip():
        raise ConfigError("config key 'out' is empty, which would write the run into the working directory; "
                          "name the run's folder (e.g. --out runs/my_run), or leave it out for "
                          "runs/<method>-<data>-s<seed>")
    return cfg.run_dir()


def _flat(values: Any, where: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for k, v in values.items():
            out.update(_flat(v, f"{where}{k}."))
        return out
    return {where.rstrip("."): values}


def check_config_file(path: Path, saved: RunConfig, ckpt_path: Path) -> None:
    """On resume, ``config.yaml`` must describe the checkpoint's run: an edit there would change nothing (the run
    keeps its checkpoint's configuration), and another run's file means two runs wrote this folder."""
    if not path.is_file():
        return
    from mvssl_core.config import read_yaml

    mine, theirs = _flat(read_yaml(path)), _flat(to_dict(saved))
    changed = sorted(k for k in set(mine) & set(theirs)  # keys added or removed by a library upgrade: not compared
                     if mine[k] != theirs[k] and k.split(".")[0] not in _RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"{path} differs from the configuration in {ckpt_path} at {changed}: the run resumes with its "
            "checkpoint's configuration and rewrites config.yaml (a changed setting needs a new run in another "
            "folder); restore or delete config.yaml to resume")


def remove_stale_temporaries(folder: Path) -> None:
    """Remove temporary files left by a process killed during an atomic write."""
    for name in (CHECKPOINT_NAME, RESULTS_NAME, CONFIG_NAME, METRICS_NAME, runlock.OWNER_NAME):
        for tmp in folder.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{where}{k}.")
        return out
    return [] if a == b else [where.rstrip(".")]

def config_changes(saved: RunConfig, cfg: RunConfig) -> list[str]:
    """The keys (dotted) at which ``cfg`` differs from a checkpoint's ``saved`` configuration, but for those that
    may change on resume without changing the result (num_workers, progress, log_every, checkpoint_every, out,
    results_file, device, eval)."""
    return [k for k in _diff(to_dict(saved), to_dict(cfg)) if k.split(".")[0] not in _RESUMABLE_CHANGES]


# ------------------------------------------------------------------------------------------------
# metrics log and results


def finite_or_none(x: Any) -> Any:
    """``x``, or None for a float that is not finite (the JSON of the log and results has no NaN)."""
    return x if not isinstance(x, float) or math.isfinite(x) else None


def read_log(path: Path, upto_step: int | None = None) -> list[dict]:
    """The log's lines, optionally up to a step; a last line cut by a crash (no newline at its end) is dropped.

    Raises:
        MetricsLogError: a line is not a JSON object with an integer ``step`` >= 1 (names the file and line).
    """
    rows = []
    if not path.is_file():
        return rows
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MetricsLogError(f"{path}: cannot read the metrics log ({e})") from e
    lines = text.split("\n")
    if lines[-1]:  # the last write was cut by a crash: that line never counted
        log.warning("%s: dropping the incomplete last line (a write cut by a crash)", path)
    for number, line in enumerate(lines[:-1], start=1):
        try:
            row = json.loads(line, parse_constant=_refuse_constant)
        except ValueError as e:  # JSONDecodeError, or NaN / Infinity (the loop writes non-finite values as null)
            raise MetricsLogError(f"{path} line {number}: not valid JSON ({getattr(e, 'msg', e)}); the log was "
                                  "edited or damaged, restore it or start the run over") from None
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            got = f"'step' {step!r}" if isinstance(row, dict) else repr(row)[:80]
            raise MetricsLogError(f"{path} line {number}: expected a JSON object with an integer 'step' >= 1, got "
                                  f"{got}; the log was edited or damaged, restore it or start the run over")
        if upto_step is None or step <= upto_step:
            rows.append(row)
    return rows


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def logged_steps(start: int, end: int, log_every: int, total: int) -> list[int]:
    """The steps in (start, end] that the loop logs: every ``log_every`` steps and the last one."""
    return [s for s in range(start + 1, end + 1) if s % log_every == 0 or s == total]


def check_log_steps(path: Path, rows: list[dict], expected: list[int], when: str) -> None:
    """Refuse a log whose steps are not exactly ``expected`` (a lost, duplicated or foreign line)."""
    steps = [row["step"] for row in rows]
    if steps == expected:
        return
    missing = sorted(set(expected) - set(steps))
    extra = sorted(set(steps) - set(expected))
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    what = "; ".join(f"{name} {values[:10]}{' ...' if len(values) > 10 else ''}" for name, values in
                     (("missing steps", missing), ("unexpected steps", extra), ("repeated steps", repeated)) if values)
    raise MetricsLogError(f"{path}: {when}, the log must hold steps {_span(expected)}; {what or 'out of order'}; "
                          "the log was edited, damaged, or written by another process: restore it or start over")


def _span(steps: list[int]) -> str:
    if len(steps) <= 6:
        return str(steps)
    return f"[{steps[0]}, {steps[1]}, ..., {steps[-1]}] ({len(steps)} lines)"


def rewrite_log(path: Path, rows: list[dict]) -> None:
    """Replace the log with ``rows``, atomically."""
    atomic_write(path, lambda f: f.writelines(json.dumps(row) + "\n" for row in rows))


def run_record(cfg: RunConfig, metrics: dict, command: str | None) -> dict:
    """A results record (schema of mvssl_core.results) of a run with config ``cfg``."""
    return {
        "schema": results.SCHEMA,
        "method": cfg.method,
        "dataset": cfg.data.name,
        "config": to_dict(cfg),
        "seed": cfg.seed,
        "provenance": results.provenance(command=command),
        "metrics": metrics,
    }


def write_run_results(cfg: RunConfig, run_dir: Path, final: dict, total: int, command: str | None,
                      expected_steps: list[int] | None = None) -> dict:
    """Write the run's ``results.json`` (and ``cfg.results_file``) from its metrics log and ``final`` evaluation;
    returns the record. With ``expected_steps`` the log must hold exactly those steps (:class:`MetricsLogError`)."""
    rows = read_log(run_dir / METRICS_NAME)
    if expected_steps is not None:  # a lost or repeated line must not reach results.json
        check_log_steps(run_dir / METRICS_NAME, rows, expected_steps, f"at the end of the run ({total} steps)")
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    history = {k: [finite_or_none(r.get(k)) for r in rows] for k in keys}
    last = {k: v for k, v in rows[-1].items() if k not in ("time_s",)} if rows else {}
    if "probe_acc" in last:  # on the augmented training batch of the last logged step
        final = {**final, "online_probe_train_acc": last["probe_acc"]}
    record = run_record(cfg, {"steps": total, "history": history, "last": last, "final": final}, command)
    results.write_results(run_dir / RESULTS_NAME, record)
    if cfg.results_file is not None:
        results.write_results(cfg.results_file, record)
    return record
