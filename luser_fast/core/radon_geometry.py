"""2-D Radon geometry shared by every implementation: conventions, rays, FBP filtering.

The reference (``luser_fast/reference/radon.py``), the C++ and CUDA kernels and the
``Radon`` operator all follow the conventions below (docs/API.md, "Radon conventions");
the functions here (geometry validation, ray lines, FBP filter, fan rebinning and the FBP
pipeline) are the one definition each of them uses.

Image coordinates. Pixels have size 1. Pixel ``(i, j)`` (row ``i`` along H, column ``j``
along W) has its centre at ``x = j - (W - 1) / 2``, ``y = (H - 1) / 2 - i``: x grows along
W, y grows towards row 0 ("up" when row 0 is displayed on top). The rotation centre is the
image centre ``((H - 1) / 2, (W - 1) / 2)``.

Detectors. ``D`` detectors (default ``ceil(sqrt(2) * max(H, W))``); detector ``d`` sits at
offset ``u_d = (d - (D - 1) / 2) * det_spacing`` from the central ray.

Parallel beam. For an angle ``theta`` (radians) let ``n = (cos theta, sin theta)`` and
``e = (-sin theta, cos theta)``. Detector ``d`` measures the line ``{p : p . n = u_d}``,
traversed along ``e``. At ``theta = 0`` the rays run along H (columns are summed) and
``u_d = x``; at ``theta = pi / 2`` rows are summed and ``u_d = y``. This is scikit-image's
convention: ``radon_forward_ref(x, angles, D)`` matches
``skimage.transform.radon(x, theta=numpy.rad2deg(angles), circle=False).T`` up to
interpolation. scikit-image rotates about pixel index ``N // 2`` and puts its central
detector at index ``D // 2`` (we use ``(N - 1) / 2`` and ``(D - 1) / 2``), so the grids
coincide exactly for H = W odd with ``ceil(sqrt(2) * H)`` odd (e.g. 61, 101, 129) and are
half a pixel apart otherwise. ``int`` angle counts give ``theta_k = k * pi / A``. Angles
are used in float64: pass float64 tensors (float32 ``pi / 2`` is off by 4e-8 rad).

Fan beam, flat detector. The source sits at ``S = -R e`` (``R = source_distance``, i.e.
at polar angle ``theta - pi / 2``) and the detector on the line ``{Dd e + u n}``
(``Dd = detector_distance``, default 0: a virtual detector through the rotation centre,
so ``det_spacing`` is then measured at the isocentre). Detector ``d`` measures the line
through ``S`` and ``Dd e + u_d n``; it is the parallel ray of angle ``theta - gamma`` and
offset ``R sin(gamma)``, ``gamma = atan(u_d / (R + Dd))``, so the central ray matches the
parallel ray of the same angle and large ``R`` approaches parallel beam. The whole line is
integrated (``R`` must exceed the image half-diagonal, so the source is outside the
image). ``int`` angle counts give ``theta_k = 2 pi k / A``.

Fan-beam range (``FAN_RANGE``). The float64 ray geometry stays accurate only for
distances within a bounded multiple of the image: a ray's sample positions are
differences of numbers of size ``R + Dd`` (the source point, the slope times the distance
to it), so they carry an absolute rounding error of a few ``eps (R + Dd)`` pixels,
``eps = 2**-52``, while the fan geometry itself departs from parallel beam by about
``N**2 / R`` pixels (``N = max(H, W)``). Below ``R ~ N / sqrt(eps) ~ 7e7 N`` the rounding
is the smaller term; above it, rounding takes over (at ``R = 1e15`` a 16 x 16 sinogram is
off by 3 % of its peak, from ``R ~ 1e155`` the squared norms overflow and every ray is
NaN). So ``source_distance``, ``detector_distance`` and the detector's half-width
``(D - 1) / 2 * det_spacing`` are each at most ``FAN_RANGE * N`` with
``FAN_RANGE = 2**20``: there rounding moves a sample by at most ~``4 eps 2**20 N`` =
``1e-9 N`` pixel (1e-5 pixel for N = 16384), three orders below the geometric
difference ``N / 2**20`` from parallel beam, and larger distances are parallel beam to
within ``1e-6 N`` pixel anyway (use the parallel geometry). A detector wider than that
would overflow the squared norms of its rays (NaN from a half-width ~1e154).

Discretisation (Joseph). A ray ``o + t v`` (``|v| = 1``) is x-major when ``|v_x| >= |v_y|``
(ties go to x), else y-major. An x-major ray visits every pixel column ``j``: at
``x = x_j`` it has ``y = o_y + (x_j - o_x) v_y / v_x``, fractional row ``f = (H-1)/2 - y``,
and takes ``(1 - frac(f)) img[floor(f), j] + frac(f) img[floor(f) + 1, j]`` (rows outside
the image count as zero); the sum over ``j`` is scaled by ``1 / |v_x|``, the path length per
column. y-major rays do the same with rows and columns swapped (``f = x + (W-1)/2``, scale
``1 / |v_y|``). Ray geometry and weights are computed in float64, then cast to the data
dtype. The adjoint scatters the very same (pixel, weight) pairs, so it is the exact
transpose.

FBP. Each projection is zero-padded to ``P = max(64, 2 ** ceil(log2(2 D)))`` and filtered
with the DFT of the spatial-domain band-limited ramp (Kak & Slaney eq. 61:
``h[0] = 1/4``, ``h[n odd] = -1 / (pi n)^2``, else 0), which follows ``|f|`` (cycles per
sample) without the DC offset and wrap-around error of sampling ``|f|`` on the padded
grid, times a window of ``f``: ramp 1,
shepp-logan ``sinc(f)``, cosine ``cos(pi f)``, hann ``cos(pi f)^2``. The filtered sinogram
is back-projected with the adjoint and scaled by ``pi / A``; the detector spacing cancels
(the ramp in physical units carries ``1 / det_spacing^2``, the convolution
``det_spacing``, and the Joseph adjoint ``1 / det_spacing``). ``pi / A`` is the angular
weight for angles uniform on ``[0, pi)``, and equally for ``[0, 2 pi)``, where every line
is seen twice at twice the spacing. Fan sinograms are first rebinned to parallel rays
(``A`` angles uniform on ``[0, 2 pi)``, ``D`` offsets spaced ``det_spacing * R / (R + Dd)``)
by bilinear interpolation in (angle, detector offset), periodic in the angle; this
assumes fan angles covering the full circle, and only the disk of radius
``R sin(atan(u_max / (R + Dd)))`` seen by every view is reconstructed faithfully.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from . import validate

__all__ = ["GEOMETRIES", "FILTERS", "FAN_RANGE", "default_detectors", "check_geometry", "forward_args",
           "adjoint_args", "rays", "fbp_filter", "rebin_fan", "fbp"]

GEOMETRIES = ("parallel", "fan")
FILTERS = ("ramp", "shepp-logan", "cosine", "hann")
#: fan-beam distances (source, detector, detector half-width) are at most this multiple of
#: max(H, W), where the float64 ray geometry keeps its accuracy (module docstring)
FAN_RANGE = 2 ** 20
#: dtypes FBP computes in; others (float16, bfloat16) are computed in float32, cast back
FBP_DTYPES = (torch.float32, torch.float64)


def default_detectors(h: int, w: int) -> int:
    """D when none is given: ``ceil(sqrt(2) * max(H, W))`` (the image diagonal)."""
    return math.ceil(math.sqrt(2.0) * max(h, w))


def check_geometry(image_size, n_detectors, det_spacing, source_distance,
                    detector_distance, fn: str):
    """Validate the geometry; return (D, det_spacing, R or None, Dd or None) as numbers."""
    h, w = image_size
    if n_detectors is None:
        n_detectors = default_detectors(h, w)
    elif not validate.is_int(n_detectors):
        raise TypeError(f"{fn}: n_detectors must be an int or None, got {n_detectors!r}")
    elif n_detectors < 1:
        raise ValueError(f"{fn}: n_detectors must be positive, got {n_detectors}")
    if not validate.is_real(det_spacing):
        raise TypeError(f"{fn}: det_spacing must be a real number, got {det_spacing!r}")
    if not (math.isfinite(det_spacing) and det_spacing > 0):
        raise ValueError(f"{fn}: det_spacing must be positive and finite, got {det_spacing}")
    source_distance, detector_distance = check_distances(
        source_distance, detector_distance, (h, w), fn, "fan",
        "the image half-diagonal {:.4g}")
    if source_distance is None:
        return int(n_detectors), float(det_spacing), None, None
    limit = FAN_RANGE * max(h, w)
    half_width = (n_detectors - 1) / 2 * det_spacing
    for name, value in (("source_distance", source_distance),
                        ("detector_distance", detector_distance),
                        ("det_spacing", half_width)):
        if value > limit:
            what = (f"det_spacing {det_spacing:.4g} makes the detector half-width "
                    f"(n_detectors - 1) / 2 * det_spacing = {value:.4g}, which"
                    if name == "det_spacing" else f"{name} = {value:.4g}")
            hint = ("" if name == "det_spacing" else "; so distant a source is parallel "
                    "beam to within 1e-6 * max(H, W) pixel: use geometry 'parallel'")
            raise ValueError(f"{fn}: {what} exceeds {FAN_RANGE} * max(H, W) = "
                             f"{limit:.4g}, beyond which the float64 fan-beam geometry loses "
                             "accuracy (luser_fast/core/radon_geometry.py, 'Fan-beam "
                             f"range'){hint}")
    return int(n_detectors), float(det_spacing), float(source_distance), float(detector_distance)


def check_distances(source_distance, detector_distance, in_plane: tuple[int, int], fn: str,
                    beam: str, exceed: str):
    """Validate a divergent beam's distances (fan beam here, cone beam in
    ``conebeam_geometry``): ``(None, None)`` for parallel beam (``source_distance`` None,
    which needs ``detector_distance`` None: it is a ``beam``-beam parameter), else
    ``(R, Dd)`` with R finite and beyond the half-diagonal of ``in_plane`` (H, W) (the
    message says it ``exceed``s, formatted with that half-diagonal) and Dd finite and >= 0
    (None: 0.0). TypeError / ValueError naming the argument."""
    if source_distance is None:
        if detector_distance is not None:
            raise ValueError(f"{fn}: detector_distance is a {beam}-beam parameter and needs "
                             "source_distance")
        return None, None
    if not validate.is_real(source_distance):
        raise TypeError(f"{fn}: source_distance must be a real number or None, got "
                        f"{source_distance!r}")
    half_diagonal = 0.5 * math.hypot(*in_plane)
    if not (math.isfinite(source_distance) and source_distance > half_diagonal):
        raise ValueError(f"{fn}: source_distance must exceed {exceed.format(half_diagonal)}, "
                         f"got {source_distance}")
    if detector_distance is None:
        detector_distance = 0.0
    elif not validate.is_real(detector_distance):
        raise TypeError(f"{fn}: detector_distance must be a real number or None, got "
                        f"{detector_distance!r}")
    if not (math.isfinite(detector_distance) and detector_distance >= 0):
        raise ValueError(f"{fn}: detector_distance must be finite and >= 0, got "
                         f"{detector_distance}")
    return source_distance, detector_distance


def forward_args(x, angles, n_detectors, det_spacing, source_distance, detector_distance,
                 fn: str):
    """Validate a projection's arguments (angles on x's device, a sinogram that fits in
    memory: ``validate.allocation``); return (angles float64, D, det_spacing, R or None,
    Dd or None)."""
    validate.real_tensor(x, "x", fn)
    h, w = x.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"{fn}: x must have a non-empty image (H, W), got shape "
                         f"{tuple(x.shape)}")
    if isinstance(angles, torch.Tensor):
        validate.same_device(fn, x=x, angles=angles)
    angles = validate.angles(angles, fn, x.device)
    geometry = check_geometry((h, w), n_detectors, det_spacing, source_distance,
                              detector_distance, fn)
    validate.allocation(fn, "the sinogram", (*x.shape[:-2], angles.numel(), geometry[0]),
                        x.dtype, x.device)
    return (angles, *geometry)


def adjoint_args(sino, angles, image_size, n_detectors, det_spacing, source_distance,
                 detector_distance, fn: str):
    """Validate a back-projection's arguments (``n_detectors=None`` takes D from sino;
    angles on sino's device, an image that fits in memory); return (angles float64,
    (H, W), D, det_spacing, R or None, Dd or None)."""
    validate.real_tensor(sino, "sino", fn)
    size = validate.image_size(image_size, fn)
    if isinstance(angles, torch.Tensor):
        validate.same_device(fn, sino=sino, angles=angles)
    angles = validate.angles(angles, fn, sino.device)
    if n_detectors is None:
        n_detectors = sino.shape[-1]
    n_det, spacing, src, det = check_geometry(size, n_detectors, det_spacing,
                                              source_distance, detector_distance, fn)
    if tuple(sino.shape[-2:]) != (angles.numel(), n_det):
        raise ValueError(f"{fn}: sino must end in (A, D) = ({angles.numel()}, {n_det}), "
                         f"got shape {tuple(sino.shape)}")
    validate.allocation(fn, "the image", (*sino.shape[:-2], *size), sino.dtype, sino.device)
    return angles, size, n_det, spacing, src, det


def rays(angles: torch.Tensor, n_det: int, spacing: float, src: float | None,
          det: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Origin and unit direction of every ray.

    Args:
        angles: [A] float64 radians.
    Returns:
        origin, direction: [A * D, 2] float64 (x, y) coordinates, ray index ``a * D + d``.
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    n = torch.stack((cos, sin), -1)[:, None, :]
    e = torch.stack((-sin, cos), -1)[:, None, :]
    u = (torch.arange(n_det, dtype=torch.float64, device=angles.device)
         - (n_det - 1) / 2) * spacing
    u = u[None, :, None]
    shape = (angles.numel(), n_det, 2)
    if src is None:
        origin, direction = (u * n).expand(shape), e.expand(shape)
    else:
        origin = (-src * e).expand(shape)
        direction = (src + det) * e + u * n
        direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    return origin.reshape(-1, 2), direction.reshape(-1, 2)


def fbp_filter(n_det: int, filter: str, dtype: torch.dtype, device) -> tuple[torch.Tensor, int]:
    """Frequency response [P // 2 + 1] (rfft layout) of the apodised ramp, and P."""
    p = max(64, 2 ** math.ceil(math.log2(2 * n_det)))
    m = torch.arange(p, dtype=torch.float64)
    m = torch.minimum(m, p - m)  # circular distance to tap 0
    h = torch.where(m % 2 == 1, -1.0 / (math.pi * m) ** 2, torch.zeros_like(m))
    h[0] = 0.25
    response = torch.fft.rfft(h).real
    f = torch.fft.rfftfreq(p, dtype=torch.float64)
    if filter == "shepp-logan":
        response = response * torch.sinc(f)
    elif filter == "cosine":
        response = response * torch.cos(math.pi * f)
    elif filter == "hann":
        response = response * torch.cos(math.pi * f) ** 2
    return response.to(dtype=dtype, device=device), p


def rebin_fan(sino: torch.Tensor, angles: torch.Tensor, n_det: int, spacing: float,
               src: float, det: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Bilinear rebinning of a full-circle fan sinogram to parallel rays.

    Args:
        sino: [N, A, D] fan sinogram.
        angles: [A] float64 fan angles (any order, covering [0, 2 pi)).
    Returns:
        [N, A, D] parallel sinogram, its [A] angles ``2 pi k / A`` and its detector spacing
        ``spacing * src / (src + det)``.
    """
    n_ang, dev = angles.numel(), sino.device
    two_pi = 2 * math.pi
    par_angles = torch.arange(n_ang, dtype=torch.float64, device=dev) * (two_pi / n_ang)
    par_spacing = spacing * src / (src + det)
    s = (torch.arange(n_det, dtype=torch.float64, device=dev) - (n_det - 1) / 2) * par_spacing
    gamma = torch.asin((s / src).clamp(-1.0, 1.0))
    # parallel ray (phi, s) is the fan ray (phi + gamma, (R + Dd) tan(gamma))
    u_index = (src + det) * torch.tan(gamma) / spacing + (n_det - 1) / 2
    theta = torch.remainder(par_angles[:, None] + gamma[None, :], two_pi)

    wrapped = torch.remainder(angles, two_pi)
    sorted_ang, order = torch.sort(wrapped)
    ext = torch.cat((sorted_ang[-1:] - two_pi, sorted_ang, sorted_ang[:1] + two_pi))
    ext_order = torch.cat((order[-1:], order, order[:1]))
    lo = (torch.searchsorted(ext, theta, right=True) - 1).clamp(0, n_ang)
    span = ext[lo + 1] - ext[lo]
    t = torch.where(span > 0, (theta - ext[lo]) / torch.where(span > 0, span, 1.0), 0.0)
    a_idx = torch.stack((ext_order[lo], ext_order[lo + 1]), -1)
    a_wt = torch.stack((1 - t, t), -1)

    u0 = torch.floor(u_index)
    uf = u_index - u0
    d_idx = u0.to(torch.int64)[:, None] + torch.arange(2, device=dev)
    d_wt = torch.stack((1 - uf, uf), -1)
    d_wt = torch.where((d_idx >= 0) & (d_idx < n_det) & (s.abs() < src)[:, None], d_wt, 0.0)
    d_idx = d_idx.clamp(0, n_det - 1)

    idx = a_idx[:, :, :, None] * n_det + d_idx[None, :, None, :]
    wt = (a_wt[:, :, :, None] * d_wt[None, :, None, :]).to(sino.dtype)
    vals = sino.reshape(sino.shape[0], -1).index_select(1, idx.reshape(-1))
    out = (vals.view(sino.shape[0], n_ang, n_det, 4) * wt.view(n_ang, n_det, 4)).sum(-1)
    return out, par_angles, par_spacing




def fbp(sino: torch.Tensor, angles: torch.Tensor, image_size: tuple[int, int], n_det: int,
        spacing: float, src: float | None, det: float | None, filter: str,
        backproject: Callable[..., torch.Tensor], fn: str) -> torch.Tensor:
    """Filtered back-projection with a given back-projector (module docstring, "FBP").

    Args:
        sino: [..., A, D] real sinogram, already checked against the geometry.
        angles: [A] float64 radians on sino's device.
        image_size, n_det, spacing, src, det: validated geometry (``check_geometry``).
        filter: one of ``FILTERS`` (checked here).
        backproject: ``(sino [N, A, D], angles, (H, W), D, spacing) -> [N, H, W]``, the
            parallel-beam adjoint of the implementation calling this.
        fn: the public name reported in errors.

    Returns:
        [..., H, W] in sino's dtype (float16 / bfloat16 computed in float32), scaled so
        that ``fbp(radon(x)) ~ x``; an empty batch gives an empty result.
    """
    if not isinstance(filter, str):
        raise TypeError(f"{fn}: filter must be a str, got {type(filter).__name__}")
    if filter not in FILTERS:
        raise ValueError(f"{fn}: filter must be one of {FILTERS}, got {filter!r}")
    n_ang = angles.numel()
    if sino.numel() == 0:   # an empty batch (the FFTs take no empty batch)
        return sino.new_zeros((*sino.shape[:-2], *image_size))
    if sino.dtype not in FBP_DTYPES:   # the FFTs take no float16 / bfloat16
        return fbp(sino.float(), angles, image_size, n_det, spacing, src, det, filter,
                   backproject, fn).to(sino.dtype)
    s3 = sino.reshape(-1, n_ang, n_det)
    if src is not None:
        s3, angles, spacing = rebin_fan(s3, angles, n_det, spacing, src, det)
    response, p = fbp_filter(n_det, filter, sino.dtype, sino.device)
    filtered = torch.fft.irfft(torch.fft.rfft(s3, n=p, dim=-1) * response, n=p, dim=-1)
    filtered = filtered[..., :n_det].contiguous()
    image = backproject(filtered, angles, image_size, n_det, spacing)
    return (image * (math.pi / n_ang)).reshape(*sino.shape[:-2], *image_size)
