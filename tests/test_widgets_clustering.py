"""The widget callback, the health gate and the verdicts of book/clustering.md, driven programmatically.

The chapter runs once in a fresh kernel (jupytext.read + nbclient, as tests/test_book.py), with
check cells appended that call its callback over several settings and re-derive its numbers from the
raw results file. Each check cell is tagged; each test below asserts that its cell ran without an
error. The glued verdicts are read back from the executed notebook and compared with verdicts
recomputed here from ``results/ssl/clustering.json`` (health gate, one-sample intervals, pooling over
K), and the closing summary is parsed and compared with the sections' verdicts.
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
CHAPTER = ROOT / "book" / "clustering.md"
RESULTS = ROOT / "results" / "ssl" / "clustering.json"
METHODS = ("swav", "deepcluster")
TESTS = ("entropy", "rec", "info")

CHECKS = {
    "clustering_view": """
import json
import math
import matplotlib.figure
import numpy as np

raw = json.load(open(RESULTS_FILE))["metrics"]["runs"]  # the file as written, not through the library


def raw_runs(method, K):
    return [r for r in raw if r["family"] == method and r["labels"]["K"] == K]


for method, K, metric in [("swav", KS[0], "discrete_entropy"), ("deepcluster", KS[-1], "discrete_reconstruction"),
                          ("swav", KS[-1], "effective_rank"), ("deepcluster", KS[1], "loss"),
                          ("swav", KS[-1], "entropy"), ("deepcluster", KS[0], "discrete_entropy"),
                          ("swav", KS[1], "loss")]:
    r = clustering_view(method=method, K=K, metric=metric)
    fig = r["figure"]
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes[0].lines) >= len(KS) + len(SEEDS), (method, K, metric)
    plt.close(fig)
    assert set(r["curves"]) == set(KS)
    for k, (steps, mean, sd) in r["curves"].items():
        assert len(steps) == len(mean) == len(sd) > 0
        assert np.all(np.isfinite(mean)) and np.all(np.isfinite(sd)) and np.all(sd >= 0), (method, k, metric)
        rows = np.array([[np.nan if v is None else v for v in run["history"][metric]]
                         for run in raw_runs(method, k)], dtype=float)
        assert np.allclose(mean, rows.mean(axis=0), rtol=0, atol=1e-9), (method, k, metric)
        assert np.allclose(sd, rows.std(axis=0, ddof=1), rtol=0, atol=1e-9), (method, k, metric)
        if metric == "discrete_entropy":
            assert np.all(mean <= math.log(k) + 1e-4) and np.all(mean >= -1e-6)
    assert set(r["seeds"]) == set(SEEDS)
    for run in raw_runs(method, K):
        assert np.allclose(r["seeds"][run["seed"]], np.array(run["history"][metric], dtype=float))
    expected = {"discrete_entropy": math.log(K), "discrete_reconstruction": -math.log(K),
                "loss": math.log(K)}.get(metric)
    assert r["reference"] == expected, (metric, r["reference"])
for bad in [dict(method="dino"), dict(K=7), dict(metric="accuracy")]:
    try:
        clustering_view(**bad)
    except ValueError:
        pass
    else:
        raise AssertionError(f"clustering_view accepted {bad}")
""",
    # The runs are the ones the page describes: the recipe of the review's fixes, read from config.resolved.
    "static_numbers": """
import math
import numpy as np

assert KS == [8, 64, 256, 512] and len(SEEDS) == 5 and len(RUNS) == 40, (KS, SEEDS, len(RUNS))
assert record["config"]["scale"]["steps"] is None  # a full run, not the smoke one
assert BATCH == 128 and EPOCHS == 30 and STEPS == 330
for run in RUNS:
    K, res = run["labels"]["K"], run["config"]["resolved"]
    assert res["n_prototypes"] == K, run["name"]
    if run["family"] == "swav":
        assert res["queue_length"] == max(4 * BATCH, K) and BATCH + res["queue_length"] >= K, run["name"]
        assert abs(res["freeze_prototypes"] - 1 / EPOCHS) < 1e-9, run["name"]  # the first epoch
        assert run["config"]["optim"]["lr"] == 0.01, run["name"]
    else:
        assert res["freeze_prototypes"] is True and res["prefill"] is True, run["name"]
    h = np.array(run["history"]["discrete_entropy"], dtype=float)
    rec = np.array(run["history"]["discrete_reconstruction"], dtype=float)
    assert np.all(h <= math.log(K) + 1e-4) and np.all(h >= -1e-6), run["name"]  # plug-in: 0 <= H <= log K
    assert np.all(rec <= 1e-6), run["name"]  # sum_c w log w' <= 0
# DeepCluster's bank is filled before the first step: its loss is not 0 in the first epoch
for run in RUNS:
    if run["family"] == "deepcluster":
        assert run["history"]["loss"][0] > 0.1, run["name"]
# the page's claims: every key glued, every verdict a claims.VERDICTS value or a pool of them
assert set(CLAIMS) == {f"{m}_{t}{s}" for m in METHODS for t in TESTS for s in ["", *(f"_K{K}" for K in KS)]}
for key, c in CLAIMS.items():
    assert c["verdict"] in claims.VERDICTS or c["verdict"].startswith("mixed: "), (key, c["verdict"])
""",
    # The prose states these readings of the data; keep them true.
    "prose_claims": """
import math

# the queue comes into use where the warm-up ends: the prose says the two cannot be told apart
assert abs(QUEUE_START - optim("swav", "warmup_epochs") / EPOCHS) < 1e-9
# the dotted line: the first logged step whose Sinkhorn codes used the queue
assert QUEUE_STEP == math.ceil(STEPS / 3) + 4 + 1
# the sweep section gives no verdict: SWEEP holds effects only
assert all(isinstance(e, claims.Effect) for e in SWEEP.values())
""",
    # The summary is built from CLAIMS: each line names the pooled verdict and the per-K verdicts of its claim.
    "summary_from_claims": """
lines = SUMMARY.splitlines()
assert len(lines) == len(SUMMARY_KEYS) == len(METHODS) * len(TESTS)
for line, key in zip(lines, SUMMARY_KEYS):
    assert line.startswith(f"- {CLAIMS[key]['claim']}: **{CLAIMS[key]['verdict']}** ("), (line, key)
    for K in KS:
        assert f"K = {K}: *{CLAIMS[f'{key}_K{K}']['verdict']}*" in line, (line, K)
""",
}

# ------------------------------------------------------------------------------------------------
# An independent recomputation from the raw file: the page's stated criteria, the library's statistics


def _raw() -> dict:
    return json.loads(RESULTS.read_text())


def _runs(record: dict, method: str, K: int) -> list[dict]:
    return [r for r in record["metrics"]["runs"] if r["family"] == method and r["labels"]["K"] == K]


def _end(run: dict, metric: str, tail: int = 5) -> float:
    values = [v for v in run["history"][metric] if v is not None and math.isfinite(v)]
    return float(np.mean(values[-tail:]))


def _values(run: dict, test: str) -> float:
    if test == "entropy":
        return _end(run, "discrete_entropy")
    if test == "rec":
        return _end(run, "discrete_reconstruction") - run["history"]["discrete_reconstruction"][0]
    return _end(run, "discrete_entropy") + _end(run, "discrete_reconstruction")


def _expected(record: dict) -> dict[str, tuple[str, claims.Effect | None]]:
    """key -> (verdict, effect) for every per-K and pooled claim of the page."""
    ks = sorted({r["labels"]["K"] for r in record["metrics"]["runs"]})
    out = {}
    for method in METHODS:
        for test in TESTS:
            for K in ks:
                runs = _runs(record, method, K)
                ok = all(claims.health(r, record["metrics"]["random_init"]).trains for r in runs)
                mu = 0.9 * math.log(K) if test == "entropy" else 0.0
                effect = claims.one_sample([_values(r, test) for r in runs], mu)
                out[f"{method}_{test}_K{K}"] = (claims.verdict(effect, +1, trains=ok), effect)
            out[f"{method}_{test}"] = (claims.pool([out[f"{method}_{test}_K{K}"][0] for K in ks]), None)
    return out


@pytest.fixture(scope="module")
def executed() -> nbformat.NotebookNode:
    return run_checks(CHAPTER, CHECKS)


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


def test_verdicts_recomputed_from_raw(executed):
    glued = glued_values(executed)
    expected = _expected(_raw())
    assert {k[2:] for k in glued if k.startswith("v_")} == set(expected)
    for key, (verdict, _) in expected.items():
        assert glued[f"v_{key}"] == verdict, (key, glued[f"v_{key}"], verdict)


def test_no_claim_is_judged_where_a_seed_did_not_train(executed):
    record = _raw()
    glued = glued_values(executed)
    for run in record["metrics"]["runs"]:
        if not claims.health(run, record["metrics"]["random_init"]).trains:
            for test in TESTS:
                key = f"v_{run['family']}_{test}_K{run['labels']['K']}"
                assert glued[key] == claims.NOT_TESTABLE, (run["name"], key)


def _markdown_outputs(nb: nbformat.NotebookNode, marker: str) -> list[str]:
    """The markdown outputs of the chapter's code cells whose source contains ``marker``."""
    return [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" and marker in c.source
            for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]


def test_summary_equals_the_sections(executed):
    glued = glued_values(executed)
    (summary,) = _markdown_outputs(executed, "SUMMARY = ")
    keys = glued["summary_keys"]
    lines = summary.splitlines()
    assert len(lines) == len(keys) == len(METHODS) * len(TESTS)
    ks = sorted({r["labels"]["K"] for r in _raw()["metrics"]["runs"]})
    for line, key in zip(lines, keys):
        pooled = re.search(r": \*\*(.+?)\*\* \(", line)
        assert pooled and pooled.group(1) == glued[f"v_{key}"], (line, key)
        per_k = dict(re.findall(r"K = (\d+): \*(.+?)\*", line))
        assert {int(k) for k in per_k} == set(ks), line
        for K, verdict in per_k.items():
            assert verdict == glued[f"v_{key}_K{K}"], (line, K)


def test_tables_show_effects_with_their_intervals(executed):
    """Each claim table shows the one-sample effect and 95% interval recomputed from the raw file."""
    record, glued = _raw(), glued_values(executed)
    expected = _expected(record)
    tables = "\n".join(_markdown_outputs(executed, "claim_table("))
    names = {"swav": "SwAV", "deepcluster": "DeepCluster"}
    for key, (verdict, effect) in expected.items():
        if effect is None:
            continue
        method, K = key.split("_")[0], int(key.rsplit("_K", 1)[1])
        row = f"| {names[method]} | {K} | "
        cells = f"| {effect.diff:+.3f} | [{effect.low:+.3f}, {effect.high:+.3f}] | {verdict} |"
        assert any(line.startswith(row) and line.endswith(cells) for line in tables.splitlines()), (key, cells)
    assert glued["entropy_fraction"] == 0.9


def test_health_table_compares_swav_loss_with_log_k(executed):
    record = _raw()
    (summary,) = _markdown_outputs(executed, "FAILING = ")
    healths = [claims.health(r, record["metrics"]["random_init"]) for r in record["metrics"]["runs"]]
    for h in healths:
        if not h.trains:
            assert f"`{h.name}`: {'; '.join(h.failures)}" in summary, h.name
    if all(h.trains for h in healths):
        assert "- none" in summary
    for K in sorted({r["labels"]["K"] for r in record["metrics"]["runs"]}):
        assert re.search(rf"\| SwAV \| {K} \| \d+ of \d+ \| [-\d.]+ ± [\d.]+ \| {math.log(K):.3f} \|", summary), K
    (per_run,) = _markdown_outputs(executed, "claims.health_markdown(")
    assert per_run.count("| swav/") + per_run.count("| deepcluster/") == len(healths)


def test_page_reads_resolved_settings_not_signatures():
    text = CHAPTER.read_text()
    assert "inspect" not in text and "signature" not in text
    assert "claims.load_or_explain" in text and "claims.provenance_line" in text


def test_page_has_a_slider_and_static_figures(executed):
    sources = "\n".join(c.source for c in executed.cells if c.cell_type == "code")
    assert "live_or_frames(clustering_view" in sources.replace("\n", "").replace(" ", "")
    glued = glued_values(executed)
    assert "fig_clustering_curves" in glued and "fig_clustering_vs_k" in glued
