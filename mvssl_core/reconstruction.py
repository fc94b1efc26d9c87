"""Reconstruction terms ``log q(z2 | z1)`` of the ER bound: vMF, Gaussian and discrete.

The ER bound [0] is ``I(Z1; Z2) >= H(Z2) + E[log q(Z2 | Z1)]``; this module holds the second
term for the three densities the paper uses. Every value is a log-density (or log-probability)
in nats, per sample (``reduction="none"``) or averaged over the batch (``reduction="mean"``).

Sphere rule: :func:`vmf_log_likelihood` L2-normalises both of its inputs, as every sphere
estimator of ``mvssl_core`` does. :func:`gaussian_log_likelihood` works in R^d and does not.

[0] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View
    Self-Supervised Learning", ICML 2023, arXiv 2307.10907.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mvssl_core import _checks as checks
from mvssl_core import special

__all__ = ["vmf_log_likelihood", "gaussian_log_likelihood", "discrete_log_likelihood"]

_REDUCTIONS = ("mean", "none")
_HALF = (torch.float16, torch.bfloat16)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 -> float32, so that sums and log-sum-exps run in float32 at least."""
    return x.float() if x.dtype in _HALF else x


def _no_autocast(x: torch.Tensor):
    """A context that turns autocast off on ``x``'s device: products stay in the upcast dtype."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _kappa(kappa: object) -> float | torch.Tensor:
    """Validate kappa > 0; a tensor kappa is kept (so it can be learned), a number becomes a float."""
    value = checks.positive(kappa, "kappa")
    return kappa.reshape(()) if isinstance(kappa, torch.Tensor) else value


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    return per_sample.mean() if reduction == "mean" else per_sample


def vmf_log_likelihood(
    z2: torch.Tensor, mean: torch.Tensor, kappa: float | torch.Tensor = 10.0, reduction: str = "mean"
) -> torch.Tensor:
    """von Mises-Fisher log-density ``log C_d(kappa) + kappa mean^T z2`` on the sphere S^{d-1} [0].

    Both inputs are L2-normalised first (the sphere rule). ``log C_d`` is the exact log-domain
    normaliser of :func:`mvssl_core.special.vmf_log_normalizer`, valid for any d (the official
    code's ``log(iv(d/2 - 1, kappa) + 1e-7)`` is off by a constant from d of about 58).

    Args:
        z2: (N, d) samples (the view to reconstruct).
        mean: (N, d) vMF mean directions, e.g. the other view's projections or a predictor output.
        kappa: concentration > 0 (a float, or a one-element tensor to learn it).
        reduction: "mean" (scalar) or "none" (per sample, shape (N,)).

    Returns:
        Log-density in nats with respect to the surface measure of S^{d-1}.
    """
    z2 = checks.embeddings(z2, "z2", min_samples=1)
    mean = checks.embeddings(mean, "mean", min_samples=1)
    checks.same_shape(z2, mean, "z2", "mean")
    checks.nonzero_rows(z2, "z2")  # the sphere rule: a zero row has no direction
    checks.nonzero_rows(mean, "mean")
    kappa = _kappa(kappa)
    checks.choice(reduction, "reduction", _REDUCTIONS)
    d = z2.shape[1]
    if d < 2:
        raise ValueError(f"z2 must have d >= 2 columns for a vMF density on the sphere S^(d-1), got d = {d}")
    with _no_autocast(z2):
        z2n = F.normalize(_upcast(z2), dim=1)
        mn = F.normalize(_upcast(mean), dim=1)
        dtype = torch.promote_types(z2n.dtype, mn.dtype)
        cosine = (z2n.to(dtype) * mn.to(dtype)).sum(dim=1)
        log_c = special.vmf_log_normalizer(d, kappa)
        log_c = torch.as_tensor(log_c, device=z2.device).to(dtype)
        if isinstance(kappa, torch.Tensor):
            kappa = kappa.to(dtype)
        per_sample = log_c + kappa * cosine
    return _reduce(per_sample, reduction)


def gaussian_log_likelihood(
    z2: torch.Tensor, mean: torch.Tensor, bandwidth: float, reduction: str = "mean"
) -> torch.Tensor:
    """Isotropic Gaussian log-density ``log N(z2; mean, h^2 I)`` in R^d (no normalisation).

    ``-(d/2) log(2 pi h^2) - |z2 - mean|^2 / (2 h^2)``. With ``mean = z1`` this is the
    reconstruction term that, with a Gaussian KDE entropy, relates ER to alignment + uniformity [0].

    Args:
        z2: (N, d) samples.
        mean: (N, d) means.
        bandwidth: standard deviation h > 0 of each coordinate.
        reduction: "mean" (scalar) or "none" (per sample, shape (N,)).

    Returns:
        Log-density in nats with respect to the Lebesgue measure of R^d.
    """
    z2 = checks.embeddings(z2, "z2", min_samples=1)
    mean = checks.embeddings(mean, "mean", min_samples=1)
    checks.same_shape(z2, mean, "z2", "mean")
    h = checks.positive(bandwidth, "bandwidth")
    checks.choice(reduction, "reduction", _REDUCTIONS)
    d = z2.shape[1]
    with _no_autocast(z2):
        a, b = _upcast(z2), _upcast(mean)
        dtype = torch.promote_types(a.dtype, b.dtype)
        sq = (a.to(dtype) - b.to(dtype)).pow(2).sum(dim=1)
        per_sample = -0.5 * d * math.log(2 * math.pi * h * h) - sq / (2 * h * h)
    return _reduce(per_sample, reduction)


def discrete_log_likelihood(
    target_probs: torch.Tensor, logits: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Expected log-probability ``sum_c target_c log softmax(logits)_c`` (minus the cross-entropy) [0].

    The discrete ER reconstruction term: the target assignment of one view scored under the
    predicted assignment of the other. ``log_softmax`` keeps it finite for any finite logits.

    Args:
        target_probs: (N, K) rows that are probability vectors (>= 0, summing to 1).
        logits: (N, K) unnormalised log-probabilities of the prediction.
        reduction: "mean" (scalar) or "none" (per sample, shape (N,)).

    Returns:
        Log-probability in nats (<= 0).
    """
    # Rounding an exact probability vector to a dtype moves its sum by at most eps/2: allow eps.
    atol = 1e-4
    if isinstance(target_probs, torch.Tensor) and target_probs.dtype in _HALF:
        atol = max(atol, torch.finfo(target_probs.dtype).eps)
    target_probs = checks.probabilities(target_probs, "target_probs", atol=atol)
    logits = checks.embeddings(logits, "logits", min_samples=1)
    checks.same_shape(target_probs, logits, "target_probs", "logits")
    checks.choice(reduction, "reduction", _REDUCTIONS)
    with _no_autocast(logits):
        t, l = _upcast(target_probs), _upcast(logits)
        dtype = torch.promote_types(t.dtype, l.dtype)
        per_sample = (t.to(dtype) * F.log_softmax(l.to(dtype), dim=1)).sum(dim=1)
    return _reduce(per_sample, reduction)
