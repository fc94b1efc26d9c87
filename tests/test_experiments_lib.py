"""mvssl_core.experiments: validation of multi-run records and the seed statistics the chapters plot."""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path

import pytest
import yaml

from mvssl_core.experiments import (load_experiment, load_published, mean_curve, merge_records, published_values,
                                    select, summarise)
from mvssl_core.results import ResultsError, SCHEMA, provenance, write_results


def _run(name, family, variant, seed, acc, entropy):
    return {"name": name, "family": family, "method": family, "variant": variant, "seed": seed,
            "batch_size": 16, "epochs": 1, "labels": {"ema": 0.9}, "steps": 4,
            "history": {"step": [2, 4], "entropy": entropy}, "final": {"knn_top1": acc, "linear_top1": acc},
            "config": {"resolved": {}}}


RECORD = {
    "schema": SCHEMA, "method": "ssl_runs experiment 'test'", "dataset": "digits", "config": {}, "seed": 0,
    "provenance": provenance(command="test"),
    "metrics": {"runs": [_run("a/s0", "byol", "x", 0, 0.5, [1.0, 2.0]),
                         _run("a/s1", "byol", "x", 1, 0.7, [3.0, None]),
                         _run("b/s0", "dino", "y", 0, 0.9, [0.0, 0.0])],
                "random_init": [{"seed": 0, "knn_top1": 0.3, "linear_top1": 0.4}]},
}


def test_load_select_summarise_and_curves(tmp_path):
    write_results(tmp_path / "r.json", RECORD)
    record = load_experiment(tmp_path / "r.json")
    assert [r["name"] for r in select(record, family="byol")] == ["a/s0", "a/s1"]
    assert [r["name"] for r in select(record, ema=0.9, variant="y")] == ["b/s0"]  # labels are matched too
    s = summarise(record["metrics"]["runs"], lambda r: r["variant"], lambda r: r["final"]["knn_top1"])
    assert list(s) == ["x", "y"]
    assert s["x"].mean == pytest.approx(0.6) and s["x"].sd == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert s["x"].n == 2 and s["y"].sd == 0.0 and s["y"].n == 1
    steps, mean, sd = mean_curve(select(record, family="byol"), "entropy")
    assert steps == [2, 4] and mean == [2.0, 2.0] and sd[0] == pytest.approx(math.sqrt(2)) and sd[1] == 0.0
    _, mean, _ = mean_curve(select(record, family="byol"), "missing")
    assert all(math.isnan(m) for m in mean)


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r["metrics"].pop("runs"), "metrics.runs"),
    (lambda r: r["metrics"]["runs"][1].pop("seed"), r"runs\[1\] \(a/s1\): required field 'seed'"),
    (lambda r: r["metrics"]["runs"][0].update(seed=True), r"runs\[0\] \(a/s0\): field 'seed' must be a whole number"),
    (lambda r: r["metrics"]["runs"][2]["history"].update(entropy=[1.0]), "history.entropy"),
    (lambda r: r["metrics"]["runs"][0]["history"].update(step=[]), "history.step"),
    (lambda r: r["metrics"].pop("random_init"), "random_init"),
])
def test_bad_records_are_refused_naming_the_field(tmp_path, mutate, match):
    record = copy.deepcopy(RECORD)
    mutate(record)
    write_results(tmp_path / "bad.json", record)
    with pytest.raises(ResultsError, match=match):
        load_experiment(tmp_path / "bad.json")


def test_merge_records_reads_two_files_of_one_protocol_as_one():
    other = copy.deepcopy(RECORD)
    other["metrics"]["runs"] = [_run("c/s0", "swav", "z", 0, 0.8, [1.0, 1.0])]
    merged = merge_records([RECORD, other], ["first.json", "second.json"])
    assert [r["name"] for r in merged["metrics"]["runs"]] == ["a/s0", "a/s1", "b/s0", "c/s0"]
    assert merged["metrics"]["random_init"] == RECORD["metrics"]["random_init"]
    assert len(RECORD["metrics"]["runs"]) == 3 and len(other["metrics"]["runs"]) == 1  # inputs untouched
    assert merge_records([RECORD]) == RECORD
    with pytest.raises(ResultsError, match="second.json: run 'a/s0' is also in first.json"):
        merge_records([RECORD, RECORD], ["first.json", "second.json"])
    other["metrics"]["random_init"] = [{"seed": 0, "knn_top1": 0.31}]
    with pytest.raises(ResultsError, match="second.json: metrics.random_init differs"):
        merge_records([RECORD, other], ["first.json", "second.json"])
    with pytest.raises(ValueError, match="at least one"):
        merge_records([])


def test_mean_curve_refuses_runs_logged_at_different_steps():
    a, b = copy.deepcopy(RECORD["metrics"]["runs"][:2])
    b["history"]["step"] = [1, 4]
    with pytest.raises(ValueError, match="different steps"):
        mean_curve([a, b], "entropy")


# ------------------------------------------------------------------------------------------------
# the published ImageNet numbers shipped with the book (reported by the authors, never measured here)

PUBLISHED = Path(__file__).resolve().parents[1] / "book" / "data" / "published_imagenet.yaml"


def test_shipped_published_numbers_load_and_match_the_reference_facts():
    data = load_published(PUBLISHED)
    src = data["source"]
    assert src["key"] == "anonymous2022information" and src["openreview"] == "UHPva3PuKLN"
    assert "earlier version" in src["note"].lower() and "reported by the authors" in src["note"]
    bib = (PUBLISHED.parents[1] / "references.bib").read_text(encoding="utf-8")
    assert "@misc{anonymous2022information," in bib  # the key the page cites exists
    by_batch, by_epochs = data["tables"]["batch_size"], data["tables"]["epochs"]
    assert (by_batch["reference"], by_batch["deltas_at"], by_batch["fixed"]) == (4096, [2048, 1024, 512],
                                                                                 {"epochs": 400})
    assert (by_epochs["reference"], by_epochs["deltas_at"], by_epochs["fixed"]) == (400, [300, 200, 100],
                                                                                   {"batch_size": 4096})
    rows = {t: {r["method"]: (r["top1"], r["deltas"]) for r in data["tables"][t]["rows"]} for t in data["tables"]}
    # shared/reference/facts.md, both tables, every cell
    assert rows["batch_size"] == {
        "SimCLR": (69.5, [-3.1, -2.5, -4.5]), "CMC": (69.1, [-1.1, -2.9, -4.8]),
        "BYOL": (68.3, [0.3, -15.0, -34.2]), "DINO": (71.6, [0.5, -15.0, -67.0]),
        "EntRec (continuous)": (69.7, [-0.7, -2.3, -4.2]), "EntRec (discrete)": (66.9, [-1.0, -2.2, -3.9])}
    assert rows["epochs"] == {
        "SimCLR": (69.5, [-1.0, -2.2, -5.4]), "CMC": (69.1, [-0.6, -1.8, -5.6]),
        "BYOL": (68.3, [-2.8, -6.9, -15.7]), "DINO": (71.6, [0.2, 0.3, -1.2]),
        "EntRec (continuous)": (69.7, [-0.8, -2.1, -5.9]), "EntRec (discrete)": (66.9, [-0.2, -1.1, -4.1])}
    # the two tables share their reference column (400 epochs, batch 4096)
    assert {m: v[0] for m, v in rows["batch_size"].items()} == {m: v[0] for m, v in rows["epochs"].items()}
    values = published_values(by_batch)
    assert values["SimCLR"] == {4096: 69.5, 2048: 66.4, 1024: 67.0, 512: 65.0}
    assert values["DINO"][512] == 4.6
    assert list(published_values(by_epochs)["BYOL"]) == [400, 300, 200, 100]


def _mutated(tmp_path, mutate) -> Path:
    data = yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))
    mutate(data)
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("source"), "'source'"),
    (lambda d: d["source"].pop("openreview"), "'source.openreview'"),
    (lambda d: d["source"].update(key=""), "'source.key'"),
    (lambda d: d.pop("metric"), "'metric'"),
    (lambda d: d.update(tables={}), "'tables'"),
    (lambda d: d["tables"]["epochs"].pop("reference"), "'tables.epochs.reference' is missing"),
    (lambda d: d["tables"]["epochs"].update(deltas_at=[300, 400]), "'tables.epochs.deltas_at'"),
    (lambda d: d["tables"]["batch_size"]["rows"][0].update(top1="69.5"), r"'tables.batch_size.rows\[0\].top1'"),
    (lambda d: d["tables"]["batch_size"]["rows"][0].update(top1=True), r"rows\[0\].top1"),
    (lambda d: d["tables"]["batch_size"]["rows"][1].update(top1=169.1), r"rows\[1\].top1"),
    (lambda d: d["tables"]["batch_size"]["rows"][2]["deltas"].pop(), r"'tables.batch_size.rows\[2\].deltas'"),
    (lambda d: d["tables"]["epochs"]["rows"][3].update(deltas=[0.2, None, -1.2]),
     r"'tables.epochs.rows\[3\].deltas\[1\]' must be a change in points in \[-100, 100\], got None"),
    (lambda d: d["tables"]["epochs"]["rows"][5].update(method="SimCLR"), r"rows\[5\].method.*repeats"),
    (lambda d: d["tables"]["epochs"]["fixed"].update(batch_size=0), "'tables.epochs.fixed.batch_size'"),
])
def test_malformed_published_file_is_refused_naming_the_field(tmp_path, mutate, match):
    path = _mutated(tmp_path, mutate)
    with pytest.raises(ResultsError, match=match) as info:
        load_published(path)
    assert str(path) in str(info.value)


def test_published_file_missing_or_not_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_published(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed\n", encoding="utf-8")
    with pytest.raises(ResultsError, match="YAML"):
        load_published(bad)
    bad.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ResultsError, match="mapping"):
        load_published(bad)


def test_published_key_given_twice_or_not_finite_is_refused(tmp_path):
    text = PUBLISHED.read_text(encoding="utf-8")
    path = tmp_path / "published.yaml"
    path.write_text(text.replace("top1: 69.5,", "top1: 69.5, top1: 59.5,", 1), encoding="utf-8")
    assert yaml.safe_load(path.read_text())["tables"]["batch_size"]["rows"][0]["top1"] == 59.5  # read silently
    with pytest.raises(ResultsError, match=r"the key 'top1' is given more than once in one mapping \(line \d+\)"
                       ) as info:
        load_published(path)
    assert str(info.value).startswith(f"{path}: ")
    path.write_text(text.replace("top1: 69.5,", "top1: .nan,", 1), encoding="utf-8")
    with pytest.raises(ResultsError, match=r"'tables.batch_size.rows\[0\].top1' must be a percentage in \[0, 100\], "
                                           r"got nan"):
        load_published(path)
