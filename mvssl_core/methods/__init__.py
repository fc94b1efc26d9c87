"""The methods, by name: SimCLR, BYOL, DINO, SwAV, DeepCluster(-v2) and the ER variant of each.

Contract shared by every method (an ``nn.Module``)::

    method = build_method("byol_er", backbone, feature_dim, **hyper)
    method.start_epoch(epoch)                          # at the start of each epoch (DeepCluster clusters)
    out = method(views, progress, indices)             # the one entry point: StepOutput(loss, metrics)
    out = method(views, progress, indices, metrics=False)  # the same loss; no metrics (a step not logged)
    out.loss.backward(); optimizer.step()
    method.after_optimizer_step(progress)              # after a REAL optimizer step (EMA teachers)

``views`` is a list of image batches (global crops first, then local crops for multi-crop),
``progress`` the fraction of training done in [0, 1], ``indices`` the samples' data-set indices
(required by DeepCluster, ignored by the others). Wrap the method itself in
DistributedDataParallel (with ``broadcast_buffers=False``: the SwAV queue is per process and the
DeepCluster bank is large) and call the wrapper, so that the forward hooks run. Build the method
after the process group is initialised (the SwAV queue is split over the processes).
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import partial
from typing import Any, Callable

from torch import nn

from mvssl_core import _checks as checks
from mvssl_core.methods.byol import BYOL
from mvssl_core.methods.deepcluster import DeepCluster
from mvssl_core.methods.dino import DINO
from mvssl_core.methods.simclr import SimCLR
from mvssl_core.methods.step import StepOutput, spec_arg
from mvssl_core.methods.swav import SwAV

__all__ = ["METHODS", "build_method", "resolved_hyper", "StepOutput", "SimCLR", "BYOL", "DINO", "SwAV", "DeepCluster"]

METHODS: dict[str, Callable[..., nn.Module]] = {
    "simclr": SimCLR,
    "simclr_er": partial(SimCLR, er=True),
    "byol": BYOL,
    "byol_er": partial(BYOL, er=True),
    "dino": DINO,
    "dino_er": partial(DINO, er=True),
    "swav": SwAV,
    "swav_er": partial(SwAV, er=True),
    "deepcluster": DeepCluster,
    "deepcluster_er": partial(DeepCluster, er=True),
}
"""name -> builder(backbone, feature_dim, **hyper); an ``*_er`` name sets ``er=True`` and nothing else."""


def build_method(name: str, backbone: nn.Module, feature_dim: int, **hyper: Any) -> nn.Module:
    """Build the method ``name`` (a key of :data:`METHODS`) around ``backbone``.

    Args:
        name: one of :data:`METHODS`.
        backbone: encoder mapping an image batch to (N, feature_dim) features.
        feature_dim: the backbone's output dimension.
        **hyper: keyword arguments of the method's class (see its docstring).
    """
    checks.choice(name, "name", tuple(METHODS))
    if "er" in hyper:
        raise ValueError("pass the ER variant by name (e.g. 'byol_er'), not as er=...")
    return METHODS[name](backbone, feature_dim, **hyper)


def resolved_hyper(name: str, hyper: dict[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter of method ``name`` as a run uses it: the class's defaults, overridden by ``hyper``.

    Head specs become dicts of all their fields (a partial dict from a config fills the rest from the
    spec's defaults). Three derived entries say what the book needs without rebuilding the model:
    ``projection_dim`` (the dimension of the normalised projections the ER terms are logged on),
    ``n_prototypes`` (K of SwAV and DeepCluster) and ``head_out`` (K of DINO).

    Example:
        >>> resolved_hyper("dino", {"head": {"out": 256}})["head"]["hidden"]
        2048
    """
    from mvssl_core.heads import DINOHeadSpec, MLPSpec, PrototypeSpec

    checks.choice(name, "name", tuple(METHODS))
    builder = METHODS[name]
    cls = builder.func if isinstance(builder, partial) else builder
    fixed = builder.keywords if isinstance(builder, partial) else {}
    params = inspect.signature(cls).parameters
    unknown = sorted(set(hyper) - set(params) - {"dataset_size"})
    if unknown:
        raise ValueError(f"hyper has unknown parameters {unknown} for {name}")
    out: dict[str, Any] = {}
    for key, p in params.items():
        if key in ("backbone", "feature_dim", "distributed") or p.kind is p.VAR_KEYWORD:
            continue
        value = hyper.get(key, fixed.get(key, p.default))
        if value is inspect.Parameter.empty:
            continue
        kind = type(p.default)
        if kind in (MLPSpec, DINOHeadSpec, PrototypeSpec) and value is not None:  # predictor=None stays None
            value = dataclasses.asdict(spec_arg(value, kind, key))
        out[key] = value
    if "head" in out:  # DINO
        out["projection_dim"], out["head_out"] = out["head"]["bottleneck"], out["head"]["out"]
    elif "projector" in out:
        out["projection_dim"] = out["projector"]["out"]
    if isinstance(out.get("prototypes"), dict):
        out["n_prototypes"] = out["prototypes"]["n_prototypes"]
    return out
