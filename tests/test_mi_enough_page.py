"""book/mi_enough.md: the "is maximising MI enough?" page, run on the stored results file.

The chapter runs once in a fresh kernel (jupytext.read + nbclient, cwd book/, as tests/test_book.py)
on results/mi_not_enough.json, with check cells appended. The checks recompute from the raw record,
with plain json + numpy and independently of the page's helpers: the plotted curves (mean and sd
over seeds, and the data of every plotted line and scatter point), the numbers glued into the
prose, the effects behind a sample of verdicts, and each verdict from the criterion the page states.
They also check that every InfoNCE value in the record is at most log k, that every glue key the
prose uses exists, that the figures exist, and that the flow checks of the page pass.
"""

from __future__ import annotations

import ast
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from _chapters import (chapter_errors, check_cell, check_errors, eval_role_problems, glued_bundles, prose_keys,
                       run_checks)

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "mi_enough.md"
RESULTS = ROOT / "results" / "mi_not_enough.json"

pytestmark = pytest.mark.skipif(not RESULTS.is_file(), reason="results/mi_not_enough.json not produced")

CHECKS = {
    "flows": """
assert roundtrip32 < 1e-4, roundtrip32
assert roundtrip64 < 1e-10, roundtrip64
assert logdet_error < 1e-9, logdet_error
assert moved > 1.0, moved  # the checked flow is far from the identity
""",
    "plotted_curves": """
import json
import warnings
import matplotlib.collections
import numpy as np

raw_record = json.loads(RESULTS_FILE.read_text())


def recomputed(objective, metric):
    runs = [r for r in raw_record["metrics"]["runs"] if r["objective"] == objective]
    a = np.array([[np.nan if v is None else v for v in r["curve"][metric]] for r in runs], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (head_ce at step 0)
        mean = np.nanmean(a, axis=0)
        sd = np.nanstd(a, axis=0, ddof=1) if len(runs) > 1 else np.where(np.isfinite(mean), 0.0, np.nan)
    return np.array(runs[0]["curve"]["step"]), mean, sd


expected_keys = {(o, m) for o in ("infonce/bilinear", "infonce/mlp") for m in ("infonce_train", "infonce_test")}
expected_keys |= {(o, "probe_test_top1") for o in ("infonce/bilinear", "infonce/mlp", "supervised",
                                                   "adversarial/bilinear")}
expected_keys |= {("adversarial/bilinear", m) for m in ("infonce_train", "infonce_test", "head_ce")}
assert set(PLOTTED) == expected_keys, set(PLOTTED) ^ expected_keys
assert not any(o == "supervised" and m.startswith("infonce") for o, m in PLOTTED)  # never plotted as an MI estimate
for (objective, metric), (steps, mean, sd) in PLOTTED.items():
    s, m, d = recomputed(objective, metric)
    np.testing.assert_array_equal(steps, s)
    np.testing.assert_allclose(mean, m, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=f"{objective} {metric}")
    np.testing.assert_allclose(sd, d, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"{objective} {metric} sd")

# every curve drawn in the two line figures is one of these means (accuracies in %)
candidates = []
for steps, mean, _ in PLOTTED.values():
    ok = np.isfinite(mean)
    candidates += [(steps[ok], mean[ok]), (steps[ok], 100 * mean[ok])]
n_lines = 0
for fig in (fig_curves, fig_adv):
    for ax in fig.axes:
        for line in ax.get_lines():
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            if len(x) <= 2:  # axhline / axvline references
                continue
            n_lines += 1
            assert any(len(x) == len(cx) and np.allclose(x, cx) and np.allclose(y, cy, rtol=1e-12, atol=1e-12)
                       for cx, cy in candidates), (ax.get_title(), line.get_label())
assert n_lines == 7 + 7, n_lines  # 4 estimates + 3 probes; 4 estimates + 2 probes + 1 CE

# the scatter points are the raw evaluations after step 0
for ax, metric in zip(fig_scatter.axes, ("infonce_train", "infonce_test")):
    points = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
    assert len(points) == 3
    for coll, objective in zip(points, ("infonce/bilinear", "infonce/mlp", "adversarial/bilinear")):
        runs = [r for r in raw_record["metrics"]["runs"] if r["objective"] == objective]
        want = np.array([(x, 100 * y) for r in runs
                         for x, y in zip(r["curve"][metric][1:], r["curve"]["probe_test_top1"][1:])])
        np.testing.assert_allclose(coll.get_offsets(), want, rtol=1e-12, atol=1e-12)
""",
    "verdicts": """
import math
import numpy as np
from scipy.stats import spearmanr

assert set(VERDICTS) == {"reproduced", "not reproduced", "inconclusive"}
assert CLAIMS
# the stated criterion, written out again: Z standard errors and the unit's floor
floors = {"nats": 0.1, "points": 100.0 / N_TEST, "": 0.1}
for key, c in CLAIMS.items():
    assert c["verdict"] in VERDICTS, (key, c["verdict"])
    margin = max(2.0 * c["se"], floors[c["unit"]])
    if abs(c["effect"]) <= margin:
        want = "inconclusive"
    elif c["sign"] == 0 or (c["effect"] > 0) == (c["sign"] > 0):
        want = "reproduced"
    else:
        want = "not reproduced"
    assert c["verdict"] == want, (key, c)

# a sample of effects, recomputed from the raw record (mean, standard error over seeds)
runs = lambda o: [r for r in record["metrics"]["runs"] if r["objective"] == o]  # noqa: E731
end = lambda o, m: np.array([r["curve"][m][-1] for r in runs(o)], float)  # noqa: E731
start = lambda o, m: np.array([r["curve"][m][0] for r in runs(o)], float)  # noqa: E731
raw = record["metrics"]["raw_pixels"]["probe_test_top1"]


def paired(v):
    v = np.asarray(v, float)
    return v.mean(), (v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0)


def between(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va = a.var(ddof=1) / len(a) if len(a) > 1 else 0.0
    vb = b.var(ddof=1) / len(b) if len(b) > 1 else 0.0
    return a.mean() - b.mean(), math.sqrt(va + vb)


B, M, A, S = "infonce/bilinear", "infonce/mlp", "adversarial/bilinear", "supervised"
peak_probe = lambda o: [r["curve"]["probe_test_top1"][int(np.argmax(r["curve"]["infonce_test"]))]  # noqa: E731
                        for r in runs(o)]
rho = lambda o, m: [spearmanr(r["curve"][m][1:], r["curve"]["probe_test_top1"][1:])[0]  # noqa: E731
                    for r in runs(o)]
expected = {
    "est_up_bil": paired(end(B, "infonce_test") - start(B, "infonce_test")),
    "est_falls_mlp": paired(end(M, "infonce_test") - np.array([max(r["curve"]["infonce_test"]) for r in runs(M)])),
    "gap_bil": paired(end(B, "infonce_train") - end(B, "infonce_test")),
    "peak_up_bil": paired(100 * (np.array(peak_probe(B)) - raw)),
    "end_up_mlp": paired(100 * (end(M, "probe_test_top1") - raw)),
    "sup_up": paired(100 * (end(S, "probe_test_top1") - raw)),
    "adv_est_up": paired(end(A, "infonce_train") - start(A, "infonce_train")),
    "adv_below_raw": paired(100 * (end(A, "probe_test_top1") - raw)),
    "adv_train_higher": between(end(A, "infonce_train"), end(B, "infonce_train")),
    "adv_test_higher": between(end(A, "infonce_test"), end(B, "infonce_test")),
    "rho_train_adv": paired(rho(A, "infonce_train")),
    "rho_test_bil": paired(rho(B, "infonce_test")),
    "critic_est": between(end(M, "infonce_test"), end(B, "infonce_test")),
    "critic_acc": between(100 * end(M, "probe_test_top1"), 100 * end(B, "probe_test_top1")),
}
for key, (mean, se) in expected.items():
    assert abs(CLAIMS[key]["effect"] - mean) < 1e-9, (key, CLAIMS[key]["effect"], mean)
    assert abs(CLAIMS[key]["se"] - se) < 1e-9, (key, CLAIMS[key]["se"], se)

# the sentences that interpret verdicts follow them
assert (STORIES["s_adv_start"].startswith("bore out")
        == (CLAIMS["adv_est_up"]["verdict"] == CLAIMS["adv_below_raw"]["verdict"] == "reproduced"))
assert STORIES["s_adv_rho"].startswith("the higher") == (CLAIMS["rho_train_adv"]["verdict"] == "reproduced")
""",
    "export": """
import json
print("CHECK-EXPORT " + json.dumps({"claims": CLAIMS, "glued": GLUED, "log_k": LOG_K}))
""",
}


@pytest.fixture(scope="module")
def executed():
    saved = os.environ.pop("MVSSL_MI_RESULTS", None)  # the page must read the repository's file
    try:
        t0 = time.perf_counter()
        nb = run_checks(CHAPTER, CHECKS)
        seconds = time.perf_counter() - t0
    finally:
        if saved is not None:
            os.environ["MVSSL_MI_RESULTS"] = saved
    return nb, seconds


def _export(nb) -> dict:
    text = "".join(o.get("text", "") for o in check_cell(nb, "export").get("outputs", [])
                   if o.get("output_type") == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith("CHECK-EXPORT "))
    return json.loads(line.removeprefix("CHECK-EXPORT "))


def _value(bundle: dict):
    return ast.literal_eval(bundle["text/plain"])


def _record() -> dict:
    return json.loads(RESULTS.read_text())


def test_chapter_cells_run(executed):
    nb, seconds = executed
    errors = chapter_errors(nb)
    assert not errors, f"chapter cells failed: {errors}"
    assert seconds < 60, f"the page took {seconds:.0f} s to run (budget: 60 s)"


@pytest.mark.parametrize("name", [n for n in CHECKS if n != "export"])
def test_checks(executed, name):
    errors = check_errors(executed[0], name)
    assert not errors, errors[0]


def test_every_infonce_value_at_most_log_k():
    record = _record()
    log_k = record["metrics"]["log_k"]
    assert log_k == pytest.approx(math.log(record["config"]["batch_size"]), abs=1e-12)
    values = [v for run in record["metrics"]["runs"] for key in ("infonce_train", "infonce_test")
              for v in run["curve"][key]]
    assert values and all(v is not None and math.isfinite(v) for v in values)
    assert max(values) <= log_k + 1e-9, (max(values), log_k)


def test_step_zero_is_the_raw_pixel_probe():
    record = _record()
    raw = record["metrics"]["raw_pixels"]["probe_test_top1"]
    for run in record["metrics"]["runs"]:
        assert run["curve"]["step"][0] == 0
        assert run["curve"]["probe_test_top1"][0] == pytest.approx(raw, abs=1e-12), run["name"]


def test_glued_numbers_match_the_record(executed):
    """The numbers of the prose, recomputed here from the raw record (means and sds over seeds)."""
    nb, _ = executed
    glued = glued_bundles(nb)
    record = _record()
    runs = lambda o: [r for r in record["metrics"]["runs"] if r["objective"] == o]  # noqa: E731
    col = lambda o, m, i=-1: np.array([r["curve"][m][i] for r in runs(o)], float)  # noqa: E731
    sd = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
    raw = record["metrics"]["raw_pixels"]["probe_test_top1"]
    want: dict[str, float] = {"raw_pct": 100 * raw, "log_k": record["metrics"]["log_k"]}
    for objective, tag in (("infonce/bilinear", "bil"), ("infonce/mlp", "mlp")):
        for metric, short in (("infonce_test", "test"), ("infonce_train", "train")):
            want[f"{tag}_{short}_start"] = col(objective, metric, 0).mean()
            want[f"{tag}_{short}_end"] = col(objective, metric).mean()
            want[f"{tag}_{short}_end_sd"] = sd(col(objective, metric))
        mean_curve = np.mean([r["curve"]["infonce_test"] for r in runs(objective)], axis=0)
        want[f"{tag}_test_peak"] = mean_curve.max()
        want[f"{tag}_test_peak_step"] = runs(objective)[0]["curve"]["step"][int(np.argmax(mean_curve))]
        acc = col(objective, "probe_test_top1")
        want[f"{tag}_acc_end"], want[f"{tag}_acc_end_sd"] = 100 * acc.mean(), 100 * sd(acc)
        at_peak = np.array([r["curve"]["probe_test_top1"][int(np.argmax(r["curve"]["infonce_test"]))]
                            for r in runs(objective)])
        want[f"{tag}_acc_peak"], want[f"{tag}_acc_peak_sd"] = 100 * at_peak.mean(), 100 * sd(at_peak)
    adv = "adversarial/bilinear"
    for metric, short in (("infonce_train", "train"), ("infonce_test", "test")):
        want[f"adv_{short}_start"] = col(adv, metric, 0).mean()
        want[f"adv_{short}_end"] = col(adv, metric).mean()
        want[f"adv_{short}_end_sd"] = sd(col(adv, metric))
    acc = col(adv, "probe_test_top1")
    want["adv_acc_end"], want["adv_acc_end_sd"] = 100 * acc.mean(), 100 * sd(acc)
    want["adv_ce_end"] = col(adv, "head_ce").mean()
    sup = col("supervised", "probe_test_top1")
    want["sup_acc_end"], want["sup_acc_end_sd"] = 100 * sup.mean(), 100 * sd(sup)
    want["max_estimate"] = max(v for r in record["metrics"]["runs"] if r["objective"] != "supervised"
                               for m in ("infonce_train", "infonce_test") for v in r["curve"][m])
    for objective, tag in (("infonce/bilinear", "bil"), ("infonce/mlp", "mlp"), (adv, "adv"),
                           ("supervised", "sup")):
        want[f"{tag}_logdet_end"] = col(objective, "log_det").mean()
    want["n_seeds"] = len(record["config"]["seeds"])
    want["n_test"] = record["metrics"]["n_test"]

    for name, value in want.items():
        assert name in glued, name
        assert float(_value(glued[name])) == pytest.approx(float(value), rel=1e-9, abs=1e-12), name
    # every number the page glued through put() was recomputed above, or is a claim's effect
    exported = _export(nb)
    unchecked = {k for k in exported["glued"] if k not in want and not k.startswith(("e_", "se_"))}
    assert not unchecked, unchecked
    for key, c in exported["claims"].items():
        assert float(_value(glued[f"e_{key}"])) == pytest.approx(c["effect"], abs=1e-12)
        assert _value(glued[f"v_{key}"]) == c["verdict"]


def test_every_glue_key_of_the_prose_exists(executed):
    nb, _ = executed
    glued = glued_bundles(nb)
    text = CHAPTER.read_text()
    keys = prose_keys(text)
    assert len(keys) > 100  # the {eval} roles were found, not silently none
    missing = sorted(keys - set(glued))
    assert not missing, missing
    assert eval_role_problems(nb) == []  # each key glued above the prose that shows it (inline mode)
    for name in ("fig_mi_curves", "fig_mi_adversarial", "fig_mi_scatter"):
        assert "image/png" in glued[name], name
