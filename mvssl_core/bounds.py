"""Mutual-information bounds in nats: InfoNCE, NWJ, ER (continuous and discrete), alignment/uniformity.

Every function is a differentiable torch function usable as a training objective (maximise a
bound, minimise alignment and uniformity). Log-sum-exps run in float32 at least: half and
bfloat16 inputs are upcast and autocast is switched off inside, so the functions are stable
under ``torch.autocast``.

Sphere rule: :func:`infonce_from_embeddings` and the vMF :func:`er_bound` L2-normalise their
inputs. :func:`alignment` and :func:`uniformity` work in R^d as written by Wang & Isola and do
not normalise (they are meant for embeddings the caller has normalised).

[0] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View
    Self-Supervised Learning", ICML 2023, arXiv 2307.10907.
[1] van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018;
    Poole et al., "On Variational Bounds of Mutual Information", ICML 2019.
[2] Nguyen, Wainwright, Jordan, "Estimating divergence functionals and the likelihood ratio by
    convex risk minimization", IEEE Trans. Inf. Theory 2010.
[3] Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere", ICML 2020.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mvssl_core import _checks as checks
from mvssl_core import dist, entropy
from mvssl_core.reconstruction import (
    _no_autocast,
    _upcast,
    gaussian_log_likelihood,
    vmf_log_likelihood,
)

__all__ = [
    "ERTerms",
    "infonce",
    "infonce_from_embeddings",
    "nwj",
    "er_bound",
    "er_bound_discrete",
    "er_bound_discrete_multicrop",
    "alignment",
    "uniformity",
]


class ERTerms(NamedTuple):
    """The ER bound and its two terms, all 0-dim tensors in nats: ``bound = entropy + reconstruction``."""

    bound: torch.Tensor
    entropy: torch.Tensor
    reconstruction: torch.Tensor


def _scores(scores: object) -> torch.Tensor:
    """A finite square (k, k) critic matrix with k >= 2, upcast to float32 at least."""
    scores = checks.tensor(scores, "scores")
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square (k, k) matrix, got shape {tuple(scores.shape)}")
    if scores.shape[0] < 2:
        raise ValueError(
            f"scores needs k >= 2 samples (one positive and at least one negative), got k = {scores.shape[0]}"
        )
    return _upcast(checks.finite(scores, "scores"))


def _pair(
    z1: object, z2: object, min_samples: int = 2, names: tuple[str, str] = ("z1", "z2")
) -> tuple[torch.Tensor, torch.Tensor]:
    z1 = checks.embeddings(z1, names[0], min_samples=min_samples)
    z2 = checks.embeddings(z2, names[1], min_samples=min_samples)
    checks.same_shape(z1, z2, *names)
    return z1, z2


def _common(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Upcast half types and promote both tensors to one dtype."""
    a, b = _upcast(a), _upcast(b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def infonce(scores: torch.Tensor) -> torch.Tensor:
    """InfoNCE lower bound ``log k + mean_i (s_ii - logsumexp_j s_ij)`` [1].

    Row i scores the sample x_i against every y_j; its positive y_i is on the diagonal. The
    value never exceeds ``log k``: each row's term ``s_ii - logsumexp_j s_ij`` is a log-softmax,
    hence <= 0.

    Args:
        scores: (k, k) critic values f(x_i, y_j), positives on the diagonal, k >= 2.

    Returns:
        0-dim tensor, the bound in nats (<= log k).
    """
    scores = _scores(scores)
    k = scores.shape[0]
    with _no_autocast(scores):
        log_softmax_diag = scores.diagonal() - torch.logsumexp(scores, dim=1)
        return math.log(k) + log_softmax_diag.mean()


def infonce_from_embeddings(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, distributed: bool = False
) -> torch.Tensor:
    """InfoNCE of the cosine critic ``z1_i^T z2_j / temperature`` over the (global) batch [1].

    Both inputs are L2-normalised (the sphere rule). Queries are the local rows of ``z1``; keys
    are the rows of ``z2`` gathered over all processes when ``distributed``, so k is the global
    batch size and the value is the single-process value on the concatenated batch.

    Args:
        z1: (N, d) projections of view 1 (queries).
        z2: (N, d) projections of view 2 (keys); row i is the positive of ``z1[i]``.
        temperature: tau > 0.
        distributed: use the global batch across processes (see :mod:`mvssl_core.dist`).

    Returns:
        0-dim tensor, the bound in nats (<= log k, k the global batch size).
    """
    z1, z2 = _pair(z1, z2)
    checks.nonzero_rows(z1, "z1")
    checks.nonzero_rows(z2, "z2")
    tau = checks.positive(temperature, "temperature")
    distributed = checks.boolean(distributed, "distributed")
    with _no_autocast(z1):
        q, k = _common(z1, z2)
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        keys = dist.gather(k) if distributed else k
        logits = q @ keys.T / tau  # (n_local, K)
        n = q.shape[0]
        rows = torch.arange(n, device=q.device)
        cols = rows + dist.local_slice(n, q.device).start  # positive of query i in the gathered keys
        per_i = logits[rows, cols] - torch.logsumexp(logits, dim=1)
        mean = dist.global_mean(per_i) if distributed else per_i.mean()
        return math.log(keys.shape[0]) + mean


def nwj(scores: torch.Tensor) -> torch.Tensor:
    """NWJ lower bound ``mean_i s_ii - e^{-1} mean_{i != j} exp(s_ij)`` [2] (f-GAN KL, "MINE-f").

    Pairs (x_i, y_i) sample the joint; the off-diagonal pairs sample the product of marginals.
    The optimal critic is ``1 + log p(y|x) / p(y)``. The second mean is taken in log space,
    ``exp(logsumexp_{i != j} s_ij - log(k(k-1)) - 1)``, so no intermediate exp overflows.

    Args:
        scores: (k, k) critic values f(x_i, y_j), joint samples on the diagonal, k >= 2.

    Returns:
        0-dim tensor, the bound in nats.
    """
    scores = _scores(scores)
    k = scores.shape[0]
    with _no_autocast(scores):
        eye = torch.eye(k, dtype=torch.bool, device=scores.device)
        off = scores.masked_fill(eye, float("-inf"))
        log_mean_exp = torch.logsumexp(off.reshape(-1), dim=0) - math.log(k * (k - 1))
        return scores.diagonal().mean() - torch.exp(log_mean_exp - 1.0)


def er_bound(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    kappa: float = 10.0,
    kernel: str = "vmf",
    bandwidth: float | None = None,
    estimator: str = "joe",
    leave_one_out: bool = False,
    chunk_size: int | None = None,
    distributed: bool = False,
) -> ERTerms:
    """Continuous ER bound ``H(Z2) + E[log q(Z2 | Z1)]`` [0], both terms estimated on the batch.

    entropy: KDE estimate of H(Z2) (:func:`mvssl_core.entropy.kde_entropy`, same kernel,
    estimator and options). reconstruction: mean of ``log q(z2_i | z1_i)``, a vMF of mean
    ``z1_i`` and concentration ``kappa`` (inputs normalised), or with ``kernel="gaussian"`` an
    isotropic Gaussian of mean ``z1_i`` and standard deviation ``bandwidth`` (no normalisation).

    With the same kernel for both terms and the self term included (``leave_one_out=False``),
    the estimate never exceeds ``log k``: the KDE entropy is at most
    ``log k - log(kernel peak)`` and the log-likelihood at most ``log(kernel peak)``.

    Args:
        z1: (N, d) projections of view 1 (the conditioning view).
        z2: (N, d) projections of view 2 (the reconstructed view).
        kappa: vMF concentration > 0 (kernel="vmf").
        kernel: "vmf" (sphere) or "gaussian" (R^d).
        bandwidth: Gaussian standard deviation h > 0, required when kernel="gaussian".
        estimator: "joe" (resubstitution) or "plugin" (the official code's default), see kde_entropy.
        leave_one_out: drop the self term from the KDE (k = N - 1).
        chunk_size: evaluate the KDE in chunks of this many rows (memory O(chunk * N)).
        distributed: use the global batch across processes for both terms.

    Returns:
        ERTerms(bound, entropy, reconstruction), 0-dim tensors in nats.
    """
    z1, z2 = _pair(z1, z2)
    checks.choice(kernel, "kernel", ("vmf", "gaussian"))
    distributed = checks.boolean(distributed, "distributed")
    checks.boolean(leave_one_out, "leave_one_out")
    if kernel == "vmf":  # the sphere rule; vmf_log_likelihood would name z1 "mean"
        checks.nonzero_rows(z1, "z1")
        checks.nonzero_rows(z2, "z2")
    if kernel == "gaussian":
        if bandwidth is None:
            raise ValueError("bandwidth must be given (a number > 0) when kernel='gaussian'")
        checks.positive(bandwidth, "bandwidth")
        per_i = gaussian_log_likelihood(z2, z1, bandwidth, reduction="none")
    else:
        per_i = vmf_log_likelihood(z2, z1, kappa, reduction="none")
    reconstruction = dist.global_mean(per_i) if distributed else per_i.mean()
    h = entropy.kde_entropy(
        z2,
        kernel=kernel,
        kappa=kappa,
        bandwidth=bandwidth,
        estimator=estimator,
        leave_one_out=leave_one_out,
        chunk_size=chunk_size,
        distributed=distributed,
    )
    h = h.to(reconstruction.dtype)
    return ERTerms(h + reconstruction, h, reconstruction)


def er_bound_discrete(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    *,
    temperature: float = 0.1,
    target_temperature: float | None = None,
    symmetric: bool = True,
    distributed: bool = False,
) -> ERTerms:
    """Discrete ER bound ``H(W2) + E[sum_c w2_c log w1_c]`` on soft assignments W = softmax(logits / tau) [0].

    Direction "2 from 1": the targets are ``w2 = softmax(logits2 / target_temperature)``, the
    prediction is ``log_softmax(logits1 / temperature)``;
    entropy = plug-in entropy of the batch-mean target assignment (<= log K,
    :func:`mvssl_core.entropy.discrete_entropy`); reconstruction = mean_i sum_c w2_ic log w1_ic.

    ``symmetric=True`` (the official code's choice for the reconstruction) averages this with the
    "1 from 2" direction, and averages the entropy over both views alike, so the result is the
    mean of two ER estimates, ``(ER_{2|1} + ER_{1|2}) / 2``. Gradients flow into both views;
    detach a teacher's logits before the call for a stop-gradient.

    Args:
        logits1: (N, K) head outputs (logits over K prototypes) of view 1.
        logits2: (N, K) head outputs of view 2.
        temperature: tau > 0 of the predicted assignments.
        target_temperature: tau > 0 of the target assignments (None: the same as temperature).
        symmetric: average the two directions (True) or keep "2 from 1" only (False).
        distributed: batch-mean assignments and means over the global batch.

    Returns:
        ERTerms(bound, entropy, reconstruction), 0-dim tensors in nats.
    """
    logits1, logits2 = _pair(logits1, logits2, names=("logits1", "logits2"))
    symmetric = checks.boolean(symmetric, "symmetric")
    distributed = checks.boolean(distributed, "distributed")
    tau = checks.positive(temperature, "temperature")
    tau_t = tau if target_temperature is None else checks.positive(target_temperature, "target_temperature")
    # crop pairs (target a, prediction v): "2 from 1" is (1, 0); "1 from 2" is (0, 1)
    pairs = [(1, 0), (0, 1)] if symmetric else [(1, 0)]
    return _discrete_er([logits1, logits2], [logits1, logits2], pairs, tau, tau_t, "target", distributed)


def er_bound_discrete_multicrop(
    logits: Sequence[torch.Tensor],
    target_logits: Sequence[torch.Tensor],
    pairs: Sequence[tuple[int, int]] | None = None,
    *,
    temperature: float = 0.1,
    target_temperature: float | None = None,
    entropy_branch: str = "target",
    distributed: bool = False,
) -> ERTerms:
    """Mean discrete ER bound over crop pairs, each crop's assignments computed once [0].

    For each pair (a, v): the target crop a's assignment ``w_a = softmax(target_logits[a] /
    target_temperature)`` is reconstructed from crop v's prediction ``log_softmax(logits[v] /
    temperature)``. The result is the mean over the pairs of the one-direction
    :func:`er_bound_discrete` ``(logits[v], target_logits[a], symmetric=False)``, but each softmax,
    log-softmax and batch-mean entropy is computed (and each input validated) once per crop, not
    once per pair: multi-crop DINO has 10 crops and 18 pairs. Gradients flow into every input;
    detach a teacher's logits before the call for a stop-gradient.

    Args:
        logits: V tensors (N, K), the predicting crops.
        target_logits: G tensors (N, K), the target crops; by the multi-crop convention target
            crop a is the same image crop as ``logits[a]`` (the global crops come first).
        pairs: (a, v) index pairs (None: every a < G with every v != a, as in DINO and SwAV).
        temperature: tau > 0 of the predicted assignments.
        target_temperature: tau > 0 of the targets (None: the same as temperature).
        entropy_branch: the entropy of pair (a, v) is that of crop a's batch-mean assignment, as a
            target ("target": ``softmax(target_logits[a] / target_temperature)``, the ER bound's
            H(W_a)) or as predicted ("prediction": ``softmax(logits[a] / temperature)``).
        distributed: batch-mean assignments and means over the global batch.

    Returns:
        ERTerms(bound, entropy, reconstruction), 0-dim tensors in nats, means over the pairs.
    """
    preds = _crops(logits, "logits")
    targets = _crops(target_logits, "target_logits")
    checks.same_shape(preds[0], targets[0], "logits[0]", "target_logits[0]")
    if pairs is None:
        pairs = [(a, v) for a in range(len(targets)) for v in range(len(preds)) if v != a]
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise ValueError("pairs must hold at least one (target crop, predicting crop) pair")
    for p in pairs:
        if len(p) != 2 or not all(isinstance(i, int) and 0 <= i < n for i, n in zip(p, (len(targets), len(preds)))):
            raise ValueError(
                f"pairs must be (a, v) with 0 <= a < {len(targets)} and 0 <= v < {len(preds)}, got {p}"
            )
    checks.choice(entropy_branch, "entropy_branch", ("target", "prediction"))
    distributed = checks.boolean(distributed, "distributed")
    if entropy_branch == "prediction" and max(a for a, _ in pairs) >= len(preds):
        raise ValueError("entropy_branch='prediction' needs logits[a] for every target crop a of the pairs")
    tau = checks.positive(temperature, "temperature")
    tau_t = tau if target_temperature is None else checks.positive(target_temperature, "target_temperature")
    return _discrete_er(preds, targets, pairs, tau, tau_t, entropy_branch, distributed)


def _crops(xs: object, name: str) -> list[torch.Tensor]:
    """A non-empty list of finite (N, K) logits of one shape, N >= 2."""
    return checks.crops(xs, name, min_samples=2)


def _discrete_er(
    preds: list[torch.Tensor],
    targets: list[torch.Tensor],
    pairs: list[tuple[int, int]],
    tau: float,
    tau_t: float,
    entropy_branch: str,
    distributed: bool,
) -> ERTerms:
    """Mean discrete ER over ``pairs`` (target a, prediction v) of validated crops (see the callers)."""
    with _no_autocast(preds[0]):
        dtype = functools.reduce(torch.promote_types, [_upcast(x).dtype for x in preds + targets])
        # every crop's log-assignments and target assignments once, however many pairs it is in
        pred_crops = {v for _, v in pairs} | ({a for a, _ in pairs} if entropy_branch == "prediction" else set())
        log_w = {v: torch.log_softmax(_upcast(preds[v]).to(dtype) / tau, dim=1) for v in sorted(pred_crops)}
        w = {a: torch.softmax(_upcast(targets[a]).to(dtype) / tau_t, dim=1) for a in sorted({a for a, _ in pairs})}

        # reconstruction: mean over pairs of mean_i sum_c w_a,ic log w_v,ic. It is linear in w_a,
        # so each predicting crop meets the sum of its targets once (DINO: 10 products, not 18).
        sources: dict[int, list[int]] = {}
        for a, v in pairs:
            sources.setdefault(v, []).append(a)
        target_sums: dict[tuple[int, ...], torch.Tensor] = {}
        per_i = 0.0
        for v, srcs in sources.items():
            key = tuple(sorted(srcs))
            if key not in target_sums:
                target_sums[key] = functools.reduce(torch.add, [w[a] for a in key])
            per_i = per_i + (target_sums[key] * log_w[v]).sum(dim=1)
        per_i = per_i / len(pairs)
        rec = dist.global_mean(per_i) if distributed else per_i.mean()

        # entropy: mean over pairs of the plug-in entropy of crop a's batch-mean assignment; the
        # batch mean is a probability vector, so discrete_entropy of that one row checks K numbers,
        # not N x K
        counts = collections.Counter(a for a, _ in pairs)
        h = 0.0
        for a, n in counts.items():
            probs = w[a] if entropy_branch == "target" else log_w[a].exp()
            pbar = dist.global_mean(probs) if distributed else probs.mean(dim=0)
            h = h + n * entropy.discrete_entropy(pbar[None]).to(rec.dtype)
        h = h / len(pairs)
    return ERTerms(h + rec, h, rec)


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Alignment loss ``mean_i |z1_i - z2_i|_2^alpha`` of Wang & Isola [3] (no normalisation).

    Args:
        z1: (N, d) embeddings of view 1 (normalised by the caller in [3]).
        z2: (N, d) embeddings of view 2.
        alpha: exponent > 0 (2 in [3]).

    Returns:
        0-dim tensor, squared distance units for alpha = 2 (lower is better aligned).
    """
    z1, z2 = _pair(z1, z2, min_samples=1)
    alpha = checks.positive(alpha, "alpha")
    with _no_autocast(z1):
        a, b = _common(z1, z2)
        sq = (a - b).pow(2).sum(dim=1)
        per_i = sq if alpha == 2.0 else sq.pow(alpha / 2)
        return per_i.mean()


def uniformity(z: torch.Tensor, t: float = 2.0, distributed: bool = False) -> torch.Tensor:
    """Uniformity loss ``log mean_{i != j} exp(-t |z_i - z_j|^2)`` of Wang & Isola [3].

    The mean runs over the ordered pairs i != j of the (global) batch, which equals the i < j
    mean of ``torch.pdist`` in [3]. Computed in log space: a logsumexp over each query's row of
    the pairwise matrix (self masked out), then a logsumexp over the rows (and over the
    processes when ``distributed``). No normalisation: pass normalised embeddings as in [3].

    Args:
        z: (N, d) embeddings, N >= 2.
        t: kernel scale > 0 (2 in [3]).
        distributed: use the global batch across processes.

    Returns:
        0-dim tensor in nats (<= 0; lower is more uniform).
    """
    z = checks.embeddings(z, "z", min_samples=2)
    t = checks.positive(t, "t")
    distributed = checks.boolean(distributed, "distributed")
    with _no_autocast(z):
        q = _upcast(z)
        keys = dist.gather(q) if distributed else q
        n, total = q.shape[0], keys.shape[0]
        sq = (q.pow(2).sum(1, keepdim=True) + keys.pow(2).sum(1) - 2 * q @ keys.T).clamp_min(0)
        rows = torch.arange(n, device=q.device)
        cols = rows + dist.local_slice(n, q.device).start
        logits = (-t * sq).index_put((rows, cols), torch.tensor(float("-inf"), dtype=sq.dtype, device=sq.device))
        local = torch.logsumexp(torch.logsumexp(logits, dim=1), dim=0)
        if distributed:
            local = torch.logsumexp(dist.gather(local.reshape(1)), dim=0)
        return local - math.log(total * (total - 1))
