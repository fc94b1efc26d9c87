"""SimCLR [0] and its ER variant: backbone + projector + NT-Xent (or minus the continuous ER bound [1]).

[0] Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020.
[1] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023, arXiv 2307.10907.
"""

from __future__ import annotations

import torch
from torch import nn

from mvssl_core import _checks as checks
from mvssl_core import bounds
from mvssl_core.heads import SIMCLR_PROJECTOR, MLPSpec, build_mlp
from mvssl_core.losses import ER_TERMS, er_loss, nt_xent
from mvssl_core.methods.step import (
    StepOutput,
    check_progress,
    check_views,
    naming_views,
    spec_arg,
    forward_crops,
    projection_metrics,
    report,
)

__all__ = ["SimCLR"]


class SimCLR(nn.Module):
    """SimCLR: two views, a shared encoder and projector, the NT-Xent loss over the (global) batch [0].

    ER variant (``er=True``, [1]): the loss is minus the continuous ER bound on the projections,
    symmetrised over the two views, ``-(ER(z2 | z1) + ER(z1 | z2)) / 2`` with
    ``ER(z2 | z1) = H_KDE(z2) + mean log q_vMF(z2 | z1)`` (:func:`mvssl_core.bounds.er_bound`).
    Choices the paper leaves open, as parameters: the vMF concentration ``kappa`` (10, the
    official code's default) for both terms, and the entropy estimator ("joe"; the official code
    defaults to "plugin").

    Args:
        backbone: encoder mapping an image batch to (N, feature_dim) features.
        feature_dim: the backbone's output dimension.
        projector: the projection MLP (:data:`mvssl_core.heads.SIMCLR_PROJECTOR`).
        temperature: NT-Xent temperature tau (0.1).
        er: use the ER bound as the loss.
        er_terms: with ``er``, maximise \"both\" terms of the bound, or only the \"entropy\" or the
            \"reconstruction\" term (the ablation; both are still logged).
        kappa: vMF concentration of the ER loss.
        estimator: KDE entropy estimator of the ER loss, "joe" or "plugin".
        monitor_kappa: vMF concentration of the reported "entropy" / "reconstruction".
        distributed: losses and metrics over the global batch (see :mod:`mvssl_core.dist`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector: MLPSpec = SIMCLR_PROJECTOR,
        temperature: float = 0.1,
        er: bool = False,
        er_terms: str = "both",
        kappa: float = 10.0,
        estimator: str = "joe",
        monitor_kappa: float = 10.0,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = build_mlp(feature_dim, spec_arg(projector, MLPSpec, "projector"))
        self.temperature = checks.positive(temperature, "temperature")
        self.er = checks.boolean(er, "er")
        self.er_terms = checks.choice(er_terms, "er_terms", ER_TERMS)
        self.kappa = checks.positive(kappa, "kappa")
        self.estimator = checks.choice(estimator, "estimator", ("joe", "plugin"))
        self.monitor_kappa = checks.positive(monitor_kappa, "monitor_kappa")
        self.distributed = checks.boolean(distributed, "distributed")

    def forward(
        self, views: list[torch.Tensor], progress: float = 0.0, indices: torch.Tensor | None = None,
        metrics: bool = True,
    ) -> StepOutput:
        views = check_views(views, 2)
        metrics = checks.boolean(metrics, "metrics")
        progress = check_progress(progress)
        z1, z2 = self.projector(forward_crops(self.backbone, views[:2])).chunk(2)
        extra = {}
        with naming_views():
            if self.er:
                kw = dict(kappa=self.kappa, estimator=self.estimator, distributed=self.distributed)
                a, b = bounds.er_bound(z1, z2, **kw), bounds.er_bound(z2, z1, **kw)
                h, rec = (a.entropy + b.entropy) / 2, (a.reconstruction + b.reconstruction) / 2
                loss, extra = er_loss(h, rec, self.er_terms)
            else:
                loss = nt_xent(z1, z2, temperature=self.temperature, distributed=self.distributed)
            if not metrics:
                return StepOutput(loss, {})
            return report(loss, projection_metrics(z1, z2, self.monitor_kappa, self.distributed), extra)

    def after_optimizer_step(self, progress: float) -> None:
        """Nothing to do: SimCLR has no teacher."""
        check_progress(progress)

    def start_epoch(self, epoch: int) -> None:
        """Nothing to do: SimCLR keeps no per-epoch state."""
