"""NUFFT reference in 2-D and 3-D: exact NUDFT and gridding NUFFT (types 1 and 2) in plain
PyTorch.

The oracle the C++ and CUDA gridding kernels are tested against, and what serves where
they do not. Conventions (``ktraj`` in radians, centred pixel index, type 2 with
exp(-i ...), type 1 its unnormalised adjoint), the exponential-of-semicircle kernel, its
parameters and the accuracy floors are those of ``luser_fast/core/nufft_kernel.py``. One
definition serves both dimensions: the number of columns of ``ktraj`` (2: (ky, kx) along
(H, W); 3: (kz, ky, kx) along (D, H, W)) sets how many trailing dims of the data are the
image. The gridding plan here gathers and scatters w^d stencils with plain indexing; the
exact ``nudft_*`` sums are the oracle for the gridding itself. The kernel (and
``oversamp=None``) is chosen per precision by ``core.nufft_kernel.choose_kernel``, as the
compiled kernels do, so the reference and the fast ops agree to rounding at every tol.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core import nufft_kernel as kern
from ..core import validate

__all__ = ["NufftPlan", "nufft_type2_ref", "nufft_type1_ref", "nudft_type2", "nudft_type1"]

#: elements of complex temporaries ([..., chunk, w^d]) allowed per chunk of points
_CHUNK_ELEMENTS = 1 << 22
#: the image axes per dimension, for messages
_AXES = {2: "H, W", 3: "D, H, W"}


def _dims(ktraj: torch.Tensor) -> int:
    """The transform's dimension: ktraj's number of columns (validated: 2 or 3)."""
    return int(ktraj.shape[1])


def _image_size_for(image_size, ktraj: torch.Tensor, fn: str) -> tuple[int, ...]:
    """image_size validated against ktraj's columns ((H, W) for 2, (D, H, W) for 3)."""
    d = _dims(ktraj)
    return validate.image_size(image_size, fn, d, f" for a {d}-column ktraj")


def _check_image_dims(image: torch.Tensor, ktraj: torch.Tensor, fn: str) -> int:
    """ValueError unless image has the d trailing dims ktraj's d columns ask for."""
    d = _dims(ktraj)
    if image.dim() < d:
        raise ValueError(f"{fn}: image must have at least {d} dims [..., {_AXES[d]}] to match "
                         f"ktraj's {d} columns, got shape {tuple(image.shape)}")
    return d


class NufftPlan(nn.Module):
    """Precomputed gridding geometry for one trajectory and image size (2-D or 3-D).

    Holds, per dimension d, the first grid cell ``start[:, d]`` of each point's w-cell
    stencil, the separable kernel weights ``weights[:, d, :]`` and the deapodisation
    factors ``deapod0``, ``deapod1`` (, ``deapod2``); these are non-persistent buffers, so
    ``.to(device)`` moves them and they never enter a ``state_dict``.

    The kernel is chosen for ``dtype``'s precision. A plan runs data of the other
    precision only where that precision's choice is the same kernel; elsewhere (a tol
    below complex64's floor, where complex64 needs a narrower kernel) ``type2``/``type1``
    raise ValueError rather than return a less accurate result.

    Args:
        ktraj: [M, 2] or [M, 3] radians in [-pi, pi] (columns (ky, kx) or (kz, ky, kx)).
        image_size: (H, W) for 2 columns, (D, H, W) for 3; an int for a square / cube.
        tol: target relative error in (0, 0.1].
        oversamp: grid oversampling sigma > 1, or None (chosen from tol and dtype:
            ``core.nufft_kernel.default_oversamp``).
        dtype: the complex dtype the transforms will run in (complex128 default).

    Example:
        >>> plan = NufftPlan(ktraj, (64, 64), tol=1e-6)
        >>> y = plan.type2(image)            # [..., 64, 64] -> [..., M]
        >>> x = plan.type1(y)                # [..., M] -> [..., 64, 64]
    """

    def __init__(self, ktraj: torch.Tensor, image_size, tol: float = 1e-6,
                 oversamp: float | None = None, dtype: torch.dtype = torch.complex128):
        super().__init__()
        tol, oversamp = validate.nufft_accuracy(tol, oversamp, "NufftPlan")
        ktraj = validate.ktraj(ktraj, "NufftPlan")
        self.image_size = _image_size_for(image_size, ktraj, "NufftPlan")
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"NufftPlan: dtype must be a torch.dtype, got {dtype!r}")
        if dtype not in (torch.complex64, torch.complex128):
            raise ValueError(f"NufftPlan: dtype must be torch.complex64 or torch.complex128, "
                             f"got {dtype}")
        choice = kern.choose_kernel(tol, oversamp, dtype)
        self.tol, self.dtype, self.oversamp = tol, dtype, choice.oversamp
        self._requested = (tol, oversamp)
        self.width, self.beta = choice.width, choice.beta
        oversamp = choice.oversamp
        w = self.width
        self.dims = len(self.image_size)
        self.grid_size = kern.grid_size(self.image_size, oversamp, w)
        grid = torch.tensor(self.grid_size, dtype=torch.float64, device=ktraj.device)
        # t: point position in grid cells; stencil cells l = start + a, a = 0..w-1, satisfy
        # |t - l| <= w / 2 (start = ceil(t - w / 2)).
        t = ktraj.detach().to(torch.float64) * grid / (2 * math.pi)
        start = torch.ceil(t - w / 2)
        offs = torch.arange(w, dtype=torch.float64, device=ktraj.device)
        u = t[:, :, None] - (start[:, :, None] + offs)
        self.register_buffer("start", start.to(torch.int64), persistent=False)
        self.register_buffer("weights", kern.es_kernel(u / (w / 2), self.beta), persistent=False)
        deapod = kern.deapodisation(self.image_size, self.grid_size, w, self.beta, ktraj.device)
        for axis, factors in enumerate(deapod):
            self.register_buffer(f"deapod{axis}", factors, persistent=False)

    @property
    def n_points(self) -> int:
        return self.start.shape[0]

    def _chunks(self, batch: int):
        """Yield (slice, flat grid index [m, w^d], weights [m, w^d]) over chunks of points."""
        w = self.width
        step = max(1, _CHUNK_ELEMENTS // max(1, batch * w ** self.dims))
        offs = torch.arange(w, device=self.start.device)
        for s in range(0, self.n_points, step):
            sl = slice(s, min(s + step, self.n_points))
            m = sl.stop - sl.start
            # row-major flat index and weight product over the axes, last axis fastest
            index = torch.zeros(m, 1, dtype=torch.int64, device=self.start.device)
            wts = torch.ones(m, 1, dtype=self.weights.dtype, device=self.start.device)
            for axis, n in enumerate(self.grid_size):
                cells = (self.start[sl, axis, None] + offs) % n
                index = (index[:, :, None] * n + cells[:, None, :]).reshape(m, -1)
                wts = (wts[:, :, None] * self.weights[sl, axis, None, :]).reshape(m, -1)
            yield sl, index, wts

    def _deapod(self, dtype: torch.dtype) -> torch.Tensor:
        """The outer product of the per-axis factors: [H, W] or [D, H, W]."""
        out = self.deapod0
        for axis in range(1, self.dims):
            out = out[..., None] * getattr(self, f"deapod{axis}")
        return out.to(dtype)

    def _check_precision(self, data: torch.Tensor, fn: str) -> None:
        """ValueError when ``data``'s precision would choose another kernel than this
        plan's (see the class docstring)."""
        if data.dtype == self.dtype:
            return
        choice = kern.choose_kernel(*self._requested, data.dtype)
        if (choice.width, choice.beta, choice.oversamp) != (self.width, self.beta, self.oversamp):
            raise ValueError(
                f"{fn}: this plan's kernel (width {self.width}, oversamp {self.oversamp:g}) "
                f"was chosen for {self.dtype} at tol={self.tol:g}; {data.dtype} data needs "
                f"width {choice.width} at oversamp {choice.oversamp:g}: build "
                f"NufftPlan(..., dtype={data.dtype})")

    def interp(self, grid: torch.Tensor) -> torch.Tensor:
        """Grid -> points: [..., n0, n1 (, n2)] -> [..., M], y_m = sum_l psi(t_m - l) grid_l."""
        lead = grid.shape[:-self.dims]
        flat = grid.reshape(*lead, -1)
        batch = math.prod(lead)
        out = []
        for _, index, wts in self._chunks(batch):
            vals = torch.index_select(flat, -1, index.reshape(-1)).reshape(*lead, *index.shape)
            out.append(torch.sum(vals * wts.to(flat.real.dtype), dim=-1))
        return torch.cat(out, dim=-1) if out else grid.new_zeros(*lead, 0)

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """Points -> grid, the transpose of ``interp``: [..., M] -> [..., n0, n1 (, n2)]."""
        lead = values.shape[:-1]
        batch = math.prod(lead)
        flat = values.new_zeros(*lead, math.prod(self.grid_size))
        for sl, index, wts in self._chunks(batch):
            src = values[..., sl, None] * wts.to(values.real.dtype)
            flat = flat.index_add(-1, index.reshape(-1), src.reshape(*lead, -1))
        return flat.reshape(*lead, *self.grid_size)

    def type2(self, image: torch.Tensor) -> torch.Tensor:
        """Type 2 NUFFT: [..., H, W] or [..., D, H, W] complex -> [..., M] complex
        (exp(-i k . (n - N // 2)))."""
        validate.complex_tensor(image, "image", "nufft_type2")
        self._check_precision(image, "nufft_type2")
        d, size = self.dims, self.image_size
        if image.dim() < d or tuple(image.shape[-d:]) != size:
            raise ValueError(f"nufft_type2: image must have shape [..., "
                             f"{', '.join(map(str, size))}], got {tuple(image.shape)}")
        axes = tuple(range(-d, 0))
        if image.numel() == 0:             # no images: the FFTs refuse an empty batch
            return image.new_zeros(*image.shape[:-d], self.n_points)
        x = image / self._deapod(image.real.dtype)
        pad = [p for n, s in zip(reversed(self.grid_size), reversed(size)) for p in (0, n - s)]
        padded = torch.nn.functional.pad(x, pad)
        shifted = torch.roll(padded, shifts=tuple(-(s // 2) for s in size), dims=axes)
        return self.interp(torch.fft.fftn(shifted, dim=axes))

    def type1(self, values: torch.Tensor) -> torch.Tensor:
        """Type 1 NUFFT, the adjoint of ``type2``: [..., M] complex -> [..., H, W] or
        [..., D, H, W] complex."""
        validate.complex_tensor(values, "values", "nufft_type1")
        self._check_precision(values, "nufft_type1")
        if values.dim() < 1 or values.shape[-1] != self.n_points:
            raise ValueError(f"nufft_type1: values must have shape [..., {self.n_points}], "
                             f"got {tuple(values.shape)}")
        d, size = self.dims, self.image_size
        axes = tuple(range(-d, 0))
        if values.shape[:-1].numel() == 0:  # no samples: the FFTs refuse an empty batch
            return values.new_zeros(*values.shape[:-1], *size)
        grid = torch.fft.ifftn(self.spread(values), dim=axes, norm="forward")
        image = torch.roll(grid, shifts=tuple(s // 2 for s in size), dims=axes)
        image = image[(..., *(slice(0, s) for s in size))]
        return image / self._deapod(values.real.dtype)


def nufft_type2_ref(image: torch.Tensor, ktraj: torch.Tensor, tol: float = 1e-6,
                    oversamp: float | None = None) -> torch.Tensor:
    """Gridding type-2 NUFFT (grid -> points), y_m = sum_n x_n exp(-i k_m . (n - N // 2)).

    Builds a ``NufftPlan`` per call; keep a plan (or a ``NUFFT`` operator) to reuse it.

    Args:
        image: [..., H, W] (2-column ktraj) or [..., D, H, W] (3-column ktraj), complex64
            or complex128.
        ktraj: [M, 2] radians in [-pi, pi] (column 0 along H, column 1 along W), or
            [M, 3] (columns (kz, ky, kx) along (D, H, W)).
        tol: target relative error in (0, 0.1].
        oversamp: grid oversampling sigma > 1, or None (chosen from tol and image's
            precision, as in ``luser_fast.ops.nufft_type2``).

    Returns:
        [..., M], image's dtype. Differentiable in image.
    """
    validate.complex_tensor(image, "image", "nufft_type2_ref")
    ktraj = validate.ktraj(ktraj, "nufft_type2_ref")
    d = _check_image_dims(image, ktraj, "nufft_type2_ref")
    plan = NufftPlan(ktraj, tuple(image.shape[-d:]), tol, oversamp, image.dtype).to(image.device)
    return plan.type2(image)


def nufft_type1_ref(values: torch.Tensor, ktraj: torch.Tensor, image_size, tol: float = 1e-6,
                    oversamp: float | None = None) -> torch.Tensor:
    """Gridding type-1 NUFFT (points -> grid), the adjoint of ``nufft_type2_ref``.

    x_n = sum_m y_m exp(+i k_m . (n - N // 2)).

    Args:
        values: [..., M] complex64 or complex128.
        ktraj: [M, 2] or [M, 3] radians in [-pi, pi].
        image_size: (H, W) for [M, 2], (D, H, W) for [M, 3]; an int for a square / cube.
        tol: target relative error in (0, 0.1].
        oversamp: grid oversampling sigma > 1, or None (chosen from tol and values'
            precision).

    Returns:
        [..., H, W] or [..., D, H, W], values' dtype. Differentiable in values.
    """
    validate.complex_tensor(values, "values", "nufft_type1_ref", 1)
    plan = NufftPlan(ktraj, image_size, tol, oversamp, values.dtype).to(values.device)
    return plan.type1(values)


def _phases(ktraj: torch.Tensor, size: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """[M, size] exp(-i k_m[dim] (n - size // 2)), phases formed in float64."""
    n = torch.arange(size, dtype=torch.float64, device=ktraj.device) - size // 2
    return torch.polar(torch.ones((), dtype=torch.float64, device=ktraj.device),
                       -ktraj[:, dim, None].to(torch.float64) * n).to(dtype)


def _nudft_chunk(size: tuple[int, ...], batch: int) -> int:
    """Points per chunk: the largest temporary is [batch, N_0 .. N_{d-2}, chunk]."""
    return max(1, _CHUNK_ELEMENTS // max(1, batch * math.prod(size[:-1]) + sum(size)))


def nudft_type2(image: torch.Tensor, ktraj: torch.Tensor) -> torch.Tensor:
    """Exact type-2 NUDFT by direct summation, y_m = sum_n x_n exp(-i k_m . (n - N // 2)).

    O(M prod(N)) work, chunked over M to bound memory (the sum runs axis by axis, last
    axis first); phases are formed in float64.

    Args:
        image: [..., H, W] or [..., D, H, W] complex (as ktraj has 2 or 3 columns).
        ktraj: [M, 2] radians (column 0 along H, column 1 along W) or [M, 3] (columns
            along D, H, W).

    Returns:
        [..., M], image's dtype.
    """
    validate.complex_tensor(image, "image", "nudft_type2")
    ktraj = validate.ktraj(ktraj, "nudft_type2")
    d = _check_image_dims(image, ktraj, "nudft_type2")
    size = tuple(image.shape[-d:])
    lead = image.shape[:-d]
    step = _nudft_chunk(size, math.prod(lead))
    out = []
    for s in range(0, ktraj.shape[0], step):
        k = ktraj[s:s + step]
        e = [_phases(k, n, axis, image.dtype) for axis, n in enumerate(size)]
        t = image @ e[-1].transpose(0, 1)                 # [..., N_0 .. N_{d-2}, m]
        for axis in range(d - 2, -1, -1):
            t = torch.sum(t * e[axis].transpose(0, 1), dim=-2)
        out.append(t)
    return torch.cat(out, dim=-1) if out else image.new_zeros(*lead, 0)


def nudft_type1(values: torch.Tensor, ktraj: torch.Tensor, image_size) -> torch.Tensor:
    """Exact type-1 NUDFT (adjoint of ``nudft_type2``), x_n = sum_m y_m exp(+i k_m . (n - N // 2)).

    Args:
        values: [..., M] complex.
        ktraj: [M, 2] or [M, 3] radians.
        image_size: (H, W) for [M, 2], (D, H, W) for [M, 3]; an int for a square / cube.

    Returns:
        [..., H, W] or [..., D, H, W], values' dtype.
    """
    validate.complex_tensor(values, "values", "nudft_type1", 1)
    ktraj = validate.ktraj(ktraj, "nudft_type1")
    size = _image_size_for(image_size, ktraj, "nudft_type1")
    if values.dim() < 1 or values.shape[-1] != ktraj.shape[0]:
        raise ValueError(f"nudft_type1: values must have shape [..., {ktraj.shape[0]}], "
                         f"got {tuple(values.shape)}")
    d = len(size)
    step = _nudft_chunk(size, math.prod(values.shape[:-1]))
    out = None
    for s in range(0, ktraj.shape[0], step):
        k = ktraj[s:s + step]
        e = [_phases(k, n, axis, values.dtype).conj().transpose(0, 1)
             for axis, n in enumerate(size)]                # [N_a, m]
        # y_m times the phases of the leading axes: [..., N_0 .. N_{d-2}, m]
        t = values[..., s:s + step]
        for axis in range(d - 1):
            t = t[..., None, :] * e[axis]
        part = t @ e[-1].transpose(0, 1)                   # [..., N_0 .. N_{d-1}]
        out = part if out is None else out + part
    return values.new_zeros(*values.shape[:-1], *size) if out is None else out
