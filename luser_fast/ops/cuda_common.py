"""What the CUDA ops share: whether CUDA code can run, and launching a kernel through CuPy.

The CUDA kernels (``csrc/**/*.cu``) ship compiled in the package's fatbin (and as sources
that CuPy's NVRTC compiles for a device the fatbin lacks); ``luser_fast._ext`` loads them.
Launches run on torch's current stream of the tensors' device.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .. import _ext

__all__ = ["THREADS", "MAX_GRID_Y", "cuda_available", "launch", "ptr", "i32", "f64"]

#: threads per block of every launch
THREADS = 256
#: largest grid y (and z) dimension
MAX_GRID_Y = 65535


def cuda_available() -> bool:
    """CuPy is installed, a CUDA device is present and CUDA code (fatbin or sources) ships."""
    if importlib.util.find_spec("cupy") is None or not torch.cuda.is_available():
        return False
    return os.path.exists(_ext.FATBIN) or os.path.exists(os.path.join(_ext.CUDA_SRC_DIR, "all.cu"))


def launch(name: str, device: torch.device, grid, args, shared_mem: int = 0) -> None:
    """Launch kernel ``name`` on ``device`` with ``THREADS`` threads per block, on torch's
    current stream (tests replace this function to record launches without a GPU)."""
    import cupy

    kernel = _ext.cuda_kernel(name, device.index)
    stream = torch.cuda.current_stream(device).cuda_stream
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream):
        kernel(tuple(int(g) for g in grid), (THREADS,), args, shared_mem=shared_mem)


def ptr(t: torch.Tensor):
    """A tensor's device pointer as a kernel argument."""
    import numpy as np

    return np.uint64(t.data_ptr())


def i32(v):
    """An ``int`` kernel argument."""
    import numpy as np

    return np.int32(v)


def f64(v):
    """A ``double`` kernel argument."""
    import numpy as np

    return np.float64(v)
