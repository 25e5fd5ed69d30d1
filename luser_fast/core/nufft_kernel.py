"""2-D NUFFT conventions and the gridding kernel shared by every implementation.

The reference (``luser_fast/reference/nufft.py``), the C++/CUDA gridding kernels and the
``NUFFT`` operator all follow the conventions below and take their kernel (width, shape,
grid size, deapodisation) from the functions here.

Conventions (docs/API.md): ``ktraj`` is [M, 2] in radians, inside [-pi, pi]; ``ktraj[:, 0]`` is
the frequency along H and ``ktraj[:, 1]`` along W. Type 2 (uniform grid -> points) is

    y_m = sum_n x_n exp(-i k_m . (n - N // 2)),     n in [0, H) x [0, W),

with the pixel index centred per dimension by N // 2 = (H // 2, W // 2). Type 1 (points ->
grid) is its adjoint, exp(+i ...), unnormalised. Both are batched over leading dims.

Gridding (Barnett, Magland & af Klinteberg 2019, "A parallel non-uniform fast Fourier
transform library based on an exponential of semicircle kernel"; FINUFFT). On an
oversampled grid of n cells per dimension (spacing h = 2 pi / n) the kernel, in grid cells,
is psi(u) = phi(2 u / w) with phi(z) = exp(beta (sqrt(1 - z^2) - 1)) on |z| <= 1. By
Poisson summation, sum_l psi(t - l) exp(-i h l j) = exp(-i k j) psi_hat(h j) + aliasing,
where t = k / h and psi_hat(xi) = int psi(u) exp(-i xi u) du. So type 2 is:

    1. deapodise: x_j / (psi_hat(h0 j0) psi_hat(h1 j1)), j = n - N // 2;
    2. place x_j at grid index j mod n (zero-pad, shift) and take the unnormalised FFT;
    3. interpolate each point from the w x w grid cells l with |t - l| <= w / 2.

Type 1 runs the transposes in reverse: spread with the same weights, unnormalised inverse
FFT, crop, deapodise. psi_hat has no closed form; it is computed once per plan by
Gauss-Legendre quadrature.

Kernel parameters (``kernel_params``) follow FINUFFT's rules with one safety margin: the
error decays like exp(-pi w sqrt(1 - 1 / sigma)), so w = ceil(ln(10 / tol) /
(pi sqrt(1 - 1 / sigma))) and beta = 0.97 pi (1 - 1 / (2 sigma)) w, 97% of the cutoff that
puts the kernel's Fourier transform edge at the first aliased image. At sigma = 2 and
tol = 10^-d that is w = d + 2 and beta = 2.285 w (FINUFFT: w = d + 1, beta = 2.30 w, which
measures 1-5 x tol against the exact sum; the extra cell keeps the error below tol). The
grid size is n = next 2-3-5-smooth even integer >= max(sigma N, 2 w). Accuracy floors in
complex128 (measured, H = W = 64 and 128): about 1.5e-14 at sigma = 2 and 1e-10 at
sigma = 1.25, where deapodisation divides by kernel transforms down to ~1e-5; a smaller
tol is not reached. complex64 runs in float32 (the reference works in its input's
precision), so its floor is float32 rounding times the deapodisation range: about 2e-7 at
sigma = 2 (range < 8) and 1e-5 to 1e-4 at sigma = 1.25 (range up to ~6e4 for w >= 10).

Density compensation: ``NUFFT(..., density=w)`` weights the operator symmetrically,
A x = sqrt(w) * NUFFT(S x), so A^H stays the exact adjoint and A^H A = F^H diag(w) F is
the density-weighted normal operator (its Toeplitz kernel is the type-1 transform of w).
Raw k-space samples must be weighted the same way: ``op.compensate(y_raw)``; then
``op.adjoint(op.compensate(y_raw))`` is the density-compensated gridding reconstruction.
``pipe_density`` estimates w by the Pipe & Menon (1999) iteration, scaled so that
F^H diag(w) F ~ I where the trajectory covers k-space.
"""
from __future__ import annotations

import math

import torch

from . import validate

__all__ = ["ERR_CONSTANT", "kernel_params", "next_smooth_even", "grid_size", "es_kernel",
           "es_kernel_ft", "deapodisation", "pipe_scale"]

#: bound on the measured error / exp(-pi w sqrt(1 - 1 / sigma)) of the ES kernel
ERR_CONSTANT = 10.0


def kernel_params(tol: float, oversamp: float = 2.0) -> tuple[int, float]:
    """Width w (grid cells) and shape beta of the ES kernel for a target relative error.

    w = ceil(ln(C / tol) / (pi sqrt(1 - 1 / sigma))), beta = 0.97 pi (1 - 1 / (2 sigma)) w,
    where C = ``ERR_CONSTANT`` = 10 bounds the measured ratio of the error to
    exp(-pi w sqrt(1 - 1 / sigma)) (4-14 over image sizes 1-128, both sigmas). See the
    module docstring for the comparison with FINUFFT and the accuracy floors.

    Args:
        tol: target relative l2 error, in (0, 0.1].
        oversamp: grid oversampling factor sigma > 1.

    Returns:
        (w, beta).
    """
    tol, oversamp = validate.nufft_accuracy(tol, oversamp, "kernel_params")
    decay = math.pi * math.sqrt(1.0 - 1.0 / oversamp)
    w = max(2, math.ceil(math.log(ERR_CONSTANT / tol) / decay))
    return w, 0.97 * math.pi * (1.0 - 1.0 / (2.0 * oversamp)) * w


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


def grid_size(image_size: tuple[int, int], oversamp: float, width: int) -> tuple[int, int]:
    """Oversampled grid (n0, n1): per dimension the next 2-3-5-smooth even integer
    >= max(sigma N, 2 w)."""
    return tuple(next_smooth_even(max(math.ceil(oversamp * s), 2 * width)) for s in image_size)


def gauss_legendre(q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q-point Gauss-Legendre nodes and weights on [-1, 1] (Golub-Welsch), float64."""
    k = torch.arange(1, q, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    nodes, vecs = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    return nodes, 2 * vecs[0] ** 2


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




def deapodisation(image_size: tuple[int, int], grid: tuple[int, int], width: int, beta: float,
                  device=None) -> list[torch.Tensor]:
    """Per dimension, psi_hat(2 pi j / n) for the pixel frequencies j = -N // 2 .. N - N // 2 - 1:
    a list of two float64 tensors [H] and [W] (step 1 of type 2 divides by their outer
    product, type 1 after its last step)."""
    out = []
    for n, s in zip(grid, image_size):
        j = torch.arange(s, dtype=torch.float64) - s // 2
        out.append(es_kernel_ft(2 * math.pi * j / n, width, beta).to(device))
    return out


def pipe_scale(width: int, beta: float, grid: tuple[int, int]) -> float:
    """The factor that turns the Pipe-Menon fixed point into density weights.

    The iteration w <- w / (P P^T w) converges to sum_m' w_m' K(t_m - t_m') = 1 with
    int K = psi_hat(0)^4 (cells^2), i.e. w = 1 / (points per cell^2 * psi_hat(0)^4); the
    target, F^H diag(w) F ~ I, is 1 / (points per cell^2 * n0 n1).
    """
    psi0 = es_kernel_ft(torch.zeros(1, dtype=torch.float64), width, beta).item()
    return psi0 ** 4 / (grid[0] * grid[1])
