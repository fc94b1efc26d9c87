"""BYOL [0] and its ER variant: online network + predictor, EMA target network, normalised MSE
(or minus the continuous ER bound [1]).

[0] Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020.
[1] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023, arXiv 2307.10907.
"""

from __future__ import annotations

import torch
from torch import nn

from mvssl_core import _checks as checks
from mvssl_core import bounds, entropy
from mvssl_core.ema import EMATeacher
from mvssl_core.heads import BYOL_PREDICTOR, BYOL_PROJECTOR, MLPSpec, build_mlp
from mvssl_core.losses import ER_TERMS, byol_loss, er_loss
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

__all__ = ["BYOL"]


class BYOL(nn.Module):
    """BYOL: the online network's prediction of one view regresses the target network's projection
    of the other; the target is an EMA of the online network (momentum 0.996 -> 1, cosine) [0].

    Loss ``L = byol(p1, z'2) + byol(p2, z'1)`` (the paper's symmetrised sum), ``byol = 2 - 2 cos``.

    ER variant (``er=True``, [1]): the loss is ``-(ER_{2|1} + ER_{1|2}) / 2`` with
    ``ER_{2|1} = H(z2) + mean log q_vMF(z'2 | p1, kappa)``: the reconstruction is the vMF
    log-likelihood of the target projection z'2 (stop-gradient) around the online prediction p1
    (BYOL's own term with kappa in place of 1). Which branch's entropy enters is the open choice:
    the target branch gets no gradient, so by default (``entropy_branch="online"``) the entropy is
    the KDE entropy of the *online projections* z2 of the same view, the network the target
    averages; ``"target"`` uses H(z'2), which only reports and does not train. Everything else
    (EMA, predictor) is unchanged.

    ``predictor=None`` and ``base_momentum = final_momentum = 0`` (target = online network,
    stop-gradient) give the ablation without predictor and EMA, which collapses.

    Args:
        backbone: encoder mapping an image batch to (N, feature_dim) features.
        feature_dim: the backbone's output dimension.
        projector: projection MLP (:data:`mvssl_core.heads.BYOL_PROJECTOR`).
        predictor: prediction MLP (:data:`mvssl_core.heads.BYOL_PREDICTOR`) or None (identity).
        base_momentum: EMA momentum at the start (0.996 at batch 4096; 0.99 suits small batches).
        final_momentum: EMA momentum at the end (1).
        er: use the ER bound as the loss.
        er_terms: with ``er``, maximise \"both\" terms of the bound, or only the \"entropy\" or the
            \"reconstruction\" term (the ablation; both are still logged).
        kappa: vMF concentration of the ER loss (10, the official code's default).
        entropy_branch: "online" or "target", see above.
        monitor_kappa: vMF concentration of the reported "entropy" / "reconstruction".
        distributed: losses and metrics over the global batch.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector: MLPSpec = BYOL_PROJECTOR,
        predictor: MLPSpec | None = BYOL_PREDICTOR,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        er: bool = False,
        er_terms: str = "both",
        kappa: float = 10.0,
        entropy_branch: str = "online",
        monitor_kappa: float = 10.0,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        projector = spec_arg(projector, MLPSpec, "projector")
        self.projector = build_mlp(feature_dim, projector)
        if predictor is not None:
            predictor = spec_arg(predictor, MLPSpec, "predictor")
        self.predictor = nn.Identity() if predictor is None else build_mlp(projector.out, predictor)
        self.teacher = EMATeacher({"backbone": backbone, "projector": self.projector}, base_momentum, final_momentum)
        self.er = checks.boolean(er, "er")
        self.er_terms = checks.choice(er_terms, "er_terms", ER_TERMS)
        self.kappa = checks.positive(kappa, "kappa")
        self.entropy_branch = checks.choice(entropy_branch, "entropy_branch", ("online", "target"))
        self.monitor_kappa = checks.positive(monitor_kappa, "monitor_kappa")
        self.distributed = checks.boolean(distributed, "distributed")

    def forward(
        self, views: list[torch.Tensor], progress: float = 0.0, indices: torch.Tensor | None = None,
        metrics: bool = True,
    ) -> StepOutput:
        views = check_views(views, 2)
        metrics = checks.boolean(metrics, "metrics")
        progress = check_progress(progress)
        z = self.projector(forward_crops(self.backbone, views[:2]))
        p1, p2 = self.predictor(z).chunk(2)
        z1, z2 = z.chunk(2)
        with torch.no_grad():
            t1, t2 = self.teacher["projector"](forward_crops(self.teacher["backbone"], views[:2])).chunk(2)
        extra = {}
        with naming_views():
            if self.er:
                terms = []
                for p, t, online in ((p1, t2, z2), (p2, t1, z1)):
                    er = bounds.er_bound(p, t, kappa=self.kappa, distributed=self.distributed)  # H(t), log q(t | p)
                    h = er.entropy
                    if self.entropy_branch == "online":
                        h = entropy.kde_entropy(online, kappa=self.kappa, distributed=self.distributed)
                    terms.append((h, er.reconstruction))
                h = (terms[0][0] + terms[1][0]) / 2
                rec = (terms[0][1] + terms[1][1]) / 2
                loss, extra = er_loss(h, rec, self.er_terms)
            else:
                loss = byol_loss(p1, t2, self.distributed) + byol_loss(p2, t1, self.distributed)
            if not metrics:
                return StepOutput(loss, {})
            return report(loss, projection_metrics(z1, z2, self.monitor_kappa, self.distributed), extra)

    def after_optimizer_step(self, progress: float) -> None:
        """Move the target network towards the online network (after a real optimizer step)."""
        self.teacher.update_({"backbone": self.backbone, "projector": self.projector}, progress)

    def start_epoch(self, epoch: int) -> None:
        """Nothing to do: BYOL keeps no per-epoch state."""
