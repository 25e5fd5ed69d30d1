"""NUFFT conventions (2-D and 3-D) and the gridding kernel shared by every implementation.

The reference (``luser_fast/reference/nufft.py``), the C++/CUDA gridding kernels and the
``NUFFT`` operator all follow the conventions below and take their kernel (width, shape,
grid size, deapodisation) from the functions here.

Conventions (docs/API.md): ``ktraj`` is [M, 2] in radians, inside [-pi, pi]; ``ktraj[:, 0]`` is
the frequency along H and ``ktraj[:, 1]`` along W. Type 2 (uniform grid -> points) is

    y_m = sum_n x_n exp(-i k_m . (n - N // 2)),     n in [0, H) x [0, W),

with the pixel index centred per dimension by N // 2 = (H // 2, W // 2). Type 1 (points ->
grid) is its adjoint, exp(+i ...), unnormalised. Both are batched over leading dims.

In 3-D ``ktraj`` is [M, 3] with columns (kz, ky, kx) along the volume's axes (D, H, W),
images are [..., D, H, W] and n runs over [0, D) x [0, H) x [0, W), centred by
N // 2 = (D // 2, H // 2, W // 2); everything below holds per axis, with w x w x w
stencils and the product of three deapodisation factors. The number of columns of
``ktraj`` decides the dimension; ``image_size`` must have as many entries.

Gridding (Barnett, Magland & af Klinteberg 2019, "A parallel non-uniform fast Fourier
transform library based on an exponential of semicircle kernel"; FINUFFT). On an
oversampled grid of n cells per dimension (spacing h = 2 pi / n) the kernel, in grid cells,
is psi(u) = phi(2 u / w) with phi(z) = exp(beta (sqrt(1 - z^2) - 1)) on |z| <= 1. By
Poisson summation, sum_l psi(t - l) exp(-i h l j) = exp(-i k j) psi_hat(h j) + aliasing,
where t = k / h and psi_hat(xi) = int psi(u) exp(-i xi u) du. So type 2 is:

    1. deapodise: x_j / (psi_hat(h0 j0) psi_hat(h1 j1)), j = n - N // 2 (3-D: times
       psi_hat(h2 j2) in the denominator);
    2. place x_j at grid index j mod n (zero-pad, shift) and take the unnormalised FFT;
    3. interpolate each point from the w x w (x w) grid cells l with |t - l| <= w / 2.

Type 1 runs the transposes in reverse: spread with the same weights, unnormalised inverse
FFT, crop, deapodise. psi_hat has no closed form; it is computed once per plan by
Gauss-Legendre quadrature.

Kernel parameters (``choose_kernel``; ``kernel_params`` returns its (w, beta)) follow
FINUFFT's rules with one safety margin, and stop widening the kernel where the data's
precision stops paying for it. The truncation (aliasing) error decays like
exp(-pi w sqrt(1 - 1 / sigma)); with beta = 0.97 pi (1 - 1 / (2 sigma)) w, 97% of the
cutoff that puts the kernel's Fourier transform edge at the first aliased image, the rule
below gives at sigma = 2 and tol = 10^-d w = d + 2 and beta = 2.285 w (FINUFFT: w = d + 1,
beta = 2.30 w, which measures 1-5 x tol against the exact sum; the extra cell keeps the
error below tol). The grid size is n = next 2-3-5-smooth even integer >= max(sigma N, 2 w).

Rounding and the accuracy floor. Deapodisation divides pixel j by psi_hat(h j), and the
kernel's transform falls from psi_hat(0) to psi_hat(pi / sigma) at the image's edge: the
*deapodisation range* R(w) = psi_hat(0) / psi_hat(pi / sigma) grows like exp(0.5 w) at
sigma = 1.25 and exp(0.14 w) at sigma = 2. The transforms run in the data's precision
(complex64: float32 weights, FFTs and deapodisation; the reference too), so their
rounding, unit roundoff u, is amplified by up to R(w)^2 (at a 2-D image's corners):
measured 0.09-0.12 u R^2 on images whose energy sits in their corners, 0.002-0.01 u R^2 on
random ones. A wider kernel lowers the truncation error and raises the rounding error, so
past their crossing the error *grows* as tol shrinks (complex64 at sigma = 1.25 on
64 x 64, before this rule: 1e-5 at w = 9, 6e-5 at w = 12, 0.75 at w = 22; complex128 at
sigma = 1.25: 8e-11 at w = 19, 1.4e-9 at w = 22). ``choose_kernel`` therefore bounds the
error by

    E(w) = ERR_CONSTANT exp(-pi w sqrt(1 - 1 / sigma)) + ROUND_CONSTANT u R(w)^2

and takes the narrowest w with E(w) <= max(tol, floor). The *accuracy floor* of
(sigma, precision), ``accuracy_floor``, is max(ROUNDING_FLOOR[precision], min_w E(w)):
the FFTs and sums round to ~1e-6 in float32 and ~1e-14 in float64 whatever the kernel.
A tol below the floor gets the floor's kernel, never a wider one, so the error does not
grow as tol shrinks, and a ``RuntimeWarning`` stating the floor, once per (precision,
sigma). The floors (bounds: random 64 x 64 images measure 1-6x less, see
``bench/nufft_tol_sweep.py``):

    =====  ====================================  =====================================
    sigma  complex64                             complex128
    =====  ====================================  =====================================
    1.25   6e-5 (w = 9; measured 1.1e-5)         5e-10 (w = 18; measured 8e-11)
    2.0    1e-6 (w = 8; measured 0.9-1.2e-6)     1e-14 (w = 16; measured 0.6-1.4e-14)
    =====  ====================================  =====================================

The default oversampling, ``oversamp=None`` everywhere (``default_oversamp``): 1.25 for
tol >= SMALL_GRID_MIN_TOL[precision] (1e-4 in complex64, 1e-8 in complex128), else 2.0 --
the smaller grid (2.56x fewer cells) where it reaches tol with a kernel at most ~1.5x
wider, as FINUFFT picks its upsampfac from tol. Measured on the benchmark problem
(256 x 256, 102,912 radial points, 8 coils, one thread), 1.25 / 2.0 time: complex64 tol
1e-2..1e-4 0.74-0.98 (type 2) and 0.66-0.90 (type 1); complex128 1e-5..1e-6 0.77-0.91 and
0.73-0.83, 1e-7..1e-8 1.14-1.21 and 0.90. The best choice also depends on the points per
pixel: at 512 x 512 (0.4 per pixel) 1.25 is 1.3-2.5x faster down to 1e-8; at 64 x 64
(25 per pixel) 2.0 is faster below 1e-2, so pass ``oversamp=2.0`` for such dense
trajectories.

Density compensation: ``NUFFT(..., density=w)`` weights the operator symmetrically,
A x = sqrt(w) * NUFFT(S x), so A^H stays the exact adjoint and A^H A = F^H diag(w) F is
the density-weighted normal operator (its Toeplitz kernel is the type-1 transform of w).
Raw k-space samples must be weighted the same way: ``op.compensate(y_raw)``; then
``op.adjoint(op.compensate(y_raw))`` is the density-compensated gridding reconstruction.
``pipe_density`` estimates w by the Pipe & Menon (1999) iteration, scaled so that
F^H diag(w) F ~ I where the trajectory covers k-space.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import torch

from . import validate

__all__ = ["ERR_CONSTANT", "ROUND_CONSTANT", "ROUNDING_FLOOR", "SMALL_GRID_MIN_TOL",
           "KernelChoice", "real_precision", "default_oversamp", "accuracy_floor",
           "error_estimate", "choose_kernel", "kernel_params", "kernel_beta",
           "deapodisation_range", "next_smooth_even", "grid_size", "es_kernel",
           "es_kernel_ft", "deapodisation", "pipe_scale"]

#: bound on the measured truncation error / exp(-pi w sqrt(1 - 1 / sigma)) of the ES kernel
#: (4-14 over image sizes 1-128, both sigmas, random data)
ERR_CONSTANT = 10.0
#: bound on the measured rounding error / (u R(w)^2), u the unit roundoff and R the
#: deapodisation range (0.09-0.12 for images whose energy sits in their corners)
ROUND_CONSTANT = 0.15
#: relative error of the FFTs and sums whatever the kernel, per real precision (measured
#: on 64 x 64: 1.2e-6 in float32 on random images, 2e-6 on corner ones; 0.6-3e-14 in
#: float64, where the exact NUDFT's float64 phases contribute as much)
ROUNDING_FLOOR = {torch.float32: 1e-6, torch.float64: 1e-14}
#: ``oversamp=None`` is 1.25 for tol >= this (per real precision), else 2.0
SMALL_GRID_MIN_TOL = {torch.float32: 1e-4, torch.float64: 1e-8}
#: unit roundoff per real precision
_UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}
#: widest kernel the floor search considers (the estimate's minimum is far below it)
_MAX_SEARCH_WIDTH = 64
#: (precision, sigma) pairs whose floor warning was given
_floor_warned: set = set()


class KernelChoice(NamedTuple):
    """The kernel ``choose_kernel`` picks for a (tol, oversamp, precision).

    Fields: ``oversamp`` (sigma, resolved when None was asked), ``width`` (w, grid cells),
    ``beta`` (shape), ``floor`` (the accuracy floor of (sigma, precision)), ``precision``
    (torch.float32 or torch.float64: the real precision the transforms run in) and
    ``estimate`` (E(w), the error bound of this kernel, <= max(tol, floor)).
    """
    oversamp: float
    width: int
    beta: float
    floor: float
    precision: torch.dtype
    estimate: float


def real_precision(dtype: torch.dtype | None) -> torch.dtype:
    """The real precision a transform of ``dtype`` data runs in: torch.float64 for
    complex128/float64 (and None: the most precise), torch.float32 otherwise."""
    if dtype is None or dtype in (torch.complex128, torch.float64):
        return torch.float64
    return torch.float32


def default_oversamp(tol: float, dtype: torch.dtype | None = torch.complex128) -> float:
    """What ``oversamp=None`` means: 1.25 for tol >= SMALL_GRID_MIN_TOL[precision] (1e-4 in
    complex64, 1e-8 in complex128), else 2.0 (module docstring)."""
    return 1.25 if tol >= SMALL_GRID_MIN_TOL[real_precision(dtype)] else 2.0


def kernel_beta(width: int, oversamp: float) -> float:
    """beta = 0.97 pi (1 - 1 / (2 sigma)) w."""
    return 0.97 * math.pi * (1.0 - 1.0 / (2.0 * oversamp)) * width


def deapodisation_range(width: int, beta: float, oversamp: float) -> float:
    """R = psi_hat(0) / psi_hat(pi / sigma): how much deapodisation amplifies the pixels at
    the image's edge over the centre ones, per dimension (inf where psi_hat(pi / sigma) is
    not positive)."""
    ft = es_kernel_ft(torch.tensor([0.0, math.pi / oversamp], dtype=torch.float64), width, beta)
    return ft[0].item() / ft[1].item() if ft[1].item() > 0 else math.inf


def error_estimate(width: int, oversamp: float, dtype: torch.dtype | None = torch.complex128
                   ) -> float:
    """E(w) = ERR_CONSTANT exp(-pi w sqrt(1 - 1 / sigma)) + ROUND_CONSTANT u R(w)^2: the
    bound on the relative error of the kernel of width w (beta from ``kernel_beta``) at
    sigma = oversamp, in dtype's precision (module docstring)."""
    return _estimate(int(width), float(oversamp), real_precision(dtype))


@functools.lru_cache(maxsize=512)
def _estimate(width: int, oversamp: float, precision: torch.dtype) -> float:
    trunc = ERR_CONSTANT * math.exp(-math.pi * width * math.sqrt(1.0 - 1.0 / oversamp))
    r = deapodisation_range(width, kernel_beta(width, oversamp), oversamp)
    return trunc + ROUND_CONSTANT * _UNIT_ROUNDOFF[precision] * r * r


@functools.lru_cache(maxsize=64)
def _best(oversamp: float, precision: torch.dtype) -> tuple[int, float]:
    """(w, E(w)) at the minimum of E over w >= 2 (E falls, then rises)."""
    best = (2, _estimate(2, oversamp, precision))
    for w in range(3, _MAX_SEARCH_WIDTH + 1):
        e = _estimate(w, oversamp, precision)
        if e < best[1]:
            best = (w, e)
        elif e > 2 * best[1]:
            break
    return best


def accuracy_floor(oversamp: float, dtype: torch.dtype | None = torch.complex128) -> float:
    """The smallest relative error the kernel choice promises at sigma = oversamp in dtype's
    precision: max(ROUNDING_FLOOR[precision], min_w E(w)) (module docstring's table)."""
    precision = real_precision(dtype)
    return max(ROUNDING_FLOOR[precision], _best(float(oversamp), precision)[1])


def choose_kernel(tol: float, oversamp: float | None = None,
                  dtype: torch.dtype | None = torch.complex128) -> KernelChoice:
    """The ES kernel for a target relative error in data of ``dtype``.

    sigma = oversamp, or ``default_oversamp(tol, dtype)`` when None; w is the narrowest
    width >= 2 whose error estimate E(w) is <= max(tol, floor), where the floor is
    ``accuracy_floor(sigma, dtype)``; beta = 0.97 pi (1 - 1 / (2 sigma)) w. A tol below the
    floor gets the floor's kernel and a ``RuntimeWarning`` stating the floor, once per
    (precision, sigma). See the module docstring.

    Args:
        tol: target relative l2 error, in (0, 0.1].
        oversamp: grid oversampling factor sigma > 1, or None to choose it from tol.
        dtype: the data's dtype (complex64 or complex128; a real dtype stands for its
            precision; None: complex128).

    Returns:
        ``KernelChoice``.
    """
    tol, oversamp = validate.nufft_accuracy(tol, oversamp, "choose_kernel")
    precision = real_precision(dtype)
    if oversamp is None:
        oversamp = default_oversamp(tol, precision)
    floor = accuracy_floor(oversamp, precision)
    target = max(tol, floor)
    w_best = _best(oversamp, precision)[0]
    width = next((w for w in range(2, w_best) if _estimate(w, oversamp, precision) <= target),
                 w_best)
    if tol < floor:
        _warn_floor(tol, oversamp, precision, floor, width)
    return KernelChoice(oversamp, width, kernel_beta(width, oversamp), floor, precision,
                        _estimate(width, oversamp, precision))


def _warn_floor(tol: float, oversamp: float, precision: torch.dtype, floor: float,
                width: int) -> None:
    key = (precision, oversamp)
    if key in _floor_warned:
        return
    _floor_warned.add(key)
    single = precision == torch.float32
    data, real = ("complex64", "float32") if single else ("complex128", "float64")
    if floor > ROUNDING_FLOOR[precision]:
        why = (f"{real} rounding amplified by the deapodisation, which grows with the "
               "kernel's width")
    else:
        why = f"{real} rounding of the FFTs and sums"
    further = [o for o, ok in (("oversamp=2.0", oversamp < 2), ("complex128", single)) if ok]
    verb = "reaches" if len(further) == 1 else "reach"
    hint = f"; {' or '.join(further)} {verb} further" if further else ""
    warnings.warn(f"luser_fast: NUFFT tol={tol:g} is below the accuracy floor of {data} data "
                  f"at oversamp={oversamp:g}, about {floor:.1g} ({why}): the kernel of width "
                  f"{width}, whose error is about that floor, is used{hint}. (Said once per "
                  "precision and oversamp.)", RuntimeWarning, stacklevel=3)


def kernel_params(tol: float, oversamp: float | None = None,
                  dtype: torch.dtype | None = torch.complex128) -> tuple[int, float]:
    """(width, beta) of ``choose_kernel(tol, oversamp, dtype)``.

    Args:
        tol: target relative l2 error, in (0, 0.1].
        oversamp: grid oversampling factor sigma > 1 (None: ``default_oversamp``).
        dtype: the data's dtype (its precision sets the floor; None: complex128).

    Returns:
        (w, beta).
    """
    choice = choose_kernel(tol, oversamp, dtype)
    return choice.width, choice.beta


def next_smooth_even(n: int) -> int:
    """Smallest even integer >= n whose prime factors are 2, 3 and 5 (FFT-friendly)."""
    n += n % 2
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 2


def grid_size(image_size: tuple[int, ...], oversamp: float, width: int) -> tuple[int, ...]:
    """Oversampled grid (n0, n1) or (n0, n1, n2), one side per entry of image_size: per
    dimension the next 2-3-5-smooth even integer >= max(sigma N, 2 w)."""
    return tuple(next_smooth_even(max(math.ceil(oversamp * s), 2 * width)) for s in image_size)


@functools.lru_cache(maxsize=128)
def gauss_legendre(q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q-point Gauss-Legendre nodes and weights on [-1, 1], float64: Newton's iteration on
    the Legendre recurrence from Tricomi's initial guesses (no LAPACK call, so no thread
    pool is involved). Cached: the tensors are shared, never modify them."""
    i = torch.arange(1, q + 1, dtype=torch.float64)
    x = torch.cos(math.pi * (i - 0.25) / (q + 0.5))
    for _ in range(50):
        p_prev, p = torch.ones_like(x), x
        for k in range(2, q + 1):
            p_prev, p = p, ((2 * k - 1) * x * p - (k - 1) * p_prev) / k
        dp = q * (x * p - p_prev) / (x * x - 1)
        step = p / dp
        x = x - step
        if step.abs().max().item() < 1e-15:
            break
    p_prev, p = torch.ones_like(x), x
    for k in range(2, q + 1):
        p_prev, p = p, ((2 * k - 1) * x * p - (k - 1) * p_prev) / k
    dp = q * (x * p - p_prev) / (x * x - 1)
    x, order = torch.sort(x)
    return x, (2 / ((1 - x * x) * dp[order] ** 2))


def es_kernel(z: torch.Tensor, beta: float) -> torch.Tensor:
    """phi(z) = exp(beta (sqrt(1 - z^2) - 1)) for |z| <= 1, else 0."""
    inside = z.abs() <= 1
    arg = torch.sqrt(torch.clamp(1 - z * z, min=0))
    return torch.where(inside, torch.exp(beta * (arg - 1)), torch.zeros_like(z))


def es_kernel_ft(xi: torch.Tensor, width: int, beta: float) -> torch.Tensor:
    """psi_hat(xi) = int psi(u) cos(xi u) du for psi(u) = phi(2 u / width), u in grid cells.

    Args:
        xi: [K] float64 frequencies (radians per grid cell).
        width: kernel width w in grid cells.
        beta: kernel shape.

    Returns:
        [K] float64, by Gauss-Legendre quadrature with 4 w + 40 nodes: more nodes change
        the result only at float64 rounding of psi_hat(0) (the integrand is smooth inside
        and the kernel is exp(-beta) ~ tol at the ends).
    """
    z, wq = gauss_legendre(4 * width + 40)
    half = width / 2
    return half * torch.sum(wq * es_kernel(z, beta) * torch.cos(xi[:, None] * half * z), dim=-1)




def deapodisation(image_size: tuple[int, ...], grid: tuple[int, ...], width: int, beta: float,
                  device=None) -> list[torch.Tensor]:
    """Per dimension, psi_hat(2 pi j / n) for the pixel frequencies j = -N // 2 .. N - N // 2 - 1:
    a list of float64 tensors, one per axis ([H], [W]; in 3-D [D], [H], [W]); step 1 of
    type 2 divides by their outer product, type 1 after its last step."""
    out = []
    for n, s in zip(grid, image_size):
        j = torch.arange(s, dtype=torch.float64) - s // 2
        out.append(es_kernel_ft(2 * math.pi * j / n, width, beta).to(device))
    return out


def pipe_scale(width: int, beta: float, grid: tuple[int, ...]) -> float:
    """The factor that turns the Pipe-Menon fixed point into density weights, on a grid of
    d = len(grid) dimensions.

    The iteration w <- w / (P P^T w) converges to sum_m' w_m' K(t_m - t_m') = 1 with
    int K = psi_hat(0)^(2 d) (cells^d), i.e. w = 1 / (points per cell^d * psi_hat(0)^(2 d));
    the target, F^H diag(w) F ~ I, is 1 / (points per cell^d * n0 n1 (n2)).
    """
    psi0 = es_kernel_ft(torch.zeros(1, dtype=torch.float64), width, beta).item()
    return psi0 ** (2 * len(grid)) / math.prod(grid)
