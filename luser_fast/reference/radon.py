"""Pure-PyTorch reference of the 2-D Radon transform: Joseph projector, exact adjoint, FBP.

The oracle the C++ and CUDA kernels are tested against. The conventions (pixel and
detector coordinates, parallel and fan geometry, the Joseph discretisation, FBP) are
those of ``luser_fast/core/radon_geometry.py``; this module adds only the projector and
back-projector, written as gathers and scatters of the same (pixel, weight) pairs, so the
adjoint is the exact transpose.
"""
from __future__ import annotations

import torch

from ..core import radon_geometry as geo

__all__ = ["radon_forward_ref", "radon_adjoint_ref", "radon_fbp_ref"]

# Elements of one gathered (batch, ray, step, 2) block: bounds the projector's working
# memory to tens of MB for any batch size; larger blocks were no faster on CPU.
_BLOCK_ELEMS = 1 << 22


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
    if n_batch == 0 or n_rays == 0:
        return out
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
    if n_batch == 0 or n_rays == 0:
        return out
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
    """Radon transform (Joseph line integrals), parallel or flat-detector fan beam: the
    reference of ``luser_fast.ops.radon_forward``, same arguments (no ``backend``) and
    result; differentiable (its gradient is ``radon_adjoint_ref``)."""
    fn = "radon_forward_ref"
    angles, n_det, spacing, src, det = geo.forward_args(
        x, angles, n_detectors, det_spacing, source_distance, detector_distance, fn)
    h, w = x.shape[-2:]
    origin, direction = geo.rays(angles, n_det, spacing, src, det)
    out = _Project.apply(x.reshape(-1, h * w), origin, direction, h, w)
    return out.reshape(*x.shape[:-2], angles.numel(), n_det)


def radon_adjoint_ref(sino: torch.Tensor, angles: torch.Tensor, image_size,
                      n_detectors: int | None = None, det_spacing: float = 1.0,
                      source_distance: float | None = None,
                      detector_distance: float | None = None) -> torch.Tensor:
    """Exact transpose of ``radon_forward_ref`` (unfiltered back-projection): the reference
    of ``luser_fast.ops.radon_adjoint``, same arguments (no ``backend``) and result;
    differentiable (its gradient is ``radon_forward_ref``)."""
    fn = "radon_adjoint_ref"
    angles, (h, w), n_det, spacing, src, det = geo.adjoint_args(
        sino, angles, image_size, n_detectors, det_spacing, source_distance,
        detector_distance, fn)
    origin, direction = geo.rays(angles, n_det, spacing, src, det)
    out = _Backproject.apply(sino.reshape(-1, angles.numel() * n_det), origin, direction, h, w)
    return out.reshape(*sino.shape[:-2], h, w)


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
    angles, size, n_det, spacing, src, det = geo.adjoint_args(
        sino, angles, image_size, n_detectors, det_spacing, source_distance,
        detector_distance, fn)
    return geo.fbp(sino, angles, size, n_det, spacing, src, det, filter, radon_adjoint_ref, fn)
