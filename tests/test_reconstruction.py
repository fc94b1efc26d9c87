"""Reconstruction log-likelihoods: closed forms, scipy references, gradients, bf16, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from mvssl_core import reconstruction as rec


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("d, kappa", [(2, 0.5), (3, 5.0), (10, 10.0), (64, 30.0)])
def test_vmf_matches_scipy(d, kappa):
    z2, mean = _randn(6, d, seed=1), _randn(6, d, seed=2)
    got = rec.vmf_log_likelihood(z2, mean, kappa=kappa, reduction="none")
    mu = F.normalize(mean, dim=1).numpy()
    x = F.normalize(z2, dim=1).numpy()
    expected = [scipy.stats.vonmises_fisher(mu[i], kappa).logpdf(x[i]) for i in range(6)]
    # scipy evaluates the normaliser with its own Bessel routines: agreement to 1e-10 relative.
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    assert rec.vmf_log_likelihood(z2, mean, kappa=kappa).item() == pytest.approx(float(np.mean(expected)), rel=1e-10)


def test_vmf_closed_form_d3_and_normalisation():
    # On S^2, C_3(kappa) = kappa / (4 pi sinh kappa); the inputs are normalised, so scaling them
    # changes nothing.
    kappa = 7.0
    z2, mean = _randn(5, 3, seed=3), _randn(5, 3, seed=4)
    cos = (F.normalize(z2, dim=1) * F.normalize(mean, dim=1)).sum(1)
    expected = math.log(kappa / (4 * math.pi * math.sinh(kappa))) + kappa * cos
    got = rec.vmf_log_likelihood(z2 * 3.0, mean * 0.1, kappa=kappa, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)


def test_vmf_accepts_learnable_kappa():
    kappa = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    z2, mean = _randn(5, 8, seed=5), _randn(5, 8, seed=6)
    value = rec.vmf_log_likelihood(z2, mean, kappa=kappa)
    assert value.item() == pytest.approx(rec.vmf_log_likelihood(z2, mean, kappa=4.0).item(), rel=1e-14)
    value.backward()
    # d/dkappa [log C_d(kappa) + kappa cos] = -A_d(kappa) + mean cos; check by central differences.
    f = lambda k: rec.vmf_log_likelihood(z2, mean, kappa=k).item()  # noqa: E731
    assert kappa.grad.item() == pytest.approx((f(4.0 + 1e-6) - f(4.0 - 1e-6)) / 2e-6, rel=1e-6)


def test_gaussian_matches_scipy():
    d, h = 4, 0.7
    z2, mean = _randn(5, d, seed=7), _randn(5, d, seed=8)
    got = rec.gaussian_log_likelihood(z2, mean, bandwidth=h, reduction="none")
    cov = h**2 * np.eye(d)
    expected = [scipy.stats.multivariate_normal(mean[i].numpy(), cov).logpdf(z2[i].numpy()) for i in range(5)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    # No normalisation in R^d: scaling the inputs changes the value.
    assert not torch.allclose(rec.gaussian_log_likelihood(2 * z2, 2 * mean, h, reduction="none"), got)


def test_discrete_matches_soft_cross_entropy_and_one_hot():
    logits = _randn(6, 5, seed=9)
    target = torch.softmax(_randn(6, 5, seed=10), dim=1)
    got = rec.discrete_log_likelihood(target, logits)
    assert got.item() == pytest.approx(-F.cross_entropy(logits, target).item(), rel=1e-13)
    labels = torch.tensor([0, 3, 4, 1, 1, 2])
    one_hot = F.one_hot(labels, 5).double()
    per = rec.discrete_log_likelihood(one_hot, logits, reduction="none")
    torch.testing.assert_close(per, F.log_softmax(logits, dim=1)[torch.arange(6), labels])
    # Finite for huge logits (log_softmax, no exp before the log).
    assert torch.isfinite(rec.discrete_log_likelihood(one_hot, 1e4 * logits)).item()


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_float64():
    z2 = _randn(4, 3, seed=11).requires_grad_()
    mean = _randn(4, 3, seed=12).requires_grad_()
    kappa = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, k: rec.vmf_log_likelihood(a, b, kappa=k), (z2, mean, kappa))
    assert torch.autograd.gradcheck(lambda a, b: rec.gaussian_log_likelihood(a, b, 0.8, reduction="none"), (z2, mean))
    target = torch.softmax(_randn(4, 5, seed=13), dim=1).requires_grad_()
    logits = _randn(4, 5, seed=14).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, l: rec.discrete_log_likelihood(t, l), (target, logits))


@pytest.mark.parametrize("name", ["vmf", "gaussian", "discrete"])
def test_bf16_autocast_finite(name):
    a = _randn(16, 8, seed=15, dtype=torch.float32).bfloat16().requires_grad_()
    b = _randn(16, 8, seed=16, dtype=torch.float32).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if name == "vmf":
            value = rec.vmf_log_likelihood(a, b, kappa=50.0)
        elif name == "gaussian":
            value = rec.gaussian_log_likelihood(a, b, bandwidth=0.1)
        else:
            value = rec.discrete_log_likelihood(torch.softmax(a * 20, dim=1), b * 50)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    for x in (a, b):
        assert x.grad.dtype == torch.bfloat16 and bool(torch.isfinite(x.grad).all())


# ----------------------------------------------------------------------------- bad input

_Z = _randn(4, 3, seed=17)
_P = torch.softmax(_Z, dim=1)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: rec.vmf_log_likelihood(_Z[0], _Z[0]), ValueError, "z2"),
        (lambda: rec.vmf_log_likelihood(_Z, _Z[:, :2]), ValueError, "z2 and mean"),
        (lambda: rec.vmf_log_likelihood(_Z, _Z[:3]), ValueError, "z2 and mean"),
        (lambda: rec.vmf_log_likelihood(_Z, torch.full_like(_Z, float("nan"))), ValueError, "mean"),
        (lambda: rec.vmf_log_likelihood(_Z, _Z, kappa=0.0), ValueError, "kappa"),
        (lambda: rec.vmf_log_likelihood(_Z, _Z, kappa=-1.0), ValueError, "kappa"),
        (lambda: rec.vmf_log_likelihood(_Z[:, :1], _Z[:, :1]), ValueError, "z2"),
        (lambda: rec.vmf_log_likelihood(_Z, _Z, reduction="sum"), ValueError, "reduction"),
        (lambda: rec.vmf_log_likelihood(_Z.numpy(), _Z), TypeError, "z2"),
        (lambda: rec.vmf_log_likelihood(_Z.long(), _Z), TypeError, "z2"),
        (lambda: rec.gaussian_log_likelihood(_Z, _Z, bandwidth=0.0), ValueError, "bandwidth"),
        (lambda: rec.gaussian_log_likelihood(_Z, _Z, bandwidth=float("inf")), ValueError, "bandwidth"),
        (lambda: rec.gaussian_log_likelihood(_Z, _Z.T, bandwidth=1.0), ValueError, "z2 and mean"),
        (lambda: rec.gaussian_log_likelihood(_Z.unsqueeze(0), _Z.unsqueeze(0), bandwidth=1.0), ValueError, "z2"),
        (lambda: rec.discrete_log_likelihood(_Z, _Z), ValueError, "target_probs"),  # logits, not probabilities
        (lambda: rec.discrete_log_likelihood(_P * 1.1, _Z), ValueError, "target_probs"),
        (lambda: rec.discrete_log_likelihood(_P, _Z[:, :2]), ValueError, "target_probs and logits"),
        (lambda: rec.discrete_log_likelihood(_P, _Z.masked_fill(_Z > 0, float("inf"))), ValueError, "logits"),
        # the sphere rule: a zero row has no direction (it was normalised to 0: log q = log C_d, "orthogonal")
        (lambda: rec.vmf_log_likelihood(_Z.clone().index_fill_(0, torch.tensor([2]), 0.0), _Z), ValueError,
         r"^z2 has 1 row\(s\) of norm 0 .*rows 2"),
        (lambda: rec.vmf_log_likelihood(_Z, torch.zeros_like(_Z)), ValueError, r"^mean has 4 row\(s\) of norm 0"),
        (lambda: rec.vmf_log_likelihood(_Z, 1e-13 * _Z), ValueError, r"^mean has 4 row\(s\) of norm 0 \(or <= 1e-12\)"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
