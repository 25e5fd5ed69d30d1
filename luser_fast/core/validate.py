"""Argument validation shared by every op, operator, solver and model: one function per
argument kind, one error contract.

The contract: a rejection raises ``TypeError`` when the argument has the wrong type (not a
tensor, an int where a float is needed, a float where an int is needed) and ``ValueError``
when the type is right but the value is not (shape, range, non-finite data, dtype kind).
The message starts with the name of the public function or class that was called
(``fn``) and names the argument: ``"radon_forward: angles must be finite"``.

Value checks that need the data (finiteness, ranges of a trajectory) are skipped while
``torch.compile`` traces, where the data is symbolic, and on ``meta`` tensors, which have
none; eager calls on data always run them.

Besides the argument kinds: ``same_device`` (tensor arguments on one device, naming the
one that is not), ``tensor_like`` (a tensor of a given shape / dtype / device) and
``allocation`` (a tensor that cannot fit, ``MAX_BYTES`` or the device's memory, is refused
with the bytes asked before it reaches the allocator).
"""
from __future__ import annotations

import functools
import math
import os
from numbers import Integral, Real

import torch

from ..constants import NUFFT_MAX_ABS_K, NUFFT_RANGE_SLACK

__all__ = ["is_int", "is_real", "int_arg", "image_size", "as_tensor", "coil_maps", "real_tensor",
           "complex_tensor", "angles", "ktraj", "nufft_accuracy", "same_device", "tensor_like", "allocation",
           "device_memory", "format_bytes", "RANGE_SLACK", "MAX_BYTES"]

#: slack on the [-pi, pi] range of a trajectory, so that float32 pi (slightly > math.pi)
#: passes (``kNufftRangeSlack``, csrc/common/constants.h: the kernels use the same bound)
RANGE_SLACK = NUFFT_RANGE_SLACK


def is_int(v) -> bool:
    """True for Python/NumPy integers, False for bool."""
    return isinstance(v, Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    """True for Python/NumPy real numbers, False for bool."""
    return isinstance(v, Real) and not isinstance(v, bool)


#: no single tensor may exceed this many bytes, whatever the device: 2**47 bytes (128 TiB)
#: is the whole user address space of an x86-64 process (4-level paging) and more than any
#: GPU holds. ``allocation`` also refuses more than the device's own memory.
MAX_BYTES = 2 ** 47


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


#: the image axes per number of dims (image_size and coil_maps messages)
_AXES = {2: "H, W", 3: "D, H, W"}
_COUNT = {2: "a pair", 3: "a triple"}


def image_size(value, fn: str, dims: int = 2, why: str = "") -> tuple[int, ...]:
    """``dims`` positive ints (``dims`` 2: (H, W); 3: (D, H, W)) from an int (the same size
    along every axis) or a sequence of ``dims`` ints; a sequence of another length is a
    TypeError (``why`` says what asks for ``dims``, e.g. " for a 3-column ktraj")."""
    if is_int(value):
        size = (int(value),) * dims
    elif (isinstance(value, (tuple, list, torch.Size)) and len(value) == dims
          and all(is_int(v) for v in value)):
        size = tuple(int(v) for v in value)
    else:
        what = (f"{_COUNT[dims]} of ints ({_AXES[dims]})" if dims in _AXES
                else f"a sequence of {dims} ints")
        raise TypeError(f"{fn}: image_size must be an int or {what}{why}, got {value!r}")
    if min(size) < 1:
        raise ValueError(f"{fn}: image_size must be positive, got {value!r}")
    return size


def as_tensor(value, name: str, fn: str) -> torch.Tensor:
    """``value`` as a tensor (tensors as they are; arrays and nested sequences of numbers
    converted); TypeError naming the argument when it cannot be one."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{fn}: {name} must be a tensor, got {type(value).__name__}")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{fn}: {name} must be a tensor or array of numbers, got "
                        f"{type(value).__name__} ({exc})") from None


def coil_maps(maps, image_size: tuple[int, ...], fn: str) -> torch.Tensor | None:
    """None, or coil sensitivities [Coils, *image_size] / [B, Coils, *image_size] (image_size
    (H, W) or (D, H, W)) as a complex tensor (real floating maps are promoted)."""
    if maps is None:
        return None
    maps = as_tensor(maps, "coil_maps", fn)
    d = len(image_size)
    if maps.dim() not in (d + 1, d + 2) or tuple(maps.shape[-d:]) != tuple(image_size):
        axes = _AXES.get(d, "...")
        raise ValueError(f"{fn}: coil_maps must have shape [Coils, {axes}] or [B, Coils, "
                         f"{axes}] with ({axes}) = {tuple(image_size)}, got {tuple(maps.shape)}")
    if not maps.is_complex():
        if not maps.is_floating_point():
            raise ValueError(f"{fn}: coil_maps must be complex, got {maps.dtype}")
        maps = maps.to(torch.promote_types(maps.dtype, torch.complex64))
    if not _tracing() and maps.numel() and not bool(torch.isfinite(maps).all()):
        raise ValueError(f"{fn}: coil_maps has non-finite entries")
    return maps


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
    if device is not None:
        _no_meta_mix(fn, "angles", value.device, torch.device(device))
    value = value.to(device=device if device is not None else value.device,
                     dtype=torch.float64)
    if (not _tracing() and value.device.type != "meta"
            and not bool(torch.isfinite(value).all())):
        raise ValueError(f"{fn}: angles must be finite")
    return value


def ktraj(value, fn: str, device=None, dims=(2, 3)) -> torch.Tensor:
    """A real floating [M, d] trajectory (M >= 0; d in ``dims``: 2 for (ky, kx), 3 for
    (kz, ky, kx)) of finite radians in [-pi, pi]; moved to ``device`` when given."""
    dims = (dims,) if is_int(dims) else tuple(dims)
    shapes = " or ".join(f"[M, {d}]" for d in dims)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: ktraj must be a torch.Tensor of shape {shapes}, got "
                        f"{type(value).__name__}")
    if value.dim() != 2 or value.shape[1] not in dims:
        raise ValueError(f"{fn}: ktraj must have shape {shapes}, got {tuple(value.shape)}")
    if value.is_complex() or not value.is_floating_point():
        raise ValueError(f"{fn}: ktraj must be real floating point (radians), got {value.dtype}")
    if device is not None:
        _no_meta_mix(fn, "ktraj", value.device, torch.device(device))
    if not _tracing() and value.numel() and value.device.type != "meta":
        k = value.detach()
        if not bool(torch.isfinite(k).all()):
            raise ValueError(f"{fn}: ktraj has non-finite entries (NaN or inf)")
        kmax = k.abs().max().item()
        if kmax > NUFFT_MAX_ABS_K:
            raise ValueError(f"{fn}: ktraj must be radians in [-pi, pi]; got max |k| = "
                             f"{kmax:.6g} (a trajectory in cycles, [-0.5, 0.5], needs a "
                             "factor 2 pi)")
    if device is not None and value.device != torch.device(device):
        value = value.to(device)
    return value


def nufft_accuracy(tol, oversamp, fn: str) -> tuple[float, float | None]:
    """(tol, oversamp) as floats: tol in (0, 0.1], oversamp a finite number > 1 or None
    (None stays None: the kernel choice picks it from tol and the data's precision)."""
    if not is_real(tol):
        raise TypeError(f"{fn}: tol must be a real number, got {tol!r}")
    if not 0 < tol <= 0.1:
        raise ValueError(f"{fn}: tol must be a number in (0, 0.1], got {tol!r}")
    if oversamp is None:
        return float(tol), None
    if not is_real(oversamp):
        raise TypeError(f"{fn}: oversamp must be a real number or None, got {oversamp!r}")
    if not (math.isfinite(oversamp) and oversamp > 1):
        raise ValueError(f"{fn}: oversamp must be a finite number > 1 (2.0 or 1.25 are "
                         f"usual) or None, got {oversamp!r}")
    return float(tol), float(oversamp)


def _no_meta_mix(fn: str, name: str, have: torch.device, want: torch.device) -> None:
    """A tensor on ``meta`` (shape only, no data) cannot join data on another device (nor
    the reverse): it cannot be copied, and a kernel would read or return garbage."""
    if (have.type == "meta") != (want.type == "meta"):
        raise ValueError(f"{fn}: {name} is on {have} but the data is on {want}; put every "
                         f"tensor argument on one device")


def same_device(fn: str, **tensors) -> torch.device:
    """The one device of the tensor arguments ``tensors`` (name=tensor; None values are
    skipped); ValueError naming the first argument that lives elsewhere than the first.

    Example: ``same_device("radon_forward", x=x, angles=angles)``.
    """
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(f"{fn}: {name} is on {t.device} but {first[0]} is on {first[1]}; "
                             f"put every tensor argument on one device")
    return first[1] if first is not None else torch.device("cpu")



def projector_call(fn: str, data_name: str, data, angles, values: bool, geometry,
                   min_dim: int, check_geometry) -> None:
    """The raw-call checks the projector ops share (Radon and cone beam: their
    ``_check_raw``), before anything is allocated or launched: one device for data and
    angles; with ``geometry`` (a kernel call's), a real floating ``data`` of at least
    ``min_dim`` dims, non-empty 1-D real angles and the op's own checks,
    ``check_geometry(geometry)``; with ``values``, finite angles (skipped on ``meta`` and
    while compiling). TypeError / ValueError naming the argument."""
    same_device(fn, **{data_name: data, "angles": angles})
    if geometry is not None:
        real_tensor(data, data_name, fn, min_dim=min_dim)
        if angles.is_complex() or angles.dtype == torch.bool:
            raise ValueError(f"{fn}: angles must be real, got {angles.dtype}")
        if angles.dim() != 1 or angles.numel() == 0:
            raise ValueError(f"{fn}: angles must be a non-empty 1-D tensor, got shape "
                             f"{tuple(angles.shape)}")
        check_geometry(geometry)
    if (values and angles.device.type != "meta" and not torch.compiler.is_compiling()
            and not bool(torch.isfinite(angles).all())):
        raise ValueError(f"{fn}: angles must be finite")

def tensor_like(t, name: str, fn: str, shape=None, dtype: torch.dtype | None = None,
                device=None, what: str = "") -> torch.Tensor:
    """``t`` as a tensor of exactly ``shape`` / ``dtype`` / ``device`` (each when given):
    TypeError when it is not a tensor or has another dtype, ValueError for another shape or
    device. ``what`` says where the expectation comes from (e.g. "the reconstruction's").
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    whose = f" ({what})" if what else ""
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}{whose}, got "
                         f"{tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{fn}: {name} must be {dtype}{whose}, got {t.dtype}")
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{fn}: {name} must be on {torch.device(device)}{whose}, got "
                         f"{t.device}")
    return t


def format_bytes(n: float) -> str:
    """``n`` bytes as "1.5 GiB" (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if abs(n) < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


@functools.lru_cache(maxsize=None)
def _host_memory() -> int | None:
    """Physical memory plus swap of this machine in bytes (None where unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("SwapTotal:"):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return total if total > 0 else None


def device_memory(device) -> int | None:
    """Total memory in bytes of ``device``: this machine's RAM plus swap for the CPU, the
    GPU's memory for CUDA; None where unknown or meaningless (meta)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _host_memory()
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    return None


def allocation(fn: str, name: str, shape, dtype: torch.dtype, device) -> int:
    """Bytes of a tensor ``shape`` of ``dtype`` about to be allocated on ``device``; a
    ValueError saying how much was asked when it exceeds ``MAX_BYTES`` or the device's
    memory (``device_memory``), so an impossible size never reaches the allocator.
    Tensors on ``meta`` (no data) and sizes while ``torch.compile`` traces pass.
    """
    device = torch.device(device)
    if device.type == "meta" or _tracing():
        return 0
    numel = math.prod(int(s) for s in shape)
    nbytes = numel * dtype.itemsize
    memory = device_memory(device)
    limit = MAX_BYTES if memory is None else min(MAX_BYTES, memory)
    if nbytes > limit:
        if memory is None or memory > MAX_BYTES:
            where = f"the {format_bytes(MAX_BYTES)} any tensor may take"
        else:
            owner = "this machine" if device.type == "cpu" else str(device)
            where = f"{owner}'s memory ({format_bytes(memory)})"
        shape_text = "x".join(str(int(s)) for s in shape)
        raise ValueError(f"{fn}: {name} would need {format_bytes(nbytes)} ({shape_text} "
                         f"{str(dtype).replace('torch.', '')}), more than {where}")
    return nbytes
