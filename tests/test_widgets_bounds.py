"""The widget and the numbers of book/bounds.md, driven programmatically.

The chapter is executed in a fresh kernel (as tests/test_book.py does), then cells appended here
call its widget callback `mi_bounds_view(k, d)` over several values and check what it returns, and
check the identities the chapter's prose states (InfoNCE <= log k; ER bound + KL gap = MI;
Gaussian-kernel ER = -(t A + U) + J with J >= 0). A failing assert fails the appended cell, and
nbclient reports it with the cell's source.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
from _chapters import execute
import nbformat

CHAPTER = Path(__file__).resolve().parents[1] / "book" / "bounds.md"

WIDGET_CHECKS = """
import math
import matplotlib.figure

for k, d in [(16, 20), (64, 5), (K, D), (256, 1)]:
    out = mi_bounds_view(k, d)
    fig = out["figure"]
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2, (k, d)
    assert fig.axes[0].lines and fig.axes[1].lines, "no curves drawn"
    plt.close(fig)
    assert out["log_k"] == math.log(k)
    assert list(out["mi"]) == [float(m) for m in MIS]
    for key in ("infonce_mean", "infonce_sd", "nwj_mean", "nwj_sd"):
        assert out[key].shape == (len(MIS),) and np.isfinite(out[key]).all(), (key, k, d)
        assert (out[key.replace("mean", "sd")] >= 0).all()
    # the ceiling: no batch's InfoNCE exceeds log k, so neither does the mean
    assert (out["infonce_mean"] <= math.log(k) + 1e-9).all(), (k, d, out["infonce_mean"])
    # InfoNCE is a lower bound on average (optimal critic): below the true MI up to noise
    se = out["infonce_sd"] / math.sqrt(N_SEEDS)
    assert (out["infonce_mean"] <= out["mi"] + 5 * se + 1e-3).all(), (k, d)
    # NWJ with its optimal critic is unbiased: centred on the true MI at 2 nats
    se = out["nwj_sd"][0] / math.sqrt(N_SEEDS)
    assert abs(out["nwj_mean"][0] - out["mi"][0]) < 5 * se + 0.05, (k, d, out["nwj_mean"][0])
"""

IDENTITY_CHECKS = """
# ER bound step by step: the bound never exceeds the MI by more than Monte Carlo noise, it is
# largest at the true correlation, and bound + gap is the same number for every model.
assert np.all(er_curve <= MI_TRUE + 0.1)
assert abs(RHO_MODEL[np.argmax(er_curve)] - RHO) <= RHO_MODEL[1] - RHO_MODEL[0]
assert np.ptp(er_curve + gap) < 1e-9
assert abs((er_curve + gap)[0] - MI_TRUE) < 0.1
assert np.all(gap[np.abs(RHO_MODEL - RHO) > 0.05] > 0)

# Alignment and uniformity: reconstruction = -c_h - t A exactly, entropy = c_h - U + J, J >= 0.
for name, row in rows.items():
    assert abs(row["recon"] - row["minus_ta"]) < 1e-10, name
    assert row["jensen"] >= -1e-10, name
    assert abs(row["bound"] - (row["minus_loss"] + row["jensen"])) < 1e-10, name
assert rows["unequal clusters"]["jensen"] > 10 * rows["uniform"]["jensen"]
assert np.all(trace["jensen"] >= -1e-10)
assert np.max(np.abs(trace["recon"] - trace["minus_ta"])) < 1e-10
assert trace["jensen"][-1] < 0.1 * trace["jensen"][0]
assert trace["bound"][-1] > trace["bound"][0]
"""


def test_bounds_chapter_widget_and_identities():
    nb = jupytext.read(CHAPTER)
    nb.cells.append(nbformat.v4.new_code_cell(WIDGET_CHECKS))
    nb.cells.append(nbformat.v4.new_code_cell(IDENTITY_CHECKS))
    execute(nb, CHAPTER.parent)  # raises CellExecutionError, with the failing assert, on the first failure
