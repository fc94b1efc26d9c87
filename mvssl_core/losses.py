"""Loss functions of tensors, in nats: pure functions, plus thin modules where state is needed.

The state lives in three small modules: the DINO centre, the SwAV queue (and, in
:mod:`mvssl_core.methods.deepcluster`, the DeepCluster memory bank). The targets of the clustering
losses are here too: Sinkhorn-Knopp codes (SwAV) and spherical k-means (DeepCluster-v2).
The ER losses are the bounds of :mod:`mvssl_core.bounds` with a minus sign.

[0] Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations" (SimCLR), ICML 2020.
[1] Grill et al., "Bootstrap Your Own Latent" (BYOL), NeurIPS 2020.
[2] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021.
[3] Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
    (SwAV, and DeepCluster-v2 in its appendix), NeurIPS 2020.
[4] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023, arXiv 2307.10907.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mvssl_core import _checks as checks
from mvssl_core import dist
from mvssl_core.reconstruction import _no_autocast, _upcast

__all__ = [
    "nt_xent",
    "byol_loss",
    "dino_loss",
    "DINOCenter",
    "teacher_temperature",
    "sinkhorn",
    "swav_loss",
    "SwAVQueue",
    "spherical_kmeans",
    "deepcluster_loss",
    "ER_TERMS",
    "er_loss",
]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, distributed: bool = False) -> torch.Tensor:
    """SimCLR's NT-Xent loss over the 2N views of a (global) batch of N pairs [0].

    For each of the 2N normalised views u_a, with positive u_p (the other view of its pair):
    ``l_a = -log( exp(u_a^T u_p / tau) / sum_{b != a} exp(u_a^T u_b / tau) )``, the 2N - 2 other
    views being the negatives. The loss is the mean of l_a over all 2N views. Inputs are
    L2-normalised (the sphere rule); the softmax is a float32+ logsumexp with the self term masked.
    Collapsed embeddings (all views equal) give exactly ``log(2N - 1)``.

    With ``distributed``, keys are the views of all processes (N is the global batch size);
    queries stay local, and the value equals the single-process value on the concatenated batch.

    Args:
        z1: (N, d) projections of view 1, N >= 2.
        z2: (N, d) projections of view 2; row i pairs with ``z1[i]``.
        temperature: tau > 0.
        distributed: use the global batch across processes (see :mod:`mvssl_core.dist`).

    Returns:
        0-dim tensor, the loss in nats (>= 0).
    """
    z1 = checks.embeddings(z1, "z1", min_samples=2)  # N >= 2: at least one negative pair
    z2 = checks.embeddings(z2, "z2", min_samples=2)
    checks.same_shape(z1, z2, "z1", "z2")
    checks.nonzero_rows(z1, "z1")  # the sphere rule: a zero row has no direction
    checks.nonzero_rows(z2, "z2")
    tau = checks.positive(temperature, "temperature")
    distributed = checks.boolean(distributed, "distributed")
    with _no_autocast(z1):
        a, b = _upcast(z1), _upcast(z2)
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = F.normalize(a.to(dtype), dim=1), F.normalize(b.to(dtype), dim=1)
        keys1 = dist.gather(a) if distributed else a
        keys2 = dist.gather(b) if distributed else b
        total = keys1.shape[0]  # global number of pairs N
        keys = torch.cat([keys1, keys2])  # (2N, d): views 1 then views 2
        n = a.shape[0]
        local = torch.arange(n, device=a.device) + dist.local_slice(n, a.device).start
        queries = torch.cat([a, b])  # (2n, d)
        self_col = torch.cat([local, local + total])
        pos_col = torch.cat([local + total, local])
        logits = queries @ keys.T / tau  # (2n, 2N)
        rows = torch.arange(2 * n, device=a.device)
        positives = logits[rows, pos_col]
        masked = logits.index_put((rows, self_col), torch.tensor(float("-inf"), dtype=dtype, device=a.device))
        per_view = torch.logsumexp(masked, dim=1) - positives
        return dist.global_mean(per_view) if distributed else per_view.mean()


# --------------------------------------------------------------------------------------------
# BYOL
# --------------------------------------------------------------------------------------------


def byol_loss(prediction: torch.Tensor, target: torch.Tensor, distributed: bool = False) -> torch.Tensor:
    """BYOL's normalised mean squared error ``|p/|p| - z/|z||^2 = 2 - 2 cos(p, z)``, averaged [1].

    The pure function does not stop gradients: pass the target network's projection detached.
    In ER terms [4] this is the vMF reconstruction ``log q(z | p)`` with kappa = 1, up to the
    constant ``2 + 2 log C_d(1)`` and the factor -2.

    Args:
        prediction: (N, d) online predictions q(g(f(v))).
        target: (N, d) target projections g'(f'(v')) of the other view, row i pairs with row i.
        distributed: average over the global batch.

    Returns:
        0-dim tensor in [0, 4] (squared distance units, not nats).
    """
    prediction = checks.embeddings(prediction, "prediction", min_samples=1)
    target = checks.embeddings(target, "target", min_samples=1)
    checks.same_shape(prediction, target, "prediction", "target")
    checks.nonzero_rows(prediction, "prediction")  # a cosine needs two directions
    checks.nonzero_rows(target, "target")
    distributed = checks.boolean(distributed, "distributed")
    with _no_autocast(prediction):
        p, z = _upcast(prediction), _upcast(target)
        dtype = torch.promote_types(p.dtype, z.dtype)
        cosine = F.cosine_similarity(p.to(dtype), z.to(dtype), dim=1)
        per_i = 2.0 - 2.0 * cosine
        return dist.global_mean(per_i) if distributed else per_i.mean()


# --------------------------------------------------------------------------------------------
# DINO
# --------------------------------------------------------------------------------------------


def _logit_list(xs: object, name: str) -> list[torch.Tensor]:
    """A list of (N, K) tensors, one per crop; a bare tensor is refused (is it one crop, or stacked crops?)."""
    if isinstance(xs, torch.Tensor):
        raise TypeError(
            f"{name} must be a list of (N, K) tensors, one per crop, got a single tensor of shape {tuple(xs.shape)}"
        )
    return checks.crops(xs, name)


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
    distributed: bool = False,
) -> torch.Tensor:
    """DINO's cross-entropy between teacher and student crops, as in the paper's Algorithm 1 [2].

    For every teacher crop ``a`` and student crop ``v != a``:
    ``H(t_a, s_v) = -mean_i sum_k P_t(a)_ik log P_s(v)_ik`` with
    ``P_t = softmax((t - C) / teacher_temperature)`` (stop-gradient: the teacher is detached here)
    and ``log P_s = log_softmax(s / student_temperature)``. The loss is the mean of H over those
    pairs. The teacher sees only the global crops, which are the first ``len(teacher)`` student
    crops in the same order: a crop is never compared with itself.

    Args:
        student: V tensors (N, K), the student's logits for every crop (global crops first).
        teacher: G <= V tensors (N, K), the teacher's logits for the global crops.
        center: (K,) or (1, K), the centre C (see :class:`DINOCenter`).
        student_temperature: tau_s > 0 (0.1 in [2]).
        teacher_temperature: tau_t > 0 (0.04 -> 0.07 warm-up in [2], see :func:`teacher_temperature`).
        distributed: average over the global batch.

    Returns:
        0-dim tensor, nats (>= 0).
    """
    student = _logit_list(student, "student")
    teacher = _logit_list(teacher, "teacher")
    checks.same_shape(student[0], teacher[0], "student[0]", "teacher[0]")
    if len(teacher) > len(student) or (len(student) == 1):
        raise ValueError(
            f"need more student crops than one and at least as many as teacher crops, got "
            f"{len(student)} student and {len(teacher)} teacher crops"
        )
    center = checks.finite(checks.tensor(center, "center"), "center").reshape(1, -1)
    if center.shape[1] != student[0].shape[1]:
        raise ValueError(f"center must have K = {student[0].shape[1]} entries, got {center.shape[1]}")
    tau_s = checks.positive(student_temperature, "student_temperature")
    tau_t = checks.positive(teacher_temperature, "teacher_temperature")
    distributed = checks.boolean(distributed, "distributed")
    with _no_autocast(student[0]):
        log_p_s = [torch.log_softmax(_upcast(s) / tau_s, dim=1) for s in student]
        p_t = [torch.softmax((_upcast(t.detach()) - center.to(_upcast(t).dtype)) / tau_t, dim=1) for t in teacher]
        terms = []
        for a, target in enumerate(p_t):
            for v, log_pred in enumerate(log_p_s):
                if v == a:
                    continue
                per_i = -(target.to(log_pred.dtype) * log_pred).sum(dim=1)
                terms.append(dist.global_mean(per_i) if distributed else per_i.mean())
        return torch.stack(terms).mean()


class DINOCenter(nn.Module):
    """DINO's centre ``C <- m C + (1 - m) mean(teacher outputs)`` over the global batch [2].

    The mean runs over every row of every teacher crop of the step, on all processes (an
    all-reduce of the sums and counts when ``distributed``), so 1 and W processes agree.

    Args:
        dim: K, the number of logits.
        momentum: m in [0, 1) (0.9 in [2]).
    """

    center: torch.Tensor

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        checks.positive_int(dim, "dim")
        self.momentum = checks.fraction(momentum, "momentum")
        if self.momentum == 1.0:
            raise ValueError("momentum must be in [0, 1), got 1.0 (the centre would never move)")
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def update_(self, teacher: list[torch.Tensor], distributed: bool = False) -> None:
        """Move the centre towards the batch mean of ``teacher`` (list of (N, K) teacher logits)."""
        distributed = checks.boolean(distributed, "distributed")
        rows = torch.cat([_upcast(t.detach()) for t in _logit_list(teacher, "teacher")])
        batch_sum = dist.all_reduce_sum(rows.sum(dim=0, keepdim=True)) if distributed else rows.sum(0, keepdim=True)
        count = dist.global_count(rows.shape[0], rows.device) if distributed else rows.shape[0]
        batch_mean = (batch_sum / count).to(self.center.dtype)
        self.center.mul_(self.momentum).add_(batch_mean, alpha=1.0 - self.momentum)

    def forward(self) -> torch.Tensor:
        return self.center


def teacher_temperature(progress: float, start: float = 0.04, end: float = 0.07, warmup: float = 0.1) -> float:
    """DINO's teacher temperature: linear from ``start`` to ``end`` over the first ``warmup`` of training [2].

    DINO: "a linear warm-up from 0.04 to 0.07 during the first 30 epochs" (of 300: warmup = 0.1).

    Args:
        progress: fraction of training done, in [0, 1].
        start, end: temperatures > 0 at progress 0 and from ``warmup`` on.
        warmup: fraction of training in [0, 1] spent warming up (0: ``end`` throughout).

    Returns:
        The teacher temperature, a float.
    """
    p = checks.fraction(progress, "progress")
    start, end = checks.positive(start, "start"), checks.positive(end, "end")
    warmup = checks.fraction(warmup, "warmup")
    if p >= warmup:
        return end
    return start + (end - start) * p / warmup


# --------------------------------------------------------------------------------------------
# SwAV: Sinkhorn-Knopp codes, the swapped prediction, the queue
# --------------------------------------------------------------------------------------------


# The linear-domain Sinkhorn keeps every entry that can matter above the smallest normal number: entries
# start in [exp(-span), 1] and after each normalisation a row (column) has its largest entry >= 1 / K
# (1 / B), so span + log(max(B, K)) must stay below -log(tiny), with this margin (nats) to spare.
# Measured at 256 x 3000 in float32 with one column or row pushed down: the linear codes stay within
# 1e-5 of the float64 ones up to a span of 90 (the limit is 71 there), err by 1e-2 at 100, and NaN at 110.
_SINKHORN_LINEAR_MARGIN = 8.0


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, n_iters: int = 3, distributed: bool = False) -> torch.Tensor:
    """SwAV's codes: Sinkhorn-Knopp on ``exp(scores / epsilon)`` [3], stable for any score range.

    Finds Q (B x K, B the global number of rows) close to ``exp(scores / epsilon)`` whose
    prototype marginals are uniform (each column of Q sums to B / K) and whose rows sum to 1,
    alternating the two normalisations ``n_iters`` times (3 in [3]), the rows last, so every
    returned row is exactly a probability vector. SwAV's first division by the total mass is
    omitted: a constant that the next column normalisation cancels.

    Two ways to the same codes (to float rounding). Where the range of ``scores / epsilon`` is small
    enough (``_SINKHORN_LINEAR_MARGIN``; cosines with epsilon >= 0.03 in float32), the global maximum
    is subtracted once and the normalisations are divisions of ``exp((scores - max) / epsilon)``:
    about 3x faster than the log domain. Otherwise (where ``exp`` would underflow and a column could
    sum to 0) every normalisation is a subtraction of a logsumexp. The column sums (logsumexps) run
    over the rows of all processes; choosing the way costs one gather of each process's maximum,
    minimum and row count, and one host sync.

    Args:
        scores: (N, K) prototype scores (cosine similarities in [3]); no gradient flows.
        epsilon: entropic regularisation > 0 (0.05 in [3]).
        n_iters: number of (column, row) normalisation rounds, >= 1.
        distributed: the rows of all processes form one problem of B = global N rows, B >= 2 (one row
            alone gets the uniform code whatever its scores).

    Returns:
        (N, K) codes, rows summing to 1 (this process's rows).
    """
    scores = checks.embeddings(scores, "scores", min_samples=1)
    eps = checks.positive(epsilon, "epsilon")
    checks.positive_int(n_iters, "n_iters")
    distributed = checks.boolean(distributed, "distributed")
    with _no_autocast(scores):
        s = _upcast(scores).detach()  # (N, K)
        n, k = s.shape
        low, high = torch.aminmax(s)
        stats = torch.stack([high, -low, torch.tensor(float(n), dtype=s.dtype, device=s.device)])
        if distributed:
            gathered = dist.gather(stats[None])  # (world, 3)
            stats = torch.cat([gathered[:, :2].amax(dim=0), gathered[:, 2].sum(dim=0, keepdim=True)])
        high, neg_low, total = stats.tolist()  # the one host sync
        total = round(total)
        if total < 2:
            raise ValueError(
                f"scores needs at least 2 rows (samples) in the global batch: the equipartition of one row "
                f"is the uniform code whatever its scores, got {total}"
            )
        span = (high + neg_low) / eps
        if span + math.log(max(total, k)) <= -math.log(torch.finfo(s.dtype).tiny) - _SINKHORN_LINEAR_MARGIN:
            return _sinkhorn_linear(s, high, eps, n_iters, distributed)
        return _sinkhorn_log(s / eps, total, n_iters, distributed)


def _sinkhorn_linear(s: torch.Tensor, high: float, eps: float, n_iters: int, distributed: bool) -> torch.Tensor:
    """``sinkhorn`` by divisions of exp((s - high) / eps), entries in (0, 1]. The marginals' constant
    factors 1 / K and 1 / B are left out: columns are scaled to sum to 1, rows to 1 (the returned rows)."""
    q = torch.exp((s - high) / eps)
    for _ in range(n_iters):
        col = q.sum(dim=0, keepdim=True)  # (1, K), this process's rows
        if distributed:
            col = dist.all_reduce_sum(col)
        q.div_(col)
        q.div_(q.sum(dim=1, keepdim=True))
    return q


def _sinkhorn_log(log_q: torch.Tensor, total: int, n_iters: int, distributed: bool) -> torch.Tensor:
    """``sinkhorn`` in the log domain, for score ranges where exp underflows; ``log_q = scores / eps``."""
    k = log_q.shape[1]
    for _ in range(n_iters):
        # columns (prototypes): each sums to 1 / K
        col = torch.logsumexp(log_q, dim=0, keepdim=True)  # (1, K), this process's rows
        if distributed:
            col = torch.logsumexp(dist.gather(col), dim=0, keepdim=True)
        log_q = log_q - col - math.log(k)
        # rows (samples): each sums to 1 / B
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(total)
    return torch.exp(log_q + math.log(total))


def swav_loss(
    scores: list[torch.Tensor],
    codes: list[torch.Tensor],
    temperature: float = 0.1,
    distributed: bool = False,
) -> torch.Tensor:
    """SwAV's swapped prediction: predict crop a's code from every other crop v [3].

    ``l(a, v) = -mean_i sum_k q_a,ik log softmax(scores_v / temperature)_ik``; for each coded crop
    a the loss averages l(a, v) over the V - 1 crops v != a, then averages over the coded crops
    (the official ``crops_for_assign`` loop). ``codes[a]`` belongs to crop a, so the coded crops
    are the first ``len(codes)`` crops (the global crops).

    Args:
        scores: V tensors (N, K), the prototype scores of every crop (global crops first).
        codes: A <= V tensors (N, K), the Sinkhorn codes of crops 0..A-1 (rows are probability vectors).
        temperature: tau > 0 (0.1 in [3]).
        distributed: average over the global batch.

    Returns:
        0-dim tensor, nats (>= 0).
    """
    scores = _logit_list(scores, "scores")
    codes = _logit_list(codes, "codes")
    checks.same_shape(scores[0], codes[0], "scores[0]", "codes[0]")
    if len(scores) < 2 or len(codes) > len(scores):
        raise ValueError(
            f"scores must hold at least 2 crops and codes no more crops than scores, "
            f"got {len(scores)} scores and {len(codes)} codes"
        )
    for a, q in enumerate(codes):
        # rounding an exact probability vector to the codes' dtype moves its sum by about eps / 2 per entry
        atol = max(1e-4, 4 * torch.finfo(q.dtype).eps)
        checks.probabilities(q, f"codes[{a}]", atol=atol)
    tau = checks.positive(temperature, "temperature")
    distributed = checks.boolean(distributed, "distributed")
    with _no_autocast(scores[0]):
        log_p = [torch.log_softmax(_upcast(s) / tau, dim=1) for s in scores]
        per_code = []
        for a, q in enumerate(codes):
            q = _upcast(q.detach())
            sub = []
            for v, lp in enumerate(log_p):
                if v == a:
                    continue
                per_i = -(q.to(lp.dtype) * lp).sum(dim=1)
                sub.append(dist.global_mean(per_i) if distributed else per_i.mean())
            per_code.append(torch.stack(sub).mean())
        return torch.stack(per_code).mean()


class SwAVQueue(nn.Module):
    """First-in-first-out queue of past projections, one per coded crop, for SwAV's small batches [3].

    Sinkhorn-Knopp needs many more rows than prototypes for its equipartition to make sense; SwAV
    keeps the last ``length`` projections of each coded crop (per process) and appends their
    scores, under the current prototypes, to the batch's before computing the codes. The queue is
    used once it is full.

    Args:
        n_crops: number of coded crops (2 in [3]).
        length: rows kept per crop on this process (3840 in total over the processes in [3]).
        dim: projection dimension.
    """

    queue: torch.Tensor
    count: torch.Tensor

    def __init__(self, n_crops: int, length: int, dim: int) -> None:
        super().__init__()
        checks.positive_int(n_crops, "n_crops")
        checks.positive_int(length, "length")
        checks.positive_int(dim, "dim")
        self.register_buffer("queue", torch.zeros(n_crops, length, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def full(self) -> bool:
        return int(self.count) >= self.queue.shape[1]

    @torch.no_grad()
    def push_(self, projections: list[torch.Tensor]) -> None:
        """Prepend this step's projections (one (N, dim) tensor per coded crop), dropping the oldest rows."""
        if len(projections) != self.queue.shape[0]:
            raise ValueError(f"projections must hold {self.queue.shape[0]} tensors, got {len(projections)}")
        n = projections[0].shape[0]
        length = self.queue.shape[1]
        if n > length:
            raise ValueError(f"a batch of {n} rows does not fit in a queue of length {length}")
        self.queue[:, n:] = self.queue[:, :-n].clone()
        for i, z in enumerate(projections):
            self.queue[i, :n] = z.detach().to(self.queue.dtype)
        self.count.add_(n)


# --------------------------------------------------------------------------------------------
# DeepCluster-v2: k-means targets and the cross-entropy to them
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def spherical_kmeans(
    x: torch.Tensor,
    k: int,
    n_iters: int = 10,
    generator: torch.Generator | None = None,
    chunk_size: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on the unit sphere (cosine similarity), as DeepCluster-v2 clusters its memory bank [3].

    Rows are L2-normalised; centroids start at k distinct random rows; each iteration assigns
    every row to its most similar centroid, then sets each centroid to the normalised mean of its
    rows (an empty cluster keeps its centroid). The returned assignments are those of the
    returned centroids (a final assignment step after the last update).

    Args:
        x: (N, d) points, N >= k.
        k: number of clusters.
        n_iters: centroid updates (10 in [3]).
        generator: for the initial centroids (CPU generator).
        chunk_size: rows per similarity block (memory O(chunk_size * k)).

    Returns:
        ``(centroids, assignments)``: (k, d) unit vectors and (N,) long cluster indices.
    """
    x = checks.embeddings(x, "x", min_samples=1)
    checks.nonzero_rows(x, "x")  # the sphere rule: a zero row has no direction
    checks.positive_int(k, "k")
    checks.positive_int(n_iters, "n_iters", minimum=0)
    checks.positive_int(chunk_size, "chunk_size")
    if k > x.shape[0]:
        raise ValueError(f"k must be at most the number of rows of x ({x.shape[0]}), got {k}")
    x = F.normalize(_upcast(x), dim=1)
    start = torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)
    centroids = x[start].clone()
    assignments = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for it in range(n_iters + 1):
        for lo in range(0, x.shape[0], chunk_size):
            assignments[lo : lo + chunk_size] = (x[lo : lo + chunk_size] @ centroids.T).argmax(dim=1)
        if it == n_iters:
            break
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        nonempty = torch.bincount(assignments, minlength=k) > 0
        centroids[nonempty] = F.normalize(sums[nonempty], dim=1)
    return centroids, assignments


def deepcluster_loss(
    scores: list[torch.Tensor],
    targets: list[torch.Tensor],
    temperature: float = 0.1,
    distributed: bool = False,
) -> torch.Tensor:
    """DeepCluster-v2's loss: cross-entropy of the prototype scores against the k-means assignments [3].

    ``mean_h CE(scores_h / temperature, targets_h)``, one term per prototype set h.

    Args:
        scores: a list of H tensors (M, K_h), scores of the rows under prototype set h.
        targets: a list of H tensors (M,), long cluster indices in [0, K_h).
        temperature: tau > 0 (0.1 in [3]).
        distributed: average over the global batch.

    Returns:
        0-dim tensor, nats (>= 0).
    """
    for name, xs in (("scores", scores), ("targets", targets)):
        if isinstance(xs, torch.Tensor) or not isinstance(xs, (list, tuple)):
            raise TypeError(f"{name} must be a list of tensors, one per prototype set, got {type(xs).__name__}")
    if len(scores) != len(targets) or not scores:
        raise ValueError(
            f"scores and targets must be lists of equal non-zero length, got {len(scores)}, {len(targets)}"
        )
    tau = checks.positive(temperature, "temperature")
    distributed = checks.boolean(distributed, "distributed")
    terms = []
    for h, (s, t) in enumerate(zip(scores, targets)):
        s = checks.embeddings(s, f"scores[{h}]", min_samples=1)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.shape != s.shape[:1]:
            raise ValueError(
                f"targets[{h}] must be a long tensor of shape ({s.shape[0]},), one per row of scores[{h}]"
            )
        if bool(((t < 0) | (t >= s.shape[1])).any()):
            raise ValueError(
                f"targets[{h}] must hold cluster indices in [0, {s.shape[1]}), the columns of scores[{h}]"
            )
        with _no_autocast(s):
            per_i = F.cross_entropy(_upcast(s) / tau, t, reduction="none")
            terms.append(dist.global_mean(per_i) if distributed else per_i.mean())
    return torch.stack(terms).mean()


ER_TERMS = ("both", "entropy", "reconstruction")
"""Which terms of the ER bound an ER variant maximises (``er_terms``): both (the ER objective), or
one alone (the ablation that isolates each term; the other is still logged)."""


def er_loss(
    entropy: torch.Tensor, reconstruction: torch.Tensor, terms: str = "both"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of an ER variant [4], ``-(H + Rec)`` or minus one term alone, and its logged terms.

    Args:
        entropy, reconstruction: the two terms of the bound (0-dim tensors, nats), e.g. those of
            :func:`mvssl_core.bounds.er_bound`.
        terms: one of :data:`ER_TERMS`.

    Returns:
        ``(loss, {"loss_entropy": entropy, "loss_reconstruction": reconstruction})``; the loss keeps
        the gradient of the terms it uses.
    """
    terms = checks.choice(terms, "terms", ER_TERMS)
    if terms == "both":
        loss = -(entropy + reconstruction)
    elif terms == "entropy":
        loss = -entropy
    else:
        loss = -reconstruction
    return loss, {"loss_entropy": entropy, "loss_reconstruction": reconstruction}
