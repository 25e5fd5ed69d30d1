"""Equilibrium-solver contracts shared by every solver and DEQ implementation.

Conventions shared by both solvers, for a batch of B samples z of any trailing shape
(flattened per sample internally; complex z is treated as pairs of reals):

* Each solver step evaluates f once. The residual of iterate z is ``||f(z) - z||``
  (``stop="abs"``) or ``||f(z) - z|| / (||f(z)|| + REL_EPS)`` (``stop="rel"``), per sample,
  with norms taken in float64.
* A sample whose residual reaches ``tol`` is frozen: its iterate and history stop changing
  and its iteration count stops. A sample whose f(z) (or z) turns non-finite is frozen too,
  keeps its best finite iterate and is marked not converged. Nothing mixes samples, so one
  sample cannot poison another (as long as f itself treats samples independently).
* The returned z is, per sample, the iterate with the lowest residual seen.
* The solvers run under ``torch.no_grad``; gradients come from ``DEQ``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = ["REL_EPS", "RETRY_FACTOR", "STOPS", "BACKWARDS", "PHANTOM_DEFAULTS", "SolverInfo",
           "check_option", "check_check_every", "check_solver_args", "check_problem", "flat", "unflat",
           "work_dtype", "evaluate", "Tracker", "checked_kwargs", "check_chunk",
           "batch_slices", "cat_info"]

#: eps of the relative residual ||f(z) - z|| / (||f(z)|| + REL_EPS). Tiny, so the residual
#: stays scale-free; for a fixed point at (or near) zero use stop="abs".
REL_EPS = 1e-12

#: when the bordered Anderson system cannot be solved (lam=0 with a rank-deficient history),
#: the Tikhonov weight is multiplied by this once before falling back to a fixed-point step.
RETRY_FACTOR = 1e3

STOPS = ("rel", "abs")
BACKWARDS = ("ift", "jfb", "phantom")
PHANTOM_DEFAULTS = {"k": 5, "lam": 0.5}


@dataclass
class SolverInfo:
    """Per-sample outcome of a solve; every field is a tensor of shape [B] on z0's device.

    Attributes:
        iterations: int64, evaluations of f spent on the sample, counting the one that
            converged it (or found it non-finite); ``max_iter`` when it never stopped.
        residual: float64, the stopping residual (``rel_residual`` or ``abs_residual``,
            per ``stop``) of the returned iterate; inf when no finite iterate was seen.
        converged: bool, ``residual <= tol``.
        abs_residual: float64, ``||f(z) - z||`` of the returned iterate.
        rel_residual: float64, ``||f(z) - z|| / (||f(z)|| + REL_EPS)`` of the returned iterate.
    """

    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    abs_residual: torch.Tensor
    rel_residual: torch.Tensor


def check_option(name, value):
    """Raise ValueError naming ``name`` unless ``value`` is valid for that solver option."""
    if name in ("m", "max_iter"):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        return
    if name == "stop":
        if not isinstance(value, str) or value not in STOPS:
            raise ValueError(f"stop must be one of {STOPS}, got {value!r}")
        return
    real = (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))
    if name == "beta" and not (real and 0 < value <= 1):
        raise ValueError(f"beta must be a real number in (0, 1], got {value!r}")
    if name == "lam" and not (real and value >= 0):
        raise ValueError(f"lam must be a finite real number >= 0, got {value!r}")
    if name == "tol" and not (real and value > 0):
        raise ValueError(f"tol must be a finite real number > 0, got {value!r}")


def check_solver_args(f, z0, **options):
    """Validate a solver call: every keyword option (``check_option``) and (f, z0)."""
    for name, value in options.items():
        check_option(name, value)
    check_problem(f, z0)


def check_problem(f, z0):
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not isinstance(z0, torch.Tensor):
        raise TypeError(f"z0 must be a torch.Tensor, got {type(z0).__name__}")
    if z0.dim() < 1 or z0.shape[0] < 1:
        raise ValueError(f"z0 must have a leading batch dimension B >= 1, got shape "
                         f"{tuple(z0.shape)}")
    if not (z0.is_floating_point() or z0.is_complex()):
        raise ValueError(f"z0 must be a floating-point or complex tensor, got {z0.dtype}")


def flat(x):
    """[B, ...] -> [B, D] real view (complex entries become (re, im) pairs)."""
    if x.is_complex():
        x = torch.view_as_real(x.resolve_conj())
    return x.reshape(x.shape[0], -1)


def unflat(flat, like):
    """Inverse of ``_flat``: [B, D] -> the shape and dtype of ``like``."""
    if like.is_complex():
        flat = torch.view_as_complex(flat.reshape(*like.shape, 2).contiguous())
    return flat.reshape(like.shape).to(like.dtype)


def work_dtype(x):
    """Real dtype of the Anderson history and mixing: float32 or better."""
    real = torch.empty((), dtype=x.dtype).real.dtype if x.is_complex() else x.dtype
    return torch.promote_types(real, torch.float32)


def evaluate(f, z):
    fz = f(z)
    if not isinstance(fz, torch.Tensor) or fz.shape != z.shape:
        got = tuple(fz.shape) if isinstance(fz, torch.Tensor) else type(fz).__name__
        raise ValueError(f"z0 has shape {tuple(z.shape)} but f(z) returned {got}; the "
                         "fixed-point map must preserve the shape of z0")
    return fz.to(z.dtype)


class Tracker:
    """Per-sample bookkeeping shared by the solvers: residuals, best iterate, freezing."""

    def __init__(self, z0, tol, stop):
        b, dev = z0.shape[0], z0.device
        self.tol, self.stop = tol, stop
        self.best = z0.clone()
        self.abs_residual = torch.full((b,), math.inf, dtype=torch.float64, device=dev)
        self.rel_residual = self.abs_residual.clone()
        self.iterations = torch.zeros(b, dtype=torch.int64, device=dev)
        self.converged = torch.zeros(b, dtype=torch.bool, device=dev)
        self.active = torch.ones(b, dtype=torch.bool, device=dev)

    @property
    def residual(self):
        return self.rel_residual if self.stop == "rel" else self.abs_residual

    def record(self, z, fz):
        """Score iterate z (fz = f(z)) for the active samples; freeze the finished ones."""
        fz_flat = flat(fz).double()
        abs_r = torch.linalg.vector_norm(fz_flat - flat(z).double(), dim=1)
        fz_norm = torch.linalg.vector_norm(fz_flat, dim=1)
        rel_r = abs_r / (fz_norm + REL_EPS)
        res = rel_r if self.stop == "rel" else abs_r
        live = self.active
        finite = torch.isfinite(abs_r) & torch.isfinite(fz_norm)
        better = live & finite & (res < self.residual)
        self.best = torch.where(better.view(-1, *[1] * (z.dim() - 1)), z, self.best)
        self.abs_residual = torch.where(better, abs_r, self.abs_residual)
        self.rel_residual = torch.where(better, rel_r, self.rel_residual)
        self.iterations += live
        self.converged |= live & finite & (res <= self.tol)
        self.active = live & finite & ~self.converged

    def done(self):
        return not bool(self.active.any())

    def info(self):
        return SolverInfo(self.iterations, self.residual, self.converged,
                          self.abs_residual, self.rel_residual)


SOLVER_KEYS = {"anderson": ("m", "beta", "lam", "tol", "max_iter", "stop"),
                "fixed_point": ("tol", "max_iter", "stop")}


def checked_kwargs(what, kwargs, allowed):
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise TypeError(f"{what} must be a dict or None, got {type(kwargs).__name__}")
    for key in kwargs:
        if key not in allowed:
            raise TypeError(f"{what}: unexpected keyword argument {key!r} "
                            f"(accepted: {', '.join(allowed) or 'none'})")
    return dict(kwargs)


def check_chunk(chunk):
    """Raise unless ``chunk`` (samples per chunk of a DEQ solve) is None or an int >= 1."""
    if chunk is None:
        return
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ValueError(f"chunk must be None (the whole batch) or an int >= 1, got {chunk!r}")


def batch_slices(batch, chunk):
    """Slices of ``range(batch)`` of at most ``chunk`` samples each (one slice if None)."""
    step = batch if chunk is None else int(chunk)
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


def cat_info(infos):
    """One ``SolverInfo`` for a batch solved in chunks (fields concatenated along B)."""
    if len(infos) == 1:
        return infos[0]
    return SolverInfo(*(torch.cat([getattr(i, name) for i in infos])
                        for name in ("iterations", "residual", "converged", "abs_residual",
                                     "rel_residual")))




def check_check_every(value):
    """Raise ValueError unless ``check_every`` is None or an int >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                              or value < 1):
        raise ValueError(f"check_every must be an int >= 1 or None, got {value!r}")
