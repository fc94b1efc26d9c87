"""Distributions with known MI: conversions, the Poole staircase, samplers, critics, transforms."""

from __future__ import annotations

import math

import pytest
import torch

from mvssl_core import bounds, synthetic


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- MI <-> rho


@pytest.mark.parametrize("dim", [1, 2, 20, 128])
@pytest.mark.parametrize("mi", [0.0, 0.01, 1.0, 2.0, 10.0, 50.0])
def test_mi_rho_round_trip(mi, dim):
    if mi / dim > 15:  # beyond what a float64 rho can carry (1 - rho^2 < e^-30)
        with pytest.raises(ValueError, match="mi / dim"):
            synthetic.rho_from_mi(mi, dim)
        return
    rho = synthetic.rho_from_mi(mi, dim)
    assert 0.0 <= rho < 1.0
    # expm1/log1p keep small MI exact; near rho = 1 the relative error of MI grows like
    # eps / (1 - rho^2) / MI, 2e-9 at mi = 10, dim = 1: rel 1e-7.
    assert synthetic.mi_from_rho(rho, dim) == pytest.approx(mi, rel=1e-7, abs=1e-14)


def test_mi_from_rho_closed_form_and_sign():
    assert synthetic.mi_from_rho(0.0, 20) == 0.0
    assert synthetic.mi_from_rho(0.5, 4) == pytest.approx(-2.0 * math.log(0.75), rel=1e-14)
    # MI depends on rho^2 only: a negative correlation carries the same information.
    assert synthetic.mi_from_rho(-0.7, 5) == synthetic.mi_from_rho(0.7, 5)


def test_staircase_matches_poole_values():
    # facts.md (Poole et al. 2019, d = 20): rho = 0.4258, 0.5742, 0.6717, 0.7421, 0.7951.
    assert synthetic.POOLE_STAIRCASE_NATS == (2, 4, 6, 8, 10)
    rhos = synthetic.staircase()
    assert rhos == pytest.approx([0.4258, 0.5742, 0.6717, 0.7421, 0.7951], abs=5e-5)  # 4 printed decimals
    assert synthetic.staircase((1.0,), dim=1) == pytest.approx([math.sqrt(1 - math.exp(-2.0))])


# ----------------------------------------------------------------------------- samplers


def test_correlated_gaussians_moments():
    n, d, rho = 20000, 3, 0.6
    x, y = synthetic.correlated_gaussians(n, d, rho, generator=_gen(0))
    assert x.shape == y.shape == (n, d) and x.dtype == torch.float64
    # Standard errors at n = 20000: variance of a unit Gaussian sqrt(2/n) = 0.01, correlation
    # (1 - rho^2)/sqrt(n) = 0.0045. Tolerances are about 5 standard errors.
    assert x.var(0).sub(1).abs().max() < 0.05
    assert y.var(0).sub(1).abs().max() < 0.05
    corr = ((x - x.mean(0)) * (y - y.mean(0))).mean(0) / (x.std(0) * y.std(0))
    assert corr.sub(rho).abs().max() < 0.025
    # Coordinates are independent across dimensions.
    assert (x[:, 0] * y[:, 1]).mean().abs() < 0.04


def test_correlated_gaussians_reproducible_and_dtype():
    a = synthetic.correlated_gaussians(7, 2, 0.3, generator=_gen(5), dtype=torch.float32)
    b = synthetic.correlated_gaussians(7, 2, 0.3, generator=_gen(5), dtype=torch.float32)
    assert a[0].dtype == torch.float32
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- critic and conditional density


def test_gaussian_critic_matches_brute_force_densities():
    d, rho, k = 4, -0.55, 9
    x, y = synthetic.correlated_gaussians(k, d, rho, generator=_gen(1))
    eye = torch.eye(d, dtype=torch.float64)
    cond_cov = (1 - rho**2) * eye
    marginal = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=torch.float64), eye)
    expected = torch.empty(k, k, dtype=torch.float64)
    for i in range(k):
        cond = torch.distributions.MultivariateNormal(rho * x[i], cond_cov)
        for j in range(k):
            expected[i, j] = cond.log_prob(y[j]) - marginal.log_prob(y[j])
    torch.testing.assert_close(synthetic.gaussian_critic(x, y, rho), expected, rtol=1e-12, atol=1e-12)

    diag = torch.stack([torch.distributions.MultivariateNormal(rho * x[i], cond_cov).log_prob(y[i]) for i in range(k)])
    torch.testing.assert_close(synthetic.gaussian_conditional_log_density(y, x, rho), diag, rtol=1e-12, atol=1e-12)


def test_gaussian_critic_diagonal_mean_is_the_mi():
    # E_joint[log p(y|x)/p(y)] = I(X; Y). The pointwise MI at d = 20, MI = 4 has standard
    # deviation about 3 nats; with n = 20000 the standard error is 0.02: tolerance 0.1 (5 s.e.).
    d, mi = 20, 4.0
    rho = synthetic.rho_from_mi(mi, d)
    x, y = synthetic.correlated_gaussians(20000, d, rho, generator=_gen(2))
    one_minus = 1 - rho**2
    pointwise = -0.5 * d * math.log(one_minus) + (
        2 * rho * (x * y).sum(1) - rho**2 * (x.pow(2).sum(1) + y.pow(2).sum(1))
    ) / (2 * one_minus)
    assert pointwise.mean().item() == pytest.approx(mi, abs=0.1)
    # The same diagonal, through gaussian_critic on a small batch.
    torch.testing.assert_close(synthetic.gaussian_critic(x[:50], y[:50], rho).diagonal(), pointwise[:50])


# ----------------------------------------------------------------------------- transformed family


@pytest.mark.parametrize("transform", synthetic.TRANSFORMS)
def test_transforms_are_invertible(transform):
    x, y = synthetic.correlated_gaussians(2000, 3, 0.8, generator=_gen(3))
    u = synthetic.apply_transform(x, transform)
    # float64 round trip; ndtri in the tails (|x| ~ 4) loses a few digits: 1e-9 absolute.
    torch.testing.assert_close(synthetic.invert_transform(u, transform), x, rtol=1e-9, atol=1e-9)
    # Elementwise and strictly increasing: the order of each coordinate is kept.
    order = torch.argsort(x[:, 0])
    assert bool((u[order, 0].diff() > 0).all())


@pytest.mark.parametrize("transform", synthetic.TRANSFORMS)
def test_transformed_gaussians_have_the_gaussian_optimal_critic(transform):
    # Same seed -> same underlying (x, y). Inverting the map and applying gaussian_critic gives the
    # optimal critic of (u, v), so InfoNCE at the optimum is the same number (MI is invariant).
    d, rho, k = 5, 0.7, 256
    x, y = synthetic.correlated_gaussians(k, d, rho, generator=_gen(4))
    u, v = synthetic.transformed_gaussians(k, d, rho, transform=transform, generator=_gen(4))
    assert not torch.allclose(u, x)
    direct = bounds.infonce(synthetic.gaussian_critic(x, y, rho))
    x_back, y_back = synthetic.invert_transform(u, transform), synthetic.invert_transform(v, transform)
    via_inverse = bounds.infonce(synthetic.gaussian_critic(x_back, y_back, rho))
    assert via_inverse.item() == pytest.approx(direct.item(), abs=1e-8)


def test_normal_cdf_family_uniform_marginals_and_rank_mi():
    # normal_cdf gives Uniform(0, 1) marginals; a rank statistic, blind to monotone maps, recovers
    # the MI: Spearman's rho_s = (6/pi) asin(rho/2) for Gaussian pairs, so rho = 2 sin(pi rho_s / 6).
    n, d, mi = 20000, 2, 1.0
    rho = synthetic.rho_from_mi(mi, d)
    u, v = synthetic.transformed_gaussians(n, d, rho, transform="normal_cdf", generator=_gen(6))
    assert float(u.min()) > 0 and float(u.max()) < 1
    # Kolmogorov-Smirnov distance to Uniform(0, 1): the 0.1% critical value at n = 20000 is 1.95/sqrt(n) = 0.0138.
    sorted_u = torch.sort(u[:, 0]).values
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float((sorted_u - grid).abs().max()) < 0.0138
    ranks_u = torch.argsort(torch.argsort(u, dim=0), dim=0).double()
    ranks_v = torch.argsort(torch.argsort(v, dim=0), dim=0).double()
    ru, rv = ranks_u - ranks_u.mean(0), ranks_v - ranks_v.mean(0)
    spearman = (ru * rv).sum(0) / (ru.norm(dim=0) * rv.norm(dim=0))
    rho_hat = float((2 * torch.sin(math.pi * spearman / 6)).mean())
    # Standard error of rho_hat ~ (1 - rho^2)/sqrt(n d) ~ 0.003; MI tolerance 0.05 (about 5 s.e. in MI).
    assert synthetic.mi_from_rho(rho_hat, d) == pytest.approx(mi, abs=0.05)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: synthetic.mi_from_rho(1.0, 3), ValueError, "rho"),
        (lambda: synthetic.mi_from_rho(-1.0, 3), ValueError, "rho"),
        (lambda: synthetic.mi_from_rho(float("nan"), 3), ValueError, "rho"),
        (lambda: synthetic.mi_from_rho("0.5", 3), TypeError, "rho"),
        (lambda: synthetic.mi_from_rho(torch.tensor([0.1, 0.2]), 3), ValueError, "rho"),
        (lambda: synthetic.mi_from_rho(0.5, 0), ValueError, "dim"),
        (lambda: synthetic.mi_from_rho(0.5, 2.0), TypeError, "dim"),
        (lambda: synthetic.rho_from_mi(-0.1, 3), ValueError, "mi"),
        (lambda: synthetic.rho_from_mi(float("inf"), 3), ValueError, "mi"),
        (lambda: synthetic.rho_from_mi(40.0, 2), ValueError, "mi / dim"),
        (lambda: synthetic.staircase((2.0,), dim=0), ValueError, "dim"),
        (lambda: synthetic.correlated_gaussians(0, 3, 0.5), ValueError, "n"),
        (lambda: synthetic.correlated_gaussians(4, 0, 0.5), ValueError, "dim"),
        (lambda: synthetic.correlated_gaussians(4, 3, 1.5), ValueError, "rho"),
        (lambda: synthetic.correlated_gaussians(4, 3, 0.5, dtype=torch.int64), TypeError, "dtype"),
        (lambda: synthetic.gaussian_critic(torch.randn(4, 3), torch.randn(4, 2), 0.5), ValueError, "x and y"),
        (lambda: synthetic.gaussian_critic(torch.randn(4), torch.randn(4), 0.5), ValueError, "x"),
        (lambda: synthetic.gaussian_critic(torch.randn(4, 3), torch.randn(4, 3), 1.0), ValueError, "rho"),
        (
            lambda: synthetic.gaussian_conditional_log_density(
                torch.full((2, 2), float("nan")), torch.randn(2, 2), 0.5
            ),
            ValueError,
            "y",
        ),
        (lambda: synthetic.transformed_gaussians(4, 2, 0.5, transform="square"), ValueError, "transform"),
        (lambda: synthetic.invert_transform(torch.tensor([0.0, 0.5]), "normal_cdf"), ValueError, "u"),
        (lambda: synthetic.apply_transform([1.0], "cubic"), TypeError, "x"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- samplers on the sphere -------------------------------------------------------------------

from mvssl_core import special  # noqa: E402
from mvssl_core.synthetic import sample_uniform_sphere, sample_vmf  # noqa: E402


def _mu(d: int) -> torch.Tensor:
    mu = torch.zeros(d, dtype=torch.float64)
    mu[0] = 1.0
    return mu


@pytest.mark.parametrize("d,kappa", [(2, 4.0), (3, 0.5), (3, 10.0), (10, 5.0), (128, 10.0), (256, 300.0)])
def test_vmf_mean_resultant_length(d, kappa):
    # E[mu^T z] = A_d(kappa); 5 standard errors of the sample mean of w over 40k samples.
    n = 40_000
    z = sample_vmf(n, _mu(d), kappa, generator=torch.Generator().manual_seed(d))
    w = z[:, 0]
    torch.testing.assert_close(z.norm(dim=1), torch.ones(n, dtype=torch.float64))
    se = float(w.std()) / n**0.5
    assert abs(float(w.mean()) - float(special.vmf_mean_resultant_length(d, kappa))) < 5 * se


def test_vmf_on_s2_matches_the_closed_form_cdf():
    # On S^2 the component w = mu^T z has CDF (e^{kappa w} - e^{-kappa}) / (e^{kappa} - e^{-kappa}).
    # Kolmogorov-Smirnov distance below 1.63 / sqrt(n) (the 1% critical value).
    kappa, n = 3.0, 20_000
    w, _ = torch.sort(sample_vmf(n, _mu(3), kappa, generator=torch.Generator().manual_seed(1))[:, 0])
    cdf = (torch.exp(kappa * w) - math.exp(-kappa)) / (math.exp(kappa) - math.exp(-kappa))
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float(torch.maximum((ecdf - cdf).abs(), (ecdf - 1.0 / n - cdf).abs()).max())
    assert ks < 1.63 / n**0.5


def test_vmf_tangent_part_is_isotropic_and_direction_is_respected():
    d, kappa, n = 5, 2.0, 40_000
    mu = torch.nn.functional.normalize(torch.arange(1.0, d + 1, dtype=torch.float64), dim=0)
    z = sample_vmf(n, mu * 7.0, kappa, generator=torch.Generator().manual_seed(2))  # mu normalised inside
    w = z @ mu
    tangent = z - w[:, None] * mu
    # E[tangent tangent^T] = (1 - E w^2) / (d - 1) * (I - mu mu^T)
    expected = (1 - float((w * w).mean())) / (d - 1) * (torch.eye(d, dtype=torch.float64) - torch.outer(mu, mu))
    torch.testing.assert_close(tangent.T @ tangent / n, expected, atol=0.01, rtol=0)


def test_samplers_are_reproducible_and_validate_input():
    a = sample_vmf(10, _mu(4), 1.0, generator=torch.Generator().manual_seed(3))
    b = sample_vmf(10, _mu(4), 1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    u = sample_uniform_sphere(1000, 6, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(u.norm(dim=1), torch.ones(1000, dtype=torch.float64))
    assert abs(float(u.mean(0).abs().max())) < 0.15
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(5, _mu(3), 0.0)
    with pytest.raises(ValueError, match="mu"):
        sample_vmf(5, torch.zeros(3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="mu"):
        sample_vmf(5, torch.zeros(2, 3, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="dim"):
        sample_uniform_sphere(5, 1)
