"""MRI: Cartesian multi-coil MRI with the orthonormal centred 2-D FFT (docs/API.md, "Operators").

Convention: F = fftshift . fft2(norm="ortho") . ifftshift over the last two dims, so the
zero frequency and the image centre both sit at index (H // 2, W // 2) and F is unitary.
With coil sensitivities S_c and a sampling mask m,

    y_c = m * F(S_c x),            A^H y = sum_c conj(S_c) F^H(m * y_c).

Without coil maps S = 1 and there is one coil. The mask is real (binary, or any real
weights) and is applied once in each direction, so A^H is the exact adjoint.
"""
from __future__ import annotations

import torch

from ..core import validate
from ..core.operator import Operator

_DIMS = (-2, -1)


def _empty(x: torch.Tensor) -> torch.Tensor:
    """The (empty) transform of an empty x: the FFTs take no empty batch."""
    return x.to(torch.promote_types(x.dtype, torch.complex64)).clone()


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal centred 2-D FFT over the last two dims. Args: x [..., H, W] complex."""
    if x.numel() == 0:
        return _empty(x)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=_DIMS), norm="ortho"), dim=_DIMS)


def ifft2c(y: torch.Tensor) -> torch.Tensor:
    """Inverse (= adjoint) of ``fft2c``. Args: y [..., H, W] complex."""
    if y.numel() == 0:
        return _empty(y)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(y, dim=_DIMS), norm="ortho"), dim=_DIMS)


class MRI(Operator):
    """Cartesian MRI forward model y = mask * F(S x).

    Args:
        mask: [H, W] sampling mask, bool or real (0/1, or real weights).
        coil_maps: optional [Coils, H, W] or [B, Coils, H, W] complex sensitivities.

    Shapes:
        x: [..., 1, H, W] complex -> y: [..., Coils, H, W] complex (Coils = 1 without maps).

    Example:
        >>> mask = torch.rand(64, 64) < 0.3
        >>> op = MRI(mask)
        >>> y = op(torch.randn(2, 1, 64, 64, dtype=torch.complex64))
    """

    complex_domain = True

    def __init__(self, mask: torch.Tensor, coil_maps: torch.Tensor | None = None):
        super().__init__()
        mask = validate.as_tensor(mask, "mask", "MRI")
        if mask.dim() != 2 or mask.numel() == 0:
            raise ValueError(f"MRI: mask must be a 2-D tensor [H, W], got shape {tuple(mask.shape)}")
        if mask.is_complex():
            raise ValueError("MRI: mask must be real (bool or 0/1 weights), got a complex tensor")
        mask = mask.to(torch.get_default_dtype()) if not mask.is_floating_point() else mask
        if not torch.isfinite(mask).all():
            raise ValueError("MRI: mask has non-finite entries")
        self.image_size = tuple(mask.shape)
        coil_maps = validate.coil_maps(coil_maps, self.image_size, "MRI")
        self.register_buffer("mask", mask)
        self.register_buffer("coil_maps", coil_maps)

    @property
    def n_coils(self) -> int:
        return 1 if self.coil_maps is None else self.coil_maps.shape[-3]

    def _check(self, t: torch.Tensor, name: str, channels: int) -> None:
        if not isinstance(t, torch.Tensor) or not t.is_complex():
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"MRI: {name} must be a complex tensor, got {got}")
        if t.dim() < 3 or tuple(t.shape[-3:]) != (channels, *self.image_size):
            raise ValueError(
                f"MRI: {name} must have shape [..., {channels}, {self.image_size[0]}, {self.image_size[1]}], "
                f"got {tuple(t.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x. Args: x [..., 1, H, W] complex. Returns: [..., Coils, H, W] complex."""
        self._check(x, "x", 1)
        if self.coil_maps is not None:
            x = x * self.coil_maps.to(x)
        return self.mask.to(x.real.dtype) * fft2c(x)

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """A^H y. Args: y [..., Coils, H, W] complex; x unused. Returns: [..., 1, H, W] complex."""
        self._check(y, "y", self.n_coils)
        img = ifft2c(self.mask.to(y.real.dtype) * y)
        if self.coil_maps is None:
            return img
        return torch.sum(self.coil_maps.to(y).conj() * img, dim=-3, keepdim=True)

    def domain_shape(self, y: torch.Tensor) -> torch.Size:
        return torch.Size((*y.shape[:-3], 1, *self.image_size))

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 1, *self.image_size, dtype=torch.complex64, device=self.mask.device)
