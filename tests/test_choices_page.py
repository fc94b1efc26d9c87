"""book/choices.md: kappa and the estimator as training choices of SimCLR-ER, and InfoNCE vs ER on shapes.

The chapter runs once in a fresh kernel; its glued effects and readings are compared with values
recomputed here from the raw results files with scipy's Welch test (not the library's), gated on
``claims.health`` as the page says.
"""

from __future__ import annotations

import json
from pathlib import Path

from _chapters import chapter_errors, glue_reference_problems, glued_values, run_checks
import pytest
from scipy import stats

from mvssl_core import claims
from mvssl_core.experiments import load_experiment

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "choices.md"
RESULTS = ROOT / "results" / "ssl"


@pytest.fixture(scope="module")
def executed():
    return run_checks(CHAPTER, {})


@pytest.fixture(scope="module")
def glued(executed):
    return glued_values(executed)


def raw_runs(name: str) -> list[dict]:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))["metrics"]["runs"]


def expected(name_a: str, pick_a, name_b: str, pick_b, metric: str, higher: str, lower: str) -> tuple[str, str]:
    """(effect text, reading) of mean(a) - mean(b) in points, from scipy's Welch test."""
    a = [r for r in raw_runs(name_a) if pick_a(r)]
    b = [r for r in raw_runs(name_b) if pick_b(r)]
    assert len(a) == len(b) == 5
    xa = [100 * r["final"][metric] for r in a]
    xb = [100 * r["final"][metric] for r in b]
    test = stats.ttest_ind(xa, xb, equal_var=False)
    ci = test.confidence_interval(0.95)
    diff = sum(xa) / len(xa) - sum(xb) / len(xb)
    text = f"{diff:+.1f} [{ci.low:+.1f}, {ci.high:+.1f}]"
    records = {n: load_experiment(RESULTS / f"{n}.json") for n in {name_a, name_b}}
    ok = all(claims.health(r, records[n]["metrics"]["random_init"]).trains
             for n, runs in ((name_a, a), (name_b, b)) for r in runs)
    if not ok:
        return text, claims.NOT_TESTABLE
    return text, higher if ci.low > 0 else lower if ci.high < 0 else "no difference shown"


def test_chapter_cells_run(executed):
    assert not chapter_errors(executed)


def test_every_glue_reference_resolves(executed):
    assert not glue_reference_problems(CHAPTER, executed)


@pytest.mark.parametrize("metric", ["knn_top1", "linear_top1"])
def test_kappa_and_estimator_effects_match_scipy(glued, metric):
    joe10 = lambda r: r["labels"] == {"kappa": 10.0, "estimator": "joe"}  # noqa: E731
    for kappa in (2.0, 50.0):
        text, read = expected("choices", lambda r, k=kappa: r["labels"] == {"kappa": k, "estimator": "joe"},
                              "choices", joe10, metric, f"κ = {kappa:g} is better", f"κ = {kappa:g} is worse")
        suffix = "" if metric == "knn_top1" else "_linear"
        assert glued[f"kappa_{kappa:g}_effect{suffix}"] == text
        if metric == "knn_top1":
            assert glued[f"kappa_{kappa:g}_reading"] == read
    text, read = expected("choices", lambda r: r["labels"]["estimator"] == "plugin", "choices", joe10, metric,
                          "plug-in is better", "plug-in is worse")
    assert glued["estimator_effect" + ("" if metric == "knn_top1" else "_linear")] == text
    if metric == "knn_top1":
        assert glued["estimator_reading"] == read


@pytest.mark.parametrize("metric", ["knn_top1", "linear_top1"])
def test_infonce_against_er_matches_scipy(glued, metric):
    for name, pick in (("shapes", lambda r: True), ("batch", lambda r: r["batch_size"] == 64)):
        text, read = expected(name, lambda r: r["method"] == "simclr_er" and pick(r),
                              name, lambda r: r["method"] == "simclr" and pick(r), metric,
                              "ER is better", "InfoNCE is better")
        key = "shapes" if name == "shapes" else "digits"
        assert glued[f"{key}_{metric}_effect"] == text
        assert glued[f"{key}_{metric}_reading"] == read


def test_shapes_runs_are_on_shapes_and_the_health_table_counts_them(executed, glued):
    runs = raw_runs("shapes")
    assert {r["config"]["data"]["name"] for r in runs} == {"shapes"}
    assert sorted(r["method"] for r in runs) == ["simclr"] * 5 + ["simclr_er"] * 5
    text = "\n".join(o.get("data", {}).get("text/markdown", "") for c in executed.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    record = load_experiment(RESULTS / "shapes.json")
    for method in ("simclr", "simclr_er"):
        n = sum(claims.health(r, record["metrics"]["random_init"]).trains for r in runs if r["method"] == method)
        assert f"| shapes | {method} | shapes | {n} of 5 |" in text
    choices = load_experiment(RESULTS / "choices.json")
    failing = [r["name"] for r in choices["metrics"]["runs"]
               if not claims.health(r, choices["metrics"]["random_init"]).trains]
    failing += [r["name"] for r in record["metrics"]["runs"]
                if not claims.health(r, record["metrics"]["random_init"]).trains]
    assert glued["n_failing"] == len(failing)
    trained = {m: sum(claims.health(r, record["metrics"]["random_init"]).trains for r in runs if r["method"] == m)
               for m in ("simclr", "simclr_er")}
    note = glued["shapes_note"]
    assert f"SimCLR trained in {trained['simclr']} of 5 seeds" in note
    assert f"SimCLR-ER trained in {trained['simclr_er']} of 5 seeds" in note
    if trained["simclr"] == 5 and trained["simclr_er"] < 5:
        assert "SimCLR-ER does not learn the shape" in note
    for name in failing:
        assert f"- `{name}`:" in text


def test_kappa_training_counts_and_ranks(glued):
    choices = load_experiment(RESULTS / "choices.json")
    ablation = load_experiment(RESULTS / "ablation.json")

    def counted(record, pick):
        hs = [claims.health(r, record["metrics"]["random_init"]) for r in record["metrics"]["runs"] if pick(r)]
        assert len(hs) == 5
        return sum(h.trains for h in hs), sum(h.effective_rank for h in hs) / len(hs)

    high = counted(choices, lambda r: r["labels"] == {"kappa": 50.0, "estimator": "joe"})
    default = counted(choices, lambda r: r["labels"] == {"kappa": 10.0, "estimator": "joe"})
    recon = counted(ablation, lambda r: r["method"] == "simclr_er" and r["labels"]["er_terms"] == "reconstruction")
    assert (glued["kappa_high_trained"], glued["kappa_high_rank"]) == pytest.approx(high)
    assert (glued["kappa_default_trained"], glued["kappa_default_rank"]) == pytest.approx(default)
    assert (glued["recon_only_trained"], glued["recon_only_rank"]) == pytest.approx(recon)
    lesson = glued["kappa_lesson"]
    if high[0] < 5:
        assert "κ = 50 (%d of 5)" % high[0] in lesson and "not a free choice" in lesson
    else:
        assert "not a free choice" not in lesson
