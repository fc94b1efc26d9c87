"""What a training step is made of: its output, the multi-crop forward, and the ER report.

Every method returns a :class:`StepOutput`: the loss to back-propagate and, detached, the ER
terms of its projections, so the entropy dynamics of any method can be plotted
(:func:`projection_metrics`, :func:`assignment_metrics`).

[0] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023, arXiv 2307.10907.
[1] Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the Downstream Performance of
    Pretrained Self-Supervised Representations by Their Rank", ICML 2023.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from mvssl_core import _checks as checks
from mvssl_core import bounds, dist
from mvssl_core.heads import as_spec

__all__ = [
    "StepOutput",
    "forward_crops",
    "check_views",
    "naming_views",
    "spec_arg",
    "check_progress",
    "projection_metrics",
    "assignment_metrics",
    "report",
]


class StepOutput(NamedTuple):
    """A training step's result: ``loss`` (0-dim, with gradient) and detached ``metrics`` (floats, nats).

    Metrics of every method: "loss", "entropy" (vMF KDE entropy of the normalised projections),
    "reconstruction" (vMF log q(z2 | z1) between the projections of two views), "collapse_std"
    (std of the normalised projections over the batch, averaged over dimensions; about 1/sqrt(d)
    when spread uniformly, 0 when collapsed), "effective_rank" (exp of the entropy of the
    normalised singular values [1]). Methods with assignments add "discrete_entropy" and
    "discrete_reconstruction"; ER variants add "loss_entropy" and "loss_reconstruction", the two
    terms of the bound they maximise.

    Every method's forward takes ``metrics=True``; with ``metrics=False`` (the trainer's steps that write
    no log line) ``metrics`` is empty: no metric is computed, gathered or copied to the host, and the
    loss and its gradient are the same, bit for bit.
    """

    loss: torch.Tensor
    metrics: dict[str, float]


def check_views(views: object, minimum: int) -> list[torch.Tensor]:
    """At least ``minimum`` image batches in a list: floating ``(N, C, H, W)`` tensors of one N and one C.

    Shapes and dtypes only (no look at the values, so no device sync): NaN or inf pixels flow through
    the networks and are reported where the loss checks its inputs (:func:`naming_views`).
    """
    if isinstance(views, torch.Tensor) or not isinstance(views, (list, tuple)):
        raise TypeError(f"views must be a list of image batches, got {type(views).__name__}")
    if len(views) < minimum:
        raise ValueError(f"views must hold at least {minimum} views, got {len(views)}")
    for i, v in enumerate(views):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"views[{i}] must be a tensor (an image batch), got {type(v).__name__}")
        if not torch.is_floating_point(v):
            raise TypeError(f"views[{i}] must be a floating-point image batch, got dtype {v.dtype}")
        if v.dim() != 4:
            raise ValueError(f"views[{i}] must have shape (N, C, H, W), got a tensor of shape {tuple(v.shape)}")
    n, c = views[0].shape[:2]
    for i, v in enumerate(views):
        if v.shape[0] != n:
            raise ValueError(f"every view must have the same batch size, views[0] has {n} and views[{i}] {v.shape[0]}")
        if v.shape[1] != c:
            raise ValueError(
                f"every view must have the same number of channels, views[0] has {c} and views[{i}] {v.shape[1]}"
            )
    return list(views)


@contextlib.contextmanager
def naming_views() -> Iterator[None]:
    """Re-raise a loss's "must contain only finite values" error as one that names ``views``.

    A method's forward checks no pixel values (that would be one more device sync per step); the
    losses already check that the projections they get are finite, and this says where such
    values came from: the views given to the forward, or weights that diverged.
    """
    try:
        yield
    except ValueError as e:
        if "must contain only finite values" not in str(e):
            raise
        raise ValueError(
            f"views gave non-finite projections (NaN or inf in the input views, or weights that diverged): {e}"
        ) from e


_Spec = TypeVar("_Spec")


def spec_arg(value: object, cls: type[_Spec], name: str) -> _Spec:
    """``value`` as a head spec of type ``cls`` (a spec, or a dict of its fields from a config file).

    Every error names the method's argument ``name``: "projector: hidden must be an int >= 1, got 0".
    """
    try:
        return as_spec(value, cls, name)  # type: ignore[type-var]
    except (TypeError, ValueError) as e:
        if str(e).startswith((f"{name} ", f"{name}:")):  # as_spec named it already
            raise
        raise type(e)(f"{name}: {e}") from None


def check_progress(progress: object) -> float:
    """The fraction of training done, a finite number in [0, 1] (every method's forward and EMA step).

    The schedules read it (DINO's teacher temperature, the EMA momentum, SwAV's queue start and
    prototype freezing): a progress of 2.0 or "0.5" must fail here, not run a step off the schedule.
    """
    return checks.fraction(progress, "progress")


def forward_crops(network: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Run ``network`` on every view; consecutive views of one shape go through in one batch.

    Multi-crop (SwAV, DINO) mixes resolutions; as in their official code, each run of equal-size
    crops is concatenated into one forward pass (so BatchNorm sees them together).

    Returns:
        (V * N, ...) the outputs of all views, concatenated in the order of ``views``.
    """
    outputs, start = [], 0
    while start < len(views):
        stop = start + 1
        while stop < len(views) and views[stop].shape == views[start].shape:
            stop += 1
        outputs.append(network(torch.cat(views[start:stop])))
        start = stop
    return torch.cat(outputs)


@torch.no_grad()
def projection_metrics(
    z1: torch.Tensor, z2: torch.Tensor, kappa: float = 10.0, distributed: bool = False
) -> dict[str, torch.Tensor]:
    """ER terms and collapse signals of two views' projections (detached, global batch).

    "entropy" is the vMF KDE (Joe's estimator, self term included, ``kappa``) of the normalised
    ``z2``; "reconstruction" the mean vMF log-likelihood log q(z2 | z1) with the same kappa
    (:func:`mvssl_core.bounds.er_bound`). "collapse_std" and "effective_rank" are of ``z1``.

    With ``distributed``, the rows of both views are gathered at once (an all-gather of the sizes and
    one of the rows; no other collective) and every rank computes the terms of the whole batch (the
    KDE's N x N scores of the global batch: the trainer asks for metrics only on the logged steps).
    """
    with torch.autocast(z1.device.type, enabled=False):
        a, b = z1.detach().float(), z2.detach().float()
        if distributed:  # one gather of both views (and one of the sizes), then the global batch on every rank
            a, b = dist.gather(torch.cat([a, b], dim=1)).split([a.shape[1], b.shape[1]], dim=1)
        er = bounds.er_bound(a, b, kappa=kappa)
        z = F.normalize(a, dim=1)
        return {
            "entropy": er.entropy,
            "reconstruction": er.reconstruction,
            "collapse_std": z.std(dim=0).mean(),
            "effective_rank": _effective_rank(z),
        }


def _effective_rank(z: torch.Tensor) -> torch.Tensor:
    """exp of the entropy of the normalised singular values p_i = s_i / sum_j s_j of ``z`` (N, d).

    The singular values are the square roots of the eigenvalues of the Gram matrix z^T z (d x d; z z^T
    where N < d), formed and diagonalised in float64: an eigensolver of a small m x m matrix instead of
    an SVD of the batch. The eigenvalues carry a rounding error of about m eps64 lambda_max; those below
    it are taken as 0 (``torch.linalg.matrix_rank``'s rule), so a rank-deficient (collapsed) batch has
    exactly its rank's singular values. Singular values below sqrt(m eps64) s_max (2.4e-7 s_max for
    m = 256) are thus not resolved; in float32 data they are below the rounding of the data itself,
    which float32's own SVD does not resolve either. p log p is 0 where p is 0.

    Returns:
        0-dim tensor in [1, min(N, d)], in z's dtype.
    """
    z64 = z.double()
    gram = z64.T @ z64 if z.shape[1] <= z.shape[0] else z64 @ z64.T
    eigenvalues = torch.linalg.eigvalsh(gram)
    noise = eigenvalues[-1] * gram.shape[0] * torch.finfo(torch.float64).eps
    singular = torch.where(eigenvalues > noise, eigenvalues, 0.0).sqrt()
    p = singular / singular.sum().clamp_min(torch.finfo(torch.float64).tiny)  # all 0 (z = 0): rank 1, as before
    return torch.exp(-torch.special.xlogy(p, p).sum()).to(z.dtype)


@torch.no_grad()
def assignment_metrics(
    prediction_logits: torch.Tensor,
    target_logits: torch.Tensor,
    temperature: float,
    target_temperature: float | None = None,
    distributed: bool = False,
) -> dict[str, torch.Tensor]:
    """Discrete ER terms of soft assignments (detached): entropy of the batch-mean target assignment
    ``softmax(target_logits / target_temperature)`` and the mean ``sum_c w_target log w_pred``
    (:func:`mvssl_core.bounds.er_bound_discrete`, one direction).

    With ``distributed``, both terms come from one all-reduce of this rank's sums (the K target
    assignments, the reconstruction and the row count), with no host sync.
    """
    if not distributed:
        er = bounds.er_bound_discrete(
            prediction_logits.detach(),
            target_logits.detach(),
            temperature=temperature,
            target_temperature=target_temperature,
            symmetric=False,
        )
        return {"discrete_entropy": er.entropy, "discrete_reconstruction": er.reconstruction}
    # er_bound_discrete's terms, from sums over the global batch (its input checks run on this rank's rows)
    pred = checks.embeddings(prediction_logits.detach(), "logits1", min_samples=2)
    target = checks.embeddings(target_logits.detach(), "logits2", min_samples=2)
    checks.same_shape(pred, target, "logits1", "logits2")
    tau = checks.positive(temperature, "temperature")
    tau_t = tau if target_temperature is None else checks.positive(target_temperature, "target_temperature")
    with torch.autocast(pred.device.type, enabled=False):
        dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
        w = torch.softmax(target.to(dtype) / tau_t, dim=1)
        per_i = (w * torch.log_softmax(pred.to(dtype) / tau, dim=1)).sum(dim=1)
        count = torch.full((1,), per_i.shape[0], dtype=dtype, device=per_i.device)
        sums = dist.all_reduce_sum(torch.cat([w.sum(dim=0), per_i.sum()[None], count]))
        pbar, n = sums[:-2] / sums[-1], sums[-1]
        safe = torch.where(pbar > 0, pbar, torch.ones_like(pbar))
        return {"discrete_entropy": -(pbar * safe.log()).sum(), "discrete_reconstruction": sums[-2] / n}


def report(loss: torch.Tensor, *metric_dicts: dict[str, torch.Tensor]) -> StepOutput:
    """Bundle the loss and the metric tensors; the metrics become floats with one device sync."""
    metrics = {"loss": loss.detach()}
    for d in metric_dicts:
        metrics.update({k: v.detach() for k, v in d.items()})
    values = torch.stack([v.to(torch.float64).reshape(()) for v in metrics.values()]).tolist()
    return StepOutput(loss, dict(zip(metrics, values)))
