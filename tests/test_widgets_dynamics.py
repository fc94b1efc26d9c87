"""The widget callback, the health check and the verdicts of book/dynamics.md, driven programmatically.

The chapter runs once in a fresh kernel (jupytext.read + nbclient, as tests/test_book.py), with
check cells appended that call its callback over several settings and re-derive its numbers from the
raw results file. Each check cell is tagged; each test below asserts that its cell ran without an
error. The glued verdicts are read back from the executed notebook and compared with verdicts
recomputed here from ``results/ssl/dynamics.json`` with ``mvssl_core.claims`` (health gate, t
intervals), and with the closing summary that the page builds.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from _chapters import chapter_errors, check_errors, eval_role_problems, glued_values, prose_keys, run_checks
import nbformat
import numpy as np
import pytest

from mvssl_core import claims

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "dynamics.md"
RESULTS = ROOT / "results" / "ssl" / "dynamics.json"
CLAIM_KEYS = ["byol_rec", "byol_ema", "byol_ema_alone", "dino_centring", "dino_rec", "dino_ema", "dino_continuous"]


def is_verdict(value: str) -> bool:
    return value in claims.VERDICTS or value.startswith("mixed: ")


CHECKS = {
    "dynamics_view": """
import json
import matplotlib.figure
import numpy as np

raw = json.load(open(RESULTS_FILE))["metrics"]["runs"]  # the file as written, not through the library


def raw_mean_sd(family, variant, metric):
    rows = [r["history"][metric] for r in raw if r["family"] == family and r["variant"] == variant]
    a = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    return a.mean(axis=0), (a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1]))


third = ALL_STEPS[len(ALL_STEPS) // 3]
settings = [
    (DEFAULT_VIEW, "entropy", None),
    (tuple(BYOL_LABELS), "effective_rank", third),
    (tuple(DINO_LABELS), "discrete_entropy", ALL_STEPS[len(ALL_STEPS) // 2]),
    (("BYOL: published", "DINO: published"), "discrete_reconstruction", None),
    (tuple(VARIANTS), "collapse_std", ALL_STEPS[-2]),
    (("DINO: no EMA",), "loss", ALL_STEPS[2]),
]
for variants, metric, upto in settings:
    r = dynamics_view(variants=variants, metric=metric, upto=upto)
    fig = r["figure"]
    assert isinstance(fig, matplotlib.figure.Figure)
    ax = fig.axes[0]
    assert len(ax.lines) >= len(r["curves"]) > 0, (variants, metric)
    plt.close(fig)
    assert set(r["curves"]) | set(r["missing"]) == set(variants)
    for label in r["missing"]:  # only BYOL lacks the discrete metrics
        assert label.startswith("BYOL") and metric.startswith("discrete"), (label, metric)
    for label, (steps, mean, sd) in r["curves"].items():
        assert len(steps) == len(mean) == len(sd) > 0
        assert np.all(np.isfinite(mean)) and np.all(np.isfinite(sd)) and np.all(sd >= 0), (label, metric)
        assert upto is None or steps[-1] <= upto
        assert upto is None or len(steps) == sum(s <= upto for s in ALL_STEPS)
        # the curve is the mean over the variant's seeds of the raw logged values
        family, variant = VARIANTS[label]
        m, s = raw_mean_sd(family, variant, metric)
        assert np.allclose(mean, m[: len(mean)], rtol=0, atol=1e-9), (label, metric)
        assert np.allclose(sd, s[: len(sd)], rtol=0, atol=1e-9), (label, metric)
        if metric == "entropy":  # float32 logs: a hair below the exact floor is allowed
            assert np.all(mean >= H_FLOOR - 1e-3) and np.all(mean <= H_CEILING + 1e-6), label
        if metric == "discrete_entropy":
            assert np.all(mean >= -1e-6) and np.all(mean <= LOG_K + 1e-4), label
for bad in [dict(metric="accuracy"), dict(variants=("SimCLR: published",))]:
    try:
        dynamics_view(**bad)
    except ValueError:
        pass
    else:
        raise AssertionError(f"dynamics_view accepted {bad}")
""",
    "static_numbers": """
import math
import numpy as np
from mvssl_core.special import vmf_log_normalizer

# the floor is the KDE of k identical points: -(log C_d(kappa) + kappa); the ceiling adds log k
assert abs(H_FLOOR + float(vmf_log_normalizer(D, KAPPA)) + KAPPA) < 1e-9
assert abs(H_CEILING - H_FLOOR - math.log(BATCH)) < 1e-9
assert abs(REC_MAX + H_FLOOR) < 1e-12
assert abs(NEEDED - claims.COLLAPSE_FRACTION * math.log(BATCH)) < 1e-12
# the sizes come from the records' resolved configurations
for run in RUNS:
    res = run["config"]["resolved"]
    assert res["projection_dim"] == D and res["monitor_kappa"] == KAPPA, run["name"]
    if run["family"] == "dino":
        assert res["head_out"] == K_DINO
assert BYOL_REF == runs_of("BYOL: published")[0]["config"]["resolved"]
assert DINO_REF == runs_of("DINO: published")[0]["config"]["resolved"]
for run in RUNS:  # every logged entropy lies in [floor, ceiling]; reconstruction at most its maximum
    h = np.array([np.nan if v is None else v for v in run["history"]["entropy"]], dtype=float)
    h = h[np.isfinite(h)]
    assert np.all(h >= H_FLOOR - 1e-3) and np.all(h <= H_CEILING + 1e-6), run["name"]
    rec = np.array([np.nan if v is None else v for v in run["history"]["reconstruction"]], dtype=float)
    assert np.all(rec[np.isfinite(rec)] <= REC_MAX + 1e-3), run["name"]
    if "discrete_entropy" in run["history"]:
        dh = np.array([v for v in run["history"]["discrete_entropy"] if v is not None], dtype=float)
        assert np.all(dh <= LOG_K + 1e-4), run["name"]
# the variants are those of the experiment's plan, each in every seed
from mvssl_core.ssl_runs import Scale, dynamics
assert set(VARIANTS.values()) == {(r.family, r.variant) for r in dynamics(Scale())}
assert all(len(runs_of(label)) == len(SEEDS) for label in VARIANTS)
assert set(BYOL_LABELS) | set(DINO_LABELS) == set(VARIANTS)
""",
    "health_gate": """
# the gate is the health check of the published recipe, every seed; a failing ablation does not gate
hs = claims.health_table(record)
assert {h.name for h in hs} == set(HEALTH) and len(hs) == len(RUNS)
for family, label in PUBLISHED.items():
    assert TRAINS[family] == all(h.trains for h in hs if h.name.startswith(f"{family}/published/"))
for key, c in CLAIMS.items():
    if not TRAINS[c["family"]]:
        assert c["verdict"] == claims.NOT_TESTABLE, key
    else:
        assert all(p["verdict"] != claims.NOT_TESTABLE for p in c["parts"]), key
""",
    # The prose states these readings of the data; keep them true (a rerun that changes one fails here).
    "prose_readings": """
import numpy as np

assert TRAINS == {"byol": True, "dino": True}
# the failing runs are those of three ablations, and nothing else
assert {h.name.rsplit("/", 1)[0] for h in HEALTH.values() if not h.trains} == \
    {"byol/no predictor", "byol/no predictor, no EMA", "dino/no EMA"}
assert ACCURACY["BYOL: published"]["knn"].low < 0 < ACCURACY["BYOL: published"]["knn"].diff  # "reaches below zero"
assert ACCURACY["DINO: published"]["knn"].low > 0                                            # "is clear"
# BYOL without predictor: fails by the entropy only (dimensional collapse); without both, below untrained
assert all(fail.startswith("entropy") for h in health_of("BYOL: no predictor") for fail in h.failures)
assert ACCURACY["BYOL: no predictor, no EMA"]["knn"].high < 0
# DINO without EMA: loss above log K in most seeds, no collapse of the assignment entropy
dino_no_ema = health_of("DINO: no EMA")
assert sum(h.loss > h.trivial_loss for h in dino_no_ema) > len(dino_no_ema) / 2
no_ema = runs_of("DINO: no EMA")
assert np.mean([-end(r, "discrete_reconstruction") for r in no_ema]) > \
    max(LOG_K, np.mean([-first(r, "discrete_reconstruction") for r in no_ema]))
assert all(end(r, "discrete_entropy") > DISCRETE_NEEDED for r in no_ema)
# without centring: far lower than published, but above the collapse band in every seed
assert all(end(r, "discrete_entropy") > DISCRETE_NEEDED for r in runs_of("DINO: no centring"))
# the summary's words
assert CLAIMS["byol_rec"]["verdict"] == CLAIMS["dino_rec"]["verdict"] == claims.REPRODUCED
assert "reproduced" in CLAIMS["dino_centring"]["verdict"]
assert CLAIMS["byol_ema"]["verdict"] == CLAIMS["byol_ema_alone"]["verdict"] == CLAIMS["dino_ema"]["verdict"] \
    == claims.NOT_REPRODUCED
""",
    "summary_is_sections": """
# every verdict glued by a section is the one in CLAIMS, and the summary says the same, in order
lines = SUMMARY.splitlines()
assert len(lines) == len(CLAIMS)
for line, (key, c) in zip(lines, CLAIMS.items()):
    assert f"**{c['claim']}**" in line and f"*{c['verdict']}*" in line, (key, line)
    assert c["verdict"] == claims.pool([claims.verdict(p["effect"], p["direction"], min_effect=p["min_effect"],
                                                       trains=TRAINS[c["family"]]) for p in c["parts"]]), key
""",
}


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    return run_checks(CHAPTER, CHECKS)


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads(RESULTS.read_text())


def test_chapter_cells_run(executed):
    errors = chapter_errors(executed)
    assert not errors, f"chapter cells failed: {errors}"


@pytest.mark.parametrize("name", list(CHECKS))
def test_callback_checks(executed, name):
    errors = check_errors(executed, name)
    assert not errors, errors[0]


def test_every_glue_reference_is_glued(executed):
    text = CHAPTER.read_text()
    used = prose_keys(text)
    assert len(used) > 30  # the {eval} roles were found, not silently none
    missing = used - set(glued_values(executed))
    assert not missing, f"referenced but never glued: {sorted(missing)}"
    assert eval_role_problems(executed) == []  # each key glued above the prose that shows it (inline mode)


# ------------------------------------------------------------------------------------------------
# The verdicts, recomputed from the raw file with claims' statistics (not through the page's helpers)


def _finite(run: dict, metric: str) -> list[float]:
    return [float(v) for v in run["history"][metric] if v is not None and math.isfinite(v)]


def _end(run: dict, metric: str) -> float:
    return float(np.mean(_finite(run, metric)[-5:]))  # the health check's window


def _first(run: dict, metric: str) -> float:
    return _finite(run, metric)[0]


def _margin(run: dict) -> float:
    res = run["config"]["resolved"]
    return _end(run, "entropy") - claims.vmf_kde_floor(res["projection_dim"], res["monitor_kappa"])


def recomputed_verdicts(raw: dict) -> dict[str, str]:
    runs = raw["metrics"]["runs"]

    def of(family, variant):
        selected = [r for r in runs if r["family"] == family and r["variant"] == variant]
        assert selected, (family, variant)
        return selected

    trains = {fam: all(claims.health(r, raw["metrics"]["random_init"]).trains for r in of(fam, "published"))
              for fam in ("byol", "dino")}
    needed = claims.COLLAPSE_FRACTION * math.log(runs[0]["batch_size"])
    (k,) = {r["config"]["resolved"]["head_out"] for r in runs if r["family"] == "dino"}
    d_needed = claims.COLLAPSE_FRACTION * math.log(k)

    def v(effect, direction, family, min_effect=0.0):
        return claims.verdict(effect, direction, min_effect=min_effect, trains=trains[family])

    h = {variant: [_end(r, "discrete_entropy") for r in of("dino", variant)]
         for variant in ("published", "no centring", "no EMA")}
    return {
        "byol_rec": v(claims.one_sample([_end(r, "reconstruction") - _first(r, "reconstruction")
                                         for r in of("byol", "published")], 0.0), +1, "byol"),
        "byol_ema": v(claims.one_sample([_margin(r) for r in of("byol", "no EMA")], needed), -1, "byol"),
        "byol_ema_alone": v(claims.one_sample([_margin(r) for r in of("byol", "no predictor")], needed), +1, "byol"),
        "dino_centring": claims.pool([
            v(claims.one_sample(h["published"], d_needed), +1, "dino"),
            v(claims.one_sample(h["no centring"], d_needed), -1, "dino"),
            v(claims.welch(h["no centring"], h["published"]), -1, "dino", min_effect=d_needed)]),
        "dino_rec": v(claims.one_sample([_end(r, "discrete_reconstruction") - _first(r, "discrete_reconstruction")
                                         for r in of("dino", "published")], 0.0), +1, "dino"),
        "dino_ema": v(claims.one_sample(h["no EMA"], d_needed), -1, "dino"),
        "dino_continuous": v(claims.one_sample([_margin(r) for r in of("dino", "published")], needed), +1, "dino"),
    }


def test_verdicts_recomputed_from_the_raw_file(executed, raw):
    glued = glued_values(executed)
    verdicts = {k.removeprefix("v_"): v for k, v in glued.items() if k.startswith("v_")}
    assert sorted(verdicts) == sorted(CLAIM_KEYS)
    assert all(is_verdict(v) for v in verdicts.values()), verdicts
    assert verdicts == recomputed_verdicts(raw)


def test_summary_has_the_sections_verdicts(executed):
    """The closing list is built from CLAIMS: one line per claim, in order, with the glued verdict."""
    glued = glued_values(executed)
    assert glued["claim_keys"] == CLAIM_KEYS
    lines = glued["summary_md"].splitlines()
    assert len(lines) == len(CLAIM_KEYS)
    pattern = re.compile(r"^- \*\*(?P<claim>.+?)\*\* \((?P<source>[^)]+)\) — \*(?P<verdict>[^*]+)\*\. ")
    for key, line in zip(CLAIM_KEYS, lines):
        m = pattern.match(line)
        assert m, line
        assert m["claim"] == glued[f"claim_{key}"], (key, line)
        assert m["verdict"] == glued[f"v_{key}"], (key, line)


def test_gate_makes_a_claim_not_testable(raw):
    """A published run that fails the health check turns its family's verdicts into NOT_TESTABLE."""
    broken = json.loads(json.dumps(raw))
    for run in broken["metrics"]["runs"]:
        if run["family"] == "byol" and run["variant"] == "published":
            run["final"]["knn_top1"] = 0.0  # below any untrained backbone
            break
    verdicts = recomputed_verdicts(broken)
    assert all(verdicts[k] == claims.NOT_TESTABLE for k in CLAIM_KEYS if k.startswith("byol"))
    assert {k: v for k, v in verdicts.items() if k.startswith("dino")} == \
        {k: v for k, v in recomputed_verdicts(raw).items() if k.startswith("dino")}


def test_page_reads_the_library_not_its_own_rules():
    source = CHAPTER.read_text()
    for needed in ("claims.load_or_explain", "claims.provenance_line", "claims.health_table",
                   "claims.verdict", "claims.one_sample", "claims.welch", "claims.pool", "claims.run_collapsed"):
        assert needed in source, needed
    for banned in ("def verdict", "COLLAPSE_FRACTION =", "vmf_log_normalizer", "load_experiment(",
                   "inspect.signature(BYOL", "inspect.signature(DINO", "has no normalisation"):
        assert banned not in source, banned


def test_page_has_a_slider_and_static_figures(executed):
    sources = "\n".join(c.source for c in executed.cells if c.cell_type == "code")
    assert "widgets.IntSlider" in sources and "live_or_frames(" in sources
    glued = glued_values(executed)
    assert "fig_dynamics_byol" in glued and "fig_dynamics_dino" in glued
