"""Argument validation shared by every op, operator, solver and model: one function per
argument kind, one error contract.

The contract: a rejection raises ``TypeError`` when the argument has the wrong type (not a
tensor, an int where a float is needed, a float where an int is needed) and ``ValueError``
when the type is right but the value is not (shape, range, non-finite data, dtype kind).
The message starts with the name of the public function or class that was called
(``fn``) and names the argument: ``"radon_forward: angles must be finite"``.

Value checks that need the data (finiteness, ranges of a trajectory) are skipped while
``torch.compile`` traces, where the data is symbolic; eager calls always run them.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch

__all__ = ["is_int", "is_real", "int_arg", "image_size", "real_tensor", "complex_tensor",
           "angles", "ktraj", "nufft_accuracy", "RANGE_SLACK"]

#: slack on the [-pi, pi] range of a trajectory, so that float32 pi (slightly > math.pi)
#: passes
RANGE_SLACK = 1e-5


def is_int(v) -> bool:
    """True for Python/NumPy integers, False for bool."""
    return isinstance(v, Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    """True for Python/NumPy real numbers, False for bool."""
    return isinstance(v, Real) and not isinstance(v, bool)


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def int_arg(name: str, value, low: int, fn: str | None = None) -> int:
    """``value`` as an int >= ``low`` (TypeError if not an int, ValueError if too small)."""
    where = f"{fn}: " if fn else ""
    if not is_int(value):
        raise TypeError(f"{where}{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{where}{name} must be >= {low}, got {value}")
    return int(value)


def image_size(value, fn: str) -> tuple[int, int]:
    """(H, W) from an int or a pair of ints, both positive."""
    if is_int(value):
        h = w = int(value)
    elif (isinstance(value, (tuple, list, torch.Size)) and len(value) == 2
          and all(is_int(v) for v in value)):
        h, w = (int(v) for v in value)
    else:
        raise TypeError(f"{fn}: image_size must be an int or a pair of ints (H, W), "
                        f"got {value!r}")
    if h < 1 or w < 1:
        raise ValueError(f"{fn}: image_size must be positive, got {value!r}")
    return h, w


def real_tensor(t, name: str, fn: str, min_dim: int = 2) -> None:
    """A real floating tensor with at least ``min_dim`` dims."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or not t.is_floating_point():
        raise ValueError(f"{fn}: {name} must be a real floating-point tensor, got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{fn}: {name} must have at least {min_dim} dims, got shape "
                         f"{tuple(t.shape)}")


def complex_tensor(t, name: str, fn: str, min_dim: int = 0) -> None:
    """A complex64 or complex128 tensor with at least ``min_dim`` dims."""
    if not isinstance(t, torch.Tensor) or not t.is_complex():
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{fn}: {name} must be a complex64 or complex128 tensor, got {got}")
    if t.dtype not in (torch.complex64, torch.complex128):
        raise TypeError(f"{fn}: {name} must be complex64 or complex128, got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{fn}: {name} must have at least {min_dim} dims, got shape "
                         f"{tuple(t.shape)}")


def angles(value, fn: str, device=None) -> torch.Tensor:
    """A non-empty 1-D real tensor of finite radians, returned as float64 (on ``device``
    when given)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: angles must be a 1-D torch.Tensor of radians, got "
                        f"{type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"{fn}: angles must be real, got {value.dtype}")
    if value.dim() != 1 or value.numel() == 0:
        raise ValueError(f"{fn}: angles must be a non-empty 1-D tensor, got shape "
                         f"{tuple(value.shape)}")
    value = value.to(device=device if device is not None else value.device,
                     dtype=torch.float64)
    if not _tracing() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{fn}: angles must be finite")
    return value


def ktraj(value, fn: str, device=None) -> torch.Tensor:
    """A real floating [M, 2] trajectory (M >= 0) of finite radians in [-pi, pi]; moved to
    ``device`` when given."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: ktraj must be a torch.Tensor of shape [M, 2], got "
                        f"{type(value).__name__}")
    if value.dim() != 2 or value.shape[1] != 2:
        raise ValueError(f"{fn}: ktraj must have shape [M, 2], got {tuple(value.shape)}")
    if value.is_complex() or not value.is_floating_point():
        raise ValueError(f"{fn}: ktraj must be real floating point (radians), got {value.dtype}")
    if not _tracing() and value.numel():
        k = value.detach()
        if not bool(torch.isfinite(k).all()):
            raise ValueError(f"{fn}: ktraj has non-finite entries (NaN or inf)")
        kmax = k.abs().max().item()
        if kmax > math.pi * (1 + RANGE_SLACK):
            raise ValueError(f"{fn}: ktraj must be radians in [-pi, pi]; got max |k| = "
                             f"{kmax:.6g} (a trajectory in cycles, [-0.5, 0.5], needs a "
                             "factor 2 pi)")
    if device is not None and value.device != torch.device(device):
        value = value.to(device)
    return value


def nufft_accuracy(tol, oversamp, fn: str) -> tuple[float, float]:
    """(tol, oversamp) as floats: tol in (0, 0.1], oversamp a finite number > 1."""
    if not is_real(tol):
        raise TypeError(f"{fn}: tol must be a real number, got {tol!r}")
    if not 0 < tol <= 0.1:
        raise ValueError(f"{fn}: tol must be a number in (0, 0.1], got {tol!r}")
    if not is_real(oversamp):
        raise TypeError(f"{fn}: oversamp must be a real number, got {oversamp!r}")
    if not (math.isfinite(oversamp) and oversamp > 1):
        raise ValueError(f"{fn}: oversamp must be a finite number > 1 (2.0 or 1.25 are "
                         f"usual), got {oversamp!r}")
    return float(tol), float(oversamp)
