"""The cone-beam CT operator: one definition, on the cone-beam ops.

``ConeBeam`` validates and stores the geometry and calls ``luser_fast.ops.conebeam_forward``
/ ``conebeam_adjoint``, which pick the backend; ``luser_fast.reference.ConeBeam`` is the
same class with every op on its reference (``luser_fast/core/binding.py``).
"""
from __future__ import annotations

import torch

from ..core import conebeam_geometry as geo
from ..core import validate
from ..core.operator import Operator
from ..ops.conebeam import conebeam_adjoint, conebeam_forward
from ..ops.radon import radon_adjoint

__all__ = ["ConeBeam"]


class ConeBeam(Operator):
    """3-D CT: circular-orbit cone beam onto a flat detector, or parallel beam (Joseph).

    Conventions in ``luser_fast/core/conebeam_geometry.py``: voxel size 1, rotation about
    the volume's first spatial axis D through its centre, detector rows along that axis,
    pixel ``(r, c)`` at ``((r - (rows-1)/2) * det_spacing[0], (c - (cols-1)/2) *
    det_spacing[1])`` from the detector centre, which the central ray hits. Volumes are
    ``[..., D, H, W]`` (e.g. (B, C, D, H, W)), projections ``[..., A, rows, cols]``;
    values are line integrals in voxel units. The angles are a float64 buffer
    (``angles``). The adjoint is the exact transpose of the forward.

    Args:
        volume_size: int or (D, H, W).
        angles: int A (uniform ``2 pi k / A`` for a cone beam, ``pi k / A`` parallel) or
            [A] radians.
        detector_shape: int or (rows, cols).
        source_distance: source to rotation axis, above the volume's in-plane
            half-diagonal ``hypot(H, W) / 2``; None: parallel beam.
        detector_distance: rotation axis to the flat detector, >= 0 (cone beam only;
            default 0, a virtual detector through the axis).
        det_spacing: (row, column) detector spacing, > 0 (a number: both).

    Example:
        >>> op = ConeBeam(32, angles=60, detector_shape=(40, 48), source_distance=64.0,
        ...               detector_distance=32.0)
        >>> op(torch.rand(2, 1, 32, 32, 32)).shape
        torch.Size([2, 1, 60, 40, 48])
    """

    #: backend requested for every op (None: ``luser_fast.backends`` chooses)
    backend: str | None = None

    def __init__(self, volume_size, angles, detector_shape, source_distance=None,
                 detector_distance=None, det_spacing=(1.0, 1.0)):
        super().__init__()
        fn = "ConeBeam"
        size = geo.volume_size(volume_size, fn)
        shape = geo.detector_shape(detector_shape, fn)
        spacing, src, det = geo.check_geometry(size, shape, det_spacing, source_distance,
                                               detector_distance, fn)
        if validate.is_int(angles):
            if angles < 1:
                raise ValueError(f"{fn}: angles must be positive, got {angles}")
            validate.allocation(fn, f"angles={angles}", (angles,), torch.float64, "cpu")
            angle_tensor = geo.uniform_angles(angles, cone=src is not None)
        elif isinstance(angles, torch.Tensor):
            angle_tensor = validate.angles(angles, fn).detach().clone()
        else:
            raise TypeError(f"{fn}: angles must be an int or a 1-D torch.Tensor of radians, "
                            f"got {type(angles).__name__}")
        self.register_buffer("angles", angle_tensor)
        self.volume_size = size
        self.detector_shape = shape
        self.det_spacing = spacing
        self.source_distance = src
        self.detector_distance = det

    @property
    def geometry(self) -> str:
        """"cone" or "parallel"."""
        return "parallel" if self.source_distance is None else "cone"

    def _geometry_kwargs(self) -> dict:
        return dict(det_spacing=self.det_spacing, source_distance=self.source_distance,
                    detector_distance=self.detector_distance)

    def _check_device(self, t, name: str, fn: str) -> None:
        if t.device != self.angles.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but the operator is on "
                             f"{self.angles.device}; move one of them (.to())")

    def _check_proj(self, y, fn: str) -> None:
        validate.real_tensor(y, "y", fn, min_dim=3)
        self._check_device(y, "y", fn)
        want = (self.angles.numel(), *self.detector_shape)
        if tuple(y.shape[-3:]) != want:
            raise ValueError(f"{fn}: y must end in (A, rows, cols) = {want}, got shape "
                             f"{tuple(y.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projections of ``x``: [..., D, H, W] real -> [..., A, rows, cols]."""
        fn = "ConeBeam.forward"
        validate.real_tensor(x, "x", fn, min_dim=3)
        if tuple(x.shape[-3:]) != self.volume_size:
            raise ValueError(f"{fn}: x must end in (D, H, W) = {self.volume_size}, got shape "
                             f"{tuple(x.shape)}")
        self._check_device(x, "x", fn)
        return conebeam_forward(x, self.angles, self.detector_shape, **self._geometry_kwargs(),
                                backend=self.backend)

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Exact transpose: [..., A, rows, cols] -> [..., D, H, W] (``x`` is ignored; A is
        linear)."""
        self._check_proj(y, "ConeBeam.adjoint")
        return conebeam_adjoint(y, self.angles, self.volume_size, **self._geometry_kwargs(),
                                backend=self.backend)

    def fdk(self, y: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """FDK reconstruction [..., A, rows, cols] -> [..., D, H, W]; filters ramp,
        shepp-logan, cosine, hann. Cone beam: cosine weights, row-wise ramp filtering,
        Parker weights when the angles cover a short scan, distance-weighted voxel-driven
        back-projection; parallel beam: the 2-D FBP of every detector row
        (``luser_fast/core/conebeam_geometry.py``, "FDK"). Scaled so that
        ``fdk(forward(x)) ~ x``; float16 / bfloat16 are computed in float32, an empty
        batch gives an empty result; differentiable in ``y``."""
        fn = "ConeBeam.fdk"
        self._check_proj(y, fn)

        def backproject(sino, angles, size, n_det, spacing):
            # the parallel-beam FBP's 2-D back-projector, on this operator's backend
            return radon_adjoint(sino, angles, size, n_det, spacing, backend=self.backend)

        return geo.fdk(y, self.angles, self.volume_size, self.det_spacing,
                       self.source_distance, self.detector_distance, filter, backproject, fn)

    def fbp(self, y: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """The same as ``fdk`` (the name the models call for their initial estimate)."""
        return self.fdk(y, filter=filter)

    def domain_shape(self, y: torch.Tensor) -> torch.Size:
        return torch.Size((*y.shape[:-3], *self.volume_size))

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 1, *self.volume_size, device=self.angles.device)

    def extra_repr(self) -> str:
        s = (f"volume_size={self.volume_size}, n_angles={self.angles.numel()}, "
             f"detector_shape={self.detector_shape}, det_spacing={self.det_spacing}")
        if self.source_distance is not None:
            s += (f", source_distance={self.source_distance}, "
                  f"detector_distance={self.detector_distance}")
        return s
