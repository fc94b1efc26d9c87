"""Log-domain modified Bessel functions and the von Mises-Fisher (vMF) constants on the sphere.

``scipy.special.iv`` overflows and ``scipy.special.ive`` underflows for the orders a vMF kernel needs
(``ive(255, 10) == 0``), which is why the official ER code's ``log(iv(d/2 - 1, kappa) + 1e-7)`` is off by
hundreds of nats for d >= 128 [0]. Here ``log I_nu(x)`` is evaluated in log space, in float64, with
torch operations only (any device), to a relative error of about 1e-14 for 0 <= nu <= 1e4 and
1e-6 <= x <= 1e5 (tested against mpmath).

Method, per region of (nu, x):

* ``x**2 / 4 <= nu + 1``: the power series
  ``I_nu(x) = (x/2)**nu / Gamma(nu + 1) * sum_k (x**2/4)**k / (k! (nu + 1)_k)``, all terms positive,
  with ``_SERIES_TERMS`` terms (the omitted tail is below e / 21! < 1e-19, relative).
* ``nu >= _DEBYE_MIN_ORDER``: Debye's uniform asymptotic expansion (DLMF 10.41.3) with
  ``_DEBYE_TERMS`` correction terms; the first omitted term is below 1e-16 for these orders.
* ``nu < _DEBYE_MIN_ORDER``: Debye's expansion at the order ``nu + m`` (m the integer that lifts it
  to ``_DEBYE_MIN_ORDER``), then the recurrence ``I_{mu-1} = I_{mu+1} + (2 mu / x) I_mu`` run downwards
  for the ratio ``r_mu = I_{mu+1} / I_mu``:  ``r_mu = x / (2 (mu + 1) + x r_{mu+1})``. Every quantity
  in it is positive, so no step cancels, and ``log I_mu = log I_{mu+1} - log r_mu``.

The ratio ``I_{nu+1}(x) / I_nu(x)`` (``bessel_ratio``) comes from the same recurrence, seeded by the
difference of two Debye expansions written so that their large, equal parts cancel analytically.

[0] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023 (arXiv 2307.10907).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from numbers import Real

import torch

from mvssl_core import _checks

__all__ = [
    "log_iv",
    "bessel_ratio",
    "log_sphere_area",
    "uniform_sphere_entropy",
    "vmf_log_normalizer",
    "vmf_mean_resultant_length",
    "vmf_entropy",
]

_SERIES_TERMS = 20  # power series in x^2/4, used where x^2/4 <= nu + 1
_DEBYE_MIN_ORDER = 20  # Debye's expansion is used at orders >= this, lower orders recur down to it
_DEBYE_TERMS = 15  # u_1 .. u_15; max_t |u_16(t)| / 20**16 < 1e-17
_LOG_2PI = math.log(2.0 * math.pi)


def _debye_coefficients(n_terms: int) -> tuple[tuple[float, ...], ...]:
    """Debye polynomials u_k(t) = t**k * sum_i a[k][i] t**(2 i), k = 1..n_terms (DLMF 10.41.10).

    Built exactly, in rationals, from u_0 = 1 and
    u_{k+1}(t) = t^2 (1 - t^2) u_k'(t) / 2 + (1/8) int_0^t (1 - 5 s^2) u_k(s) ds.
    """
    u = {0: Fraction(1)}  # power of t -> coefficient
    out = []
    for _ in range(n_terms):
        nxt: dict[int, Fraction] = {}
        for e, c in u.items():
            if e > 0:  # t^2 (1 - t^2) / 2 * d/dt (c t^e)
                nxt[e + 1] = nxt.get(e + 1, Fraction(0)) + c * e / 2
                nxt[e + 3] = nxt.get(e + 3, Fraction(0)) - c * e / 2
            # (1/8) int_0^t (1 - 5 s^2) c s^e ds
            nxt[e + 1] = nxt.get(e + 1, Fraction(0)) + c / (8 * (e + 1))
            nxt[e + 3] = nxt.get(e + 3, Fraction(0)) - 5 * c / (8 * (e + 3))
        u = nxt
        k = len(out) + 1  # u_k has the powers t^k, t^(k+2), ..., t^(3k)
        out.append(tuple(float(u.get(k + 2 * i, 0)) for i in range(k + 1)))
    return tuple(out)


_DEBYE_U = _debye_coefficients(_DEBYE_TERMS)


# ---------------------------------------------------------------------------------------------
# Kernels: float64 tensors of one shape, nu >= 0, x > 0, no checks.


def _debye_parts(nu: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """s = sqrt(nu^2 + x^2) and log sum_k u_k(t) / nu^k with t = nu / s (nu > 0)."""
    s = torch.hypot(nu, x)
    t = nu / s
    t2 = t * t
    w = t / nu
    acc = torch.zeros_like(t)
    for coeffs in reversed(_DEBYE_U):  # Horner in w = t / nu; each u_k / t^k by Horner in t^2
        poly = torch.full_like(t, coeffs[-1])
        for c in reversed(coeffs[:-1]):
            poly = poly * t2 + c
        acc = (acc + poly) * w
    return s, torch.log1p(acc)


def _log_iv_debye(nu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log I_nu(x) = nu eta - log sqrt(2 pi s) + log sum_k u_k(t) / nu^k (DLMF 10.41.3), nu > 0."""
    s, log_sum = _debye_parts(nu, x)
    nu_eta = s + nu * torch.log(x / (nu + s))  # nu * eta(x / nu)
    return nu_eta - 0.5 * (_LOG_2PI + torch.log(s)) + log_sum


def _ratio_debye(nu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """I_{nu+1}(x) / I_nu(x) as the difference of two Debye expansions, nu > 0.

    The parts of size nu that cancel are subtracted analytically: with s_j = sqrt((nu + j)^2 + x^2)
    and ds = s_1 - s_0 = (2 nu + 1) / (s_0 + s_1),
    (nu + 1) eta_1 - nu eta_0 = ds + log(x / (nu + 1 + s_1)) - nu log1p((1 + ds) / (nu + s_0)).
    """
    s0, log_sum0 = _debye_parts(nu, x)
    s1, log_sum1 = _debye_parts(nu + 1.0, x)
    ds = (2.0 * nu + 1.0) / (s0 + s1)
    d_nu_eta = ds + torch.log(x / (nu + 1.0 + s1)) - nu * torch.log1p((1.0 + ds) / (nu + s0))
    return torch.exp(d_nu_eta - 0.5 * torch.log1p(ds / s0) + (log_sum1 - log_sum0))


def _debye_with_recurrence(
    nu: torch.Tensor, x: torch.Tensor, want_log: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(log I_nu(x) or None, I_{nu+1}(x) / I_nu(x)) for any nu >= 0.

    Orders below _DEBYE_MIN_ORDER start from Debye's expansion at nu + m and recur down m steps.
    The loop has a fixed length (no device sync); finished entries are carried through unchanged,
    with an order clamped to nu so that no branch produces a NaN that could reach a gradient.
    """
    steps = torch.clamp(torch.ceil(_DEBYE_MIN_ORDER - nu), min=0.0)
    top = nu + steps
    ratio = _ratio_debye(top, x)
    log_i = _log_iv_debye(top, x) if want_log else None
    for j in range(_DEBYE_MIN_ORDER):
        active = steps > j
        mu = torch.maximum(top - (j + 1), nu)
        new_ratio = x / (2.0 * (mu + 1.0) + x * ratio)  # r_mu from r_{mu+1}
        ratio = torch.where(active, new_ratio, ratio)
        if log_i is not None:
            log_i = torch.where(active, log_i - torch.log(new_ratio), log_i)
    return log_i, ratio


def _log_iv_series(nu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log I_nu(x) by the power series; accurate where x^2/4 <= nu + 1."""
    y = x * x / 4.0
    acc = torch.ones_like(x)  # nested: 1 + y/(1 (nu+1)) (1 + y/(2 (nu+2)) (1 + ...))
    for k in range(_SERIES_TERMS, 1, -1):
        acc = 1.0 + acc * y / (k * (nu + k))
    tail = acc * y / (nu + 1.0)  # sum - 1, kept apart for log1p
    return nu * torch.log(x / 2.0) - torch.lgamma(nu + 1.0) + torch.log1p(tail)


def _log_iv_kernel(nu: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log I_nu(x), I_{nu+1}(x) / I_nu(x)), float64, no autograd needed."""
    in_series = x * x <= 4.0 * (nu + 1.0)
    x_series = torch.minimum(x, 2.0 * torch.sqrt(nu + 1.0))  # keep the unused branch finite
    log_debye, ratio = _debye_with_recurrence(nu, x, want_log=True)
    return torch.where(in_series, _log_iv_series(nu, x_series), log_debye), ratio


class _LogIv(torch.autograd.Function):
    """log I_nu(x), or log I_nu(x) - nu log x when ``scaled``; gradient in x only.

    d/dx log I_nu(x) = I_{nu+1}(x) / I_nu(x) + nu / x (DLMF 10.29.2); the scaled form drops nu / x,
    which the vMF normaliser needs: there the two nu / x terms would otherwise cancel.
    """

    @staticmethod
    def forward(ctx, nu: torch.Tensor, x: torch.Tensor, scaled: bool) -> torch.Tensor:
        log_i, ratio = _log_iv_kernel(nu, x)
        if scaled:
            log_i = log_i - nu * torch.log(x)
        ctx.scaled = scaled
        ctx.save_for_backward(nu, x, ratio)
        return log_i

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        nu, x, ratio = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: rebuild the ratio as a function of x
            ratio = _debye_with_recurrence(nu, x, want_log=False)[1]
        slope = ratio if ctx.scaled else ratio + nu / x
        return None, grad * slope, None


# ---------------------------------------------------------------------------------------------
# Argument handling.


def _argument(value: object, name: str) -> tuple[torch.Tensor, torch.dtype]:
    """A finite, > 0 float or floating tensor as float64, and the dtype the result should have."""
    if isinstance(value, torch.Tensor):
        _checks.finite(_checks.tensor(value, name), name)
        if not bool((value.detach() > 0).all()):
            raise ValueError(f"{name} must be > 0, got a minimum of {float(value.detach().min())}")
        return value.to(torch.float64), value.dtype
    return torch.tensor(_checks.positive(value, name), dtype=torch.float64), torch.float64


def _order(nu: object, device: torch.device) -> torch.Tensor:
    """A finite order nu >= 0 (number or real tensor) as a float64 tensor on ``device``."""
    if isinstance(nu, torch.Tensor):
        if nu.requires_grad:
            raise ValueError("nu must not require grad: these functions are differentiable in x only")
        if nu.is_complex() or nu.dtype == torch.bool:
            raise TypeError(f"nu must be a real tensor, got dtype {nu.dtype}")
        nu = nu.to(device=device, dtype=torch.float64)
        _checks.finite(nu, "nu")
        if not bool((nu >= 0).all()):
            raise ValueError(f"nu must be >= 0, got a minimum of {float(nu.min())}")
        return nu
    if isinstance(nu, bool) or not isinstance(nu, Real):
        raise TypeError(f"nu must be a real number or a tensor, got {type(nu).__name__}")
    if not math.isfinite(nu) or nu < 0:
        raise ValueError(f"nu must be a finite number >= 0, got {nu}")
    return torch.tensor(float(nu), dtype=torch.float64, device=device)


def _order_and_argument(nu: object, x: object, x_name: str):
    x64, dtype = _argument(x, x_name)
    nu64 = _order(nu, x64.device)
    try:
        nu64, x64 = torch.broadcast_tensors(nu64, x64)
    except RuntimeError:
        raise ValueError(
            f"nu and {x_name} must be broadcastable, got shapes {tuple(nu64.shape)} and {tuple(x64.shape)}"
        ) from None
    return nu64, x64, dtype


# ---------------------------------------------------------------------------------------------
# Public functions.


def log_iv(nu: float | torch.Tensor, x: float | torch.Tensor) -> torch.Tensor:
    """log I_nu(x), the log of the modified Bessel function of the first kind, in log space.

    Relative error of I_nu(x) about 1e-14 for 0 <= nu <= 1e4, 1e-6 <= x <= 1e5 (module docstring).

    Args:
        nu: order(s) >= 0, a number or tensor; not differentiable.
        x: argument(s) > 0, a number or floating tensor broadcastable with ``nu``.

    Returns:
        Tensor of the broadcast shape, computed in float64 and returned in x's dtype (float64 for a
        number). Differentiable in x: d/dx log I_nu(x) = I_{nu+1}(x) / I_nu(x) + nu / x.

    Example:
        >>> float(log_iv(0.5, 10.0))  # log(sqrt(2 / (pi x)) sinh x)
        7.9297...
    """
    nu64, x64, dtype = _order_and_argument(nu, x, "x")
    return _LogIv.apply(nu64, x64, False).to(dtype)


def bessel_ratio(nu: float | torch.Tensor, x: float | torch.Tensor) -> torch.Tensor:
    """I_{nu+1}(x) / I_nu(x), in (0, 1), to a relative error of about 1e-14.

    Computed by the downward recurrence of the ratio from Debye's expansion (never as the exp of a
    difference of two logs). Differentiable in x (through its torch operations).

    Args:
        nu: order(s) >= 0, a number or tensor; not differentiable.
        x: argument(s) > 0, a number or floating tensor broadcastable with ``nu``.

    Returns:
        Tensor of the broadcast shape, in x's dtype (float64 for a number).
    """
    nu64, x64, dtype = _order_and_argument(nu, x, "x")
    return _debye_with_recurrence(nu64, x64, want_log=False)[1].to(dtype)


def log_sphere_area(d: int) -> float:
    """log of the area of the unit sphere S^{d-1} in R^d: log(2 pi^{d/2} / Gamma(d/2)).

    Args:
        d: ambient dimension, an int >= 2.
    """
    d = _checks.positive_int(d, "d", minimum=2)
    return math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)


def uniform_sphere_entropy(d: int) -> float:
    """Differential entropy of the uniform distribution on S^{d-1}, in nats (= log_sphere_area(d)).

    Args:
        d: ambient dimension, an int >= 2. For d = 1000 it is -2032.06 nats.
    """
    return log_sphere_area(d)


def vmf_log_normalizer(d: int, kappa: float | torch.Tensor) -> torch.Tensor:
    """log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log 2 pi - log I_{d/2-1}(kappa) of the vMF density.

    The vMF density on S^{d-1} is C_d(kappa) exp(kappa mu^T z) [0]; d/dkappa log C_d = -A_d(kappa).

    Args:
        d: ambient dimension, an int >= 2.
        kappa: concentration(s) > 0, a number or floating tensor of any shape.

    Returns:
        Tensor of kappa's shape (0-dim for a number), in nats, in kappa's dtype (float64 for a
        number). Differentiable in kappa. For a number, the value is computed once per (d, kappa)
        and kept (it costs milliseconds of small tensor operations; an ER bound asks for it twice
        per step); each call returns a new tensor.
    """
    d = _checks.positive_int(d, "d", minimum=2)
    if not isinstance(kappa, torch.Tensor):
        return torch.tensor(_vmf_log_normalizer_of_number(d, _checks.positive(kappa, "kappa")), dtype=torch.float64)
    kappa64, dtype = _argument(kappa, "kappa")
    return _vmf_log_normalizer(d, kappa64).to(dtype)


def vmf_mean_resultant_length(d: int, kappa: float | torch.Tensor) -> torch.Tensor:
    """A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) = E[mu^T z] under vMF(mu, kappa) on S^{d-1}.

    Args:
        d: ambient dimension, an int >= 2.
        kappa: concentration(s) > 0, a number or floating tensor.

    Returns:
        Tensor of kappa's shape, in (0, 1) and increasing in kappa; in kappa's dtype. Differentiable
        in kappa.
    """
    d = _checks.positive_int(d, "d", minimum=2)
    kappa64, dtype = _argument(kappa, "kappa")
    return _vmf_mean_resultant_length(d, kappa64).to(dtype)


def vmf_entropy(d: int, kappa: float | torch.Tensor) -> torch.Tensor:
    """Differential entropy of vMF(mu, kappa) on S^{d-1}: -log C_d(kappa) - kappa A_d(kappa), in nats.

    Tends to uniform_sphere_entropy(d) as kappa -> 0 (as -kappa^2 / (2 d)) and decreases with kappa.

    Args:
        d: ambient dimension, an int >= 2.
        kappa: concentration(s) > 0, a number or floating tensor.

    Returns:
        Tensor of kappa's shape, in nats, in kappa's dtype. Differentiable in kappa.
    """
    d = _checks.positive_int(d, "d", minimum=2)
    kappa64, dtype = _argument(kappa, "kappa")
    entropy = -_vmf_log_normalizer(d, kappa64) - kappa64 * _vmf_mean_resultant_length(d, kappa64)
    return entropy.to(dtype)


def _vmf_log_normalizer(d: int, kappa: torch.Tensor) -> torch.Tensor:
    nu = torch.full_like(kappa, 0.5 * d - 1.0)
    # (d/2 - 1) log kappa - log I_nu(kappa) is taken as one term (the scaled log I), so that its
    # gradient -A_d does not come out of two large nu / kappa terms that cancel at small kappa.
    return -0.5 * d * _LOG_2PI - _LogIv.apply(nu, kappa, True)


@functools.lru_cache(maxsize=1024)
def _vmf_log_normalizer_of_number(d: int, kappa: float) -> float:
    """log C_d(kappa) for a number kappa, as a float (immutable, so the cache cannot be altered)."""
    return float(_vmf_log_normalizer(d, torch.tensor(kappa, dtype=torch.float64)))


def _vmf_mean_resultant_length(d: int, kappa: torch.Tensor) -> torch.Tensor:
    nu = torch.full_like(kappa, 0.5 * d - 1.0)
    return _debye_with_recurrence(nu, kappa, want_log=False)[1]
