"""Argument checks shared by the estimators and bounds: one wording for one contract.

Each check raises ``ValueError`` (bad value or shape) or ``TypeError`` (bad type) with a message
that names the argument and says what was expected.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from numbers import Real

import torch


_VALUE_CHECKS: ContextVar[bool] = ContextVar("mvssl_value_checks", default=True)


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Inside ``value_checks(False)``, the checks that read values and so wait for the device (:func:`finite`,
    :func:`nonzero_rows`, the value part of :func:`probabilities`) pass without looking; type, shape and
    argument checks still run. The trainer skips them on the steps that log nothing but the first of a process:
    each costs a host sync, a NaN reaches the loss check of the same step anyway, and a zero row or a bad
    probability vector is caught at the next logged step.
    """
    token = _VALUE_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def tensor(x: object, name: str) -> torch.Tensor:
    """Reject anything that is not a floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Reject NaN or infinite entries (checked without autograd, one device sync)."""
    if not _VALUE_CHECKS.get():
        return x
    xd = x.detach()
    if xd.is_floating_point() and xd.numel() > 0:
        # min and max propagate NaN and expose +-inf: one reduction and no (N, K) boolean temporary,
        # an order of magnitude faster than isfinite(x).all() on CPU
        lo, hi = torch.aminmax(xd)
        ok = bool(torch.isfinite(lo) & torch.isfinite(hi))
    else:
        ok = bool(torch.isfinite(xd).all())
    if not ok:
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    return x


def embeddings(z: object, name: str, min_samples: int = 2) -> torch.Tensor:
    """A floating ``(N, d)`` batch of finite embeddings with ``N >= min_samples``."""
    z = tensor(z, name)
    if z.dim() != 2:
        raise ValueError(f"{name} must have shape (N, d), got a tensor of shape {tuple(z.shape)}")
    if z.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} samples (rows), got {z.shape[0]}")
    if z.shape[1] < 1:
        raise ValueError(f"{name} must have at least one dimension (column), got shape {tuple(z.shape)}")
    return finite(z, name)


def same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def positive(value: object, name: str) -> float:
    """A finite real number > 0 (a Python number or a one-element tensor)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def choice(value: object, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value  # type: ignore[return-value]


def probabilities(p: object, name: str, atol: float = 1e-4) -> torch.Tensor:
    """A floating ``(N, K)`` tensor whose rows are probability vectors (>= 0, summing to 1)."""
    p = embeddings(p, name, min_samples=1)
    if not _VALUE_CHECKS.get():
        return p
    pd = p.detach()
    if bool((pd < 0).any()):
        raise ValueError(f"{name} rows must be probability vectors: found negative entries")
    sums = pd.sum(dim=1, dtype=torch.float32)
    if not bool(torch.allclose(sums, torch.ones_like(sums), atol=atol)):
        worst = float((sums - 1).abs().max())
        raise ValueError(
            f"{name} rows must be probability vectors summing to 1 (largest deviation {worst:.3g}); "
            "pass softmax outputs, not logits"
        )
    return p


def crops(xs: object, name: str, min_samples: int = 1) -> list[torch.Tensor]:
    """A non-empty list of finite ``(N, K)`` tensors of one shape (the crops of a multi-crop batch)."""
    if isinstance(xs, torch.Tensor) or not isinstance(xs, (list, tuple)) or len(xs) == 0:
        raise TypeError(f"{name} must be a non-empty list of (N, K) tensors")
    out = [embeddings(x, f"{name}[{i}]", min_samples=min_samples) for i, x in enumerate(xs)]
    for i, x in enumerate(out[1:], start=1):
        same_shape(out[0], x, f"{name}[0]", f"{name}[{i}]")
    return out


def boolean(value: object, name: str) -> bool:
    """A ``bool`` (Python's or numpy's); strings, numbers and None are refused, not coerced.

    ``bool("no")`` is True: a flag passed as text must fail here, not switch the option on.
    """
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"):  # numpy's True / False
        return bool(value)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def fraction(value: object, name: str) -> float:
    """A finite real number in [0, 1] (a Python number or a one-element tensor), e.g. training progress."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number in [0, 1], got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r} ({type(value).__name__})")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value}")
    return value


# F.normalize divides by max(|x|, eps) with eps = 1e-12: a row at or below that norm does not reach the sphere
_MIN_NORM = 1e-12


def nonzero_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """Refuse rows of an (N, d) tensor that cannot be L2-normalised (norm 0, or below F.normalize's 1e-12).

    Under the sphere rule a row is a direction; normalising a zero row gives the zero vector, whose
    cosine with everything is 0, silently "orthogonal" to the batch.
    """
    if not _VALUE_CHECKS.get():
        return x
    xd = x.detach()
    if xd.dtype in (torch.float16, torch.bfloat16):
        xd = xd.float()
    if xd.numel() == 0:
        return x
    norms = torch.linalg.vector_norm(xd, dim=-1)
    if bool(norms.min() <= _MIN_NORM):
        bad = (norms <= _MIN_NORM).nonzero().flatten()
        shown = ", ".join(str(int(i)) for i in bad[:5]) + (", ..." if bad.numel() > 5 else "")
        raise ValueError(
            f"{name} has {bad.numel()} row(s) of norm 0 (or <= {_MIN_NORM:g}), rows {shown}: a zero vector has "
            "no direction to normalise onto the sphere; every row must be non-zero"
        )
    return x


def real(value: object, name: str) -> float:
    """A finite real number (a Python number or a one-element tensor); bools, strings and None are refused."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def nonnegative(value: object, name: str) -> float:
    """A finite real number >= 0 (a Python number or a one-element tensor)."""
    value = real(value, name)
    if value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def batch(x: object, name: str, features: int | None = None) -> torch.Tensor:
    """A floating ``(N, features)`` tensor with ``N >= 1``, checked by type and shape only.

    For the forward of a module, called every step: the values are not read (no device sync), so NaN or
    inf entries propagate to the output as in torch (the trainer's divergence check catches them).
    """
    x = tensor(x, name)
    if x.dim() != 2:
        what = "(N, d)" if features is None else f"(N, {features})"
        raise ValueError(f"{name} must have shape {what}, got a tensor of shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must have at least one sample (row), got shape {tuple(x.shape)}")
    if features is not None and x.shape[1] != features:
        raise ValueError(f"{name} must have {features} features (columns), got shape {tuple(x.shape)}")
    return x
