"""Pure-PyTorch reference of the 2-D Radon transform: Joseph projector, exact adjoint, FBP.

The fast C++/CUDA kernels are tested against this module, so the conventions below are
binding for them (docs/API.md, "Radon conventions").

Image coordinates. Pixels have size 1. Pixel ``(i, j)`` (row ``i`` along H, column ``j``
along W) has its centre at ``x = j - (W - 1) / 2``, ``y = (H - 1) / 2 - i``: x grows along
W, y grows towards row 0 ("up" when row 0 is displayed on top). The rotation centre is the
image centre ``((H - 1) / 2, (W - 1) / 2)``.

Detectors. ``D`` detectors (default ``ceil(sqrt(2) * max(H, W))``); detector ``d`` sits at
offset ``u_d = (d - (D - 1) / 2) * det_spacing`` from the central ray.

Parallel beam. For an angle ``theta`` (radians) let ``n = (cos theta, sin theta)`` and
``e = (-sin theta, cos theta)``. Detector ``d`` measures the line ``{p : p . n = u_d}``,
traversed along ``e``. At ``theta = 0`` the rays run along H (columns are summed) and
``u_d = x``; at ``theta = pi / 2`` rows are summed and ``u_d = y``. This is scikit-image's
convention: ``radon_forward_ref(x, angles, D)`` matches
``skimage.transform.radon(x, theta=numpy.rad2deg(angles), circle=False).T`` up to
interpolation. scikit-image rotates about pixel index ``N // 2`` and puts its central
detector at index ``D // 2`` (we use ``(N - 1) / 2`` and ``(D - 1) / 2``), so the grids
coincide exactly for H = W odd with ``ceil(sqrt(2) * H)`` odd (e.g. 61, 101, 129) and are
half a pixel apart otherwise. ``int`` angle counts give ``theta_k = k * pi / A``. Angles
are used in float64: pass float64 tensors (float32 ``pi / 2`` is off by 4e-8 rad).

Fan beam, flat detector. The source sits at ``S = -R e`` (``R = source_distance``, i.e.
at polar angle ``theta - pi / 2``) and the detector on the line ``{Dd e + u n}``
(``Dd = detector_distance``, default 0: a virtual detector through the rotation centre,
so ``det_spacing`` is then measured at the isocentre). Detector ``d`` measures the line
through ``S`` and ``Dd e + u_d n``; it is the parallel ray of angle ``theta - gamma`` and
offset ``R sin(gamma)``, ``gamma = atan(u_d / (R + Dd))``, so the central ray matches the
parallel ray of the same angle and large ``R`` approaches parallel beam. The whole line is
integrated (``R`` must exceed the image half-diagonal, so the source is outside the
image). ``int`` angle counts give ``theta_k = 2 pi k / A``.

Discretisation (Joseph). A ray ``o + t v`` (``|v| = 1``) is x-major when ``|v_x| >= |v_y|``
(ties go to x), else y-major. An x-major ray visits every pixel column ``j``: at
``x = x_j`` it has ``y = o_y + (x_j - o_x) v_y / v_x``, fractional row ``f = (H-1)/2 - y``,
and takes ``(1 - frac(f)) img[floor(f), j] + frac(f) img[floor(f) + 1, j]`` (rows outside
the image count as zero); the sum over ``j`` is scaled by ``1 / |v_x|``, the path length per
column. y-major rays do the same with rows and columns swapped (``f = x + (W-1)/2``, scale
``1 / |v_y|``). Ray geometry and weights are computed in float64, then cast to the data
dtype. The adjoint scatters the very same (pixel, weight) pairs, so it is the exact
transpose.

FBP. Each projection is zero-padded to ``P = max(64, 2 ** ceil(log2(2 D)))`` and filtered
with the DFT of the spatial-domain band-limited ramp (Kak & Slaney eq. 61:
``h[0] = 1/4``, ``h[n odd] = -1 / (pi n)^2``, else 0), which follows ``|f|`` (cycles per
sample) without the DC offset and wrap-around error of sampling ``|f|`` on the padded
grid, times a window of ``f``: ramp 1,
shepp-logan ``sinc(f)``, cosine ``cos(pi f)``, hann ``cos(pi f)^2``. The filtered sinogram
is back-projected with the adjoint and scaled by ``pi / A``; the detector spacing cancels
(the ramp in physical units carries ``1 / det_spacing^2``, the convolution
``det_spacing``, and the Joseph adjoint ``1 / det_spacing``). ``pi / A`` is the angular
weight for angles uniform on ``[0, pi)``, and equally for ``[0, 2 pi)``, where every line
is seen twice at twice the spacing. Fan sinograms are first rebinned to parallel rays
(``A`` angles uniform on ``[0, 2 pi)``, ``D`` offsets spaced ``det_spacing * R / (R + Dd)``)
by bilinear interpolation in (angle, detector offset), periodic in the angle; this
assumes fan angles covering the full circle, and only the disk of radius
``R sin(atan(u_max / (R + Dd)))`` seen by every view is reconstructed faithfully.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from .operator import Operator

__all__ = ["Radon", "radon_forward_ref", "radon_adjoint_ref", "radon_fbp_ref"]

_GEOMETRIES = ("parallel", "fan")
_FILTERS = ("ramp", "shepp-logan", "cosine", "hann")
# Elements of one gathered (batch, ray, step, 2) block: bounds the projector's working
# memory to tens of MB for any batch size; larger blocks were no faster on CPU.
_BLOCK_ELEMS = 1 << 22


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _image_size(image_size, fn: str) -> tuple[int, int]:
    if _is_int(image_size):
        h = w = int(image_size)
    elif (isinstance(image_size, (tuple, list, torch.Size)) and len(image_size) == 2
          and all(_is_int(v) for v in image_size)):
        h, w = (int(v) for v in image_size)
    else:
        raise TypeError(f"{fn}: image_size must be an int or a pair of ints (H, W), "
                        f"got {image_size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"{fn}: image_size must be positive, got {image_size!r}")
    return h, w


def _check_real_tensor(t, name: str, fn: str, min_dim: int = 2) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or not t.is_floating_point():
        raise ValueError(f"{fn}: {name} must be a real floating-point tensor, got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{fn}: {name} must have at least {min_dim} dims, got shape "
                         f"{tuple(t.shape)}")


def _check_angles(angles, fn: str) -> torch.Tensor:
    """Validate a 1-D tensor of radians; return it as float64 (same device)."""
    if not isinstance(angles, torch.Tensor):
        raise TypeError(f"{fn}: angles must be a 1-D torch.Tensor of radians, got "
                        f"{type(angles).__name__}")
    if angles.is_complex() or angles.dtype == torch.bool:
        raise ValueError(f"{fn}: angles must be real, got {angles.dtype}")
    if angles.dim() != 1 or angles.numel() == 0:
        raise ValueError(f"{fn}: angles must be a non-empty 1-D tensor, got shape "
                         f"{tuple(angles.shape)}")
    angles = angles.to(torch.float64)
    if not bool(torch.isfinite(angles).all()):
        raise ValueError(f"{fn}: angles must be finite")
    return angles


def _check_geometry(image_size, n_detectors, det_spacing, source_distance,
                    detector_distance, fn: str):
    """Validate the geometry; return (D, det_spacing, R or None, Dd or None) as numbers."""
    h, w = image_size
    if n_detectors is None:
        n_detectors = math.ceil(math.sqrt(2.0) * max(h, w))
    elif not _is_int(n_detectors):
        raise TypeError(f"{fn}: n_detectors must be an int or None, got {n_detectors!r}")
    elif n_detectors < 1:
        raise ValueError(f"{fn}: n_detectors must be positive, got {n_detectors}")
    if not _is_real(det_spacing):
        raise TypeError(f"{fn}: det_spacing must be a real number, got {det_spacing!r}")
    if not (math.isfinite(det_spacing) and det_spacing > 0):
        raise ValueError(f"{fn}: det_spacing must be positive and finite, got {det_spacing}")
    if source_distance is None:
        if detector_distance is not None:
            raise ValueError(f"{fn}: detector_distance is a fan-beam parameter and needs "
                             "source_distance")
        return int(n_detectors), float(det_spacing), None, None
    if not _is_real(source_distance):
        raise TypeError(f"{fn}: source_distance must be a real number or None, got "
                        f"{source_distance!r}")
    half_diagonal = 0.5 * math.hypot(h, w)
    if not (math.isfinite(source_distance) and source_distance > half_diagonal):
        raise ValueError(f"{fn}: source_distance must exceed the image half-diagonal "
                         f"{half_diagonal:.4g}, got {source_distance}")
    if detector_distance is None:
        detector_distance = 0.0
    elif not _is_real(detector_distance):
        raise TypeError(f"{fn}: detector_distance must be a real number or None, got "
                        f"{detector_distance!r}")
    if not (math.isfinite(detector_distance) and detector_distance >= 0):
        raise ValueError(f"{fn}: detector_distance must be finite and >= 0, got "
                         f"{detector_distance}")
    return int(n_detectors), float(det_spacing), float(source_distance), float(detector_distance)


def _rays(angles: torch.Tensor, n_det: int, spacing: float, src: float | None,
          det: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Origin and unit direction of every ray.

    Args:
        angles: [A] float64 radians.
    Returns:
        origin, direction: [A * D, 2] float64 (x, y) coordinates, ray index ``a * D + d``.
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    n = torch.stack((cos, sin), -1)[:, None, :]
    e = torch.stack((-sin, cos), -1)[:, None, :]
    u = (torch.arange(n_det, dtype=torch.float64, device=angles.device)
         - (n_det - 1) / 2) * spacing
    u = u[None, :, None]
    shape = (angles.numel(), n_det, 2)
    if src is None:
        origin, direction = (u * n).expand(shape), e.expand(shape)
    else:
        origin = (-src * e).expand(shape)
        direction = (src + det) * e + u * n
        direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    return origin.reshape(-1, 2), direction.reshape(-1, 2)


def _joseph_weights(origin: torch.Tensor, direction: torch.Tensor, h: int, w: int,
                    k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Joseph (pixel, weight) pairs of major-axis steps ``k0 <= k < k1`` of every ray.

    The forward projector gathers with these pairs and the adjoint scatters with them, so
    the two are exact transposes. Step ``k`` is pixel column ``k`` (x-major rays) or row
    ``k`` (y-major); along the ray the fractional minor-axis index is affine in ``k``,
    ``f = f_0 + k * df`` with ``df = -v_minor / v_major`` for both orientations.

    Args:
        origin, direction: [R, 2] float64 rays from ``_rays``.
    Returns:
        pixel: [R, k1 - k0, 2] int64 flat index into the H * W image.
        weight: [R, k1 - k0, 2] float64; zero for neighbours outside the image and for
        steps past the ray's major-axis length.
    """
    x_major = direction[:, 0].abs() >= direction[:, 1].abs()
    v_maj = torch.where(x_major, direction[:, 0], direction[:, 1])
    v_min = torch.where(x_major, direction[:, 1], direction[:, 0])
    o_maj = torch.where(x_major, origin[:, 0], origin[:, 1])
    o_min = torch.where(x_major, origin[:, 1], origin[:, 0])
    slope = v_min / v_maj
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # x-major: column k is x = k - cx, the ray's y there gives row f = cy - y;
    # y-major: row k is y = cy - k, the ray's x there gives column f = x + cx
    f_first = torch.where(x_major, cy - o_min + (cx + o_maj) * slope,
                          o_min + cx + (cy - o_maj) * slope)
    k = torch.arange(k0, k1, device=origin.device)
    f = torch.addcmul(f_first[:, None], k.to(torch.float64)[None, :], -slope[:, None])
    f0 = torch.floor(f)
    step = (1.0 / v_maj.abs())[:, None]
    w1 = (f - f0) * step
    w0 = step - w1
    i0 = f0.to(torch.int64)
    n_min = torch.where(x_major, h, w)[:, None]
    ok0 = (i0 >= 0) & (i0 < n_min)
    ok1 = (i0 >= -1) & (i0 < n_min - 1)
    stride_min = torch.where(x_major, w, 1)[:, None, None]
    stride_maj = torch.where(x_major, 1, w)[:, None]
    if h != w:
        n_maj = torch.where(x_major, w, h)[:, None]
        in_ray = k < n_maj
        ok0, ok1 = ok0 & in_ray, ok1 & in_ray
        k = torch.minimum(k, n_maj - 1)
    weight = torch.stack((w0 * ok0, w1 * ok1), -1)
    idx = torch.minimum(torch.stack((i0, i0 + 1), -1).clamp_(min=0), n_min[..., None] - 1)
    pixel = idx * stride_min + (k * stride_maj)[..., None]
    return pixel, weight


def _block_steps(n_batch: int, n_rays: int, n_steps: int) -> int:
    return max(1, min(n_steps, _BLOCK_ELEMS // (2 * n_rays * max(1, n_batch))))


def _project(x2: torch.Tensor, origin, direction, h: int, w: int) -> torch.Tensor:
    """[N, H * W] images -> [N, R] line integrals."""
    n_batch, n_rays, n_steps = x2.shape[0], origin.shape[0], max(h, w)
    block = _block_steps(n_batch, n_rays, n_steps)
    out = x2.new_zeros(n_batch, n_rays)
    for k0 in range(0, n_steps, block):
        pixel, weight = _joseph_weights(origin, direction, h, w, k0, min(n_steps, k0 + block))
        vals = x2.index_select(1, pixel.reshape(-1)).view(n_batch, n_rays, -1)
        out = out + (vals * weight.to(x2.dtype).view(n_rays, -1)).sum(-1)
    return out


def _backproject(s2: torch.Tensor, origin, direction, h: int, w: int) -> torch.Tensor:
    """[N, R] ray values -> [N, H * W], the exact transpose of ``_project``."""
    n_batch, n_rays, n_steps = s2.shape[0], origin.shape[0], max(h, w)
    block = _block_steps(n_batch, n_rays, n_steps)
    out = s2.new_zeros(n_batch, h * w)
    for k0 in range(0, n_steps, block):
        pixel, weight = _joseph_weights(origin, direction, h, w, k0, min(n_steps, k0 + block))
        contrib = s2[:, :, None] * weight.to(s2.dtype).view(n_rays, -1)
        out = out.index_add(1, pixel.reshape(-1), contrib.reshape(n_batch, -1))
    return out


class _Project(torch.autograd.Function):
    """``_project`` with its transpose as the backward: a linear operator's gradient is its
    adjoint, so autograd keeps only the geometry (no gathered indices or values)."""

    @staticmethod
    def forward(ctx, x2, origin, direction, h, w):
        ctx.geometry = (origin, direction, h, w)
        return _project(x2, origin, direction, h, w)

    @staticmethod
    def backward(ctx, grad):
        return _Backproject.apply(grad, *ctx.geometry), None, None, None, None


class _Backproject(torch.autograd.Function):
    """``_backproject`` with ``_project`` as its backward (see ``_Project``)."""

    @staticmethod
    def forward(ctx, s2, origin, direction, h, w):
        ctx.geometry = (origin, direction, h, w)
        return _backproject(s2, origin, direction, h, w)

    @staticmethod
    def backward(ctx, grad):
        return _Project.apply(grad, *ctx.geometry), None, None, None, None


def radon_forward_ref(x: torch.Tensor, angles: torch.Tensor, n_detectors: int | None = None,
                      det_spacing: float = 1.0, source_distance: float | None = None,
                      detector_distance: float | None = None) -> torch.Tensor:
    """Radon transform (Joseph line integrals), parallel or flat-detector fan beam.

    Args:
        x: [..., H, W] real floating image.
        angles: [A] radians.
        n_detectors: D; None gives ``ceil(sqrt(2) * max(H, W))``.
        det_spacing: detector spacing (on the detector), > 0.
        source_distance: source to rotation centre; None means parallel beam.
        detector_distance: rotation centre to the flat detector (fan only, default 0).

    Returns:
        [..., A, D] sinogram in the dtype of ``x``; differentiable.

    Example:
        >>> radon_forward_ref(torch.ones(1, 1, 8, 8), torch.tensor([0.0]), 9)[0, 0, 0, 4]
        tensor(8.)
    """
    fn = "radon_forward_ref"
    _check_real_tensor(x, "x", fn)
    h, w = x.shape[-2:]
    angles = _check_angles(angles, fn).to(x.device)
    n_det, spacing, src, det = _check_geometry((h, w), n_detectors, det_spacing,
                                               source_distance, detector_distance, fn)
    origin, direction = _rays(angles, n_det, spacing, src, det)
    out = _Project.apply(x.reshape(-1, h * w), origin, direction, h, w)
    return out.reshape(*x.shape[:-2], angles.numel(), n_det)


def radon_adjoint_ref(sino: torch.Tensor, angles: torch.Tensor, image_size,
                      n_detectors: int | None = None, det_spacing: float = 1.0,
                      source_distance: float | None = None,
                      detector_distance: float | None = None) -> torch.Tensor:
    """Exact transpose of ``radon_forward_ref`` (unfiltered back-projection).

    Args:
        sino: [..., A, D] real floating sinogram.
        angles: [A] radians.
        image_size: int or (H, W).
        n_detectors: D, checked against ``sino``; None takes it from ``sino``.
        det_spacing, source_distance, detector_distance: as in ``radon_forward_ref``.

    Returns:
        [..., H, W] image in the dtype of ``sino``; differentiable.
    """
    fn = "radon_adjoint_ref"
    _check_real_tensor(sino, "sino", fn)
    h, w = _image_size(image_size, fn)
    angles = _check_angles(angles, fn).to(sino.device)
    if n_detectors is None:
        n_detectors = sino.shape[-1]
    n_det, spacing, src, det = _check_geometry((h, w), n_detectors, det_spacing,
                                               source_distance, detector_distance, fn)
    if tuple(sino.shape[-2:]) != (angles.numel(), n_det):
        raise ValueError(f"{fn}: sino must end in (A, D) = ({angles.numel()}, {n_det}), "
                         f"got shape {tuple(sino.shape)}")
    origin, direction = _rays(angles, n_det, spacing, src, det)
    out = _Backproject.apply(sino.reshape(-1, angles.numel() * n_det), origin, direction, h, w)
    return out.reshape(*sino.shape[:-2], h, w)


def _fbp_filter(n_det: int, filter: str, dtype: torch.dtype, device) -> tuple[torch.Tensor, int]:
    """Frequency response [P // 2 + 1] (rfft layout) of the apodised ramp, and P."""
    p = max(64, 2 ** math.ceil(math.log2(2 * n_det)))
    m = torch.arange(p, dtype=torch.float64)
    m = torch.minimum(m, p - m)  # circular distance to tap 0
    h = torch.where(m % 2 == 1, -1.0 / (math.pi * m) ** 2, torch.zeros_like(m))
    h[0] = 0.25
    response = torch.fft.rfft(h).real
    f = torch.fft.rfftfreq(p, dtype=torch.float64)
    if filter == "shepp-logan":
        response = response * torch.sinc(f)
    elif filter == "cosine":
        response = response * torch.cos(math.pi * f)
    elif filter == "hann":
        response = response * torch.cos(math.pi * f) ** 2
    return response.to(dtype=dtype, device=device), p


def _rebin_fan(sino: torch.Tensor, angles: torch.Tensor, n_det: int, spacing: float,
               src: float, det: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Bilinear rebinning of a full-circle fan sinogram to parallel rays.

    Args:
        sino: [N, A, D] fan sinogram.
        angles: [A] float64 fan angles (any order, covering [0, 2 pi)).
    Returns:
        [N, A, D] parallel sinogram, its [A] angles ``2 pi k / A`` and its detector spacing
        ``spacing * src / (src + det)``.
    """
    n_ang, dev = angles.numel(), sino.device
    two_pi = 2 * math.pi
    par_angles = torch.arange(n_ang, dtype=torch.float64, device=dev) * (two_pi / n_ang)
    par_spacing = spacing * src / (src + det)
    s = (torch.arange(n_det, dtype=torch.float64, device=dev) - (n_det - 1) / 2) * par_spacing
    gamma = torch.asin((s / src).clamp(-1.0, 1.0))
    # parallel ray (phi, s) is the fan ray (phi + gamma, (R + Dd) tan(gamma))
    u_index = (src + det) * torch.tan(gamma) / spacing + (n_det - 1) / 2
    theta = torch.remainder(par_angles[:, None] + gamma[None, :], two_pi)

    wrapped = torch.remainder(angles, two_pi)
    sorted_ang, order = torch.sort(wrapped)
    ext = torch.cat((sorted_ang[-1:] - two_pi, sorted_ang, sorted_ang[:1] + two_pi))
    ext_order = torch.cat((order[-1:], order, order[:1]))
    lo = (torch.searchsorted(ext, theta, right=True) - 1).clamp(0, n_ang)
    span = ext[lo + 1] - ext[lo]
    t = torch.where(span > 0, (theta - ext[lo]) / torch.where(span > 0, span, 1.0), 0.0)
    a_idx = torch.stack((ext_order[lo], ext_order[lo + 1]), -1)
    a_wt = torch.stack((1 - t, t), -1)

    u0 = torch.floor(u_index)
    uf = u_index - u0
    d_idx = u0.to(torch.int64)[:, None] + torch.arange(2, device=dev)
    d_wt = torch.stack((1 - uf, uf), -1)
    d_wt = torch.where((d_idx >= 0) & (d_idx < n_det) & (s.abs() < src)[:, None], d_wt, 0.0)
    d_idx = d_idx.clamp(0, n_det - 1)

    idx = a_idx[:, :, :, None] * n_det + d_idx[None, :, None, :]
    wt = (a_wt[:, :, :, None] * d_wt[None, :, None, :]).to(sino.dtype)
    vals = sino.reshape(sino.shape[0], -1).index_select(1, idx.reshape(-1))
    out = (vals.view(sino.shape[0], n_ang, n_det, 4) * wt.view(n_ang, n_det, 4)).sum(-1)
    return out, par_angles, par_spacing


def radon_fbp_ref(sino: torch.Tensor, angles: torch.Tensor, image_size,
                  n_detectors: int | None = None, det_spacing: float = 1.0,
                  source_distance: float | None = None, detector_distance: float | None = None,
                  filter: str = "ramp") -> torch.Tensor:
    """Filtered back-projection, scaled so that ``fbp(radon(x)) ~ x``.

    Parallel: angles should cover [0, pi) (or [0, 2 pi)) uniformly. Fan: angles should
    cover [0, 2 pi); the sinogram is rebinned to parallel rays first (module docstring).

    Args:
        sino: [..., A, D] real floating sinogram.
        angles, image_size, n_detectors, det_spacing, source_distance, detector_distance:
            as in ``radon_adjoint_ref``.
        filter: "ramp", "shepp-logan", "cosine" or "hann".

    Returns:
        [..., H, W] reconstruction in the dtype of ``sino``; differentiable.
    """
    fn = "radon_fbp_ref"
    if not isinstance(filter, str):
        raise TypeError(f"{fn}: filter must be a str, got {type(filter).__name__}")
    if filter not in _FILTERS:
        raise ValueError(f"{fn}: filter must be one of {_FILTERS}, got {filter!r}")
    _check_real_tensor(sino, "sino", fn)
    h, w = _image_size(image_size, fn)
    angles = _check_angles(angles, fn).to(sino.device)
    if n_detectors is None:
        n_detectors = sino.shape[-1]
    n_det, spacing, src, det = _check_geometry((h, w), n_detectors, det_spacing,
                                               source_distance, detector_distance, fn)
    n_ang = angles.numel()
    if tuple(sino.shape[-2:]) != (n_ang, n_det):
        raise ValueError(f"{fn}: sino must end in (A, D) = ({n_ang}, {n_det}), got shape "
                         f"{tuple(sino.shape)}")
    batch = sino.shape[:-2]
    s3 = sino.reshape(-1, n_ang, n_det)
    if src is not None:
        s3, angles, spacing = _rebin_fan(s3, angles, n_det, spacing, src, det)
    response, p = _fbp_filter(n_det, filter, sino.dtype, sino.device)
    filtered = torch.fft.irfft(torch.fft.rfft(s3, n=p, dim=-1) * response, n=p, dim=-1)
    filtered = filtered[..., :n_det].contiguous()
    image = radon_adjoint_ref(filtered, angles, (h, w), n_det, spacing)
    return (image * (math.pi / n_ang)).reshape(*batch, h, w)


class Radon(Operator):
    """2-D Radon transform (Joseph), parallel or flat-detector fan beam.

    Conventions in the module docstring. The angles are a float64 buffer (``angles``).

    Args:
        image_size: int or (H, W).
        angles: int A (uniform ``k * pi / A`` parallel, ``2 pi k / A`` fan) or [A] radians.
        n_detectors: D; None gives ``ceil(sqrt(2) * max(H, W))``.
        geometry: "parallel" or "fan".
        det_spacing: detector spacing (on the detector), > 0.
        source_distance: fan only (required): source to rotation centre, larger than the
            image half-diagonal.
        detector_distance: fan only: rotation centre to the flat detector, >= 0; default 0
            (virtual detector through the rotation centre).

    Example:
        >>> op = Radon(64, angles=90)
        >>> op(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 90, 91])
    """

    def __init__(self, image_size, angles=180, n_detectors=None, geometry="parallel",
                 det_spacing=1.0, source_distance=None, detector_distance=None):
        super().__init__()
        fn = "Radon"
        h, w = _image_size(image_size, fn)
        if not isinstance(geometry, str):
            raise TypeError(f"{fn}: geometry must be a str, got {type(geometry).__name__}")
        if geometry not in _GEOMETRIES:
            raise ValueError(f"{fn}: geometry must be one of {_GEOMETRIES}, got {geometry!r}")
        if geometry == "parallel" and (source_distance is not None
                                       or detector_distance is not None):
            raise ValueError(f"{fn}: source_distance and detector_distance are fan-beam "
                             "parameters; use geometry='fan'")
        if geometry == "fan" and source_distance is None:
            raise ValueError(f"{fn}: geometry='fan' requires source_distance")
        if _is_int(angles):
            if angles < 1:
                raise ValueError(f"{fn}: angles must be positive, got {angles}")
            span = math.pi if geometry == "parallel" else 2 * math.pi
            angle_tensor = torch.arange(int(angles), dtype=torch.float64) * (span / angles)
        elif isinstance(angles, torch.Tensor):
            angle_tensor = _check_angles(angles, fn).detach().clone()
        else:
            raise TypeError(f"{fn}: angles must be an int or a 1-D torch.Tensor of radians, "
                            f"got {type(angles).__name__}")
        n_det, spacing, src, det = _check_geometry((h, w), n_detectors, det_spacing,
                                                   source_distance, detector_distance, fn)
        self.register_buffer("angles", angle_tensor)
        self.image_size = (h, w)
        self.geometry = geometry
        self.n_detectors = n_det
        self.det_spacing = spacing
        self.source_distance = src
        self.detector_distance = det

    def _geometry_kwargs(self) -> dict:
        return dict(n_detectors=self.n_detectors, det_spacing=self.det_spacing,
                    source_distance=self.source_distance,
                    detector_distance=self.detector_distance)

    def _check_sino(self, y, fn: str) -> None:
        _check_real_tensor(y, "y", fn)
        want = (self.angles.numel(), self.n_detectors)
        if tuple(y.shape[-2:]) != want:
            raise ValueError(f"{fn}: y must end in (A, D) = {want}, got shape {tuple(y.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sinogram of ``x``: [..., H, W] real -> [..., A, D]."""
        _check_real_tensor(x, "x", "Radon.forward")
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"Radon.forward: x must end in (H, W) = {self.image_size}, got "
                             f"shape {tuple(x.shape)}")
        return radon_forward_ref(x, self.angles, **self._geometry_kwargs())

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Exact transpose: [..., A, D] -> [..., H, W] (``x`` is ignored; A is linear)."""
        self._check_sino(y, "Radon.adjoint")
        return radon_adjoint_ref(y, self.angles, self.image_size, **self._geometry_kwargs())

    def fbp(self, y: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """Filtered back-projection [..., A, D] -> [..., H, W]; filters ramp, shepp-logan,
        cosine, hann. Scaled so that ``fbp(forward(x)) ~ x`` (module docstring)."""
        self._check_sino(y, "Radon.fbp")
        return radon_fbp_ref(y, self.angles, self.image_size, filter=filter,
                             **self._geometry_kwargs())

    def domain_shape(self, y: torch.Tensor) -> torch.Size:
        return torch.Size((*y.shape[:-2], *self.image_size))

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 1, *self.image_size, device=self.angles.device)

    def extra_repr(self) -> str:
        s = (f"image_size={self.image_size}, n_angles={self.angles.numel()}, "
             f"n_detectors={self.n_detectors}, geometry={self.geometry!r}, "
             f"det_spacing={self.det_spacing}")
        if self.geometry == "fan":
            s += (f", source_distance={self.source_distance}, "
                  f"detector_distance={self.detector_distance}")
        return s
