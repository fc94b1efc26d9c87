"""mvssl_core.experiments: validation of multi-run records and the seed statistics the chapters plot."""

from __future__ import annotations

import copy
import math
import statistics

import pytest

from mvssl_core.experiments import load_experiment, mean_curve, select, summarise
from mvssl_core.results import ResultsError, SCHEMA, provenance, write_results


def _run(name, family, variant, seed, acc, entropy):
    return {"name": name, "family": family, "method": family, "variant": variant, "seed": seed,
            "batch_size": 16, "epochs": 1, "labels": {"ema": 0.9}, "steps": 4,
            "history": {"step": [2, 4], "entropy": entropy}, "final": {"knn_top1": acc}}


RECORD = {
    "schema": SCHEMA, "method": "ssl_runs experiment 'test'", "dataset": "digits", "config": {}, "seed": 0,
    "provenance": provenance(command="test"),
    "metrics": {"runs": [_run("a/s0", "byol", "x", 0, 0.5, [1.0, 2.0]),
                         _run("a/s1", "byol", "x", 1, 0.7, [3.0, None]),
                         _run("b/s0", "dino", "y", 0, 0.9, [0.0, 0.0])],
                "random_init": [{"seed": 0, "knn_top1": 0.3}]},
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
    (lambda r: r["metrics"]["runs"][0].update(seed=True), "'seed' must be int"),
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


def test_mean_curve_refuses_runs_logged_at_different_steps():
    a, b = copy.deepcopy(RECORD["metrics"]["runs"][:2])
    b["history"]["step"] = [1, 4]
    with pytest.raises(ValueError, match="different steps"):
        mean_curve([a, b], "entropy")
