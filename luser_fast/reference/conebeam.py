"""Pure-PyTorch reference of the 3-D cone-beam (and parallel-beam) CT projector and its
exact adjoint.

The oracle the C++ and CUDA kernels are tested against. The conventions (voxel and
detector coordinates, cone and parallel geometry, the 3-D Joseph discretisation) are those
of ``luser_fast/core/conebeam_geometry.py``; this module adds only the projector and the
back-projector, written as gathers and scatters of the same (voxel, weight) pairs, so the
adjoint is the exact transpose. Both run in blocks of major-axis steps, so the working
memory stays bounded (``_BLOCK_ELEMS``) whatever the batch and detector.
"""
from __future__ import annotations

import torch

from ..core import conebeam_geometry as geo

__all__ = ["conebeam_forward_ref", "conebeam_adjoint_ref"]

# Elements of one gathered (batch, ray, step, 4) block: bounds the working memory to tens
# of MB; larger blocks were no faster on CPU.
_BLOCK_ELEMS = 1 << 22


class _Rays:
    """The per-ray Joseph parameters of one geometry (``geo.joseph_steps``), computed once
    per call and shared by every block of steps.

    The pairs index a zero-padded copy of the volume (one voxel before and two after each
    axis, ``pad`` / ``crop``): a neighbour outside the volume, or a step past a ray's
    major-axis extent, then lands on a zero voxel of the margin instead of needing a mask,
    so the weights of the voxels inside are exactly the Joseph weights and the others
    multiply zeros (forward) or are cropped away (adjoint).
    """

    def __init__(self, origin, direction, size):
        d, h, w = size
        self.size = size
        self.n_rays = origin.shape[0]
        self.n_steps = max(size)
        self.major, minors, self.f0, self.df, self.step = geo.joseph_steps(
            origin, direction, size)
        dev = origin.device
        extent = torch.tensor([w, h, d], device=dev)    # voxels along x, y, z
        stride = torch.tensor([1, w + 3, (h + 3) * (w + 3)], device=dev)   # padded volume
        self.f_max = extent[minors].to(torch.float64)   # [R, 2]: clamp f to [-1, n]
        self.stride_min = stride[minors]                # [R, 2]
        self.n_maj = extent[self.major]                 # [R]
        self.stride_maj = stride[self.major]            # [R]
        s0, s1 = self.stride_min[:, 0], self.stride_min[:, 1]
        # the four neighbours (floor / floor + 1 on each minor axis) relative to the first
        self.corners = torch.stack((torch.zeros_like(s0), s1, s0, s0 + s1), -1)[:, None, :]
        self.ragged = len(set(size)) > 1                # some rays have fewer steps

    def pad(self, x2: torch.Tensor) -> torch.Tensor:
        """[N, D * H * W] -> [N, (D + 3) * (H + 3) * (W + 3)] with zero margins."""
        d, h, w = self.size
        xp = torch.nn.functional.pad(x2.reshape(-1, d, h, w), (1, 2, 1, 2, 1, 2))
        return xp.reshape(x2.shape[0], -1)

    def crop(self, xp: torch.Tensor) -> torch.Tensor:
        """The transpose of ``pad``."""
        d, h, w = self.size
        xp = xp.reshape(-1, d + 3, h + 3, w + 3)[:, 1:d + 1, 1:h + 1, 1:w + 1]
        return xp.reshape(xp.shape[0], d * h * w)

    def pairs(self, k0: int, k1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(voxel, weight) pairs of steps ``k0 <= k < k1`` of every ray.

        Returns:
            voxel: [R, k1 - k0, 4] int64 flat index into the padded volume (``pad``).
            weight: [R, k1 - k0, 4] float64: the bilinear weights times the path length
            per step; voxels in the zero margins stand for those outside the volume.
        """
        k = torch.arange(k0, k1, device=self.f0.device)
        f = torch.addcmul(self.f0[:, None, :], k.to(torch.float64)[None, :, None],
                          self.df[:, None, :])                       # [R, S, 2]
        # beyond [-1, n] both neighbours are outside: clamped, they are margin voxels
        f = torch.minimum(f.clamp_(min=-1.0), self.f_max[:, None, :])
        fl = torch.floor(f)
        frac = f - fl
        first = (fl.to(torch.int64) + 1) * self.stride_min[:, None, :]
        plane = k[None, :] + 1
        if self.ragged:     # steps past the ray's extent go to the zero margin plane
            plane = torch.minimum(plane, self.n_maj[:, None] + 1)
        base = first[..., 0] + first[..., 1] + plane * self.stride_maj[:, None]   # [R, S]
        voxel = base[..., None] + self.corners
        a1, b1 = frac[..., 0], frac[..., 1]
        step = self.step[:, None]
        sa1 = a1 * step
        sa0 = step - sa1
        b0 = 1.0 - b1
        weight = torch.stack((sa0 * b0, sa0 * b1, sa1 * b0, sa1 * b1), -1)
        return voxel, weight

    def block(self, n_batch: int) -> int:
        return max(1, min(self.n_steps,
                          _BLOCK_ELEMS // (4 * max(1, self.n_rays) * max(1, n_batch))))


def _project(x2: torch.Tensor, rays: _Rays) -> torch.Tensor:
    """[N, D * H * W] volumes -> [N, R] line integrals."""
    n_batch, n_rays = x2.shape[0], rays.n_rays
    out = x2.new_zeros(n_batch, n_rays)
    if n_batch == 0 or n_rays == 0:
        return out
    xp = rays.pad(x2)
    block = rays.block(n_batch)
    for k0 in range(0, rays.n_steps, block):
        voxel, weight = rays.pairs(k0, min(rays.n_steps, k0 + block))
        vals = xp.index_select(1, voxel.reshape(-1)).view(n_batch, n_rays, -1)
        out = out + (vals * weight.to(x2.dtype).view(n_rays, -1)).sum(-1)
    return out


def _backproject(p2: torch.Tensor, rays: _Rays) -> torch.Tensor:
    """[N, R] ray values -> [N, D * H * W], the exact transpose of ``_project``."""
    n_batch, n_rays = p2.shape[0], rays.n_rays
    d, h, w = rays.size
    if n_batch == 0 or n_rays == 0:
        return p2.new_zeros(n_batch, d * h * w)
    out = p2.new_zeros(n_batch, (d + 3) * (h + 3) * (w + 3))
    block = rays.block(n_batch)
    for k0 in range(0, rays.n_steps, block):
        voxel, weight = rays.pairs(k0, min(rays.n_steps, k0 + block))
        contrib = p2[:, :, None] * weight.to(p2.dtype).view(n_rays, -1)
        out = out.index_add(1, voxel.reshape(-1), contrib.reshape(n_batch, -1))
    return rays.crop(out)


class _Project(torch.autograd.Function):
    """``_project`` with its transpose as the backward: a linear operator's gradient is
    its adjoint, so autograd keeps only the geometry."""

    @staticmethod
    def forward(ctx, x2, rays):
        ctx.rays = rays
        return _project(x2, rays)

    @staticmethod
    def backward(ctx, grad):
        return _Backproject.apply(grad, ctx.rays), None


class _Backproject(torch.autograd.Function):
    """``_backproject`` with ``_project`` as its backward (see ``_Project``)."""

    @staticmethod
    def forward(ctx, p2, rays):
        ctx.rays = rays
        return _backproject(p2, rays)

    @staticmethod
    def backward(ctx, grad):
        return _Project.apply(grad, ctx.rays), None


def conebeam_forward_ref(x: torch.Tensor, angles: torch.Tensor, rows: int, cols: int,
                         det_spacing=(1.0, 1.0), source_distance: float | None = None,
                         detector_distance: float | None = None) -> torch.Tensor:
    """Cone-beam (or parallel-beam) projections of a volume (3-D Joseph line integrals):
    the reference of ``luser_fast.ops.conebeam_forward``.

    Args:
        x: [..., D, H, W] real floating volume.
        angles: [A] finite radians on x's device (used in float64).
        rows, cols: detector shape.
        det_spacing: (row, column) spacing on the detector (a number: both).
        source_distance: R, source to rotation axis; None: parallel beam.
        detector_distance: rotation axis to the flat detector (cone only, default 0).

    Returns:
        [..., A, rows, cols] in the dtype of ``x``; differentiable (its gradient is
        ``conebeam_adjoint_ref``).
    """
    fn = "conebeam_forward_ref"
    angles, shape, spacing, src, det = geo.forward_args(
        x, angles, (rows, cols), det_spacing, source_distance, detector_distance, fn)
    size = tuple(x.shape[-3:])
    rays = _Rays(*geo.rays(angles, shape, spacing, src, det), size)
    out = _Project.apply(x.reshape(-1, size[0] * size[1] * size[2]), rays)
    return out.reshape(*x.shape[:-3], angles.numel(), *shape)


def conebeam_adjoint_ref(proj: torch.Tensor, angles: torch.Tensor, volume_size,
                         det_spacing=(1.0, 1.0), source_distance: float | None = None,
                         detector_distance: float | None = None) -> torch.Tensor:
    """Exact transpose of ``conebeam_forward_ref`` (unfiltered back-projection): the
    reference of ``luser_fast.ops.conebeam_adjoint``.

    Args:
        proj: [..., A, rows, cols] real floating projections.
        angles: [A] finite radians on proj's device.
        volume_size: int or (D, H, W).
        det_spacing, source_distance, detector_distance: as in ``conebeam_forward_ref``.

    Returns:
        [..., D, H, W] in the dtype of ``proj``; differentiable (its gradient is
        ``conebeam_forward_ref``).
    """
    fn = "conebeam_adjoint_ref"
    angles, size, shape, spacing, src, det = geo.adjoint_args(
        proj, angles, volume_size, det_spacing, source_distance, detector_distance, fn)
    rays = _Rays(*geo.rays(angles, shape, spacing, src, det), size)
    out = _Backproject.apply(proj.reshape(-1, rays.n_rays), rays)
    return out.reshape(*proj.shape[:-3], *size)
