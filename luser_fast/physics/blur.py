"""Blur: 2-D convolution of real images with a fixed kernel (docs/API.md, "Operators").

Convention: a true convolution with the kernel centre at index (kh // 2, kw // 2),

    y[i, j] = sum_{a, b} K[a, b] x[i - a + kh // 2, j - b + kw // 2],

over the last two dims of x (any leading dims). With ``padding="circular"`` the indices
wrap modulo (H, W) and the product is taken in Fourier space; with ``padding="zero"``
pixels outside the image read as zero and the output keeps the input size. The adjoint is
the matching correlation (the kernel flipped), the exact transpose in both modes.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn.functional as F

from ..core import validate
from ..core.operator import Operator

_PADDINGS = ("circular", "zero")
#: dtypes the FFTs take; circular blur computes others (float16, bfloat16) in float32
_FFT_DTYPES = (torch.float32, torch.float64)


def gaussian_kernel(sigma: float, kernel_size: int | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """Isotropic Gaussian kernel, normalised to sum 1.

    Args:
        sigma: standard deviation in pixels, > 0.
        kernel_size: odd side length; defaults to ``2 * ceil(3 * sigma) + 1``.
        dtype: real floating dtype (default: torch's default dtype).

    Returns:
        [kernel_size, kernel_size] kernel, centre at ``kernel_size // 2``.
    """
    if (isinstance(sigma, bool) or not isinstance(sigma, Real)
            or not math.isfinite(sigma) or sigma <= 0):
        raise ValueError(f"Blur: sigma must be a finite number > 0, got {sigma!r}")
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3 * sigma) + 1
    if (isinstance(kernel_size, bool) or not isinstance(kernel_size, int)
            or kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"Blur: kernel_size must be an odd positive int, got {kernel_size!r}")
    t = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).to(dtype or torch.get_default_dtype())


def _check_kernel(kernel) -> torch.Tensor:
    kernel = validate.as_tensor(kernel, "kernel", "Blur")
    if kernel.dim() != 2 or kernel.numel() == 0:
        raise ValueError(f"Blur: kernel must be a non-empty 2-D tensor [kh, kw], got {tuple(kernel.shape)}")
    if not kernel.is_floating_point():
        raise ValueError(f"Blur: kernel must be real floating point, got {kernel.dtype}")
    if not torch.isfinite(kernel).all():
        raise ValueError("Blur: kernel has non-finite entries")
    return kernel


def kernel_transfer(kernel: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Real FFT of the kernel embedded circularly in an H x W image, centre at (0, 0).

    Args:
        kernel: [kh, kw] real kernel; entries that wrap (kernel larger than the image) add up.
        image_size: (H, W).

    Returns:
        [H, W // 2 + 1] complex transfer function (``torch.fft.rfft2`` layout).
    """
    (kh, kw), (h, w) = kernel.shape, image_size
    rows = (torch.arange(kh, device=kernel.device) - kh // 2) % h
    cols = (torch.arange(kw, device=kernel.device) - kw // 2) % w
    flat = (rows[:, None] * w + cols[None, :]).reshape(-1)
    embedded = kernel.new_zeros(h * w).index_add(0, flat, kernel.reshape(-1)).view(h, w)
    return torch.fft.rfft2(embedded)


class Blur(Operator):
    """Convolution with a fixed 2-D kernel: explicit, or Gaussian from ``sigma``.

    Args:
        kernel: [kh, kw] real kernel (centre at (kh // 2, kw // 2)); exclusive with sigma.
        sigma: Gaussian standard deviation in pixels (> 0); exclusive with kernel.
        kernel_size: odd side of the Gaussian kernel (only with sigma); default
            ``2 * ceil(3 * sigma) + 1``.
        image_size: optional (H, W) or int; precomputes the circular transfer function
            and sets ``example_input``. Any other input size still works.
        padding: "circular" (periodic convolution by FFT) or "zero" (linear convolution,
            same-size output).

    Shapes:
        x: [..., H, W] real -> y: [..., H, W] (same dtype; float16 / bfloat16 are computed
        in float32; an empty batch gives an empty result).

    Example:
        >>> op = Blur(sigma=1.5, image_size=(32, 32))
        >>> y = op(torch.rand(4, 1, 32, 32))
    """

    def __init__(self, kernel=None, sigma: float | None = None, kernel_size: int | None = None,
                 image_size=None, padding: str = "circular"):
        super().__init__()
        if padding not in _PADDINGS:
            raise ValueError(f"Blur: padding must be one of {_PADDINGS}, got {padding!r}")
        if (kernel is None) == (sigma is None):
            raise ValueError("Blur: pass exactly one of kernel= or sigma=")
        if kernel is not None:
            if kernel_size is not None:
                raise ValueError("Blur: kernel_size applies only with sigma=; "
                                 "an explicit kernel has its own size")
            kernel = _check_kernel(kernel)
        else:
            kernel = gaussian_kernel(sigma, kernel_size)
        self.padding = padding
        self.image_size = None if image_size is None else validate.image_size(image_size, "Blur")
        self.register_buffer("kernel", kernel)
        cached = None
        if padding == "circular" and self.image_size is not None:
            h, w = self.image_size
            validate.allocation("Blur", f"the transfer function of image_size {(h, w)}",
                                (h, w // 2 + 1), torch.complex128, "cpu")
            cached = kernel_transfer(kernel, self.image_size)
        self.register_buffer("kernel_fft", cached, persistent=False)

    def _check_x(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"Blur: {name} must be a real floating tensor, got {got}")
        if x.dim() < 2:
            raise ValueError(f"Blur: {name} must have shape [..., H, W], got {tuple(x.shape)}")

    def _transfer(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        cached = self.kernel_fft
        if (cached is not None and size == self.image_size
                and cached.dtype == torch.promote_types(x.dtype, torch.complex64)
                and cached.device == x.device):
            return cached
        return kernel_transfer(self.kernel.to(x), size)

    def _circular(self, x: torch.Tensor, conj: bool) -> torch.Tensor:
        if x.numel() == 0:           # the FFTs take no empty batch
            return torch.zeros_like(x)
        if x.dtype not in _FFT_DTYPES:   # nor float16 / bfloat16: computed in float32
            return self._circular(x.float(), conj).to(x.dtype)
        t = self._transfer(x)
        return torch.fft.irfft2(torch.fft.rfft2(x) * (t.conj() if conj else t), s=x.shape[-2:])

    def _zero(self, x: torch.Tensor, adjoint: bool) -> torch.Tensor:
        k = self.kernel.to(x)
        (kh, kw), (ch, cw) = k.shape, (k.shape[0] // 2, k.shape[1] // 2)
        xb = x.reshape(-1, 1, *x.shape[-2:])
        if adjoint:
            # correlation with K: (A^T y)[j] = sum_a K[a] y[j + a - c]
            out = F.conv2d(F.pad(xb, (cw, kw - 1 - cw, ch, kh - 1 - ch)), k[None, None])
        else:
            # conv2d correlates, so convolution uses the flipped kernel with mirrored padding
            out = F.conv2d(F.pad(xb, (kw - 1 - cw, cw, kh - 1 - ch, ch)), k.flip(0, 1)[None, None])
        return out.reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x. Args: x [..., H, W] real. Returns: [..., H, W]."""
        self._check_x(x, "x")
        if self.padding == "circular":
            return self._circular(x, conj=False)
        return self._zero(x, adjoint=False)

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """A^T y (correlation). Args: y [..., H, W] real; x unused. Returns: [..., H, W]."""
        self._check_x(y, "y")
        if self.padding == "circular":
            return self._circular(y, conj=True)
        return self._zero(y, adjoint=True)

    def domain_shape(self, y: torch.Tensor) -> torch.Size:
        return y.shape

    def example_input(self) -> torch.Tensor | None:
        if self.image_size is None:
            return None
        return torch.zeros(1, 1, *self.image_size, dtype=self.kernel.dtype, device=self.kernel.device)
