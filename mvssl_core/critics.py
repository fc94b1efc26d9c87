"""Learned critics of the MI bounds, and the Gaussian variational conditional of the ER bound.

A critic scores every pair of a batch: from x (k, d_x) and y (k, d_y) it returns the (k, k) matrix
f(x_i, y_j), positives on the diagonal, as :func:`mvssl_core.bounds.infonce` and
:func:`~mvssl_core.bounds.nwj` take it. Its networks are MLPs declared as
:class:`mvssl_core.heads.MLPSpec` and built by :func:`mvssl_core.heads.build_mlp` (pass ``bn=False``:
with BatchNorm the score of a pair would depend on the rest of the batch).

Example:
    >>> critic = SeparableCritic(20, MLPSpec(hidden=128, out=32, layers=3, bn=False))
    >>> scores = critic(torch.randn(64, 20), torch.randn(64, 20))  # (64, 64)

[0] Poole et al., "On Variational Bounds of Mutual Information", ICML 2019 (separable and concatenated critics).
[1] Tschannen et al., "On Mutual Information Maximization for Representation Learning", ICLR 2020 (bilinear).
"""

from __future__ import annotations

import torch
from torch import nn

from mvssl_core import _checks as checks
from mvssl_core.heads import _ACTIVATIONS, MLPSpec, as_spec, build_mlp

__all__ = ["Bilinear", "SeparableCritic", "ConcatCritic", "GaussianQ"]


class Bilinear(nn.Module):
    """f(a_i, b_j) = a_i^T W b_j for all pairs, W (dim, dim) learned, initialised to ``scale`` x identity [1].

    ``scale`` is a finite number >= 0.
    """

    def __init__(self, dim: int, scale: float = 0.1) -> None:
        super().__init__()
        checks.positive_int(dim, "dim")
        scale = checks.nonnegative(scale, "scale")
        self.W = nn.Parameter(torch.eye(dim) * scale)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scores (k, k) of a (k, dim) against b (k, dim); checked by shape only (NaN or inf entries propagate)."""
        dim = self.W.shape[0]
        checks.batch(a, "a", dim)
        checks.batch(b, "b", dim)
        return a @ self.W @ b.T


def _inputs(x: object, y: object, dim: int) -> None:
    """x and y, each a floating (k, dim) batch; type and shape only, so NaN or inf entries propagate."""
    checks.batch(x, "x", dim)
    checks.batch(y, "y", dim)


class SeparableCritic(nn.Module):
    """f(x_i, y_j) = g(x_i)^T h(y_j) [0]: all k^2 scores from 2k network evaluations.

    Args:
        dim: input dimension of x and of y.
        spec: the MLP g and h each are (``spec.out`` is the embedding dimension); g is built first.
    """

    def __init__(self, dim: int, spec: MLPSpec) -> None:
        super().__init__()
        self.dim = checks.positive_int(dim, "dim")
        spec = as_spec(spec, MLPSpec)
        self.g = build_mlp(dim, spec)
        self.h = build_mlp(dim, spec)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores (k, k) of x (k, dim) against y (k, dim)."""
        _inputs(x, y, self.dim)
        return self.g(x) @ self.h(y).T


class ConcatCritic(nn.Module):
    """f(x_i, y_j) = m([x_i, y_j]) for all k^2 pairs: one MLP on the concatenated pair [0].

    The first layer is split, W [x; y] = W_x x + W_y y, so the (k, k, hidden) first activation is formed
    by broadcasting instead of from k^2 concatenated inputs (the same function).

    Args:
        dim: input dimension of x and of y.
        spec: the MLP m: ``layers`` >= 2 linear layers, ``out`` = 1 (a score), no BatchNorm.
    """

    def __init__(self, dim: int, spec: MLPSpec) -> None:
        super().__init__()
        self.dim = checks.positive_int(dim, "dim")
        spec = as_spec(spec, MLPSpec)
        checks.positive_int(spec.layers, "spec.layers", minimum=2)
        if spec.out != 1:
            raise ValueError(f"spec.out must be 1 (one score per pair), got {spec.out}")
        if spec.bn or spec.last_bn:
            raise ValueError("spec.bn and spec.last_bn must be False for the concatenated critic")
        self.first_x = nn.Linear(dim, spec.hidden)
        self.first_y = nn.Linear(dim, spec.hidden, bias=False)
        self.act = _ACTIVATIONS[spec.activation]()
        self.rest = build_mlp(spec.hidden, MLPSpec(spec.hidden, 1, spec.layers - 1, bn=False,
                                                   activation=spec.activation))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores (k, k) of x (k, dim) against y (k, dim)."""
        _inputs(x, y, self.dim)
        a = self.first_x(x)[:, None, :] + self.first_y(y)[None, :, :]  # (k, k, hidden)
        return self.rest(self.act(a)).squeeze(-1)


class GaussianQ(nn.Module):
    """q(y | x) = N(mu(x), sigma^2 I): mu an MLP, sigma^2 a running (detached) mean of the squared residual.

    sigma^2 is the Gaussian's maximum-likelihood variance, tracked outside autograd (the library's
    :func:`mvssl_core.reconstruction.gaussian_log_likelihood` takes sigma as a number).

    Args:
        dim: input dimension of x.
        spec: the MLP mu (``spec.out`` is the dimension of y).
        momentum: weight of the old sigma^2 in :meth:`update_sigma`, in [0, 1).
    """

    def __init__(self, dim: int, spec: MLPSpec, momentum: float) -> None:
        super().__init__()
        checks.positive_int(dim, "dim")
        momentum = checks.fraction(momentum, "momentum")
        if momentum == 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.mu = build_mlp(dim, as_spec(spec, MLPSpec))
        self.momentum = momentum
        self.register_buffer("sigma2", torch.tensor(1.0))

    @torch.no_grad()
    def update_sigma(self, residual_sq_per_coord: torch.Tensor) -> None:
        """sigma^2 <- momentum sigma^2 + (1 - momentum) mean squared residual per coordinate."""
        self.sigma2.mul_(self.momentum).add_((1 - self.momentum) * residual_sq_per_coord)
