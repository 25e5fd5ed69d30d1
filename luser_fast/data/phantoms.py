"""Deterministic synthetic phantoms (embedded data: generated, nothing downloaded)."""
from __future__ import annotations

import math

import numpy as np
import torch


def _check_size(size):
    if isinstance(size, int):
        size = (size, size)
    if (len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size)):
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    return tuple(size)


def random_ellipses(n, size=64, *, n_ellipses=(5, 12), seed=0, dtype=torch.float32):
    """Random-ellipse CT phantoms in [0, 1], the common synthetic set for learned CT.

    Each image is a large background ellipse (the body) holding smaller ellipses of random
    centre, axes, rotation and (positive or negative) intensity, summed and clipped to
    [0, 1]. The same ``seed`` gives the same images on every machine.

    Args:
        n: number of images.
        size: int or (H, W).
        n_ellipses: (min, max) count of inner ellipses per image.
        seed: RNG seed.
        dtype: output dtype.

    Returns:
        Tensor [n, 1, H, W].
    """
    h, w = _check_size(size)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    out = np.zeros((n, 1, h, w))
    for i in range(n):
        img = _ellipse(xx, yy, 0.0, 0.0, 0.85 + 0.1 * rng.random(), 0.75 + 0.1 * rng.random(),
                       rng.uniform(0, math.pi)) * 0.5
        for _ in range(rng.integers(n_ellipses[0], n_ellipses[1] + 1)):
            cx, cy = rng.uniform(-0.5, 0.5, size=2)
            a, b = rng.uniform(0.05, 0.35, size=2)
            img += _ellipse(xx, yy, cx, cy, a, b, rng.uniform(0, math.pi)) * rng.uniform(-0.3, 0.5)
        out[i, 0] = np.clip(img, 0.0, 1.0)
    return torch.from_numpy(out).to(dtype)


def _ellipse(xx, yy, cx, cy, a, b, theta):
    c, s = math.cos(theta), math.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return ((u / a) ** 2 + (v / b) ** 2 <= 1.0).astype(np.float64)


def disk(size=128, radius=40.0, *, supersample=4, dtype=torch.float64):
    """Centred disk (area-weighted by supersampling), centre at ((H-1)/2, (W-1)/2).

    Returns:
        Tensor [H, W] with values in [0, 1].
    """
    h, w = _check_size(size)
    s = supersample
    yy = (np.arange(h * s) + 0.5) / s - 0.5 - (h - 1) / 2
    xx = (np.arange(w * s) + 0.5) / s - 0.5 - (w - 1) / 2
    inside = (yy[:, None] ** 2 + xx[None, :] ** 2) <= radius ** 2
    return torch.from_numpy(inside.reshape(h, s, w, s).mean(axis=(1, 3))).to(dtype)


def shepp_logan(size=128, dtype=torch.float32):
    """The Shepp-Logan phantom (scikit-image's bundled copy), resized to ``size``.

    Returns:
        Tensor [H, W].
    """
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    h, w = _check_size(size)
    img = resize(shepp_logan_phantom(), (h, w), anti_aliasing=True, order=1)
    return torch.from_numpy(np.ascontiguousarray(img)).to(dtype)
