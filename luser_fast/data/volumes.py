"""Volumes: the 3-D cone-beam CT task (``ct3d``) of ``luser-fast demo --tasks ct3d`` and
the geometry of ``luser-fast memprofile --dims 3``.

The geometry scales with the side N of the N^3 volume (``conebeam_geometry``): a full
circular orbit of N angles (sparse view: a complete scan would need about pi N / 2), the
source 2 N voxels from the rotation axis (cone half-angle about 20 degrees in-plane), a
flat detector through the axis (``detector_distance`` 0, magnification 1 there) of
ceil(1.6 N) + 2 pixels square, of 1 voxel, which covers the whole volume from every
angle (its shadow spans at most 1.55 N + 1 rows and 1.52 N + 1 columns).
So the measurements, like the volume, grow as N^3 (about 2.6 N^3 values), and a training
step's bytes are affine in N^3 for fixed channels.

Ground truth: ``random_ellipsoids`` phantoms (procedural, seeded per split, so the
splits never share a volume); y = A x + n with Gaussian n of standard deviation ``noise``
times the mean |A x| of the split. Everything is a function of the arguments.
"""
from __future__ import annotations

import math

import torch

from .phantoms import random_ellipsoids
from .tasks import SPLITS, TaskData

__all__ = ["VOLUME_TASKS", "CT3D_NOISE", "conebeam_geometry", "conebeam_operator",
           "make_ct3d"]

#: tasks on volumes (``luser-fast demo --tasks``)
VOLUME_TASKS = ("ct3d",)
#: default noise level of ct3d (relative to the mean |A x|)
CT3D_NOISE = 0.03
_SPLIT_SEED = {"train": 0, "val": 1_000_003, "test": 2_000_006}


def conebeam_geometry(size: int, angles: int | None = None) -> dict:
    """The cone-beam geometry of an N^3 volume, scaled with N (module docstring).

    Args:
        size: N, the volume side (int >= 2).
        angles: projection angles over the full circle (default N).

    Returns:
        dict of ``ConeBeam`` arguments: volume_size, angles, detector_shape,
        source_distance, detector_distance, det_spacing.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size must be an int >= 2, got {size!r}")
    if angles is None:
        angles = size
    if isinstance(angles, bool) or not isinstance(angles, int) or angles < 1:
        raise ValueError(f"angles must be a positive int, got {angles!r}")
    side = math.ceil(1.6 * size) + 2
    return {"volume_size": (size, size, size), "angles": angles,
            "detector_shape": (side, side), "source_distance": 2.0 * size,
            "detector_distance": 0.0, "det_spacing": (1.0, 1.0)}


def conebeam_operator(size: int, angles: int | None = None):
    """``luser_fast.physics.ConeBeam`` with ``conebeam_geometry(size, angles)``."""
    from ..physics import ConeBeam

    return ConeBeam(**conebeam_geometry(size, angles))


def make_ct3d(size: int = 32, split: str = "train", n: int = 8, *, angles: int | None = None,
              noise: float = CT3D_NOISE, seed: int = 0, operator=None) -> TaskData:
    """A split of the ct3d task: phantom volumes, noisy cone-beam projections, operator.

    Args:
        size: volume side N.
        split: "train", "val" or "test" (each its own phantom and noise seeds).
        n: number of volumes.
        angles: projection angles (default N).
        noise: noise std relative to the mean |A x| (>= 0).
        seed: base seed of the phantoms and the noise.
        operator: reuse this operator (else ``conebeam_operator(size, angles)``).

    Returns:
        TaskData with x [n, 1, N, N, N] float32 in [0, 1], y [n, 1, A, rows, cols],
        task "ct3d".
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    op = conebeam_operator(size, angles) if operator is None else operator
    base = seed + _SPLIT_SEED[split]
    x = random_ellipsoids(n, size, seed=base + 17)
    g = torch.Generator().manual_seed(base + 7)
    with torch.no_grad():
        clean = op(x)
        y = clean + noise * clean.abs().mean() * torch.randn(clean.shape, generator=g)
    return TaskData(x=x, y=y, operator=op, task="ct3d", split=split)
