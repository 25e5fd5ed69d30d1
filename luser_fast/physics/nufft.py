"""Non-Cartesian multi-coil MRI operator on the fast NUFFT ops.

``NUFFT`` is the reference operator (``luser_fast.reference.nufft.NUFFT``: same
constructor, same ``state_dict`` keys, same conventions and symmetric sqrt(density)
weighting) with its transforms dispatched to ``torch.ops.luser_fast.nufft_type2`` /
``nufft_type1`` through ``luser_fast.backends`` (C++ on the CPU, CUDA kernels on a GPU,
the reference where neither serves), and with ``normal`` through the Toeplitz embedding:
A^H A = S^H F^H D F S, and F^H D F is a convolution whose kernel
K(delta) = sum_m d_m exp(+i k_m . delta), delta in (-N, N), is one type-1 transform of the
density onto a 2H x 2W grid. Its 2x zero-padded circulant embedding's FFT is computed once
(per dtype and device), so ``normal(x)`` is two FFTs of size 2H x 2W per coil and no
gridding at all.
"""
from __future__ import annotations

import torch

from ..ops import nufft as _ops
from ..reference import nufft as _ref

__all__ = ["NUFFT", "pipe_density"]


def pipe_density(ktraj: torch.Tensor, image_size, iters: int = 10, tol: float = 1e-6,
                 oversamp: float = 2.0) -> torch.Tensor:
    """Density compensation weights by the Pipe & Menon (1999) fixed-point iteration.

    The reference's ``pipe_density`` (same iteration w <- w / (P P^T w), same scaling so
    that F^H diag(w) F ~ I where the trajectory covers k-space), with the spreading P^T
    and interpolation P run by the compiled kernels when they serve ``ktraj``'s device.

    Args:
        ktraj: [M, 2] radians in [-pi, pi].
        image_size: (H, W) or int.
        iters: fixed-point iterations (>= 1).
        tol, oversamp: kernel of the gridding plan used for the convolution.

    Returns:
        [M] nonnegative weights, float64 (ktraj's device).
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"pipe_density: iters must be a positive int, got {iters!r}")
    ktraj = _ref._check_ktraj(ktraj, "pipe_density")
    size = _ref._image_size(image_size, "pipe_density")
    _ref._check_tol(tol, oversamp, "pipe_density")
    plan = _ops.plan_for(ktraj, size, tol, oversamp)
    if plan.kind == "reference":
        return _ref.pipe_density(ktraj, size, iters, tol, oversamp)
    n0, n1 = plan.grid_size
    dens = torch.ones(1, plan.n_points, dtype=torch.complex128, device=ktraj.device)
    grid = torch.empty(1, n1, n0, dtype=torch.complex128, device=ktraj.device)
    for _ in range(iters):
        dens = dens / _ops._interp(plan, _ops._spread(plan, dens, grid)).real
    psi0 = _ref.es_kernel_ft(torch.zeros(1, dtype=torch.float64), plan.width, plan.beta).item()
    return dens[0].real * psi0 ** 4 / (n0 * n1)


class NUFFT(_ref.NUFFT):
    """Non-Cartesian multi-coil MRI forward model y = sqrt(density) * NUFFT_2(S x).

    Args:
        ktraj: [M, 2] radians in [-pi, pi]; column 0 along H, column 1 along W.
        image_size: (H, W) or int.
        coil_maps: optional [Coils, H, W] or [B, Coils, H, W] complex sensitivities.
        density: optional [M] real nonnegative weights w, applied symmetrically as
            sqrt(w); or the string "pipe" for ``pipe_density(ktraj, image_size)``.
        tol: NUFFT relative accuracy in (0, 0.1].
        oversamp: grid oversampling sigma > 1 (2.0 default, 1.25 for a smaller grid).

    Shapes:
        x: [..., 1, H, W] complex -> y: [..., Coils, M] complex (Coils = 1 without maps).

    Example:
        >>> op = NUFFT(ktraj, (256, 256), coil_maps=maps, density="pipe")
        >>> y = op(x)                          # [B, 1, 256, 256] -> [B, Coils, M]
        >>> x_grid = op.adjoint(op.compensate(y_raw))
        >>> x_n = op.normal(x)                 # Toeplitz: FFTs only
    """

    def __init__(self, ktraj: torch.Tensor, image_size, coil_maps: torch.Tensor | None = None,
                 density: torch.Tensor | str | None = None, tol: float = 1e-6,
                 oversamp: float = 2.0):
        if isinstance(density, str):
            if density != "pipe":
                raise ValueError(f"NUFFT: density must be a tensor, None or 'pipe', got {density!r}")
            _ref._check_tol(tol, oversamp, "NUFFT")
            density = pipe_density(_ref._check_ktraj(ktraj, "NUFFT"), image_size, tol=tol,
                                   oversamp=oversamp)
        super().__init__(ktraj, image_size, coil_maps, density, tol, oversamp)
        self._toeplitz = {}

    def _type2(self, x: torch.Tensor) -> torch.Tensor:
        if _ops._use_reference("nufft_type2", x):
            return self.plan.type2(x)
        return torch.ops.luser_fast.nufft_type2(x, self.ktraj, self.tol, self.oversamp)

    def _type1(self, y: torch.Tensor) -> torch.Tensor:
        if _ops._use_reference("nufft_type1", y):
            return self.plan.type1(y)
        return torch.ops.luser_fast.nufft_type1(y, self.ktraj, self.image_size, self.tol,
                                                self.oversamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x. Args: x [..., 1, H, W] complex. Returns: [..., Coils, M] complex."""
        self._check(x, "x", (1, *self.image_size))
        if self.coil_maps is not None:
            x = x * self.coil_maps.to(x)
        return self.compensate(self._type2(x))

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """A^H y. Args: y [..., Coils, M] complex; x unused. Returns: [..., 1, H, W] complex."""
        self._check(y, "y", (self.n_coils, self.plan.n_points))
        img = self._type1(self.compensate(y))
        if self.coil_maps is None:
            return img
        return torch.sum(self.coil_maps.to(y).conj() * img, dim=-3, keepdim=True)

    def toeplitz_kernel(self, dtype: torch.dtype = torch.complex64,
                        device: torch.device | None = None) -> torch.Tensor:
        """FFT of the circulant embedding of F^H D F: [2H, 2W] complex, cached.

        K(delta) = sum_m d_m exp(+i k_m . delta) is the type-1 transform of the density
        (ones without one) onto the 2H x 2W grid, whose pixel n holds delta = n - (H, W);
        rolled so that delta sits at delta mod (2H, 2W), then FFT'd. Computed in complex128
        at the operator's tol and cached per (dtype, device) until ktraj or density change.

        Args:
            dtype: complex dtype of the result.
            device: its device (default: ktraj's).

        Returns:
            [2H, 2W] tensor of ``dtype``.
        """
        device = torch.device(device) if device is not None else self.ktraj.device
        dens = self.density
        key = (dtype, str(device), id(self.ktraj), self.ktraj._version,
               None if dens is None else (id(dens), dens._version))
        if key not in self._toeplitz:
            h, w = self.image_size
            m = self.plan.n_points
            weights = (torch.ones(m, dtype=torch.complex128, device=self.ktraj.device) if dens is None
                       else dens.to(torch.complex128))
            with torch.no_grad():
                # [2H, 2W]; pixel n holds delta = n - (H, W)
                kern = _ops.nufft_type1(weights, self.ktraj, (2 * h, 2 * w), self.tol, self.oversamp)
                kern = torch.fft.fft2(torch.roll(kern, shifts=(h, w), dims=(0, 1)))
            self._toeplitz = {k: v for k, v in self._toeplitz.items() if k[2:] == key[2:]}
            self._toeplitz[key] = kern.to(device=device, dtype=dtype)
        return self._toeplitz[key]

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x through the Toeplitz embedding (FFTs of size 2H x 2W, no gridding).

        Args:
            x: [..., 1, H, W] complex.

        Returns:
            [..., 1, H, W] complex, equal to ``adjoint(forward(x))`` up to the NUFFT's tol.
        """
        self._check(x, "x", (1, *self.image_size))
        h, w = self.image_size
        kern = self.toeplitz_kernel(x.dtype, x.device)
        z = x * self.coil_maps.to(x) if self.coil_maps is not None else x
        zf = torch.fft.fft2(z, s=(2 * h, 2 * w))
        out = torch.fft.ifft2(zf * kern)[..., :h, :w]
        if self.coil_maps is None:
            return out
        return torch.sum(self.coil_maps.to(x).conj() * out, dim=-3, keepdim=True)
