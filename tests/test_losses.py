"""Method losses against references transcribed from the papers' pseudo-code, and closed forms.

BYOL: 2 - 2 cos. DINO: Algorithm 1 of Caron et al. (2021) and its multi-crop loop. SwAV: the
Sinkhorn-Knopp pseudo-code of Caron et al. (2020), Appendix A, in the exponential domain, and the
swapped-prediction loop. DeepCluster-v2: cross-entropy to hard assignments. Closed forms: uniform
predictions give log K; identical inputs give a BYOL loss of 0. Gradients are compared with the
references' autograd gradients (float64).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mvssl_core import losses


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread is faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- references


def _byol_reference(p, z):
    """Grill et al. (2020), Eq. 2: || p/|p| - z/|z| ||^2, averaged over the batch."""
    total = 0.0
    for i in range(p.shape[0]):
        a = p[i] / p[i].norm()
        b = z[i] / z[i].norm()
        total = total + ((a - b) ** 2).sum()
    return total / p.shape[0]


def _dino_H(t, s, center, tps, tpt):
    """DINO Algorithm 1: H(t, s) = -(softmax((t - C)/tpt) * log softmax(s/tps)).sum(1).mean()."""
    t = t.detach()
    s = torch.softmax(s / tps, dim=1)
    t = torch.softmax((t - center) / tpt, dim=1)
    return -(t * torch.log(s)).sum(dim=1).mean()


def _dino_reference(student, teacher, center, tps, tpt):
    """The official multi-crop loop: every (teacher crop iq, student crop v != iq), averaged."""
    total, n_terms = 0.0, 0
    for iq, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == iq:
                continue
            total = total + _dino_H(t, s, center, tps, tpt)
            n_terms += 1
    return total / n_terms


def _sinkhorn_reference(scores, eps, niters):
    """SwAV (Caron et al. 2020), Appendix A pseudo-code, exponential domain, transcribed."""
    Q = torch.exp(scores / eps).T  # K x B
    Q = Q / Q.sum()
    K, B = Q.shape
    r = torch.ones(K, dtype=Q.dtype) / K
    c = torch.ones(B, dtype=Q.dtype) / B
    for _ in range(niters):
        u = Q.sum(dim=1)
        Q = Q * (r / u).unsqueeze(1)
        Q = Q * (c / Q.sum(dim=0)).unsqueeze(0)
    return (Q / Q.sum(dim=0, keepdim=True)).T


def _swav_reference(scores, codes, temperature):
    """SwAV's training loop: for each coded crop, the mean over the other crops of -sum q log p."""
    loss = 0.0
    for i, q in enumerate(codes):
        subloss = 0.0
        for v in range(len(scores)):
            if v == i:
                continue
            p = torch.softmax(scores[v] / temperature, dim=1)
            subloss = subloss - torch.mean(torch.sum(q * torch.log(p), dim=1))
        loss = loss + subloss / (len(scores) - 1)
    return loss / len(codes)


# ----------------------------------------------------------------------------- BYOL


@pytest.mark.parametrize("n,d", [(1, 2), (7, 5), (32, 64)])
def test_byol_loss_matches_reference_and_gradient(n, d):
    p = _randn(n, d, seed=1).requires_grad_(True)
    z = _randn(n, d, seed=2)
    value = losses.byol_loss(p, z)
    (g,) = torch.autograd.grad(value, p)
    p_ref = p.detach().clone().requires_grad_(True)
    ref = _byol_reference(p_ref, z)
    (g_ref,) = torch.autograd.grad(ref, p_ref)
    torch.testing.assert_close(value, ref)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(value, (2 - 2 * F.cosine_similarity(p, z)).mean())


def test_byol_loss_closed_forms():
    z = _randn(10, 8, seed=3)
    assert losses.byol_loss(3.0 * z, z).item() == pytest.approx(0.0, abs=1e-12)  # same direction: 0
    assert losses.byol_loss(-z, z).item() == pytest.approx(4.0, abs=1e-12)  # opposite: 4
    orth = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert losses.byol_loss(orth, orth.flip(1)).item() == pytest.approx(2.0, abs=1e-12)  # orthogonal: 2


def test_byol_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="prediction and target"):
        losses.byol_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="target"):
        losses.byol_loss(torch.randn(4, 3), torch.full((4, 3), float("nan")))


# ----------------------------------------------------------------------------- DINO


def test_dino_loss_hand_built_two_crops():
    """K = 3, one sample per crop, numbers small enough to follow by hand."""
    s1 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    s2 = torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64)
    t1 = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    t2 = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    center = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64)
    tps, tpt = 0.5, 0.25

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    def H(t, s):
        pt = softmax([(a - c) / tpt for a, c in zip(t, center.tolist())])
        ps = softmax([a / tps for a in s])
        return -sum(a * math.log(b) for a, b in zip(pt, ps))

    expected = 0.5 * H(t1[0].tolist(), s2[0].tolist()) + 0.5 * H(t2[0].tolist(), s1[0].tolist())
    value = losses.dino_loss([s1, s2], [t1, t2], center, tps, tpt)
    assert value.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n_local", [0, 3])
@pytest.mark.parametrize("tps,tpt", [(0.1, 0.04), (0.2, 0.07)])
def test_dino_loss_matches_algorithm_1(n_local, tps, tpt):
    n, k = 6, 9
    student = [_randn(n, k, seed=10 + v).requires_grad_(True) for v in range(2 + n_local)]
    teacher = [_randn(n, k, seed=30 + a) for a in range(2)]
    center = _randn(k, seed=40) * 0.1
    value = losses.dino_loss(student, teacher, center, tps, tpt)
    grads = torch.autograd.grad(value, student)
    ref_student = [s.detach().clone().requires_grad_(True) for s in student]
    ref = _dino_reference(ref_student, teacher, center, tps, tpt)
    ref_grads = torch.autograd.grad(ref, ref_student)
    torch.testing.assert_close(value, ref)
    for g, gr in zip(grads, ref_grads):
        torch.testing.assert_close(g, gr)


def test_dino_loss_teacher_gets_no_gradient_and_uniform_student_gives_log_k():
    k = 7
    student = [torch.zeros(4, k, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    teacher = [_randn(4, k, seed=a).requires_grad_(True) for a in range(2)]
    value = losses.dino_loss(student, teacher, torch.zeros(k, dtype=torch.float64))
    assert value.item() == pytest.approx(math.log(k), rel=1e-12)  # uniform student: log K whatever the teacher
    value.backward()
    assert all(t.grad is None for t in teacher)


def test_dino_loss_rejects_bad_input():
    s = [torch.randn(4, 5), torch.randn(4, 5)]
    with pytest.raises(ValueError, match="center"):
        losses.dino_loss(s, s[:1], torch.zeros(6))
    with pytest.raises(ValueError, match="teacher_temperature"):
        losses.dino_loss(s, s[:1], torch.zeros(5), teacher_temperature=0.0)
    with pytest.raises(ValueError, match="student"):
        losses.dino_loss(s[:1], s[:1], torch.zeros(5))


def test_dino_center_update_by_hand():
    center = losses.DINOCenter(3, momentum=0.9)
    t1 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    t2 = torch.tensor([[0.0, 0.0, 4.0], [4.0, 0.0, 0.0]])
    center.update_([t1, t2])
    torch.testing.assert_close(center.center, 0.1 * torch.tensor([[2.0, 1.0, 2.0]]))
    center.update_([t1])
    torch.testing.assert_close(
        center.center, 0.9 * 0.1 * torch.tensor([[2.0, 1.0, 2.0]]) + 0.1 * torch.tensor([[2.0, 2.0, 2.0]])
    )
    with pytest.raises(ValueError, match="momentum"):
        losses.DINOCenter(3, momentum=1.0)


def test_teacher_temperature_warmup():
    assert losses.teacher_temperature(0.0) == pytest.approx(0.04)
    assert losses.teacher_temperature(0.05) == pytest.approx(0.055)
    assert losses.teacher_temperature(0.1) == pytest.approx(0.07)
    assert losses.teacher_temperature(0.7) == pytest.approx(0.07)
    assert losses.teacher_temperature(0.3, warmup=0.0) == pytest.approx(0.07)
    with pytest.raises(ValueError, match="progress"):
        losses.teacher_temperature(1.5)


# ----------------------------------------------------------------------------- SwAV


@pytest.mark.parametrize("n,k", [(16, 5), (40, 12), (7, 30)])
@pytest.mark.parametrize("eps,iters", [(0.05, 3), (0.5, 1), (0.1, 10)])
def test_sinkhorn_matches_swav_pseudocode(n, k, eps, iters):
    scores = F.normalize(_randn(n, 8, seed=n), dim=1) @ F.normalize(_randn(k, 8, seed=k), dim=1).T  # cosines
    torch.testing.assert_close(losses.sinkhorn(scores, eps, iters), _sinkhorn_reference(scores, eps, iters))


def test_sinkhorn_marginals_are_uniform():
    n, k = 64, 10
    scores = F.normalize(_randn(n, 8, seed=5), dim=1) @ F.normalize(_randn(k, 8, seed=6), dim=1).T
    q = losses.sinkhorn(scores, epsilon=0.05, n_iters=3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n, dtype=q.dtype), rtol=0, atol=1e-12)  # rows exact
    q = losses.sinkhorn(scores, epsilon=0.05, n_iters=100)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n, dtype=q.dtype), rtol=0, atol=1e-12)
    prototype_marginal = q.sum(dim=0) / n  # equipartition: 1 / K each
    torch.testing.assert_close(prototype_marginal, torch.full((k,), 1.0 / k, dtype=q.dtype), rtol=0, atol=1e-3)


def test_sinkhorn_log_domain_is_stable_where_exp_overflows():
    scores = (
        F.normalize(_randn(32, 8, seed=7, dtype=torch.float32), dim=1)
        @ F.normalize(_randn(6, 8, seed=8, dtype=torch.float32), dim=1).T
    )
    eps = 0.005  # exp(1 / 0.005) = exp(200) overflows float32
    assert not torch.isfinite(_sinkhorn_reference(scores, eps, 3)).all()
    q = losses.sinkhorn(scores, eps, 3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32), rtol=0, atol=1e-5)
    torch.testing.assert_close(q.double(), _sinkhorn_reference(scores.double(), eps, 3), rtol=0, atol=1e-4)


def _sinkhorn_paths(monkeypatch) -> list[str]:
    """Record which of sinkhorn's two ways ran ("linear" or "log")."""
    taken = []
    for name in ("linear", "log"):
        fn = getattr(losses, f"_sinkhorn_{name}")
        monkeypatch.setattr(losses, f"_sinkhorn_{name}",
                            lambda *args, _fn=fn, _name=name: taken.append(_name) or _fn(*args))
    return taken


def _swav_cosines(n, k, seed, dim=16):
    """float32 cosines of random directions (in 16 dimensions: a range of about [-0.9, 0.9])."""
    gen = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, dim, generator=gen), dim=1)
    return z @ F.normalize(torch.randn(k, dim, generator=gen), dim=1).T


@pytest.mark.parametrize("n_iters", [3, 20])
def test_sinkhorn_linear_domain_equals_the_log_domain(monkeypatch, n_iters):
    """Issue 13 item 7: SwAV's shape (256 x 3000, epsilon 0.05) in float32 takes the linear domain, and
    its codes equal the float64 codes to 1e-5 (relative) on every entry >= 1e-6 of its row's largest
    (smaller entries: 1e-9 absolute). The float32 log domain is less accurate (2e-5 after 20 rounds:
    each round adds its rounding to log q), so the two agree to 5e-5."""
    scores = _swav_cosines(256, 3000, seed=11)
    assert (scores.max() - scores.min()) / 0.05 > 30
    taken = _sinkhorn_paths(monkeypatch)
    q = losses.sinkhorn(scores, epsilon=0.05, n_iters=n_iters)
    assert taken == ["linear"] and q.dtype == torch.float32
    log_q = losses._sinkhorn_log(scores / 0.05, 256, n_iters, False)
    exact = losses._sinkhorn_log(scores.double() / 0.05, 256, n_iters, False)
    assert exact.dtype == torch.float64
    big = exact >= 1e-6 * exact.amax(dim=1, keepdim=True)
    for codes, rtol in ((q, 1e-5), (log_q, 5e-5)):
        err = (codes.double() - exact).abs()
        assert torch.where(big, err / exact, 0.0).max() < rtol and torch.where(big, 0.0, err).max() < 1e-9
    assert torch.where(big, (q.double() - log_q.double()).abs() / exact, 0.0).max() < 5e-5
    torch.testing.assert_close(q.sum(dim=1), torch.ones(256), rtol=0, atol=1e-5)


@pytest.mark.parametrize("where", ["column", "row"])
def test_sinkhorn_takes_the_log_domain_for_a_wide_score_range(monkeypatch, where):
    """One prototype (or one sample) 110 / epsilon below the rest: in float32 the linear domain would
    give NaN (checked), so sinkhorn takes the log domain and matches the float64 codes."""
    scores = _swav_cosines(64, 300, seed=12) * 0.5
    if where == "column":
        scores[:, 0] = scores.max() - 110 * 0.05
    else:
        scores[0, :] = scores.max() - 110 * 0.05
    assert not torch.isfinite(losses._sinkhorn_linear(scores.clone(), float(scores.max()), 0.05, 3, False)).all()
    taken = _sinkhorn_paths(monkeypatch)
    q = losses.sinkhorn(scores, epsilon=0.05, n_iters=3)
    assert taken == ["log"] and torch.isfinite(q).all()
    exact = losses.sinkhorn(scores.double(), epsilon=0.05, n_iters=3)
    assert taken == ["log", "linear"]  # float64 has the range for it
    torch.testing.assert_close(q.double(), exact, rtol=1e-4, atol=1e-7)


def test_sinkhorn_takes_no_gradient_and_rejects_bad_input():
    scores = _randn(5, 3, seed=1).requires_grad_(True)
    assert not losses.sinkhorn(scores).requires_grad
    with pytest.raises(ValueError, match="epsilon"):
        losses.sinkhorn(scores, epsilon=-1.0)
    with pytest.raises(TypeError, match="n_iters"):
        losses.sinkhorn(scores, n_iters=2.5)


@pytest.mark.parametrize("n_crops,n_codes", [(2, 2), (5, 2), (3, 1)])
def test_swav_loss_matches_reference(n_crops, n_codes):
    n, k, tau = 8, 6, 0.1
    scores = [torch.tanh(_randn(n, k, seed=v)).requires_grad_(True) for v in range(n_crops)]
    codes = [losses.sinkhorn(s.detach()) for s in scores[:n_codes]]
    value = losses.swav_loss(scores, codes, tau)
    grads = torch.autograd.grad(value, scores, allow_unused=True)
    ref_scores = [s.detach().clone().requires_grad_(True) for s in scores]
    ref = _swav_reference(ref_scores, codes, tau)
    ref_grads = torch.autograd.grad(ref, ref_scores, allow_unused=True)
    torch.testing.assert_close(value, ref)
    for g, gr in zip(grads, ref_grads):  # a crop that is only coded, never predicted, gets no gradient
        assert (g is None) == (gr is None)
        if g is not None:
            torch.testing.assert_close(g, gr)


def test_swav_loss_hand_built():
    """Two crops, one sample, K = 2: l = -(q0 log p1 + q1 log p0) averaged over the two directions."""
    s0 = torch.tensor([[0.1, -0.1]], dtype=torch.float64)
    s1 = torch.tensor([[0.0, 0.2]], dtype=torch.float64)
    q0 = torch.tensor([[0.75, 0.25]], dtype=torch.float64)
    q1 = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    tau = 0.1

    def log_softmax(v):
        m = math.log(sum(math.exp(x / tau) for x in v))
        return [x / tau - m for x in v]

    l01 = -sum(a * b for a, b in zip(q0[0].tolist(), log_softmax(s1[0].tolist())))
    l10 = -sum(a * b for a, b in zip(q1[0].tolist(), log_softmax(s0[0].tolist())))
    value = losses.swav_loss([s0, s1], [q0, q1], tau)
    assert value.item() == pytest.approx((l01 + l10) / 2, rel=1e-12)
    uniform = losses.swav_loss([torch.zeros(3, 4), torch.zeros(3, 4)], [torch.full((3, 4), 0.25)] * 2)
    assert uniform.item() == pytest.approx(math.log(4), rel=1e-6)


def test_swav_queue_is_fifo():
    queue = losses.SwAVQueue(n_crops=2, length=5, dim=3)
    assert not queue.full
    a = [torch.ones(2, 3), 2 * torch.ones(2, 3)]
    b = [3 * torch.ones(2, 3), 4 * torch.ones(2, 3)]
    queue.push_(a)
    queue.push_(b)
    assert not queue.full
    torch.testing.assert_close(queue.queue[0, :, 0], torch.tensor([3.0, 3.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(queue.queue[1, :, 0], torch.tensor([4.0, 4.0, 2.0, 2.0, 0.0]))
    queue.push_(a)
    assert queue.full
    torch.testing.assert_close(queue.queue[0, :, 0], torch.tensor([1.0, 1.0, 3.0, 3.0, 1.0]))
    with pytest.raises(ValueError, match="projections"):
        queue.push_(a[:1])


# ----------------------------------------------------------------------------- DeepCluster-v2


def _kmeans_reference(x, init_rows, n_iters):
    """Lloyd's algorithm with cosine similarity, loops over points; empty clusters keep their centroid."""
    x = F.normalize(x, dim=1)
    c = [x[i].clone() for i in init_rows]

    def assign():
        return (x @ torch.stack(c).T).argmax(dim=1).tolist()

    for _ in range(n_iters):
        a = assign()
        for j in range(len(c)):
            members = [x[i] for i in range(len(x)) if a[i] == j]
            if members:
                c[j] = F.normalize(torch.stack(members).sum(0), dim=0)
    return torch.stack(c), torch.tensor(assign())


def test_spherical_kmeans_matches_lloyd_and_recovers_planted_clusters():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 16, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(80) % 4
    x = centres[labels] + 0.1 * torch.randn(80, 16, generator=g, dtype=torch.float64)
    covered = 0
    for seed in range(40):
        init = torch.randperm(80, generator=torch.Generator().manual_seed(seed))[:4]  # documented initialisation
        centroids, assign = losses.spherical_kmeans(
            x, 4, n_iters=5, generator=torch.Generator().manual_seed(seed), chunk_size=37
        )
        if seed < 5:
            ref_c, ref_a = _kmeans_reference(x, init.tolist(), 5)
            torch.testing.assert_close(centroids, ref_c)
            torch.testing.assert_close(assign, ref_a)
        torch.testing.assert_close(centroids.norm(dim=1), torch.ones(4, dtype=torch.float64))
        if len(set(labels[init].tolist())) == 4:  # one start per planted cluster: the partition is found
            covered += 1
            mapping = {int(a): int(label) for a, label in zip(assign, labels)}
            assert sorted(mapping.values()) == [0, 1, 2, 3]
            assert all(mapping[int(a)] == int(label) for a, label in zip(assign, labels))
    assert covered >= 1


def test_spherical_kmeans_empty_cluster_keeps_its_centroid_and_bad_k():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    centroids, assign = losses.spherical_kmeans(x, 3, n_iters=3, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(centroids).all()
    with pytest.raises(ValueError, match="k must be at most"):
        losses.spherical_kmeans(x, 4)


def test_deepcluster_loss_is_cross_entropy():
    scores = [_randn(10, 5, seed=1).requires_grad_(True), _randn(10, 7, seed=2).requires_grad_(True)]
    targets = [torch.arange(10) % 5, torch.arange(10) % 7]
    value = losses.deepcluster_loss(scores, targets, temperature=0.1)
    ref = 0.0
    for s, t in zip(scores, targets):
        ref = ref + sum(-torch.log_softmax(s[i] / 0.1, dim=0)[t[i]] for i in range(10)) / 10
    torch.testing.assert_close(value, ref / 2)
    uniform = losses.deepcluster_loss([torch.zeros(4, 6)], [torch.tensor([0, 1, 2, 5])])
    assert uniform.item() == pytest.approx(math.log(6), rel=1e-6)
    with pytest.raises(ValueError, match="targets"):
        losses.deepcluster_loss([torch.zeros(4, 6)], [torch.tensor([0, 1, 2, 6])])


# ----------------------------------------------------------------------------- ER variants


@pytest.mark.parametrize("terms, expected, grads", [("both", -5.0, (-1.0, -1.0)), ("entropy", -2.0, (-1.0, 0.0)),
                                                     ("reconstruction", -3.0, (0.0, -1.0))])
def test_er_loss_is_minus_the_chosen_terms_and_logs_both(terms, expected, grads):
    h = torch.tensor(2.0, requires_grad=True)
    rec = torch.tensor(3.0, requires_grad=True)
    loss, logged = losses.er_loss(h, rec, terms)
    assert loss.item() == expected
    assert logged.keys() == {"loss_entropy", "loss_reconstruction"}
    assert logged["loss_entropy"] is h and logged["loss_reconstruction"] is rec
    loss.backward()
    assert (float(h.grad) if h.grad is not None else 0.0, float(rec.grad) if rec.grad is not None else 0.0) == grads
    assert losses.ER_TERMS == ("both", "entropy", "reconstruction")
    assert losses.er_loss(torch.tensor(2.0), torch.tensor(3.0))[0].item() == -5.0  # "both" by default


@pytest.mark.parametrize("bad", ["Both", "rec", "", None])
def test_er_loss_refuses_unknown_terms_by_name(bad):
    # before issue 13 moved it here, any unknown `terms` silently returned -reconstruction
    with pytest.raises(ValueError, match=r"^terms must be one of \('both', 'entropy', 'reconstruction'\), got "):
        losses.er_loss(torch.tensor(2.0), torch.tensor(3.0), bad)


# ----------------------------------------------------------------------------- bad input (issue 15)


def test_swav_loss_refuses_codes_that_are_not_probability_vectors():
    # codes of -5 x N(0, 1) gave a "cross-entropy" of -15 (a negative cross-entropy); unnormalised
    # rows scaled the loss; both are now refused, naming the crop
    scores = [_randn(8, 5, seed=1), _randn(8, 5, seed=2)]
    codes = losses.sinkhorn(_randn(8, 5, seed=3))
    assert losses.swav_loss(scores, [codes]).item() > 0
    with pytest.raises(ValueError, match=r"codes\[0\] rows must be probability vectors: found negative entries"):
        losses.swav_loss(scores, [-5 * _randn(8, 5, seed=4)])
    with pytest.raises(ValueError, match=r"codes\[1\] rows must be probability vectors summing to 1"):
        losses.swav_loss(scores, [codes, 2 * codes])
    # float16 codes that are probability vectors up to float16 rounding are accepted
    assert torch.isfinite(losses.swav_loss([s.float() for s in scores], [codes.half()]))


def test_teacher_temperature_refuses_progress_and_warmup_that_are_not_fractions():
    for bad, error in [
        ("0.5", TypeError),
        (True, TypeError),
        (None, TypeError),
        (float("nan"), ValueError),
        (-0.1, ValueError),
    ]:
        with pytest.raises(error, match="progress must be a"):
            losses.teacher_temperature(bad)
    with pytest.raises(TypeError, match="warmup must be a number in"):
        losses.teacher_temperature(0.5, warmup="0.1")  # was a TypeError comparing float with str
    with pytest.raises(TypeError, match="momentum must be a number in"):
        losses.DINOCenter(4, momentum="0.9")
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        losses.DINOCenter(4, momentum=1.0)


Z8 = _randn(8, 4, seed=5, dtype=torch.float32)
ZERO_ROW = Z8.clone().index_fill_(0, torch.tensor([3]), 0.0)
S8 = _randn(8, 5, seed=6, dtype=torch.float32)
FLAG_CALLS = {
    "nt_xent": lambda v: losses.nt_xent(Z8, Z8 + 1, distributed=v),
    "byol_loss": lambda v: losses.byol_loss(Z8, Z8 + 1, distributed=v),
    "dino_loss": lambda v: losses.dino_loss([S8, S8 + 1], [S8], torch.zeros(5), distributed=v),
    "DINOCenter.update_": lambda v: losses.DINOCenter(5).update_([S8], distributed=v),
    "sinkhorn": lambda v: losses.sinkhorn(S8, distributed=v),
    "swav_loss": lambda v: losses.swav_loss([S8, S8 + 1], [torch.softmax(S8, dim=1)], distributed=v),
    "deepcluster_loss": lambda v: losses.deepcluster_loss([S8], [torch.arange(8) % 5], distributed=v),
}


@pytest.mark.parametrize("value", ["no", "False", 0, None])
@pytest.mark.parametrize("name", list(FLAG_CALLS))
def test_flags_are_not_coerced_from_text_or_numbers(name, value):
    # bool("no") is True: distributed="no" used to switch the global-batch path on, silently
    with pytest.raises(TypeError, match=f"distributed must be True or False, got {value!r}"):
        FLAG_CALLS[name](value)


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: losses.nt_xent(ZERO_ROW, Z8), "z1"),
        (lambda: losses.nt_xent(Z8, ZERO_ROW), "z2"),
        (lambda: losses.byol_loss(ZERO_ROW, Z8), "prediction"),
        (lambda: losses.byol_loss(Z8, ZERO_ROW), "target"),
        (lambda: losses.spherical_kmeans(ZERO_ROW, 2), "x"),
    ],
)
def test_sphere_losses_refuse_zero_rows(call, name):
    # a zero row was normalised to 0, "orthogonal" to everything (cosine 0: a BYOL loss of 2)
    with pytest.raises(ValueError, match=rf"^{name} has 1 row\(s\) of norm 0 .*rows 3"):
        call()


# ----------------------------------------------------------------------------- bad input named by its argument


def _crops(n_crops=2, n=4, k=5):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, k, generator=g) for _ in range(n_crops)]


@pytest.mark.parametrize("call, name", [
    (lambda s, q: losses.dino_loss(s, q[0], torch.zeros(5)), "teacher"),
    (lambda s, q: losses.dino_loss(s[0], q, torch.zeros(5)), "student"),
    (lambda s, q: losses.swav_loss(s[0], [c.softmax(1) for c in q]), "scores"),
    (lambda s, q: losses.swav_loss(s, q[0].softmax(1)), "codes"),
])
def test_crop_losses_refuse_a_bare_tensor_by_name(call, name):
    # a bare (N, K) tensor was taken as one crop: teacher=t silently dropped the other teacher crops
    with pytest.raises(TypeError, match=rf"^{name} must be a list of \(N, K\) tensors, one per crop, "
                                        r"got a single tensor of shape \(4, 5\)$"):
        call(_crops(), _crops())


def test_swav_loss_names_scores_when_it_has_fewer_crops_than_codes():
    scores, codes = _crops(), [c.softmax(1) for c in _crops()]
    with pytest.raises(ValueError, match=r"^scores must hold at least 2 crops and codes no more crops than scores, "
                                         r"got 1 scores and 2 codes$"):
        losses.swav_loss(scores[:1], codes)


def test_sinkhorn_refuses_a_single_row():
    # one row's equipartition is the uniform code whatever its scores: it was returned silently
    with pytest.raises(ValueError, match=r"^scores needs at least 2 rows \(samples\) in the global batch.*got 1$"):
        losses.sinkhorn(torch.randn(1, 5))
    codes = losses.sinkhorn(torch.tensor([[3.0, 0.0], [0.0, 3.0]]), epsilon=1.0, n_iters=3)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(2))
    assert codes[0, 0] > 0.9 and codes[1, 1] > 0.9


def test_spherical_kmeans_names_x_when_it_has_fewer_rows_than_k():
    with pytest.raises(ValueError, match=r"^k must be at most the number of rows of x \(1\), got 3$"):
        losses.spherical_kmeans(torch.randn(1, 4), 3)


@pytest.mark.parametrize("scores, targets, error, match", [
    (None, [torch.zeros(4, dtype=torch.long)], TypeError,
     r"^scores must be a list of tensors, one per prototype set, got NoneType$"),
    ([torch.zeros(4, 6)], None, TypeError, r"^targets must be a list of tensors, one per prototype set, got NoneType$"),
    (torch.zeros(4, 6), [torch.zeros(4, dtype=torch.long)], TypeError,
     r"^scores must be a list of tensors, .* got Tensor$"),
    ([torch.zeros(4, 6), torch.zeros(4, 3)], [torch.tensor([0, 1, 2, 5])] * 2, ValueError,
     r"^targets\[1\] must hold cluster indices in \[0, 3\), the columns of scores\[1\]$"),
    ([torch.zeros(4, 6), torch.zeros(5, 6)], [torch.tensor([0, 1, 2, 5])] * 2, ValueError,
     r"^targets\[1\] must be a long tensor of shape \(5,\), one per row of scores\[1\]$"),
])
def test_deepcluster_loss_names_scores_and_targets(scores, targets, error, match):
    # None said "object of type 'NoneType' has no len()"; a narrower scores[1] blamed targets[1] alone
    with pytest.raises(error, match=match):
        losses.deepcluster_loss(scores, targets)
