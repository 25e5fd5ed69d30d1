"""Deterministic synthetic phantoms (embedded data: generated, nothing downloaded)."""
from __future__ import annotations

import math

import numpy as np
import torch


def _phantom_setup(n, size, seed):
    """(H, W, the seeded RNG, and the [-1, 1]^2 coordinate grids yy, xx [H, W]) of a phantom
    set of ``n`` images; n is checked to be a non-negative int."""
    h, w = _check_size(size)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return h, w, np.random.default_rng(seed), yy, xx


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
    h, w, rng, yy, xx = _phantom_setup(n, size, seed)
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


def smooth_fields(n, size, *, cutoff=4.0, seed=0):
    """Low-pass Gaussian random fields: white noise filtered by a Gaussian in frequency.

    The filter is ``exp(-(|f| / cutoff)^2 / 2)`` with ``f`` in cycles per image side, so
    ``cutoff`` sets the scale of the features (about size / cutoff pixels). Each field is
    normalised to zero mean and unit standard deviation.

    Args:
        n: number of fields.
        size: int or (H, W).
        cutoff: filter width in cycles per image (> 0).
        seed: RNG seed, or a ``numpy.random.Generator`` to draw from.

    Returns:
        numpy array [n, H, W] float64.
    """
    h, w = _check_size(size)
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None] * h
    fx = np.fft.rfftfreq(w)[None, :] * w
    filt = np.exp(-(fy ** 2 + fx ** 2) / (2 * cutoff ** 2))
    fields = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((n, h, w))) * filt, s=(h, w))
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    return fields / np.maximum(fields.std(axis=(1, 2), keepdims=True), 1e-12)


def textured_ellipses(n, size=64, *, n_ellipses=(5, 12), seed=0, dtype=torch.float32):
    """Ellipse phantoms closer to anatomy: soft edges, smooth texture, fine detail.

    Like ``random_ellipses`` (a body ellipse holding 5-12 inner ellipses of random
    centre, axes, rotation and positive or negative intensity), except that:

    * every edge is a smooth ramp 0.3-2 pixels wide (partial volume, not a hard step);
    * each inner ellipse's intensity varies smoothly (a random field at 1.5-4 cycles per
      image, +-30% of its contrast), and a third of them are rings (a shell of another
      intensity, like a cortex or a vessel wall);
    * inside the body the image carries a slow intensity drift (bias field, +-10%) and a
      fine texture (random field at 6-16 cycles per image, std 0.01-0.05);
    * the body's own intensity is 0.2-0.6 and the result is clipped to [0, 1].

    The same ``seed`` gives the same images on every machine.

    Args:
        n: number of images.
        size: int or (H, W).
        n_ellipses: (min, max) count of inner ellipses per image.
        seed: RNG seed.
        dtype: output dtype.

    Returns:
        Tensor [n, 1, H, W] in [0, 1].
    """
    h, w, rng, yy, xx = _phantom_setup(n, size, seed)
    pixel = 2.0 / max(h - 1, w - 1, 1)
    out = np.zeros((n, 1, h, w))
    for i in range(n):
        body = _soft_ellipse(xx, yy, 0.0, 0.0, 0.8 + 0.15 * rng.random(),
                             0.65 + 0.25 * rng.random(), rng.uniform(0, math.pi),
                             rng.uniform(0.3, 2.0) * pixel)
        img = body * rng.uniform(0.2, 0.6)
        count = rng.integers(n_ellipses[0], n_ellipses[1] + 1)
        coarse = smooth_fields(count, (h, w), cutoff=rng.uniform(1.5, 4.0), seed=rng)
        for k in range(count):
            cx, cy = rng.uniform(-0.55, 0.55, size=2)
            a, b = rng.uniform(0.04, 0.35, size=2)
            theta = rng.uniform(0, math.pi)
            edge = rng.uniform(0.3, 2.0) * pixel
            shape = _soft_ellipse(xx, yy, cx, cy, a, b, theta, edge)
            value = rng.uniform(-0.3, 0.5) * (1 + 0.3 * coarse[k])
            if rng.random() < 1 / 3:
                t = rng.uniform(0.15, 0.5)
                inner = _soft_ellipse(xx, yy, cx, cy, a * (1 - t), b * (1 - t), theta, edge)
                img += (shape - inner) * value + inner * rng.uniform(-0.3, 0.5)
            else:
                img += shape * value
        drift = 1 + 0.1 * smooth_fields(1, (h, w), cutoff=1.0, seed=rng)[0]
        fine = rng.uniform(0.01, 0.05) * smooth_fields(1, (h, w), cutoff=rng.uniform(6, 16),
                                                       seed=rng)[0]
        out[i, 0] = np.clip(img * drift + fine * body, 0.0, 1.0)
    return torch.from_numpy(out).to(dtype)


def _soft_ellipse(xx, yy, cx, cy, a, b, theta, edge):
    """Ellipse indicator with a linear ramp of width ~``edge`` (image units) at its rim."""
    c, s = math.cos(theta), math.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    # distance to the rim along the radius, approximately, in image units
    return np.clip(0.5 + (1.0 - r) * min(a, b) / edge, 0.0, 1.0)


def smooth_phase(n, size=64, *, seed=0, dtype=torch.float32):
    """Random smooth MRI phase maps: a low-order polynomial plus a low-pass random field.

    phi(x, y) = c0 + c1 x + c2 y + c3 x^2 + c4 x y + c5 y^2 + 0.5 g(x, y), with x, y in
    [-1, 1] over the image, c0 uniform in [-pi, pi), the linear coefficients uniform in
    [-pi/2, pi/2] (k-space shifted by at most half a sample), the quadratic ones uniform in
    [-pi/4, pi/4], and g a unit-std random field at 1.5 cycles per image (``smooth_fields``).

    Args:
        n: number of maps.
        size: int or (H, W).
        seed: RNG seed.
        dtype: output dtype (real).

    Returns:
        Tensor [n, 1, H, W] of phases in radians.
    """
    h, w, rng, yy, xx = _phantom_setup(n, size, seed)
    basis = np.stack([np.ones_like(xx), xx, yy, xx ** 2, xx * yy, yy ** 2])
    bound = np.array([math.pi, math.pi / 2, math.pi / 2, math.pi / 4, math.pi / 4, math.pi / 4])
    coef = rng.uniform(-1, 1, size=(n, 6)) * bound
    phase = np.einsum("nk,khw->nhw", coef, basis)
    phase += 0.5 * smooth_fields(n, (h, w), cutoff=1.5, seed=rng)
    return torch.from_numpy(phase[:, None]).to(dtype)


def random_ellipsoids(n, size=32, *, n_ellipsoids=(5, 12), seed=0, dtype=torch.float32):
    """Random-ellipsoid volumes in [0, 1]: the 3-D counterpart of ``textured_ellipses``,
    for cone-beam CT (procedural, nothing downloaded).

    Each volume is a body ellipsoid (intensity 0.2-0.6, semi-axes 0.65-0.95 of the half
    side) holding 5-12 inner ellipsoids of random centre, semi-axes (0.06-0.4), 3-D
    orientation (a uniformly random rotation) and positive or negative intensity
    (-0.3..0.5); a third of them are shells (another intensity inside). Every surface is a
    linear ramp about 0.5-1.5 voxels wide (partial volume, not a step), the body carries
    a slow intensity drift (+-10% along a random direction), and the sum is clipped to
    [0, 1]. The same ``seed`` gives the same volumes on every machine.

    Args:
        n: number of volumes (int >= 0).
        size: int or (D, H, W), each >= 1.
        n_ellipsoids: (min, max) count of inner ellipsoids per volume.
        seed: RNG seed.
        dtype: output dtype.

    Returns:
        Tensor [n, 1, D, H, W].
    """
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size)):
        raise ValueError(f"size must be a positive int or (D, H, W), got {size!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    lo, hi = n_ellipsoids
    d, h, w = size
    # (z, y, x) in [-1, 1] per axis, float32 to keep large volumes light
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in (d, h, w)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    points = np.stack([zz, yy, xx])                       # [3, D, H, W]
    voxel = 2.0 / max(d - 1, h - 1, w - 1, 1)
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 1, d, h, w), dtype=np.float32)
    for i in range(n):
        body = _soft_ellipsoid(points, np.zeros(3), rng.uniform(0.65, 0.95, 3),
                               _rotation(rng), rng.uniform(0.5, 1.5) * voxel)
        vol = body * rng.uniform(0.2, 0.6)
        for _ in range(rng.integers(lo, hi + 1)):
            centre = rng.uniform(-0.5, 0.5, 3)
            semi = rng.uniform(0.06, 0.4, 3)
            rot = _rotation(rng)
            edge = rng.uniform(0.5, 1.5) * voxel
            shape = _soft_ellipsoid(points, centre, semi, rot, edge)
            value = rng.uniform(-0.3, 0.5)
            if rng.random() < 1 / 3:
                inner = _soft_ellipsoid(points, centre, semi * rng.uniform(0.5, 0.85), rot, edge)
                vol += (shape - inner) * value + inner * rng.uniform(-0.3, 0.5)
            else:
                vol += shape * value
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        drift = 1 + 0.1 * np.tensordot(direction.astype(np.float32), points, axes=1)
        out[i, 0] = np.clip(vol * drift, 0.0, 1.0)
    return torch.from_numpy(out).to(dtype)


def _rotation(rng):
    """A uniformly random 3-D rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _soft_ellipsoid(points, centre, semi, rot, edge):
    """Ellipsoid indicator on ``points`` [3, ...] with a linear ramp ~``edge`` wide (the
    units of ``points``) at its surface."""
    rel = points - centre.astype(np.float32)[:, None, None, None]
    u = np.tensordot(rot.T.astype(np.float32), rel, axes=1)          # body frame
    r = np.sqrt(sum((u[k] / semi[k]) ** 2 for k in range(3)))
    return np.clip(0.5 + (1.0 - r) * (min(semi) / edge), 0.0, 1.0)
