"""Argument checks: the finiteness check finds every NaN and inf, wherever it sits and in every dtype."""

from __future__ import annotations

import pytest
import torch

from mvssl_core import _checks as checks


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("n", [1, 7, 8, 17, 64, 1001])
def test_finite_finds_every_bad_entry(dtype, bad, n):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(n)).to(dtype)
    assert checks.finite(x, "x") is x
    for row, col in {(0, 0), (1, n // 2), (2, n - 1)}:
        y = x.clone()
        y[row, col] = bad
        for view in (y, y.T, y[:, ::2] if col % 2 == 0 else y[:, 1::2]):
            with pytest.raises(ValueError, match="x must contain only finite values"):
                checks.finite(view, "x")


def test_finite_edge_cases():
    assert checks.finite(torch.empty(0, 4), "x").shape == (0, 4)
    assert checks.finite(torch.tensor(2.0), "x").item() == 2.0
    with pytest.raises(ValueError, match="s must contain"):
        checks.finite(torch.tensor(float("nan")), "s")
    x = torch.randn(5, 3, requires_grad=True)
    assert checks.finite(x, "x") is x  # no copy, the graph is untouched
