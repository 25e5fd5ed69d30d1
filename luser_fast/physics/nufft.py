"""Non-Cartesian multi-coil MRI operator on the NUFFT ops, 2-D and 3-D: one definition.

``NUFFT`` stores the trajectory (a copy), coil maps and density and calls
``luser_fast.ops.nufft_type2`` / ``nufft_type1``, which pick the backend (C++ on the CPU,
CUDA kernels on a GPU, the reference where neither serves); ``luser_fast.reference.NUFFT``
is the same class with every op on its reference. The trajectory's columns set the
dimension: [M, 2] (ky, kx) for images (H, W), [M, 3] (kz, ky, kx) for volumes (D, H, W).
``normal`` runs through the Toeplitz embedding: A^H A = S^H F^H D F S, and F^H D F is a
convolution whose kernel K(delta) = sum_m d_m exp(+i k_m . delta), delta in (-N, N), is one
type-1 transform of the density onto a grid of twice the image size per axis (2H x 2W, or
2D x 2H x 2W). Its 2x zero-padded circulant embedding's FFT is computed once (per dtype
and device), so ``normal(x)`` is two FFTs of that size per coil and no gridding at all.

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
    rescales so that F^H diag(w) F ~ I (w ~ area per point / (2 pi)^2; in 3-D volume per
    point / (2 pi)^3) where the trajectory covers k-space; e.g. a full Cartesian grid gets
    w = 1 / (H W) (1 / (D H W)). The
    gridding runs on the compiled kernels where they serve ktraj's device, else on the
    reference plan.

    Args:
        ktraj: [M, 2] or [M, 3] radians in [-pi, pi].
        image_size: (H, W) for [M, 2], (D, H, W) for [M, 3]; or an int.
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
    size = _image_size(image_size, ktraj, fn)
    tol, oversamp = validate.nufft_accuracy(tol, oversamp, fn)
    if oversamp is None:
        oversamp = PIPE_OVERSAMP
    plan = gridding_plan(ktraj, size, tol, oversamp, dtype=torch.complex128, backend=backend)
    dens = torch.ones(1, ktraj.shape[0], dtype=torch.complex128, device=ktraj.device)
    for _ in range(iters):
        dens = dens / plan.interp(plan.spread(dens)).real
    return dens[0].real * nufft_kernel.pipe_scale(plan.width, plan.beta, plan.grid_size)


def _image_size(image_size, ktraj: torch.Tensor, fn: str) -> tuple[int, ...]:
    """image_size for ktraj's columns: (H, W) for 2, (D, H, W) for 3."""
    d = ktraj.shape[1]
    return validate.image_size(image_size, fn, d, f" for a {d}-column ktraj")


class NUFFT(Operator):
    """Non-Cartesian multi-coil MRI forward model y = sqrt(density) * NUFFT_2(S x), 2-D or 3-D.

    Args:
        ktraj: [M, 2] radians in [-pi, pi], column 0 along H, column 1 along W; or [M, 3]
            for volumes, columns (kz, ky, kx) along (D, H, W).
        image_size: (H, W) for [M, 2], (D, H, W) for [M, 3]; or an int (square / cube).
        coil_maps: optional [Coils, *image_size] or [B, Coils, *image_size] complex
            sensitivities.
        density: optional [M] real nonnegative weights w, applied symmetrically as
            sqrt(w) (module docstring); or the string "pipe" for
            ``pipe_density(ktraj, image_size)``; see ``compensate``.
        tol: NUFFT relative accuracy in (0, 0.1].
        oversamp: grid oversampling sigma > 1, or None (default): chosen per call from tol
            and the data's precision (1.25 for tol >= 1e-4 in complex64 and >= 1e-8 in
            complex128, else 2.0; ``luser_fast.ops.nufft_type2``).

    Shapes:
        x: [..., 1, H, W] (3-D: [..., 1, D, H, W]) complex -> y: [..., Coils, M] complex
        (Coils = 1 without maps).

    The trajectory (and density) are copied at construction: a later write to the caller's
    tensor or NumPy array does not change the operator. The Toeplitz kernel is cached
    with a copy of the trajectory and density it was computed from and recomputed if
    ``op.ktraj`` or ``op.density`` are written to.

    Example:
        >>> op = NUFFT(ktraj, (256, 256), coil_maps=maps, density="pipe")
        >>> y = op(x)                          # [B, 1, 256, 256] -> [B, Coils, M]
        >>> x_grid = op.adjoint(op.compensate(y_raw))
        >>> x_n = op.normal(x)                 # Toeplitz: FFTs only
        >>> vol = NUFFT(ktraj3, (32, 48, 48), coil_maps=maps3)   # ktraj3 [M, 3]
        >>> y = vol(torch.zeros(1, 1, 32, 48, 48, dtype=torch.complex64))
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
        self.image_size = _image_size(image_size, ktraj, fn)
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
    def dims(self) -> int:
        """2 for images (H, W), 3 for volumes (D, H, W)."""
        return len(self.image_size)

    @property
    def n_coils(self) -> int:
        return 1 if self.coil_maps is None else self.coil_maps.shape[-self.dims - 1]

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
        """A x. Args: x [..., 1, *image_size] complex. Returns: [..., Coils, M] complex."""
        self._check(x, "x", (1, *self.image_size))
        if self.coil_maps is not None:
            x = x * self.coil_maps.to(x)
        return self.compensate(nufft_type2(x, self.ktraj, self.tol, self.oversamp,
                                           backend=self.backend))

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """A^H y. Args: y [..., Coils, M] complex; x unused. Returns: [..., 1, *image_size]
        complex."""
        self._check(y, "y", (self.n_coils, self.n_points))
        img = nufft_type1(self.compensate(y), self.ktraj, self.image_size, self.tol,
                          self.oversamp, backend=self.backend)
        if self.coil_maps is None:
            return img
        return torch.sum(self.coil_maps.to(y).conj() * img, dim=-self.dims - 1, keepdim=True)

    def toeplitz_kernel(self, dtype: torch.dtype = torch.complex64,
                        device: torch.device | None = None) -> torch.Tensor:
        """FFT of the circulant embedding of F^H D F: [2H, 2W] (3-D: [2D, 2H, 2W]) complex,
        cached.

        K(delta) = sum_m d_m exp(+i k_m . delta) is the type-1 transform of the density
        (ones without one) onto the grid of twice the image size, whose pixel n holds
        delta = n - N (N = image_size); rolled so that delta sits at delta mod 2N, then
        FFT'd. Computed in complex128
        at the operator's tol (and oversamp, or the choice for complex128 when None) and
        cached per (dtype, device) until ktraj's or density's values change.

        Args:
            dtype: complex dtype of the result.
            device: its device (default: ktraj's).

        Returns:
            [2H, 2W] or [2D, 2H, 2W] tensor of ``dtype``.
        """
        device = torch.device(device) if device is not None else self.ktraj.device
        dens = self.density
        if not self._toeplitz_source_holds():
            self._toeplitz = {}
            self._toeplitz_source = (self.ktraj.detach().clone(),
                                     None if dens is None else dens.detach().clone())
        key = (dtype, str(device))
        if key not in self._toeplitz:
            size = self.image_size
            axes = tuple(range(self.dims))
            m = self.n_points
            weights = (torch.ones(m, dtype=torch.complex128, device=self.ktraj.device) if dens is None
                       else dens.to(torch.complex128))
            with torch.no_grad():
                # [2N]; pixel n holds delta = n - N
                kern = nufft_type1(weights, self.ktraj, tuple(2 * s for s in size), self.tol,
                                   self.oversamp, backend=self.backend)
                kern = torch.fft.fftn(torch.roll(kern, shifts=size, dims=axes), dim=axes)
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
        """A^H A x through the Toeplitz embedding (FFTs of twice the image size per axis,
        no gridding).

        Args:
            x: [..., 1, *image_size] complex.

        Returns:
            [..., 1, *image_size] complex, equal to ``adjoint(forward(x))`` up to the
            NUFFT's tol.
        """
        self._check(x, "x", (1, *self.image_size))
        size, d = self.image_size, self.dims
        axes = tuple(range(-d, 0))
        kern = self.toeplitz_kernel(x.dtype, x.device)
        z = x * self.coil_maps.to(x) if self.coil_maps is not None else x
        zf = torch.fft.fftn(z, s=tuple(2 * s for s in size), dim=axes)
        out = torch.fft.ifftn(zf * kern, dim=axes)[(..., *(slice(0, s) for s in size))]
        if self.coil_maps is None:
            return out
        return torch.sum(self.coil_maps.to(x).conj() * out, dim=-d - 1, keepdim=True)

    def domain_shape(self, y: torch.Tensor) -> torch.Size:
        """[..., 1, *image_size] for y [..., Coils, M]."""
        return torch.Size((*y.shape[:-2], 1, *self.image_size))

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 1, *self.image_size, dtype=torch.complex64, device=self.ktraj.device)
