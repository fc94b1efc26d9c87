"""Entropy estimators against closed forms, transcriptions of their formulas, and each other.

Sampling-based tests use fixed seeds; every tolerance below is derived in a comment from the
estimator's bias and its standard deviation (sd) at that N, so a failure means a real regression,
not bad luck. Exact identities (chunked vs dense, transcriptions) are checked at float64 round-off.
"""

from __future__ import annotations

import math

import pytest
import torch

from mvssl_core import entropy, special
from mvssl_core.entropy import discrete_entropy, gaussian_entropy, kde_entropy, kde_log_density, knn_entropy

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uniform_sphere(n: int, d: int, g: torch.Generator, dtype=F64) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def vmf_s2(n: int, kappa0: float, g: torch.Generator, dtype=F64) -> torch.Tensor:
    """Exact vMF(mean e_3, kappa0) samples on S^2.

    On S^2 the cosine w = mu.z has density prop. to e^{kappa0 w} on [-1, 1]; inverting its CDF gives
    w = 1 + log(u + (1 - u) e^{-2 kappa0}) / kappa0 for u ~ U(0, 1), and the direction orthogonal to
    the mean is uniform on the circle.
    """
    u = torch.rand(n, generator=g, dtype=dtype)
    w = 1 + torch.log(u + (1 - u) * math.exp(-2 * kappa0)) / kappa0
    phi = 2 * math.pi * torch.rand(n, generator=g, dtype=dtype)
    r = torch.sqrt((1 - w * w).clamp_min(0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), w], dim=1)


# --------------------------------------------------------------------------------------------
# KDE entropy converges to the closed forms
# --------------------------------------------------------------------------------------------


def test_vmf_sampler_mean_resultant_length():
    # E[w] = A_3(kappa0) = coth(kappa0) - 1/kappa0; sd(w) <= 0.25 here, so 4 sd of the mean of
    # 20000 draws is 0.007.
    for kappa0 in (1.0, 5.0, 20.0):
        w = vmf_s2(20000, kappa0, _gen(1))[:, 2]
        assert abs(float(w.mean()) - (1 / math.tanh(kappa0) - 1 / kappa0)) < 0.007


# Kernel width. Joe's leave-one-out estimator has two positive biases: smoothing (the KDE estimates
# the cross-entropy of p against p convolved with the kernel, which is larger than H(p)) and the
# Jensen gap of -log over the KDE's noise. On the m-dimensional sphere S^m (m = d - 1) the best
# bandwidth shrinks like N^{-1/(m+4)}, i.e. kappa ~ 1/h^2 ~ N^{2/(m+4)}: N^{1/3} on S^2, N^{1/4} on
# S^4, scaled with the target's concentration (its angular spread is ~ 1/sqrt(kappa0)). The uniform
# density is unchanged by smoothing, so only the noise term remains there.
SPHERE_CASES = {
    # name: (sampler, closed form, kernel kappa at N, tolerance at N = 16384)
    # uniform: -log p is constant, so the estimate's spread is the KDE noise alone (bias 0.003 measured).
    "uniform_S2": (
        lambda n, g: uniform_sphere(n, 3, g, torch.float32),
        special.uniform_sphere_entropy(3),
        lambda n: 4 * n ** (1 / 3),
        0.01,
    ),
    # S^4: the noise term decays more slowly (about 0.015 at 16384).
    "uniform_S4": (
        lambda n, g: uniform_sphere(n, 5, g, torch.float32),
        special.uniform_sphere_entropy(5),
        lambda n: 2 * n ** (1 / 4),
        0.03,
    ),
    # vMF: sd(-log p(z)) = kappa0 sd(w) is about 1, so the sd of the mean is 1/128 = 0.008 at 16384;
    # tolerance = 3 sd + a smoothing bias of a few 1e-3.
    "vmf_5": (
        lambda n, g: vmf_s2(n, 5.0, g, torch.float32),
        float(special.vmf_entropy(3, 5.0)),
        lambda n: 2 * n ** (1 / 3),
        0.03,
    ),
    "vmf_20": (
        lambda n, g: vmf_s2(n, 20.0, g, torch.float32),
        float(special.vmf_entropy(3, 20.0)),
        lambda n: 8 * n ** (1 / 3),
        0.03,
    ),
}


@pytest.mark.parametrize("name", list(SPHERE_CASES))
def test_kde_vmf_kernel_converges_on_the_sphere(name):
    # The error at each N is averaged over replicates (16 at N = 256, 4 at 4096, 1 at 16384) so that
    # "smaller at larger N" compares biases, not one noisy draw with another. float32: the estimator's
    # sampling noise (>= 1e-3) is far above float32 round-off.
    sampler, truth, kernel_kappa, tol = SPHERE_CASES[name]
    errors = {}
    for n, reps in ((256, 16), (4096, 4), (16384, 1)):
        samples = [sampler(n, _gen(1000 * n + r)) for r in range(reps)]
        estimates = [
            float(kde_entropy(z, kappa=kernel_kappa(n), leave_one_out=True, chunk_size="auto")) for z in samples
        ]
        errors[n] = sum(estimates) / reps - truth
    assert abs(errors[16384]) < tol, errors
    assert abs(errors[4096]) < abs(errors[256]), errors
    assert abs(errors[16384]) < abs(errors[256]), errors


@pytest.mark.parametrize("d", [1, 2, 3])
def test_kde_gaussian_kernel_converges_on_standard_normal(d):
    # Silverman's bandwidth h = (4/(d+2))^{1/(d+4)} N^{-1/(d+4)} (optimal rate for R^d), leave-one-out.
    # sd(-log p(x)) = sqrt(d/2) for N(0, I_d): sd of the mean <= 0.0135 at N = 8192; the smoothing
    # bias at this h is < 0.01 for d <= 3. Tolerance 0.05 = 3 sd + bias.
    n = 8192
    x = torch.randn(n, d, generator=_gen(d), dtype=torch.float32)
    h = (4 / (d + 2)) ** (1 / (d + 4)) * n ** (-1 / (d + 4))
    est = kde_entropy(x, "gaussian", bandwidth=h, leave_one_out=True, chunk_size="auto")
    truth = gaussian_entropy(torch.eye(d, dtype=F64))
    assert abs(float(est) - float(truth)) < 0.05


# --------------------------------------------------------------------------------------------
# The self-term ceiling: H_joe <= log N - log C_d(kappa) - kappa
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["joe", "plugin"])
@pytest.mark.parametrize("d,kappa", [(3, 10.0), (16, 2.0), (64, 30.0)])
def test_self_term_ceiling_holds(estimator, d, kappa):
    # with the self term, p(z_i) >= C_d(kappa) e^{kappa} / N, so every -log p(z_i) is below the
    # ceiling, and so are their mean (joe) and any weighted mean (plugin).
    n = 100
    ceiling = math.log(n) - float(special.vmf_log_normalizer(d, kappa)) - kappa
    for seed in range(3):
        z = torch.randn(n, d, generator=_gen(seed), dtype=F64)
        assert float(kde_entropy(z, kappa=kappa, estimator=estimator)) <= ceiling + 1e-12


def test_self_term_ceiling_gaussian():
    # Gaussian analogue: p(x_i) >= (2 pi h^2)^{-d/2} / N.
    n, d, h = 80, 4, 0.3
    x = torch.randn(n, d, generator=_gen(3), dtype=F64)
    ceiling = math.log(n) + 0.5 * d * math.log(2 * math.pi * h * h)
    for estimator in ("joe", "plugin"):
        assert float(kde_entropy(x, "gaussian", bandwidth=h, estimator=estimator)) <= ceiling + 1e-12


@pytest.mark.parametrize("estimator", ["joe", "plugin"])
def test_self_term_ceiling_nearly_attained_by_orthonormal_points(estimator):
    # N = d orthonormal vectors (a random rotation of the identity): every p(z_i) is
    # C_d(kappa) (e^kappa + (N - 1) e^0) / N, so the gap to the ceiling is exactly
    # log(1 + (N - 1) e^{-kappa}): 3e-21 at kappa = 50 (attained to round-off), 1.35 at kappa = 2.
    d = 16
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(4), dtype=F64))
    for kappa in (50.0, 2.0):
        ceiling = math.log(d) - float(special.vmf_log_normalizer(d, kappa)) - kappa
        gap = ceiling - float(kde_entropy(q, kappa=kappa, estimator=estimator))
        assert gap >= 0
        assert abs(gap - math.log1p((d - 1) * math.exp(-kappa))) < 1e-10


# --------------------------------------------------------------------------------------------
# Transcriptions of the formulas; chunked == dense
# --------------------------------------------------------------------------------------------


def _reference_log_density(z, kernel, kappa, bandwidth, leave_one_out):
    """The KDE written out term by term, in float64, without logsumexp tricks (small kappa only)."""
    n, d = z.shape
    if kernel == "vmf":
        z = z / z.norm(dim=1, keepdim=True)
        log_iv = float(special.log_iv(d / 2 - 1, kappa))
        log_c = (d / 2 - 1) * math.log(kappa) - (d / 2) * math.log(2 * math.pi) - log_iv
        kern = math.exp(log_c) * torch.exp(kappa * (z @ z.T))
    else:
        sq = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        kern = (2 * math.pi * bandwidth**2) ** (-d / 2) * torch.exp(-sq / (2 * bandwidth**2))
    if leave_one_out:
        kern = kern * (1 - torch.eye(n, dtype=z.dtype))
    return torch.log(kern.sum(dim=1) / (n - 1 if leave_one_out else n))


def _reference_entropy(log_p, estimator):
    if estimator == "joe":
        return -log_p.mean()
    p = torch.exp(log_p)
    w = p / p.sum()  # w_i = p(z_i) / sum_j p(z_j)
    return (w * -log_p).sum()


KERNEL_ARGS = {"vmf": dict(kappa=3.0), "gaussian": dict(bandwidth=0.9)}


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("estimator", ["joe", "plugin"])
@pytest.mark.parametrize("kernel", ["vmf", "gaussian"])
def test_matches_transcribed_formula(kernel, estimator, leave_one_out):
    z = torch.randn(40, 5, generator=_gen(6), dtype=F64) * 1.3
    kw = KERNEL_ARGS[kernel]
    ref_log_p = _reference_log_density(z, kernel, kw.get("kappa"), kw.get("bandwidth"), leave_one_out)
    torch.testing.assert_close(
        kde_log_density(z, kernel, leave_one_out=leave_one_out, **kw), ref_log_p, rtol=1e-12, atol=1e-12
    )
    ref = _reference_entropy(ref_log_p, estimator)
    got = kde_entropy(z, kernel, estimator=estimator, leave_one_out=leave_one_out, **kw)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert got.dim() == 0 and got.dtype == F64


def test_vmf_normalises_its_input():
    z = torch.randn(30, 4, generator=_gen(7), dtype=F64)
    scale = torch.rand(30, 1, generator=_gen(8), dtype=F64) * 5 + 0.1
    torch.testing.assert_close(kde_entropy(z * scale, kappa=4.0), kde_entropy(z, kappa=4.0), rtol=1e-12, atol=0)


def test_gaussian_kernel_is_translation_invariant_and_stable_far_from_the_origin():
    # centring before expanding |q - k|^2 keeps float32 accurate far from the origin
    x = torch.randn(200, 3, generator=_gen(9), dtype=F64)
    ref = kde_entropy(x, "gaussian", bandwidth=0.2)
    shifted = (x + 1e4).float()
    for chunk_size in (None, 64):
        got = kde_entropy(shifted, "gaussian", bandwidth=0.2, chunk_size=chunk_size)
        assert abs(float(got) - float(ref)) < 1e-3  # float32 rounding of x + 1e4 alone is ~1e-3 / 0.2


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("estimator", ["joe", "plugin"])
@pytest.mark.parametrize("kernel", ["vmf", "gaussian"])
def test_chunked_equals_dense(kernel, estimator, leave_one_out):
    n = 53  # prime: no chunk size below divides it
    kw = dict(KERNEL_ARGS[kernel], estimator=estimator, leave_one_out=leave_one_out)
    for dtype, rtol in ((F64, 1e-10), (torch.float32, 1e-5)):
        # float32: the chunks sum in a different order; 1e-5 relative is a few hundred ulps of
        # a 53-term sum, while any bug in the weights would show at O(1).
        z = torch.randn(n, 6, generator=_gen(10), dtype=dtype).requires_grad_()
        ref = kde_entropy(z, kernel, **kw)
        (g_ref,) = torch.autograd.grad(ref, z)
        for chunk_size in (1, 7, 16, n, 200, "auto"):
            got = kde_entropy(z, kernel, chunk_size=chunk_size, **kw)
            (g,) = torch.autograd.grad(got, z)
            torch.testing.assert_close(got, ref, rtol=rtol, atol=0)
            torch.testing.assert_close(g, g_ref, rtol=rtol, atol=rtol * float(g_ref.abs().max()))


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_cross_path_equals_dense(with_bias, leave_one_out):
    # The path taken with distributed=True (local queries, gathered keys, self term at row
    # offset + i) on one process; tests/test_dist.py runs it over two real processes.
    g = _gen(11)
    keys = torch.randn(23, 4, generator=g, dtype=F64, requires_grad=True)
    q = torch.randn(9, 4, generator=g, dtype=F64, requires_grad=True)
    bias = torch.randn(23, generator=g, dtype=F64, requires_grad=True) if with_bias else None
    args = (q, keys, bias) if with_bias else (q, keys)

    def chunked(*a):
        return entropy._lse(a[0], a[1], a[2] if with_bias else None, 0.7, 4, leave_one_out, 6)

    def dense(*a):
        return entropy._lse(a[0], a[1], a[2] if with_bias else None, 0.7, None, leave_one_out, 6)

    torch.testing.assert_close(chunked(*args), dense(*args), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(chunked, args)


def test_kde_log_density_shape_and_auto_chunk():
    z = torch.randn(300, 8, generator=_gen(12))
    log_p = kde_log_density(z, kappa=5.0, chunk_size="auto")
    assert log_p.shape == (300,) and log_p.dtype == torch.float32
    assert 1 <= entropy.auto_chunk_size(300, 300) <= 300
    assert entropy.auto_chunk_size(65536, 65536) * 65536 * 4 <= max(entropy.AUTO_CHUNK_BYTES, 65536 * 4)


# --------------------------------------------------------------------------------------------
# Discrete, kNN and Gaussian entropies
# --------------------------------------------------------------------------------------------


def test_discrete_entropy_closed_forms():
    k = 7
    uniform_rows = torch.full((5, k), 1 / k, dtype=F64)
    torch.testing.assert_close(discrete_entropy(uniform_rows), torch.tensor(math.log(k), dtype=F64))
    # one-hot rows spread evenly over the K classes also average to uniform
    spread = torch.eye(k, dtype=F64).repeat(3, 1)
    torch.testing.assert_close(discrete_entropy(spread), torch.tensor(math.log(k), dtype=F64))
    # all in one class: zero, with finite gradients despite the empty classes (0 log 0 = 0)
    one_hot = torch.zeros(6, k, dtype=F64)
    one_hot[:, 2] = 1
    one_hot.requires_grad_()
    h = discrete_entropy(one_hot)
    h.backward()
    assert float(h.detach()) == 0.0 and bool(torch.isfinite(one_hot.grad).all())
    # a known mixture: half the rows (1, 0, 0), half (0, 1/2, 1/2) -> pbar = (1/2, 1/4, 1/4), H = 1.5 log 2
    rows = torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5]] * 4, dtype=F64)
    torch.testing.assert_close(discrete_entropy(rows), torch.tensor(1.5 * math.log(2), dtype=F64))


def test_discrete_entropy_matches_batch_mean_formula():
    p = torch.softmax(torch.randn(50, 10, generator=_gen(13), dtype=F64) * 3, dim=1)
    pbar = p.mean(0)
    torch.testing.assert_close(discrete_entropy(p), -(pbar * pbar.log()).sum(), rtol=1e-14, atol=0)
    assert float(discrete_entropy(p)) <= math.log(10)


def _random_cov(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=_gen(seed), dtype=F64)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=F64)


# Tolerances for Kozachenko-Leonenko (k = 1) at N = 5000, from 8 seeds per case: on N(0, Sigma)
# the bias is 0.00-0.05 (growing with d) and the sd 0.025-0.045, so tolerance 0.05 + 4 sd = 0.2 would
# be generous; 0.15 (>= 3 sd + bias). A wrong c_d (sphere area instead of ball volume) or a wrong
# power of eps moves the estimate by >= log 2. On the cube the boundary bias (points near a face
# see part of their ball outside the support) decays like N^{-1/d}: 0.001 (d=1), 0.011 (d=2),
# 0.052 (d=3) with sd 0.014, 0.011, 0.022, so tolerances 0.06, 0.06, 0.15.
@pytest.mark.parametrize("d", [2, 3, 4, 5])
def test_knn_entropy_converges_on_gaussians(d):
    cov = _random_cov(d, d)
    x = torch.randn(5000, d, generator=_gen(100 + d), dtype=F64) @ torch.linalg.cholesky(cov).T
    assert abs(float(knn_entropy(x) - gaussian_entropy(cov))) < 0.15


@pytest.mark.parametrize("d,tol", [(1, 0.06), (2, 0.06), (3, 0.15)])
def test_knn_entropy_converges_on_the_unit_cube(d, tol):
    # uniform on [0, L]^d has entropy d log L (the estimator is scale-equivariant: L adds d log L)
    side = 2.5
    u = torch.rand(5000, d, generator=_gen(200 + d), dtype=F64) * side
    assert abs(float(knn_entropy(u)) - d * math.log(side)) < tol


def test_knn_entropy_formula_on_a_tiny_example():
    # three points on a line at 0, 1, 3: k = 1 distances 1, 1, 2
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=F64)
    expected = (
        torch.special.digamma(torch.tensor(3.0, dtype=F64))
        - torch.special.digamma(torch.tensor(1.0, dtype=F64))
        + math.log(2.0)  # c_1 = 2, the length of [-1, 1]
        + (1 / 3) * math.log(2.0)
    )
    torch.testing.assert_close(knn_entropy(x), expected)
    # k = 2: distances 3, 2, 3
    expected2 = (
        torch.special.digamma(torch.tensor(3.0, dtype=F64))
        - torch.special.digamma(torch.tensor(2.0, dtype=F64))
        + math.log(2.0)
        + (math.log(3) + math.log(2) + math.log(3)) / 3
    )
    torch.testing.assert_close(knn_entropy(x, k=2), expected2)


def test_knn_entropy_ties_and_duplicates():
    # equidistant neighbours (ties) are fine: the value only depends on the distance
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=F64)
    assert torch.isfinite(knn_entropy(x))
    # a duplicated point makes the 1st-neighbour distance 0: refused, with a message naming x
    dup = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 0.5]], dtype=F64)
    with pytest.raises(ValueError, match="x has duplicated points"):
        knn_entropy(dup)
    # ... but k above the multiplicity is well defined
    assert torch.isfinite(knn_entropy(dup, k=2))


def test_gaussian_entropy_closed_form():
    cov = _random_cov(4, 14)
    expected = 0.5 * torch.logdet(2 * math.pi * math.e * cov)
    torch.testing.assert_close(gaussian_entropy(cov), expected, rtol=1e-12, atol=0)
    batch = torch.stack([cov, torch.eye(4, dtype=F64) * 3.0])
    assert gaussian_entropy(batch).shape == (2,)
    expected_iso = torch.tensor(2 * math.log(2 * math.pi * math.e * 3.0), dtype=F64)  # 0.5 * 4 * log(2 pi e 3)
    torch.testing.assert_close(gaussian_entropy(batch)[1], expected_iso)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("estimator", ["joe", "plugin"])
@pytest.mark.parametrize("kernel", ["vmf", "gaussian"])
def test_kde_gradcheck(kernel, estimator, leave_one_out, chunk_size):
    z = torch.randn(12, 4, generator=_gen(15), dtype=F64, requires_grad=True)
    kw = dict(KERNEL_ARGS[kernel], estimator=estimator, leave_one_out=leave_one_out, chunk_size=chunk_size)
    assert torch.autograd.gradcheck(lambda t: kde_entropy(t, kernel, **kw), (z,))


def test_discrete_and_knn_gradcheck():
    logits = torch.randn(9, 5, generator=_gen(16), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: discrete_entropy(torch.softmax(t, dim=1)), (logits,))
    x = torch.randn(15, 3, generator=_gen(17), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: knn_entropy(t, k=2), (x,))
    cov = _random_cov(3, 18).requires_grad_()
    assert torch.autograd.gradcheck(lambda c: gaussian_entropy(0.5 * (c + c.T)), (cov,))


@pytest.mark.parametrize("chunk_size", [None, 16])
@pytest.mark.parametrize("kernel", ["vmf", "gaussian"])
def test_bf16_autocast_is_finite_and_computed_in_float32(kernel, chunk_size):
    z = torch.randn(64, 32, generator=_gen(19)).bfloat16().requires_grad_()
    kw = dict(KERNEL_ARGS[kernel], chunk_size=chunk_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = kde_entropy(z, kernel, estimator="plugin", **kw)
    h.backward()
    assert h.dtype == torch.float32 and torch.isfinite(h)
    assert z.grad.dtype == torch.bfloat16 and bool(torch.isfinite(z.grad).all())
    # the same bf16 numbers evaluated in float32 outside autocast: identical up to float32 round-off
    ref = kde_entropy(z.detach().float(), kernel, estimator="plugin", **kw)
    torch.testing.assert_close(h.detach(), ref, rtol=1e-6, atol=1e-6)

    p = torch.softmax(torch.randn(64, 10, generator=_gen(20)), dim=1).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hd = discrete_entropy(p)
        hk = knn_entropy(z)
    (hd + hk).backward()
    assert hd.dtype == hk.dtype == torch.float32
    assert bool(torch.isfinite(p.grad).all()) and torch.isfinite(hd) and torch.isfinite(hk)


@pytest.mark.parametrize("estimator", ["joe", "plugin"])
def test_float32_matches_float64_at_d_1000(estimator):
    # The README setting of the official code: log p(z_i) is about -2035 nats, almost all of it the
    # constant log C_d(kappa) - log N. Summing it inside the float32 terms put the plug-in estimate
    # 6e-4 to 1.4e-3 nats off (its softmax weights sum to 1 + 3e-7, times 2035 nats), while the
    # data-dependent part is known to 1e-5. One ulp of 2035 is 1.2e-4: we ask for less than that.
    z = torch.nn.functional.normalize(torch.randn(1000, 1000, generator=_gen(0)), dim=1)
    z32, z64 = z.clone().requires_grad_(), z.double().requires_grad_()
    h32 = kde_entropy(z32, kappa=10.0, estimator=estimator)
    h64 = kde_entropy(z64, kappa=10.0, estimator=estimator)
    assert h32.dtype == torch.float32 and abs(float(h32.detach()) - float(h64.detach())) < 1e-4
    # the gradient is that of float64 up to float32's error in the cosines z_i.z_j (d = 1000 terms):
    # 1.5e-4 relative (the uncentred plug-in gave 6.7e-4)
    (g32,) = torch.autograd.grad(h32, z32)
    (g64,) = torch.autograd.grad(h64, z64)
    assert float((g32.double() - g64).norm() / g64.norm()) < 3e-4


def test_plugin_centring_changes_neither_value_nor_gradient():
    # float64: the plug-in estimate equals the uncentred formula -sum_i w_i log p_i, gradient included
    z = torch.randn(40, 5, generator=_gen(24), dtype=F64).requires_grad_()
    for kernel in ("vmf", "gaussian"):
        h = kde_entropy(z, kernel, estimator="plugin", **KERNEL_ARGS[kernel])
        log_p = kde_log_density(z, kernel, **KERNEL_ARGS[kernel])
        ref = -(torch.softmax(log_p, dim=0) * log_p).sum()
        torch.testing.assert_close(h, ref, rtol=1e-13, atol=0)
        (g,), (g_ref,) = torch.autograd.grad(h, z), torch.autograd.grad(ref, z)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------------------------
# Bad input: a clear error naming the argument
# --------------------------------------------------------------------------------------------

Z = torch.randn(10, 3, generator=_gen(21))

KDE_BAD = [
    (dict(z=Z[0]), ValueError, "z must have shape"),  # wrong rank (1-D)
    (dict(z=Z[None]), ValueError, "z must have shape"),  # wrong rank (3-D)
    (dict(z=Z.numpy()), TypeError, "z must be a torch.Tensor"),
    (dict(z=Z.long()), TypeError, "z must be a floating-point"),
    (dict(z=torch.cat([Z[:9], torch.full((1, 3), float("nan"))])), ValueError, "z must contain only finite"),
    (dict(z=torch.cat([Z[:9], torch.full((1, 3), float("inf"))])), ValueError, "z must contain only finite"),
    (dict(z=Z[:1]), ValueError, "z needs at least 2 samples"),
    (dict(z=Z, kappa=0.0), ValueError, "kappa must be a finite number > 0"),
    (dict(z=Z, kappa=-1.0), ValueError, "kappa must be a finite number > 0"),
    (dict(z=Z, kappa=float("nan")), ValueError, "kappa"),
    (dict(z=Z, kappa="10"), TypeError, "kappa must be a real number"),
    (dict(z=Z, kappa=torch.tensor(3.0, requires_grad=True)), TypeError, "kappa must be a number"),
    (dict(z=Z, kernel="gaussian"), ValueError, "bandwidth is required"),
    (dict(z=Z, kernel="gaussian", bandwidth=0.0), ValueError, "bandwidth must be a finite number > 0"),
    (dict(z=Z, kernel="gaussian", bandwidth=-2.0), ValueError, "bandwidth must be a finite number > 0"),
    (dict(z=Z, bandwidth=1.0), ValueError, "bandwidth is only used with kernel='gaussian'"),
    (dict(z=Z, kernel="cauchy"), ValueError, "kernel must be one of"),
    (dict(z=Z, estimator="mean"), ValueError, "estimator must be one of"),
    (dict(z=Z, chunk_size=0), ValueError, "chunk_size must be an int >= 1"),
    (dict(z=Z, chunk_size=2.5), TypeError, "chunk_size must be an int"),
    (dict(z=Z, chunk_size="big"), ValueError, "chunk_size must be None, 'auto'"),
    # flags as text or numbers are refused, not coerced (bool("no") is True)
    (dict(z=Z, leave_one_out="no"), TypeError, "leave_one_out must be True or False, got 'no'"),
    (dict(z=Z, leave_one_out=None), TypeError, "leave_one_out must be True or False"),
    (dict(z=Z, leave_one_out=1), TypeError, "leave_one_out must be True or False"),
    (dict(z=Z, distributed="False"), TypeError, "distributed must be True or False, got 'False'"),
    # the sphere rule: a zero row has no direction (it was normalised to 0, "orthogonal" to all)
    (dict(z=torch.cat([Z[:9], torch.zeros(1, 3)])), ValueError, r"z has 1 row\(s\) of norm 0 .*rows 9"),
    (dict(z=Z.clone().index_fill_(0, torch.tensor([0, 4]), 0.0)), ValueError, r"z has 2 row\(s\).*rows 0, 4"),
]


@pytest.mark.parametrize("kwargs,error,message", KDE_BAD, ids=[m for _, _, m in KDE_BAD])
def test_kde_entropy_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        kde_entropy(**kwargs)


PROBS = torch.softmax(torch.randn(6, 4, generator=_gen(22)), dim=1)


@pytest.mark.parametrize(
    "probs,error,message",
    [
        (PROBS[0], ValueError, "probs must have shape"),
        (torch.randn(6, 4, generator=_gen(23)), ValueError, "probs rows must be probability vectors"),  # logits
        (PROBS * 1.1, ValueError, "summing to 1"),
        (PROBS - PROBS.mean(), ValueError, "probs rows must be probability vectors"),  # negative entries
        (torch.where(PROBS > 0.3, float("nan"), PROBS), ValueError, "probs must contain only finite"),
        ([[0.5, 0.5]], TypeError, "probs must be a torch.Tensor"),
    ],
)
def test_discrete_entropy_bad_input(probs, error, message):
    with pytest.raises(error, match=message):
        discrete_entropy(probs)


def test_discrete_entropy_refuses_a_flag_as_text():
    with pytest.raises(TypeError, match="distributed must be True or False, got 'no'"):
        discrete_entropy(PROBS, distributed="no")


@pytest.mark.parametrize(
    "x,k,error,message",
    [
        (Z[0], 1, ValueError, "x must have shape"),
        (Z[:1], 1, ValueError, "x needs at least 2 samples"),
        (Z, 0, ValueError, "k must be an int >= 1"),
        (Z, 1.0, TypeError, "k must be an int"),
        (Z, 10, ValueError, "k must be smaller than the number of samples"),
        (torch.cat([Z[:9], torch.full((1, 3), float("inf"))]), 1, ValueError, "x must contain only finite"),
    ],
)
def test_knn_entropy_bad_input(x, k, error, message):
    with pytest.raises(error, match=message):
        knn_entropy(x, k=k)


@pytest.mark.parametrize(
    "cov,error,message",
    [
        (torch.ones(3), ValueError, "cov must have shape"),
        (torch.ones(3, 2), ValueError, "cov must have shape"),
        (torch.tensor([[1.0, 0.5], [0.0, 1.0]]), ValueError, "cov must be symmetric"),
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]]), ValueError, "cov must be positive definite"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), ValueError, "cov must contain only finite"),
        (torch.eye(2, dtype=torch.long), TypeError, "cov must be a floating-point"),
    ],
)
def test_gaussian_entropy_bad_input(cov, error, message):
    with pytest.raises(error, match=message):
        gaussian_entropy(cov)


@pytest.mark.parametrize("arg, bad, error", [
    ("n_queries", 0, ValueError), ("n_queries", -1, ValueError), ("n_queries", 2.5, TypeError),
    ("n_queries", "3", TypeError), ("n_queries", None, TypeError), ("n_queries", True, TypeError),
    ("n_keys", 0, ValueError), ("n_keys", -1, ValueError), ("n_keys", float("nan"), TypeError),
    ("n_keys", "3", TypeError), ("n_keys", None, TypeError), ("n_keys", True, TypeError),
    ("dtype", None, TypeError), ("dtype", "float32", TypeError),
])
def test_auto_chunk_size_refuses_bad_arguments_by_name(arg, bad, error):
    # n_keys=0 divided by zero; n_queries=0, -1 or True were returned as a chunk size
    kw = dict(n_queries=64, n_keys=64, dtype=torch.float32)
    with pytest.raises(error, match=f"^{arg} must be a"):
        entropy.auto_chunk_size(**{**kw, arg: bad})


def test_auto_chunk_size_values():
    assert entropy.auto_chunk_size(64, 64) == 64
    assert entropy.auto_chunk_size(10**9, 1000, torch.float32) == entropy.AUTO_CHUNK_BYTES // 4000
    assert entropy.auto_chunk_size(10**9, 1000, torch.float64) == entropy.AUTO_CHUNK_BYTES // 8000
    assert entropy.auto_chunk_size(5, 10**12) == 1
