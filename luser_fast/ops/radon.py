"""Radon transform ops: ``torch.ops.luser_fast.radon_forward`` / ``radon_adjoint``.

Everything that makes the Radon transform fast, in one place:

- the op schemas (defined in C++ by ``csrc/radon/radon.cpp`` when the extension is built,
  else here, with the pure-PyTorch reference as the CPU kernel);
- the CPU kernels (C++, multithreaded, ``csrc/radon/radon.cpp``);
- the CUDA kernels (``csrc/radon/radon.cu``, compiled into the shipped fatbin or by NVRTC)
  and their launchers below, running on torch's current stream through CuPy;
- ``register_fake`` (shapes for torch.compile / meta tensors) and ``register_autograd``:
  the forward's backward is the adjoint and the adjoint's backward is the forward, both
  exact transposes (Joseph weights, ``luser_fast/reference/radon.py`` conventions);
- the public functionals ``radon_forward`` / ``radon_adjoint``, which validate their
  arguments in Python (every rejection is a ``TypeError``/``ValueError`` naming the
  argument) and dispatch through ``luser_fast.backends``.

Geometry: ``source_distance=None`` is parallel beam; otherwise flat-detector fan beam
with ``detector_distance`` (default 0). Sinograms are ``[..., A, D]``, images ``[..., H, W]``.
"""
from __future__ import annotations

import importlib.util
import math
import os

import torch

from .. import _ext, backends
from ..reference import radon as _ref

__all__ = ["radon_forward", "radon_adjoint"]

#: op schemas (without the name); the C++ extension defines the same ones
SCHEMAS = {
    "radon_forward": "(Tensor x, Tensor angles, int n_detectors, float det_spacing, "
                     "float? source_distance, float? detector_distance) -> Tensor",
    "radon_adjoint": "(Tensor sino, Tensor angles, int height, int width, float det_spacing, "
                     "float? source_distance, float? detector_distance) -> Tensor",
}
#: dtypes the compiled kernels take; others are computed in float32 and cast back
KERNEL_DTYPES = (torch.float32, torch.float64)
_THREADS = 256           # CUDA threads per block
_IMAGES_PER_THREAD = 4   # kImagesPerThread in radon.cu
_MAX_GRID_Y = 65535
_RAY_BYTES = 40          # sizeof(JosephRay) in joseph.h


def _op_defined(name: str) -> bool:
    try:
        getattr(torch.ops.luser_fast, name)
    except (AttributeError, RuntimeError):
        return False
    return True


_EXT = _ext.extension()
#: the C++ CPU kernels are registered (the extension is built and holds the Radon ops)
HAS_CPU_KERNELS = _EXT is not None and _op_defined("radon_forward")

if not HAS_CPU_KERNELS:
    # No extension: define the ops here, served on the CPU by the reference.
    _LIB = torch.library.Library("luser_fast", "FRAGMENT")
    for _name, _schema in SCHEMAS.items():
        if not _op_defined(_name):
            _LIB.define(_name + _schema)

    def _forward_reference(x, angles, n_detectors, det_spacing, source_distance,
                           detector_distance):
        return _ref.radon_forward_ref(x, angles, n_detectors, det_spacing, source_distance,
                                      detector_distance)

    def _adjoint_reference(sino, angles, height, width, det_spacing, source_distance,
                           detector_distance):
        return _ref.radon_adjoint_ref(sino, angles, (height, width), sino.shape[-1],
                                      det_spacing, source_distance, detector_distance)

    _LIB.impl("radon_forward", _forward_reference, "CPU")
    _LIB.impl("radon_adjoint", _adjoint_reference, "CPU")


# --- CUDA -------------------------------------------------------------------------------

def cuda_available() -> bool:
    """CuPy is installed, a CUDA device is present and CUDA code (fatbin or sources) ships."""
    if importlib.util.find_spec("cupy") is None or not torch.cuda.is_available():
        return False
    return os.path.exists(_ext.FATBIN) or os.path.exists(os.path.join(_ext.CUDA_SRC_DIR, "all.cu"))


def _launch(name: str, device: torch.device, grid, args) -> None:
    """Launch kernel ``name`` on ``device`` on torch's current stream."""
    import cupy

    kernel = _ext.cuda_kernel(name, device.index)
    stream = torch.cuda.current_stream(device).cuda_stream
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream):
        kernel(tuple(int(g) for g in grid), (_THREADS,), args)


def _ptr(t: torch.Tensor):
    import numpy as np

    return np.uint64(t.data_ptr())


def _i32(v):
    import numpy as np

    return np.int32(v)


def _f64(v):
    import numpy as np

    return np.float64(v)


def _ray_table(angles: torch.Tensor, height: int, width: int, n_det: int, spacing: float,
               src, det) -> torch.Tensor:
    """JosephRay table [A * D * 40 bytes] on the angles' device. The rays' lines come from
    the reference's own torch code on that device, so the x-/y-major choice agrees with it."""
    if src is not None and det is None:
        det = 0.0
    origin, direction = _ref._rays(angles, n_det, spacing, src, det)
    lines = torch.cat((origin, direction), -1).contiguous()
    n_rays = lines.shape[0]
    table = torch.empty(n_rays * _RAY_BYTES, dtype=torch.uint8, device=angles.device)
    _launch("radon_rays_kernel", angles.device, (math.ceil(n_rays / _THREADS), 1),
            (_ptr(lines), _i32(n_rays), _i32(height), _i32(width), _ptr(table)))
    return table


def _check_cuda_sizes(n_rays: int, hw: int) -> None:
    if n_rays >= 2 ** 31 or hw >= 2 ** 31:
        raise ValueError(f"radon: too large for the CUDA kernels ({n_rays} rays, {hw} pixels)")


def _forward_cuda(x, angles, n_detectors, det_spacing, source_distance, detector_distance):
    if x.dtype not in KERNEL_DTYPES or not cuda_available():
        return _ref.radon_forward_ref(x, angles, n_detectors, det_spacing, source_distance,
                                      detector_distance)
    h, w = x.shape[-2:]
    angles = angles.to(device=x.device, dtype=torch.float64).contiguous()
    n_ang = angles.numel()
    out = x.new_empty((*x.shape[:-2], n_ang, n_detectors))
    n_images = x.numel() // (h * w) if h * w else 0
    if n_images == 0 or out.numel() == 0:
        return out
    n_rays = n_ang * n_detectors
    _check_cuda_sizes(n_rays, h * w)
    img = x.contiguous()
    img_t = img.transpose(-1, -2).contiguous()
    rays = _ray_table(angles, h, w, n_detectors, det_spacing, source_distance,
                      detector_distance)
    name = "radon_fwd_kernel_" + ("f32" if x.dtype == torch.float32 else "f64")
    grid = (math.ceil(n_rays / _THREADS),
            min(_MAX_GRID_Y, math.ceil(n_images / _IMAGES_PER_THREAD)))
    _launch(name, x.device, grid, (_ptr(img), _ptr(img_t), _ptr(rays), _i32(n_images),
                                   _i32(n_rays), _i32(h), _i32(w), _ptr(out)))
    return out


def _adjoint_cuda(sino, angles, height, width, det_spacing, source_distance,
                  detector_distance):
    if sino.dtype not in KERNEL_DTYPES or not cuda_available():
        return _ref.radon_adjoint_ref(sino, angles, (height, width), sino.shape[-1],
                                      det_spacing, source_distance, detector_distance)
    angles = angles.to(device=sino.device, dtype=torch.float64).contiguous()
    n_ang, n_det = sino.shape[-2:]
    out = sino.new_empty((*sino.shape[:-2], height, width))
    hw = height * width
    n_images = sino.numel() // (n_ang * n_det) if n_ang * n_det else 0
    if n_images == 0 or out.numel() == 0:
        return out
    _check_cuda_sizes(n_ang * n_det, hw)
    s = sino.contiguous()
    rays = _ray_table(angles, height, width, n_det, det_spacing, source_distance,
                      detector_distance)
    trig = torch.stack((torch.cos(angles), torch.sin(angles)), -1).contiguous()
    fan = source_distance is not None
    name = ("radon_adj_fan_kernel_" if fan else "radon_adj_kernel_") + (
        "f32" if sino.dtype == torch.float32 else "f64")
    grid = (math.ceil(hw / _THREADS), min(_MAX_GRID_Y, math.ceil(n_images / _IMAGES_PER_THREAD)))
    _launch(name, sino.device, grid, (
        _ptr(s), _ptr(rays), _ptr(trig), _i32(n_images), _i32(n_ang), _i32(n_det),
        _f64(det_spacing), _f64(source_distance if fan else 0.0),
        _f64(detector_distance if fan and detector_distance is not None else 0.0),
        _i32(height), _i32(width), _ptr(out)))
    return out


torch.library.register_kernel("luser_fast::radon_forward", "cuda", _forward_cuda)
torch.library.register_kernel("luser_fast::radon_adjoint", "cuda", _adjoint_cuda)


# --- shapes and gradients -----------------------------------------------------------------

@torch.library.register_fake("luser_fast::radon_forward")
def _forward_fake(x, angles, n_detectors, det_spacing, source_distance, detector_distance):
    torch._check(x.dim() >= 2, lambda: "radon_forward: x must have at least 2 dims")
    torch._check(angles.dim() == 1, lambda: "radon_forward: angles must be 1-D")
    return x.new_empty((*x.shape[:-2], angles.shape[0], n_detectors))


@torch.library.register_fake("luser_fast::radon_adjoint")
def _adjoint_fake(sino, angles, height, width, det_spacing, source_distance,
                  detector_distance):
    torch._check(sino.dim() >= 2, lambda: "radon_adjoint: sino must have at least 2 dims")
    torch._check(angles.dim() == 1, lambda: "radon_adjoint: angles must be 1-D")
    return sino.new_empty((*sino.shape[:-2], height, width))


def _forward_setup(ctx, inputs, output):
    x, angles, _, det_spacing, source_distance, detector_distance = inputs
    ctx.save_for_backward(angles)
    ctx.geometry = (x.shape[-2], x.shape[-1], det_spacing, source_distance, detector_distance)


def _forward_backward(ctx, grad):
    (angles,) = ctx.saved_tensors
    h, w, spacing, src, det = ctx.geometry
    grad_x = torch.ops.luser_fast.radon_adjoint(grad, angles, h, w, spacing, src, det)
    return grad_x, None, None, None, None, None


def _adjoint_setup(ctx, inputs, output):
    sino, angles, _, _, det_spacing, source_distance, detector_distance = inputs
    ctx.save_for_backward(angles)
    ctx.geometry = (sino.shape[-1], det_spacing, source_distance, detector_distance)


def _adjoint_backward(ctx, grad):
    (angles,) = ctx.saved_tensors
    n_det, spacing, src, det = ctx.geometry
    grad_sino = torch.ops.luser_fast.radon_forward(grad, angles, n_det, spacing, src, det)
    return grad_sino, None, None, None, None, None, None


torch.library.register_autograd("luser_fast::radon_forward", _forward_backward,
                                setup_context=_forward_setup)
torch.library.register_autograd("luser_fast::radon_adjoint", _adjoint_backward,
                                setup_context=_adjoint_setup)

backends.register("radon_forward", "cpu", ("cpu",), lambda: HAS_CPU_KERNELS)
backends.register("radon_adjoint", "cpu", ("cpu",), lambda: HAS_CPU_KERNELS)
backends.register("radon_forward", "cuda", ("cuda",), cuda_available)
backends.register("radon_adjoint", "cuda", ("cuda",), cuda_available)


# --- public functionals ---------------------------------------------------------------------

def _angles(angles: torch.Tensor, device: torch.device, fn: str) -> torch.Tensor:
    """Validated float64 angles on ``device`` (the finiteness check needs the data, so it is
    skipped while torch.compile traces; the kernels treat non-finite rays as empty)."""
    if not isinstance(angles, torch.Tensor):
        raise TypeError(f"{fn}: angles must be a 1-D torch.Tensor of radians, got "
                        f"{type(angles).__name__}")
    if angles.is_complex() or angles.dtype == torch.bool:
        raise ValueError(f"{fn}: angles must be real, got {angles.dtype}")
    if angles.dim() != 1 or angles.numel() == 0:
        raise ValueError(f"{fn}: angles must be a non-empty 1-D tensor, got shape "
                         f"{tuple(angles.shape)}")
    angles = angles.to(device=device, dtype=torch.float64)
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(angles).all()):
        raise ValueError(f"{fn}: angles must be finite")
    return angles


def _serving_backend(op: str, t: torch.Tensor) -> str:
    if torch.compiler.is_compiling():
        return "compiled"
    return backends.select(op, t.device.type)


def radon_forward(x: torch.Tensor, angles: torch.Tensor, n_detectors: int | None = None,
                  det_spacing: float = 1.0, source_distance: float | None = None,
                  detector_distance: float | None = None) -> torch.Tensor:
    """Radon transform (Joseph line integrals), parallel or flat-detector fan beam.

    Same arguments and result as ``luser_fast.reference.radon_forward_ref``, computed by
    the backend ``luser_fast.backends.select("radon_forward", device)`` picks (the C++ CPU
    kernel, the CUDA kernel or the reference). float16/bfloat16 are computed in float32.

    Args:
        x: [..., H, W] real floating image.
        angles: [A] radians (any real dtype; used in float64).
        n_detectors: D; None gives ``ceil(sqrt(2) * max(H, W))``.
        det_spacing: detector spacing (on the detector), > 0.
        source_distance: source to rotation centre (fan beam); None: parallel beam.
        detector_distance: rotation centre to the flat detector (fan only, default 0).

    Returns:
        [..., A, D] sinogram in the dtype of ``x``; differentiable in ``x``.

    Example:
        >>> radon_forward(torch.ones(1, 1, 8, 8), torch.tensor([0.0]), 9)[0, 0, 0, 4]
        tensor(8.)
    """
    fn = "radon_forward"
    _ref._check_real_tensor(x, "x", fn)
    angles = _angles(angles, x.device, fn)
    h, w = x.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"{fn}: x must have a non-empty image (H, W), got shape "
                         f"{tuple(x.shape)}")
    n_det, spacing, src, det = _ref._check_geometry((h, w), n_detectors, det_spacing,
                                                    source_distance, detector_distance, fn)
    if _serving_backend(fn, x) == "reference":
        return _ref.radon_forward_ref(x, angles, n_det, spacing, src, det)
    xk = x if x.dtype in KERNEL_DTYPES else x.float()
    out = torch.ops.luser_fast.radon_forward(xk, angles, n_det, spacing, src, det)
    return out.to(x.dtype)


def radon_adjoint(sino: torch.Tensor, angles: torch.Tensor, image_size,
                  n_detectors: int | None = None, det_spacing: float = 1.0,
                  source_distance: float | None = None,
                  detector_distance: float | None = None) -> torch.Tensor:
    """Exact transpose of ``radon_forward`` (unfiltered back-projection).

    Args:
        sino: [..., A, D] real floating sinogram.
        angles: [A] radians.
        image_size: int or (H, W).
        n_detectors: D, checked against ``sino``; None takes it from ``sino``.
        det_spacing, source_distance, detector_distance: as in ``radon_forward``.

    Returns:
        [..., H, W] image in the dtype of ``sino``; differentiable in ``sino``.
    """
    fn = "radon_adjoint"
    _ref._check_real_tensor(sino, "sino", fn)
    h, w = _ref._image_size(image_size, fn)
    angles = _angles(angles, sino.device, fn)
    if n_detectors is None:
        n_detectors = sino.shape[-1]
    n_det, spacing, src, det = _ref._check_geometry((h, w), n_detectors, det_spacing,
                                                    source_distance, detector_distance, fn)
    if tuple(sino.shape[-2:]) != (angles.numel(), n_det):
        raise ValueError(f"{fn}: sino must end in (A, D) = ({angles.numel()}, {n_det}), "
                         f"got shape {tuple(sino.shape)}")
    if _serving_backend(fn, sino) == "reference":
        return _ref.radon_adjoint_ref(sino, angles, (h, w), n_det, spacing, src, det)
    sk = sino if sino.dtype in KERNEL_DTYPES else sino.float()
    out = torch.ops.luser_fast.radon_adjoint(sk, angles, h, w, spacing, src, det)
    return out.to(sino.dtype)
