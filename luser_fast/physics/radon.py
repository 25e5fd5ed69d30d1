"""The Radon operator (CT): one definition, on the Radon ops.

``Radon`` validates and stores the geometry and calls ``luser_fast.ops.radon_forward`` /
``radon_adjoint``, which pick the backend; ``luser_fast.reference.Radon`` is the same
class with every op on its reference (``luser_fast/core/binding.py``).
"""
from __future__ import annotations

import math

import torch

from ..core import radon_geometry as geo
from ..core import validate
from ..core.operator import Operator
from ..ops.radon import radon_adjoint, radon_forward

__all__ = ["Radon"]


class Radon(Operator):
    """2-D Radon transform (Joseph), parallel or flat-detector fan beam.

    Conventions in ``luser_fast/core/radon_geometry.py``. The angles are a float64 buffer
    (``angles``). Forward and adjoint run on ``luser_fast.ops.radon_forward`` /
    ``radon_adjoint`` (the C++ CPU kernels, the CUDA kernels or the reference, as
    ``luser_fast.backends`` selects); the adjoint is the exact transpose of the forward.

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

    #: backend requested for every op (None: ``luser_fast.backends`` chooses)
    backend: str | None = None

    def __init__(self, image_size, angles=180, n_detectors=None, geometry="parallel",
                 det_spacing=1.0, source_distance=None, detector_distance=None):
        super().__init__()
        fn = "Radon"
        h, w = validate.image_size(image_size, fn)
        if not isinstance(geometry, str):
            raise TypeError(f"{fn}: geometry must be a str, got {type(geometry).__name__}")
        if geometry not in geo.GEOMETRIES:
            raise ValueError(f"{fn}: geometry must be one of {geo.GEOMETRIES}, got {geometry!r}")
        if geometry == "parallel" and (source_distance is not None
                                       or detector_distance is not None):
            raise ValueError(f"{fn}: source_distance and detector_distance are fan-beam "
                             "parameters; use geometry='fan'")
        if geometry == "fan" and source_distance is None:
            raise ValueError(f"{fn}: geometry='fan' requires source_distance")
        if validate.is_int(angles):
            if angles < 1:
                raise ValueError(f"{fn}: angles must be positive, got {angles}")
            validate.allocation(fn, f"angles={angles}", (angles,), torch.float64, "cpu")
            span = math.pi if geometry == "parallel" else 2 * math.pi
            angle_tensor = torch.arange(int(angles), dtype=torch.float64) * (span / angles)
        elif isinstance(angles, torch.Tensor):
            angle_tensor = validate.angles(angles, fn).detach().clone()
        else:
            raise TypeError(f"{fn}: angles must be an int or a 1-D torch.Tensor of radians, "
                            f"got {type(angles).__name__}")
        n_det, spacing, src, det = geo.check_geometry((h, w), n_detectors, det_spacing,
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

    def _check_device(self, t, name: str, fn: str) -> None:
        if t.device != self.angles.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but the operator is on "
                             f"{self.angles.device}; move one of them (.to())")

    def _check_sino(self, y, fn: str) -> None:
        validate.real_tensor(y, "y", fn)
        self._check_device(y, "y", fn)
        want = (self.angles.numel(), self.n_detectors)
        if tuple(y.shape[-2:]) != want:
            raise ValueError(f"{fn}: y must end in (A, D) = {want}, got shape {tuple(y.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sinogram of ``x``: [..., H, W] real -> [..., A, D]."""
        validate.real_tensor(x, "x", "Radon.forward")
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"Radon.forward: x must end in (H, W) = {self.image_size}, got "
                             f"shape {tuple(x.shape)}")
        self._check_device(x, "x", "Radon.forward")
        return radon_forward(x, self.angles, **self._geometry_kwargs(), backend=self.backend)

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Exact transpose: [..., A, D] -> [..., H, W] (``x`` is ignored; A is linear)."""
        self._check_sino(y, "Radon.adjoint")
        return radon_adjoint(y, self.angles, self.image_size, **self._geometry_kwargs(),
                             backend=self.backend)

    def fbp(self, y: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """Filtered back-projection [..., A, D] -> [..., H, W]; filters ramp, shepp-logan,
        cosine, hann. Scaled so that ``fbp(forward(x)) ~ x`` (fan sinograms are rebinned
        to parallel rays first; ``luser_fast/core/radon_geometry.py``, "FBP"). float16 /
        bfloat16 are computed in float32; an empty batch gives an empty result."""
        fn = "Radon.fbp"
        self._check_sino(y, fn)

        def backproject(sino, angles, size, n_det, spacing):
            return radon_adjoint(sino, angles, size, n_det, spacing, backend=self.backend)

        return geo.fbp(y, self.angles, self.image_size, self.n_detectors,
                       self.det_spacing, self.source_distance, self.detector_distance,
                       filter, backproject, fn)

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
