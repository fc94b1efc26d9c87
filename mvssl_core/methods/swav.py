"""SwAV [0] and its ER variant: projector + prototypes, multi-crop, swapped prediction of
Sinkhorn-Knopp codes (or minus the discrete ER bound [1]).

[0] Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
    NeurIPS 2020.
[1] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023, arXiv 2307.10907.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvssl_core import _checks as checks
from mvssl_core import bounds, dist
from mvssl_core.heads import SWAV_PROJECTOR, SWAV_PROTOTYPES, MLPSpec, Prototypes, PrototypeSpec, build_mlp
from mvssl_core.losses import ER_TERMS, SwAVQueue, er_loss, sinkhorn, swav_loss
from mvssl_core.methods.step import (
    StepOutput,
    assignment_metrics,
    check_progress,
    check_views,
    naming_views,
    spec_arg,
    forward_crops,
    projection_metrics,
    report,
)

__all__ = ["SwAV"]


class SwAV(nn.Module):
    """SwAV: predict the Sinkhorn-Knopp code of one crop from the prototype scores of another [0].

    ``views``: ``n_global`` global crops first (they get codes), then local crops. Projections are
    L2-normalised, prototypes re-normalised before every step, scores are cosines; codes come
    from :func:`mvssl_core.losses.sinkhorn` (epsilon 0.05, 3 iterations, global batch), optionally
    with a queue of past projections (:class:`mvssl_core.losses.SwAVQueue`; SwAV uses 3840 rows
    from epoch 15 when the batch is 256), and the loss is :func:`mvssl_core.losses.swav_loss`.

    ER variant (``er=True``, [1]): the Sinkhorn codes and the swapped prediction are replaced by
    minus the discrete ER bound on the soft assignments ``softmax(scores / tau)`` over the same crop
    pairs (:func:`mvssl_core.bounds.er_bound_discrete_multicrop`): the entropy of the batch-mean assignment of each global
    crop takes the place of the equipartition constraint. Open choice, as a parameter: the target
    temperature (None: the same tau as the prediction). No queue is used by the ER loss.

    Args:
        backbone: encoder mapping an image batch (any crop size) to (N, feature_dim) features.
        feature_dim: the backbone's output dimension.
        projector: projection MLP (:data:`mvssl_core.heads.SWAV_PROJECTOR`).
        prototypes: prototype sets (:data:`mvssl_core.heads.SWAV_PROTOTYPES`, 3000).
        n_global: number of global (coded) crops (2).
        temperature: tau of the predicted assignments (0.1).
        epsilon, sinkhorn_iters: Sinkhorn-Knopp regularisation and iterations (0.05, 3).
        queue_length: rows of the queue over all processes, split evenly between them (0: no queue;
            3840 in [0] at batch 256).
        queue_start: fraction of training after which the queue is filled (and used once full).
        freeze_prototypes: fraction of training during which the prototypes get no gradient
            (SwAV: the first epoch, 1 / epochs).
        er: use the discrete ER bound as the loss.
        er_terms: with ``er``, maximise \"both\" terms of the bound, or only the \"entropy\" or the
            \"reconstruction\" term (the ablation; both are still logged).
        target_temperature: tau of the ER targets (None: ``temperature``).
        monitor_kappa: vMF concentration of the reported continuous "entropy".
        distributed: Sinkhorn, losses and metrics over the global batch.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        projector: MLPSpec = SWAV_PROJECTOR,
        prototypes: PrototypeSpec = SWAV_PROTOTYPES,
        n_global: int = 2,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iters: int = 3,
        queue_length: int = 0,
        queue_start: float = 0.0,
        freeze_prototypes: float = 0.0,
        er: bool = False,
        er_terms: str = "both",
        target_temperature: float | None = None,
        monitor_kappa: float = 10.0,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        projector = spec_arg(projector, MLPSpec, "projector")
        self.backbone = backbone
        self.projector = build_mlp(feature_dim, projector)
        self.prototypes = Prototypes(projector.out, spec_arg(prototypes, PrototypeSpec, "prototypes"))
        self.n_global = checks.positive_int(n_global, "n_global", minimum=1)
        self.temperature = checks.positive(temperature, "temperature")
        self.epsilon = checks.positive(epsilon, "epsilon")
        self.sinkhorn_iters = checks.positive_int(sinkhorn_iters, "sinkhorn_iters")
        checks.positive_int(queue_length, "queue_length", minimum=0)
        per_process = queue_length // (dist.world_size() if distributed else 1)
        self.queue = SwAVQueue(self.n_global, per_process, projector.out) if per_process > 0 else None
        self.queue_start = checks.fraction(queue_start, "queue_start")
        self.freeze_prototypes = checks.fraction(freeze_prototypes, "freeze_prototypes")
        self.er = checks.boolean(er, "er")
        self.er_terms = checks.choice(er_terms, "er_terms", ER_TERMS)
        self.target_temperature = (
            None if target_temperature is None else checks.positive(target_temperature, "target_temperature")
        )
        self.monitor_kappa = checks.positive(monitor_kappa, "monitor_kappa")
        self.distributed = checks.boolean(distributed, "distributed")

    def forward(
        self, views: list[torch.Tensor], progress: float = 0.0, indices: torch.Tensor | None = None,
        metrics: bool = True,
    ) -> StepOutput:
        views = check_views(views, max(2, self.n_global))
        metrics = checks.boolean(metrics, "metrics")
        progress = check_progress(progress)
        n_crops, g = len(views), self.n_global
        self.prototypes.normalize_()
        z = F.normalize(self.projector(forward_crops(self.backbone, views)), dim=1)
        scores = self.prototypes(z, frozen=progress < self.freeze_prototypes)[0]
        crops, zs = list(scores.chunk(n_crops)), z.chunk(n_crops)
        with naming_views():
            extra = {}
            if self.er:
                er = bounds.er_bound_discrete_multicrop(
                    crops,
                    crops[:g],
                    temperature=self.temperature,
                    target_temperature=self.target_temperature,
                    distributed=self.distributed,
                )
                h, rec = er.entropy, er.reconstruction
                loss, extra = er_loss(h, rec, self.er_terms)
            else:
                use_queue = self.queue is not None and progress >= self.queue_start
                codes = []
                with torch.no_grad():
                    for a in range(g):
                        s = crops[a].detach()
                        if use_queue and self.queue.full:
                            s = torch.cat([s, self.prototypes(self.queue.queue[a])[0]])
                        q = sinkhorn(s, self.epsilon, self.sinkhorn_iters, self.distributed)
                        codes.append(q[: crops[a].shape[0]])
                    if use_queue:
                        self.queue.push_(list(zs[:g]))
                loss = swav_loss(crops, codes, self.temperature, self.distributed)
            if not metrics:
                return StepOutput(loss, {})
            discrete = assignment_metrics(
                crops[1], crops[0], self.temperature, self.target_temperature, self.distributed
            )
            return report(loss, projection_metrics(zs[0], zs[1], self.monitor_kappa, self.distributed), discrete, extra)

    def after_optimizer_step(self, progress: float) -> None:
        """Nothing to do: the prototypes are re-normalised at the start of the next step."""
        check_progress(progress)

    def start_epoch(self, epoch: int) -> None:
        """Nothing to do: the queue schedule follows ``progress``."""
