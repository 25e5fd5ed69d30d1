"""Cone-beam CT ops: ``torch.ops.luser_fast.conebeam_forward`` / ``conebeam_adjoint``.

The 3-D projector family, in the shape of the Radon ops (``ops/radon.py``):

- the op schemas (defined here, once, through ``ops/library.py``);
- the CPU kernels: the C++ ones (private ops ``_conebeam_forward`` /
  ``_conebeam_adjoint`` of the extension, ``csrc/conebeam/conebeam.cpp``) when the
  extension has them, else the reference (``luser_fast/reference/conebeam.py``), saying so
  once (``backends.fallback``);
- the CUDA kernels' launchers (one delimited block below);
- ``register_fake`` (shapes for torch.compile / meta tensors) and ``register_autograd``:
  the forward's backward is the adjoint and the adjoint's backward is the forward, both
  exact transposes (the 3-D Joseph weights of ``luser_fast/core/conebeam_geometry.py``);
- the public functionals ``conebeam_forward`` / ``conebeam_adjoint``, which validate their
  arguments (``TypeError`` / ``ValueError`` naming the argument) and dispatch through
  ``luser_fast.backends``.

Called directly (``torch.ops.luser_fast.conebeam_forward(...)``, bypassing the public
functions) every kernel first runs ``_check_raw``: one device for data and angles, finite
1-D angles, a valid geometry, sizes below 2^24, and for the adjoint projections ending in
(A, rows, cols).

Geometry: ``source_distance=None`` is parallel beam (a stack of 2-D parallel Radon
transforms); otherwise a cone beam from a point source on a circular orbit onto a flat
detector at ``detector_distance`` (default 0) beyond the rotation axis. Volumes are
``[..., D, H, W]``, projections ``[..., A, rows, cols]``.
"""
from __future__ import annotations

import torch

from .. import backends
from ..core import conebeam_geometry as geo
from ..core import validate
from ..reference.conebeam import conebeam_adjoint_ref, conebeam_forward_ref
from . import library
from .cuda_common import cuda_available

__all__ = ["conebeam_forward", "conebeam_adjoint"]

#: op schemas (without the name)
SCHEMAS = {
    "conebeam_forward": "(Tensor x, Tensor angles, int rows, int cols, float spacing_r, "
                        "float spacing_c, float? source_distance, float? detector_distance) "
                        "-> Tensor",
    "conebeam_adjoint": "(Tensor proj, Tensor angles, int depth, int height, int width, "
                        "float spacing_r, float spacing_c, float? source_distance, "
                        "float? detector_distance) -> Tensor",
}
#: dtypes the compiled kernels take; others are computed in float32 and cast back
KERNEL_DTYPES = (torch.float32, torch.float64)

#: the C++ CPU kernels are registered (the extension is built and holds the cone-beam ops)
HAS_CPU_KERNELS = library.extension_has("_conebeam_forward")
library.define(SCHEMAS)
#: volume sides, detector rows / columns and angle counts stay below this (the kernels'
#: int indices)
MAX_COUNT = 2 ** 24


def _check_raw(fn: str, data_name: str, data: torch.Tensor, angles: torch.Tensor,
               values: bool = True, geometry: tuple | None = None) -> None:
    """What the ops' kernels check when called directly (bypassing the public functions),
    before anything is allocated or launched: ``TypeError`` / ``ValueError`` naming the
    argument.

    Always: one device for data and angles (a ``meta`` argument beside real data would
    otherwise give uninitialised memory); with ``values``, finite angles. With
    ``geometry`` = ((D, H, W), (rows, cols), (sr, sc), source_distance,
    detector_distance): a real floating ``data`` of at least 3 dims, non-empty 1-D real
    angles, positive sizes below 2^24, the geometry of
    ``core.conebeam_geometry.check_geometry``, and for the adjoint projections ending in
    (A, rows, cols).
    """
    def check_geometry(geometry):
        size, shape, spacing, src, det = geometry
        names = ("depth", "height", "width", "rows", "cols")
        for name, value in zip(names, (*size, *shape)):
            if not validate.is_int(value) or value < 1:
                raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}")
            if value >= MAX_COUNT:
                raise ValueError(f"{fn}: {name} must be below {MAX_COUNT}, got {value}")
        if angles.numel() >= MAX_COUNT:
            raise ValueError(f"{fn}: the number of angles must be below {MAX_COUNT}, got "
                             f"{angles.numel()}")
        geo.check_geometry(size, shape, spacing, src, det, fn)
        want = (angles.numel(), *shape)
        if data_name == "proj" and tuple(data.shape[-3:]) != want:
            raise ValueError(f"{fn}: proj must end in (A, rows, cols) = {want}, got shape "
                             f"{tuple(data.shape)}")

    validate.projector_call(fn, data_name, data, angles, values, geometry, 3,
                            check_geometry)


def _forward_geometry(x, rows, cols, spacing_r, spacing_c, source_distance,
                      detector_distance):
    size = tuple(x.shape[-3:]) if isinstance(x, torch.Tensor) and x.dim() >= 3 else (0, 0, 0)
    return size, (rows, cols), (spacing_r, spacing_c), source_distance, detector_distance


def _adjoint_geometry(proj, depth, height, width, spacing_r, spacing_c, source_distance,
                      detector_distance):
    shape = tuple(proj.shape[-2:]) if isinstance(proj, torch.Tensor) and proj.dim() >= 3 \
        else (0, 0)
    return ((depth, height, width), shape, (spacing_r, spacing_c), source_distance,
            detector_distance)


def _reference_forward(x, angles, rows, cols, spacing_r, spacing_c, source_distance,
                       detector_distance):
    return conebeam_forward_ref(x, angles, rows, cols, (spacing_r, spacing_c),
                                source_distance, detector_distance)


def _reference_adjoint(proj, angles, depth, height, width, spacing_r, spacing_c,
                       source_distance, detector_distance):
    return conebeam_adjoint_ref(proj, angles, (depth, height, width), (spacing_r, spacing_c),
                                source_distance, detector_distance)


# --- CPU: the C++ kernels (private ops of the extension), else the reference -------------

def _forward_cpu(x, angles, rows, cols, spacing_r, spacing_c, source_distance,
                 detector_distance):
    args = (rows, cols, spacing_r, spacing_c, source_distance, detector_distance)
    _check_raw("conebeam_forward", "x", x, angles, geometry=_forward_geometry(x, *args))
    if HAS_CPU_KERNELS:
        return torch.ops.luser_fast._conebeam_forward(x, angles, *args)
    backends.fallback("conebeam_forward", "the C++ extension has no cone-beam kernels")
    return _reference_forward(x, angles, *args)


def _adjoint_cpu(proj, angles, depth, height, width, spacing_r, spacing_c, source_distance,
                 detector_distance):
    args = (depth, height, width, spacing_r, spacing_c, source_distance, detector_distance)
    _check_raw("conebeam_adjoint", "proj", proj, angles,
               geometry=_adjoint_geometry(proj, *args))
    if HAS_CPU_KERNELS:
        return torch.ops.luser_fast._conebeam_adjoint(proj, angles, *args)
    backends.fallback("conebeam_adjoint", "the C++ extension has no cone-beam kernels")
    return _reference_adjoint(proj, angles, *args)


library.LIB.impl("conebeam_forward", _forward_cpu, "CPU")
library.LIB.impl("conebeam_adjoint", _adjoint_cpu, "CPU")


# --- CUDA ---
# The CUDA launchers: ``_forward_cuda`` / ``_adjoint_cuda`` take the op's arguments,
# validate them (``_check_raw`` with the geometry: what the C++ CPU kernel checks), size
# the launch with the pure functions below (so nothing is allocated or launched for a call
# the CPU kernel would refuse or the kernels cannot index) and launch the kernels of
# ``csrc/conebeam/conebeam.cu`` through ``cuda_common.launch`` on the data's device and
# torch's current stream. One thread per ray (computed on the fly from its angle's cos /
# sin and its detector pixel: no ray table), groups of CONE_IMAGES_PER_THREAD volumes on
# the grid's y axis (capped; the kernels stride over them). The adjoint scatters with
# atomics into a zeroed volume: each contribution is the CPU twin's
# (``_conebeam_adjoint_scatter``) to the bit, their order is not (the bound is stated in
# conebeam.cu). float16 / bfloat16 data, or no usable CUDA (no CuPy, no device, no code),
# run the reference on the data's device instead, saying so once (``backends.fallback``).
# Registered for the "cuda" dispatch key after this block.

import math  # noqa: E402

from ..constants import CONE_IMAGES_PER_THREAD  # noqa: E402
from . import cuda_common  # noqa: E402
from .cuda_common import f64, i32, i64, ptr  # noqa: E402


def _launch_grid(fn: str, n_rays: int, n_images: int) -> tuple[int, int]:
    """Launch grid of either kernel: one thread per ray on x, volume groups of
    CONE_IMAGES_PER_THREAD on y (capped at 65535; the kernels stride over them). Rays are
    int indices in the kernels: ValueError from 2^31 rays (A * rows * cols)."""
    cuda_common.check_sizes(fn, rays=n_rays)
    return cuda_common.grid(n_rays, math.ceil(n_images / CONE_IMAGES_PER_THREAD))


def _cuda_unserved(t: torch.Tensor) -> str:
    if t.dtype not in KERNEL_DTYPES:
        return f"the CUDA kernels take {KERNEL_DTYPES}, got {t.dtype}"
    return cuda_common.cuda_unavailable_reason() or "the CUDA kernels are unavailable"


def _kernel_args(data, angles, n_images, rows, cols, size, spacing_r, spacing_c,
                 source_distance, detector_distance, out) -> tuple:
    """(trig, args): the kernels' common argument list (conebeam.cu, LF_CONE_KERNEL) as
    ``args``: data, trig [A, 2] (torch's cos / sin of the float64 angles on the data's
    device, as the reference takes them), the volume count, A, rows, cols, D, H, W, the
    spacings, the source and detector distances (0 for parallel beam), then the output;
    and the trig tensor itself, which the caller keeps until the launch is queued."""
    angles = angles.to(device=data.device, dtype=torch.float64).contiguous()
    trig = torch.stack((torch.cos(angles), torch.sin(angles)), -1).contiguous()
    cone = source_distance is not None
    src = float(source_distance) if cone else 0.0
    det = float(detector_distance) if cone and detector_distance is not None else 0.0
    d, h, w = size
    return trig, (ptr(data), ptr(trig), i64(n_images), i32(angles.numel()), i32(rows),
                  i32(cols), i32(d), i32(h), i32(w), f64(spacing_r), f64(spacing_c),
                  f64(src), f64(det), ptr(out))


def _suffix(t: torch.Tensor) -> str:
    return "f32" if t.dtype == torch.float32 else "f64"


def _forward_cuda(x, angles, rows, cols, spacing_r, spacing_c, source_distance,
                  detector_distance):
    args = (rows, cols, spacing_r, spacing_c, source_distance, detector_distance)
    _check_raw("conebeam_forward", "x", x, angles, geometry=_forward_geometry(x, *args))
    if x.dtype not in KERNEL_DTYPES or not cuda_available():
        backends.fallback("conebeam_forward", _cuda_unserved(x))
        return _reference_forward(x, angles, *args)
    size = tuple(int(s) for s in x.shape[-3:])
    n_ang = angles.numel()
    n_images = x.numel() // math.prod(size)
    grid = _launch_grid("conebeam_forward", n_ang * rows * cols, n_images)
    out = x.new_empty((*x.shape[:-3], n_ang, rows, cols))
    if n_images == 0:
        return out
    vol = x.contiguous()
    trig, kargs = _kernel_args(vol, angles, n_images, rows, cols, size, spacing_r,
                               spacing_c, source_distance, detector_distance, out)
    cuda_common.launch("conebeam_fwd_kernel_" + _suffix(x), x.device, grid, kargs)
    del trig  # held until the launch is queued
    return out


def _adjoint_cuda(proj, angles, depth, height, width, spacing_r, spacing_c,
                  source_distance, detector_distance):
    args = (depth, height, width, spacing_r, spacing_c, source_distance, detector_distance)
    _check_raw("conebeam_adjoint", "proj", proj, angles,
               geometry=_adjoint_geometry(proj, *args))
    if proj.dtype not in KERNEL_DTYPES or not cuda_available():
        backends.fallback("conebeam_adjoint", _cuda_unserved(proj))
        return _reference_adjoint(proj, angles, *args)
    n_ang, rows, cols = (int(s) for s in proj.shape[-3:])
    n_images = proj.numel() // (n_ang * rows * cols)
    grid = _launch_grid("conebeam_adjoint", n_ang * rows * cols, n_images)
    out = proj.new_zeros((*proj.shape[:-3], depth, height, width))  # atomics add into it
    if n_images == 0:
        return out
    p = proj.contiguous()
    trig, kargs = _kernel_args(p, angles, n_images, rows, cols, (depth, height, width),
                               spacing_r, spacing_c, source_distance, detector_distance, out)
    cuda_common.launch("conebeam_adj_kernel_" + _suffix(proj), proj.device, grid, kargs)
    del trig  # held until the launch is queued
    return out

# --- end CUDA ---


torch.library.register_kernel("luser_fast::conebeam_forward", "cuda", _forward_cuda)
torch.library.register_kernel("luser_fast::conebeam_adjoint", "cuda", _adjoint_cuda)


# --- shapes and gradients -----------------------------------------------------------------

@torch.library.register_fake("luser_fast::conebeam_forward")
def _forward_fake(x, angles, rows, cols, spacing_r, spacing_c, source_distance,
                  detector_distance):
    _check_raw("conebeam_forward", "x", x, angles, values=False)
    torch._check(x.dim() >= 3, lambda: "conebeam_forward: x must have at least 3 dims")
    torch._check(angles.dim() == 1, lambda: "conebeam_forward: angles must be 1-D")
    return x.new_empty((*x.shape[:-3], angles.shape[0], rows, cols))


@torch.library.register_fake("luser_fast::conebeam_adjoint")
def _adjoint_fake(proj, angles, depth, height, width, spacing_r, spacing_c, source_distance,
                  detector_distance):
    _check_raw("conebeam_adjoint", "proj", proj, angles, values=False)
    torch._check(proj.dim() >= 3, lambda: "conebeam_adjoint: proj must have at least 3 dims")
    torch._check(angles.dim() == 1, lambda: "conebeam_adjoint: angles must be 1-D")
    return proj.new_empty((*proj.shape[:-3], depth, height, width))


def _forward_setup(ctx, inputs, output):
    x, angles, _, _, spacing_r, spacing_c, source_distance, detector_distance = inputs
    ctx.save_for_backward(angles)
    ctx.geometry = (*x.shape[-3:], spacing_r, spacing_c, source_distance, detector_distance)


def _forward_backward(ctx, grad):
    (angles,) = ctx.saved_tensors
    grad_x = torch.ops.luser_fast.conebeam_adjoint(grad, angles, *ctx.geometry)
    return grad_x, None, None, None, None, None, None, None


def _adjoint_setup(ctx, inputs, output):
    proj, angles, _, _, _, spacing_r, spacing_c, source_distance, detector_distance = inputs
    ctx.save_for_backward(angles)
    ctx.geometry = (*proj.shape[-2:], spacing_r, spacing_c, source_distance,
                    detector_distance)


def _adjoint_backward(ctx, grad):
    (angles,) = ctx.saved_tensors
    grad_proj = torch.ops.luser_fast.conebeam_forward(grad, angles, *ctx.geometry)
    return grad_proj, None, None, None, None, None, None, None, None


library.register_family({"conebeam_forward": (_forward_backward, _forward_setup),
                         "conebeam_adjoint": (_adjoint_backward, _adjoint_setup)},
                        cpu=lambda: HAS_CPU_KERNELS, cuda=cuda_available)


# --- public functionals ---------------------------------------------------------------------

def _kernel_input(t: torch.Tensor) -> torch.Tensor:
    """t in a dtype the kernels take (float16/bfloat16 are computed in float32)."""
    return t if t.dtype in KERNEL_DTYPES else t.float()


def conebeam_forward(x: torch.Tensor, angles: torch.Tensor, detector_shape,
                     det_spacing=(1.0, 1.0), source_distance: float | None = None,
                     detector_distance: float | None = None, *,
                     backend: str | None = None) -> torch.Tensor:
    """Cone-beam (or parallel-beam) CT projections: 3-D Joseph line integrals.

    Conventions in ``luser_fast/core/conebeam_geometry.py``; same result as
    ``luser_fast.reference.conebeam_forward_ref``, computed by the backend
    ``luser_fast.backends.select("conebeam_forward", device, backend)`` picks.
    float16/bfloat16 are computed in float32.

    Args:
        x: [..., D, H, W] real floating volume.
        angles: [A] finite radians on x's device (any real dtype; used in float64).
        detector_shape: (rows, cols) (an int: square).
        det_spacing: (row, column) detector spacing, > 0 (a number: both).
        source_distance: R, source to rotation axis, above the volume's in-plane
            half-diagonal (cone beam); None: parallel beam.
        detector_distance: rotation axis to the flat detector (cone only, default 0).
        backend: request a backend for this call (``luser_fast.backends``); None: the
            environment's preference.

    Returns:
        [..., A, rows, cols] projections in the dtype of ``x``; differentiable in ``x``
        (the gradient is ``conebeam_adjoint``).

    Example:
        >>> conebeam_forward(torch.ones(1, 4, 8, 8), torch.tensor([0.0]), (5, 9))[0, 0, 2, 4]
        tensor(8.)
    """
    fn = "conebeam_forward"
    angles, (rows, cols), (sr, sc), src, det = geo.forward_args(
        x, angles, detector_shape, det_spacing, source_distance, detector_distance, fn)
    xin = _kernel_input(x)
    if backends.select(fn, x.device.type, backend) == "reference":
        out = conebeam_forward_ref(xin, angles, rows, cols, (sr, sc), src, det)
    else:
        out = torch.ops.luser_fast.conebeam_forward(xin, angles, rows, cols, sr, sc, src, det)
    return out.to(x.dtype)


def conebeam_adjoint(proj: torch.Tensor, angles: torch.Tensor, volume_size,
                     det_spacing=(1.0, 1.0), source_distance: float | None = None,
                     detector_distance: float | None = None, *,
                     backend: str | None = None) -> torch.Tensor:
    """Exact transpose of ``conebeam_forward`` (unfiltered back-projection).

    Args:
        proj: [..., A, rows, cols] real floating projections.
        angles: [A] finite radians on proj's device.
        volume_size: int or (D, H, W).
        det_spacing, source_distance, detector_distance, backend: as in
            ``conebeam_forward``.

    Returns:
        [..., D, H, W] in the dtype of ``proj``; differentiable in ``proj`` (the gradient
        is ``conebeam_forward``).
    """
    fn = "conebeam_adjoint"
    angles, (d, h, w), _, (sr, sc), src, det = geo.adjoint_args(
        proj, angles, volume_size, det_spacing, source_distance, detector_distance, fn)
    pin = _kernel_input(proj)
    if backends.select(fn, proj.device.type, backend) == "reference":
        out = conebeam_adjoint_ref(pin, angles, (d, h, w), (sr, sc), src, det)
    else:
        out = torch.ops.luser_fast.conebeam_adjoint(pin, angles, d, h, w, sr, sc, src, det)
    return out.to(proj.dtype)
