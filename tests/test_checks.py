"""Argument checks: the finiteness check finds every NaN and inf, wherever it sits and in every dtype;
flags are booleans, not text; fractions are in [0, 1]; sphere inputs have no zero rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvssl_core import _checks as checks
from mvssl_core import bounds


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


# ---------------------------------------------------------------------------- flags, fractions, the sphere


def test_boolean_refuses_what_bool_would_coerce():
    assert checks.boolean(True, "flag") is True and checks.boolean(False, "flag") is False
    assert checks.boolean(np.bool_(True), "flag") is True
    # bool("no") is True and bool("False") is True: text, numbers and None are refused, naming the argument
    for bad in ("no", "False", "", 0, 1, 1.0, None, torch.tensor(True), [True]):
        with pytest.raises(TypeError, match=r"^flag must be True or False, got "):
            checks.boolean(bad, "flag")


def test_fraction():
    assert checks.fraction(0, "p") == 0.0 and checks.fraction(1, "p") == 1.0
    assert checks.fraction(torch.tensor(0.25), "p") == 0.25
    for bad in ("0.5", True, None, [0.5]):
        with pytest.raises(TypeError, match=r"^p must be a number in \[0, 1\], got "):
            checks.fraction(bad, "p")
    for bad in (2.0, -1e-9, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^p must be a finite number in \[0, 1\], got "):
            checks.fraction(bad, "p")
    with pytest.raises(ValueError, match="p must be a number in"):
        checks.fraction(torch.tensor([0.1, 0.2]), "p")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_nonzero_rows(dtype):
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert checks.nonzero_rows(x, "x") is x
    assert checks.nonzero_rows(x[:0], "x").shape == (0, 3)
    x[[1, 4]] = 0
    with pytest.raises(ValueError, match=r"^x has 2 row\(s\) of norm 0 \(or <= 1e-12\), rows 1, 4: "):
        checks.nonzero_rows(x, "x")
    many = torch.zeros(9, 2, dtype=dtype)
    with pytest.raises(ValueError, match=r"rows 0, 1, 2, 3, 4, \.\.\."):
        checks.nonzero_rows(many, "z")


# ---------------------------------------------------------------------------- the bounds (issue 15)

_G = torch.Generator().manual_seed(1)
_Z1, _Z2 = torch.randn(8, 4, generator=_G), torch.randn(8, 4, generator=_G)
_L = torch.randn(8, 5, generator=_G)
_ZERO = _Z1.clone().index_fill_(0, torch.tensor([5]), 0.0)

BOUND_FLAGS = [
    ("distributed", lambda v: bounds.infonce_from_embeddings(_Z1, _Z2, distributed=v)),
    ("distributed", lambda v: bounds.er_bound(_Z1, _Z2, distributed=v)),
    ("leave_one_out", lambda v: bounds.er_bound(_Z1, _Z2, leave_one_out=v)),
    ("leave_one_out", lambda v: bounds.er_bound(_Z1, _Z2, kernel="gaussian", bandwidth=1.0, leave_one_out=v)),
    ("symmetric", lambda v: bounds.er_bound_discrete(_L, _L + 1, symmetric=v)),
    ("distributed", lambda v: bounds.er_bound_discrete(_L, _L + 1, distributed=v)),
    ("distributed", lambda v: bounds.er_bound_discrete_multicrop([_L, _L + 1], [_L], distributed=v)),
    ("distributed", lambda v: bounds.uniformity(_Z1, distributed=v)),
]


@pytest.mark.parametrize("value", ["no", 0, None])
@pytest.mark.parametrize("flag,call", BOUND_FLAGS, ids=[f"{i}-{f}" for i, (f, _) in enumerate(BOUND_FLAGS)])
def test_bounds_refuse_flags_that_are_not_booleans(flag, call, value):
    # er_bound(..., leave_one_out="no") dropped the self term; symmetric="no" averaged both directions
    with pytest.raises(TypeError, match=f"^{flag} must be True or False, got {value!r}"):
        call(value)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: bounds.infonce_from_embeddings(_ZERO, _Z2), "z1"),
        (lambda: bounds.infonce_from_embeddings(_Z2, _ZERO), "z2"),
        (lambda: bounds.er_bound(_ZERO, _Z2), "z1"),  # was refused, if at all, as "mean"
        (lambda: bounds.er_bound(_Z2, _ZERO), "z2"),
    ],
)
def test_sphere_bounds_refuse_zero_rows(call, name):
    with pytest.raises(ValueError, match=rf"^{name} has 1 row\(s\) of norm 0 .*rows 5"):
        call()


def test_gaussian_er_bound_accepts_zero_rows():
    # no sphere in R^d: the origin is a point like any other
    assert torch.isfinite(bounds.er_bound(_ZERO, _Z2, kernel="gaussian", bandwidth=1.0).bound)


def test_value_checks_off_skips_only_the_checks_that_read_values():
    nan = torch.tensor([[1.0, float("nan")], [0.5, 0.5]])
    zero_row = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    not_probs = torch.tensor([[0.9, 0.9], [0.5, 0.5]])
    with checks.value_checks(False):
        assert checks.finite(nan, "z") is nan
        assert checks.nonzero_rows(zero_row, "z") is zero_row
        assert checks.probabilities(not_probs, "p") is not_probs
        with pytest.raises(ValueError, match=r"z must have shape \(N, d\)"):  # shapes and types still checked
            checks.embeddings(torch.ones(3), "z")
        with pytest.raises(TypeError, match="floating-point"):
            checks.probabilities(torch.ones(2, 2, dtype=torch.long), "p")
        with checks.value_checks(True):  # nested: on again, then back off
            with pytest.raises(ValueError, match="finite"):
                checks.finite(nan, "z")
        checks.finite(nan, "z")
    with pytest.raises(ValueError, match="finite"):  # back on outside
        checks.finite(nan, "z")
    with pytest.raises(ValueError, match="norm 0"):
        checks.nonzero_rows(zero_row, "z")
    with pytest.raises(ValueError, match="summing to 1"):
        checks.probabilities(not_probs, "p")


def test_value_checks_are_restored_after_an_error():
    with pytest.raises(RuntimeError):
        with checks.value_checks(False):
            raise RuntimeError("inside")
    with pytest.raises(ValueError, match="finite"):
        checks.finite(torch.tensor([float("inf")]), "z")
