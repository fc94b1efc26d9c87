"""Bijective encoders: a RealNVP-style stack of affine coupling layers on vectors [0].

Used to test the "MI maximisation is not enough" argument [1]: an encoder that is a bijection cannot
change the mutual information between two views, I(g1(X1); g2(X2)) = I(X1; X2), yet it can change how
linearly useful its output is.

Each :class:`AffineCoupling` keeps the coordinates where ``mask`` is true and transforms the others,

    y_a = x_a,    y_b = x_b * exp(s(x_a)) + t(x_a),    log |det dy/dx| = sum_b s(x_a),

with ``s = scale * tanh(raw)`` (bounded, so the Jacobian cannot blow up) and ``(raw, t)`` given by an MLP
of ``x_a``. The last layer of each MLP starts at zero, so a new flow is the identity. :class:`Flow` alternates
complementary masks (even / odd coordinates, then first / second half) and returns ``(z, log_det)``;
:meth:`Flow.inverse` undoes it.

[0] Dinh, Sohl-Dickstein, Bengio, "Density estimation using Real NVP", ICLR 2017.
[1] Tschannen, Djolonga, Rubenstein, Gelly, Lucic, "On mutual information maximization for representation
    learning", ICLR 2020.
"""

from __future__ import annotations

import torch
from torch import nn

from mvssl_core import _checks as checks

__all__ = ["AffineCoupling", "Flow", "coupling_masks"]


def coupling_masks(dim: int, n_layers: int) -> list[torch.Tensor]:
    """Boolean masks (True = kept) for ``n_layers`` couplings: even/odd, odd/even, first/second half, ...

    Every coordinate is transformed by some layer when ``n_layers >= 2``.
    """
    checks.positive_int(dim, "dim", minimum=2)
    checks.positive_int(n_layers, "n_layers")
    idx = torch.arange(dim)
    patterns = [idx % 2 == 0, idx % 2 == 1, idx < dim // 2, idx >= dim // 2]
    return [patterns[i % 4].clone() for i in range(n_layers)]


class AffineCoupling(nn.Module):
    """One affine coupling layer (see the module docstring).

    Args:
        mask: (dim,) bool, True where the coordinate is kept (conditions the others); neither all True
            nor all False.
        hidden: width of the MLP's hidden layers.
        layers: hidden layers of the MLP.
        scale: bound on |s| (log-scale per coordinate).
    """

    def __init__(self, mask: torch.Tensor, hidden: int = 64, layers: int = 2, scale: float = 2.0) -> None:
        super().__init__()
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
            raise ValueError(f"mask must be a 1-D bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)} "
                             f"of shape {tuple(getattr(mask, 'shape', ()))}")
        n_keep = int(mask.sum())
        if n_keep in (0, mask.numel()):
            raise ValueError("mask must keep some coordinates and transform the others (not all True or all False)")
        checks.positive_int(hidden, "hidden")
        checks.positive_int(layers, "layers")
        self.scale = checks.positive(scale, "scale")
        self.register_buffer("mask", mask.clone())
        n_out = mask.numel() - n_keep
        mods: list[nn.Module] = []
        width = n_keep
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        last = nn.Linear(width, 2 * n_out)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*mods, last)

    def _params(self, x_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, t = self.net(x_keep).chunk(2, dim=-1)
        return self.scale * torch.tanh(raw / self.scale), t

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, log|det dy/dx|)`` for x of shape (n, dim); the log-determinant has shape (n,)."""
        s, t = self._params(x[:, self.mask])
        y = x.clone()
        y[:, ~self.mask] = x[:, ~self.mask] * torch.exp(s) + t
        return y, s.sum(dim=-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """x with ``forward(x)[0] == y``."""
        s, t = self._params(y[:, self.mask])
        x = y.clone()
        x[:, ~self.mask] = (y[:, ~self.mask] - t) * torch.exp(-s)
        return x


class Flow(nn.Module):
    """A bijection of R^dim: ``n_layers`` affine couplings with alternating masks (identity at init).

    Example::

        flow = Flow(32, n_layers=6)
        z, log_det = flow(x)                 # x: (n, 32)
        assert torch.allclose(flow.inverse(z), x, atol=1e-5)
    """

    def __init__(self, dim: int, n_layers: int = 6, hidden: int = 64, layers: int = 2, scale: float = 2.0) -> None:
        super().__init__()
        self.dim = checks.positive_int(dim, "dim", minimum=2)
        self.couplings = nn.ModuleList(
            AffineCoupling(m, hidden=hidden, layers=layers, scale=scale) for m in coupling_masks(dim, n_layers)
        )

    def _check(self, x: object, name: str) -> torch.Tensor:
        x = checks.tensor(x, name)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (n, {self.dim}), got {tuple(x.shape)}")
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log|det dz/dx|)``: z of shape (n, dim), the log-determinant of shape (n,)."""
        x = self._check(x, "x")
        log_det = x.new_zeros(x.shape[0])
        for c in self.couplings:
            x, ld = c(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """The x that ``forward`` maps to z."""
        z = self._check(z, "z")
        for c in reversed(self.couplings):
            z = c.inverse(z)
        return z
