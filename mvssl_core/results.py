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
:func:`load_results` reads strict JSON only (no ``NaN``/``Infinity``, no number that overflows to infinity
such as ``1e999``, no key given twice in one object) and checks the record against the JSON Schema of its
kind (:mod:`mvssl_core.schemas`: a trainer's run, an ``ssl_runs`` experiment, the critics, ...) and what a
schema cannot say (each run listed once, the seed in a run's name equal to its ``seed``, logged steps that
increase strictly, known methods); :class:`ResultsError` names the file and the field (its JSON path).
NaN and infinities are refused on write too: encode a non-finite measurement as ``null``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mvssl_core.atomic import atomic_write

__all__ = ["SCHEMA", "ResultsError", "repository_root", "provenance", "record_kind", "check_schema", "validate_results",
           "write_results", "decode_strict", "load_results"]

SCHEMA = "mvssl-results/1"
"""Version tag of the record layout; bump it when a required field changes."""

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


# ------------------------------------------------------------------------------------------------
# Validation: the JSON Schema of the record's kind (mvssl_core.schemas), then what a schema cannot say

def record_kind(record: dict) -> str:
    """Which schema of :data:`mvssl_core.schemas.SCHEMAS` a decoded record follows, told by its metrics:
    ``random_init`` (ssl_runs) -> ``experiment``; ``raw_pixels`` -> ``mi_not_enough``; ``log_k`` ->
    ``critics``; ``final`` (a trainer's run) -> ``run``; anything else -> ``record`` (the common fields)."""
    metrics = record.get("metrics") if isinstance(record, dict) else None
    if not isinstance(metrics, dict):
        return "record"
    if "runs" in metrics:
        for key, kind in (("random_init", "experiment"), ("raw_pixels", "mi_not_enough"), ("log_k", "critics")):
            if key in metrics:
                return kind
        return "multi-run"  # refused by validate_results: no known multi-run layout
    return "run" if "final" in metrics else "record"


def _inline_refs(node: Any, defs: dict) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/x"}`` replaced by ``defs["x"]`` (the schemas' ``$defs`` do not
    refer to themselves): the same schema, validated 3x faster than through ``$ref`` lookups."""
    if isinstance(node, dict):
        if set(node) == {"$ref"} and node["$ref"].startswith("#/$defs/"):
            return _inline_refs(defs[node["$ref"].removeprefix("#/$defs/")], defs)
        return {k: v if k == "$defs" else _inline_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


@functools.lru_cache(maxsize=None)
def _validator(kind: str):
    import jsonschema

    from mvssl_core.schemas import SCHEMAS

    schema = SCHEMAS[kind]
    return jsonschema.Draft202012Validator(_inline_refs(schema, schema["$defs"]))


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
               int: "an integer", float: "a number"}


def _path(parts: Iterable[object]) -> str:
    """``metrics.runs[3].final.knn_top1`` from the keys and indices of a path."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _where(source: str, record: dict, parts: list) -> tuple[str, list]:
    """``(prefix, rest)``: inside ``metrics.runs[i]`` the prefix names the run (index and name) and ``rest``
    is the path within the run; elsewhere the prefix is the file and ``rest`` the whole path."""
    if len(parts) >= 3 and parts[:2] == ["metrics", "runs"] and isinstance(parts[2], int):
        run = record["metrics"]["runs"][parts[2]]
        name = run.get("name") if isinstance(run, dict) else None
        label = f" ({name})" if isinstance(name, str) else ""
        return f"{source}: metrics.runs[{parts[2]}]{label}:", parts[3:]
    return f"{source}:", parts


def _got(value: object) -> str:
    return f"got {value!r:.60} ({_JSON_TYPES.get(type(value), type(value).__name__)})"


def _schema_message(error, source: str, record: dict) -> str:
    """One line naming the file, the field (its JSON path) and what it must be."""
    parts = list(error.absolute_path)
    prefix, rest = _where(source, record, parts)
    field = _path(rest)
    kind, value = error.validator, error.instance
    if kind == "required":
        missing = next((k for k in error.validator_value if k not in value), error.validator_value[0])
        return f"{prefix} required field '{_path([*rest, missing])}' is missing"
    if kind == "const":
        what = repr(error.validator_value)
    elif kind == "enum":
        what = f"one of {error.validator_value}"
    elif kind in ("minItems", "minProperties") and error.validator_value == 1:
        return f"{prefix} field '{field}' must not be empty"
    elif "description" in error.schema:
        what = error.schema["description"]
    else:
        return f"{prefix} field '{field}': {error.message}"
    return f"{prefix} field '{field or '<root>'}' must be {what}, {_got(value)}"


def _document_order(parts: Iterable[object], record: dict) -> list[int]:
    """Where a path lies in the file: the position of each key (or index) in its object (or list)."""
    order, node = [], record
    for p in parts:
        order.append(list(node).index(p) if isinstance(node, dict) else p)
        node = node[p]
    return order


def _strictly_increasing(steps: list, where: str, field: str) -> None:
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise ResultsError(f"{where} field '{field}' must increase strictly: [{i}] = {steps[i]} follows "
                               f"[{i - 1}] = {steps[i - 1]}")


def _curves(curves: dict, where: str, prefix: str) -> None:
    """Logged curves: strictly increasing steps, every curve as long as the steps."""
    steps = curves["step"]
    _strictly_increasing(steps, where, f"{prefix}step")
    for key, values in curves.items():
        if len(values) != len(steps):
            raise ResultsError(f"{where} field '{prefix}{key}' has {len(values)} values, '{prefix}step' has "
                               f"{len(steps)}: a curve must have one value per logged step")


_NAME_SEED = re.compile(r"(?:^|/)s(\d+)$")


def _check_runs(record: dict, source: str, identity: Callable[[dict], object], what: str) -> list[str]:
    """Cross-record checks of ``metrics.runs``: no name twice, no run twice under another name (same
    ``identity``), a seed in the name (``.../s3``) equal to the ``seed`` field. Returns the run prefixes."""
    names: dict[str, int] = {}
    ids: dict[str, int] = {}
    prefixes = []
    for i, run in enumerate(record["metrics"]["runs"]):
        where, _ = _where(source, record, ["metrics", "runs", i])
        prefixes.append(where)
        name = run["name"]
        if name in names:
            raise ResultsError(f"{where} field 'name' repeats metrics.runs[{names[name]}]'s: each run must be "
                               "listed once (a repeated run is counted twice in every mean)")
        names[name] = i
        key = json.dumps(identity(run), sort_keys=True)
        if key in ids:
            other = f"metrics.runs[{ids[key]}] ({record['metrics']['runs'][ids[key]]['name']})"
            raise ResultsError(f"{where} is the run of {other} again, under another name: the same {what}")
        ids[key] = i
        m = _NAME_SEED.search(name)
        if m is not None and int(m.group(1)) != run["seed"]:
            raise ResultsError(f"{where} field 'name' says seed {m.group(1)} but field 'seed' is {run['seed']}")
    return prefixes


def _known_method(method: str, where: str, field: str) -> None:
    from mvssl_core.methods import METHODS  # torch: imported only for the records that name a method

    if method not in METHODS:
        raise ResultsError(f"{where} field '{field}' must be a method of mvssl_core.methods.METHODS "
                           f"({', '.join(METHODS)}), got {method!r:.60}")


def _check_experiment(record: dict, source: str) -> None:
    runs = record["metrics"]["runs"]
    prefixes = _check_runs(record, source, lambda r: [r["method"], r["variant"], r["labels"], r["batch_size"],
                                                      r["epochs"], r["seed"]],
                           "method, variant, labels, batch size, epochs and seed")
    configs: dict[str, int] = {}
    for i, (run, where) in enumerate(zip(runs, prefixes)):
        _known_method(run["method"], where, "method")
        if run["method"].removesuffix("_er") != run["family"]:
            raise ResultsError(f"{where} field 'family' must be {run['method'].removesuffix('_er')!r} (the family of "
                               f"method {run['method']!r}), got {run['family']!r:.60}")
        for key in ("method", "seed"):
            if key in run["config"] and run["config"][key] != run[key]:
                raise ResultsError(f"{where} field 'config.{key}' is {run['config'][key]!r:.60} but field '{key}' "
                                   f"is {run[key]!r}")
        _curves(run["history"], where, "history.")
        if run["history"]["step"][-1] > run["steps"]:
            raise ResultsError(f"{where} field 'history.step' logs step {run['history']['step'][-1]}, after the "
                               f"run's last step (field 'steps' = {run['steps']})")
        key = json.dumps(run["config"], sort_keys=True)
        if "seed" in run["config"] and key in configs:  # a full configuration (with its seed) names one run
            raise ResultsError(f"{where} field 'config' is metrics.runs[{configs[key]}]'s: the same run twice")
        configs[key] = i
    seen: dict[int, int] = {}
    for i, entry in enumerate(record["metrics"]["random_init"]):
        if entry["seed"] in seen:
            raise ResultsError(f"{source}: field 'metrics.random_init[{i}].seed' repeats seed {entry['seed']} of "
                               f"metrics.random_init[{seen[entry['seed']]}]: one entry per seed")
        seen[entry["seed"]] = i


def _check_critics(record: dict, source: str) -> None:
    runs = record["metrics"]["runs"]
    prefixes = _check_runs(record, source, lambda r: [r["objective"], r["critic"], r["batch_size"], r["family"]],
                           "objective, critic, batch size and family")
    for run, where in zip(runs, prefixes):
        name = f"{run['objective']}/{run['critic']}/k={run['batch_size']}/{run['family']}"
        if run["name"] != name:
            raise ResultsError(f"{where} field 'name' must be {name!r} (objective/critic/k=batch size/family), "
                               f"got {run['name']!r:.60}")
        _curves({k: run[k] for k in ("step", "estimate", "true_mi")}, where, "")


def _check_mi_not_enough(record: dict, source: str) -> None:
    runs = record["metrics"]["runs"]
    prefixes = _check_runs(record, source, lambda r: [r["objective"], r["seed"]], "objective and seed")
    objectives = record["config"]["objectives"]
    for run, where in zip(runs, prefixes):
        if run["objective"] not in objectives:
            raise ResultsError(f"{where} field 'objective' must be one of config.objectives {objectives}, "
                               f"got {run['objective']!r:.60}")
        if run["name"] != f"{run['objective']}/s{run['seed']}":
            raise ResultsError(f"{where} field 'name' must be '{run['objective']}/s{run['seed']}' (objective/s"
                               f"seed), got {run['name']!r:.60}")
        _curves(run["curve"], where, "curve.")


def _check_run(record: dict, source: str) -> None:
    config, metrics = record["config"], record["metrics"]
    _known_method(config["method"], f"{source}:", "config.method")
    for key in ("method", "seed"):
        if config[key] != record[key]:
            raise ResultsError(f"{source}: field '{key}' is {record[key]!r:.60} but field 'config.{key}' is "
                               f"{config[key]!r:.60}")
    if "history" in metrics:
        _curves(metrics["history"], f"{source}:", "metrics.history.")
        steps = metrics["history"]["step"]
        if steps and "steps" in metrics and steps[-1] > metrics["steps"]:
            raise ResultsError(f"{source}: field 'metrics.history.step' logs step {steps[-1]}, after the run's "
                               f"last step (field 'metrics.steps' = {metrics['steps']})")


_CROSS_CHECKS = {"experiment": _check_experiment, "critics": _check_critics, "mi_not_enough": _check_mi_not_enough,
                 "run": _check_run}


def check_schema(doc: object, kind: str, source: str) -> None:
    """Raise :class:`ResultsError` for the first field of ``doc`` (in the file's order) that breaks the schema
    :data:`mvssl_core.schemas.SCHEMAS` ``[kind]``, naming ``source``, the field's JSON path and what it must be."""
    import jsonschema.exceptions

    errors = list(_validator(kind).iter_errors(doc))
    if errors:
        record = doc if isinstance(doc, dict) else {}
        first = min(_document_order(e.absolute_path, doc) for e in errors)
        error = jsonschema.exceptions.best_match(e for e in errors if _document_order(e.absolute_path, doc) == first)
        raise ResultsError(_schema_message(error, source, record))


def validate_results(record: object, source: str = "results record", kind: str | None = None) -> dict:
    """Check a record against the schema of its kind; return it unchanged or raise :class:`ResultsError`.

    The record must follow :data:`mvssl_core.schemas.SCHEMAS` ``[kind]`` (JSON Schema) and, for records of
    runs, what a schema cannot say: each run listed once (by name, and by what it ran), a seed in a run's name
    (``.../s3``) equal to its ``seed``, logged steps that increase strictly with one value per step in every
    curve, methods of :data:`mvssl_core.methods.METHODS`.

    Args:
        record: the decoded JSON object.
        source: how to name the record in error messages (e.g. its path).
        kind: a key of :data:`~mvssl_core.schemas.SCHEMAS`; default :func:`record_kind` of the record.

    Returns:
        The record (a dict).

    Raises:
        ResultsError: naming ``source`` and the field (its JSON path; inside a run, the run's index and name
            and the path within the run) and what it must be.
    """
    if not isinstance(record, dict):
        raise ResultsError(f"{source}: a results record must be a JSON object, got {type(record).__name__}")
    from mvssl_core.schemas import SCHEMAS

    record_kinds = [k for k in SCHEMAS if k != "published"]  # published: YAML, not a record
    if kind is not None and kind not in record_kinds:
        raise ValueError(f"kind must be one of {record_kinds}, got {kind!r}")
    kind = kind or record_kind(record)
    if kind == "multi-run":
        raise ResultsError(f"{source}: field 'metrics.runs' is present, but the record is none of the known "
                           "multi-run files: ssl_runs (with metrics.random_init), train_critics (metrics.log_k), "
                           "mi_not_enough (metrics.raw_pixels)")
    check_schema(record, "record", source)  # the common fields first: their errors are the plainest
    if kind != "record":
        check_schema(record, kind, source)
    date = record["provenance"]["date"]
    try:
        _dt.datetime.fromisoformat(date)
    except ValueError:
        raise ResultsError(f"{source}: field 'provenance.date' must be an ISO 8601 date, got {date!r}") from None
    if kind in _CROSS_CHECKS:
        _CROSS_CHECKS[kind](record, source)
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
        record: a record with the common fields of the schema (``mvssl_core.schemas.RECORD``; the schema of
            its kind is checked on reading, by :func:`load_results`); floats must be finite.

    Returns:
        The path written.
    """
    path = Path(path)
    # the common fields only: a writer's record is checked in full when it is read (load_results), so that
    # a record the reader would refuse is still written, beside the run that produced it, to be looked at
    validate_results(record, source=f"record for {path}", kind="record")
    bad = _first_non_finite(record)
    if bad is not None:
        raise ResultsError(f"record for {path}: field '{bad}' is NaN or infinite; store non-finite values as null")

    def write(f) -> None:
        json.dump(record, f, indent=1, allow_nan=False)  # streams: may fail half-way
        f.write("\n")

    return atomic_write(path, write)


class _Refused:
    """A JSON literal the decoder refused (NaN, Infinity, a number that overflows to infinity), kept in
    place so that the error can name its field."""

    def __init__(self, literal: str, why: str) -> None:
        self.literal, self.why = literal, why


class _Object(dict):
    """A decoded JSON object that listed ``duplicates`` (keys given twice) in the file."""

    duplicates: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    obj = _Object(pairs)
    seen: set[str] = set()
    obj.duplicates = [] if len(obj) == len(pairs) else [k for k, _ in pairs if k in seen or seen.add(k)]
    return obj


def _float(literal: str) -> float | _Refused:
    value = float(literal)
    return value if math.isfinite(value) else _Refused(literal, "overflows to infinity")


def _constant(literal: str) -> _Refused:  # NaN, Infinity, -Infinity: Python's extensions of JSON
    return _Refused(literal, "is not valid JSON (NaN and infinities are not numbers of JSON)")


def _first_refused(obj: Any) -> tuple[list, str] | None:
    """(path, what) of the first refused literal or repeated key of a decoded document, or None."""
    stack: list[tuple[list, Any]] = [([], obj)]
    while stack:
        parts, node = stack.pop()
        if isinstance(node, _Refused):
            return parts, f"holds the literal {node.literal}, which {node.why}; store a non-finite value as null"
        if isinstance(node, _Object):
            if node.duplicates:
                return [*parts, node.duplicates[0]], ("is given more than once in one object; a JSON reader keeps "
                                                      "one of the values silently, so each key must appear once")
            stack += [([*parts, k], v) for k, v in reversed(node.items())]
        elif isinstance(node, list):
            stack += [([*parts, i], v) for i, v in reversed(list(enumerate(node)))]
    return None


def _plain(obj: Any) -> Any:
    """The decoded document with plain dicts (after :func:`_first_refused` found nothing)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def decode_strict(text: str, source: str) -> Any:
    """Decode JSON text, refusing what Python's ``json`` would accept silently: ``NaN``, ``Infinity`` and
    ``-Infinity``, numbers that overflow to infinity (``1e999``), and a key given twice in one object (the
    last one would win). Errors (:class:`ResultsError`) name ``source`` and the field's JSON path."""
    try:
        doc = json.loads(text, parse_constant=_constant, parse_float=_float, object_pairs_hook=_pairs)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{source}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    bad = _first_refused(doc)
    if bad is not None:
        parts, what = bad
        record = doc if isinstance(doc, dict) else {}
        try:
            prefix, rest = _where(source, record, parts)
        except (KeyError, IndexError, TypeError, AttributeError):
            prefix, rest = f"{source}:", parts
        raise ResultsError(f"{prefix} field '{_path(rest) or '<root>'}' {what}")
    return _plain(doc)


def load_results(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Read and validate a results file.

    The text must be strict JSON (:func:`decode_strict`: no NaN or infinities, no key twice) and the
    record must follow the schema of its kind (:func:`validate_results`).

    Args:
        path: a ``.json`` results file.
        kind: a key of :data:`mvssl_core.schemas.SCHEMAS` (default: told by the record, :func:`record_kind`).

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it).
        ResultsError: the file is not strict JSON, or a field is missing, malformed or out of range, or
            the runs contradict each other (the message names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read the results file ({e})") from e
    return validate_results(decode_strict(text, str(path)), source=str(path), kind=kind)
