"""Distributions with known mutual information, for testing estimators and bounds.

Correlated Gaussians [0]: ``x ~ N(0, I_d)``, ``y = rho x + sqrt(1 - rho^2) eps`` with
``eps ~ N(0, I_d)``, so each coordinate pair has correlation rho and
``I(X; Y) = -(d/2) log(1 - rho^2)`` nats. The staircase of [0] steps the MI through 2, 4, 6, 8,
10 nats at d = 20. The analytic optimal critic ``log p(y|x) - log p(y)`` is available, so a bound
can be evaluated at its optimum without training a network.

Transformed Gaussians (as in the "transformed" tasks of benchmark-mi [1]): an invertible
elementwise map applied to each variable leaves the MI unchanged but makes the marginals
non-Gaussian (heavy-tailed, bounded or uniform).

[0] Poole, Ozair, van den Oord, Alemi, Tucker, "On Variational Bounds of Mutual Information", ICML 2019.
[1] Czyz, Grabowski, Vogt, Beerenwinkel, Marx, "Beyond Normal: On the Evaluation of Mutual
    Information Estimators", NeurIPS 2023.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from mvssl_core import _checks as checks

__all__ = [
    "POOLE_STAIRCASE_NATS",
    "TRANSFORMS",
    "correlated_gaussians",
    "mi_from_rho",
    "rho_from_mi",
    "staircase",
    "gaussian_critic",
    "gaussian_conditional_log_density",
    "transformed_gaussians",
    "apply_transform",
    "invert_transform",
    "sample_uniform_sphere",
    "sample_vmf",
]

POOLE_STAIRCASE_NATS = (2, 4, 6, 8, 10)
"""MI values (nats) of the staircase of Poole et al. [0], used with d = 20."""

TRANSFORMS = ("cubic", "asinh", "normal_cdf")
"""Invertible elementwise maps of :func:`transformed_gaussians`."""


def _rho(rho: object) -> float:
    """A real correlation strictly inside (-1, 1) (a number or a one-element tensor)."""
    if isinstance(rho, torch.Tensor):
        if rho.numel() != 1:
            raise ValueError(f"rho must be a scalar, got a tensor of shape {tuple(rho.shape)}")
        rho = rho.item()
    if isinstance(rho, bool) or not isinstance(rho, Real):
        raise TypeError(f"rho must be a real number, got {type(rho).__name__}")
    rho = float(rho)
    if not (math.isfinite(rho) and -1.0 < rho < 1.0):
        raise ValueError(f"rho must be a correlation strictly between -1 and 1, got {rho}")
    return rho


def _mi(mi: object) -> float:
    if isinstance(mi, bool) or not isinstance(mi, Real):
        raise TypeError(f"mi must be a real number, got {type(mi).__name__}")
    mi = float(mi)
    if not (math.isfinite(mi) and mi >= 0):
        raise ValueError(f"mi must be a finite number >= 0 (nats), got {mi}")
    return mi


def _dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def mi_from_rho(rho: float, dim: int) -> float:
    """Mutual information ``-(dim/2) log(1 - rho^2)`` (nats) of the correlated Gaussians [0]."""
    rho = _rho(rho)
    dim = checks.positive_int(dim, "dim")
    return -0.5 * dim * math.log1p(-rho * rho)


_MAX_MI_PER_DIM = 15.0  # nats: 1 - rho^2 = e^-30, rho still resolves MI to ~1e-5 relative in float64


def rho_from_mi(mi: float, dim: int) -> float:
    """Correlation ``sqrt(1 - exp(-2 mi / dim))`` >= 0 that gives ``mi`` nats in ``dim`` dimensions [0].

    A float64 rho cannot carry more than about 15 nats per dimension (1 - rho^2 underflows the
    resolution of rho near 1), so ``mi / dim > 15`` raises a ValueError.
    """
    mi = _mi(mi)
    dim = checks.positive_int(dim, "dim")
    if mi / dim > _MAX_MI_PER_DIM:
        raise ValueError(
            f"mi / dim must be <= {_MAX_MI_PER_DIM} nats per dimension for a float64 rho, got mi = {mi}, dim = {dim}"
        )
    return math.sqrt(-math.expm1(-2.0 * mi / dim))


def staircase(mis: tuple[float, ...] = POOLE_STAIRCASE_NATS, dim: int = 20) -> list[float]:
    """Correlations of an MI staircase; the default is [0]'s: d = 20, MI = 2, 4, ..., 10 nats.

    Returns:
        One rho per MI value (0.4258, 0.5742, 0.6717, 0.7421, 0.7951 for the default).
    """
    return [rho_from_mi(mi, dim) for mi in mis]


def correlated_gaussians(
    n: int,
    dim: int,
    rho: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample n pairs of ``x ~ N(0, I)``, ``y = rho x + sqrt(1 - rho^2) eps`` [0].

    Args:
        n: number of pairs >= 1.
        dim: dimension d >= 1 of x and of y.
        rho: per-coordinate correlation in (-1, 1); the MI is :func:`mi_from_rho`.
        generator: torch.Generator for reproducible samples (its device is used).
        dtype: floating dtype of the samples.

    Returns:
        (x, y), each (n, dim); marginally both are N(0, I_d).
    """
    n = checks.positive_int(n, "n")
    dim = checks.positive_int(dim, "dim")
    rho = _rho(rho)
    dtype = _dtype(dtype)
    device = generator.device if generator is not None else None
    x = torch.randn(n, dim, generator=generator, dtype=dtype, device=device)
    eps = torch.randn(n, dim, generator=generator, dtype=dtype, device=device)
    return x, rho * x + math.sqrt(1.0 - rho * rho) * eps


def _xy(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor]:
    x = checks.embeddings(x, "x", min_samples=1)
    y = checks.embeddings(y, "y", min_samples=1)
    checks.same_shape(x, y, "x", "y")
    dtype = torch.promote_types(x.dtype, y.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return x.to(dtype), y.to(dtype)


def gaussian_critic(x: torch.Tensor, y: torch.Tensor, rho: float) -> torch.Tensor:
    """Optimal critic ``log p(y_j | x_i) - log p(y_j)`` of the correlated Gaussians, for all pairs.

    Expanding both Gaussian log-densities, the ratio is
    ``-(d/2) log(1 - rho^2) + (2 rho x_i.y_j - rho^2 (|x_i|^2 + |y_j|^2)) / (2 (1 - rho^2))``
    (symmetric in x and y). Used as InfoNCE scores it attains the optimum of the bound.

    Args:
        x: (k, d) samples of X.
        y: (k, d) samples of Y; (x_i, y_i) are the joint pairs.
        rho: the correlation the samples were drawn with.

    Returns:
        (k, k) matrix of log density ratios in nats; row i is x_i, column j is y_j.
    """
    x, y = _xy(x, y)
    rho = _rho(rho)
    one_minus = 1.0 - rho * rho
    d = x.shape[1]
    cross = x @ y.T
    sq_x = x.pow(2).sum(1, keepdim=True)
    sq_y = y.pow(2).sum(1)
    return -0.5 * d * math.log(one_minus) + (2 * rho * cross - rho * rho * (sq_x + sq_y)) / (2 * one_minus)


def gaussian_conditional_log_density(y: torch.Tensor, x: torch.Tensor, rho: float) -> torch.Tensor:
    """``log p(y_i | x_i) = log N(y_i; rho x_i, (1 - rho^2) I)`` for each joint pair.

    Its mean over joint samples estimates ``-H(Y | X)`` without bias: the reconstruction term of
    the ER bound at the true conditional density.

    Args:
        y: (N, d) samples of Y.
        x: (N, d) samples of X, row-paired with y.
        rho: the correlation the samples were drawn with.

    Returns:
        (N,) log-densities in nats.
    """
    x, y = _xy(x, y)
    rho = _rho(rho)
    var = 1.0 - rho * rho
    d = x.shape[1]
    return -0.5 * d * math.log(2 * math.pi * var) - (y - rho * x).pow(2).sum(1) / (2 * var)


def apply_transform(x: torch.Tensor, transform: str) -> torch.Tensor:
    """The elementwise map of :func:`transformed_gaussians`: "cubic" x^3, "asinh", or
    "normal_cdf" Phi(x) (uniform marginals on (0, 1) for standard normal x)."""
    x = checks.finite(checks.tensor(x, "x"), "x")
    checks.choice(transform, "transform", TRANSFORMS)
    if transform == "cubic":
        return x.pow(3)
    if transform == "asinh":
        return torch.asinh(x)
    return torch.special.ndtr(x)


def invert_transform(u: torch.Tensor, transform: str) -> torch.Tensor:
    """Inverse of :func:`apply_transform` (real cube root, sinh, or the normal quantile ndtri).

    For "normal_cdf" the values must lie strictly in (0, 1); in float64 this holds for |x| < 8.2,
    i.e. for all but about 1e-16 of standard normal samples.
    """
    u = checks.finite(checks.tensor(u, "u"), "u")
    checks.choice(transform, "transform", TRANSFORMS)
    if transform == "cubic":
        return torch.sign(u) * u.abs().pow(1.0 / 3.0)
    if transform == "asinh":
        return torch.sinh(u)
    if bool(((u <= 0) | (u >= 1)).any()):
        raise ValueError("u must lie strictly in (0, 1) for transform='normal_cdf'")
    return torch.special.ndtri(u)


def transformed_gaussians(
    n: int,
    dim: int,
    rho: float,
    transform: str = "cubic",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated Gaussians passed through an invertible elementwise map: same MI, non-Gaussian marginals.

    ``(u, v) = (f(x), f(y))`` with (x, y) from :func:`correlated_gaussians`. Mutual information is
    invariant under invertible maps of each variable, so ``I(U; V) = mi_from_rho(rho, dim)``;
    the optimal critic is ``gaussian_critic(invert_transform(u), invert_transform(v), rho)``
    (the Jacobian of f cancels in the density ratio p(v|u) / p(v)).

    Args:
        n: number of pairs >= 1.
        dim: dimension >= 1.
        rho: per-coordinate correlation in (-1, 1) of the underlying Gaussians.
        transform: "cubic" (heavy tails), "asinh" (light tails) or "normal_cdf" (uniform marginals).
        generator: torch.Generator for reproducible samples.
        dtype: floating dtype.

    Returns:
        (u, v), each (n, dim).
    """
    checks.choice(transform, "transform", TRANSFORMS)
    x, y = correlated_gaussians(n, dim, rho, generator=generator, dtype=dtype)
    return apply_transform(x, transform), apply_transform(y, transform)


def sample_uniform_sphere(
    n: int, dim: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Sample n points uniformly on the sphere S^{dim-1} in R^dim (normalised Gaussians).

    Returns:
        (n, dim) unit vectors; their entropy is ``special.uniform_sphere_entropy(dim)`` nats.
    """
    n = checks.positive_int(n, "n")
    dim = checks.positive_int(dim, "dim", minimum=2)
    dtype = _dtype(dtype)
    device = generator.device if generator is not None else None
    g = torch.randn(n, dim, generator=generator, dtype=dtype, device=device)
    return torch.nn.functional.normalize(g, dim=1)


def sample_vmf(
    n: int,
    mu: torch.Tensor,
    kappa: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample n points from the von Mises-Fisher distribution vMF(mu, kappa) on S^{d-1} [1].

    Wood's (1994) rejection sampler for the component w = mu^T z, whose density is proportional
    to exp(kappa w) (1 - w^2)^{(d-3)/2}, then a uniform direction in the tangent space of mu.
    The envelope is a transformed Beta((d-1)/2, (d-1)/2) variable; acceptance is high for every
    kappa and d, so a few vectorised rounds suffice.

    Args:
        n: number of samples >= 1.
        mu: (d,) mean direction (normalised here), d >= 2; its dtype and device are used.
        kappa: concentration > 0.
        generator: torch.Generator for reproducible samples.

    Returns:
        (n, d) unit vectors; their entropy is ``special.vmf_entropy(d, kappa)`` nats and
        E[mu^T z] = ``special.vmf_mean_resultant_length(d, kappa)``.

    [1] A. T. A. Wood, "Simulation of the von Mises Fisher distribution", Communications in
        Statistics - Simulation and Computation 23(1), 1994.
    """
    n = checks.positive_int(n, "n")
    mu = checks.tensor(mu, "mu")
    if mu.dim() != 1 or mu.shape[0] < 2:
        raise ValueError(f"mu must be a (d,) vector with d >= 2, got shape {tuple(mu.shape)}")
    checks.finite(mu, "mu")
    if float(mu.norm()) == 0.0:
        raise ValueError("mu must be a non-zero vector")
    kappa = checks.positive(kappa, "kappa")
    dtype, device = mu.dtype, mu.device
    mu = torch.nn.functional.normalize(mu.to(torch.float64), dim=0)
    d = mu.shape[0]
    m = d - 1.0
    # b = (-2 kappa + sqrt(4 kappa^2 + m^2)) / m, written without cancellation for large kappa.
    b = m / (2.0 * kappa + math.sqrt(4.0 * kappa * kappa + m * m))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m * math.log(1.0 - x0 * x0)
    # Beta((d-1)/2, (d-1)/2) from two Gamma variables; torch's Gamma sampler takes no generator,
    # so it is seeded from the generator's stream.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    beta_rng = torch.Generator().manual_seed(seed)
    w = torch.empty(0, dtype=torch.float64)
    while w.shape[0] < n:
        m_draw = 2 * (n - w.shape[0]) + 16
        ga = _standard_gamma(m / 2.0, m_draw, beta_rng)
        gb = _standard_gamma(m / 2.0, m_draw, beta_rng)
        z = ga / (ga + gb)
        cand = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        u = torch.rand(m_draw, generator=beta_rng, dtype=torch.float64)
        accept = kappa * cand + m * torch.log1p(-x0 * cand) - c >= torch.log(u)
        w = torch.cat([w, cand[accept]])
    w = w[:n].to(device)
    v = torch.randn(n, d, generator=generator, dtype=torch.float64, device=device)
    v = torch.nn.functional.normalize(v - (v @ mu)[:, None] * mu, dim=1)
    out = w[:, None] * mu + torch.sqrt((1.0 - w * w).clamp_min(0.0))[:, None] * v
    return out.to(dtype)


def _standard_gamma(shape: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """Gamma(shape, 1) samples by Marsaglia and Tsang's method, driven by ``generator``."""
    boost = shape < 1.0  # Gamma(a) = Gamma(a + 1) * U^{1/a}
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(0, dtype=torch.float64)
    while out.shape[0] < n:
        k = 2 * (n - out.shape[0]) + 16
        x = torch.randn(k, generator=generator, dtype=torch.float64)
        v = (1.0 + c * x) ** 3
        u = torch.rand(k, generator=generator, dtype=torch.float64)
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out = torch.cat([out, d * v[ok]])
    out = out[:n]
    if boost:
        out = out * torch.rand(n, generator=generator, dtype=torch.float64) ** (1.0 / shape)
    return out
