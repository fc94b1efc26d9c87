"""Results files: round trip, atomic writes, clear errors for missing or malformed files."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pytest

from mvssl_core import results
from mvssl_core.results import ResultsError, load_results, provenance, write_results


def _record(**overrides) -> dict:
    rec = {
        "schema": results.SCHEMA,
        "method": "test method",
        "dataset": "correlated_gaussians d=2",
        "config": {"steps": 3, "lr": 1e-3},
        "seed": 0,
        "provenance": provenance(command="python test"),
        "metrics": {"estimate": [0.1, 0.2, 0.3], "step": [1, 2, 3]},
    }
    rec.update(overrides)
    return rec


def test_provenance_fields():
    p = provenance(command="python x.py --flag")
    assert p["command"] == "python x.py --flag"
    assert dt.datetime.fromisoformat(p["date"]).tzinfo is not None
    hw = p["hardware"]
    assert hw["cpu_count"] >= 1 and hw["threads"] >= 1 and hw["torch"] and hw["python"]
    # this test runs inside the repository's git checkout: a 40-hex commit and a dirty flag
    if p["git_commit"] is not None:
        assert len(p["git_commit"]) == 40 and all(c in "0123456789abcdef" for c in p["git_commit"])
        assert isinstance(p["git_dirty"], bool)


def test_provenance_outside_git(tmp_path):
    p = provenance(command="c", repo=tmp_path)
    assert p["git_commit"] is None and p["git_dirty"] is None
    results.validate_results(_record(provenance=p))


def test_round_trip(tmp_path):
    rec = _record()
    path = write_results(tmp_path / "sub" / "r.json", rec)
    assert path.is_file()
    assert load_results(path) == rec
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left


def test_overwrite_replaces_whole_file(tmp_path):
    path = tmp_path / "r.json"
    write_results(path, _record(metrics={"x": list(range(1000))}))
    write_results(path, _record(metrics={"x": [1]}))
    assert load_results(path)["metrics"] == {"x": [1]}


class _Exploding:
    """Not JSON-serialisable: json.dump fails on it after writing the fields before it."""


def test_failed_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "r.json"
    bad = _record(metrics={"first": list(range(5000)), "then": _Exploding()})
    with pytest.raises(TypeError):
        write_results(path, bad)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file

    good = _record()
    write_results(path, good)
    with pytest.raises(TypeError):
        write_results(path, bad)
    assert load_results(path) == good  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_non_finite_values_refused(tmp_path):
    with pytest.raises(ResultsError, match=r"metrics\.estimate\.1"):
        write_results(tmp_path / "r.json", _record(metrics={"estimate": [0.0, float("nan")]}))
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(_record(metrics={"estimate": [float("inf")]})))
    with pytest.raises(ResultsError, match="Infinity"):
        load_results(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="results file not found"):
        load_results(tmp_path / "nope.json")


def test_not_json(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"schema": "mvssl-results/1", "method": ')  # truncated
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_results(path)


def test_not_an_object(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("[1, 2]")
    with pytest.raises(ResultsError, match="JSON object"):
        load_results(path)


@pytest.mark.parametrize(
    "field",
    ["schema", "method", "dataset", "config", "seed", "provenance", "metrics",
     "provenance.command", "provenance.git_commit", "provenance.git_dirty", "provenance.date",
     "provenance.hardware", "provenance.hardware.cpu", "provenance.hardware.torch"],
)
def test_missing_field_is_named(tmp_path, field):
    rec = _record()
    *parents, last = field.split(".")
    node = rec
    for key in parents:
        node = node[key]
    del node[last]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(ResultsError, match=rf"'{field}' is missing") as err:
        load_results(path)
    assert str(path) in str(err.value)
    with pytest.raises(ResultsError, match=rf"'{field}' is missing"):
        write_results(tmp_path / "w.json", rec)
    assert not (tmp_path / "w.json").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seed", "0", r"'seed' must be a whole number >= 0, got '0' \(a string\)"),
        ("seed", True, r"'seed' must be a whole number >= 0, got True \(a boolean\)"),
        ("seed", -1, r"'seed' must be a whole number >= 0, got -1"),
        ("config", [1], r"'config' must be an object, got \[1\] \(a list\)"),
        ("metrics", {}, r"'metrics' must not be empty"),
        ("method", "  ", r"'method' must be a non-empty string"),
        ("schema", "mvssl-results/0", r"'schema' must be 'mvssl-results/1'"),
        ("provenance.git_dirty", "yes", r"'provenance.git_dirty' must be true, false or null"),
        ("provenance.date", "yesterday", r"'provenance.date' must be an ISO 8601 date"),
        ("provenance.hardware.threads", 2.5, r"'provenance.hardware.threads' must be a whole number >= 1 or null"),
    ],
)
def test_malformed_field_is_named(tmp_path, field, value, message):
    rec = copy.deepcopy(_record())
    *parents, last = field.split(".")
    node = rec
    for key in parents:
        node = node[key]
    node[last] = value
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(ResultsError, match=message):
        load_results(path)


def test_committed_results_files_are_valid():
    """Every results file shipped in results/ loads (the book reads them)."""
    root = Path(__file__).resolve().parents[1] / "results"
    for path in sorted(root.glob("*.json")):
        load_results(path)


def test_repository_root_is_found_from_any_folder_below_it(tmp_path):
    from mvssl_core.results import repository_root

    root = Path(__file__).resolve().parents[1]
    assert repository_root(root / "book") == root
    assert repository_root(root / "book" / "_static") == root
    assert repository_root(root) == root
    assert repository_root(tmp_path) == tmp_path.parent  # outside a checkout: the folder's parent
