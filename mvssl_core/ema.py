"""The EMA teacher: a frozen copy, one in-place update, and the cosine momentum schedule.

BYOL [0] and DINO [1] train a student (online network) by gradient descent and let a teacher
(target network) follow it as an exponential moving average of its weights,
``xi <- m xi + (1 - m) theta``, with the momentum m raised from a base value to 1 along a cosine.
The update runs after each *real* optimizer step (not after every micro-batch of gradient
accumulation); the caller passes the training progress of that step.

[0] Grill et al., "Bootstrap Your Own Latent" (BYOL), NeurIPS 2020, Section 3.2 and Appendix A.
[1] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from mvssl_core import _checks as checks

__all__ = ["frozen_copy", "ema_update_", "cosine_momentum"]


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
