"""3-D cone-beam (and parallel-beam) CT geometry shared by every implementation.

The reference (``luser_fast/reference/conebeam.py``), the C++ and CUDA kernels and the
``ConeBeam`` operator follow the conventions below; the functions here (geometry
validation, the rays, FDK) are the one definition each of them uses. In every plane
``z = const`` the conventions are those of the 2-D Radon transform
(``luser_fast/core/radon_geometry.py``), which this module extends along the rotation axis.

Volume coordinates. Voxels have size 1. A volume is ``[..., D, H, W]``; voxel ``(k, i, j)``
has its centre at ``z = k - (D - 1) / 2``, ``y = (H - 1) / 2 - i``, ``x = j - (W - 1) / 2``.
The rotation axis is the z axis (along D) through the volume centre.

Orbit. For an angle ``t`` (radians, used in float64) let ``n = (cos t, sin t, 0)`` and
``e = (-sin t, cos t, 0)``: ``e`` is the direction of the central ray, ``n`` the detector's
column direction, ``zhat = (0, 0, 1)`` its row direction. ``int`` angle counts give
``t_k = 2 pi k / A`` (cone beam) or ``t_k = pi k / A`` (parallel beam).

Detector. A flat detector of ``rows x cols`` pixels with spacings ``(sr, sc) =
det_spacing``; pixel ``(r, c)`` sits at offsets ``u_c = (c - (cols - 1) / 2) * sc``
(along ``n``) and ``v_r = (r - (rows - 1) / 2) * sr`` (along z) from the detector centre.
Projections are ``[..., A, rows, cols]``.

Cone beam (``source_distance = R``). The source is at ``S = -R e`` (``z = 0``), the
detector plane at ``Dd e`` (``Dd = detector_distance``, default 0: a virtual detector
through the rotation axis, so ``det_spacing`` is then measured at the isocentre); pixel
``(r, c)`` is at ``P = Dd e + u_c n + v_r zhat`` and measures the line integral along the
ray from ``S`` through ``P``: origin ``S``, direction ``(P - S) / |P - S|``. The whole
line is integrated; ``R`` must exceed the volume's in-plane half-diagonal
``hypot(H, W) / 2`` so the source stays outside. The central detector row (``v = 0``,
odd ``rows``) of a volume with odd D is exactly the 2-D fan-beam Radon transform of the
central slice (same R, Dd, ``sc``, ``cols`` detectors). Distances and the detector's
half-extents ``(cols - 1) / 2 * sc`` and ``(rows - 1) / 2 * sr`` are each at most
``FAN_RANGE * max(D, H, W)``, the bound of the 2-D fan beam
(``radon_geometry``, "Fan-beam range"), for the same reason: beyond it float64 rounding
in the ray geometry outgrows the difference from parallel beam.

Parallel beam (``source_distance = None``, ``detector_distance = None``). Pixel
``(r, c)`` measures the line through ``u_c n + v_r zhat`` along ``e``: a stack of 2-D
parallel Radon transforms, one per detector row, of the plane ``z = v_r`` (interpolated
linearly between slices). With ``sr = 1`` and ``rows = D`` row ``r`` is exactly the 2-D
parallel Radon transform (``det_spacing = sc``) of slice ``r``.

Discretisation (Joseph in 3-D). A ray ``o + t d`` (``|d| = 1``) is x-major when
``|d_x| >= |d_y|`` and ``|d_x| >= |d_z|``, else y-major when ``|d_y| >= |d_z|``, else
z-major (ties: x before y before z). It takes one sample per voxel plane across its major
axis: an x-major ray visits every column ``j`` (``x_j = j - (W - 1) / 2``), where it has
fractional row ``f_i = (H - 1) / 2 - y`` and fractional slice ``f_k = z + (D - 1) / 2``,
and takes the bilinear interpolation of the slab ``x[..., :, :, j]`` at ``(f_k, f_i)``,
voxels outside the volume counting as zero; the sum over ``j`` is scaled by
``1 / |d_x|``, the path length per column. y- and z-major rays do the same across rows
(``f_j = x + (W - 1) / 2``, scale ``1 / |d_y|``) and slices (scale ``1 / |d_z|``). Along
the ray both fractional indices are affine in the step index, which is how the reference
computes them (``joseph_steps``). Geometry and weights are float64, cast to the data dtype;
the adjoint scatters the very same (voxel, weight) pairs, so it is the exact transpose.

FDK (Feldkamp, Davis and Kress). Cone beam, in detector coordinates scaled to the
isocentre (``u' = u R / (R + Dd)``, spacing ``tau = sc R / (R + Dd)``):

1. pre-weighting: each pixel times ``(R + Dd) / sqrt((R + Dd)^2 + u^2 + v^2)`` (cosine
   weights) and the angular weight ``w_a`` of its ray (below);
2. ramp-family filtering along each detector row: the 2-D FBP filter
   (``radon_geometry.fbp_filter``: band-limited ramp, zero padding, windows ramp,
   shepp-logan, cosine, hann) divided by ``tau``;
3. voxel-driven, distance-weighted back-projection: a voxel at ``p`` projects to the
   detector at ``u = (R + Dd) (p . n) / U``, ``v = (R + Dd) z / U`` with
   ``U = R + p . e`` (its distance from the source along the central ray); the filtered
   projection is sampled there bilinearly (zero outside the detector), weighted by
   ``R^2 / U^2`` and summed over angles.

Full circle: the angles (mod 2 pi) leave no gap wider than ``SHORT_SCAN_GAP`` times the
mean spacing ``2 pi / A``; ``w_a`` is half the sum of the gaps to the two neighbours (the
trapezoidal rule on the circle, ``2 pi / A`` for uniform angles), times 1/2 as every line
is measured twice. Short scan: otherwise. The scan starts after the widest gap, ``beta``
is the angle from its start and ``Delta`` its span; ``w_a`` is the trapezoidal rule on
``[0, Delta]`` times the Parker weight of the ray (generalised to an overscan
``delta = (Delta - pi) / 2`` at least the half fan angle ``gamma_m``; Wesarg et al. 2002)::

    w(beta, g) = sin^2(pi/4 * beta / (delta - g))             0 <= beta < 2 (delta - g)
               = 1                                           up to pi - 2 g
               = sin^2(pi/4 * (pi + 2 delta - beta) / (delta + g))   up to pi + 2 delta

with ``g = -atan(u / (R + Dd))``: in this geometry the ray (t, u) is also measured, reversed,
by the ray at ``t + pi + 2 g`` with ``-g``, and the two weights sum to 1. A span below
``pi + 2 gamma_m`` cannot be weighted this way and is refused.
The result is scaled so that ``fdk(forward(x)) ~ x`` for a smooth ``x``, enough angles and
a detector that sees the whole volume; away from the central plane the cone-beam data
misses some planes (Tuy's condition), so accuracy drops as the cone angle grows.

Parallel beam FDK is the 2-D FBP (``radon_geometry.fbp``) of every detector row, then
linear interpolation from the rows' planes ``z = v_r`` to the volume's slices.
"""
from __future__ import annotations

import math

import torch

from . import radon_geometry, validate

__all__ = ["FAN_RANGE", "FILTERS", "SHORT_SCAN_GAP", "volume_size", "detector_shape",
           "check_geometry", "forward_args", "adjoint_args", "uniform_angles", "rays",
           "joseph_steps", "fdk_angle_weights", "parker_weights", "fdk"]

FAN_RANGE = radon_geometry.FAN_RANGE
FILTERS = radon_geometry.FILTERS
#: FDK treats angles as a full circle when no gap between neighbours (mod 2 pi) is wider
#: than this multiple of the mean spacing 2 pi / A (two interleaved rotations give 2)
SHORT_SCAN_GAP = 2.5
#: elements of one FDK back-projection chunk (angles x images x voxels): bounds its memory
_FDK_CHUNK_ELEMS = 1 << 24


def _int_tuple(value, n: int, name: str, what: str, fn: str) -> tuple[int, ...]:
    if validate.is_int(value):
        out = (int(value),) * n
    elif (isinstance(value, (tuple, list, torch.Size)) and len(value) == n
          and all(validate.is_int(v) for v in value)):
        out = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{fn}: {name} must be an int or {n} ints {what}, got {value!r}")
    if min(out) < 1:
        raise ValueError(f"{fn}: {name} must be positive, got {value!r}")
    return out


def volume_size(value, fn: str) -> tuple[int, int, int]:
    """(D, H, W) from an int or three ints, all positive."""
    return _int_tuple(value, 3, "volume_size", "(D, H, W)", fn)


def detector_shape(value, fn: str) -> tuple[int, int]:
    """(rows, cols) from an int or two ints, both positive."""
    return _int_tuple(value, 2, "detector_shape", "(rows, cols)", fn)


def _spacing(value, fn: str) -> tuple[float, float]:
    if validate.is_real(value):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(validate.is_real(v) for v in value)):
        raise TypeError(f"{fn}: det_spacing must be a real number or a pair (row, column) "
                        f"of real numbers, got {value!r}")
    if not all(math.isfinite(v) and v > 0 for v in value):
        raise ValueError(f"{fn}: det_spacing must be positive and finite, got {value!r}")
    return float(value[0]), float(value[1])


def check_geometry(size, shape, det_spacing, source_distance, detector_distance, fn: str):
    """Validate a geometry (module docstring) for a volume ``size`` (D, H, W) and a
    detector ``shape`` (rows, cols), both already validated; return
    ``(spacing (sr, sc), R or None, Dd or None)`` as floats (``Dd`` 0.0 for a cone beam
    given none)."""
    d, h, w = size
    rows, cols = shape
    spacing = _spacing(det_spacing, fn)
    source_distance, detector_distance = radon_geometry.check_distances(
        source_distance, detector_distance, (h, w), fn, "cone",
        "the volume's in-plane half-diagonal hypot(H, W) / 2 = {:.4g} (the source must lie "
        "outside the volume)")
    if source_distance is None:
        return spacing, None, None
    limit = FAN_RANGE * max(d, h, w)
    for name, value in (("source_distance", source_distance),
                        ("detector_distance", detector_distance),
                        ("det_spacing", (cols - 1) / 2 * spacing[1]),
                        ("det_spacing", (rows - 1) / 2 * spacing[0])):
        if value > limit:
            what = (f"det_spacing {det_spacing!r} makes a detector half-extent {value:.4g}, "
                    "which" if name == "det_spacing" else f"{name} = {value:.4g}")
            raise ValueError(f"{fn}: {what} exceeds {FAN_RANGE} * max(D, H, W) = {limit:.4g}, "
                             "beyond which the float64 cone-beam geometry loses accuracy "
                             "(luser_fast/core/conebeam_geometry.py)")
    return spacing, float(source_distance), float(detector_distance)


def _counts_fit(fn: str, **counts) -> None:
    for name, value in counts.items():
        if value >= 2 ** 24:
            raise ValueError(f"{fn}: {name} must be below 2^24, got {value}")


def forward_args(x, angles, shape, det_spacing, source_distance, detector_distance,
                 fn: str):
    """Validate a projection's arguments (x a real [..., D, H, W] volume, angles on its
    device, projections that fit in memory); return
    ``(angles float64, (rows, cols), (sr, sc), R or None, Dd or None)``."""
    validate.real_tensor(x, "x", fn, min_dim=3)
    size = tuple(x.shape[-3:])
    if min(size) == 0:
        raise ValueError(f"{fn}: x must have a non-empty volume (D, H, W), got shape "
                         f"{tuple(x.shape)}")
    if isinstance(angles, torch.Tensor):
        validate.same_device(fn, x=x, angles=angles)
    angles = validate.angles(angles, fn, x.device)
    shape = detector_shape(shape, fn)
    geometry = check_geometry(size, shape, det_spacing, source_distance, detector_distance,
                              fn)
    _counts_fit(fn, depth=size[0], height=size[1], width=size[2], rows=shape[0],
                cols=shape[1], **{"the number of angles": angles.numel()})
    validate.allocation(fn, "the projections", (*x.shape[:-3], angles.numel(), *shape),
                        x.dtype, x.device)
    return (angles, shape, *geometry)


def adjoint_args(proj, angles, size, det_spacing, source_distance, detector_distance,
                 fn: str):
    """Validate a back-projection's arguments (proj a real [..., A, rows, cols] stack,
    angles on its device, a volume that fits in memory); return
    ``(angles float64, (D, H, W), (rows, cols), (sr, sc), R or None, Dd or None)``."""
    validate.real_tensor(proj, "proj", fn, min_dim=3)
    size = volume_size(size, fn)
    if isinstance(angles, torch.Tensor):
        validate.same_device(fn, proj=proj, angles=angles)
    angles = validate.angles(angles, fn, proj.device)
    if proj.shape[-3] != angles.numel() or min(proj.shape[-2:]) == 0:
        raise ValueError(f"{fn}: proj must end in (A, rows, cols) with A = {angles.numel()} "
                         f"angles and a non-empty detector, got shape {tuple(proj.shape)}")
    shape = (int(proj.shape[-2]), int(proj.shape[-1]))
    geometry = check_geometry(size, shape, det_spacing, source_distance, detector_distance,
                              fn)
    _counts_fit(fn, depth=size[0], height=size[1], width=size[2], rows=shape[0],
                cols=shape[1], **{"the number of angles": angles.numel()})
    validate.allocation(fn, "the volume", (*proj.shape[:-3], *size), proj.dtype, proj.device)
    return (angles, size, shape, *geometry)


def uniform_angles(count: int, cone: bool) -> torch.Tensor:
    """``count`` float64 angles ``2 pi k / A`` (cone) or ``pi k / A`` (parallel)."""
    span = 2 * math.pi if cone else math.pi
    return torch.arange(int(count), dtype=torch.float64) * (span / count)


def rays(angles: torch.Tensor, shape: tuple[int, int], spacing: tuple[float, float],
         src: float | None, det: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Origin and unit direction of every ray (module docstring), float64.

    Args:
        angles: [A] float64 radians.
        shape: (rows, cols); spacing: (sr, sc).
        src, det: R and Dd (cone beam; ``det`` None counts as 0), or None (parallel).
    Returns:
        origin, direction: [A * rows * cols, 3] float64 (x, y, z), ray index
        ``(a * rows + r) * cols + c``.
    """
    rows, cols = shape
    dev = angles.device
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    n = torch.stack((cos, sin, zero), -1)[:, None, None, :]
    e = torch.stack((-sin, cos, zero), -1)[:, None, None, :]
    zhat = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=dev)
    u = (torch.arange(cols, dtype=torch.float64, device=dev) - (cols - 1) / 2) * spacing[1]
    v = (torch.arange(rows, dtype=torch.float64, device=dev) - (rows - 1) / 2) * spacing[0]
    offset = u[None, None, :, None] * n + v[None, :, None, None] * zhat
    full = (angles.numel(), rows, cols, 3)
    if src is None:
        origin, direction = offset.expand(full), e.expand(full)
    else:
        det = 0.0 if det is None else det
        origin = (-src * e).expand(full)
        direction = (src + det) * e + offset
        direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    return origin.reshape(-1, 3), direction.reshape(-1, 3)


#: per major axis (0 x, 1 y, 2 z) its two minor axes, in axis order
_MINORS = ((1, 2), (0, 2), (0, 1))


def joseph_steps(origin: torch.Tensor, direction: torch.Tensor, size: tuple[int, int, int]):
    """Per-ray Joseph parameters (module docstring, "Discretisation"), float64.

    For axis ``a`` (0 x, 1 y, 2 z) a point's fractional voxel index is
    ``s_a p_a + c_a`` with ``s = (1, -1, 1)``, ``c = ((W-1)/2, (H-1)/2, (D-1)/2)``. At
    major step ``k`` (the ray's k-th plane across its major axis ``m``) the two minor
    fractional indices are ``f0 + k * df``.

    Args:
        origin, direction: [R, 3] float64 rays (``rays``).
        size: (D, H, W).
    Returns:
        major [R] int64 (0, 1, 2), minors [R, 2] int64 (the two other axes in axis order),
        f0 [R, 2], df [R, 2] float64 and step [R] float64 (``1 / |d_major|``).
    """
    d, h, w = size
    dev = origin.device
    mag = direction.abs()
    major = torch.where((mag[:, 0] >= mag[:, 1]) & (mag[:, 0] >= mag[:, 2]), 0,
                        torch.where(mag[:, 1] >= mag[:, 2], 1, 2))
    minors = torch.tensor(_MINORS, device=dev)[major]
    sign = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64, device=dev)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2, (d - 1) / 2], dtype=torch.float64,
                          device=dev)
    m = major[:, None]
    d_m = direction.gather(1, m)
    o_m = origin.gather(1, m)
    s_m, c_m = sign[major][:, None], centre[major][:, None]
    s_b, c_b = sign[minors], centre[minors]
    o_b, d_b = origin.gather(1, minors), direction.gather(1, minors)
    slope = d_b / d_m
    # plane k of the major axis is p_m = s_m (k - c_m): t = (p_m - o_m) / d_m
    f0 = s_b * o_b + c_b - s_b * slope * (s_m * c_m + o_m)
    df = s_b * s_m * slope
    return major, minors, f0, df, 1.0 / d_m[:, 0].abs()


# --- FDK --------------------------------------------------------------------------------

def parker_weights(beta: torch.Tensor, g: torch.Tensor, delta: float) -> torch.Tensor:
    """Parker's short-scan weights (module docstring, "FDK"), broadcast over ``beta``
    (angle from the scan's start) and ``g`` (``-atan(u / (R + Dd))`` of the ray), for a
    scan of span ``pi + 2 delta``; float64, in [0, 1], 0 outside the scan."""
    tiny = torch.finfo(torch.float64).tiny
    quarter = math.pi / 4
    rise = torch.sin(quarter * beta / (delta - g).clamp(min=tiny)) ** 2
    fall = torch.sin(quarter * (math.pi + 2 * delta - beta) / (delta + g).clamp(min=tiny)) ** 2
    w = torch.where(beta < 2 * (delta - g), rise, torch.ones_like(rise))
    w = torch.where(beta > math.pi - 2 * g, fall, w)
    return torch.where((beta < 0) | (beta > math.pi + 2 * delta), torch.zeros_like(w), w)


def _trapezoid(points: torch.Tensor) -> torch.Tensor:
    """Trapezoidal-rule weights of sorted sample points on an interval."""
    if points.numel() == 1:
        return torch.ones_like(points)
    gaps = points[1:] - points[:-1]
    zero = gaps.new_zeros(1)
    return (torch.cat((zero, gaps)) + torch.cat((gaps, zero))) / 2


def fdk_angle_weights(angles: torch.Tensor, cols: int, sc: float, src: float, det: float,
                      fn: str) -> torch.Tensor:
    """Angular weights ``w_a`` of the cone-beam FDK sum, per angle and detector column
    ([A, cols] float64): the trapezoidal rule over a full circle (times 1/2), or over a
    short scan times Parker's weights (module docstring, "FDK"). ValueError naming
    ``angles`` for a short scan shorter than ``pi + 2 gamma_m``."""
    two_pi = 2 * math.pi
    n_ang = angles.numel()
    wrapped = torch.remainder(angles, two_pi)
    ordered, order = torch.sort(wrapped)
    gaps = torch.diff(torch.cat((ordered, ordered[:1] + two_pi)))   # gap after each angle
    widest = int(torch.argmax(gaps))
    if float(gaps[widest]) <= SHORT_SCAN_GAP * two_pi / n_ang:
        w_sorted = 0.25 * (gaps + torch.roll(gaps, 1))   # trapezoid on the circle, x 1/2
        w = torch.empty_like(w_sorted).scatter_(0, order, w_sorted)
        return w[:, None].expand(n_ang, cols)
    start = ordered[(widest + 1) % n_ang]
    beta = torch.remainder(wrapped - start, two_pi)
    span = float(beta.max())
    u = (torch.arange(cols, dtype=torch.float64, device=angles.device) - (cols - 1) / 2) * sc
    gamma = torch.atan(u / (src + det))
    gamma_m = float(gamma.abs().max())
    delta = (span - math.pi) / 2
    if delta < gamma_m * (1 - 1e-9):
        raise ValueError(f"{fn}: angles cover a short scan of {span:.6g} rad; FDK with "
                         f"Parker weights needs at least pi + 2 * half fan angle = "
                         f"{math.pi + 2 * gamma_m:.6g} rad (or a full circle)")
    b_sorted, b_order = torch.sort(beta)
    trap = torch.empty_like(beta).scatter_(0, b_order, _trapezoid(b_sorted))
    return trap[:, None] * parker_weights(beta[:, None], -gamma[None, :], max(delta, gamma_m))


def _slice_weights(d: int, rows: int, sr: float, dtype, device) -> torch.Tensor:
    """[D, rows] linear interpolation from the detector rows' planes ``z = v_r`` to the
    volume's slices (zero beyond the detector)."""
    z = torch.arange(d, dtype=torch.float64) - (d - 1) / 2
    r = z / sr + (rows - 1) / 2
    r0 = torch.floor(r)
    frac = r - r0
    r0 = r0.to(torch.int64)
    m = torch.zeros(d, rows, dtype=torch.float64)
    k = torch.arange(d)
    for idx, wt in ((r0, 1 - frac), (r0 + 1, frac)):
        ok = (idx >= 0) & (idx < rows)
        m.index_put_((k[ok], idx[ok]), wt[ok], accumulate=True)
    return m.to(dtype=dtype, device=device)


def _backproject_cone(q: torch.Tensor, angles: torch.Tensor, size, spacing, src: float,
                      det: float) -> torch.Tensor:
    """Voxel-driven, distance-weighted back-projection of weighted, filtered projections
    ``q`` [N, A, rows, cols] -> [N, D, H, W]: sum over angles of ``R^2 / U^2`` times ``q``
    sampled bilinearly where the voxel projects (zero beyond the detector). Runs over
    chunks of angles (``_FDK_CHUNK_ELEMS``) so its memory stays bounded."""
    n, n_ang, rows, cols = q.shape
    d, h, w = size
    sr, sc = spacing
    dev, dtype = q.device, q.dtype
    dsd = src + det
    x = (torch.arange(w, dtype=torch.float64, device=dev) - (w - 1) / 2)[None, None, :]
    y = ((h - 1) / 2 - torch.arange(h, dtype=torch.float64, device=dev))[None, :, None]
    z = (torch.arange(d, dtype=torch.float64, device=dev) - (d - 1) / 2)[None, :, None]
    # one zero pixel around the detector: bilinear samples fade to zero past its edge and a
    # single row or column still has two samples per axis for grid_sample
    qp = torch.nn.functional.pad(q, (1, 1, 1, 1))
    n_vox = d * h * w
    chunk = max(1, min(n_ang, _FDK_CHUNK_ELEMS // ((n + 2) * n_vox)))
    out = q.new_zeros(n, d, h * w)
    for a0 in range(0, n_ang, chunk):
        a = angles[a0:a0 + chunk]
        cos, sin = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
        s = (x * cos + y * sin).reshape(-1, 1, h * w)       # p . n   [Ac, 1, HW]
        dist = src + (y * cos - x * sin).reshape(-1, 1, h * w)   # U = R + p . e
        mag = dsd / dist
        col = s * mag / sc + (cols - 1) / 2 + 1              # padded pixel indices
        row = z * mag / sr + (rows - 1) / 2 + 1              # [Ac, D, HW]
        grid = torch.stack((2 * col.expand_as(row) / (cols + 1) - 1,
                            2 * row / (rows + 1) - 1), -1).to(dtype)
        vals = torch.nn.functional.grid_sample(
            qp[:, a0:a0 + chunk].transpose(0, 1), grid, mode="bilinear",
            padding_mode="zeros", align_corners=True)        # [Ac, N, D, HW]
        weight = ((src / dist) ** 2).to(dtype)[:, None]      # [Ac, 1, 1, HW]
        out = out + (vals * weight).sum(0)
    return out.reshape(n, d, h, w)


def fdk(proj: torch.Tensor, angles: torch.Tensor, size, spacing, src: float | None,
        det: float | None, filter: str, backproject, fn: str) -> torch.Tensor:
    """FDK reconstruction (module docstring, "FDK"), scaled so ``fdk(forward(x)) ~ x``.

    Args:
        proj: [..., A, rows, cols] real projections, already checked against the geometry.
        angles: [A] float64 radians on proj's device.
        size: (D, H, W); spacing: (sr, sc); src, det: R, Dd or None (parallel beam),
            validated (``check_geometry``).
        filter: one of ``FILTERS`` (checked here).
        backproject: parallel beam only: ``(sino [N, A, cols], angles, (H, W), cols, sc)
            -> [N, H, W]``, the 2-D parallel Radon adjoint of the caller's backend (the
            2-D FBP's, ``radon_geometry.fbp``).
        fn: the public name reported in errors.

    Returns:
        [..., D, H, W] in proj's dtype (float16 / bfloat16 computed in float32);
        differentiable in ``proj``; an empty batch gives an empty result.
    """
    if not isinstance(filter, str):
        raise TypeError(f"{fn}: filter must be a str, got {type(filter).__name__}")
    if filter not in FILTERS:
        raise ValueError(f"{fn}: filter must be one of {FILTERS}, got {filter!r}")
    n_ang, rows, cols = proj.shape[-3:]
    d, h, w = size
    sr, sc = spacing
    if proj.numel() == 0:
        return proj.new_zeros((*proj.shape[:-3], d, h, w))
    if proj.dtype not in radon_geometry.FBP_DTYPES:
        return fdk(proj.float(), angles, size, spacing, src, det, filter, backproject,
                   fn).to(proj.dtype)
    p = proj.reshape(-1, n_ang, rows, cols)
    if src is None:
        sino = p.transpose(1, 2)                              # [N, rows, A, cols]
        planes = radon_geometry.fbp(sino, angles, (h, w), cols, sc, None, None, filter,
                                    backproject, fn)          # [N, rows, H, W]
        m = _slice_weights(d, rows, sr, proj.dtype, proj.device)
        vol = torch.einsum("kr,nrhw->nkhw", m, planes)
        return vol.reshape(*proj.shape[:-3], d, h, w)
    det = 0.0 if det is None else det
    dsd = src + det
    dev = proj.device
    u = (torch.arange(cols, dtype=torch.float64, device=dev) - (cols - 1) / 2) * sc
    v = (torch.arange(rows, dtype=torch.float64, device=dev) - (rows - 1) / 2) * sr
    cosine = dsd / torch.sqrt(dsd ** 2 + u[None, :] ** 2 + v[:, None] ** 2)
    response, pad = radon_geometry.fbp_filter(cols, filter, proj.dtype, dev)
    tau = sc * src / dsd                                      # column spacing at the axis
    # the angular weights vary along a row for a short scan (Parker): applied before the
    # filter, like the cosine weights
    ang_w = fdk_angle_weights(angles, cols, sc, src, det, fn) / tau     # [A, cols]
    weights = cosine[None] * ang_w[:, None, :]                          # [A, rows, cols]
    weighted = p * weights.to(proj.dtype)
    q = torch.fft.irfft(torch.fft.rfft(weighted, n=pad, dim=-1) * response, n=pad, dim=-1)
    q = q[..., :cols]
    vol = _backproject_cone(q, angles, size, spacing, src, det)
    return vol.reshape(*proj.shape[:-3], d, h, w)
