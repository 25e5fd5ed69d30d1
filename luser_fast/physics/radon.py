"""Radon operator served by the fast ops (``luser_fast.ops.radon``).

``Radon`` is the reference ``Radon`` (same constructor, buffers and ``state_dict``) whose
forward, adjoint and hence FBP run on the backend ``luser_fast.backends.select`` picks for
the data's device: the C++ CPU kernels, the CUDA kernels, or the reference.
"""
from __future__ import annotations

import math

import torch

from ..ops.radon import radon_adjoint, radon_forward
from ..reference import radon as _ref

__all__ = ["Radon"]


class Radon(_ref.Radon):
    """2-D Radon transform (Joseph), parallel or flat-detector fan beam, on fast kernels.

    Drop-in for ``luser_fast.reference.Radon`` (conventions in
    ``luser_fast/reference/radon.py``); results agree with it to float rounding and the
    adjoint is the exact transpose of the forward.

    Args:
        image_size: int or (H, W).
        angles: int A (uniform ``k * pi / A`` parallel, ``2 pi k / A`` fan) or [A] radians.
        n_detectors: D; None gives ``ceil(sqrt(2) * max(H, W))``.
        geometry: "parallel" or "fan".
        det_spacing: detector spacing (on the detector), > 0.
        source_distance: fan only (required): source to rotation centre.
        detector_distance: fan only: rotation centre to the flat detector, default 0.

    Example:
        >>> op = Radon(64, angles=90)
        >>> op(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 90, 91])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sinogram of ``x``: [..., H, W] real -> [..., A, D]."""
        _ref._check_real_tensor(x, "x", "Radon.forward")
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"Radon.forward: x must end in (H, W) = {self.image_size}, got "
                             f"shape {tuple(x.shape)}")
        return radon_forward(x, self.angles, **self._geometry_kwargs())

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Exact transpose: [..., A, D] -> [..., H, W] (``x`` is ignored; A is linear)."""
        self._check_sino(y, "Radon.adjoint")
        return radon_adjoint(y, self.angles, self.image_size, **self._geometry_kwargs())

    def fbp(self, y: torch.Tensor, filter: str = "ramp") -> torch.Tensor:
        """Filtered back-projection [..., A, D] -> [..., H, W]; filters ramp, shepp-logan,
        cosine, hann. Same filtering (and fan rebinning) as ``radon_fbp_ref``, with the
        back-projection on the fast adjoint; ``fbp(forward(x)) ~ x``."""
        fn = "Radon.fbp"
        if not isinstance(filter, str):
            raise TypeError(f"{fn}: filter must be a str, got {type(filter).__name__}")
        if filter not in _ref._FILTERS:
            raise ValueError(f"{fn}: filter must be one of {_ref._FILTERS}, got {filter!r}")
        self._check_sino(y, fn)
        n_ang, n_det = y.shape[-2:]
        angles, spacing = self.angles.to(y.device), self.det_spacing
        s3 = y.reshape(-1, n_ang, n_det)
        if self.geometry == "fan":
            s3, angles, spacing = _ref._rebin_fan(s3, angles, n_det, spacing,
                                                  self.source_distance, self.detector_distance)
        response, p = _ref._fbp_filter(n_det, filter, y.dtype, y.device)
        filtered = torch.fft.irfft(torch.fft.rfft(s3, n=p, dim=-1) * response, n=p, dim=-1)
        filtered = filtered[..., :n_det].contiguous()
        image = radon_adjoint(filtered, angles, self.image_size, n_det, spacing)
        return (image * (math.pi / n_ang)).reshape(*y.shape[:-2], *self.image_size)
