"""The widget callbacks of book/ceiling.md, driven programmatically.

The chapter runs once in a fresh kernel (jupytext.read + nbclient, as tests/test_book.py), with
check cells appended that call its callbacks over a few slider values. Each check cell is tagged;
each test below asserts that its cell ran without an error. The checks: a figure is produced, the
plotted numbers are finite, and no estimate with a log k ceiling rises above it. (The update time
of the widgets is measured by a script, not asserted here.)
"""

from __future__ import annotations

from pathlib import Path

from _chapters import chapter_errors, check_errors, run_checks
import nbformat
import pytest

CHAPTER = Path(__file__).resolve().parents[1] / "book" / "ceiling.md"

CHECKS = {
    "infonce_view": """
import matplotlib.figure
import numpy as np

for mi, k, d in [(10.0, 128, 20), (2.0, 16, 5), (20.0, 512, 20), (0.0, 4, 2)]:
    r = infonce_view(mi=mi, k=k, d=d)
    assert isinstance(r["figure"], matplotlib.figure.Figure)
    plt.close(r["figure"])
    for key in ("infonce_vs_mi", "infonce_vs_k"):
        assert np.all(np.isfinite(r[key])), (key, r[key])
    # InfoNCE <= log k for every critic: at the chosen k, and at every k of the sweep.
    assert np.all(r["infonce_vs_mi"] <= np.log(k) + 1e-9), r["infonce_vs_mi"]
    assert np.all(r["infonce_vs_k"] <= np.log(r["k_grid"]) + 1e-9), r["infonce_vs_k"]
    assert r["infonce_at"] <= np.log(k) + 1e-9
    # with the optimal critic and a true MI far below log k, the bound is close to the truth
    if np.log(r["k_grid"][-1]) - mi > 5:
        assert abs(r["infonce_vs_k"][-1] - mi) < 0.2, (mi, r["infonce_vs_k"][-1])
""",
    "entropy_view": """
import matplotlib.figure
import numpy as np
from mvssl_core.special import uniform_sphere_entropy

for k, d, kappa in [(64, 8, 10.0), (16, 3, 1.0), (1024, 64, 50.0), (256, 4, 20.0)]:
    r = entropy_view(k=k, d=d, kappa=kappa)
    assert isinstance(r["figure"], matplotlib.figure.Figure)
    plt.close(r["figure"])
    for key in ("true_entropy", "joe", "plugin", "loo"):
        assert np.all(np.isfinite(r[key])), (key, r[key])
    assert np.isfinite(r["ceiling"])
    assert r["kappa_sources"][0] == 0.0
    assert abs(r["true_entropy"][0] - uniform_sphere_entropy(d)) < 1e-12
    # the self-term estimates never exceed log k - log C_d(kappa) - kappa; plug-in <= Joe
    assert np.all(r["joe"] <= r["ceiling"] + 1e-9), (r["joe"], r["ceiling"])
    assert np.all(r["plugin"] <= r["joe"] + 1e-9), (r["plugin"], r["joe"])
""",
    "static_numbers": """
import math
import numpy as np

assert nce["infonce_at"] <= nce["log_k"] + 1e-9
assert er.bound.item() <= math.log(K_ER) + 1e-9
assert er.entropy.item() <= joe_ceiling(K_ER, D_ER, 10.0) + 1e-9
for (label, k, loo), (bias, sd) in bias_sd.items():
    assert np.all(np.isfinite(bias)) and np.all(np.isfinite(sd)) and np.all(sd >= 0), (label, k, loo)
    if not loo:  # Joe with the self term stays under its ceiling at every kappa
        h_true = source_entropy(D_BV, SOURCES[label])
        ceilings = np.array([joe_ceiling(k, D_BV, float(kp)) for kp in KAPPAS_BV])
        assert np.all(bias + h_true <= ceilings + 1e-9), (label, k)
assert np.all(np.isfinite(np.concatenate(list(needed.values()))))
""",
    # The prose states these readings of the computed numbers; keep them true.
    "prose_claims": """
import math
import numpy as np

# the default entropy figure: the ceiling binds below the uniform entropy; the most
# concentrated source is overestimated by both estimators
assert ent["ceiling"] < ent["true_entropy"][0]
assert ent["joe"][0] <= ent["ceiling"] and ent["plugin"][0] <= ent["ceiling"]
assert ent["loo"][0] > ent["ceiling"]
assert ent["joe"][-1] > ent["true_entropy"][-1] + 1 and ent["loo"][-1] > ent["true_entropy"][-1] + 1
# ER estimate just under log k
assert 0 < math.log(K_ER) - er.bound.item() < 0.1
# batch sizes: at d = 128, kappa = 10 a uniform batch needs more than 4096 samples
assert needed[10.0][DIMS.index(128)] > math.log(4096)
# bias-variance: LOO nearly unbiased at small kappa on the uniform source; on the vMF
# source both estimators overestimate at small kappa, and the best kappa grows with k
uniform, vmf = list(SOURCES)
assert abs(bias_sd[(uniform, 64, True)][0][0]) < 0.05
for loo in (False, True):
    assert bias_sd[(vmf, 1024, loo)][0][0] > 1.0
    best = [KAPPAS_BV[int(np.argmin(b**2 + s**2))] for b, s in
            (bias_sd[(vmf, k, loo)] for k in SIZES_BV)]
    assert all(x <= y for x, y in zip(best, best[1:])), (loo, best)
# LOO on the vMF source: the least-error bias shrinks with k
loo_best = []
for k in SIZES_BV:
    b, s = bias_sd[(vmf, k, True)]
    loo_best.append(b[int(np.argmin(b**2 + s**2))])
assert all(x > y for x, y in zip(loo_best, loo_best[1:])), loo_best
all_b = np.concatenate([b for b, _ in bias_sd.values()])
all_s = np.concatenate([s for _, s in bias_sd.values()])
assert np.mean(all_s < np.abs(all_b)) > 0.5
""",
}


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
