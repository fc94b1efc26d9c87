"""LARS and learning-rate schedules: the optimiser recipe of SimCLR, BYOL and the ER paper.

``param_groups`` splits a model's parameters into those that get weight decay and layer-wise
adaptation (conv and linear weights) and those that get neither (biases and normalisation
parameters), as SimCLR [1] and BYOL [2] do. ``LARS`` [0] reads the split from the groups.
``warmup_cosine`` is the per-step linear warm-up + cosine schedule (also usable for a weight-decay or
temperature schedule). The EMA momentum schedule lives in ``mvssl_core.ema``, not here.

[0] You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", arXiv 1708.03888 (2017).
[1] Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020.
[2] Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from mvssl_core import _checks

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed+adapted group and an excluded group.

    Excluded (no weight decay, no LARS adaptation): every bias, every parameter of a normalisation
    layer (BatchNorm, LayerNorm, GroupNorm, ...), and any other parameter with fewer than 2 dimensions.
    Frozen parameters (``requires_grad=False``) are left out.

    Args:
        model: the module whose parameters are optimised.
        weight_decay: decay of the first group (>= 0).

    Returns:
        Two groups for ``torch.optim`` optimisers: ``{"params", "weight_decay", "lars_exclude": False}`` and
        ``{"params", "weight_decay": 0.0, "lars_exclude": True}`` (empty groups are dropped). Optimisers
        other than ``LARS`` ignore the ``lars_exclude`` key.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    weight_decay = _checks.nonnegative(weight_decay, "weight_decay")
    excluded_ids: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, _NORM_TYPES) or name == "bias" or p.ndim < 2:
                excluded_ids.add(id(p))
    decay, exclude = [], []
    for p in model.parameters():  # deduplicated, stable order
        if p.requires_grad:
            (exclude if id(p) in excluded_ids else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "lars_exclude": False},
        {"params": exclude, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling [0] with momentum, for parameter groups from ``param_groups``.

    For each parameter tensor w with gradient g (one "layer" of the paper), with weight decay beta,
    trust coefficient eta, global learning rate gamma and momentum m:

        paper (Algorithm 1 of [0], default):  local = eta * ||w|| / (||g|| + beta * ||w||)
        "update_norm" (SimCLR/BYOL code):     local = eta * ||w|| / ||g + beta * w||
        v <- m * v + gamma * local * (g + beta * w)
        w <- w - v

    ``local`` is 1 when ||w|| or the denominator is 0 (e.g. a zero-initialised layer). Groups with
    ``lars_exclude=True`` (biases, norms) skip both the weight decay and the adaptation: plain SGD with
    momentum. Momentum buffers are in the optimiser state, so ``state_dict`` resumes exactly.

    Args:
        params: parameters or groups (use ``param_groups(model, weight_decay)``).
        lr: global learning rate gamma (> 0); usually set per step from ``warmup_cosine``.
        momentum: m in [0, 1).
        weight_decay: beta >= 0 (a group's own ``weight_decay`` wins).
        trust_coefficient: eta > 0, 0.001 in [0].
        trust_norm: "paper" or "update_norm", the denominator above.
        eps: added to the denominator (0 reproduces the formulas exactly).
        foreach: True: update the tensors of each group, device and dtype together with ``torch._foreach_*``
            operations (about 20 launches per group instead of about 10 per tensor); False: the loop over
            tensors, the reference; None (default, as in ``torch.optim``): foreach except on the CPU, where
            holding every tensor's update at once costs more than the loop's launches (ResNet-50: 0.11 s
            against 0.05 s per step on one thread). Both give the same result: bitwise on the CPU (the
            foreach operations run the loop's kernels tensor by tensor), to float rounding on CUDA.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        trust_norm: str = "paper",
        eps: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        _checks.positive(lr, "lr")
        _checks.positive(trust_coefficient, "trust_coefficient")
        if _checks.fraction(momentum, "momentum") == 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        _checks.nonnegative(weight_decay, "weight_decay")
        _checks.nonnegative(eps, "eps")
        _checks.choice(trust_norm, "trust_norm", ("paper", "update_norm"))
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            trust_norm=trust_norm,
            eps=eps,
            lars_exclude=False,
        )
        super().__init__(params, defaults)
        # an attribute, not a group key: a checkpoint's groups (which replace these on load) do not set it
        self.foreach = None if foreach is None else _checks.boolean(foreach, "foreach")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    buckets.setdefault((p.device, p.dtype), []).append(p)
            for (device, _), params in buckets.items():
                if self.foreach or (self.foreach is None and device.type != "cpu"):
                    self._update_foreach(group, params)
                else:
                    self._update_loop(group, params)
        return loss

    def _update_loop(self, group: dict, params: list[torch.Tensor]) -> None:
        """The update of the class docstring, one tensor at a time (the reference for ``_update_foreach``)."""
        exclude = group["lars_exclude"]
        wd = 0.0 if exclude else group["weight_decay"]
        for p in params:
            g = p.grad
            update = g.add(p, alpha=wd) if wd != 0 else g.clone()
            if not exclude:
                w_norm = torch.linalg.vector_norm(p)
                if group["trust_norm"] == "paper":
                    denom = torch.linalg.vector_norm(g) + wd * w_norm
                else:
                    denom = torch.linalg.vector_norm(update)
                denom = denom + group["eps"]
                ok = (w_norm > 0) & (denom > 0)
                local = torch.where(ok, group["trust_coefficient"] * w_norm / denom.clamp_min(1e-30), 1.0)
                update.mul_(local)
            update.mul_(group["lr"])
            state = self.state[p]
            if group["momentum"] > 0:
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update
                else:
                    update = state["momentum_buffer"].mul_(group["momentum"]).add_(update)
            p.sub_(update)

    def _update_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        """``_update_loop`` with ``torch._foreach_*`` operations, the same operations in the same order;
        ``params`` (with gradients) share one device and dtype.

        The per-tensor trust ratios are computed on the stacked norms with the loop's formula element by
        element, so no value leaves the device (no host sync).
        """
        exclude = group["lars_exclude"]
        wd = 0.0 if exclude else group["weight_decay"]
        grads = [p.grad for p in params]
        if exclude:  # no decay (wd is 0), no adaptation: plain SGD with momentum
            updates = torch._foreach_mul(grads, group["lr"])
        else:
            updates = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else grads
            w_norm = torch.stack(torch._foreach_norm(params))
            if group["trust_norm"] == "paper":
                denom = torch.stack(torch._foreach_norm(grads)) + wd * w_norm
            else:
                denom = torch.stack(torch._foreach_norm(updates))
            denom = denom + group["eps"]
            ok = (w_norm > 0) & (denom > 0)
            local = torch.where(ok, group["trust_coefficient"] * w_norm / denom.clamp_min(1e-30), 1.0)
            if updates is grads:  # the loop's g.clone().mul_(local), without modifying the gradients
                updates = torch._foreach_mul(grads, local.unbind(0))
            else:
                torch._foreach_mul_(updates, local.unbind(0))
            torch._foreach_mul_(updates, group["lr"])
        updates = list(updates)  # foreach operations return tuples
        states = [self.state[p] for p in params]
        if group["momentum"] > 0:
            buffers, increments = [], []
            for i, state in enumerate(states):
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = updates[i]
                else:
                    buffers.append(state["momentum_buffer"])
                    increments.append(updates[i])
                    updates[i] = state["momentum_buffer"]
            if buffers:
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, increments)
        torch._foreach_sub_(params, updates)


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base_value: float,
    final_value: float = 0.0,
    start_value: float = 0.0,
) -> float:
    """Linear warm-up from ``start_value`` to ``base_value``, then cosine decay to ``final_value``.

    value(s) = start + (base - start) * s / W                                   for s < W,
             = final + (base - final) * (1 + cos(pi * (s - W) / (T - W))) / 2     for W <= s <= T,
             = final                                                           for s > T,
    so value(0) = start, value(W) = base, value(T) = final. Call once per optimiser step (the step
    about to be taken, counting from 0); as in SimCLR [1] and DINO's ``cosine_scheduler``.

    Args:
        step: optimiser step s >= 0.
        total_steps: T > 0, the length of the run in steps.
        warmup_steps: W in [0, T).
        base_value: the peak (e.g. base_lr * batch_size / 256).
        final_value: the value at s = T.
        start_value: the value at s = 0.
        (The three values are finite real numbers; NaN, inf, strings, bools and None are refused.)

    Returns:
        The scheduled value (a float).
    """
    _checks.positive_int(total_steps, "total_steps")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be an int in [0, total_steps={total_steps}), got {warmup_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    base_value = _checks.real(base_value, "base_value")
    final_value = _checks.real(final_value, "final_value")
    start_value = _checks.real(start_value, "start_value")
    if step < warmup_steps:
        return start_value + (base_value - start_value) * step / warmup_steps
    if step >= total_steps:
        return float(final_value)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final_value + (base_value - final_value) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 256) -> float:
    """The linear scaling rule lr = base_lr * batch_size / 256 of SimCLR [1] and BYOL [2]."""
    _checks.positive(base_lr, "base_lr")
    _checks.positive_int(batch_size, "batch_size")
    _checks.positive_int(reference_batch, "reference_batch")
    return base_lr * batch_size / reference_batch


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every group (call before ``optimizer.step()`` with ``warmup_cosine``).

    A group with an ``lr_scale`` key gets ``lr * lr_scale``. ``lr`` is a finite number >= 0 (0 at the
    start of a warm-up).
    """
    lr = _checks.nonnegative(lr, "lr")
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
