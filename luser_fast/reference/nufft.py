"""2-D NUFFT reference: exact NUDFT and gridding NUFFT (types 1 and 2) in plain PyTorch.

The oracle the C++ and CUDA gridding kernels are tested against, and what serves where
they do not. Conventions (``ktraj`` in radians, centred pixel index, type 2 with
exp(-i ...), type 1 its unnormalised adjoint), the exponential-of-semicircle kernel, its
parameters and the accuracy floors are those of ``luser_fast/core/nufft_kernel.py``. The
gridding plan here gathers and scatters w x w stencils with plain indexing; the exact
``nudft_*`` sums are the oracle for the gridding itself. The kernel (and ``oversamp=None``)
is chosen per precision by ``core.nufft_kernel.choose_kernel``, as the compiled kernels do,
so the reference and the fast ops agree to rounding at every tol.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core import nufft_kernel as kern
from ..core import validate

__all__ = ["NufftPlan", "nufft_type2_ref", "nufft_type1_ref", "nudft_type2", "nudft_type1"]

#: elements of complex temporaries ([..., chunk, w * w]) allowed per chunk of points
_CHUNK_ELEMENTS = 1 << 22


class NufftPlan(nn.Module):
    """Precomputed gridding geometry for one trajectory and image size.

    Holds, per dimension d, the first grid cell ``start[:, d]`` of each point's w-cell
    stencil, the separable kernel weights ``weights[:, d, :]`` and the deapodisation
    factors; these are non-persistent buffers, so ``.to(device)`` moves them and they never
    enter a ``state_dict``.

    The kernel is chosen for ``dtype``'s precision. A plan runs data of the other
    precision only where that precision's choice is the same kernel; elsewhere (a tol
    below complex64's floor, where complex64 needs a narrower kernel) ``type2``/``type1``
    raise ValueError rather than return a less accurate result.

    Args:
        ktraj: [M, 2] radians in [-pi, pi].
        image_size: (H, W).
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
        self.image_size = validate.image_size(image_size, "NufftPlan")
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
        """Grid -> points: [..., n0, n1] -> [..., M], y_m = sum_l psi(t_m - l) grid_l."""
        lead = grid.shape[:-2]
        flat = grid.reshape(*lead, -1)
        batch = math.prod(lead)
        out = []
        for _, index, wts in self._chunks(batch):
            vals = torch.index_select(flat, -1, index.reshape(-1)).reshape(*lead, *index.shape)
            out.append(torch.sum(vals * wts.to(flat.real.dtype), dim=-1))
        return torch.cat(out, dim=-1) if out else grid.new_zeros(*lead, 0)

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
        validate.complex_tensor(image, "image", "nufft_type2")
        self._check_precision(image, "nufft_type2")
        if tuple(image.shape[-2:]) != self.image_size:
            raise ValueError(f"nufft_type2: image must have shape [..., {self.image_size[0]}, "
                             f"{self.image_size[1]}], got {tuple(image.shape)}")
        (h, w), (n0, n1) = self.image_size, self.grid_size
        if image.numel() == 0:             # no images: the FFTs refuse an empty batch
            return image.new_zeros(*image.shape[:-2], self.n_points)
        x = image / self._deapod(image.real.dtype)
        padded = torch.nn.functional.pad(x, (0, n1 - w, 0, n0 - h))
        grid = torch.fft.fft2(torch.roll(padded, shifts=(-(h // 2), -(w // 2)), dims=(-2, -1)))
        return self.interp(grid)

    def type1(self, values: torch.Tensor) -> torch.Tensor:
        """Type 1 NUFFT, the adjoint of ``type2``: [..., M] complex -> [..., H, W] complex."""
        validate.complex_tensor(values, "values", "nufft_type1")
        self._check_precision(values, "nufft_type1")
        if values.dim() < 1 or values.shape[-1] != self.n_points:
            raise ValueError(f"nufft_type1: values must have shape [..., {self.n_points}], "
                             f"got {tuple(values.shape)}")
        h, w = self.image_size
        if values.shape[:-1].numel() == 0:  # no samples: the FFTs refuse an empty batch
            return values.new_zeros(*values.shape[:-1], h, w)
        grid = torch.fft.ifft2(self.spread(values), norm="forward")
        image = torch.roll(grid, shifts=(h // 2, w // 2), dims=(-2, -1))[..., :h, :w]
        return image / self._deapod(values.real.dtype)


def nufft_type2_ref(image: torch.Tensor, ktraj: torch.Tensor, tol: float = 1e-6,
                    oversamp: float | None = None) -> torch.Tensor:
    """Gridding type-2 NUFFT (grid -> points), y_m = sum_n x_n exp(-i k_m . (n - N // 2)).

    Builds a ``NufftPlan`` per call; keep a plan (or a ``NUFFT`` operator) to reuse it.

    Args:
        image: [..., H, W] complex64 or complex128.
        ktraj: [M, 2] radians in [-pi, pi] (column 0 along H, column 1 along W).
        tol: target relative error in (0, 0.1].
        oversamp: grid oversampling sigma > 1, or None (chosen from tol and image's
            precision, as in ``luser_fast.ops.nufft_type2``).

    Returns:
        [..., M], image's dtype. Differentiable in image.
    """
    validate.complex_tensor(image, "image", "nufft_type2_ref", 2)
    plan = NufftPlan(ktraj, tuple(image.shape[-2:]), tol, oversamp, image.dtype).to(image.device)
    return plan.type2(image)


def nufft_type1_ref(values: torch.Tensor, ktraj: torch.Tensor, image_size, tol: float = 1e-6,
                    oversamp: float | None = None) -> torch.Tensor:
    """Gridding type-1 NUFFT (points -> grid), the adjoint of ``nufft_type2_ref``.

    x_n = sum_m y_m exp(+i k_m . (n - N // 2)).

    Args:
        values: [..., M] complex64 or complex128.
        ktraj: [M, 2] radians in [-pi, pi].
        image_size: (H, W) or int.
        tol: target relative error in (0, 0.1].
        oversamp: grid oversampling sigma > 1, or None (chosen from tol and values'
            precision).

    Returns:
        [..., H, W], values' dtype. Differentiable in values.
    """
    validate.complex_tensor(values, "values", "nufft_type1_ref", 1)
    plan = NufftPlan(ktraj, image_size, tol, oversamp, values.dtype).to(values.device)
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
    validate.complex_tensor(image, "image", "nudft_type2", 2)
    ktraj = validate.ktraj(ktraj, "nudft_type2")
    h, w = image.shape[-2:]
    batch = math.prod(image.shape[:-2])
    step = _nudft_chunk(h, w, batch)
    out = []
    for s in range(0, ktraj.shape[0], step):
        k = ktraj[s:s + step]
        e0, e1 = _phases(k, h, 0, image.dtype), _phases(k, w, 1, image.dtype)
        t = image @ e1.transpose(0, 1)                       # [..., H, m]
        out.append(torch.sum(t * e0.transpose(0, 1), dim=-2))
    return torch.cat(out, dim=-1) if out else image.new_zeros(*image.shape[:-2], 0)


def nudft_type1(values: torch.Tensor, ktraj: torch.Tensor, image_size) -> torch.Tensor:
    """Exact type-1 NUDFT (adjoint of ``nudft_type2``), x_n = sum_m y_m exp(+i k_m . (n - N // 2)).

    Args:
        values: [..., M] complex.
        ktraj: [M, 2] radians.
        image_size: (H, W) or int.

    Returns:
        [..., H, W], values' dtype.
    """
    validate.complex_tensor(values, "values", "nudft_type1", 1)
    ktraj = validate.ktraj(ktraj, "nudft_type1")
    h, w = validate.image_size(image_size, "nudft_type1")
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
    return values.new_zeros(*values.shape[:-1], h, w) if out is None else out
