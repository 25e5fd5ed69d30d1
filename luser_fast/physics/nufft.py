"""Non-Cartesian multi-coil MRI operator on the NUFFT ops: one definition.

``NUFFT`` stores the trajectory (a copy), coil maps and density and calls
``luser_fast.ops.nufft_type2`` / ``nufft_type1``, which pick the backend (C++ on the CPU,
CUDA kernels on a GPU, the reference where neither serves); ``luser_fast.reference.NUFFT``
is the same class with every op on its reference. ``normal`` runs through the Toeplitz
embedding: A^H A = S^H F^H D F S, and F^H D F is a convolution whose kernel
K(delta) = sum_m d_m exp(+i k_m . delta), delta in (-N, N), is one type-1 transform of the
density onto a 2H x 2W grid. Its 2x zero-padded circulant embedding's FFT is computed once
(per dtype and device), so ``normal(x)`` is two FFTs of size 2H x 2W per coil and no
gridding at all.

Density compensation: ``NUFFT(..., density=w)`` weights the operator symmetrically,
A x = sqrt(w) * NUFFT(S x), so A^H stays the exact adjoint and A^H A = F^H diag(w) F is the
density-weighted normal operator. Raw k-space samples must be weighted the same way:
``op.compensate(y_raw)``; then ``op.adjoint(op.compensate(y_raw))`` is the
density-compensated gridding reconstruction. ``pipe_density`` estimates w by the Pipe &
Menon (1999) iteration.
"""
from __future__ import annotations

import torch

from ..core import nufft_kernel, validate
from ..core.operator import Operator
from ..ops.nufft import gridding_plan, nufft_type1, nufft_type2

__all__ = ["NUFFT", "pipe_density", "PIPE_OVERSAMP"]

#: what ``pipe_density(..., oversamp=None)`` uses (see its docstring)
PIPE_OVERSAMP = 2.0


def pipe_density(ktraj: torch.Tensor, image_size, iters: int = 10, tol: float = 1e-6,
                 oversamp: float | None = None, *, backend: str | None = None) -> torch.Tensor:
    """Density compensation weights by the Pipe & Menon (1999) fixed-point iteration.

    Iterates w <- w / (P P^T w), with P^T the spreading and P the interpolation of the
    gridding plan (so P P^T is convolution with the kernel's autocorrelation), then
    rescales so that F^H diag(w) F ~ I (w ~ area per point / (2 pi)^2) where the
    trajectory covers k-space; e.g. a full Cartesian grid gets w = 1 / (H W). The
    gridding runs on the compiled kernels where they serve ktraj's device, else on the
    reference plan.

    Args:
        ktraj: [M, 2] radians in [-pi, pi].
        image_size: (H, W) or int.
        iters: fixed-point iterations (>= 1).
        tol, oversamp: kernel of the gridding plan used for the convolution (complex128).
            oversamp None means ``PIPE_OVERSAMP`` = 2.0 here, not the transforms' choice
            from tol: the estimate's quality is set by the kernel's footprint in k-space,
            w / (sigma N), which is 2-2.5x wider at 1.25 (measured on a 48 x 48 radial
            trajectory, weights / ramp: std 0.5-1.6% at 2.0, 2.5-7% at 1.25).
        backend: as in ``luser_fast.ops.nufft_type1``.

    Returns:
        [M] nonnegative weights, float64 (ktraj's device).
    """
    fn = "pipe_density"
    validate.int_arg("iters", iters, 1, fn)
    ktraj = validate.ktraj(ktraj, fn)
    size = validate.image_size(image_size, fn)
    tol, oversamp = validate.nufft_accuracy(tol, oversamp, fn)
    if oversamp is None:
        oversamp = PIPE_OVERSAMP
    plan = gridding_plan(ktraj, size, tol, oversamp, dtype=torch.complex128, backend=backend)
    dens = torch.ones(1, ktraj.shape[0], dtype=torch.complex128, device=ktraj.device)
    for _ in range(iters):
        dens = dens / plan.interp(plan.spread(dens)).real
    return dens[0].real * nufft_kernel.pipe_scale(plan.width, plan.beta, plan.grid_size)


class NUFFT(Operator):
    """Non-Cartesian multi-coil MRI forward model y = sqrt(density) * NUFFT_2(S x).

    Args:
        ktraj: [M, 2] radians in [-pi, pi]; column 0 along H, column 1 along W.
        image_size: (H, W) or int.
        coil_maps: optional [Coils, H, W] or [B, Coils, H, W] complex sensitivities.
        density: optional [M] real nonnegative weights w, applied symmetrically as
            sqrt(w) (module docstring); or the string "pipe" for
            ``pipe_density(ktraj, image_size)``; see ``compensate``.
        tol: NUFFT relative accuracy in (0, 0.1].
        oversamp: grid oversampling sigma > 1, or None (default): chosen per call from tol
            and the data's precision (1.25 for tol >= 1e-4 in complex64 and >= 1e-8 in
            complex128, else 2.0; ``luser_fast.ops.nufft_type2``).

    Shapes:
        x: [..., 1, H, W] complex -> y: [..., Coils, M] complex (Coils = 1 without maps).

    The trajectory (and density) are copied at construction: a later write to the caller's
    tensor or NumPy array does not change the operator. The Toeplitz kernel is cached
    with a copy of the trajectory and density it was computed from and recomputed if
    ``op.ktraj`` or ``op.density`` are written to.

    Example:
        >>> op = NUFFT(ktraj, (256, 256), coil_maps=maps, density="pipe")
        >>> y = op(x)                          # [B, 1, 256, 256] -> [B, Coils, M]
        >>> x_grid = op.adjoint(op.compensate(y_raw))
        >>> x_n = op.normal(x)                 # Toeplitz: FFTs only
    """

    complex_domain = True
    #: backend requested for every op (None: ``luser_fast.backends`` chooses)
    backend: str | None = None

    def __init__(self, ktraj: torch.Tensor, image_size, coil_maps: torch.Tensor | None = None,
                 density: torch.Tensor | str | None = None, tol: float = 1e-6,
                 oversamp: float | None = None):
        super().__init__()
        fn = "NUFFT"
        self.tol, self.oversamp = validate.nufft_accuracy(tol, oversamp, fn)
        if not isinstance(ktraj, torch.Tensor):
            ktraj = validate.as_tensor(ktraj, "ktraj", fn)
        ktraj = validate.ktraj(ktraj, fn).detach().clone()
        self.image_size = validate.image_size(image_size, fn)
        m = ktraj.shape[0]
        coil_maps = validate.coil_maps(coil_maps, self.image_size, fn)
        if isinstance(density, str):
            if density != "pipe":
                raise ValueError(f"NUFFT: density must be a tensor, None or 'pipe', got {density!r}")
            density = pipe_density(ktraj, self.image_size, tol=self.tol,
                                   oversamp=self.oversamp, backend=self.backend)
        elif density is not None:
            density = validate.as_tensor(density, "density", fn).detach().clone()
            if density.shape != (m,):
                raise ValueError(f"NUFFT: density must have shape [M] = [{m}], "
                                 f"got {tuple(density.shape)}")
            if not density.is_floating_point():
                raise ValueError(f"NUFFT: density must be real floating point, got {density.dtype}")
            if not torch.isfinite(density).all() or (density < 0).any():
                raise ValueError("NUFFT: density must be finite and nonnegative")
        self.register_buffer("ktraj", ktraj)
        self.register_buffer("coil_maps", coil_maps)
        self.register_buffer("density", density)
        self._toeplitz = {}
        self._toeplitz_source = None

    @property
    def n_coils(self) -> int:
        return 1 if self.coil_maps is None else self.coil_maps.shape[-3]

    @property
    def n_points(self) -> int:
        return self.ktraj.shape[0]

    def _check(self, t: torch.Tensor, name: str, tail: tuple[int, ...]) -> None:
        validate.complex_tensor(t, name, "NUFFT")
        if t.dim() < len(tail) or tuple(t.shape[-len(tail):]) != tail:
            raise ValueError(f"NUFFT: {name} must have shape [..., {', '.join(map(str, tail))}], "
                             f"got {tuple(t.shape)}")

    def compensate(self, y_raw: torch.Tensor) -> torch.Tensor:
        """Weight raw k-space samples [..., Coils, M] by sqrt(density) to match ``forward``."""
        if self.density is None:
            return y_raw
        return y_raw * torch.sqrt(self.density).to(y_raw.real.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x. Args: x [..., 1, H, W] complex. Returns: [..., Coils, M] complex."""
        self._check(x, "x", (1, *self.image_size))
        if self.coil_maps is not None:
            x = x * self.coil_maps.to(x)
        return self.compensate(nufft_type2(x, self.ktraj, self.tol, self.oversamp,
                                           backend=self.backend))

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """A^H y. Args: y [..., Coils, M] complex; x unused. Returns: [..., 1, H, W] complex."""
        self._check(y, "y", (self.n_coils, self.n_points))
        img = nufft_type1(self.compensate(y), self.ktraj, self.image_size, self.tol,
                          self.oversamp, backend=self.backend)
        if self.coil_maps is None:
            return img
        return torch.sum(self.coil_maps.to(y).conj() * img, dim=-3, keepdim=True)

    def toeplitz_kernel(self, dtype: torch.dtype = torch.complex64,
                        device: torch.device | None = None) -> torch.Tensor:
        """FFT of the circulant embedding of F^H D F: [2H, 2W] complex, cached.

        K(delta) = sum_m d_m exp(+i k_m . delta) is the type-1 transform of the density
        (ones without one) onto the 2H x 2W grid, whose pixel n holds delta = n - (H, W);
        rolled so that delta sits at delta mod (2H, 2W), then FFT'd. Computed in complex128
        at the operator's tol (and oversamp, or the choice for complex128 when None) and
        cached per (dtype, device) until ktraj's or density's values change.

        Args:
            dtype: complex dtype of the result.
            device: its device (default: ktraj's).

        Returns:
            [2H, 2W] tensor of ``dtype``.
        """
        device = torch.device(device) if device is not None else self.ktraj.device
        dens = self.density
        if not self._toeplitz_source_holds():
            self._toeplitz = {}
            self._toeplitz_source = (self.ktraj.detach().clone(),
                                     None if dens is None else dens.detach().clone())
        key = (dtype, str(device))
        if key not in self._toeplitz:
            h, w = self.image_size
            m = self.n_points
            weights = (torch.ones(m, dtype=torch.complex128, device=self.ktraj.device) if dens is None
                       else dens.to(torch.complex128))
            with torch.no_grad():
                # [2H, 2W]; pixel n holds delta = n - (H, W)
                kern = nufft_type1(weights, self.ktraj, (2 * h, 2 * w), self.tol, self.oversamp,
                                   backend=self.backend)
                kern = torch.fft.fft2(torch.roll(kern, shifts=(h, w), dims=(0, 1)))
            self._toeplitz[key] = kern.to(device=device, dtype=dtype)
        return self._toeplitz[key]

    def _toeplitz_source_holds(self) -> bool:
        """True when ktraj and density hold the values the cached Toeplitz kernels were
        computed from (compared exactly: writes through ``.data`` or shared memory do not
        bump a tensor's version counter)."""
        source = getattr(self, "_toeplitz_source", None)
        if source is None:
            return False
        return all(a is None and b is None
                   or (a is not None and b is not None and a.dtype == b.dtype
                       and a.shape == b.shape and a.device == b.device
                       and torch.equal(a, b.detach()))
                   for a, b in zip(source, (self.ktraj, self.density)))

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

    def domain_shape(self, y: torch.Tensor) -> torch.Size:
        return torch.Size((*y.shape[:-2], 1, *self.image_size))

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 1, *self.image_size, dtype=torch.complex64, device=self.ktraj.device)
