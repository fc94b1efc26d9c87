"""The EMA teacher: a frozen copy, one in-place update, and the cosine momentum schedule.

BYOL [0] and DINO [1] train a student (online network) by gradient descent and let a teacher
(target network) follow it as an exponential moving average of its weights,
``xi <- m xi + (1 - m) theta``, with the momentum m raised from a base value to 1 along a cosine.
The update runs after each *real* optimizer step (not after every micro-batch of gradient
accumulation); the caller passes the training progress of that step. :class:`EMATeacher` bundles
the three pieces for a method (BYOL's target network, DINO's teacher).

[0] Grill et al., "Bootstrap Your Own Latent" (BYOL), NeurIPS 2020, Section 3.2 and Appendix A.
[1] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from mvssl_core import _checks as checks

__all__ = ["EMATeacher", "frozen_copy", "ema_update_", "cosine_momentum"]


def _module(value: object, name: str) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be an nn.Module, got {type(value).__name__}")
    return value


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient (the teacher's initial state)."""
    _module(module, "module")
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``xi <- m xi + (1 - m) theta`` for the parameters; buffers are copied.

    Parameters are updated with the fused ``torch._foreach_mul_`` / ``torch._foreach_add_``.
    Buffers (BatchNorm running statistics and counters) are copied from the student, so an
    evaluation of the teacher uses statistics of the network it averages.

    Args:
        teacher: the EMA copy (same architecture as ``student``).
        student: the network trained by gradient descent.
        momentum: m in [0, 1] (a number, not a string or a bool); 1 leaves the teacher unchanged, 0 copies
            the student.
    """
    _module(teacher, "teacher")
    _module(student, "student")
    m = checks.fraction(momentum, "momentum")
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError(f"teacher and student must have the same parameters, got {len(t_params)} and {len(s_params)}")
    if t_params:
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - m)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)


def cosine_momentum(progress: float, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule ``m = final - (final - base) (cos(pi k / K) + 1) / 2`` at ``progress = k / K``.

    With ``final = 1`` this is BYOL's ``tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2`` [0];
    DINO uses the same cosine from 0.996 to 1 [1].

    Args:
        progress: k / K in [0, 1], the fraction of training done.
        base: momentum at progress 0 (BYOL: 0.996 at batch 4096; DINO: 0.996).
        final: momentum at progress 1.

    Returns:
        The momentum, a float in [base, final].
    """
    p = checks.fraction(progress, "progress")
    base = checks.fraction(base, "base")
    final = checks.fraction(final, "final")
    return final - (final - base) * (math.cos(math.pi * p) + 1.0) / 2.0


class EMATeacher(nn.ModuleDict):
    """Frozen EMA copies of named student modules, moved on the cosine momentum schedule [0, 1].

    ``EMATeacher({"backbone": net, "head": head})`` holds a :func:`frozen_copy` of each module under
    its name (``teacher["backbone"]`` is the teacher's backbone), so its state-dict keys are
    ``<name>.<the module's key>``: a method that keeps it as ``self.teacher`` saves
    ``teacher.backbone.*``, the keys of the plain ``nn.ModuleDict`` it replaced. The schedule is two
    floats, not buffers: it comes from the method's arguments, never from a checkpoint.

    Args:
        students: name -> student module (at least one), copied at construction.
        base_momentum: m at progress 0 (:func:`cosine_momentum`'s ``base``).
        final_momentum: m at progress 1.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> teacher = EMATeacher({"net": net}, base_momentum=0.5, final_momentum=0.5)
        >>> teacher.update_({"net": net}, progress=0.0)
        0.5
    """

    def __init__(
        self, students: Mapping[str, nn.Module], base_momentum: float = 0.996, final_momentum: float = 1.0
    ) -> None:
        if not isinstance(students, Mapping) or not students:
            raise TypeError(f"students must be a non-empty dict of name -> nn.Module, got {students!r}")
        super().__init__({name: frozen_copy(_module(m, f"students[{name!r}]")) for name, m in students.items()})
        self.base_momentum = checks.fraction(base_momentum, "base_momentum")
        self.final_momentum = checks.fraction(final_momentum, "final_momentum")

    def momentum(self, progress: float) -> float:
        """m at ``progress`` in [0, 1]: :func:`cosine_momentum` from ``base_momentum`` to ``final_momentum``."""
        return cosine_momentum(progress, self.base_momentum, self.final_momentum)

    @torch.no_grad()
    def update_(self, students: Mapping[str, nn.Module], progress: float) -> float:
        """In place, after a real optimizer step: each copy ``xi <- m xi + (1 - m) theta`` (:func:`ema_update_`).

        Args:
            students: name -> student module, the names given at construction.
            progress: the training progress of the step just taken, in [0, 1].

        Returns:
            The momentum m used.
        """
        if not isinstance(students, Mapping) or set(students) != set(self.keys()):
            got = sorted(students) if isinstance(students, Mapping) else type(students).__name__
            raise ValueError(f"students must name the teacher's modules {sorted(self.keys())}, got {got}")
        m = self.momentum(progress)
        for name, teacher in self.items():
            ema_update_(teacher, students[name], m)
        return m
