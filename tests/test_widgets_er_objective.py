"""book/er_objective.md, executed in a fresh kernel and checked against the raw results files.

The chapter runs once (jupytext.read + nbclient, as tests/test_book.py), with check cells appended.
The checks drive the widget callbacks (``batch_view``, ``ema_view``, ``ablation_view``) over both
probes and several confidence levels, and recompute from the raw JSON records, with ``claims.welch``,
``claims.one_sample``, ``claims.health`` and ``claims.verdict`` but none of the chapter's helpers, what
each figure shows (read back from its artists) and each verdict. The pytest tests then read the
executed notebook: the closing summary must list exactly the verdicts of the sections' tables and
glued values, and every glue reference of the prose must resolve.
"""

from __future__ import annotations

import re
from pathlib import Path

from _chapters import chapter_errors, check_errors, glue_reference_problems, glued_values, run_checks
import nbformat
import pytest

CHAPTER = Path(__file__).resolve().parents[1] / "book" / "er_objective.md"

HELPERS = r"""
import json
import math

import matplotlib.figure
import numpy as np
from matplotlib.container import BarContainer, ErrorbarContainer

from mvssl_core import claims as C

FILE_RECORDS = {n: json.loads((ROOT / "results" / "ssl" / f"{n}.json").read_text())
                for n in ("batch", "ema", "ablation", "ablation_clustering")}
RAW = {n: FILE_RECORDS[n] for n in ("batch", "ema", "ablation")}
RAW["ablation"] = dict(RAW["ablation"], metrics=dict(RAW["ablation"]["metrics"], runs=(
    RAW["ablation"]["metrics"]["runs"] + FILE_RECORDS["ablation_clustering"]["metrics"]["runs"])))
assert FILE_RECORDS["ablation_clustering"]["metrics"]["random_init"] == RAW["ablation"]["metrics"]["random_init"]
FAMS = ("simclr", "byol", "dino", "swav", "deepcluster")
ABL_FAMS = tuple(f for f in FAMS if any(r["family"] == f for r in RAW["ablation"]["metrics"]["runs"]))


def raw_runs(exp, method, **labels):
    runs = [r for r in RAW[exp]["metrics"]["runs"]
            if r["method"] == method and all(r["labels"][k] == v for k, v in labels.items())]
    assert runs, (exp, method, labels)
    return sorted(runs, key=lambda r: r["seed"])


def raw_acc(runs, metric):
    return [100.0 * r["final"][metric] for r in runs]


def raw_healthy(exp, runs):
    return all(C.health(r, RAW[exp]["metrics"]["random_init"]).trains for r in runs)


def mean_sd(values):
    return float(np.mean(values)), float(np.std(values, ddof=1))


def raw_robust(exp, fam, stress, ref, gate, metric, alpha):
    # (welch effect of the per-seed changes ER vs original, verdict, the original's one-sample effect and verdict)
    changes = {}
    for m in (fam, fam + "_er"):
        lo = {r["seed"]: 100.0 * r["final"][metric] for r in raw_runs(exp, m, **stress)}
        hi = {r["seed"]: 100.0 * r["final"][metric] for r in raw_runs(exp, m, **ref)}
        assert lo.keys() == hi.keys() and len(lo) >= 2, (m, lo.keys(), hi.keys())
        changes[m] = [lo[s] - hi[s] for s in sorted(lo)]
    ok = raw_healthy(exp, [r for m in (fam, fam + "_er") for g in gate for r in raw_runs(exp, m, **g)])
    e = C.welch(changes[fam + "_er"], changes[fam], alpha)
    o = C.one_sample(changes[fam], 0.0, alpha)
    return e, C.verdict(e, 1, trains=ok), o, C.verdict(o, -1, trains=ok), ok


def same_effect(a, b):
    return all(math.isclose(getattr(a, f), getattr(b, f), rel_tol=1e-9, abs_tol=1e-9)
               for f in ("diff", "low", "high"))


def errorbar_data(ax):
    # [(label, x, y, lower half-lengths, upper half-lengths)] of the error-bar containers, in drawing order
    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            x, y = (np.asarray(v, dtype=float) for v in c.lines[0].get_data())
            segs = c.lines[2][0].get_segments()
            low = np.array([y[i] - min(s[0][1], s[1][1]) for i, s in enumerate(segs)])
            high = np.array([max(s[0][1], s[1][1]) - y[i] for i, s in enumerate(segs)])
            out.append((c.get_label(), x, y, low, high))
    return out


BATCH_SIZES = sorted({r["batch_size"] for r in RAW["batch"]["metrics"]["runs"]})
SMALL_B, LARGE_B = BATCH_SIZES[0], BATCH_SIZES[-1]
EMA_VALUES = sorted({r["labels"]["ema"] for r in RAW["ema"]["metrics"]["runs"]})
"""

CHECKS = {
    "protocol": """
from mvssl_core.ssl_runs import RECIPES, SHARED_OPTIM

# the batch experiment is what the prose says: two batch sizes, one number of steps, the lr rules
assert len(BATCH_SIZES) == 2, BATCH_SIZES
steps = {r["steps"] for r in RAW["batch"]["metrics"]["runs"]}
assert steps == {RAW["batch"]["config"]["scale"]["batch_steps"]}, steps
n_train = RAW["batch"]["metrics"]["random_init"][0]["n_train"]
other = max(r["steps"] for name_ in ("ema", "ablation") for r in RAW[name_]["metrics"]["runs"])
assert other == OTHER_STEPS and steps.pop() > OTHER_STEPS, (other, OTHER_STEPS)  # "more updates than"
for fam in FAMS:
    for m in (fam, fam + "_er"):
        big = {r["config"]["optim"]["lr"] for r in raw_runs("batch", m, batch_size=LARGE_B, regime="both")}
        assert len(big) == 1, (m, big)
        lr = big.pop()
        base = {**SHARED_OPTIM, **RECIPES[fam]["optim"]}["lr"]
        assert math.isclose(lr, base * LARGE_B / 256, rel_tol=1e-9), (m, lr)  # the linear rule: base x batch / 256
        for regime, factor in (("linear", SMALL_B / LARGE_B), ("sqrt", math.sqrt(SMALL_B / LARGE_B))):
            runs = raw_runs("batch", m, batch_size=SMALL_B, regime=regime)
            assert len(runs) == 5, (m, regime, len(runs))
            for r in runs:
                assert r["config"]["optim"]["scale_lr"] is False, r["name"]
                assert math.isclose(r["config"]["optim"]["lr"], lr * factor, rel_tol=1e-9), r["name"]
assert EMA_VALUES == [0.0, 0.99], EMA_VALUES
assert sorted({r["labels"]["er_terms"] for r in RAW["ablation"]["metrics"]["runs"]}) == sorted(TERMS)
assert ABL_FAMS == ABLATION_FAMILIES == FAMS, (ABL_FAMS, ABLATION_FAMILIES)  # every method's ER variant ablated
""",
    "batch_view": """
for metric in ("knn_top1", "linear_top1"):
    for alpha in (0.05, 0.1):
        r = batch_view(metric=metric, alpha=alpha)
        fig = r["figure"]
        assert isinstance(fig, matplotlib.figure.Figure)
        for fam, ax in zip(FAMS, fig.axes[:5]):
            drawn = {lab: (y, lo, hi) for lab, x, y, lo, hi in errorbar_data(ax)}
            for m in (fam, fam + "_er"):
                for regime in ("linear", "sqrt"):
                    cells = [mean_sd(raw_acc(raw_runs("batch", m, **w), metric))
                             for w in ({"batch_size": SMALL_B, "regime": regime},
                                       {"batch_size": LARGE_B, "regime": "both"})]
                    y, lo, hi = drawn[f"{name(m)}, {regime}"]
                    assert np.allclose(y, [c[0] for c in cells], atol=1e-9), (m, regime)
                    assert np.allclose(lo, [c[1] for c in cells], atol=1e-9), (m, regime)
                    assert np.allclose(hi, [c[1] for c in cells], atol=1e-9), (m, regime)
        effects = errorbar_data(fig.axes[5])
        assert len(effects) == 2 * len(FAMS)
        for k, (regime, fam) in enumerate([(g, f) for g in ("linear", "sqrt") for f in FAMS]):
            res = r["results"][regime][FAMS.index(fam)]
            e, v, o, ov, ok = raw_robust("batch", fam, {"batch_size": SMALL_B, "regime": regime},
                                         {"batch_size": LARGE_B, "regime": "both"},
                                         [{"batch_size": SMALL_B, "regime": regime},
                                          {"batch_size": LARGE_B, "regime": "both"}], metric, alpha)
            assert res["family"] == fam and same_effect(res["effect"], e), (regime, fam)
            assert res["verdict"] == v and res["original_degrades"] == ov and res["trains"] == ok, (regime, fam)
            assert same_effect(res["original"], o), (regime, fam)
            _, _, y, lo, hi = effects[k]
            assert np.allclose([y[0], y[0] - lo[0], y[0] + hi[0]], [e.diff, e.low, e.high], atol=1e-9), (regime, fam)
        plt.close(fig)
for bad in (dict(metric="top5"), dict(alpha=0.0), dict(alpha=1.5)):
    try:
        batch_view(**bad)
        raise AssertionError(f"batch_view accepted {bad}")
    except ValueError:
        pass
""",
    "ema_view": """
init = RAW["ema"]["metrics"]["random_init"]
for metric in ("knn_top1", "linear_top1"):
    for alpha in (0.05, 0.01):
        r = ema_view(metric=metric, alpha=alpha)
        axes = r["figure"].axes
        for col, fam in enumerate(("byol", "dino")):
            acc = {lab: (y, lo) for lab, x, y, lo, hi in errorbar_data(axes[col])}
            ent = {lab: (y, lo) for lab, x, y, lo, hi in errorbar_data(axes[3 + col])}
            for m in (fam, fam + "_er"):
                groups = [raw_runs("ema", m, ema=lam) for lam in EMA_VALUES]
                cells = [mean_sd(raw_acc(g, metric)) for g in groups]
                assert np.allclose(acc[name(m)][0], [c[0] for c in cells], atol=1e-9), m
                assert np.allclose(acc[name(m)][1], [c[1] for c in cells], atol=1e-9), m
                margins = [mean_sd([C.health(run, init).entropy_margin for run in g]) for g in groups]
                assert np.allclose(ent[name(m)][0], [c[0] for c in margins], atol=1e-9), m
                assert np.allclose(ent[name(m)][1], [c[1] for c in margins], atol=1e-9), m
        for stress in (0.0,):
            for i, fam in enumerate(("byol", "dino")):
                res = r["results"][f"EMA {stress:g}"][i]
                e, v, o, ov, ok = raw_robust("ema", fam, {"ema": stress}, {"ema": 0.99}, [{"ema": 0.99}],
                                             metric, alpha)
                assert same_effect(res["effect"], e) and res["verdict"] == v, (fam, stress)
                assert res["original_degrades"] == ov and res["trains"] == ok, (fam, stress)
        plt.close(r["figure"])
""",
    "ablation_view": """
init = RAW["ablation"]["metrics"]["random_init"]
for metric in ("knn_top1", "linear_top1"):
    r = ablation_view(metric=metric, alpha=0.05)
    fig = r["figure"]
    for col, fam in enumerate(ABL_FAMS):
        drawn = {lab: y for lab, x, y, lo, hi in errorbar_data(fig.axes[col])}
        bars = [c for c in fig.axes[len(ABL_FAMS) + col].containers if isinstance(c, BarContainer)][0]
        groups = {t: raw_runs("ablation", fam + "_er", er_terms=t) for t in ("both", "entropy", "reconstruction")}
        for i, (t, g) in enumerate(groups.items()):
            assert np.allclose(drawn[t], [np.mean(raw_acc(g, metric))], atol=1e-9), (fam, t)
            margins = [C.health(run, init).entropy_margin for run in g]
            assert math.isclose(bars.patches[i].get_height(), np.mean(margins), abs_tol=1e-9), (fam, t)
            assert r["collapsed"][fam, t] == sum(C.run_collapsed(run) for run in g), (fam, t)
        ok = raw_healthy("ablation", groups["both"])
        needed = C.COLLAPSE_FRACTION * math.log(RAW["ablation"]["config"]["scale"]["batch_size"])
        expect = {f"abl_entropy_keeps_{fam}": (C.one_sample([C.health(x, init).entropy_margin
                                                              for x in groups["entropy"]], needed), 1)}
        if fam == "simclr":
            expect["abl_recon_collapses_simclr"] = (
                C.one_sample([C.health(x, init).entropy_margin for x in groups["reconstruction"]], needed), -1)
        for t in ("entropy", "reconstruction"):
            expect[f"abl_both_vs_{t}_{fam}"] = (C.welch(raw_acc(groups["both"], metric), raw_acc(groups[t], metric)), 1)
        for key, (e, d) in expect.items():
            assert same_effect(r["claims"][key][1], e), key
            assert r["verdicts"][key] == C.verdict(e, d, trains=ok), key
    assert len(r["claims"]) == 1 + 3 * len(ABL_FAMS), sorted(r["claims"])
    plt.close(fig)
""",
    "claims": """
# CLAIMS holds exactly the page's claims, each recomputed here from the raw records (kNN, 95%)
keys = ([f"batch_{g}_{f}" for g in ("linear", "sqrt") for f in FAMS]
        + [f"ema_0_{f}" for f in ("byol", "dino")]
        + ["abl_recon_collapses_simclr"]
        + [f"abl_entropy_keeps_{f}" for f in ABL_FAMS]
        + [f"abl_both_vs_{t}_{f}" for f in ABL_FAMS for t in ("entropy", "reconstruction")])
assert sorted(CLAIMS) == sorted(keys), sorted(set(CLAIMS) ^ set(keys))
for regime in ("linear", "sqrt"):
    for fam in FAMS:
        w = [{"batch_size": SMALL_B, "regime": regime}, {"batch_size": LARGE_B, "regime": "both"}]
        e, v, o, ov, ok = raw_robust("batch", fam, w[0], w[1], w, "knn_top1", 0.05)
        c = CLAIMS[f"batch_{regime}_{fam}"]
        assert c["verdict"] == v and same_effect(c["effect"], e), (regime, fam)
        assert ("cannot show its effect" in c["note"]) == (ov not in (C.REPRODUCED, C.NOT_TESTABLE)), (regime, fam)
        assert (v == C.NOT_TESTABLE) == (not ok)
for s, lam in (("0", 0.0),):
    for fam in ("byol", "dino"):
        e, v, o, ov, ok = raw_robust("ema", fam, {"ema": lam}, {"ema": 0.99}, [{"ema": 0.99}], "knn_top1", 0.05)
        c = CLAIMS[f"ema_{s}_{fam}"]
        assert c["verdict"] == v and same_effect(c["effect"], e), (lam, fam)
        assert ("cannot show its effect" in c["note"]) == (ov not in (C.REPRODUCED, C.NOT_TESTABLE)), (lam, fam)
abl = ablation_view(metric="knn_top1")
plt.close(abl["figure"])
for key in keys[12:]:
    assert CLAIMS[key]["verdict"] == abl["verdicts"][key] and same_effect(CLAIMS[key]["effect"], abl["claims"][key][1])
for key, c in CLAIMS.items():
    assert c["verdict"] in C.VERDICTS, (key, c["verdict"])
# the pooled batch verdicts
for regime in ("linear", "sqrt"):
    assert BATCH_POOLED[regime] == C.pool([CLAIMS[f"batch_{regime}_{f}"]["verdict"] for f in FAMS])
""",
    "health": """
# the health tables: per group, the seeds that train, and every failing run named with its reasons
for exp in ("batch", "ema", "ablation"):
    table, failing = health_summary(exp)
    runs = RAW[exp]["metrics"]["runs"]
    bad = [r for r in runs if not C.health(r, RAW[exp]["metrics"]["random_init"]).trains]
    assert len(failing) == len(bad) == N_FAILING[exp], exp
    for r in bad:
        assert any(line.startswith(f"`{r['name']}`: ") for line in failing), r["name"]
    n_rows = len({(r["method"], tuple(sorted(r["labels"].items()))) for r in runs})
    assert table.count("\\n") == n_rows + 1, exp
""",
    "provenance": """
for name_, record in FILE_RECORDS.items():
    prov = record["provenance"]
    assert prov["command"].startswith("python scripts/experiments/ssl_runs.py"), prov["command"]
    assert "--smoke" not in prov["command"] and record["config"]["scale"]["steps"] is None, \\
        f"{name_}.json is a smoke record"
    assert len({r["seed"] for r in record["metrics"]["runs"]}) == 5, name_
    assert all("resolved" in r["config"] for r in record["metrics"]["runs"]), name_
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
def test_checks(executed, name):
    errors = check_errors(executed, name)
    assert not errors, errors[0]


def _markdown_output(nb: nbformat.NotebookNode, marker: str) -> str:
    """The displayed markdown of the one chapter cell whose source contains ``marker``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source
             and not any(t.startswith("check:") for t in c.metadata.get("tags", []))]
    assert len(cells) == 1, marker
    texts = [o["data"]["text/markdown"] for o in cells[0].outputs if "text/markdown" in o.get("data", {})]
    assert len(texts) == 1, marker
    return texts[0]


def test_summary_matches_sections(executed):
    """The closing summary lists every claim once, with the verdict glued in its section and shown in the
    section's table; the counts in the closing prose add up."""
    glued = glued_values(executed)
    verdicts = {k.removeprefix("v_"): v for k, v in glued.items() if k.startswith("v_")}
    assert len(verdicts) == 28, sorted(verdicts)  # 10 batch + 2 EMA + 16 ablation (1 + 3 per method)
    summary = _markdown_output(executed, "display(Markdown(SUMMARY))")
    listed = re.findall(r"^- (.+?): \*\*(.+?)\*\* \(", summary, flags=re.M)
    assert len(listed) == len(verdicts), listed
    assert sorted(v for _, v in listed) == sorted(verdicts.values())
    # the sections' tables: batch and EMA rows (family, verdict in bold), the ablation table (claim, verdict)
    batch = _markdown_output(executed, 'robustness_table(batch_views')
    for regime in ("linear", "sqrt"):
        for fam, label in (("simclr", "SimCLR"), ("byol", "BYOL"), ("dino", "DINO"), ("swav", "SwAV"),
                           ("deepcluster", "DeepCluster")):
            row = re.search(rf"^\| {regime} \| {label} \|.*$", batch, flags=re.M).group(0)
            assert f"**{verdicts[f'batch_{regime}_{fam}']}**" in row, (regime, fam, row)
            claim = [c for c, v in listed if c.startswith(f"{label}-ER degrades less") and f"({regime} " in c]
            assert [v for c, v in listed if c == claim[0]] == [verdicts[f"batch_{regime}_{fam}"]], claim
    ema = _markdown_output(executed, "robustness_table(ema_views")
    for s, lam in (("0", "0"),):
        for fam, label in (("byol", "BYOL"), ("dino", "DINO")):
            row = re.search(rf"^\| 0.99 → {re.escape(lam)} \| {label} \|.*$", ema, flags=re.M).group(0)
            assert f"**{verdicts[f'ema_{s}_{fam}']}**" in row, (lam, fam, row)
            mine = [v for c, v in listed if c == f"{label}-ER degrades less than {label} from EMA 0.99 to {lam}"]
            assert mine == [verdicts[f"ema_{s}_{fam}"]], (lam, fam, mine)
    abl = _markdown_output(executed, "| claim | measured |")
    for claim, verdict in re.findall(r"^\| (.+?) \| .*\*\*(.+?)\*\* \|$", abl, flags=re.M):
        assert (claim, verdict) in listed, (claim, verdict)
    n = {k: glued[k] for k in ("n_claims", "n_reproduced", "n_not_reproduced", "n_inconclusive", "n_not_testable")}
    assert n["n_claims"] == len(verdicts) == sum(v for k, v in n.items() if k != "n_claims"), n
    assert n["n_reproduced"] == sum(v == "reproduced" for v in verdicts.values())
    assert n["n_not_testable"] == sum(v.startswith("not testable") for v in verdicts.values())


def test_every_glue_reference_resolves(executed):
    """Every {glue:text} / {glue:figure} key of the prose is glued once, and its format applies (what
    `make book` would warn about, checked without Sphinx)."""
    seen, twice = set(), set()
    for cell in executed.cells:
        if any(t.startswith("check:") for t in cell.metadata.get("tags", [])):
            continue
        for o in cell.get("outputs", []):
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                (twice if name in seen else seen).add(name)
    assert not twice, f"glued more than once (a build warning): {sorted(twice)}"
    assert not glue_reference_problems(CHAPTER, executed)


def test_no_batch_steps_left():
    """The fixed-epoch protocol and its companion file are gone from the page."""
    text = CHAPTER.read_text(encoding="utf-8")
    assert "batch_steps.json" not in text and "bsteps" not in text
