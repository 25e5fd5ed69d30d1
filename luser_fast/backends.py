"""Backend registry: which implementation serves each op (``LUSER_FAST_BACKEND``).

Backends: ``reference`` (pure PyTorch, everywhere), ``cpu`` (C++ extension), ``cuda``
(CUDA kernels through CuPy), ``triton`` (Triton kernels). ``auto`` picks the fastest one
available for the tensor's device; an explicit choice that cannot serve an op raises.
Op families register their fast implementations with ``register``.
"""
from __future__ import annotations

import os

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
#: preference order for ``auto`` per device type
_PREFERENCE = {"cpu": ("cpu", "reference"), "cuda": ("triton", "cuda", "reference")}
#: the ops of the public API; each is served by the reference at least
OPS = ("radon_forward", "radon_adjoint", "nufft_type1", "nufft_type2", "anderson_step", "shallow_map")

_registry: dict[str, dict[str, tuple]] = {op: {"reference": (("cpu", "cuda"), lambda: True)} for op in OPS}


def requested() -> str:
    """The backend named by ``LUSER_FAST_BACKEND`` (default ``auto``)."""
    name = os.environ.get("LUSER_FAST_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"LUSER_FAST_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


def register(op: str, backend: str, devices: tuple, available) -> None:
    """Declare that ``backend`` serves ``op`` on ``devices`` when ``available()`` is true."""
    if op not in _registry:
        raise ValueError(f"unknown op {op!r}; known: {OPS}")
    if backend not in BACKENDS[1:]:
        raise ValueError(f"unknown backend {backend!r}")
    _registry[op][backend] = (tuple(devices), available)


def _serves(op, backend, device_type):
    entry = _registry[op].get(backend)
    return entry is not None and device_type in entry[0] and bool(entry[1]())


def select(op: str, device_type: str = "cpu") -> str:
    """The backend that serves ``op`` for tensors on ``device_type``.

    Raises:
        ValueError: unknown op or LUSER_FAST_BACKEND value.
        RuntimeError: an explicitly requested backend cannot serve the op there.
    """
    if op not in _registry:
        raise ValueError(f"unknown op {op!r}; known: {OPS}")
    name = requested()
    if name == "auto":
        for backend in _PREFERENCE.get(device_type, ("reference",)):
            if _serves(op, backend, device_type):
                return backend
        return "reference"
    if not _serves(op, name, device_type):
        raise RuntimeError(f"LUSER_FAST_BACKEND={name} cannot serve {op} on {device_type} "
                           f"(available there: {[b for b in _registry[op] if _serves(op, b, device_type)]})")
    return name


def table(device_type: str = "cpu") -> dict:
    """op -> serving backend (or the error text) for ``device_type``."""
    out = {}
    for op in OPS:
        try:
            out[op] = select(op, device_type)
        except (RuntimeError, ValueError) as exc:
            out[op] = f"error: {exc}"
    return out
