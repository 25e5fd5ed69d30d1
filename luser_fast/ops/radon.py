"""Radon transform ops: ``torch.ops.luser_fast.radon_forward`` / ``radon_adjoint``.

Everything that makes the Radon transform fast, in one place:

- the op schemas (defined here, once, through ``ops/library.py``);
- the CPU kernels: the C++ ones (multithreaded, ``csrc/radon/radon.cpp``, private ops
  ``_radon_forward`` / ``_radon_adjoint`` of the extension), else the reference;
- the CUDA kernels (``csrc/radon/radon.cu``, compiled into the shipped fatbin or by NVRTC)
  and their launchers below, running on torch's current stream through CuPy;
- ``register_fake`` (shapes for torch.compile / meta tensors) and ``register_autograd``:
  the forward's backward is the adjoint and the adjoint's backward is the forward, both
  exact transposes (Joseph weights, ``luser_fast/reference/radon.py`` conventions);
- the public functionals ``radon_forward`` / ``radon_adjoint``, which validate their
  arguments in Python (every rejection is a ``TypeError``/``ValueError`` naming the
  argument) and dispatch through ``luser_fast.backends``.

Called directly (``torch.ops.luser_fast.radon_forward(...)``, bypassing the public
functions) the ops still refuse tensors on different devices (a ``meta`` argument beside
CPU data would otherwise give uninitialised memory): the fake (meta) and CUDA kernels and
the reference fallback raise ``ValueError`` naming the argument, the C++ CPU kernel a
``RuntimeError``. Non-finite angles: the Python kernels (CUDA, reference fallback) raise
``ValueError`` for the forward and the adjoint alike; the C++ CPU kernel gives NaN rows in
the forward and drops those rays in the adjoint (``csrc/radon/radon.cpp`` does not check
them yet), so pass finite angles, as the public functions require.

Geometry: ``source_distance=None`` is parallel beam; otherwise flat-detector fan beam
with ``detector_distance`` (default 0). Sinograms are ``[..., A, D]``, images ``[..., H, W]``.
"""
from __future__ import annotations

import math

import torch

from .. import backends
from ..constants import RADON_IMAGES_PER_THREAD, RADON_RAY_BYTES
from ..core import radon_geometry as geo
from ..core import validate
from ..reference.radon import radon_adjoint_ref, radon_forward_ref
from . import cuda_common, library
from .cuda_common import cuda_available, f64, i32, i64, ptr

__all__ = ["radon_forward", "radon_adjoint"]

#: op schemas (without the name)
SCHEMAS = {
    "radon_forward": "(Tensor x, Tensor angles, int n_detectors, float det_spacing, "
                     "float? source_distance, float? detector_distance) -> Tensor",
    "radon_adjoint": "(Tensor sino, Tensor angles, int height, int width, float det_spacing, "
                     "float? source_distance, float? detector_distance) -> Tensor",
}
#: dtypes the compiled kernels take; others are computed in float32 and cast back
KERNEL_DTYPES = (torch.float32, torch.float64)

#: the C++ CPU kernels are registered (the extension is built and holds the Radon ops)
HAS_CPU_KERNELS = library.extension_has("_radon_forward")
library.define(SCHEMAS)
#: image sides, detector and angle counts stay below this (the kernels' int indices;
#: csrc/radon/radon.cpp checks the same)
MAX_COUNT = 2 ** 24


def _check_raw(fn: str, data_name: str, data: torch.Tensor, angles: torch.Tensor,
               values: bool = True, geometry: tuple | None = None) -> None:
    """What the ops' kernels check when called directly (``torch.ops.luser_fast``,
    bypassing the public functions): the one validation of a raw call, run by every
    Python kernel (CUDA, and the reference fallback of the CPU kernel) before anything is
    allocated or launched, with the C++ CPU kernel's checks (``csrc/radon/radon.cpp``)
    as ``TypeError``/``ValueError`` naming the argument.

    Always: one device for data and angles (a ``meta`` argument beside real data would
    otherwise give uninitialised memory); with ``values``, finite angles, so forward and
    adjoint both refuse a NaN angle instead of the forward giving NaN rows and the adjoint
    dropping them. With ``geometry`` = ((H, W), D, det_spacing, source_distance,
    detector_distance), a kernel call's: a real floating ``data`` of at least 2 dims,
    non-empty 1-D real angles, H, W, D and A in [1, 2^24), the geometry of
    ``core.radon_geometry.check_geometry`` (spacing, fan distances), and for the adjoint a
    sinogram ending in (A, D): a sinogram with more angle rows than angles would
    otherwise be read against a ray table that is too short.
    """
    def check_geometry(geometry):
        (h, w), n_det, spacing, src, det = geometry
        what = "x must have a non-empty image (H, W)" if data_name == "x" else \
            "image size (height, width) must be positive"
        if not (validate.is_int(h) and validate.is_int(w)) or h < 1 or w < 1:
            raise ValueError(f"{fn}: {what}, got {(h, w)}")
        geo.check_geometry((h, w), n_det, spacing, src, det, fn)
        n_ang = angles.numel()
        if data_name == "sino" and tuple(data.shape[-2:]) != (n_ang, n_det):
            raise ValueError(f"{fn}: sino must end in (A, D) with A = {n_ang} angles and "
                             f"D >= 1 detectors, got shape {tuple(data.shape)}")
        for name, value in (("height", h), ("width", w), ("n_detectors", n_det),
                            ("the number of angles", n_ang)):
            if value >= MAX_COUNT:
                raise ValueError(f"{fn}: {name} must be below {MAX_COUNT}, got {value}")

    validate.projector_call(fn, data_name, data, angles, values, geometry, 2,
                            check_geometry)


def _forward_geometry(x, n_detectors, det_spacing, source_distance, detector_distance):
    shape = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) and x.dim() >= 2 else (0, 0)
    return shape, n_detectors, det_spacing, source_distance, detector_distance


def _adjoint_geometry(sino, height, width, det_spacing, source_distance, detector_distance):
    n_det = sino.shape[-1] if isinstance(sino, torch.Tensor) and sino.dim() >= 1 else 0
    return (height, width), n_det, det_spacing, source_distance, detector_distance


# --- CPU: the C++ kernels (private ops of the extension), else the reference -------------

def _forward_cpu(x, angles, n_detectors, det_spacing, source_distance, detector_distance):
    if HAS_CPU_KERNELS:
        return torch.ops.luser_fast._radon_forward(x, angles, n_detectors, det_spacing,
                                                   source_distance, detector_distance)
    _check_raw("radon_forward", "x", x, angles, geometry=_forward_geometry(
        x, n_detectors, det_spacing, source_distance, detector_distance))
    backends.fallback("radon_forward", "the C++ extension is not built")
    return radon_forward_ref(x, angles, n_detectors, det_spacing, source_distance,
                             detector_distance)


def _adjoint_cpu(sino, angles, height, width, det_spacing, source_distance,
                 detector_distance):
    if HAS_CPU_KERNELS:
        return torch.ops.luser_fast._radon_adjoint(sino, angles, height, width, det_spacing,
                                                   source_distance, detector_distance)
    _check_raw("radon_adjoint", "sino", sino, angles, geometry=_adjoint_geometry(
        sino, height, width, det_spacing, source_distance, detector_distance))
    backends.fallback("radon_adjoint", "the C++ extension is not built")
    return radon_adjoint_ref(sino, angles, (height, width), sino.shape[-1], det_spacing,
                             source_distance, detector_distance)


library.LIB.impl("radon_forward", _forward_cpu, "CPU")
library.LIB.impl("radon_adjoint", _adjoint_cpu, "CPU")


# --- CUDA -------------------------------------------------------------------------------
#
# Every launcher validates its call first (_check_raw with the geometry: what the C++ CPU
# kernel checks), then sizes its launch with the pure functions below, so nothing is
# allocated or launched for a call the CPU kernel would refuse or the kernels cannot index.

def _forward_grid(n_rays: int, n_images: int) -> tuple[int, int]:
    """Forward launch grid: one thread per ray on x, image groups of
    RADON_IMAGES_PER_THREAD on y (capped; the kernel strides over them). Rays are int
    indices in the kernels (and the ray table has A * D entries): ValueError from 2^31."""
    cuda_common.check_sizes("radon_forward", rays=n_rays)
    return cuda_common.grid(n_rays, math.ceil(n_images / RADON_IMAGES_PER_THREAD))


def _adjoint_grid(n_pixels: int, n_rays: int, n_images: int) -> tuple[int, int]:
    """Adjoint launch grid: one thread per pixel on x (64-bit pixel indices: H * W may
    pass 2^31), image groups on y as in ``_forward_grid``."""
    cuda_common.check_sizes("radon_adjoint", rays=n_rays)
    return cuda_common.grid(n_pixels, math.ceil(n_images / RADON_IMAGES_PER_THREAD))


def _ray_table(angles: torch.Tensor, height: int, width: int, n_det: int, spacing: float,
               src, det) -> torch.Tensor:
    """JosephRay table [A * D * 40 bytes] on the angles' device. The rays' lines come from
    the reference's own torch code on that device, so the x-/y-major choice agrees with it."""
    if src is not None and det is None:
        det = 0.0
    origin, direction = geo.rays(angles, n_det, spacing, src, det)
    lines = torch.cat((origin, direction), -1).contiguous()
    n_rays = lines.shape[0]
    table = torch.empty(n_rays * RADON_RAY_BYTES, dtype=torch.uint8, device=angles.device)
    cuda_common.launch("radon_rays_kernel", angles.device, cuda_common.grid(n_rays),
                       (ptr(lines), i32(n_rays), i32(height), i32(width), ptr(table)))
    return table


def _cuda_unserved(t: torch.Tensor) -> str:
    if t.dtype not in KERNEL_DTYPES:
        return f"the CUDA kernels take {KERNEL_DTYPES}, got {t.dtype}"
    return cuda_common.cuda_unavailable_reason() or "the CUDA kernels are unavailable"


def _forward_cuda(x, angles, n_detectors, det_spacing, source_distance, detector_distance):
    _check_raw("radon_forward", "x", x, angles, geometry=_forward_geometry(
        x, n_detectors, det_spacing, source_distance, detector_distance))
    if x.dtype not in KERNEL_DTYPES or not cuda_available():
        backends.fallback("radon_forward", _cuda_unserved(x))
        return radon_forward_ref(x, angles, n_detectors, det_spacing, source_distance,
                                 detector_distance)
    h, w = x.shape[-2:]
    n_ang = angles.numel()
    n_images = x.numel() // (h * w)
    n_rays = n_ang * n_detectors
    grid = _forward_grid(n_rays, n_images)
    out = x.new_empty((*x.shape[:-2], n_ang, n_detectors))
    if n_images == 0:
        return out
    angles = angles.to(device=x.device, dtype=torch.float64).contiguous()
    img = x.contiguous()
    img_t = img.transpose(-1, -2).contiguous()
    rays = _ray_table(angles, h, w, n_detectors, det_spacing, source_distance,
                      detector_distance)
    name = "radon_fwd_kernel_" + ("f32" if x.dtype == torch.float32 else "f64")
    cuda_common.launch(name, x.device, grid, (ptr(img), ptr(img_t), ptr(rays), i64(n_images),
                                              i32(n_rays), i32(h), i32(w), ptr(out)))
    return out


def _adjoint_cuda(sino, angles, height, width, det_spacing, source_distance,
                  detector_distance):
    _check_raw("radon_adjoint", "sino", sino, angles, geometry=_adjoint_geometry(
        sino, height, width, det_spacing, source_distance, detector_distance))
    if sino.dtype not in KERNEL_DTYPES or not cuda_available():
        backends.fallback("radon_adjoint", _cuda_unserved(sino))
        return radon_adjoint_ref(sino, angles, (height, width), sino.shape[-1],
                                 det_spacing, source_distance, detector_distance)
    n_ang, n_det = sino.shape[-2:]
    hw = height * width
    n_images = sino.numel() // (n_ang * n_det)
    grid = _adjoint_grid(hw, n_ang * n_det, n_images)
    out = sino.new_empty((*sino.shape[:-2], height, width))
    if n_images == 0:
        return out
    angles = angles.to(device=sino.device, dtype=torch.float64).contiguous()
    s = sino.contiguous()
    rays = _ray_table(angles, height, width, n_det, det_spacing, source_distance,
                      detector_distance)
    trig = torch.stack((torch.cos(angles), torch.sin(angles)), -1).contiguous()
    fan = source_distance is not None
    name = ("radon_adj_fan_kernel_" if fan else "radon_adj_kernel_") + (
        "f32" if sino.dtype == torch.float32 else "f64")
    cuda_common.launch(name, sino.device, grid, (
        ptr(s), ptr(rays), ptr(trig), i64(n_images), i32(n_ang), i32(n_det),
        f64(det_spacing), f64(source_distance if fan else 0.0),
        f64(detector_distance if fan and detector_distance is not None else 0.0),
        i32(height), i32(width), ptr(out)))
    return out


torch.library.register_kernel("luser_fast::radon_forward", "cuda", _forward_cuda)
torch.library.register_kernel("luser_fast::radon_adjoint", "cuda", _adjoint_cuda)


# --- shapes and gradients -----------------------------------------------------------------

@torch.library.register_fake("luser_fast::radon_forward")
def _forward_fake(x, angles, n_detectors, det_spacing, source_distance, detector_distance):
    _check_raw("radon_forward", "x", x, angles, values=False)
    torch._check(x.dim() >= 2, lambda: "radon_forward: x must have at least 2 dims")
    torch._check(angles.dim() == 1, lambda: "radon_forward: angles must be 1-D")
    return x.new_empty((*x.shape[:-2], angles.shape[0], n_detectors))


@torch.library.register_fake("luser_fast::radon_adjoint")
def _adjoint_fake(sino, angles, height, width, det_spacing, source_distance,
                  detector_distance):
    _check_raw("radon_adjoint", "sino", sino, angles, values=False)
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


library.register_family({"radon_forward": (_forward_backward, _forward_setup),
                         "radon_adjoint": (_adjoint_backward, _adjoint_setup)},
                        cpu=lambda: HAS_CPU_KERNELS, cuda=cuda_available)


# --- public functionals ---------------------------------------------------------------------

def _kernel_input(t: torch.Tensor) -> torch.Tensor:
    """t in a dtype the compiled kernels take (float16/bfloat16 are computed in float32)."""
    return t if t.dtype in KERNEL_DTYPES else t.float()


def radon_forward(x: torch.Tensor, angles: torch.Tensor, n_detectors: int | None = None,
                  det_spacing: float = 1.0, source_distance: float | None = None,
                  detector_distance: float | None = None, *,
                  backend: str | None = None) -> torch.Tensor:
    """Radon transform (Joseph line integrals), parallel or flat-detector fan beam.

    Same arguments and result as ``luser_fast.reference.radon_forward_ref``, computed by
    the backend ``luser_fast.backends.select("radon_forward", device, backend)`` picks (the
    C++ CPU kernel, the CUDA kernel or the reference). float16/bfloat16 are computed in
    float32.

    Args:
        x: [..., H, W] real floating image.
        angles: [A] finite radians on x's device (any real dtype; used in float64).
        n_detectors: D; None gives ``ceil(sqrt(2) * max(H, W))``.
        det_spacing: detector spacing (on the detector), > 0.
        source_distance: source to rotation centre (fan beam); None: parallel beam.
        detector_distance: rotation centre to the flat detector (fan only, default 0).
        backend: request a backend for this call (``luser_fast.backends``); None: the
            environment's preference.

    Returns:
        [..., A, D] sinogram in the dtype of ``x``; differentiable in ``x``.

    Example:
        >>> radon_forward(torch.ones(1, 1, 8, 8), torch.tensor([0.0]), 9)[0, 0, 0, 4]
        tensor(8.)
    """
    fn = "radon_forward"
    angles, n_det, spacing, src, det = geo.forward_args(
        x, angles, n_detectors, det_spacing, source_distance, detector_distance, fn)
    if backends.select(fn, x.device.type, backend) == "reference":
        return radon_forward_ref(x, angles, n_det, spacing, src, det)
    out = torch.ops.luser_fast.radon_forward(_kernel_input(x), angles, n_det, spacing,
                                             src, det)
    return out.to(x.dtype)


def radon_adjoint(sino: torch.Tensor, angles: torch.Tensor, image_size,
                  n_detectors: int | None = None, det_spacing: float = 1.0,
                  source_distance: float | None = None,
                  detector_distance: float | None = None, *,
                  backend: str | None = None) -> torch.Tensor:
    """Exact transpose of ``radon_forward`` (unfiltered back-projection).

    Args:
        sino: [..., A, D] real floating sinogram.
        angles: [A] finite radians on sino's device.
        image_size: int or (H, W).
        n_detectors: D, checked against ``sino``; None takes it from ``sino``.
        det_spacing, source_distance, detector_distance, backend: as in ``radon_forward``.

    Returns:
        [..., H, W] image in the dtype of ``sino``; differentiable in ``sino``.
    """
    fn = "radon_adjoint"
    angles, (h, w), n_det, spacing, src, det = geo.adjoint_args(
        sino, angles, image_size, n_detectors, det_spacing, source_distance,
        detector_distance, fn)
    if backends.select(fn, sino.device.type, backend) == "reference":
        return radon_adjoint_ref(sino, angles, (h, w), n_det, spacing, src, det)
    out = torch.ops.luser_fast.radon_adjoint(_kernel_input(sino), angles, h, w, spacing,
                                             src, det)
    return out.to(sino.dtype)
