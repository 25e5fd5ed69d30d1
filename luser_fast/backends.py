"""Which implementation serves each op: the one place the backend preference is read.

Backends: ``reference`` (pure PyTorch, everywhere), ``cpu`` (C++ extension), ``cuda``
(CUDA kernels through CuPy), ``triton`` (Triton kernels). Op families register the fast
implementations they have with ``register``; every op is served by the reference at least.

How a backend is chosen for one call of an op on a device type (``select``):

1. an explicit ``backend=`` argument of the call (the ``luser_fast.reference`` classes pass
   ``"reference"``), else the per-op variable ``LUSER_FAST_BACKEND_<OP>`` (e.g.
   ``LUSER_FAST_BACKEND_RADON_FORWARD=cpu``): a request; if that backend cannot serve
   the op there, ``RuntimeError`` naming the op;
2. else ``LUSER_FAST_BACKEND``: a preference. ``reference`` forces every op to its
   reference; another backend is used by the ops it serves on that device, and the others
   pick as ``auto`` does (so ``LUSER_FAST_BACKEND=cpu`` never breaks an op that has no C++
   kernel);
3. ``auto`` (the default): the fastest available, ``cpu`` then ``reference`` on CPU,
   ``triton`` then ``cuda`` then ``reference`` on CUDA.

The public functions of ``luser_fast.ops`` call ``select`` in eager mode and while
``torch.compile`` traces them alike; a compiled graph keeps the choice made when it was
traced. When a chosen fast kernel cannot take a particular call (a dtype or size it does
not handle) the op runs its reference and says so once per op and reason (``fallback``),
never silently.
"""
from __future__ import annotations

import os
import warnings

import torch

__all__ = ["BACKENDS", "OPS", "register", "requested", "select", "fallback", "table"]

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
#: preference order for ``auto`` per device type
_PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}
#: the ops of the public API; each is served by the reference at least
OPS = ("radon_forward", "radon_adjoint", "nufft_type1", "nufft_type2", "anderson_step",
       "anderson_mix", "shallow_map", "shallow_inject", "conebeam_forward", "conebeam_adjoint",
       "nufft3_type2", "nufft3_type1")

_registry: dict[str, dict[str, tuple]] = {op: {"reference": (("cpu", "cuda"), lambda: True)}
                                          for op in OPS}
_warned: set = set()


def _check_name(name: str, where: str) -> str:
    name = (name or "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{where} must be one of {BACKENDS}, got {name!r}")
    return name


def _env_name(op: str) -> str:
    return "LUSER_FAST_BACKEND_" + op.upper()


def requested(op: str | None = None) -> str:
    """The backend named by the environment for ``op``: its ``LUSER_FAST_BACKEND_<OP>``
    if set, else ``LUSER_FAST_BACKEND`` (default ``auto``)."""
    if op is not None and os.environ.get(_env_name(op)):
        return _check_name(os.environ[_env_name(op)], _env_name(op))
    return _check_name(os.environ.get("LUSER_FAST_BACKEND", "auto"), "LUSER_FAST_BACKEND")


def register(ops, backend: str, devices: tuple, available) -> None:
    """Declare that ``backend`` serves ``ops`` (an op name or a tuple of them) on
    ``devices`` when ``available()`` is true."""
    for op in (ops,) if isinstance(ops, str) else ops:
        if op not in _registry:
            raise ValueError(f"unknown op {op!r}; known: {OPS}")
        if backend not in BACKENDS[1:]:
            raise ValueError(f"unknown backend {backend!r}")
        _registry[op][backend] = (tuple(devices), available)


def _serves(op, backend, device_type):
    entry = _registry[op].get(backend)
    return entry is not None and device_type in entry[0] and bool(entry[1]())


def _auto(op, device_type):
    for backend in _PREFERENCE.get(device_type, ("reference",)):
        if _serves(op, backend, device_type):
            return backend
    return "reference"


@torch.compiler.assume_constant_result
def select(op: str, device_type: str = "cpu", backend: str | None = None) -> str:
    """The backend that serves ``op`` for tensors on ``device_type`` (module docstring).

    Args:
        op: one of ``OPS``.
        device_type: "cpu", "cuda", ...
        backend: an explicit request for this call (None: the environment decides).

    Raises:
        ValueError: unknown op or backend name.
        RuntimeError: an explicitly requested backend (``backend=`` or
            ``LUSER_FAST_BACKEND_<OP>``) cannot serve the op on that device.
    """
    if op not in _registry:
        raise ValueError(f"unknown op {op!r}; known: {OPS}")
    explicit = backend is not None or bool(os.environ.get(_env_name(op)))
    name = _check_name(backend, "backend") if backend is not None else requested(op)
    if name == "reference":
        return name
    if name == "auto":
        return _auto(op, device_type)
    if _serves(op, name, device_type):
        return name
    if explicit:
        available = [b for b in _registry[op] if _serves(op, b, device_type)]
        raise RuntimeError(f"backend {name!r} was requested for {op} but cannot serve it on "
                           f"{device_type} (available there: {available})")
    return _auto(op, device_type)


def fallback(op: str, reason: str) -> None:
    """Warn once per (op, reason) that ``op`` runs its reference instead of the chosen
    fast kernel."""
    if (op, reason) not in _warned:
        _warned.add((op, reason))
        warnings.warn(f"luser_fast: {op} runs its reference: {reason}", RuntimeWarning,
                      stacklevel=3)


def table(device_type: str = "cpu") -> dict:
    """op -> serving backend (or the error text) for ``device_type``."""
    out = {}
    for op in OPS:
        try:
            out[op] = select(op, device_type)
        except (RuntimeError, ValueError) as exc:
            out[op] = f"error: {exc}"
    return out
