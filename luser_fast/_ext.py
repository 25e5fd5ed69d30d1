"""Loads the compiled parts of luser_fast and says why when they are missing.

Import never raises: a missing or mismatched extension is recorded with its real cause,
logged once, and the pure-PyTorch reference serves. ``build_info()`` reports what exists
(``luser-fast info`` prints it).
"""
from __future__ import annotations

import importlib
import logging
import os

_log = logging.getLogger("luser_fast")
_HERE = os.path.dirname(os.path.abspath(__file__))
FATBIN = os.path.join(_HERE, "_cuda", "luser_fast.fatbin")

_state = {"loaded": False, "module": None, "reason": None}


def _load():
    if _state["loaded"]:
        return _state["module"]
    _state["loaded"] = True
    try:
        _state["module"] = importlib.import_module("luser_fast._C")
    except ImportError as exc:
        msg = str(exc)
        if "No module named" in msg:
            _state["reason"] = "the C++ extension was not built (no csrc/*.cpp sources, or LUSER_FAST_BUILD_EXT=0)"
        else:
            import torch

            _state["reason"] = f"the C++ extension failed to load ({msg}); torch here is {torch.__version__}"
            _log.warning("luser_fast: %s; the reference implementation serves", _state["reason"])
    return _state["module"]


def extension():
    """The loaded ``luser_fast._C`` module, or None."""
    return _load()


def build_info() -> dict:
    """What compiled code is available, and why not when it is missing."""
    mod = _load()
    return {
        "cpu_extension": mod is not None,
        "cpu_extension_reason": None if mod is not None else _state["reason"],
        "cuda_fatbin": FATBIN if os.path.exists(FATBIN) else None,
        "cuda_fatbin_reason": None if os.path.exists(FATBIN) else "no fatbin shipped (nvcc was absent at build time, or there are no CUDA sources yet)",
    }


CUDA_SRC_DIR = os.path.join(_HERE, "_cuda", "src")
_cuda_modules = {}


def cuda_kernel(name: str, device_index: int | None = None):
    """The CUDA kernel ``name`` (an ``extern "C" __global__`` function) as a CuPy RawKernel.

    Loaded from the shipped fatbin; when the fatbin is missing or lacks the device's
    architecture, CuPy's NVRTC compiles the shipped sources (``_cuda/src/all.cu``) instead.
    Launch it on torch's current stream, passing torch data pointers.

    Raises:
        RuntimeError: CuPy is not installed, or neither the fatbin nor the sources serve.
    """
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError("CUDA kernels need CuPy: pip install 'luser_fast[cuda]'") from exc
    dev = cupy.cuda.Device(device_index if device_index is not None else cupy.cuda.runtime.getDevice())
    key = dev.id
    if key not in _cuda_modules:
        errors = []
        with dev:
            if os.path.exists(FATBIN):
                try:
                    mod = cupy.RawModule(path=FATBIN)
                    mod.get_function(name)
                    _cuda_modules[key] = mod
                except Exception as exc:  # wrong arch in the fatbin: fall back to NVRTC
                    errors.append(f"fatbin: {exc}")
            src = os.path.join(CUDA_SRC_DIR, "all.cu")
            if key not in _cuda_modules and os.path.exists(src):
                with open(src) as fh:
                    code = fh.read()
                _cuda_modules[key] = cupy.RawModule(code=code, options=("-std=c++17", f"-I{CUDA_SRC_DIR}"))
        if key not in _cuda_modules:
            raise RuntimeError(f"no CUDA code for {name}: {'; '.join(errors) or 'no fatbin and no sources shipped'}")
    return _cuda_modules[key].get_function(name)
