"""The tightness chapter's widget callback, driven programmatically.

The chapter (book/tightness.md) is executed in a fresh kernel with extra cells appended that call
``tightness_view`` over a few settings and check what it plotted: a figure, finite values,
InfoNCE under log k on every batch, and the exact-entropy ER close to the truth. The callback's
speed (< 0.5 s at the default setting) is measured by the chapter itself, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
from _chapters import execute
import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "tightness.md"

CHECKS = r'''
import math
import matplotlib
import numpy as np

settings = [dict(), dict(mi=2.0, k=32), dict(mi=10.0, d=5, k=256, bandwidth=0.5),
            dict(mi=0.5, d=2, k=16, bandwidth=3.0)]
for kw in settings:
    out = tightness_view(n_batches=12, **kw)
    assert isinstance(out["figure"], matplotlib.figure.Figure)
    assert out["figure"].axes and out["figure"].axes[0].lines, kw
    plt.close(out["figure"])
    k = kw.get("k", K)
    assert math.isclose(out["log_k"], math.log(k))
    for name, vals in out["values"].items():
        assert vals.shape == (12,) and np.isfinite(vals).all(), (kw, name)
        assert math.isfinite(out["mean"][name]) and out["sd"][name] >= 0, (kw, name)
    # InfoNCE never exceeds log k, on any batch
    assert (out["values"]["InfoNCE"] <= out["log_k"] + 1e-9).all(), kw
    # the ER estimate with the exact entropy and the true q is unbiased: mean within 5 standard errors
    se = out["sd"]["ER, exact entropy"] / math.sqrt(12)
    assert abs(out["mean"]["ER, exact entropy"] - out["true_mi"]) < 5 * se + 1e-6, kw
    assert out["seconds"] >= 0

# the default view is the one glued into the page
d = tightness_view()
assert d["true_mi"] == 6.0 and d["mean"]["InfoNCE"] <= math.log(K)
plt.close(d["figure"])

# the stored training run was loaded and validated
assert record["provenance"]["command"].startswith("python scripts/experiments/train_critics.py")
print("WIDGET CHECKS PASSED")
'''


def test_tightness_view_callback():
    nb = jupytext.read(CHAPTER)
    nb.cells.append(nbformat.v4.new_code_cell(CHECKS))
    execute(nb, CHAPTER.parent)
    out = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream")
    assert "WIDGET CHECKS PASSED" in out
