"""Image-quality metrics: PSNR and SSIM, batched, on real images in [0, data_range].

Complex images (MRI) are compared on their magnitudes; take ``.abs()`` before calling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "psnr_per_image", "ssim_per_image"]


def _check_pair(x_hat, x_true):
    if not isinstance(x_hat, torch.Tensor) or not isinstance(x_true, torch.Tensor):
        raise TypeError("x_hat and x_true must be tensors")
    if x_hat.shape != x_true.shape:
        raise ValueError(f"x_hat {tuple(x_hat.shape)} and x_true {tuple(x_true.shape)} differ in shape")
    if x_hat.is_complex() or x_true.is_complex():
        raise TypeError("metrics take real images; pass magnitudes (.abs()) of complex ones")
    if x_hat.dim() < 3:
        raise ValueError(f"images must be [B, ..., H, W], got shape {tuple(x_hat.shape)}")


def psnr_per_image(x_hat, x_true, data_range=1.0):
    """PSNR in dB of each image of the batch.

    Args:
        x_hat, x_true: [B, ...] real.
        data_range: peak value of the images.

    Returns:
        Tensor [B].
    """
    _check_pair(x_hat, x_true)
    mse = (x_hat.detach() - x_true.detach()).reshape(x_hat.shape[0], -1).double().square().mean(dim=1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))


def psnr(x_hat, x_true, data_range=1.0):
    """Mean PSNR in dB over the batch; x_hat, x_true [B, ...] real. Returns a float."""
    return psnr_per_image(x_hat, x_true, data_range).mean().item()


def _gaussian_window(size, sigma, dtype, device):
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-r.square() / (2 * sigma ** 2))
    return g / g.sum()


def ssim_per_image(x_hat, x_true, data_range=1.0, window=11, sigma=1.5, k1=0.01, k2=0.03):
    """SSIM (Wang et al. 2004, Gaussian window, valid region) of each image of the batch.

    Channels are treated separately and averaged. The window shrinks to the image side
    (kept odd) for images smaller than ``window``.

    Args:
        x_hat, x_true: [B, C, H, W] real.
        data_range: peak value of the images.
        window, sigma: Gaussian window side and standard deviation in pixels.
        k1, k2: SSIM stabilising constants.

    Returns:
        Tensor [B] (float64).
    """
    _check_pair(x_hat, x_true)
    if x_hat.dim() != 4:
        raise ValueError(f"ssim takes [B, C, H, W], got shape {tuple(x_hat.shape)}")
    b, c, h, w = x_hat.shape
    size = min(window, h, w)
    size -= 1 - size % 2
    g = _gaussian_window(size, sigma, torch.float64, x_hat.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, size, size)
    x = x_hat.detach().double()
    y = x_true.detach().double()

    def blur(t):
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x.square()
    syy = blur(y * y) - mu_y.square()
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x.square() + mu_y.square() + c1) * (sxx + syy + c2))
    return s.reshape(b, -1).mean(dim=1)


def ssim(x_hat, x_true, data_range=1.0, **kwargs):
    """Mean SSIM over the batch (see ``ssim_per_image``); returns a float."""
    return ssim_per_image(x_hat, x_true, data_range, **kwargs).mean().item()
