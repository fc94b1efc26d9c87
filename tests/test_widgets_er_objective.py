"""The widget callbacks of book/er_objective.md, driven programmatically.

The chapter runs once in a fresh kernel (jupytext.read + nbclient, as tests/test_book.py), with
check cells appended that call its callbacks (``batch_view``, ``ema_view``, ``ablation_view``) over
several settings. Each check recomputes, from the raw JSON records and without ``mvssl_core``, what
the figure should show: the means and standard deviations over seeds, read back from the plotted
artists (error-bar lines and bars), the drops and their standard errors, and the verdicts by the
stated rule. A last check keeps the chapter's prose true: every reading of the data the prose
states is asserted on the stored runs.
"""

from __future__ import annotations

from pathlib import Path

from _chapters import chapter_errors, check_errors, run_checks
import nbformat
import pytest

CHAPTER = Path(__file__).resolve().parents[1] / "book" / "er_objective.md"

HELPERS = r"""
import json
import math

import matplotlib.figure
import numpy as np
from matplotlib.container import BarContainer, ErrorbarContainer

RAW = {name: json.loads((ROOT / "results" / "ssl" / f"{name}.json").read_text())
       for name in ("batch", "batch_steps", "ema", "ablation")}
ALLOWED = {"reproduced", "not reproduced", "inconclusive", "both collapsed", "no degradation"}


def raw_cell(record, metric, setting, method, value):
    vals = [100.0 * r["final"][metric] for r in record["metrics"]["runs"]
            if r["method"] == method and r["labels"][setting] == value]
    assert len(vals) >= 2, (method, value)
    return float(np.mean(vals)), float(np.std(vals, ddof=1)), len(vals)


def raw_verdict(mean, se, z, step):
    margin = max(z * se, step)
    return "reproduced" if mean > margin else "not reproduced" if mean < -margin else "inconclusive"


def errorbars(ax):
    # label -> (x, y, half-lengths of the error bars) of every error-bar container of an axes
    out = {}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            x, y = (np.asarray(v, dtype=float) for v in c.lines[0].get_data())
            segs = c.lines[2][0].get_segments()
            half = np.array([abs(s[1][1] - s[0][1]) / 2 for s in segs])
            centre = np.array([(s[1][1] + s[0][1]) / 2 for s in segs])
            assert np.allclose(centre, y), c.get_label()
            out[c.get_label()] = (np.asarray(x), np.asarray(y), half)
    return out


def check_sweep(r, record, setting, families, family_axes, z, stress, reference):
    assert isinstance(r["figure"], matplotlib.figure.Figure)
    assert all(ax.has_data() for ax in r["figure"].axes if ax.get_visible())
    step = 100.0 / record["metrics"]["random_init"][0]["n_test"]
    values = sorted({run["labels"][setting] for run in record["metrics"]["runs"]})
    assert list(r["values"]) == values
    for fam, ax in zip(families, family_axes):
        plotted = errorbars(ax)
        drops = {}
        for method in (fam, fam + "_er"):
            cells = [raw_cell(record, r["metric"], setting, method, v) for v in values]
            means = np.array([c[0] for c in cells]); sds = np.array([c[1] for c in cells])
            assert np.allclose(r["means"][method], means, atol=1e-9), method
            assert np.allclose(r["sds"][method], sds, atol=1e-9), method
            x, y, half = plotted[name(method)]
            assert np.allclose(y, means, atol=1e-9) and np.allclose(half, sds, atol=1e-9), method
            ref, low = cells[values.index(reference)], cells[values.index(stress)]
            drop = (ref[0] - low[0], math.sqrt(ref[1]**2 / ref[2] + low[1]**2 / low[2]))
            assert math.isclose(r["drops"][method].mean, drop[0], abs_tol=1e-9), method
            assert math.isclose(r["drops"][method].se, drop[1], abs_tol=1e-9), method
            drops[method] = drop
        adv = (drops[fam][0] - drops[fam + "_er"][0], math.hypot(drops[fam][1], drops[fam + "_er"][1]))
        assert math.isclose(r["advantages"][fam].mean, adv[0], abs_tol=1e-9)
        v = r["verdicts"][fam]
        assert v in ALLOWED, v
        if v not in ("both collapsed", "no degradation"):
            assert v == raw_verdict(*adv, z, step), (fam, v, adv)
            assert any(raw_verdict(*drops[m], z, step) == "reproduced" for m in (fam, fam + "_er"))
        if v == "no degradation":
            assert all(raw_verdict(*drops[m], z, step) != "reproduced" for m in (fam, fam + "_er"))
    assert r["pooled_verdict"] in ALLOWED | {"nothing to test"}
"""

CHECKS = {
    "batch_view": """
sizes = sorted({r["batch_size"] for r in RAW["batch"]["metrics"]["runs"]})
assert sizes == sorted({r["batch_size"] for r in RAW["batch_steps"]["metrics"]["runs"]})
for protocol, record in (("epochs", RAW["batch"]), ("steps", RAW["batch_steps"])):
    for metric, z, small in [("linear_top1", 2.0, sizes[0]), ("knn_top1", 1.0, sizes[0]),
                             ("knn_top1", 3.0, sizes[1]), ("linear_top1", 0.5, sizes[1])]:
        r = batch_view(metric=metric, z=z, small=small, protocol=protocol)
        assert r["protocol"] == protocol
        check_sweep(r, record, "batch_size", FAMILIES, r["figure"].axes[:5], z, small, sizes[-1])
        assert len(r["figure"].axes[5].patches) == 2 * len(FAMILIES)  # the drop bars
        plt.close(r["figure"])
# the protocols: same epochs (more steps at a small batch) or the same steps at every batch size
fixed = {r["steps"] for r in RAW["batch_steps"]["metrics"]["runs"]}
assert len(fixed) == 1, fixed
by_batch = {b: {r["steps"] for r in RAW["batch"]["metrics"]["runs"] if r["batch_size"] == b} for b in sizes}
assert all(len(v) == 1 for v in by_batch.values()), by_batch
assert max(by_batch[sizes[0]]) > max(by_batch[sizes[-1]]), by_batch  # fixed epochs: more steps at a small batch
for bad in [dict(small=sizes[-1]), dict(protocol="images")]:
    try:
        batch_view(**bad)
        raise AssertionError(f"batch_view accepted {bad}")
    except ValueError:
        pass
""",
    "ema_view": """
emas = sorted({r["labels"]["ema"] for r in RAW["ema"]["metrics"]["runs"]})
for metric, z, small in [("linear_top1", 2.0, emas[0]), ("knn_top1", 1.0, emas[0]),
                         ("linear_top1", 3.0, emas[1])]:
    r = ema_view(metric=metric, z=z, small=small)
    axes = r["figure"].axes
    check_sweep(r, RAW["ema"], "ema", EMA_FAMILIES, axes[:2], z, small, emas[-1])
    # the bottom row: the entropy above collapse, mean and sd over seeds, read back from the artists
    for fam, ax in zip(EMA_FAMILIES, axes[3:5]):
        plotted = errorbars(ax)
        for method in (fam, fam + "_er"):
            _, y, half = plotted[name(method)]
            gaps = [[max(np.mean([v for v in run["history"]["entropy"][-LAST:] if v is not None])
                         - collapsed_entropy(run), 0.0)
                     for run in RAW["ema"]["metrics"]["runs"]
                     if run["method"] == method and run["labels"]["ema"] == lam] for lam in emas]
            assert np.allclose(y, [np.mean(g) for g in gaps], atol=1e-9), method
            assert np.allclose(half, [np.std(g, ddof=1) for g in gaps], atol=1e-9), method
            assert np.all(np.array(y) >= 0.0), method  # never below a collapsed batch
    plt.close(r["figure"])
""",
    "ablation_view": """
from mvssl_core.special import vmf_log_normalizer

def floor_entropy(run):  # -log C_d(kappa) - kappa, recomputed from the run's own config
    hyper = run["config"]["hyper"]
    d = hyper["head"]["bottleneck"] if "head" in hyper else hyper["projector"]["out"]
    return -float(vmf_log_normalizer(d, 10.0)) - 10.0

runs = RAW["ablation"]["metrics"]["runs"]
for metric, z in [("linear_top1", 2.0), ("knn_top1", 1.0), ("knn_top1", 3.0)]:
    r = ablation_view(metric=metric, z=z)
    fig = r["figure"]
    assert isinstance(fig, matplotlib.figure.Figure) and all(ax.has_data() for ax in fig.axes)
    step = 100.0 / RAW["ablation"]["metrics"]["random_init"][0]["n_test"]
    for col, fam in enumerate(ABLATION_FAMILIES):
        plotted = errorbars(fig.axes[col])
        gap_bars = [c for c in fig.axes[3 + col].containers if isinstance(c, BarContainer)][0]
        cells = {t: raw_cell(RAW["ablation"], metric, "er_terms", fam + "_er", t) for t in TERMS}
        for t in TERMS:
            _, y, half = plotted[t]
            assert np.allclose(y, [cells[t][0]], atol=1e-9) and np.allclose(half, [cells[t][1]], atol=1e-9)
        assert np.allclose([r["sds"][fam, t] for t in TERMS], [cells[t][1] for t in TERMS], atol=1e-9)
        status = {}
        for i, t in enumerate(TERMS):
            mine = [run for run in runs if run["method"] == fam + "_er" and run["labels"]["er_terms"] == t]
            raw = [np.mean([v for v in run["history"]["entropy"][-LAST:] if v is not None])
                   - floor_entropy(run) for run in mine]
            assert min(raw) > -1e-3, raw  # a float32 log of the floor, never truly below it
            gaps = [max(g, 0.0) for g in raw]
            ranks = [np.mean([v for v in run["history"]["effective_rank"][-LAST:] if v is not None])
                     for run in mine]
            assert math.isclose(gap_bars.patches[i].get_height(), np.mean(gaps), abs_tol=1e-9), (fam, t)
            assert math.isclose(r["gap_sd"][fam, t], np.std(gaps, ddof=1), abs_tol=1e-9), (fam, t)
            assert math.isclose(r["rank"][fam, t], np.mean(ranks), abs_tol=1e-9), (fam, t)
            low = [g < TAU for g in gaps]
            expected = "collapsed" if all(low) else "not collapsed" if not any(low) else "partly collapsed"
            assert r["status"][fam, t] == expected, (fam, t, gaps)
            status[t] = expected
            if t != "both":
                both = cells["both"]
                c = (both[0] - cells[t][0], math.sqrt(both[1]**2 / both[2] + cells[t][1]**2 / cells[t][2]))
                assert math.isclose(r["both_beats"][fam, t].mean, c[0], abs_tol=1e-9)
                assert math.isclose(r["both_beats"][fam, t].se, c[1], abs_tol=1e-9)
                dead = status["both"] == status[t] == "collapsed"
                assert r["both_beats_verdict"][fam, t] == ("both collapsed" if dead else raw_verdict(*c, z, step))
    assert r["collapse_verdict"] in {"reproduced", "not reproduced", "inconclusive"}
    plt.close(fig)
""",
    "provenance": """
for name_, record in RAW.items():
    prov = record["provenance"]
    assert prov["command"].startswith("python scripts/experiments/ssl_runs.py"), prov["command"]
    assert "--smoke" not in prov["command"], f"{name_}.json is a smoke record"
    assert len({r["seed"] for r in record["metrics"]["runs"]}) >= 3, name_
""",
    # The prose states these readings of the stored runs; keep them true when the runs are regenerated.
    "prose_claims": """
floor = {m: random_init(batch_record, m) for m in METRICS}
for metric, view in batch_views.items():
    f = floor[metric]
    # no original loses accuracy at the smallest batch, so nothing is tested
    assert not any(view["original_degrades"].values()), (metric, view["original_degrades"])
    assert set(view["verdicts"].values()) <= {"no degradation", "both collapsed"}, view["verdicts"]
    assert view["pooled_verdict"] == "nothing to test"
    means = view["means"]
    # BYOL-ER above BYOL at every batch; SimCLR-ER below SimCLR at the largest batch, close elsewhere
    assert np.all(means["byol_er"] > means["byol"]), metric
    assert means["simclr_er"][-1] < means["simclr"][-1], metric
    assert np.all(np.abs(means["simclr_er"][:-1] - means["simclr"][:-1]) < 1.5), metric
    assert view["advantages"]["simclr"].mean > 0, metric
    # DINO and DINO-ER collapsed everywhere, no better than the untrained backbone
    for m in ("dino", "dino_er"):
        assert view["status"][m] == ["collapsed"] * len(BATCH_SIZES), (m, view["status"][m])
        assert np.all(means[m] <= f.mean + f.sd), (metric, m, means[m])
    assert view["verdicts"]["dino"] == "both collapsed"
    # DeepCluster-ER below DeepCluster at every batch
    assert np.all(means["deepcluster_er"] < means["deepcluster"]), metric
    # clustering objectives: kNN below the untrained backbone, linear within its band or above
    for m in ("swav", "swav_er", "deepcluster_er"):
        if metric == "knn_top1":
            assert np.all(means[m] < f.mean), (m, means[m])
        else:
            assert np.all(means[m] >= f.mean - f.sd), (m, means[m])
knn = batch_views["knn_top1"]["means"]
gaps = knn["byol_er"] - knn["byol"]
assert np.argmax(gaps) == len(BATCH_SIZES) - 1, gaps  # the BYOL-ER gap is largest at the largest batch
sd_max = max((float(np.max(v["sds"][m])), m) for v in batch_views.values() for m in v["sds"])
assert sd_max[1] in ("swav", "swav_er"), sd_max  # the widest seed spread
assert max(rank_b[(m, b)].mean for m in ("dino", "dino_er") for b in BATCH_SIZES) < 1.5

# the fixed-steps protocol: batch 64 is the same computation as in the fixed-epoch one, run by run
assert fixed_steps == steps_at[middle] and sum(same) == len(same) == 3 * len(FAMILIES) * 2
for metric, view in steps_views.items():
    assert view["verdicts"]["simclr"] == "not reproduced", (metric, view["verdicts"])
    assert view["drops"]["simclr_er"].mean > view["drops"]["simclr"].mean > -1.0, metric
    assert "SimCLR-ER" in who_degrades(view, er=True), metric
    # DeepCluster: the original degrades, ER's advantage positive but not counting; ER below it everywhere
    assert view["original_degrades"]["deepcluster"] and view["verdicts"]["deepcluster"] == "inconclusive"
    assert view["advantages"]["deepcluster"].mean > 0, metric
    assert np.all(view["means"]["deepcluster_er"] < view["means"]["deepcluster"]), metric
    assert view["verdicts"]["byol"] in ("inconclusive", "no degradation"), metric
    assert view["verdicts"]["swav"] in ("inconclusive", "no degradation"), metric
    assert view["verdicts"]["dino"] == "both collapsed", metric
    # "not reproduced at this scale under either protocol": BYOL and DINO do not degrade
    for v in (view, batch_views[metric]):
        assert not v["original_degrades"]["byol"] and not v["original_degrades"]["dino"], metric
    assert view["pooled_verdict"] == "inconclusive", metric
assert steps_views["linear_top1"]["verdicts"]["swav"] == "no degradation"
tested = {m: {f for f, v in view["verdicts"].items() if v in ("reproduced", "not reproduced", "inconclusive")}
          for m, view in steps_views.items()}
assert tested == {"linear_top1": {"simclr", "deepcluster"}, "knn_top1": {"simclr", "deepcluster", "byol"}}, tested
assert steps_views["knn_top1"]["verdicts"]["byol"] == "inconclusive"

for metric, view in ema_views.items():
    assert view["verdicts"]["byol"] == "no degradation", (metric, view["verdicts"])
    assert view["verdicts"]["dino"] == "both collapsed", (metric, view["verdicts"])
    assert view["status"]["byol"] == ["not collapsed"] * len(EMAS)
    for m in ("dino", "dino_er"):
        assert view["status"][m] == ["collapsed"] * len(EMAS), (m, view["status"][m])
    assert np.all(view["means"]["byol_er"] > view["means"]["byol"]), metric
    assert np.all(view["gap"]["byol_er"] > view["gap"]["byol"])
    assert np.all(view["rank"]["byol_er"] > view["rank"]["byol"])
    assert view["gap"]["byol_er"][0] > math.log(scale["ema_batch_size"]) - 0.5

abl, abl_lin = ablation_views["knn_top1"], ablation_views["linear_top1"]
assert abl["collapse_verdict"] == "reproduced"
assert abl["status"]["simclr", "reconstruction"] == "collapsed"
assert abl["status"]["simclr", "both"] == "not collapsed"
assert abl["status"]["byol", "reconstruction"] == "not collapsed"
# reconstruction alone: both probes below the untrained backbone
assert abl["means"]["simclr", "reconstruction"] < floor["knn_top1"].mean
assert abl_lin["means"]["simclr", "reconstruction"] < floor["linear_top1"].mean
for term in TERMS:
    assert abl["status"]["dino", term] == "collapsed", term
# entropy alone: SimCLR-ER and BYOL-ER are the same computation, run by run
step = resolution(ablation_record)
for m in METRICS:
    a, b = final_by_seed("simclr_er", "entropy", m), final_by_seed("byol_er", "entropy", m)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < step / 2 for k in a), (a, b)
log_k = math.log(scale["batch_size"])
assert abl["gap"]["simclr", "entropy"] > log_k - 0.1            # "to the ceiling"
assert abl["gap"]["simclr", "both"] < log_k / 2                 # "much lower ... most of the entropy"
assert abl_lin["both_beats_verdict"]["simclr", "entropy"] == "reproduced"
assert abl_lin["both_beats"]["simclr", "entropy"].mean > 0
# the live families: none of the both-vs-alone comparisons goes the other way, and BYOL-ER's
# entropy with both terms is at the ceiling like with the entropy alone
for v in ablation_views.values():
    assert all(v["status"][fam, "both"] == "not collapsed" for fam in LIVE)
    assert all(v["both_beats_verdict"][fam, t] in ("reproduced", "inconclusive") for fam in LIVE for t in TERMS[1:])
assert abs(abl["gap"]["byol", "both"] - abl["gap"]["byol", "entropy"]) < 0.1
# DINO-ER's discrete entropy term near log K while its projections are collapsed
dino_h = np.mean([tail_mean(r, "loss_entropy") for r in ablation_record["metrics"]["runs"]
                  if r["method"] == "dino_er" and r["labels"]["er_terms"] == "entropy"])
assert dino_h > math.log(dino_k) - 0.2 and abl["rank"]["dino", "entropy"] < 1.5, dino_h
""",
}


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    return run_checks(CHAPTER, CHECKS, prelude={"helpers": HELPERS})


def test_chapter_cells_run(executed):
    errors = chapter_errors(executed)
    assert not errors, f"chapter cells failed: {errors}"
    assert not check_errors(executed, "helpers")


@pytest.mark.parametrize("name", list(CHECKS))
def test_callback_checks(executed, name):
    errors = check_errors(executed, name)
    assert not errors, errors[0]


def test_every_glue_reference_resolves(executed):
    """Every {glue:text} / {glue:figure} key of the prose is glued, and its format applies (what
    `make book` would warn about, checked without Sphinx)."""
    import re

    from myst_nb.core.variables import format_plain_text

    glued, twice = {}, set()
    for cell in executed.cells:
        if any(t.startswith("check:") for t in cell.metadata.get("tags", [])):
            continue
        for o in cell.get("outputs", []):
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                if name in glued:
                    twice.add(name)
                glued[name] = o["data"]
    assert not twice, f"glued more than once (a build warning): {sorted(twice)}"
    text = CHAPTER.read_text(encoding="utf-8")
    roles = re.findall(r"\{glue:text\}`([^`]+)`", text)
    figures = re.findall(r"```\{glue:figure\} (\S+)", text)
    assert roles and figures
    for ref in roles:
        key, _, fmt = ref.rpartition(":") if ":" in ref else (ref, "", "s")
        assert key in glued, f"{{glue:text}}`{ref}`: nothing glued under {key!r}"
        plain = glued[key]["application/papermill.record/text/plain"]
        format_plain_text(plain, fmt or "s")  # raises if the format does not apply
    for key in figures:
        assert "application/papermill.record/image/png" in glued.get(key, {}), key
