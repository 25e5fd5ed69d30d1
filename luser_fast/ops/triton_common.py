"""What the Triton ops share: the optional import, the supported Triton range, where
kernels may run, output allocation, and every launch (device guard, grid limits, batch
chunks, 32/64-bit offsets).

Triton is optional (the ``triton`` extra): without it ``HAS_TRITON`` is False and the ops'
references serve. Under ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernels
run on CPU tensors in Triton's interpreter, which is how they are tested without a GPU.

Launch rules (``launch``, ``batch_chunks``, ``check_grid``, ``needs_int64``), plain Python
so that they are unit-tested on the host with sizes no test could allocate:

* every launch runs under ``torch.cuda.device(<the tensors' device>)`` (``device_guard``):
  Triton launches on the *current* device, so a tensor on another GPU would fault;
* grid axes 1 and 2 hold at most 65535 programs (CUDA's limit), axis 0 2**31 - 1: the
  kernels put the batch on axis 1 or 2 and the launchers split it into chunks of at most
  ``BATCH_CHUNK`` samples (slices of contiguous batch-major tensors, so 16-byte alignment
  is kept for any per-sample size of at least 2 bytes);
* offsets: the kernels form per-program base offsets (sample, history slot, channel block,
  tile start) as 64-bit scalars, always; the per-element offsets within a tile stay
  32-bit unless the tile spans 2**31 elements or more (``needs_int64``), where the
  launcher picks the kernel's 64-bit variant.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings

import torch

__all__ = ["HAS_TRITON", "triton", "tl", "INTERPRETED", "SUPPORTED_TRITON", "TRITON_RANGE",
           "version_supported", "devices", "alloc", "device_guard", "MAX_GRID",
           "BATCH_CHUNK", "INT32_MAX", "check_grid", "batch_chunks", "needs_int64", "launch"]

#: The Triton versions the kernels are written and tested for, as a pip specifier (the one
#: place it is stated: setup.py's ``triton`` extra reads this line, so it stays a plain
#: string literal; tests/test_triton_compile.py checks the installed version against it).
#: Exercised here: 3.7.1 (interpreter and cubin compiles for sm_80/sm_90), the Triton of
#: torch 2.13. The kernels use masked loads/stores, ``tl.dot(input_precision=)``,
#: ``tl.math.erf``, ``tl.sigmoid``, ``tl.range(flatten=)`` and typed scalar arguments; no
#: ``tl.make_block_ptr`` (gone in 3.9).
SUPPORTED_TRITON = ">=3.6,<3.8"
#: the same range as ((low major, minor), (high major, minor)): low <= version < high
TRITON_RANGE = tuple(tuple(int(x) for x in v.split("."))
                     for v in re.findall(r"[<>]=?(\d+\.\d+)", SUPPORTED_TRITON))

try:                                    # optional: the references serve without Triton
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:                     # pragma: no cover - exercised without the extra
    triton = tl = None
    HAS_TRITON = False

#: the kernels were built for the Triton interpreter (TRITON_INTERPRET=1 at import)
INTERPRETED = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") == "1"

#: CUDA grid limits per axis (x, y, z)
MAX_GRID = (2 ** 31 - 1, 65535, 65535)
#: most samples per launch (a power of two <= 65535, so chunk slices stay aligned)
BATCH_CHUNK = 32768
INT32_MAX = 2 ** 31 - 1


def version_supported(version: str | None = None) -> bool:
    """True when ``version`` (default: the installed Triton's) is in ``SUPPORTED_TRITON``."""
    if version is None:
        if not HAS_TRITON:
            return False
        version = triton.__version__
    parts = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    low, high = TRITON_RANGE
    return low <= parts < high


if HAS_TRITON and not version_supported():   # pragma: no cover - depends on the install
    warnings.warn(f"luser_fast: Triton {triton.__version__} is outside the supported range "
                  f"{SUPPORTED_TRITON}; the Triton kernels may fail to compile (set "
                  "LUSER_FAST_BACKEND=reference to use the references)", RuntimeWarning,
                  stacklevel=2)


def devices() -> tuple:
    """Device types the Triton kernels serve: CUDA, and CPU under the interpreter."""
    return ("cuda", "cpu") if INTERPRETED else ("cuda",)


def alloc(shape, dtype, device) -> torch.Tensor:
    """Output allocation of every Triton launcher (tests replace it to NaN-fill outputs,
    so an element a kernel fails to write shows up)."""
    return torch.empty(shape, dtype=dtype, device=device)


def device_guard(device):
    """Context manager making ``device`` (a torch.device, or a tensor's) the current CUDA
    device for a launch; a no-op for other devices (CPU tensors under the interpreter)."""
    device = getattr(device, "device", device)
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def check_grid(grid) -> tuple:
    """``grid`` as a 3-tuple, checked against ``MAX_GRID`` (an axis may be 0: nothing to
    launch).

    Raises:
        ValueError: an axis with more programs than CUDA allows (a launcher bug: launchers
            chunk the batch so that this never happens).
    """
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    for axis, (g, cap) in enumerate(zip(grid, MAX_GRID)):
        if not 0 <= g <= cap:
            raise ValueError(f"grid axis {axis} has {g} programs; CUDA allows 1..{cap}")
    return grid


def batch_chunks(b: int, chunk: int | None = None):
    """[(start, stop)] covering range(b) in chunks of at most ``chunk`` (default
    ``BATCH_CHUNK``, read at call time) samples; [] for an empty batch."""
    chunk = BATCH_CHUNK if chunk is None else int(chunk)
    if not 1 <= chunk <= MAX_GRID[1]:
        raise ValueError(f"batch chunk must be in 1..{MAX_GRID[1]}, got {chunk}")
    return [(lo, min(lo + chunk, b)) for lo in range(0, b, chunk)]


def needs_int64(*largest: int) -> bool:
    """Whether an offset as large as any of ``largest`` (the largest value a kernel forms
    in 32-bit arithmetic, masked-off lanes included, e.g. BLOCK_C * H * W + W) overflows
    int32."""
    return any(int(v) > INT32_MAX for v in largest)


def launch(kernel, grid, device, *args, **meta) -> None:
    """``kernel[grid](*args, **meta)`` on ``device``'s CUDA device, the grid checked; nothing
    when the grid is empty."""
    grid = check_grid(grid)
    if 0 in grid:
        return
    with device_guard(device):
        kernel[grid](*args, **meta)
