"""What the CUDA ops share: whether CUDA code can run, launch geometry, size guards, and
launching a kernel through CuPy.

The CUDA kernels (``csrc/**/*.cu``) ship compiled in the package's fatbin (and as sources
that NVRTC compiles for a device the fatbin lacks, or when the fatbin was built from other
sources); ``luser_fast._ext`` loads them, once per device, and keeps each kernel object.
Launches run on torch's current stream of the tensors' device, with that device current
for CuPy, whichever device is current for the caller.

Launch geometry is computed here by small pure functions (``blocks``, ``grid``) and the
kernels' size limits are checked by ``check_sizes`` before anything is allocated or
launched, so both are unit-tested on the host with sizes no machine could allocate
(``tests/test_cuda_host.py``).
"""
from __future__ import annotations

import torch

from .. import _ext

__all__ = ["THREADS", "MAX_GRID_X", "MAX_GRID_Y", "INT32_MAX", "cuda_available",
           "cuda_unavailable_reason", "device_index", "blocks", "grid", "check_sizes",
           "launch", "ptr", "i32", "i64", "f64"]

#: threads per block of every launch
THREADS = 256
#: largest grid x dimension (2^31 - 1)
MAX_GRID_X = 2 ** 31 - 1
#: largest grid y (and z) dimension
MAX_GRID_Y = 65535
#: largest value of an ``int`` kernel argument
INT32_MAX = 2 ** 31 - 1

_device_state = {"checked": False, "reason": None}
_ext.RESET_HOOKS.append(lambda: _device_state.update(checked=False, reason=None))


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA kernels cannot run here (None: they can): CuPy missing or failing to
    import (the recorded reason, ``luser_fast._ext.cupy_module``), no CUDA device for torch
    or for CuPy, or no CUDA code shipped. CuPy's import and device count are tried once
    per process."""
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    cupy = _ext.cupy_module()
    if cupy is None:
        return _ext.cupy_reason()
    if not _device_state["checked"]:
        _device_state["checked"] = True
        try:
            count = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as exc:  # CUDARuntimeError: no driver, incompatible driver
            count, why = 0, f"{type(exc).__name__}: {exc}"
        else:
            why = "it reports 0 devices"
        if count < 1:
            _device_state["reason"] = f"CuPy {getattr(cupy, '__version__', '?')} sees no CUDA device ({why})"
    if _device_state["reason"] is not None:
        return _device_state["reason"]
    if not _ext.cuda_code_available():
        return "no CUDA code shipped (no fatbin and no CUDA sources in the package)"
    return None


def cuda_available() -> bool:
    """CuPy imports, torch and CuPy see a CUDA device, and CUDA code (fatbin or sources)
    ships (``cuda_unavailable_reason`` says why not)."""
    return cuda_unavailable_reason() is None


def device_index(device: torch.device) -> int:
    """The CUDA device index of ``device`` (``cuda`` without an index: the current one)."""
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


def blocks(n: int, threads: int = THREADS) -> int:
    """Blocks of ``threads`` covering ``n`` items (one thread each), at least 1."""
    return max(1, -(-int(n) // threads))


def grid(n_x: int, n_y: int = 1, threads: int = THREADS) -> tuple[int, int]:
    """Launch grid for ``n_x`` items on x (one thread each) and ``n_y`` items (images,
    planes, image groups) on y. y is capped at ``MAX_GRID_Y``: every kernel strides over
    its y items by ``gridDim.y``, so any count runs. Raises ValueError when x would need
    more than ``MAX_GRID_X`` blocks."""
    gx = blocks(n_x, threads)
    if gx > MAX_GRID_X:
        raise ValueError(f"{n_x} items need {gx} blocks of {threads} threads, more than "
                         f"the {MAX_GRID_X} a CUDA grid holds")
    return gx, max(1, min(MAX_GRID_Y, int(n_y)))


def check_sizes(fn: str, limit: int = INT32_MAX, **sizes: int) -> None:
    """ValueError naming the first of ``sizes`` (name=value) above ``limit`` (default: the
    largest ``int`` kernel argument), so that a size a kernel indexes with 32 bits never
    reaches it."""
    for name, value in sizes.items():
        if int(value) > limit:
            raise ValueError(f"{fn}: too large for the CUDA kernels: {name} = {int(value)} "
                             f"exceeds {limit}")


def launch(name: str, device: torch.device, grid, args, shared_mem: int = 0) -> None:
    """Launch kernel ``name`` on ``device`` (the tensors' device, current or not) with
    ``THREADS`` threads per block, on torch's current stream of that device (tests replace
    this function to record launches without a GPU)."""
    gx, gy = (int(g) for g in grid)
    if not (1 <= gx <= MAX_GRID_X and 1 <= gy <= MAX_GRID_Y):
        raise ValueError(f"{name}: launch grid {tuple(grid)} outside [1, {MAX_GRID_X}] x "
                         f"[1, {MAX_GRID_Y}]")
    index = device_index(device)
    kernel = _ext.cuda_kernel(name, index)
    cupy = _ext.cupy_module()
    stream = torch.cuda.current_stream(index).cuda_stream
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream):
        kernel((gx, gy), (THREADS,), tuple(args), shared_mem=shared_mem)


def ptr(t: torch.Tensor):
    """A tensor's device pointer as a kernel argument."""
    import numpy as np

    return np.uint64(t.data_ptr())


def _int_arg(v, bits: int, np_type):
    v = int(v)
    if not -(2 ** (bits - 1)) <= v < 2 ** (bits - 1):
        raise OverflowError(f"{v} does not fit a {bits}-bit kernel argument")
    return np_type(v)


def i32(v):
    """An ``int`` kernel argument (OverflowError outside its range, never a wrap)."""
    import numpy as np

    return _int_arg(v, 32, np.int32)


def i64(v):
    """A ``long long`` kernel argument."""
    import numpy as np

    return _int_arg(v, 64, np.int64)


def f64(v):
    """A ``double`` kernel argument."""
    import numpy as np

    return np.float64(v)
