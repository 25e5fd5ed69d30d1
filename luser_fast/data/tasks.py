"""The four reconstruction tasks as deterministic (x, y, operator) datasets.

==========  ==========================================  ==============================
task        ground truth x                              operator A (defaults)
==========  ==========================================  ==============================
deblur      patches of scikit-image's bundled images    Gaussian ``Blur``, sigma 1.5
ct          anatomy-like mix (below)                    parallel ``Radon``, 60 angles
mri         anatomy-like mix, smooth random phase       Cartesian ``MRI``, 4x mask
nufft-mri   anatomy-like mix, smooth random phase       radial ``NUFFT``, 4x fewer spokes
==========  ==========================================  ==============================

The anatomy-like mix: half ``textured_ellipses`` phantoms (soft edges, smooth texture,
rings, bias field), half patches of scikit-image's bundled images taken at 1/2, 1/4 or 1/8
of their resolution (whole objects at about the scale of a 64x64 scan; random flips and
transposes). For the MRI tasks the magnitude is multiplied by exp(i phi), phi a
``smooth_phase`` map, so that the networks do not learn that images are real.
Hard-edged flat ellipses of zero phase (``random_ellipses``, the built-in set of earlier
versions) teach a prior that real anatomy breaks. With the demo's training (250 steps),
LU and LUSER trained on them fell below x0 on the real MR slices of
``luser_fast.data.real`` (by 1.2-1.4 dB with zero phase, 5-8 dB with a smooth phase) and
gained +2.6 and +1.3 dB over FBP on the real CT slices. Trained on this mix they gain
+4.3 and +3.6 dB on the CT slices and +2.9 and +3.3 dB on the radial (nufft-mri) MR
slices; on the Cartesian (mri) MR slices they stay at x0 (within 0.1 dB with a smooth
phase, LUSER 0.5 dB below with zero phase), and LU gains 0.6 dB after 1000 steps.

y = A x + n, with n Gaussian (circular complex for MRI) of standard deviation ``noise``
times the mean absolute value of A x over the split. ``data`` (a PNG/NPY folder, or a
fastMRI / LoDoPaB-CT HDF5 file) replaces the built-in ground truth; measurements are then
simulated from its images with the task's operator, so every task keeps one geometry.

Everything is a function of the config and the split: the same config gives the same
tensors on every machine. Splits hold out data: phantoms use different seeds, bundled and
user images are split by image (train / val / test never share an image when there are
at least 3 images).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .phantoms import disk, smooth_phase, textured_ellipses

__all__ = ["TASKS", "SPLITS", "TaskConfig", "TaskData", "build_operator", "ground_truth",
           "make_task", "cartesian_mask", "radial_trajectory", "bundled_images", "fit_images",
           "measure", "with_phase", "NATURAL_FRACTION"]

TASKS = ("deblur", "ct", "mri", "nufft-mri")
SPLITS = ("train", "val", "test")
_SPLIT_SEED = {"train": 0, "val": 1_000_003, "test": 2_000_006}
_DEFAULT_NOISE = {"deblur": 0.01, "ct": 0.03, "mri": 0.02, "nufft-mri": 0.02}
#: bundled scikit-image images per split (natural images and textures)
#: (``cat`` is ``chelsea`` under another name, so it is not listed)
_BUNDLED = {
    "train": ("camera", "astronaut", "coins", "moon", "brick", "grass", "coffee", "rocket",
              "immunohistochemistry", "cell"),
    "val": ("gravel", "page"),
    "test": ("chelsea", "text", "clock"),
}
#: a patch whose std is below this is redrawn (up to _PATCH_TRIES times): flat patches
#: say nothing about deblurring and make mean PSNR meaningless
_MIN_PATCH_STD = 0.05
_PATCH_TRIES = 20
#: share of natural-image patches in the built-in ct / mri / nufft-mri ground truth (the
#: rest are ``textured_ellipses`` phantoms)
NATURAL_FRACTION = 0.5
#: resolutions at which the mix takes its natural-image patches (fractions of the original)
_PATCH_SCALES = (0.5, 0.25, 0.125)
#: seed offsets of the mix's phantoms and of the MRI phase maps (from the split's seed)
_PHANTOM_SEED, _PHASE_SEED = 11, 13
_MRI_TASKS = ("mri", "nufft-mri")


@dataclass
class TaskConfig:
    """What defines a task's data and operator.

    Attributes:
        task: one of ``TASKS``.
        size: image side (H = W).
        noise: noise std relative to the mean |A x|; None takes the task default
            (deblur 0.01, ct 0.03, mri 0.02, nufft-mri 0.02).
        angles: CT projection angles.
        sigma: deblur Gaussian blur std in pixels.
        acceleration: MRI undersampling factor (Cartesian lines or radial spokes).
        center_fraction: fraction of central k-space lines always sampled (Cartesian).
        data: optional path of a PNG/NPY folder or an HDF5 file of ground-truth images.
        seed: seed of the phantoms, patches, mask and noise.
    """

    task: str = "ct"
    size: int = 64
    noise: float | None = None
    angles: int = 60
    sigma: float = 1.5
    acceleration: float = 4.0
    center_fraction: float = 0.08
    data: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 8:
            raise ValueError(f"size must be an int >= 8, got {self.size!r}")
        if self.noise is None:
            self.noise = _DEFAULT_NOISE[self.task]
        if not (isinstance(self.noise, (int, float)) and math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise!r}")
        if isinstance(self.angles, bool) or not isinstance(self.angles, int) or self.angles < 1:
            raise ValueError(f"angles must be a positive int, got {self.angles!r}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}")
        if not self.acceleration >= 1:
            raise ValueError(f"acceleration must be >= 1, got {self.acceleration!r}")
        if not 0 < self.center_fraction <= 1:
            raise ValueError(f"center_fraction must be in (0, 1], got {self.center_fraction!r}")
        if self.data is not None and not os.path.exists(self.data):
            raise FileNotFoundError(f"--data {self.data!r}: no such file or folder")

    def to_dict(self):
        """Plain dict (for checkpoints); ``TaskConfig(**d)`` rebuilds it."""
        return asdict(self)


@dataclass
class TaskData:
    """One split of a task.

    Attributes:
        x: ground truth [N, 1, H, W]: float32 (deblur, ct) or complex64 (mri, nufft-mri).
        y: measurements, ``operator(x)`` plus noise.
        operator: the forward model (a ``luser_fast.physics`` module).
        task, split: names.
    """

    x: torch.Tensor
    y: torch.Tensor
    operator: torch.nn.Module
    task: str
    split: str

    @property
    def complex(self) -> bool:
        """Whether images are complex (they then enter the networks as 2 channels)."""
        return self.x.is_complex()

    @property
    def in_channels(self) -> int:
        """Network input channels: 2 for complex images, else 1."""
        return 2 if self.complex else 1

    def __len__(self):
        return self.x.shape[0]


def cartesian_mask(size, acceleration=4.0, center_fraction=0.08, seed=0):
    """Cartesian undersampling mask: whole k-space columns (phase encodes along W).

    The central ``round(center_fraction * W)`` columns are always sampled; the others are
    drawn without replacement so that ``round(W / acceleration)`` columns are sampled.

    Returns:
        Tensor [H, W] float32 of 0/1, constant along H.
    """
    h = w = size
    n_total = max(1, round(w / acceleration))
    n_center = min(n_total, max(1, round(center_fraction * w)))
    start = w // 2 - n_center // 2
    cols = set(range(start, start + n_center))
    rest = np.array([c for c in range(w) if c not in cols])
    rng = np.random.default_rng(seed)
    cols |= set(rng.choice(rest, size=n_total - len(cols), replace=False).tolist())
    mask = torch.zeros(h, w)
    mask[:, sorted(cols)] = 1.0
    return mask


def radial_trajectory(size, acceleration=4.0):
    """Golden-angle radial trajectory with ``size`` samples per spoke.

    Nyquist needs pi/2 * size spokes; this takes ``ceil(pi / 2 * size / acceleration)``.

    Returns:
        (ktraj [M, 2] radians in [-pi, pi), density [M] ramp weights |k| / pi with the
        centre sample weighted like a ring of half a sample's width).
    """
    spokes = math.ceil(math.pi / 2 * size / acceleration)
    r = (torch.arange(size, dtype=torch.float64) - size / 2) * (2 * math.pi / size)
    theta = torch.arange(spokes, dtype=torch.float64) * (math.pi * (math.sqrt(5) - 1) / 2)
    kh = r[None, :] * torch.cos(theta)[:, None]
    kw = r[None, :] * torch.sin(theta)[:, None]
    ktraj = torch.stack([kh.reshape(-1), kw.reshape(-1)], dim=1).clamp(-math.pi, math.pi - 1e-9)
    density = r.abs().clamp_min(math.pi / (2 * size)).repeat(spokes) / math.pi
    return ktraj.float(), density.float()


def build_operator(cfg: TaskConfig) -> torch.nn.Module:
    """The task's forward model, a function of the config only."""
    from ..physics import MRI, NUFFT, Blur, Radon

    if cfg.task == "deblur":
        return Blur(sigma=cfg.sigma, image_size=cfg.size)
    if cfg.task == "ct":
        return Radon(cfg.size, angles=cfg.angles)
    if cfg.task == "mri":
        return MRI(cartesian_mask(cfg.size, cfg.acceleration, cfg.center_fraction, cfg.seed))
    ktraj, density = radial_trajectory(cfg.size, cfg.acceleration)
    # Scale the ramp so that A^H A keeps a smooth image's energy (A^H y is then a
    # usable x0 on the image's own scale); A^H A is linear in the density weights.
    blob = disk(cfg.size, cfg.size / 4, dtype=torch.float32).to(torch.complex64)[None, None]
    op = NUFFT(ktraj, cfg.size, density=density, tol=1e-4)
    with torch.no_grad():
        gain = (blob.conj() * op.normal(blob)).real.sum() / blob.abs().square().sum()
    return NUFFT(ktraj, cfg.size, density=density / gain, tol=1e-4)


def bundled_images(split):
    """scikit-image's bundled images held out for ``split``, grey, in [0, 1].

    Returns:
        list of Tensor [H, W] float32.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return list(_bundled(split))


@functools.lru_cache(maxsize=None)
def _bundled(split):
    import skimage.data as skd
    from skimage.color import rgb2gray

    out = []
    for name in _BUNDLED[split]:
        img = np.asarray(getattr(skd, name)(), dtype=np.float64)
        if img.ndim == 3:
            img = rgb2gray(img[..., :3])
        img = img - img.min()
        out.append(torch.from_numpy(img / max(img.max(), 1e-12)).float())
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _pyramid(split):
    """``_bundled(split)`` at each of ``_PATCH_SCALES`` (anti-aliased), flat tuple."""
    from skimage.transform import rescale

    out = []
    for img in _bundled(split):
        for s in _PATCH_SCALES:
            arr = img.numpy() if s == 1 else rescale(img.numpy(), s, anti_aliasing=True, order=1)
            out.append(torch.from_numpy(np.ascontiguousarray(arr)).float())
    return tuple(out)


def _anatomy(cfg, split, n, rng):
    """The anatomy-like mix: ``round(NATURAL_FRACTION * n)`` multi-scale natural patches
    at random positions of the batch, ``textured_ellipses`` elsewhere. [n, 1, S, S]."""
    k = round(NATURAL_FRACTION * n)
    seed = cfg.seed + _SPLIT_SEED[split] + _PHANTOM_SEED
    out = torch.empty(n, 1, cfg.size, cfg.size)
    where = torch.from_numpy(rng.permutation(n)[:k])
    phantom = torch.ones(n, dtype=torch.bool)
    phantom[where] = False
    if k:
        patches = _patches(list(_pyramid(split)), k, cfg.size, rng)
        for i in range(k):
            p = patches[i, 0]
            if rng.random() < 0.5:
                p = p.flip(-1)
            if rng.random() < 0.5:
                p = p.flip(-2)
            if rng.random() < 0.5:
                p = p.transpose(-1, -2)
            patches[i, 0] = p.clone()
        out[where] = patches
    if k < n:
        out[phantom] = textured_ellipses(n - k, cfg.size, seed=seed)
    return out


def _user_images(path, split):
    from .folders import read_folder
    from .h5 import read_h5_images

    images = read_folder(path) if os.path.isdir(path) else read_h5_images(path)
    n = len(images)
    if n < 3:
        return images
    k = max(1, math.ceil(n / 10))
    parts = {"train": images[:n - 2 * k], "val": images[n - 2 * k:n - k], "test": images[n - k:]}
    return parts[split]


def _patches(images, n, size, rng):
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        for _ in range(_PATCH_TRIES):
            img = images[rng.integers(len(images))]
            if min(img.shape) < size:
                img = _resize(img, size)
            top = rng.integers(img.shape[0] - size + 1)
            left = rng.integers(img.shape[1] - size + 1)
            out[i, 0] = img[top:top + size, left:left + size]
            if out[i, 0].std() >= _MIN_PATCH_STD:
                break
    return out


def _resize(img, size):
    from skimage.transform import resize

    h, w = img.shape
    scale = size / min(h, w)
    shape = (max(size, round(h * scale)), max(size, round(w * scale)))
    return torch.from_numpy(resize(img.numpy(), shape, anti_aliasing=True, order=1)).float()


def _whole(images, n, size):
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        img = _resize(images[i % len(images)], size)
        top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        out[i, 0] = img[top:top + size, left:left + size]
    return out.clamp(0, 1)


def ground_truth(cfg: TaskConfig, split: str, n: int) -> torch.Tensor:
    """Ground-truth images of a split, real in [0, 1].

    Built-in sources: bundled-image patches (deblur; a patch with std below 0.05 is redrawn,
    up to 20 times) or the anatomy-like mix of the module docstring (other tasks; its
    patches come from the split's own bundled images, so splits stay disjoint).
    With ``cfg.data``: random patches of its images for deblur, its images resized and
    centre-cropped to ``size`` (cycled to reach n) for the other tasks.

    Returns:
        Tensor [n, 1, size, size] float32.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    seed = cfg.seed + _SPLIT_SEED[split]
    rng = np.random.default_rng(seed)
    if cfg.data is not None:
        images = _user_images(cfg.data, split)
        if cfg.task == "deblur":
            return _patches(images, n, cfg.size, rng)
        return _whole(images, n, cfg.size)
    if cfg.task == "deblur":
        return _patches(bundled_images(split), n, cfg.size, rng)
    return _anatomy(cfg, split, n, rng)


def make_task(cfg: TaskConfig, split: str = "train", n: int = 64, operator=None) -> TaskData:
    """A split of a task: ground truth, noisy measurements and the operator.

    Args:
        cfg: the task config.
        split: "train", "val" or "test".
        n: number of samples.
        operator: reuse this operator (else ``build_operator(cfg)``).

    Returns:
        TaskData with x [n, 1, H, W] and y [n, ...] (float32 or complex64).

    Example:
        >>> d = make_task(TaskConfig("ct", size=64), "train", 32)
        >>> d.x.shape, d.y.shape
        (torch.Size([32, 1, 64, 64]), torch.Size([32, 1, 60, 91]))
    """
    op = build_operator(cfg) if operator is None else operator
    x = ground_truth(cfg, split, n)
    if cfg.task in _MRI_TASKS and cfg.data is None:
        x = with_phase(x, cfg.seed + _SPLIT_SEED[split] + _PHASE_SEED)
    return measure(cfg, x, split, operator=op)


def with_phase(x, seed):
    """Magnitude images times exp(i phi), phi from ``smooth_phase`` (the MRI tasks' phase).

    Args:
        x: [N, 1, H, W] real, the magnitudes.
        seed: seed of the phase maps.

    Returns:
        Tensor [N, 1, H, W] complex64 with ``|out| == x``.
    """
    if x.is_complex() or x.dim() != 4:
        raise ValueError(f"x must be real [N, 1, H, W], got {x.dtype} {tuple(x.shape)}")
    phi = smooth_phase(x.shape[0], tuple(x.shape[-2:]), seed=seed)
    return torch.polar(x.float(), phi)


# ---------------------------------------------------------------------------------------
# Measurements of given images (make_task's simulation, also used by ``luser-fast eval
# --data`` on a checkpoint's task)
# ---------------------------------------------------------------------------------------


def fit_images(images, size):
    """Images resized and centre-cropped to ``size`` as ``ground_truth`` does with ``data``.

    Args:
        images: list of Tensor [H_i, W_i] real (sizes may differ).
        size: output side.

    Returns:
        Tensor [len(images), 1, size, size] float32, clamped to [0, 1].
    """
    return _whole(images, len(images), size)


def measure(cfg: TaskConfig, x: torch.Tensor, split: str = "test", operator=None) -> TaskData:
    """The task's measurements of given ground truth: y = A x + noise, as in ``make_task``.

    x becomes complex64 for the MRI tasks; the noise has the task's level (relative to the
    mean |A x| of ``x``) and the split's seed.

    Args:
        cfg: the task config.
        x: ground truth [N, 1, size, size], real in [0, 1].
        split: "train", "val" or "test" (selects the noise seed).
        operator: reuse this operator (else ``build_operator(cfg)``).

    Returns:
        TaskData with x [N, 1, H, W] and y [N, ...] (float32 or complex64).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    op = build_operator(cfg) if operator is None else operator
    if cfg.task in ("mri", "nufft-mri"):
        x = x.to(torch.complex64)
    g = torch.Generator().manual_seed(cfg.seed + _SPLIT_SEED[split] + 7)
    with torch.no_grad():
        clean = op(x)
        scale = cfg.noise * clean.abs().mean()
        if clean.is_complex():
            re = torch.randn(clean.shape, generator=g)
            im = torch.randn(clean.shape, generator=g)
            noise = torch.complex(re, im) / math.sqrt(2)
        else:
            noise = torch.randn(clean.shape, generator=g)
        y = clean + scale * noise.to(clean.dtype)
    return TaskData(x=x, y=y, operator=op, task=cfg.task, split=split)
