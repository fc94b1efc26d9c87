"""MI bounds and NT-Xent: closed forms, paper references, known-MI Gaussians, gradients, bad input.

Known-MI checks use the correlated Gaussians of Poole et al. (2019) with the analytic optimal
critic, so a bound is evaluated at its optimum without training; what remains is the bound's own
bias (its ceiling) and the sampling noise, and each tolerance below is sized from that noise.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mvssl_core import bounds, entropy, losses, synthetic
from mvssl_core.reconstruction import gaussian_log_likelihood, vmf_log_likelihood


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


# ----------------------------------------------------------------------------- reference implementations
# Written naively from the papers' formulas (python loops over samples, float64 math).


def _infonce_reference(s: torch.Tensor) -> float:
    """van den Oord et al. (2018) / Poole et al. (2019): log k + (1/k) sum_i log(e^{s_ii} / sum_j e^{s_ij})."""
    k = s.shape[0]
    total = 0.0
    for i in range(k):
        denominator = sum(math.exp(s[i, j].item()) for j in range(k))
        total += math.log(math.exp(s[i, i].item()) / denominator)
    return math.log(k) + total / k


def _nwj_reference(s: torch.Tensor) -> float:
    """Nguyen et al. (2010): E_joint[f] - e^{-1} E_marginals[e^f], marginals from the pairs i != j."""
    k = s.shape[0]
    joint = sum(s[i, i].item() for i in range(k)) / k
    marg = sum(math.exp(s[i, j].item()) for i in range(k) for j in range(k) if i != j) / (k * (k - 1))
    return joint - math.exp(-1) * marg


def _nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR (Chen et al. 2020), Algorithm 1, transcribed: views interleaved as z_{2k-1}, z_{2k}."""
    n = z1.shape[0]
    views = []
    for k in range(n):
        views += [z1[k], z2[k]]
    sim = lambda u, v: (u @ v).item() / (u.norm().item() * v.norm().item())  # noqa: E731

    def ell(i, j):
        denominator = sum(math.exp(sim(views[i], views[m]) / tau) for m in range(2 * n) if m != i)
        return -math.log(math.exp(sim(views[i], views[j]) / tau) / denominator)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def _align_reference(x, y, alpha=2.0):
    """Wang & Isola (2020), the loss as printed in their paper."""
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def _uniform_reference(x, t=2.0):
    """Wang & Isola (2020): pdist over the pairs i < j."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


# ----------------------------------------------------------------------------- InfoNCE


@pytest.mark.parametrize("k", [2, 5, 64])
@pytest.mark.parametrize("scale", [0.1, 3.0, 300.0])
def test_infonce_at_most_log_k_random(k, scale):
    for seed in range(5):
        s = scale * _randn(k, k, seed=seed)
        assert bounds.infonce(s).item() <= math.log(k)
    if scale < 100:  # exp() stays finite for the naive reference
        assert bounds.infonce(s).item() == pytest.approx(_infonce_reference(s), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("k", [2, 16, 256])
def test_infonce_adversarial_scores(k):
    s = _randn(k, k, seed=1)
    # A huge diagonal makes every row a certain classification: the bound approaches log k from
    # below, as log k - log(1 + sum_{j != i} e^{s_ij - s_ii}); at a margin of 1e4 that is log k
    # to double precision, never above it.
    huge = s + torch.diag(torch.full((k,), 1e4, dtype=torch.float64))
    assert bounds.infonce(huge).item() == pytest.approx(math.log(k), abs=1e-12)
    assert bounds.infonce(huge).item() <= math.log(k)
    # Scores that do not depend on j carry no information: exactly 0.
    assert bounds.infonce(_randn(k, 1, seed=2).expand(k, k)).item() == pytest.approx(0.0, abs=1e-12)
    # A very negative diagonal: large negative, finite (no overflow in float32 either).
    low = (s - torch.diag(torch.full((k,), 1e4, dtype=torch.float64))).float()
    assert torch.isfinite(bounds.infonce(low)) and bounds.infonce(low).item() < -1e3


@pytest.mark.parametrize("tau", [0.005, 0.1, 1.0])
def test_infonce_from_embeddings_is_infonce_of_cosine_scores(tau):
    z1, z2 = _randn(12, 5, seed=3), _randn(12, 5, seed=4)
    scores = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / tau
    got = bounds.infonce_from_embeddings(z1, z2, temperature=tau)
    assert got.item() == pytest.approx(bounds.infonce(scores).item(), rel=1e-12, abs=1e-12)
    assert got.item() <= math.log(12)
    # float32 with 1/tau up to 200 (> 88, where exp overflows float32): finite and accurate. The
    # float32 rounding of the cosines (~1e-7) is multiplied by 1/tau: tolerance 1e-4.
    got32 = bounds.infonce_from_embeddings(z1.float(), z2.float(), temperature=tau)
    assert got32.dtype == torch.float32 and got32.item() == pytest.approx(got.item(), abs=1e-4)


# ----------------------------------------------------------------------------- NWJ


def test_nwj_matches_reference():
    s = _randn(7, 7, seed=5)
    assert bounds.nwj(s).item() == pytest.approx(_nwj_reference(s), rel=1e-12)
    # A constant critic c: c - e^{c - 1} <= 0, maximal (= 0) at c = 1.
    assert bounds.nwj(torch.ones(5, 5, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-15)
    assert bounds.nwj(torch.full((5, 5), 3.0, dtype=torch.float64)).item() == pytest.approx(3 - math.e**2, rel=1e-14)


# ----------------------------------------------------------------------------- known MI: correlated Gaussians


def _gaussian_batches(mi: float, d: int, k: int, batches: int, seed: int):
    rho = synthetic.rho_from_mi(mi, d)
    g = _gen(seed)
    return rho, [synthetic.correlated_gaussians(k, d, rho, generator=g) for _ in range(batches)]


def test_infonce_and_nwj_near_mi_when_mi_is_small():
    # MI = 2 nats << log 1024 = 6.93, d = 20, optimal critics. Measured (seed 0): InfoNCE 1.97,
    # NWJ 1.99. Per batch of 1024 the standard deviations are 0.036 (InfoNCE) and 0.039 (NWJ);
    # 4 batches give standard errors of about 0.02. InfoNCE's own bias here is about
    # -(e^MI - 1) / k ~ -0.006. Tolerance 0.1 = 5 standard errors.
    mi, d, k = 2.0, 20, 1024
    rho, batches = _gaussian_batches(mi, d, k, batches=4, seed=0)
    infonce = sum(bounds.infonce(synthetic.gaussian_critic(x, y, rho)).item() for x, y in batches) / 4
    # NWJ's optimal critic is 1 + log p(y|x) / p(y).
    nwj = sum(bounds.nwj(1 + synthetic.gaussian_critic(x, y, rho)).item() for x, y in batches) / 4
    assert infonce == pytest.approx(mi, abs=0.1)
    assert nwj == pytest.approx(mi, abs=0.1)


def test_infonce_saturates_at_log_k_when_mi_is_large():
    # MI = 10 nats >> log 64 = 4.16: even the optimal critic cannot exceed log k. Measured (seed 0,
    # 16 batches of 64): 4.11, i.e. log k - 0.045 (per-batch std 0.04).
    mi, d, k = 10.0, 20, 64
    rho, batches = _gaussian_batches(mi, d, k, batches=16, seed=0)
    values = torch.tensor([bounds.infonce(synthetic.gaussian_critic(x, y, rho)).item() for x, y in batches])
    assert bool((values <= math.log(k)).all())
    assert values.mean().item() == pytest.approx(math.log(k), abs=0.3)
    assert values.max().item() < mi - 5


@pytest.mark.parametrize("mi, k", [(2.0, 1024), (10.0, 64)])
def test_er_reconstruction_at_true_density_is_unbiased(mi, k):
    # The ER bound H(Y) + E[log q(Y|X)] is tight at q = p(y|x). With the exact entropy
    # H(Y) = (d/2) log(2 pi e) of Y ~ N(0, I_20), the only estimate is the per-sample mean of
    # log p(y_i|x_i): unbiased, and it does NOT saturate at log k (at MI = 10 it is far above
    # log 64, where InfoNCE stops). The pointwise log-density has std about 2.4 (MI = 2) and 3.0
    # (MI = 10); with 8192 pairs the standard error is <= 0.033: tolerance 0.15 (4.5 s.e.).
    # Measured (seed 1): 2.05 and 10.09.
    d = 20
    rho, batches = _gaussian_batches(mi, d, k, batches=8192 // k, seed=1)
    h_y = 0.5 * d * math.log(2 * math.pi * math.e)
    rec = torch.cat([synthetic.gaussian_conditional_log_density(y, x, rho) for x, y in batches]).mean().item()
    assert h_y + rec == pytest.approx(mi, abs=0.15)
    if mi > math.log(k):
        assert h_y + rec > math.log(k) + 5


def test_er_with_kde_entropy_near_mi_in_low_dimension():
    # In d = 1 a Gaussian KDE estimates H(Y) well. er_bound with kernel="gaussian", q(y|x) with
    # mean rho x and bandwidth sqrt(1 - rho^2) (the true conditional) and the KDE at that same
    # bandwidth (self term included): MI = 1 nat, k = 1024 (measured, seed 0: 1.002). The KDE
    # entropy is biased up by the kernel smoothing (entropy of N(0, 1 + h^2): +0.5 log(1 + h^2)
    # = +0.06) and down by the self term; the batch noise is about 0.03. Measured over seeds 0-4:
    # 0.97 to 1.04. Tolerance 0.12.
    d, mi, k = 1, 1.0, 1024
    rho = synthetic.rho_from_mi(mi, d)
    x, y = synthetic.correlated_gaussians(k, d, rho, generator=_gen(0))
    terms = bounds.er_bound(rho * x, y, kernel="gaussian", bandwidth=math.sqrt(1 - rho**2))
    # The reconstruction term is exactly the mean true conditional log-density.
    rec = synthetic.gaussian_conditional_log_density(y, x, rho).mean()
    assert terms.reconstruction.item() == pytest.approx(rec.item(), rel=1e-12)
    assert terms.bound.item() == pytest.approx(mi, abs=0.12)


@pytest.mark.parametrize("d, k", [(1, 64), (20, 64), (20, 1024)])
def test_er_with_kde_entropy_saturates_at_log_k(d, k):
    # MI = 10 nats. The Gaussian KDE of k samples, self term included, is at most its value when
    # every sample sees only itself: H_kde <= log k - log N(0; 0, h^2 I) = log k + (d/2) log(2 pi h^2).
    # With q of the same bandwidth, E log q <= log N(0; 0, h^2 I), so ER <= log k whatever the MI.
    # At h = sqrt(1 - rho^2) (the true conditional's std, small when MI is large) the samples are
    # h-isolated: H_kde sits on its ceiling, and the reconstruction term, -(d/2) log(2 pi h^2) -
    # |y - rho x|^2 / (2 h^2), averages -(d/2) log(2 pi h^2) - d/2. So ER ~ log k - d/2:
    # saturated below log k in d = 1, and far below the MI in d = 20 (a KDE in 20 dimensions).
    # Measured (seed 0): d = 1, k = 64: 3.75 (log k - d/2 = 3.66); d = 20: -6.15 and -3.04
    # (log k - d/2 = -5.84 and -3.07).
    mi = 10.0
    rho = synthetic.rho_from_mi(mi, d)
    h = math.sqrt(1 - rho**2)
    x, y = synthetic.correlated_gaussians(k, d, rho, generator=_gen(0))
    terms = bounds.er_bound(rho * x, y, kernel="gaussian", bandwidth=h)
    ceiling = math.log(k) + 0.5 * d * math.log(2 * math.pi * h * h)
    assert terms.entropy.item() <= ceiling + 1e-9
    assert terms.entropy.item() == pytest.approx(ceiling, abs=1e-3)  # saturated
    assert terms.bound.item() <= math.log(k)
    # |y - rho x|^2 / h^2 is chi^2_d: the mean over k has std sqrt(2 d / k) / 2 <= 0.3 here.
    assert terms.bound.item() == pytest.approx(math.log(k) - d / 2, abs=1.0)
    assert terms.bound.item() < mi - 5


# ----------------------------------------------------------------------------- ER (continuous)


@pytest.mark.parametrize("estimator", ["joe", "plugin"])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_er_bound_vmf_terms(estimator, leave_one_out):
    z1, z2 = _randn(10, 6, seed=6), _randn(10, 6, seed=7)
    terms = bounds.er_bound(z1, z2, kappa=4.0, estimator=estimator, leave_one_out=leave_one_out)
    h = entropy.kde_entropy(z2, kappa=4.0, estimator=estimator, leave_one_out=leave_one_out)
    assert terms.entropy.item() == pytest.approx(h.item(), rel=1e-12)
    assert terms.reconstruction.item() == pytest.approx(vmf_log_likelihood(z2, z1, kappa=4.0).item(), rel=1e-12)
    assert terms.bound.item() == pytest.approx(terms.entropy.item() + terms.reconstruction.item(), rel=1e-12)
    chunked = bounds.er_bound(z1, z2, kappa=4.0, estimator=estimator, leave_one_out=leave_one_out, chunk_size=3)
    assert chunked.bound.item() == pytest.approx(terms.bound.item(), rel=1e-10)


@pytest.mark.parametrize("kappa", [1.0, 10.0, 50.0])
def test_er_bound_vmf_ceiling_log_n(kappa):
    # Joe's KDE with the self term: H <= log N - log C_d(kappa) - kappa; the vMF log-likelihood
    # is <= log C_d(kappa) + kappa. Hence ER <= log N for any inputs.
    n, d = 16, 16
    for seed in range(3):
        z1, z2 = _randn(n, d, seed=seed), _randn(n, d, seed=seed + 10)
        assert bounds.er_bound(z1, z2, kappa=kappa).bound.item() <= math.log(n) + 1e-9
    # Attained for z1 = z2 = orthonormal rows: every cosine between different rows is 0, so
    # ER = log N - log(1 + (N - 1) e^{-kappa}) exactly.
    eye = torch.eye(n, d, dtype=torch.float64)
    value = bounds.er_bound(eye, eye, kappa=kappa).bound.item()
    assert value == pytest.approx(math.log(n) - math.log1p((n - 1) * math.exp(-kappa)), abs=1e-10)


def test_er_bound_gaussian_relates_to_alignment_and_uniformity():
    # Wang & Isola's losses from ER (facts.md: Gaussian kernel, q ~ exp(-|z1 - z2|^2)).
    # Gaussian KDE and q of bandwidth h, t = 1 / (2 h^2) (t = 2 <-> h = 1/2), N samples in R^d:
    #   Rec   = mean_i log N(z2_i; z1_i, h^2 I) = -(d/2) log(2 pi h^2) - t * align(z1, z2)   (exact)
    #   H_joe = -(1/N) sum_i log[(1/N) sum_j N(z2_i; z2_j, h^2 I)]
    #         = (d/2) log(2 pi h^2) - (1/N) sum_i log m_i,   m_i = mean_j exp(-t |z2_i - z2_j|^2)
    # (self term j = i included). Jensen (log is concave): (1/N) sum_i log m_i <= log mean_i m_i
    # = U_all, the uniformity over all N^2 pairs, related to Wang & Isola's i != j version U by
    # U_all = log(1/N + (N - 1)/N e^U). So H_joe - (d/2) log(2 pi h^2) >= -U_all, and the ER loss
    # -ER = -H - Rec <= t * align + U_all: minimising t * align + uniformity minimises an upper
    # bound of the ER loss, with equality when every m_i is the same.
    n, d, h = 48, 8, 0.5
    t = 1 / (2 * h * h)
    c = 0.5 * d * math.log(2 * math.pi * h * h)
    z1 = F.normalize(_randn(n, d, seed=8), dim=1)
    z2 = F.normalize(z1 + 0.3 * _randn(n, d, seed=9), dim=1)
    terms = bounds.er_bound(z1, z2, kernel="gaussian", bandwidth=h)
    align = bounds.alignment(z1, z2)
    assert terms.reconstruction.item() == pytest.approx(-c - t * align.item(), rel=1e-12)

    u = bounds.uniformity(z2, t=t)
    u_all = math.log(1 / n + (n - 1) / n * math.exp(u.item()))
    sq = torch.cdist(z2, z2).pow(2)
    assert u_all == pytest.approx(torch.logsumexp(-t * sq.flatten(), 0).item() - 2 * math.log(n), rel=1e-10)
    assert terms.entropy.item() - c >= -u_all
    assert -terms.bound.item() <= t * align.item() + u_all
    # Jensen is tight for a configuration where every m_i is equal: the 2d points +-e_i.
    cross = torch.cat([torch.eye(d), -torch.eye(d)]).double()
    h_cross = bounds.er_bound(cross, cross, kernel="gaussian", bandwidth=h).entropy.item()
    u_cross = bounds.uniformity(cross, t=t).item()
    m = 2 * d
    assert h_cross - c == pytest.approx(-math.log(1 / m + (m - 1) / m * math.exp(u_cross)), rel=1e-12)


# ----------------------------------------------------------------------------- ER (discrete)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("target_temperature", [None, 0.04])
def test_er_bound_discrete_matches_definition(symmetric, target_temperature):
    l1, l2 = _randn(9, 5, seed=10), _randn(9, 5, seed=11)
    tau = 0.5
    tau_t = tau if target_temperature is None else target_temperature
    terms = bounds.er_bound_discrete(
        l1, l2, temperature=tau, target_temperature=target_temperature, symmetric=symmetric
    )

    def plug_in(w):
        pbar = w.mean(0)
        return -(pbar * pbar.log()).sum().item()

    w1, w2 = torch.softmax(l1 / tau_t, 1), torch.softmax(l2 / tau_t, 1)
    rec21 = (w2 * torch.log_softmax(l1 / tau, 1)).sum(1).mean().item()
    rec12 = (w1 * torch.log_softmax(l2 / tau, 1)).sum(1).mean().item()
    h = (plug_in(w1) + plug_in(w2)) / 2 if symmetric else plug_in(w2)
    rec = (rec12 + rec21) / 2 if symmetric else rec21
    assert terms.entropy.item() == pytest.approx(h, rel=1e-12)
    assert terms.reconstruction.item() == pytest.approx(rec, rel=1e-12)
    assert terms.bound.item() == pytest.approx(h + rec, rel=1e-12)
    assert terms.bound.item() <= math.log(5)  # H <= log K, reconstruction <= 0


def test_er_bound_discrete_closed_forms():
    k = 8
    # Confident, distinct, agreeing assignments (sample i -> prototype i): H = log K exactly
    # (the batch mean is uniform by symmetry), reconstruction = sum w log w ~ -50 (K-1) e^{-50}.
    logits = 5.0 * torch.eye(k, dtype=torch.float64)
    terms = bounds.er_bound_discrete(logits, logits, temperature=0.1)
    assert terms.entropy.item() == pytest.approx(math.log(k), rel=1e-14)
    assert terms.bound.item() == pytest.approx(math.log(k), abs=1e-15 + 1e-12)
    # Collapse (every sample the same assignment w): H = H(w) and reconstruction = sum w log w
    # = -H(w), so the bound is exactly 0.
    collapsed = _randn(1, k, seed=12).expand(6, k)
    assert bounds.er_bound_discrete(collapsed, collapsed, temperature=0.3).bound.item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- ER (discrete, multi-crop)


def _multicrop_loop(preds, targets, pairs, tau, tau_t, entropy_branch):
    """The multi-crop bound as a loop of one-direction er_bound_discrete calls, one per pair."""
    terms = [
        bounds.er_bound_discrete(
            preds[v], targets[a], temperature=tau, target_temperature=tau_t, symmetric=False
        )
        for a, v in pairs
    ]
    rec = torch.stack([t.reconstruction for t in terms]).mean()
    if entropy_branch == "target":
        h = torch.stack([t.entropy for t in terms]).mean()
    else:
        h = torch.stack([entropy.discrete_entropy(torch.softmax(preds[a] / tau, 1)) for a, _ in pairs]).mean()
    return h, rec


def _default_pairs(n_targets, n_crops):
    return [(a, v) for a in range(n_targets) for v in range(n_crops) if v != a]


@pytest.mark.parametrize(
    "n_targets, n_crops, pairs",
    [
        (1, 2, None),
        (2, 3, None),
        (2, 10, None),  # DINO's multi-crop: 18 pairs
        (3, 4, [(0, 1), (0, 1), (2, 0), (1, 3), (2, 2)]),  # explicit, with a repeated pair and a == v
    ],
)
@pytest.mark.parametrize("shared", [False, True])  # targets are the predicting crops' own logits (SwAV)
@pytest.mark.parametrize("target_temperature", [None, 0.04])
@pytest.mark.parametrize("entropy_branch", ["target", "prediction"])
def test_er_bound_discrete_multicrop_equals_loop_of_pairs(
    n_targets, n_crops, pairs, shared, target_temperature, entropy_branch
):
    n, k, tau = 7, 6, 0.3
    preds = [(2 * _randn(n, k, seed=70 + i)).requires_grad_() for i in range(n_crops)]
    targets = preds[:n_targets] if shared else [_randn(n, k, seed=90 + a).requires_grad_() for a in range(n_targets)]
    terms = bounds.er_bound_discrete_multicrop(
        preds, targets, pairs, temperature=tau, target_temperature=target_temperature, entropy_branch=entropy_branch
    )
    leaves = preds + ([] if shared else targets)
    grads = torch.autograd.grad(terms.bound, leaves, allow_unused=True, materialize_grads=True)
    pairs = _default_pairs(n_targets, n_crops) if pairs is None else pairs
    h, rec = _multicrop_loop(preds, targets, pairs, tau, target_temperature or tau, entropy_branch)
    expected_grads = torch.autograd.grad(h + rec, leaves, allow_unused=True, materialize_grads=True)
    assert terms.entropy.item() == pytest.approx(h.item(), rel=1e-12)
    assert terms.reconstruction.item() == pytest.approx(rec.item(), rel=1e-12)
    assert terms.bound.item() == pytest.approx((h + rec).item(), rel=1e-12)
    for g, ge in zip(grads, expected_grads):
        torch.testing.assert_close(g, ge, rtol=1e-10, atol=1e-14)


def test_er_bound_discrete_multicrop_float32_dino_sized():
    """float32, K = 4096, 2 teacher and 10 student crops: the per-crop path agrees to float32 rounding."""
    n, k = 16, 4096
    preds = [(3 * _randn(n, k, seed=110 + i, dtype=torch.float32)) for i in range(10)]
    targets = [(3 * _randn(n, k, seed=130 + a, dtype=torch.float32)) for a in range(2)]
    for branch in ("target", "prediction"):
        terms = bounds.er_bound_discrete_multicrop(
            preds, targets, temperature=0.1, target_temperature=0.04, entropy_branch=branch
        )
        h, rec = _multicrop_loop(preds, targets, _default_pairs(2, 10), 0.1, 0.04, branch)
        assert terms.entropy.dtype == torch.float32
        assert terms.entropy.item() == pytest.approx(h.item(), rel=1e-5)
        assert terms.reconstruction.item() == pytest.approx(rec.item(), rel=1e-5)


def test_er_bound_discrete_multicrop_closed_form_and_symmetric_case():
    # two crops, pairs both ways: the symmetric er_bound_discrete
    l1, l2 = _randn(9, 5, seed=150), _randn(9, 5, seed=151)
    sym = bounds.er_bound_discrete(l1, l2, temperature=0.5, target_temperature=0.2)
    multi = bounds.er_bound_discrete_multicrop([l1, l2], [l1, l2], temperature=0.5, target_temperature=0.2)
    assert multi.bound.item() == pytest.approx(sym.bound.item(), rel=1e-12)
    assert multi.entropy.item() == pytest.approx(sym.entropy.item(), rel=1e-12)
    # every crop collapsed onto one assignment w: H(w) - H(w) = 0 over every pair
    collapsed = _randn(1, 8, seed=152).expand(6, 8)
    terms = bounds.er_bound_discrete_multicrop([collapsed] * 5, [collapsed] * 2, temperature=0.3)
    assert terms.bound.item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- alignment and uniformity


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_alignment_matches_wang_isola(alpha):
    z1, z2 = F.normalize(_randn(10, 4, seed=13), dim=1), F.normalize(_randn(10, 4, seed=14), dim=1)
    expected = _align_reference(z1, z2, alpha).item()
    assert bounds.alignment(z1, z2, alpha=alpha).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t", [0.5, 2.0, 10.0])
def test_uniformity_matches_wang_isola(t):
    z = F.normalize(_randn(20, 5, seed=15), dim=1)
    assert bounds.uniformity(z, t=t).item() == pytest.approx(_uniform_reference(z, t).item(), rel=1e-10)
    # Collapsed embeddings: every distance 0, the maximum 0 (no uniformity at all).
    assert bounds.uniformity(z[:1].expand(7, 5), t=t).item() == pytest.approx(0.0, abs=1e-12)
    # Far-apart points: the naive exp underflows to 0 and its log to -inf; log space stays finite.
    far = 100.0 * torch.eye(4, dtype=torch.float64)
    assert bounds.uniformity(far, t=t).item() == pytest.approx(-t * 2e4, rel=1e-12)


# ----------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("n", [2, 3, 8, 33])
@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nt_xent_collapsed_is_log_2n_minus_1(n, tau, dtype):
    z = _randn(1, 6, seed=16, dtype=dtype).expand(n, 6) * 3.0
    value = losses.nt_xent(z, z, temperature=tau)
    # Every logit equals 1/tau; logsumexp over 2N - 1 equal entries minus one of them: the only
    # error is the rounding of 1/tau + log(2N - 1) - 1/tau, a few ulps of 1/tau (<= 20).
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert value.item() == pytest.approx(math.log(2 * n - 1), abs=tol)


@pytest.mark.parametrize("n", [2, 5, 9])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_simclr_reference(n, tau):
    z1, z2 = _randn(n, 4, seed=17), _randn(n, 4, seed=18)
    assert losses.nt_xent(z1, z2, temperature=tau).item() == pytest.approx(_nt_xent_reference(z1, z2, tau), rel=1e-11)


def test_nt_xent_small_temperature_float32():
    # 1/tau = 500 in float32: a naive exp(sim / tau) overflows (e^500); the logsumexp does not.
    z1, z2 = _randn(16, 8, seed=19), _randn(16, 8, seed=20)
    ref = losses.nt_xent(z1, z2, temperature=0.002).item()
    got = losses.nt_xent(z1.float(), z2.float(), temperature=0.002)
    assert torch.isfinite(got) and got.item() == pytest.approx(ref, rel=1e-4)


# ----------------------------------------------------------------------------- gradients


def _gradcheck_cases():
    z = lambda seed, n=5, d=3: _randn(n, d, seed=seed).requires_grad_()  # noqa: E731
    return {
        "infonce": (bounds.infonce, (z(20, 4, 4),)),
        "infonce_from_embeddings": (lambda a, b: bounds.infonce_from_embeddings(a, b, temperature=0.5), (z(21), z(22))),
        "nwj": (bounds.nwj, (z(23, 4, 4),)),
        "er_vmf_joe": (lambda a, b: bounds.er_bound(a, b, kappa=3.0).bound, (z(24), z(25))),
        "er_vmf_plugin_loo": (
            lambda a, b: bounds.er_bound(a, b, kappa=3.0, estimator="plugin", leave_one_out=True).bound,
            (z(26), z(27)),
        ),
        "er_gaussian": (lambda a, b: bounds.er_bound(a, b, kernel="gaussian", bandwidth=0.8).bound, (z(28), z(29))),
        "er_discrete": (lambda a, b: bounds.er_bound_discrete(a, b, temperature=0.7).bound, (z(30, 5, 4), z(31, 5, 4))),
        "er_discrete_multicrop": (
            lambda a, b, c: bounds.er_bound_discrete_multicrop(
                [a, b, c], [a, b], temperature=0.7, target_temperature=0.3
            ).bound,
            (z(45, 5, 4), z(46, 5, 4), z(47, 5, 4)),
        ),
        "er_discrete_multicrop_prediction_entropy": (
            lambda a, b, c, t: bounds.er_bound_discrete_multicrop(
                [a, b, c], [t], temperature=0.7, entropy_branch="prediction"
            ).bound,
            (z(48, 5, 4), z(49, 5, 4), z(50, 5, 4), z(51, 5, 4)),
        ),
        "er_discrete_asym": (
            lambda a, b: bounds.er_bound_discrete(a, b, temperature=0.7, target_temperature=0.3, symmetric=False).bound,
            (z(32, 5, 4), z(33, 5, 4)),
        ),
        "alignment": (bounds.alignment, (z(34), z(35))),
        "alignment_alpha1": (lambda a, b: bounds.alignment(a, b, alpha=1.0), (z(36), z(37))),
        "uniformity": (bounds.uniformity, (z(38),)),
        "nt_xent": (lambda a, b: losses.nt_xent(a, b, temperature=0.5), (z(39), z(40))),
        "vmf_log_likelihood": (lambda a, b: vmf_log_likelihood(a, b, kappa=2.0), (z(41), z(42))),
        "gaussian_log_likelihood": (lambda a, b: gaussian_log_likelihood(a, b, 0.7), (z(43), z(44))),
    }


@pytest.mark.parametrize("name", list(_gradcheck_cases()))
def test_gradcheck_float64(name):
    fn, inputs = _gradcheck_cases()[name]
    assert torch.autograd.gradcheck(fn, inputs)


def _bf16_cases():
    return {
        "infonce": (bounds.infonce, 1),
        "nwj": (bounds.nwj, 1),
        "infonce_from_embeddings": (lambda a, b: bounds.infonce_from_embeddings(a, b, temperature=0.01), 2),
        "er_vmf": (lambda a, b: bounds.er_bound(a, b, kappa=10.0).bound, 2),
        "er_vmf_plugin": (lambda a, b: bounds.er_bound(a, b, kappa=10.0, estimator="plugin").bound, 2),
        "er_gaussian": (lambda a, b: bounds.er_bound(a, b, kernel="gaussian", bandwidth=0.3).bound, 2),
        "er_discrete": (lambda a, b: bounds.er_bound_discrete(a, b, temperature=0.01).bound, 2),
        "er_discrete_multicrop": (
            lambda a, b, c: bounds.er_bound_discrete_multicrop([a, b, c], [a, b], temperature=0.01).bound,
            3,
        ),
        "alignment": (bounds.alignment, 2),
        "uniformity": (bounds.uniformity, 1),
        "nt_xent": (lambda a, b: losses.nt_xent(a, b, temperature=0.01), 2),
    }


@pytest.mark.parametrize("name", list(_bf16_cases()))
def test_bf16_autocast_finite(name):
    fn, n_inputs = _bf16_cases()[name]
    inputs = [
        (3 * _randn(32, 32, seed=50 + i, dtype=torch.float32)).bfloat16().requires_grad_() for i in range(n_inputs)
    ]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = fn(*inputs)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    for x in inputs:
        assert x.grad.dtype == torch.bfloat16 and bool(torch.isfinite(x.grad).all())


# ----------------------------------------------------------------------------- bad input

_A = _randn(4, 3, seed=60)
_B = _randn(4, 3, seed=61)
_NAN = _A.masked_fill(_A > 0, float("nan"))
_INF = _A.masked_fill(_A > 0, float("inf"))


@pytest.mark.parametrize(
    "call, error, match",
    [
        # scores
        (lambda: bounds.infonce(_A), ValueError, "scores"),  # not square
        (lambda: bounds.infonce(_A[0]), ValueError, "scores"),  # rank 1
        (lambda: bounds.infonce(_A[:1, :1]), ValueError, "scores"),  # k = 1
        (lambda: bounds.infonce(_NAN[:3, :3]), ValueError, "scores"),
        (lambda: bounds.nwj(_INF[:3, :3]), ValueError, "scores"),
        (lambda: bounds.nwj([[1.0, 2.0], [3.0, 4.0]]), TypeError, "scores"),
        (lambda: bounds.nwj(torch.ones(3, 3, dtype=torch.long)), TypeError, "scores"),
        # embeddings
        (lambda: bounds.infonce_from_embeddings(_A, _B[:, :2]), ValueError, "z1 and z2"),
        (lambda: bounds.infonce_from_embeddings(_A, _B[:3]), ValueError, "z1 and z2"),
        (lambda: bounds.infonce_from_embeddings(_A[:1], _B[:1]), ValueError, "z1"),
        (lambda: bounds.infonce_from_embeddings(_A.unsqueeze(0), _B.unsqueeze(0)), ValueError, "z1"),
        (lambda: bounds.infonce_from_embeddings(_A, _NAN), ValueError, "z2"),
        (lambda: bounds.infonce_from_embeddings(_A, _B, temperature=0.0), ValueError, "temperature"),
        (lambda: bounds.infonce_from_embeddings(_A, _B, temperature=-0.1), ValueError, "temperature"),
        (lambda: losses.nt_xent(_A, _B, temperature=0.0), ValueError, "temperature"),
        (lambda: losses.nt_xent(_A[:1], _B[:1]), ValueError, "z1"),
        (lambda: losses.nt_xent(_A, _B.T), ValueError, "z1 and z2"),
        (lambda: losses.nt_xent(_INF, _B), ValueError, "z1"),
        (lambda: losses.nt_xent(_A[0], _B[0]), ValueError, "z1"),
        (lambda: bounds.er_bound(_A, _B, kappa=0.0), ValueError, "kappa"),
        (lambda: bounds.er_bound(_A, _B, kappa=-2.0), ValueError, "kappa"),
        (lambda: bounds.er_bound(_A, _B, kernel="gaussian"), ValueError, "bandwidth"),
        (lambda: bounds.er_bound(_A, _B, kernel="gaussian", bandwidth=0.0), ValueError, "bandwidth"),
        (lambda: bounds.er_bound(_A, _B, kernel="laplace"), ValueError, "kernel"),
        (lambda: bounds.er_bound(_A, _B, estimator="mean"), ValueError, "estimator"),
        (lambda: bounds.er_bound(_A[:1], _B[:1]), ValueError, "z1"),
        (lambda: bounds.er_bound(_A, _B[:2]), ValueError, "z1 and z2"),
        (lambda: bounds.er_bound(_NAN, _B), ValueError, "z1"),
        (lambda: bounds.er_bound_discrete(_A, _B, temperature=0.0), ValueError, "temperature"),
        (lambda: bounds.er_bound_discrete(_A, _B, target_temperature=-1.0), ValueError, "target_temperature"),
        (lambda: bounds.er_bound_discrete(_A, _B[:, :2]), ValueError, "logits1 and logits2"),
        (lambda: bounds.er_bound_discrete(_A[:1], _B[:1]), ValueError, "logits1"),
        (lambda: bounds.er_bound_discrete(_A, _INF), ValueError, "logits2"),
        (lambda: bounds.er_bound_discrete_multicrop(_A, [_B]), TypeError, "logits"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B], []), TypeError, "target_logits"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B[:, :2]], [_A]), ValueError, r"logits\[0\] and logits\[1\]"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B], [_A[:, :2]]), ValueError, "target_logits"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _INF], [_A]), ValueError, r"logits\[1\]"),
        (lambda: bounds.er_bound_discrete_multicrop([_A[:1], _B[:1]], [_A[:1]]), ValueError, r"logits\[0\]"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B], [_A], pairs=[]), ValueError, "pairs"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B], [_A], pairs=[(1, 0)]), ValueError, "pairs"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B], [_A], pairs=[(0, 2)]), ValueError, "pairs"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B], [_A], pairs=[(0, 1, 2)]), ValueError, "pairs"),
        (lambda: bounds.er_bound_discrete_multicrop([_A], [_A, _B], pairs=[(1, 0)], entropy_branch="prediction"),
         ValueError, "entropy_branch"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B], [_A], entropy_branch="both"), ValueError, "entropy_branch"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B], [_A], temperature=0.0), ValueError, "temperature"),
        (lambda: bounds.er_bound_discrete_multicrop([_A, _B], [_A], target_temperature=0.0), ValueError,
         "target_temperature"),
        (lambda: bounds.alignment(_A, _B, alpha=0.0), ValueError, "alpha"),
        (lambda: bounds.alignment(_A, _B[:3]), ValueError, "z1 and z2"),
        (lambda: bounds.uniformity(_A, t=0.0), ValueError, "t"),
        (lambda: bounds.uniformity(_A[:1]), ValueError, "z"),
        (lambda: bounds.uniformity(_A[0]), ValueError, "z"),
        (lambda: bounds.uniformity(_NAN), ValueError, "z"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
