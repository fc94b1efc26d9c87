"""mvssl_core.special: log I_nu, the Bessel ratio and the vMF constants, against mpmath and closed forms."""

from __future__ import annotations

import functools
import math

import mpmath
import numpy as np
import pytest
import scipy.special
import torch

from mvssl_core import special
from mvssl_core.special import (
    bessel_ratio,
    log_iv,
    log_sphere_area,
    uniform_sphere_entropy,
    vmf_entropy,
    vmf_log_normalizer,
    vmf_mean_resultant_length,
)

F64 = torch.float64
DPS = 40
MAXTERMS = 10**6  # mpmath's 0F1 series needs ~x terms once x >> nu (x = 1e5, nu = 1e4)

# Orders from the issue, plus both sides of the order where Debye's expansion takes over.
ORDERS = (0.0, 0.5, 1.0, 10.0, 63.0, 127.0, 255.0, 1023.0, 5000.0, 10000.0)
EDGE = float(special._DEBYE_MIN_ORDER)
GRID_ORDERS = ORDERS + (EDGE - 0.5, EDGE, EDGE + 0.5)
X_GRID = np.logspace(-6, 5, 30)


@functools.lru_cache(maxsize=None)
def _mp_besseli(nu: float, x: float, shift: int = 0) -> mpmath.mpf:
    """I_{nu + shift}(x) at DPS digits (the order summed in mpmath, not rounded in float64); cached."""
    with mpmath.workdps(DPS):
        return mpmath.besseli(mpmath.mpf(nu) + shift, mpmath.mpf(x), maxterms=MAXTERMS)


def _mp_log_iv(nu: float, x: float) -> float:
    with mpmath.workdps(DPS):
        return float(mpmath.log(_mp_besseli(nu, x)))


def _grid_points(nu: float) -> list[float]:
    """30 log-spaced x, x near nu (the transition) and on both sides of the series switch."""
    xs = list(X_GRID)
    if nu > 0:
        xs += [nu * f for f in (0.5, 0.9, 0.99, 1.0, 1.01, 1.1, 2.0)]
    edge = 2.0 * math.sqrt(nu + 1.0)  # x^2 / 4 = nu + 1
    xs += [edge * (1 - 1e-12), edge * (1 + 1e-12), 1.0]
    return sorted({float(x) for x in xs if 1e-6 <= x <= 1e5})


@pytest.fixture(scope="module")
def log_iv_reference():
    """(nu, x, log I_nu(x)) from mpmath at 40 digits, ~450 points."""
    rows = [(nu, x, _mp_log_iv(nu, x)) for nu in GRID_ORDERS for x in _grid_points(nu)]
    nu, x, ref = (torch.tensor(col, dtype=F64) for col in zip(*rows))
    return nu, x, ref


@pytest.fixture(scope="module")
def ratio_reference():
    """(nu, x, I_{nu+1}(x) / I_nu(x)) from mpmath; the corner (1e4, 1e5) included."""
    points = [(nu, float(x)) for nu in GRID_ORDERS for x in np.logspace(-6, 5, 12)]
    points += [(nu, nu + 1.0) for nu in GRID_ORDERS]
    # mpmath needs ~4 s per value for nu >= 5000 and x >= 4e4; keep one such point.
    points = [(nu, x) for nu, x in points if not (nu >= 5000 and x > 4e4)] + [(1e4, 1e5)]
    rows = []
    with mpmath.workdps(DPS):
        for nu, x in points:
            rows.append((nu, x, float(_mp_besseli(nu, x, 1) / _mp_besseli(nu, x))))
    nu, x, ref = (torch.tensor(col, dtype=F64) for col in zip(*rows))
    return nu, x, ref


# --- log I_nu and the ratio against mpmath ---------------------------------------------------


def test_log_iv_matches_mpmath_on_grid(log_iv_reference):
    nu, x, ref = log_iv_reference
    got = log_iv(nu, x)
    err = (got - ref).abs() / ref.abs().clamp(min=1.0)
    worst = int(err.argmax())
    assert err.max() <= 1e-10, f"error {err.max():.2e} at nu={nu[worst]:g}, x={x[worst]:g}"
    corner = (nu == 1e4) & (x == 1e5)
    assert corner.any()


@pytest.mark.parametrize("nu", ORDERS)
def test_log_iv_scalar_calls_match_the_batch(log_iv_reference, nu):
    grid_nu, grid_x, ref = log_iv_reference
    rows = torch.nonzero(grid_nu == nu).flatten()[::7]
    for i in rows.tolist():
        got = float(log_iv(nu, float(grid_x[i])))
        assert abs(got - float(ref[i])) <= 1e-10 * max(1.0, abs(float(ref[i])))


def test_bessel_ratio_matches_mpmath(ratio_reference):
    nu, x, ref = ratio_reference
    got = bessel_ratio(nu, x)
    err = ((got - ref) / ref).abs()
    worst = int(err.argmax())
    assert err.max() <= 1e-12, f"error {err.max():.2e} at nu={nu[worst]:g}, x={x[worst]:g}"
    assert bool(((got > 0) & (got < 1)).all())


def test_log_iv_gradient_is_ratio_plus_nu_over_x(ratio_reference):
    """The backward pass at the extreme points: d/dx log I_nu(x) = I_{nu+1}/I_nu + nu/x."""
    nu, x, ref = ratio_reference
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_iv(nu, x).sum(), x)
    expected = ref + nu / x.detach()
    assert torch.allclose(grad, expected, rtol=1e-12, atol=0.0)


def test_scipy_ive_underflows_where_log_iv_does_not():
    """Why this module exists: the exponentially scaled scipy function is exactly 0 at (255, 10)."""
    assert scipy.special.ive(255, 10) == 0.0
    with mpmath.workdps(DPS):
        ref = _mp_log_iv(255.0, 10.0)
    got = float(log_iv(255, 10.0))
    assert ref < -700  # I_255(10) is below the smallest float64
    assert abs(got - ref) <= 1e-12 * abs(ref)


# --- closed forms ------------------------------------------------------------------------------


def test_log_iv_half_order_closed_form():
    """I_{1/2}(x) = sqrt(2 / (pi x)) sinh x, over 200 points of x in [1e-6, 1e5]."""
    x = torch.logspace(-6, 5, 200, dtype=F64)
    log_sinh = torch.where(x < 1, torch.log(torch.sinh(x)), x + torch.log1p(-torch.exp(-2 * x)) - math.log(2))
    ref = 0.5 * torch.log(2 / (math.pi * x)) + log_sinh
    err = (log_iv(0.5, x) - ref).abs() / ref.abs().clamp(min=1.0)
    assert err.max() <= 1e-12


def test_log_iv_tiny_argument_keeps_relative_accuracy():
    """log I_0(x) = y - y^2/4 + y^3/9 + O(y^4), y = x^2/4, stays accurate far below 1."""
    x = torch.tensor([1e-6, 1e-4, 1e-2], dtype=F64)
    y = x**2 / 4
    ref = y - y**2 / 4 + y**3 / 9
    assert torch.allclose(log_iv(0, x), ref, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize(
    "d, value",
    [(128, -127.05), (256, -344.33), (512, -867.97), (1000, -2032.06), (2048, -4898.38)],
)
def test_uniform_sphere_entropy_published_values(d, value):
    assert abs(uniform_sphere_entropy(d) - value) <= 0.005
    assert uniform_sphere_entropy(d) == log_sphere_area(d)


def test_log_sphere_area_small_dimensions():
    assert log_sphere_area(2) == pytest.approx(math.log(2 * math.pi), rel=1e-15)  # circle
    assert log_sphere_area(3) == pytest.approx(math.log(4 * math.pi), rel=1e-15)  # S^2
    assert log_sphere_area(4) == pytest.approx(math.log(2 * math.pi**2), rel=1e-15)  # S^3


def test_vmf_log_normalizer_d3_closed_form():
    """C_3(kappa) = kappa / (4 pi sinh kappa)."""
    kappa = torch.logspace(-4, 4, 60, dtype=F64)
    log_sinh = torch.where(
        kappa < 1, torch.log(torch.sinh(kappa)), kappa + torch.log1p(-torch.exp(-2 * kappa)) - math.log(2)
    )
    ref = torch.log(kappa) - math.log(4 * math.pi) - log_sinh
    assert torch.allclose(vmf_log_normalizer(3, kappa), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [3, 5, 10, 64, 1000])
@pytest.mark.parametrize("kappa", [0.5, 10.0, 300.0])
def test_vmf_density_integrates_to_one(d, kappa):
    """C_d(kappa) |S^{d-2}| int_{-1}^{1} exp(kappa t) (1 - t^2)^{(d-3)/2} dt = 1, the integral by mpmath.

    The integrand peaks sharply for large kappa or d, so the quadrature is split around the peak t*
    (kappa (1 - t*^2) = (d - 3) t*) in steps of its width.
    """
    with mpmath.workdps(25):
        a, k = mpmath.mpf(d - 3) / 2, mpmath.mpf(kappa)
        if a > 0:
            peak = (mpmath.sqrt(a * a + k * k) - a) / k
            width = (1 - peak**2) / mpmath.sqrt(2 * a * (1 + peak**2))
        else:
            peak, width = mpmath.mpf(1), 1 / k
        cuts = {peak + j * width for j in range(-30, 31) if -1 < peak + j * width < 1}
        integral = mpmath.quad(lambda t: mpmath.exp(k * (t - 1)) * (1 - t * t) ** a, sorted(cuts | {-1, 1}))
        log_integral = float(mpmath.log(integral)) + kappa
    log_total = float(vmf_log_normalizer(d, kappa)) + log_sphere_area(d - 1) + log_integral
    assert abs(log_total) <= 1e-10


def test_vmf_mean_resultant_length_d3_closed_form():
    """A_3(kappa) = coth kappa - 1 / kappa (by mpmath: it cancels for small kappa)."""
    kappa = np.logspace(-4, 4, 40)
    with mpmath.workdps(DPS):
        ref = torch.tensor([float(mpmath.coth(k) - 1 / mpmath.mpf(k)) for k in kappa], dtype=F64)
    got = vmf_mean_resultant_length(3, torch.tensor(kappa, dtype=F64))
    assert torch.allclose(got, ref, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("d", [2, 3, 128, 1000])
def test_vmf_mean_resultant_length_is_in_unit_interval_and_increasing(d):
    kappa = torch.logspace(-6, 5, 200, dtype=F64)
    a = vmf_mean_resultant_length(d, kappa)
    assert bool(((a > 0) & (a < 1)).all())
    assert bool((a.diff() > 0).all())
    assert float(a[0]) == pytest.approx(1e-6 / d, rel=1e-9)  # A_d ~ kappa / d
    kappa_max = float(kappa[-1])  # A_d = 1 - (d - 1) / (2 kappa) + O(d^2 / kappa^2)
    assert abs(float(a[-1]) - (1 - (d - 1) / (2 * kappa_max))) <= d**2 / kappa_max**2


@pytest.mark.parametrize("d", [2, 3, 128, 1000])
def test_vmf_entropy_tends_to_uniform_as_kappa_vanishes(d):
    """H(kappa) = H_uniform - kappa^2 / (2 d) + O(kappa^4)."""
    h_uniform = uniform_sphere_entropy(d)
    assert float(vmf_entropy(d, 1e-8)) == pytest.approx(h_uniform, rel=1e-13, abs=1e-13)
    kappa = 1e-3
    assert float(vmf_entropy(d, kappa)) - h_uniform == pytest.approx(-(kappa**2) / (2 * d), rel=1e-5)


@pytest.mark.parametrize("d", [3, 128])
def test_vmf_entropy_decreases_with_kappa(d):
    h = vmf_entropy(d, torch.logspace(-2, 4, 100, dtype=F64))
    assert bool((h.diff() < 0).all())
    assert float(h[0]) < uniform_sphere_entropy(d)


def test_vmf_entropy_d3_closed_form():
    """On S^2: H = log(4 pi sinh(kappa) / kappa) - kappa coth(kappa) + 1."""
    kappa = np.array([0.01, 0.3, 1.0, 10.0, 100.0])
    with mpmath.workdps(DPS):
        ref = [
            float(mpmath.log(4 * mpmath.pi * mpmath.sinh(k) / k) - k * mpmath.coth(k) + 1) for k in kappa
        ]
    got = vmf_entropy(3, torch.tensor(kappa, dtype=F64))
    assert torch.allclose(got, torch.tensor(ref, dtype=F64), rtol=1e-12, atol=1e-12)


# --- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("nu", [0.0, 0.5, 3.3, 63.0, 1000.0])
def test_log_iv_gradcheck(nu):
    x = torch.tensor([1e-3, 0.5, 3.0, 40.0, 700.0, 2e4], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: log_iv(nu, x), (x,))
    assert torch.autograd.gradgradcheck(lambda x: log_iv(nu, x), (x,))
    assert torch.autograd.gradcheck(lambda x: bessel_ratio(nu, x), (x,))


@pytest.mark.parametrize("d", [2, 3, 128, 1000])
def test_vmf_gradcheck(d):
    kappa = torch.tensor([1e-2, 1.0, 10.0, 1e3], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: vmf_log_normalizer(d, k), (kappa,))
    assert torch.autograd.gradcheck(lambda k: vmf_entropy(d, k), (kappa,))


@pytest.mark.parametrize("d", [2, 128, 1000])
def test_vmf_log_normalizer_gradient_is_minus_mean_resultant_length(d):
    """d/dkappa log C_d = -A_d, with no cancellation of the two nu / kappa terms at small kappa."""
    kappa = torch.tensor([1e-6, 1e-3, 1.0, 10.0, 1e3], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(vmf_log_normalizer(d, kappa).sum(), kappa)
    assert torch.allclose(grad, -vmf_mean_resultant_length(d, kappa.detach()), rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("d", [2, 3, 128, 2048])
@pytest.mark.parametrize("kappa", [1e-3, 10.0, 16, 4e3])
def test_vmf_log_normalizer_of_a_number_is_cached_and_equal(d, kappa):
    """Issue 13 item 7: a number kappa is computed once per (d, kappa); the value is the uncached one."""
    uncached = special._vmf_log_normalizer(d, torch.tensor(float(kappa), dtype=F64))
    first = vmf_log_normalizer(d, kappa)
    hits = special._vmf_log_normalizer_of_number.cache_info().hits
    second = vmf_log_normalizer(d, kappa)
    assert special._vmf_log_normalizer_of_number.cache_info().hits == hits + 1
    for value in (first, second):
        assert value.dtype == F64 and value.shape == () and not value.requires_grad
        assert torch.equal(value, uncached)
    first.add_(1.0)  # each call returns its own tensor: changing one cannot reach the cache
    assert torch.equal(vmf_log_normalizer(d, kappa), uncached) and first is not second


def test_vmf_log_normalizer_of_a_tensor_is_not_cached_and_stays_differentiable():
    misses = special._vmf_log_normalizer_of_number.cache_info()
    kappa = torch.tensor(7.25, dtype=F64, requires_grad=True)
    value = vmf_log_normalizer(64, kappa)
    assert special._vmf_log_normalizer_of_number.cache_info() == misses
    (grad,) = torch.autograd.grad(value, kappa)
    assert torch.allclose(grad, -vmf_mean_resultant_length(64, 7.25), rtol=1e-13, atol=0.0)
    assert torch.equal(value.detach(), vmf_log_normalizer(64, 7.25))
    value32 = vmf_log_normalizer(64, torch.tensor(7.25, requires_grad=True))
    assert value32.dtype == torch.float32 and value32.requires_grad


# --- shapes, dtypes, argument checks ------------------------------------------------------------


def test_broadcasting_and_dtypes():
    nu = torch.tensor([[0.0], [2.5], [300.0]], dtype=F64)
    x = torch.tensor([1e-3, 1.0, 50.0, 4e3], dtype=F64)
    out = log_iv(nu, x)
    assert out.shape == (3, 4) and out.dtype == F64
    for i in range(3):
        for j in range(4):
            assert float(out[i, j]) == float(log_iv(float(nu[i, 0]), float(x[j])))
    assert log_iv(1, 2.0).dtype == F64 and log_iv(1, 2.0).dim() == 0
    assert log_iv(1.0, x.float()).dtype == torch.float32
    assert bessel_ratio(1.0, x.float()).dtype == torch.float32
    assert vmf_entropy(3, torch.tensor([1.0, 2.0])).dtype == torch.float32
    assert vmf_log_normalizer(3, 2.0).dtype == F64


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: log_iv(-1.0, 1.0), ValueError, "nu"),
        (lambda: log_iv(torch.tensor([1.0, -0.5]), 1.0), ValueError, "nu"),
        (lambda: log_iv(torch.tensor([1.0, NAN]), 1.0), ValueError, "nu"),
        (lambda: log_iv("1", 1.0), TypeError, "nu"),
        (lambda: log_iv(torch.tensor(1.0, requires_grad=True), 1.0), ValueError, "nu"),
        (lambda: log_iv(1.0, 0.0), ValueError, "x"),
        (lambda: log_iv(1.0, torch.tensor([1.0, -1.0])), ValueError, "x"),
        (lambda: log_iv(1.0, torch.tensor([1.0, INF])), ValueError, "x"),
        (lambda: log_iv(1.0, torch.tensor([1, 2])), TypeError, "x"),
        (lambda: bessel_ratio(-0.5, 1.0), ValueError, "nu"),
        (lambda: bessel_ratio(0.5, -1.0), ValueError, "x"),
        (lambda: log_sphere_area(1), ValueError, "d"),
        (lambda: log_sphere_area(3.0), TypeError, "d"),
        (lambda: uniform_sphere_entropy(True), TypeError, "d"),
        (lambda: vmf_log_normalizer(3, 0.0), ValueError, "kappa"),
        (lambda: vmf_log_normalizer(1, 1.0), ValueError, "d"),
        (lambda: vmf_mean_resultant_length(3, -2.0), ValueError, "kappa"),
        (lambda: vmf_entropy(3, torch.tensor([1.0, NAN])), ValueError, "kappa"),
        (lambda: vmf_entropy(3, torch.tensor([1.0, 0.0])), ValueError, "kappa"),
        (lambda: vmf_entropy(2.5, 1.0), TypeError, "d"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(call, error, name):
    with pytest.raises(error, match=rf"^{name} "):
        call()


@pytest.mark.parametrize("nu, x", [
    (torch.tensor([], dtype=torch.float64), torch.tensor([1.0, 2.0])),
    (torch.tensor([0.5, 1.5]), torch.tensor([], dtype=torch.float32)),
    (torch.tensor([0.5, 1.5, 2.5]), torch.tensor([1.0, 2.0])),
])
@pytest.mark.parametrize("fn", [special.log_iv, special.bessel_ratio])
def test_orders_and_arguments_that_do_not_broadcast_are_named(fn, nu, x):
    # torch.broadcast_tensors' RuntimeError ("The size of tensor a (0) must match ...") named neither
    with pytest.raises(ValueError, match=rf"^nu and x must be broadcastable, got shapes {tuple(nu.shape)} "
                                         rf"and {tuple(x.shape)}$".replace("(", r"\(").replace(")", r"\)")):
        fn(nu, x)


def test_log_iv_still_broadcasts():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    value = special.log_iv(torch.tensor([[0.5], [0.5]], dtype=torch.float64), x)
    assert value.shape == (2, 2)
    expected = torch.log(torch.sqrt(2 / (math.pi * x)) * torch.sinh(x)).expand(2, 2)
    torch.testing.assert_close(value, expected)
