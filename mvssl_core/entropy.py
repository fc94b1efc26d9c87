"""Entropy estimators, in nats: kernel density (vMF / Gaussian), discrete plug-in, kNN, closed forms.

The KDE entropy is the entropy term of the ER bound [0]: with a kernel density estimate
p(z_i) = (1/k) sum_j K(z_i, z_j) over the batch, Joe's resubstitution estimator [1] is
-(1/N) sum_i log p(z_i) and the plug-in estimator is sum_i w_i (-log p(z_i)), w = softmax_i log p(z_i).

Sphere rule: the vMF kernel L2-normalises its input (``torch.nn.functional.normalize``);
the Gaussian kernel works in R^d as given.

All log-sum-exps run in float32 at least (half / bfloat16 inputs are upcast, autocast is switched
off inside); float64 stays float64.

[0] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023 (arXiv 2307.10907).
[1] H. Joe, "Estimation of entropy and other functionals of a multivariate density", Ann. Inst.
    Statist. Math. 41 (1989).
[2] L. F. Kozachenko and N. N. Leonenko, "Sample estimate of the entropy of a random vector",
    Problems Inform. Transmission 23 (1987).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mvssl_core import _checks, dist
from mvssl_core.special import vmf_log_normalizer

__all__ = [
    "kde_entropy",
    "kde_log_density",
    "discrete_entropy",
    "knn_entropy",
    "gaussian_entropy",
    "auto_chunk_size",
    "AUTO_CHUNK_BYTES",
]

KERNELS = ("vmf", "gaussian")
ESTIMATORS = ("joe", "plugin")

# chunk_size="auto": rows per chunk such that one (chunk x N) score block takes about this many
# bytes; the backward holds two such blocks. Chosen with scripts/bench_core.py (d = 256, 2 CPU
# cores): each chunk runs a few multi-threaded passes, so much smaller blocks pay many more thread
# barriers (costly on a busy machine), much larger ones fall out of cache; from 16 to 64 MiB the time
# varied by < 25% single-threaded, and 32 MiB keeps the peak at N = 16384 under 3% of dense.
AUTO_CHUNK_BYTES = 32 * 2**20


# Log-weights below this are raised to it before exp() in the chunked path: exp() of arguments near
# and below the float32 underflow (-87) takes a slow path on x86 CPUs (30x slower, measured), and
# such a term, at most e^-80 = 2e-35 of the row's largest, changes nothing in float32 or float64
# (relative error at most N e^-80: below float64 round-off for N < 6e18). Masked self terms (-inf) become
# weights of e^-80 instead of 0, equally invisible.
_EXP_FLOOR = -80.0


def _exp_(x: torch.Tensor, floor: bool) -> torch.Tensor:
    """In-place exp, raising the arguments to ``_EXP_FLOOR`` first when they can reach it."""
    return (x.clamp_(min=_EXP_FLOOR) if floor else x).exp_()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half / bfloat16 inputs, else the input's own dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def auto_chunk_size(n_queries: int, n_keys: int, dtype: torch.dtype = torch.float32) -> int:
    """Rows per chunk so that a (chunk, n_keys) block takes about ``AUTO_CHUNK_BYTES``.

    Args:
        n_queries, n_keys: ints >= 1, the rows and columns of the score matrix.
        dtype: a ``torch.dtype``, that of the scores.
    """
    _checks.positive_int(n_queries, "n_queries")
    _checks.positive_int(n_keys, "n_keys")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r} ({type(dtype).__name__})")
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, min(n_queries, AUTO_CHUNK_BYTES // (n_keys * itemsize)))


# --------------------------------------------------------------------------------------------
# lse_i = logsumexp_j (scale * q_i . k_j + bias_j), self term (key row offset + i) optionally masked.
# Both kernels reduce to this: vMF has bias = 0; the Gaussian's -|q - k|^2 / (2 h^2) is
# q.k / h^2 - |k|^2 / (2 h^2) (the bias) - |q|^2 / (2 h^2) (constant per query, added outside).
# --------------------------------------------------------------------------------------------


def _scores(q, k, bias, scale, leave_one_out, diag_offset, out):
    """One (rows, keys) block of scores, written into ``out``; self terms on diagonal ``diag_offset``."""
    if bias is None:  # beta = 0: out's old contents are ignored, scale folded into the GEMM
        torch.addmm(out, q, k.T, beta=0, alpha=scale, out=out)
    else:
        torch.addmm(bias, q, k.T, alpha=scale, out=out)
    if leave_one_out:
        out.diagonal(diag_offset).fill_(-math.inf)
    return out


def _lse_dense(q, k, bias, scale, leave_one_out, offset):
    """Plain autograd over the full (n, m) score matrix."""
    s = scale * (q @ k.T)
    if bias is not None:
        s = s + bias
    if leave_one_out:
        s.diagonal(offset).fill_(-math.inf)  # s is a fresh tensor that no backward node saved
    return torch.logsumexp(s, dim=1)


# The chunked loops below allocate their (chunk, m) blocks once per call and reuse them
# (``out=`` and in-place ops): no allocator churn, no page faults per chunk.


def _chunks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield start, min(start + chunk, n)


def _lse_forward(q, k, bias, scale, chunk, leave_one_out, offset, floor):
    lse = q.new_empty(q.shape[0])
    buf = q.new_empty(min(chunk, q.shape[0]), k.shape[0])
    for start, stop in _chunks(q.shape[0], chunk):
        s = _scores(q[start:stop], k, bias, scale, leave_one_out, offset + start, buf[: stop - start])
        top = s.amax(dim=1, keepdim=True)  # finite: every row keeps at least one key
        _exp_(s.sub_(top), floor)
        lse[start:stop] = s.sum(dim=1).log_().add_(top.squeeze(1))
    return lse


class _ChunkedLSE(torch.autograd.Function):
    """Queries and keys are different tensors (the distributed case: local queries, gathered keys).

    Forward streams over query chunks and saves only q, k, bias and the (n,) lse. Backward
    recomputes each chunk's softmax weights w_ij = exp(s_ij - lse_i) and forms
    dq_i = scale sum_j g_i w_ij k_j,  dk_j = scale sum_i g_i w_ij q_i,  dbias_j = sum_i g_i w_ij.
    Memory is O(chunk * m) in forward and backward.
    """

    @staticmethod
    def forward(ctx, q, k, bias, scale, chunk, leave_one_out, offset, floor):
        lse = _lse_forward(q, k, bias, scale, chunk, leave_one_out, offset, floor)
        ctx.save_for_backward(q, k, bias, lse)
        ctx.args = (scale, chunk, leave_one_out, offset, floor)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        q, k, bias, lse = ctx.saved_tensors
        scale, chunk, leave_one_out, offset, floor = ctx.args
        need_q, need_k, need_b = ctx.needs_input_grad[:3]
        dq = torch.zeros_like(q) if need_q else None
        dk = torch.zeros_like(k) if need_k else None
        db = torch.zeros_like(bias) if need_b else None
        buf = q.new_empty(min(chunk, q.shape[0]), k.shape[0])
        with torch.autocast(q.device.type, enabled=False):
            for start, stop in _chunks(q.shape[0], chunk):
                w = _scores(q[start:stop], k, bias, scale, leave_one_out, offset + start, buf[: stop - start])
                _exp_(w.sub_(lse[start:stop, None]), floor).mul_(g[start:stop, None])  # g_i w_ij
                if need_q:
                    torch.addmm(dq[start:stop], w, k, beta=0, alpha=scale, out=dq[start:stop])
                if need_k:
                    dk.addmm_(w.T, q[start:stop], alpha=scale)
                if need_b:
                    db.add_(w.sum(dim=0))
        return dq, dk, db, None, None, None, None, None


class _ChunkedSelfLSE(torch.autograd.Function):
    """Queries are the keys (single process): lse_i = logsumexp_j (scale z_i.z_j + bias_j).

    Forward as in :class:`_ChunkedLSE`. Backward uses the symmetry of z z^T: for the rows c of a
    chunk, one recomputed block P = scale z_c z^T gives both the row weights g_i w_ij (i in c) and
    the transposed column weights g_j w_ji, so
    dz_i = scale sum_j (g_i w_ij + g_j w_ji) z_j  and  dbias_i = sum_j g_j w_ji
    cost one matmul per chunk besides the recomputation: three N x N x d matmuls in all, as many
    as dense autograd, with O(chunk * N) memory.
    """

    @staticmethod
    def forward(ctx, z, bias, scale, chunk, leave_one_out, floor):
        lse = _lse_forward(z, z, bias, scale, chunk, leave_one_out, 0, floor)
        ctx.save_for_backward(z, bias, lse)
        ctx.args = (scale, chunk, leave_one_out, floor)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        z, bias, lse = ctx.saved_tensors
        scale, chunk, leave_one_out, floor = ctx.args
        need_z, need_b = ctx.needs_input_grad[:2]
        if not (need_z or need_b):
            return None, None, None, None, None, None
        dz = torch.zeros_like(z) if need_z else None
        db = torch.zeros_like(bias) if need_b else None
        n = z.shape[0]
        row_buf, col_buf = z.new_empty(min(chunk, n), n), z.new_empty(min(chunk, n), n)
        with torch.autocast(z.device.type, enabled=False):
            for start, stop in _chunks(n, chunk):
                # cols <- P = scale z_c z^T, the one recomputed block
                cols = col_buf[: stop - start]
                torch.addmm(cols, z[start:stop], z.T, beta=0, alpha=scale, out=cols)
                # rows: s_ij - lse_i = P_ij + bias_j - lse_i   (i in the chunk, all j)
                rows = torch.sub(cols, lse[start:stop, None], out=row_buf[: stop - start])
                # cols, transposed: s_ji - lse_j = P_ij + bias_i - lse_j
                cols.sub_(lse[None, :])
                if bias is not None:
                    rows.add_(bias)
                    cols.add_(bias[start:stop, None])
                if leave_one_out:
                    rows.diagonal(start).fill_(-math.inf)
                    cols.diagonal(start).fill_(-math.inf)
                _exp_(rows, floor).mul_(g[start:stop, None])  # g_i w_ij
                _exp_(cols, floor).mul_(g[None, :])  # g_j w_ji
                if need_b:
                    db[start:stop] = cols.sum(dim=1)
                if need_z:
                    torch.addmm(dz[start:stop], rows.add_(cols), z, beta=0, alpha=scale, out=dz[start:stop])
        return dz, db, None, None, None, None


def _lse(q, k, bias, scale, chunk, leave_one_out, offset, floor=True):
    """Dispatch: dense autograd (chunk None), symmetric chunked (q is k) or general chunked.

    ``floor=False`` promises that no log-weight s_ij - lse_i falls below ``_EXP_FLOOR`` (saves a pass).
    """
    if chunk is None:
        return _lse_dense(q, k, bias, scale, leave_one_out, offset)
    if q is k:
        return _ChunkedSelfLSE.apply(q, bias, scale, chunk, leave_one_out, floor)
    return _ChunkedLSE.apply(q, k, bias, scale, chunk, leave_one_out, offset, floor)


# --------------------------------------------------------------------------------------------
# KDE entropy
# --------------------------------------------------------------------------------------------


def _check_chunk_size(chunk_size: object) -> int | str | None:
    if chunk_size is None or chunk_size == "auto":
        return chunk_size  # type: ignore[return-value]
    if isinstance(chunk_size, str):
        raise ValueError(f"chunk_size must be None, 'auto' or an int >= 1, got {chunk_size!r}")
    return _checks.positive_int(chunk_size, "chunk_size")


def _number(value: object, name: str) -> float:
    """A positive hyper-parameter, as a float; a tensor that requires grad is refused, not detached."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        raise TypeError(f"{name} must be a number: the KDE entropy does not back-propagate into {name}")
    return _checks.positive(value, name)


def kde_log_density(
    z: torch.Tensor,
    kernel: str = "vmf",
    *,
    kappa: float = 10.0,
    bandwidth: float | None = None,
    leave_one_out: bool = False,
    chunk_size: int | str | None = None,
    distributed: bool = False,
) -> torch.Tensor:
    """Per-sample log density log p(z_i) of the kernel density estimate over the (global) batch.

    vmf: z is L2-normalised; log p(z_i) = log C_d(kappa) + logsumexp_j kappa z_i.z_j - log k.
    gaussian: log p(z_i) = -(d/2) log(2 pi h^2) + logsumexp_j -|z_i - z_j|^2 / (2 h^2) - log k.
    k = N (self term included, as the official ER code [0]) or N - 1 with ``leave_one_out``.

    Args:
        z: (N, d) embeddings (this rank's rows when ``distributed``).
        kernel: "vmf" (on the sphere S^{d-1}) or "gaussian" (in R^d).
        kappa: vMF concentration > 0 (vmf only); a number (no gradient flows into it).
        bandwidth: Gaussian standard deviation h > 0 (required for gaussian, refused for vmf); a number.
        leave_one_out: drop the self term K(z_i, z_i).
        chunk_size: None for the dense N x N evaluation; an int (rows per chunk) or "auto" for a
            chunked evaluation that never forms N x N, in the forward nor in the backward pass.
        distributed: use the keys of all processes (queries stay local).

    Returns:
        (N,) log densities in nats, float32 (float64 for float64 input).
    """
    lse, const = _kde_log_density_parts(z, kernel, kappa, bandwidth, leave_one_out, chunk_size, distributed)
    with torch.autocast(lse.device.type, enabled=False):
        return lse + const


def _kde_log_density_parts(z, kernel, kappa, bandwidth, leave_one_out, chunk_size, distributed):
    """``(lse, const)`` with log p(z_i) = lse_i + const: the (N,) tensor of the data-dependent terms and
    the Python float (float64) of the constant ones, log C - log k, kept apart for the estimators' sums.
    """
    distributed = _checks.boolean(distributed, "distributed")
    leave_one_out = _checks.boolean(leave_one_out, "leave_one_out")
    z = _checks.embeddings(z, "z", min_samples=1 if distributed else 2)
    kernel = _checks.choice(kernel, "kernel", KERNELS)
    if kernel == "vmf":
        kappa = _number(kappa, "kappa")
        if bandwidth is not None:
            raise ValueError("bandwidth is only used with kernel='gaussian'; use kappa for kernel='vmf'")
    else:
        if bandwidth is None:
            raise ValueError("bandwidth is required for kernel='gaussian' (the kernel's standard deviation h > 0)")
        bandwidth = _number(bandwidth, "bandwidth")
    chunk = _check_chunk_size(chunk_size)
    if kernel == "vmf":
        _checks.nonzero_rows(z, "z")

    n, d = z.shape
    with torch.autocast(z.device.type, enabled=False):
        z = z.to(_compute_dtype(z))
        if kernel == "vmf":
            z = F.normalize(z, dim=1)
        keys = dist.gather(z) if distributed else z
        m = keys.shape[0]
        if m < 2:
            raise ValueError(f"z needs at least 2 samples in the global batch, got {m}")
        # the self term of local query i is key row offset + i
        offset = dist.local_slice(n, z.device).start if (leave_one_out and keys is not z) else 0
        if chunk == "auto":
            chunk = auto_chunk_size(n, m, z.dtype)

        if kernel == "vmf":
            log_norm = float(vmf_log_normalizer(d, kappa))
            # unit vectors: s_ij - lse_i >= -2 kappa - log m, so the floor matters only past that
            floor = 2 * kappa + math.log(m) > -_EXP_FLOOR - 1
            lse = _lse(z, keys, None, kappa, chunk, leave_one_out, offset, floor)
        else:
            # Centre on the (detached) key mean before expanding |q - k|^2 = |q|^2 + |k|^2 - 2 q.k:
            # distances are translation invariant, and centring limits the cancellation.
            centre = keys.detach().mean(dim=0)
            q = z - centre
            k_ = q if keys is z else keys - centre
            inv_h2 = 1.0 / bandwidth**2
            bias = -0.5 * inv_h2 * (k_ * k_).sum(dim=1)  # -|k_j|^2 / (2 h^2)
            q_term = -0.5 * inv_h2 * (q * q).sum(dim=1) if k_ is not q else bias
            log_norm = -0.5 * d * math.log(2 * math.pi * bandwidth**2)
            lse = q_term + _lse(q, k_, bias, inv_h2, chunk, leave_one_out, offset)
        n_kernels = m - 1 if leave_one_out else m
        return lse, log_norm - math.log(n_kernels)


def kde_entropy(
    z: torch.Tensor,
    kernel: str = "vmf",
    *,
    kappa: float = 10.0,
    bandwidth: float | None = None,
    estimator: str = "joe",
    leave_one_out: bool = False,
    chunk_size: int | str | None = None,
    distributed: bool = False,
) -> torch.Tensor:
    """Kernel density entropy estimate of a batch of embeddings (ER's entropy term [0]).

    joe [1]: H = -(1/N) sum_i log p(z_i).  plugin: H = sum_i w_i (-log p(z_i)), w = softmax_i log p(z_i)
    (the official code's ``reduction="expectation"``). p is :func:`kde_log_density`'s estimate, with
    the self term included unless ``leave_one_out``. With the self term every -log p(z_i) is at most
    log N - log C_d(kappa) - kappa (vmf), so neither estimate can exceed that, however spread the batch.
    Chunked and dense evaluations agree to round-off, in value and gradient.

    Args:
        z: (N, d) embeddings; L2-normalised here for the vmf kernel.
        kernel, kappa, bandwidth, leave_one_out, chunk_size, distributed: see :func:`kde_log_density`.
        estimator: "joe" or "plugin".

    Returns:
        0-dim tensor, nats (the global-batch value on every rank when ``distributed``).

    Example:
        >>> z = torch.randn(512, 3)
        >>> h = kde_entropy(z, kappa=20.0, leave_one_out=True)  # about log(4 pi) = 2.53
    """
    estimator = _checks.choice(estimator, "estimator", ESTIMATORS)
    # log p(z_i) = lse_i + const. The constant (log C_d(kappa) - log k: -1786 nats at d = 1000) is
    # added once, in float64, after the sums: inside a float32 sum it would carry every term's
    # rounding at its own magnitude (and the softmax weights, which sum to 1 + O(N eps), would
    # multiply it), 1e-3 nats off at d = 1000 where the data-dependent part is known to 1e-5.
    lse, const = _kde_log_density_parts(z, kernel, kappa, bandwidth, leave_one_out, chunk_size, distributed)
    with torch.autocast(lse.device.type, enabled=False):
        if estimator == "joe":
            return -((dist.global_mean(lse) if distributed else lse.mean()) + const)
        all_lse = dist.gather(lse) if distributed else lse
        # softmax is shift invariant, so w = softmax(log p) = softmax(lse); centring on the detached
        # top c leaves the value and the gradient unchanged (sum_i w_i = 1, so sum_i dw_i = 0: c's
        # term has zero gradient) and keeps the terms w_i (lse_i - c) at the size of the spread
        c = all_lse.detach().max()
        w = torch.softmax(all_lse, dim=0)
        return -(((w * (all_lse - c)).sum() + c) + const)


# --------------------------------------------------------------------------------------------
# Discrete, kNN and Gaussian entropies
# --------------------------------------------------------------------------------------------


def discrete_entropy(probs: torch.Tensor, distributed: bool = False) -> torch.Tensor:
    """Plug-in entropy of the batch-mean assignment, -sum_c pbar_c log pbar_c (discrete ER [0]).

    Args:
        probs: (N, K) rows that are probability vectors (e.g. softmax outputs).
        distributed: average the assignments over the global batch.

    Returns:
        0-dim tensor, nats, in [0, log K]. 0 log 0 = 0; a class with pbar_c = 0 exactly gets a zero
        gradient (the true derivative is infinite).
    """
    probs = _checks.tensor(probs, "probs")
    distributed = _checks.boolean(distributed, "distributed")
    atol = 1e-4 if _compute_dtype(probs) == probs.dtype else 1e-2  # half / bf16 rows sum to 1 +- 1e-3
    probs = _checks.probabilities(probs, "probs", atol=atol)
    with torch.autocast(probs.device.type, enabled=False):
        p = probs.to(_compute_dtype(probs))
        pbar = dist.global_mean(p) if distributed else p.mean(dim=0)
        safe = torch.where(pbar > 0, pbar, torch.ones_like(pbar))
        return -(pbar * safe.log()).sum()


def _kth_neighbour(x: torch.Tensor, k: int, block: int = 1024) -> torch.Tensor:
    """Index of each row's k-th nearest other row (Euclidean), in blocks of rows."""
    x = x - x.mean(dim=0)
    sq = (x * x).sum(dim=1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    buf = x.new_empty(min(block, x.shape[0]), x.shape[0])  # reused: no allocation per block
    for start, stop in _chunks(x.shape[0], block):
        d2 = torch.addmm(sq[None, :], x[start:stop], x.T, alpha=-2.0, out=buf[: stop - start])
        d2.add_(sq[start:stop, None])
        d2.diagonal(start).fill_(math.inf)
        out[start:stop] = d2.topk(k, dim=1, largest=False).indices[:, k - 1]
    return out


def knn_entropy(x: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Kozachenko-Leonenko k-nearest-neighbour entropy estimate in R^d [2].

    H = psi(N) - psi(k) + log c_d + (d/N) sum_i log eps_i, c_d = pi^{d/2} / Gamma(1 + d/2) the volume of
    the unit ball and eps_i the Euclidean distance from x_i to its k-th nearest neighbour. Differentiable
    through the distances (the neighbour is chosen without gradient, then eps_i = |x_i - x_nn(i)|).

    Ties: equal distances to different neighbours are harmless (the value depends only on eps_i; the
    gradient follows one of them). Duplicated points that make some eps_i = 0 (log 0 = -inf) raise a
    ValueError: de-duplicate, add jitter, or raise k above the multiplicity.

    Args:
        x: (N, d) samples, N > k.
        k: neighbour order >= 1.

    Returns:
        0-dim tensor, nats.
    """
    x = _checks.embeddings(x, "x", min_samples=2)
    k = _checks.positive_int(k, "k")
    n, d = x.shape
    if k >= n:
        raise ValueError(f"k must be smaller than the number of samples N = {n}, got k = {k}")
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(_compute_dtype(x))
        with torch.no_grad():
            nn = _kth_neighbour(x.detach(), k)
        eps = (x - x[nn]).norm(dim=1)
        if bool((eps.detach() == 0).any()):
            raise ValueError(
                f"x has duplicated points: the distance to the k-th neighbour (k = {k}) is 0 for "
                f"{int((eps.detach() == 0).sum())} samples, so log eps = -inf; de-duplicate or add jitter"
            )
        lgamma = math.lgamma
        log_c_d = 0.5 * d * math.log(math.pi) - lgamma(1 + 0.5 * d)
        psi = torch.special.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64)).tolist()
        return d * eps.log().mean() + (psi[0] - psi[1] + log_c_d)


def gaussian_entropy(cov: torch.Tensor) -> torch.Tensor:
    """Entropy of N(mu, cov) in R^d: 0.5 log det(2 pi e cov).

    Args:
        cov: (..., d, d) symmetric positive-definite covariance matrices.

    Returns:
        (...) tensor, nats.
    """
    cov = _checks.tensor(cov, "cov")
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2] or cov.shape[-1] < 1:
        raise ValueError(f"cov must have shape (..., d, d), got a tensor of shape {tuple(cov.shape)}")
    _checks.finite(cov, "cov")
    cov = cov.to(_compute_dtype(cov))
    if not bool(torch.allclose(cov.detach(), cov.detach().mT, rtol=1e-5, atol=1e-8)):
        raise ValueError("cov must be symmetric")
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise ValueError("cov must be positive definite (Cholesky factorisation failed)")
    d = cov.shape[-1]
    return chol.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1) + 0.5 * d * (1.0 + math.log(2 * math.pi))
