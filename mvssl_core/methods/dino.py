"""DINO [0] and its ER variant: student and EMA teacher with a DINO head, multi-crop, centring and
sharpening (or minus the discrete ER bound [1]).

[0] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021.
[1] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023, arXiv 2307.10907.
"""

from __future__ import annotations

import torch
from torch import nn

from mvssl_core import _checks as checks
from mvssl_core import bounds
from mvssl_core.ema import EMATeacher
from mvssl_core.heads import DINO_HEAD, DINOHead, DINOHeadSpec
from mvssl_core.losses import ER_TERMS, DINOCenter, dino_loss, er_loss, teacher_temperature
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

__all__ = ["DINO"]


class DINO(nn.Module):
    """DINO: the student matches the teacher's centred, sharpened output on every other crop [0].

    ``views``: the ``n_global`` global crops first, then any local crops. The teacher (EMA of the
    student, momentum 0.996 -> 1 on a cosine) sees only the global crops; the loss is
    :func:`mvssl_core.losses.dino_loss` over all (teacher crop, other student crop) pairs, with
    teacher temperature warmed up linearly from 0.04 to 0.07 over the first 10% of training
    (30 of 300 epochs) and the centre updated from the teacher outputs of every step (momentum 0.9).

    ER variant (``er=True``, [1]): the loss is minus the discrete ER bound over the same crop
    pairs (:func:`mvssl_core.bounds.er_bound_discrete_multicrop`), ``-(H + mean_{pairs} sum_k w_t log w_s)`` with ``w_t = softmax(t / tau_t)`` (teacher,
    stop-gradient) and ``log w_s = log_softmax(s / tau_s)``. Open choices, as parameters: the
    entropy is that of the batch-mean *student* assignments ``softmax(s / tau_s)`` of the global
    crops (``entropy_branch="student"``; the teacher's gets no gradient, ``"teacher"`` keeps it
    for the record only), and the ER variant drops the centring (``centering=None`` means
    ``not er``): the entropy term takes over its job of preventing collapse.

    Args:
        backbone: encoder mapping an image batch (any crop size) to (N, feature_dim) features.
        feature_dim: the backbone's output dimension.
        head: the DINO head (:data:`mvssl_core.heads.DINO_HEAD`; K = 65536).
        n_global: number of global crops (2).
        student_temperature: tau_s (0.1).
        teacher_temperature_start, teacher_temperature_end, teacher_temperature_warmup: the warm-up
            of tau_t (0.04 -> 0.07 over the first 0.1 of training).
        center_momentum: m of the centre (0.9).
        centering: subtract the centre from the teacher logits (None: ``not er``).
        base_momentum, final_momentum: teacher EMA momentum schedule (0.996 -> 1).
        freeze_last_layer: fraction of training during which the head's last layer gets no
            gradient (DINO freezes it during the first epoch: 1 / epochs).
        er: use the discrete ER bound as the loss.
        er_terms: with ``er``, maximise \"both\" terms of the bound, or only the \"entropy\" or the
            \"reconstruction\" term (the ablation; both are still logged).
        entropy_branch: "student" or "teacher", see above.
        monitor_kappa: vMF concentration of the reported continuous "entropy" (on the head's
            normalised bottleneck of the student's first two global crops).
        distributed: losses, centre and metrics over the global batch.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        head: DINOHeadSpec = DINO_HEAD,
        n_global: int = 2,
        student_temperature: float = 0.1,
        teacher_temperature_start: float = 0.04,
        teacher_temperature_end: float = 0.07,
        teacher_temperature_warmup: float = 0.1,
        center_momentum: float = 0.9,
        centering: bool | None = None,
        base_momentum: float = 0.996,
        final_momentum: float = 1.0,
        freeze_last_layer: float = 0.0,
        er: bool = False,
        er_terms: str = "both",
        entropy_branch: str = "student",
        monitor_kappa: float = 10.0,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(feature_dim, spec_arg(head, DINOHeadSpec, "head"))
        self.teacher = EMATeacher({"backbone": backbone, "head": self.head}, base_momentum, final_momentum)
        self.center = DINOCenter(self.head.spec.out, checks.fraction(center_momentum, "center_momentum"))
        self.n_global = checks.positive_int(n_global, "n_global", minimum=1)
        self.student_temperature = checks.positive(student_temperature, "student_temperature")
        self.teacher_schedule = (
            checks.positive(teacher_temperature_start, "teacher_temperature_start"),
            checks.positive(teacher_temperature_end, "teacher_temperature_end"),
            checks.fraction(teacher_temperature_warmup, "teacher_temperature_warmup"),
        )
        self.er = checks.boolean(er, "er")
        self.er_terms = checks.choice(er_terms, "er_terms", ER_TERMS)
        self.centering = (not self.er) if centering is None else checks.boolean(centering, "centering")
        self.freeze_last_layer = checks.fraction(freeze_last_layer, "freeze_last_layer")
        self.entropy_branch = checks.choice(entropy_branch, "entropy_branch", ("student", "teacher"))
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
        z, logits = self.head(forward_crops(self.backbone, views), freeze_last_layer=progress < self.freeze_last_layer)
        student = list(logits.chunk(n_crops))
        with torch.no_grad():
            _, t_logits = self.teacher["head"](forward_crops(self.teacher["backbone"], views[:g]))
            teacher = list(t_logits.chunk(g))
        tau_s, tau_t = self.student_temperature, teacher_temperature(progress, *self.teacher_schedule)
        center = self.center.center.clone() if self.centering else torch.zeros_like(self.center.center)
        with naming_views():
            extra = {}
            if self.er:
                er = bounds.er_bound_discrete_multicrop(
                    student,
                    [t - center for t in teacher] if self.centering else teacher,
                    temperature=tau_s,
                    target_temperature=tau_t,
                    entropy_branch="prediction" if self.entropy_branch == "student" else "target",
                    distributed=self.distributed,
                )
                h, rec = er.entropy, er.reconstruction
                loss, extra = er_loss(h, rec, self.er_terms)
            else:
                loss = dino_loss(student, teacher, center, tau_s, tau_t, self.distributed)
            if self.centering and torch.is_grad_enabled():
                self.center.update_(teacher, self.distributed)
            if not metrics:
                return StepOutput(loss, {})
            z1, z2 = z.chunk(n_crops)[:2]
            discrete = assignment_metrics(student[1], teacher[0] - center, tau_s, tau_t, self.distributed)
            return report(loss, projection_metrics(z1, z2, self.monitor_kappa, self.distributed), discrete, extra)

    def after_optimizer_step(self, progress: float) -> None:
        """Move the teacher towards the student (after a real optimizer step)."""
        self.teacher.update_({"backbone": self.backbone, "head": self.head}, progress)

    def start_epoch(self, epoch: int) -> None:
        """Nothing to do: DINO's schedules follow ``progress``."""
