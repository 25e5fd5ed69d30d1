"""2-D NUFFT reference: exact NUDFT, gridding NUFFT (types 1 and 2) and the `NUFFT` operator.

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
from numbers import Real

import torch
from torch import nn

from .operator import Operator

#: elements of complex temporaries ([..., chunk, w * w]) allowed per chunk of points
_CHUNK_ELEMENTS = 1 << 22
#: slack on the [-pi, pi] range so that float32 pi (slightly > math.pi) passes
_RANGE_SLACK = 1e-5
#: bound on the measured error / exp(-pi w sqrt(1 - 1 / sigma)) of the ES kernel
_ERR_CONSTANT = 10.0


def _image_size(image_size, where: str) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"{where}: image_size must be an int or a pair (H, W) of positive ints, "
                         f"got {image_size!r}")
    return size


def _check_ktraj(ktraj, where: str) -> torch.Tensor:
    if not isinstance(ktraj, torch.Tensor):
        ktraj = torch.as_tensor(ktraj)
    if ktraj.dim() != 2 or ktraj.shape[1] != 2 or ktraj.shape[0] < 1:
        raise ValueError(f"{where}: ktraj must have shape [M, 2] with M >= 1, got {tuple(ktraj.shape)}")
    if not ktraj.is_floating_point():
        raise ValueError(f"{where}: ktraj must be real floating point (radians), got {ktraj.dtype}")
    if not torch.isfinite(ktraj).all():
        raise ValueError(f"{where}: ktraj has non-finite entries (NaN or inf)")
    kmax = ktraj.abs().max().item()
    if kmax > math.pi * (1 + _RANGE_SLACK):
        raise ValueError(f"{where}: ktraj must be radians in [-pi, pi]; got max |k| = {kmax:.6g}")
    return ktraj


def _check_tol(tol, oversamp, where: str) -> None:
    if isinstance(tol, bool) or not isinstance(tol, Real) or not 0 < tol <= 0.1:
        raise ValueError(f"{where}: tol must be a number in (0, 0.1], got {tol!r}")
    if (isinstance(oversamp, bool) or not isinstance(oversamp, Real)
            or not math.isfinite(oversamp) or oversamp <= 1):
        raise ValueError(f"{where}: oversamp must be a finite number > 1 (2.0 or 1.25 are usual), "
                         f"got {oversamp!r}")


def _check_complex(t, name: str, where: str) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_complex():
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{where}: {name} must be a complex tensor, got {got}")


def kernel_params(tol: float, oversamp: float = 2.0) -> tuple[int, float]:
    """Width w (grid cells) and shape beta of the ES kernel for a target relative error.

    w = ceil(ln(C / tol) / (pi sqrt(1 - 1 / sigma))), beta = 0.97 pi (1 - 1 / (2 sigma)) w,
    where C = ``_ERR_CONSTANT`` = 10 bounds the measured ratio of the error to
    exp(-pi w sqrt(1 - 1 / sigma)) (4-14 over image sizes 1-128, both sigmas). See the
    module docstring for the comparison with FINUFFT and the accuracy floors.

    Args:
        tol: target relative l2 error, in (0, 0.1].
        oversamp: grid oversampling factor sigma > 1.

    Returns:
        (w, beta).
    """
    _check_tol(tol, oversamp, "kernel_params")
    decay = math.pi * math.sqrt(1.0 - 1.0 / oversamp)
    w = max(2, math.ceil(math.log(_ERR_CONSTANT / tol) / decay))
    return w, 0.97 * math.pi * (1.0 - 1.0 / (2.0 * oversamp)) * w


def _next_smooth_even(n: int) -> int:
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


def _gauss_legendre(q: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    z, wq = _gauss_legendre(4 * width + 40)
    half = width / 2
    return half * torch.sum(wq * es_kernel(z, beta) * torch.cos(xi[:, None] * half * z), dim=-1)


class NufftPlan(nn.Module):
    """Precomputed gridding geometry for one trajectory and image size.

    Holds, per dimension d, the first grid cell ``start[:, d]`` of each point's w-cell
    stencil, the separable kernel weights ``weights[:, d, :]`` and the deapodisation
    factors; these are non-persistent buffers, so ``.to(device)`` moves them and they never
    enter a ``state_dict``.

    Args:
        ktraj: [M, 2] radians in [-pi, pi].
        image_size: (H, W).
        tol: target relative error in (0, 0.1].
        oversamp: grid oversampling sigma > 1.

    Example:
        >>> plan = NufftPlan(ktraj, (64, 64), tol=1e-6)
        >>> y = plan.type2(image)            # [..., 64, 64] -> [..., M]
        >>> x = plan.type1(y)                # [..., M] -> [..., 64, 64]
    """

    def __init__(self, ktraj: torch.Tensor, image_size, tol: float = 1e-6, oversamp: float = 2.0):
        super().__init__()
        _check_tol(tol, oversamp, "NufftPlan")
        ktraj = _check_ktraj(ktraj, "NufftPlan")
        self.image_size = _image_size(image_size, "NufftPlan")
        self.width, self.beta = kernel_params(tol, oversamp)
        w = self.width
        self.grid_size = tuple(_next_smooth_even(max(math.ceil(oversamp * s), 2 * w))
                               for s in self.image_size)
        grid = torch.tensor(self.grid_size, dtype=torch.float64, device=ktraj.device)
        # t: point position in grid cells; stencil cells l = start + a, a = 0..w-1, satisfy
        # |t - l| <= w / 2 (start = ceil(t - w / 2)).
        t = ktraj.detach().to(torch.float64) * grid / (2 * math.pi)
        start = torch.ceil(t - w / 2)
        offs = torch.arange(w, dtype=torch.float64, device=ktraj.device)
        u = t[:, :, None] - (start[:, :, None] + offs)
        self.register_buffer("start", start.to(torch.int64), persistent=False)
        self.register_buffer("weights", es_kernel(u / (w / 2), self.beta), persistent=False)
        deapod = []
        for n, s in zip(self.grid_size, self.image_size):
            j = torch.arange(s, dtype=torch.float64) - s // 2
            deapod.append(es_kernel_ft(2 * math.pi * j / n, w, self.beta).to(ktraj.device))
        self.register_buffer("deapod0", deapod[0], persistent=False)
        self.register_buffer("deapod1", deapod[1], persistent=False)

    @property
    def n_points(self) -> int:
        return self.start.shape[0]

    def _chunks(self, batch: int):
        """Yield (slice, flat grid index [m, w*w], weights [m, w*w]) over chunks of points."""
        w, n1 = self.width, self.grid_size[1]
        step = max(1, _CHUNK_ELEMENTS // max(1, batch * w * w))
        offs = torch.arange(w, device=self.start.device)
        for s in range(0, self.n_points, step):
            sl = slice(s, min(s + step, self.n_points))
            rows = (self.start[sl, 0, None] + offs) % self.grid_size[0]
            cols = (self.start[sl, 1, None] + offs) % n1
            index = (rows[:, :, None] * n1 + cols[:, None, :]).reshape(rows.shape[0], w * w)
            wts = self.weights[sl, 0, :, None] * self.weights[sl, 1, None, :]
            wts = wts.reshape(rows.shape[0], w * w)
            yield sl, index, wts

    def _deapod(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.deapod0[:, None] * self.deapod1[None, :]).to(dtype)

    def interp(self, grid: torch.Tensor) -> torch.Tensor:
        """Grid -> points: [..., n0, n1] -> [..., M], y_m = sum_l psi(t_m - l) grid_l."""
        lead = grid.shape[:-2]
        flat = grid.reshape(*lead, -1)
        batch = math.prod(lead)
        out = []
        for _, index, wts in self._chunks(batch):
            vals = torch.index_select(flat, -1, index.reshape(-1)).reshape(*lead, *index.shape)
            out.append(torch.sum(vals * wts.to(flat.real.dtype), dim=-1))
        return torch.cat(out, dim=-1)

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """Points -> grid, the transpose of ``interp``: [..., M] -> [..., n0, n1]."""
        lead = values.shape[:-1]
        batch = math.prod(lead)
        flat = values.new_zeros(*lead, self.grid_size[0] * self.grid_size[1])
        for sl, index, wts in self._chunks(batch):
            src = values[..., sl, None] * wts.to(values.real.dtype)
            flat = flat.index_add(-1, index.reshape(-1), src.reshape(*lead, -1))
        return flat.reshape(*lead, *self.grid_size)

    def type2(self, image: torch.Tensor) -> torch.Tensor:
        """Type 2 NUFFT: [..., H, W] complex -> [..., M] complex (exp(-i k . (n - N // 2)))."""
        _check_complex(image, "image", "nufft_type2")
        if tuple(image.shape[-2:]) != self.image_size:
            raise ValueError(f"nufft_type2: image must have shape [..., {self.image_size[0]}, "
                             f"{self.image_size[1]}], got {tuple(image.shape)}")
        (h, w), (n0, n1) = self.image_size, self.grid_size
        x = image / self._deapod(image.real.dtype)
        padded = torch.nn.functional.pad(x, (0, n1 - w, 0, n0 - h))
        grid = torch.fft.fft2(torch.roll(padded, shifts=(-(h // 2), -(w // 2)), dims=(-2, -1)))
        return self.interp(grid)

    def type1(self, values: torch.Tensor) -> torch.Tensor:
        """Type 1 NUFFT, the adjoint of ``type2``: [..., M] complex -> [..., H, W] complex."""
        _check_complex(values, "values", "nufft_type1")
        if values.dim() < 1 or values.shape[-1] != self.n_points:
            raise ValueError(f"nufft_type1: values must have shape [..., {self.n_points}], "
                             f"got {tuple(values.shape)}")
        h, w = self.image_size
        grid = torch.fft.ifft2(self.spread(values), norm="forward")
        image = torch.roll(grid, shifts=(h // 2, w // 2), dims=(-2, -1))[..., :h, :w]
        return image / self._deapod(values.real.dtype)


def nufft_type2_ref(image: torch.Tensor, ktraj: torch.Tensor, tol: float = 1e-6,
                    oversamp: float = 2.0) -> torch.Tensor:
    """Gridding type-2 NUFFT (grid -> points), y_m = sum_n x_n exp(-i k_m . (n - N // 2)).

    Builds a ``NufftPlan`` per call; keep a plan (or a ``NUFFT`` operator) to reuse it.

    Args:
        image: [..., H, W] complex64 or complex128.
        ktraj: [M, 2] radians in [-pi, pi] (column 0 along H, column 1 along W).
        tol: target relative error in (0, 0.1].
        oversamp: grid oversampling sigma > 1.

    Returns:
        [..., M], image's dtype. Differentiable in image.
    """
    _check_complex(image, "image", "nufft_type2_ref")
    if image.dim() < 2:
        raise ValueError(f"nufft_type2_ref: image must have shape [..., H, W], got {tuple(image.shape)}")
    plan = NufftPlan(ktraj, tuple(image.shape[-2:]), tol, oversamp).to(image.device)
    return plan.type2(image)


def nufft_type1_ref(values: torch.Tensor, ktraj: torch.Tensor, image_size, tol: float = 1e-6,
                    oversamp: float = 2.0) -> torch.Tensor:
    """Gridding type-1 NUFFT (points -> grid), the adjoint of ``nufft_type2_ref``.

    x_n = sum_m y_m exp(+i k_m . (n - N // 2)).

    Args:
        values: [..., M] complex64 or complex128.
        ktraj: [M, 2] radians in [-pi, pi].
        image_size: (H, W) or int.
        tol: target relative error in (0, 0.1].
        oversamp: grid oversampling sigma > 1.

    Returns:
        [..., H, W], values' dtype. Differentiable in values.
    """
    _check_complex(values, "values", "nufft_type1_ref")
    plan = NufftPlan(ktraj, image_size, tol, oversamp).to(values.device)
    return plan.type1(values)


def _phases(ktraj: torch.Tensor, size: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """[M, size] exp(-i k_m[dim] (n - size // 2)), phases formed in float64."""
    n = torch.arange(size, dtype=torch.float64, device=ktraj.device) - size // 2
    return torch.polar(torch.ones((), dtype=torch.float64, device=ktraj.device),
                       -ktraj[:, dim, None].to(torch.float64) * n).to(dtype)


def _nudft_chunk(h: int, w: int, batch: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, batch * h + h + w))


def nudft_type2(image: torch.Tensor, ktraj: torch.Tensor) -> torch.Tensor:
    """Exact type-2 NUDFT by direct summation, y_m = sum_n x_n exp(-i k_m . (n - N // 2)).

    O(M H W) work, chunked over M to bound memory; phases are formed in float64.

    Args:
        image: [..., H, W] complex.
        ktraj: [M, 2] radians (column 0 along H, column 1 along W).

    Returns:
        [..., M], image's dtype.
    """
    _check_complex(image, "image", "nudft_type2")
    ktraj = _check_ktraj(ktraj, "nudft_type2")
    h, w = image.shape[-2:]
    batch = math.prod(image.shape[:-2])
    step = _nudft_chunk(h, w, batch)
    out = []
    for s in range(0, ktraj.shape[0], step):
        k = ktraj[s:s + step]
        e0, e1 = _phases(k, h, 0, image.dtype), _phases(k, w, 1, image.dtype)
        t = image @ e1.transpose(0, 1)                       # [..., H, m]
        out.append(torch.sum(t * e0.transpose(0, 1), dim=-2))
    return torch.cat(out, dim=-1)


def nudft_type1(values: torch.Tensor, ktraj: torch.Tensor, image_size) -> torch.Tensor:
    """Exact type-1 NUDFT (adjoint of ``nudft_type2``), x_n = sum_m y_m exp(+i k_m . (n - N // 2)).

    Args:
        values: [..., M] complex.
        ktraj: [M, 2] radians.
        image_size: (H, W) or int.

    Returns:
        [..., H, W], values' dtype.
    """
    _check_complex(values, "values", "nudft_type1")
    ktraj = _check_ktraj(ktraj, "nudft_type1")
    h, w = _image_size(image_size, "nudft_type1")
    if values.dim() < 1 or values.shape[-1] != ktraj.shape[0]:
        raise ValueError(f"nudft_type1: values must have shape [..., {ktraj.shape[0]}], "
                         f"got {tuple(values.shape)}")
    batch = math.prod(values.shape[:-1])
    step = _nudft_chunk(h, w, batch)
    out = None
    for s in range(0, ktraj.shape[0], step):
        k = ktraj[s:s + step]
        e0, e1 = _phases(k, h, 0, values.dtype).conj(), _phases(k, w, 1, values.dtype).conj()
        part = (values[..., None, s:s + step] * e0.transpose(0, 1)) @ e1   # [..., H, W]
        out = part if out is None else out + part
    return out


def pipe_density(ktraj: torch.Tensor, image_size, iters: int = 10, tol: float = 1e-6,
                 oversamp: float = 2.0) -> torch.Tensor:
    """Density compensation weights by the Pipe & Menon (1999) fixed-point iteration.

    Iterates w <- w / (P P^T w), with P^T the spreading and P the interpolation of the
    gridding plan (so P P^T is convolution with the kernel's autocorrelation), then
    rescales so that F^H diag(w) F ~ I (w ~ area per point / (2 pi)^2) where the
    trajectory covers k-space; e.g. a full Cartesian grid gets w = 1 / (H W).

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
    plan = NufftPlan(ktraj, image_size, tol, oversamp)
    dens = torch.ones(plan.n_points, dtype=torch.float64, device=plan.start.device)
    for _ in range(iters):
        dens = dens / plan.interp(plan.spread(dens))
    # fixed point: sum_m' w_m' K(t_m - t_m') = 1 with int K = psi_hat(0)^4 (cells^2), so
    # w = 1 / (points per cell^2 * psi_hat(0)^4); the target is 1 / (points per cell^2 * n0 n1)
    psi0 = es_kernel_ft(torch.zeros(1, dtype=torch.float64), plan.width, plan.beta).item()
    return dens * psi0 ** 4 / (plan.grid_size[0] * plan.grid_size[1])


class NUFFT(Operator):
    """Non-Cartesian multi-coil MRI forward model y = sqrt(density) * NUFFT_2(S x).

    Args:
        ktraj: [M, 2] radians in [-pi, pi]; column 0 along H, column 1 along W.
        image_size: (H, W) or int.
        coil_maps: optional [Coils, H, W] or [B, Coils, H, W] complex sensitivities.
        density: optional [M] real nonnegative weights w, applied symmetrically as
            sqrt(w) (module docstring); see ``pipe_density`` and ``compensate``.
        tol: NUFFT relative accuracy in (0, 0.1].
        oversamp: grid oversampling sigma > 1 (2.0 default, 1.25 for a smaller grid).

    Shapes:
        x: [..., 1, H, W] complex -> y: [..., Coils, M] complex (Coils = 1 without maps).

    Example:
        >>> op = NUFFT(ktraj, (64, 64), density=pipe_density(ktraj, (64, 64)))
        >>> y = op(torch.randn(2, 1, 64, 64, dtype=torch.complex64))
        >>> x_grid = op.adjoint(y)   # density-compensated gridding reconstruction
    """

    complex_domain = True

    def __init__(self, ktraj: torch.Tensor, image_size, coil_maps: torch.Tensor | None = None,
                 density: torch.Tensor | None = None, tol: float = 1e-6, oversamp: float = 2.0):
        super().__init__()
        _check_tol(tol, oversamp, "NUFFT")
        ktraj = _check_ktraj(ktraj, "NUFFT")
        self.image_size = _image_size(image_size, "NUFFT")
        self.tol, self.oversamp = float(tol), float(oversamp)
        m = ktraj.shape[0]
        if coil_maps is not None:
            coil_maps = torch.as_tensor(coil_maps)
            if coil_maps.dim() not in (3, 4) or tuple(coil_maps.shape[-2:]) != self.image_size:
                raise ValueError(
                    f"NUFFT: coil_maps must have shape [Coils, H, W] or [B, Coils, H, W] with (H, W) = "
                    f"{self.image_size}, got {tuple(coil_maps.shape)}")
            if not coil_maps.is_complex():
                if not coil_maps.is_floating_point():
                    raise ValueError(f"NUFFT: coil_maps must be complex, got {coil_maps.dtype}")
                coil_maps = coil_maps.to(torch.promote_types(coil_maps.dtype, torch.complex64))
        if density is not None:
            density = torch.as_tensor(density)
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
        self.plan = NufftPlan(ktraj, self.image_size, tol, oversamp)

    @property
    def n_coils(self) -> int:
        return 1 if self.coil_maps is None else self.coil_maps.shape[-3]

    def _check(self, t: torch.Tensor, name: str, tail: tuple[int, ...]) -> None:
        _check_complex(t, name, "NUFFT")
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
        return self.compensate(self.plan.type2(x))

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """A^H y. Args: y [..., Coils, M] complex; x unused. Returns: [..., 1, H, W] complex."""
        self._check(y, "y", (self.n_coils, self.plan.n_points))
        img = self.plan.type1(self.compensate(y))
        if self.coil_maps is None:
            return img
        return torch.sum(self.coil_maps.to(y).conj() * img, dim=-3, keepdim=True)

    def domain_shape(self, y: torch.Tensor) -> torch.Size:
        return torch.Size((*y.shape[:-2], 1, *self.image_size))

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1, 1, *self.image_size, dtype=torch.complex64, device=self.ktraj.device)
