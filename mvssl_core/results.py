"""Results files: data with provenance, written atomically, validated on load.

A results file is one JSON object (a *record*) that says what produced it (DESIGN.md, "Results
are data with provenance"):

    {
      "schema": "mvssl-results/1",
      "method": "trained MI critics (InfoNCE, NWJ, ER)",   # what was run
      "dataset": "correlated_gaussians d=20 staircase",      # on what data
      "config": {...},                                       # the full resolved configuration
      "seed": 0,
      "provenance": {                                        # see :func:`provenance`
        "command": "python scripts/experiments/train_critics.py",
        "git_commit": "45610e2...", "git_dirty": true,
        "date": "2026-11-25T08:30:00+00:00",
        "hardware": {"platform": ..., "cpu": ..., "cpu_count": 2, "python": ..., "torch": ..., "threads": 2}
      },
      "metrics": {...}                                       # the measurements (curves over steps, summaries)
    }

:func:`write_results` writes through a temporary file in the target's folder and ``os.replace``,
so a reader never sees a half-written file and a failed write leaves the old file untouched.
:func:`load_results` raises :class:`ResultsError` naming the first missing or malformed field.
NaN and infinities are refused on write (strict JSON): encode a non-finite measurement as ``null``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from mvssl_core.atomic import atomic_write

__all__ = ["SCHEMA", "ResultsError", "repository_root", "provenance", "validate_results", "write_results", "load_results"]

SCHEMA = "mvssl-results/1"
"""Version tag of the record layout; bump it when a required field changes."""

# Required fields: name -> expected type(s). Nested dicts list their own required fields.
_TOP = {
    "schema": str,
    "method": str,
    "dataset": str,
    "config": dict,
    "seed": int,
    "provenance": dict,
    "metrics": dict,
}
_PROVENANCE = {
    "command": str,
    "git_commit": (str, type(None)),  # None when the code did not run from a git checkout
    "git_dirty": (bool, type(None)),
    "date": str,
    "hardware": dict,
}
_HARDWARE = {
    "platform": str,
    "cpu": str,
    "cpu_count": (int, type(None)),
    "python": str,
    "torch": (str, type(None)),
    "threads": (int, type(None)),
}


def repository_root(start: str | os.PathLike | None = None) -> Path:
    """The checkout (or unpacked tarball) of this project: the first folder from ``start`` (default: the
    working directory, e.g. a book page's ``book/``) upwards that holds both ``mvssl_core/`` and ``book/``;
    ``start``'s parent when none does. The book's pages find ``results/`` through it."""
    here = Path.cwd() if start is None else Path(start).resolve()
    for folder in [here, *here.parents]:
        if (folder / "mvssl_core").is_dir() and (folder / "book").is_dir():
            return folder
    return here.parent


class ResultsError(ValueError):
    """A results file (or record) that is unreadable or does not follow the schema."""


def _type_name(t: type | tuple[type, ...]) -> str:
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in types)


def _check_fields(obj: dict, spec: dict, where: str, source: str) -> None:
    for name, expected in spec.items():
        field = f"{where}{name}"
        if name not in obj:
            raise ResultsError(f"{source}: required field '{field}' is missing")
        value = obj[name]
        # bool is an int in Python; an int field must not accept True/False
        is_bool = isinstance(value, bool)
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if not isinstance(value, allowed) or (is_bool and bool not in allowed):
            raise ResultsError(
                f"{source}: field '{field}' must be {_type_name(expected)}, got {type(value).__name__} ({value!r:.60})"
            )


def validate_results(record: object, source: str = "results record") -> dict:
    """Check a record against the schema; return it unchanged or raise :class:`ResultsError`.

    Args:
        record: the decoded JSON object.
        source: how to name the record in error messages (e.g. its path).

    Returns:
        The record (a dict).
    """
    if not isinstance(record, dict):
        raise ResultsError(f"{source}: a results record must be a JSON object, got {type(record).__name__}")
    _check_fields(record, _TOP, "", source)
    if record["schema"] != SCHEMA:
        raise ResultsError(f"{source}: field 'schema' must be {SCHEMA!r}, got {record['schema']!r}")
    for name in ("method", "dataset"):
        if not record[name].strip():
            raise ResultsError(f"{source}: field '{name}' must be a non-empty string")
    if not record["metrics"]:
        raise ResultsError(f"{source}: field 'metrics' must not be empty")
    _check_fields(record["provenance"], _PROVENANCE, "provenance.", source)
    _check_fields(record["provenance"]["hardware"], _HARDWARE, "provenance.hardware.", source)
    date = record["provenance"]["date"]
    try:
        _dt.datetime.fromisoformat(date)
    except ValueError:
        raise ResultsError(f"{source}: field 'provenance.date' must be an ISO 8601 date, got {date!r}") from None
    return record


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(command: str | None = None, repo: str | os.PathLike | None = None) -> dict:
    """What produced a result: command, code version, date and hardware.

    Args:
        command: the command line that ran (default: ``python`` + ``sys.argv``, shell-quoted).
        repo: a folder inside the git checkout (default: the folder holding ``mvssl_core``).

    Returns:
        dict with command, git_commit (``git rev-parse HEAD``, None outside git), git_dirty
        (uncommitted changes to tracked or untracked files, None outside git), date (UTC, ISO 8601)
        and hardware (platform, cpu, cpu_count, python, torch, threads).
    """
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[1]
    commit = _git(["rev-parse", "HEAD"], repo)
    status = _git(["status", "--porcelain"], repo) if commit is not None else None
    try:
        import torch

        torch_version, threads = torch.__version__, torch.get_num_threads()
    except ImportError:  # the record stays valid without torch
        torch_version, threads = None, None
    return {
        "command": command if command is not None else shlex.join(["python", *sys.argv]),
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": {
            "platform": platform.platform(),
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch_version,
            "threads": threads,
        },
    }


def _first_non_finite(obj: Any, where: str = "") -> str | None:
    """Path of the first NaN / infinite float in a nested record, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where or "<root>")
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def write_results(path: str | os.PathLike, record: dict) -> Path:
    """Validate ``record`` and write it as JSON to ``path`` atomically.

    The JSON goes to a temporary file in the same folder, is flushed to disk, then renamed over
    ``path`` with ``os.replace``; if anything fails, the temporary file is removed and ``path`` is
    left as it was. The folder is created if needed.

    Args:
        path: destination ``.json`` file.
        record: a record following the schema (see the module docstring); floats must be finite.

    Returns:
        The path written.
    """
    path = Path(path)
    validate_results(record, source=f"record for {path}")
    bad = _first_non_finite(record)
    if bad is not None:
        raise ResultsError(f"record for {path}: field '{bad}' is NaN or infinite; store non-finite values as null")

    def write(f) -> None:
        json.dump(record, f, indent=1, allow_nan=False)  # streams: may fail half-way
        f.write("\n")

    return atomic_write(path, write)


def load_results(path: str | os.PathLike) -> dict:
    """Read and validate a results file.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it).
        ResultsError: the file is not JSON, or a required field is missing or has the wrong type
            (the message names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read the results file ({e})") from e
    def _reject(name: str) -> None:
        raise ResultsError(f"{path}: {name} is not valid JSON; non-finite values must be stored as null")

    try:
        record = json.loads(text, parse_constant=_reject)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return validate_results(record, source=str(path))
