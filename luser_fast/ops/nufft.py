"""NUFFT ops: ``torch.ops.luser_fast.nufft_type2`` (grid -> points) and ``nufft_type1`` in 2-D,
``nufft3_type2`` and ``nufft3_type1`` in 3-D.

Everything that makes the NUFFT fast, in one place:

- the op schemas and their kernels: on the CPU the C++ spreader/interpolator
  (``csrc/nufft/spread.cpp``; 3-D: ``spread3.cpp``), on CUDA the kernels of
  ``csrc/nufft/spread.cu`` (3-D: ``spread3.cu``) launched through CuPy on torch's current
  stream; FFTs and deapodisation through ``torch.fft``;
  the pure-PyTorch reference (``luser_fast/reference/nufft.py``) wherever neither serves;
- the plan cache: a trajectory's stencils, kernel weights and bin sort are computed once
  and kept with the ``ktraj`` tensor itself (a weak-keyed cache, so a plan lives exactly as
  long as its trajectory; an operator holding ``ktraj`` as a buffer keeps its plan). The
  cache is keyed on the trajectory's *values*, not on the tensor's version counter: it
  keeps a private copy of the values its plans were built from and compares it with
  ``ktraj`` on every lookup (``torch.equal``: exact, on ktraj's device; ~0.1 ms for
  100,000 points on one CPU core), so writes that bypass the version counter (through
  shared NumPy memory, ``.data``, DLPack, gradcheck's perturbations) rebuild the plan
  instead of returning stale results;
- the kernel choice: ``luser_fast.core.nufft_kernel.choose_kernel`` picks the width, shape
  and (for ``oversamp=None``) the oversampling from tol and the data's precision, so
  complex64 and complex128 calls may use different kernels (and plans) at the same tol;
- ``register_fake`` and ``register_autograd``: type 2 and type 1 are each other's adjoint,
  so each backward is the other op; the gradient with respect to ``ktraj`` is two more
  type-2 transforms (of the input weighted by the centred pixel index);
- the public functionals ``nufft_type2`` / ``nufft_type1``, which validate their
  arguments (every rejection a ``TypeError``/``ValueError`` naming the argument) and
  dispatch through ``luser_fast.backends``.

Conventions (docs/API.md): ``ktraj`` [M, 2] radians in [-pi, pi], column 0 along H and column 1
along W; type 2 is y_m = sum_n x_n exp(-i k_m . (n - N // 2)), type 1 its adjoint. In 3-D
``ktraj`` is [M, 3] with columns (kz, ky, kx) along (D, H, W), images [..., D, H, W], the index
n centred by N // 2 per axis (``core/nufft_kernel.py``). The public ``nufft_type2`` /
``nufft_type1`` take either: ktraj's number of columns picks the 2-D or the 3-D op (and
``image_size`` must have as many entries). The 3-D op kernels run the compiled 3-D
spreader where it serves and the reference elsewhere (the block "3-D kernels" below, which
also describes the 3-D pipeline; ``backends.fallback`` says why, once); their autograd,
fake kernels and raw-call checks are the 2-D ones, written once for both dimensions.

Pipeline in 2-D (grid n0 x n1 = oversampled H x W). The C++/CUDA kernels see the grid transposed,
[B, n1, n0] (rows along W), because that is what the cheapest FFT order produces: type 2
deapodises, zero-pads W -> n1 and FFTs the H rows (half the grid), then transposes and
zero-pads H -> n0 and FFTs the n1 rows, so every FFT runs along contiguous memory and no
FFT touches the zero half of the first pass; type 1 is the exact reverse (spread, inverse
FFT of the n1 rows, keep H of n0, transpose, inverse FFT, keep W of n1, deapodise).
"""
from __future__ import annotations

import itertools
import math
import threading

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .. import backends
from ..constants import NUFFT3_SORT_TILE, NUFFT_MAX_ABS_K, NUFFT_MAX_WIDTH
from ..core import nufft_kernel, validate
from ..reference.nufft import NufftPlan, nufft_type1_ref, nufft_type2_ref
from . import cuda_common, library
from .cuda_common import cuda_available, f64, i32, i64, ptr

__all__ = ["nufft_type2", "nufft_type1", "plan_for"]

#: op schemas (without the name)
SCHEMAS = {
    "nufft_type2": "(Tensor image, Tensor ktraj, float tol=1e-06, float? oversamp=None) -> Tensor",
    "nufft_type1": "(Tensor values, Tensor ktraj, SymInt[2] image_size, float tol=1e-06, "
                   "float? oversamp=None) -> Tensor",
    "nufft3_type2": "(Tensor image, Tensor ktraj, float tol=1e-06, float? oversamp=None) -> Tensor",
    "nufft3_type1": "(Tensor values, Tensor ktraj, SymInt[3] image_size, float tol=1e-06, "
                    "float? oversamp=None) -> Tensor",
}
#: (type-2 op, type-1 op) per dimension (ktraj's columns)
OPS_BY_DIMS = {2: ("nufft_type2", "nufft_type1"), 3: ("nufft3_type2", "nufft3_type1")}
#: the image axes per dimension, for messages
_AXES = {2: "H, W", 3: "D, H, W"}
#: widest kernel the compiled kernels take (``kNufftMaxWidth``, csrc/common/constants.h);
#: wider ones are served by the reference (``choose_kernel`` stops at the accuracy floor,
#: at most 18 cells at any oversampling, so only a lowered limit reaches this)
MAX_WIDTH = NUFFT_MAX_WIDTH
#: preferred bin side in grid cells: CPU (a bin's stencil rows for 8 coils stay in L1/L2)
#: and CUDA (one shared-memory tile per bin)
_CPU_BIN = 24
_CUDA_BIN = 32
#: the same in 3-D (CPU: a bin's sub-grid, (16 + w - 1)^3 cells x 8 complex64 coils, stays
#: within the 1 MiB the C++ spreader allows a task, in L2)
_CPU_BIN_3D = 16
#: shared memory a CUDA spreading tile may use without opting in to more
_CUDA_SMEM = 48 * 1024
#: points per CUDA spreading block (a bin with more points is split)
_CUDA_SUBPROBLEM = 1024
#: plans kept per trajectory tensor (image sizes x kernels x devices)
_PLANS_PER_TRAJ = 8
#: scratch memory a plan may keep between calls (``_Workspace``)
_SCRATCH_BYTES = 256 * 2 ** 20


#: the C++ CPU kernels are registered (the extension is built and holds the NUFFT ops)
HAS_CPU_KERNELS = library.extension_has("_nufft_interp")
library.define(SCHEMAS)




# --- plans -----------------------------------------------------------------------------------

def _bin_count(n: int, width: int, preferred: int) -> int:
    """Bins along a side of n cells: even, >= 2, each >= max(width, preferred) cells
    (es_kernel.h: bins two apart never share a cell)."""
    return 2 * max(1, n // (2 * max(width, preferred)))


class CompiledPlan:
    """A trajectory's gridding plan for one image size, kernel and device, in 2-D or 3-D.

    Holds the kernel (width, beta; ``choose_kernel(tol, oversamp, dtype)``), the resolved
    ``oversamp``, the grid (n0, n1) or (n0, n1, n2), the deapodisation factors and, for the
    compiled kernels, the bin-sorted stencils of the trajectory: ``order`` [M] int64
    (sorted -> input index), ``start`` [M, d] int32 (wrapped first stencil cell per grid
    axis), ``weights`` [M, d, w] float64 (es_kernel.h, float64) and ``bin_offsets``. In
    2-D the kernels see the grid with its axes swapped (rows along W; see the module
    docstring); in 3-D in the image's order, [B, n0, n1, n2] along (D, H, W) (the 3-D
    pipeline's docstring says why).

    Args:
        ktraj: [M, 2] or [M, 3] radians in [-pi, pi] (validated by the caller; in 3-D the
            values are checked here, once per plan).
        image_size: (H, W) or (D, H, W), as ktraj has 2 or 3 columns.
        tol: target relative error in (0, 0.1].
        oversamp: grid oversampling sigma > 1, or None (chosen from tol and dtype).
        device: where the plan lives (and runs).
        kind: "cpu" (C++ kernels) or "cuda" (CUDA kernels).
        dtype: the data's complex dtype, whose precision the kernel is chosen for (the
            plan runs either precision: ``weights`` and ``deapod`` convert).
    """

    def __init__(self, ktraj: torch.Tensor, image_size: tuple[int, ...], tol: float,
                 oversamp: float | None, device: torch.device, kind: str,
                 dtype: torch.dtype = torch.complex128):
        self.image_size = tuple(int(s) for s in image_size)
        self.dims = len(self.image_size)
        choice = nufft_kernel.choose_kernel(tol, oversamp, dtype)
        self.tol, self.oversamp, self.kind, self.device = float(tol), choice.oversamp, kind, device
        self.width, self.beta = choice.width, choice.beta
        self.grid_size = nufft_kernel.grid_size(self.image_size, self.oversamp, self.width)
        self.n_points = int(ktraj.shape[0])
        self._weights = {}
        self._deapod = {}
        self._scratch = (None, {}, set())
        self._scratch_lock = threading.Lock()
        k64 = ktraj.detach().to(device=device, dtype=torch.float64)
        w = self.width
        if self.dims == 3:
            _plan_3d(self, k64)
        else:
            n0, n1 = self.grid_size
            # rows along W (grid n1), columns along H (grid n0)
            krc = k64[:, [1, 0]].contiguous()
            preferred = _CPU_BIN if kind == "cpu" else self._cuda_bin()
            self.n_bins = (_bin_count(n1, w, preferred), _bin_count(n0, w, preferred))
            if kind == "cpu":
                self.order, self.start, self._weights[torch.float64], self.bin_offsets = \
                    torch.ops.luser_fast._nufft_plan(krc, n1, n0, w, self.beta, *self.n_bins)
            else:
                _cuda_plan(self, krc)
        inv = [1.0 / d for d in nufft_kernel.deapodisation(self.image_size, self.grid_size,
                                                            w, self.beta, device)]
        self.deapod_inv = inv

    def kernel_grid(self) -> tuple[int, ...]:
        """The grid's shape as the kernels see it: (n1, n0) in 2-D, (n0, n1, n2) in 3-D."""
        return self.grid_size if self.dims == 3 else self.grid_size[::-1]

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """Points -> grid (the gridding convolution P^T): [B, M] -> [B, n1, n0] (2-D) or
        [B, n0, n1, n2] (3-D)."""
        out = torch.empty(values.shape[0], *self.kernel_grid(), dtype=values.dtype,
                          device=values.device)
        return _spread(self, values, out)

    def interp(self, grid: torch.Tensor) -> torch.Tensor:
        """Grid -> points (P, the transpose of ``spread``): [B, *kernel_grid()] -> [B, M]."""
        return _interp(self, grid)

    def _cuda_bin(self) -> int:
        # a tile holds (bin + w - 1)^2 complex128 cells; halve the bin when it would not fit
        for preferred in (_CUDA_BIN, _CUDA_BIN // 2):
            longest = [-(-n // _bin_count(n, self.width, preferred)) for n in self.grid_size]
            if (longest[0] + self.width - 1) * (longest[1] + self.width - 1) * 16 <= _CUDA_SMEM:
                return preferred
        return _CUDA_BIN // 2

    def workspace(self, batch: int, dtype: torch.dtype) -> "_Workspace":
        """Scratch buffers for one transform (a context manager; see ``_Workspace``)."""
        return _Workspace(self, (batch, dtype))

    def weights(self, dtype: torch.dtype) -> torch.Tensor:
        """Kernel weights [M, d, w] in the real dtype matching the complex ``dtype``."""
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        if real not in self._weights:
            self._weights[real] = self._weights[torch.float64].to(real)
        return self._weights[real]

    def deapod(self, dtype: torch.dtype) -> torch.Tensor:
        """[H, W] (or [D, H, W]) real factors 1 / prod_a psi_hat(h_a j_a) in ``dtype``'s
        precision."""
        real = torch.float64 if dtype == torch.complex128 else torch.float32
        if real not in self._deapod:
            out = self.deapod_inv[0]
            for factors in self.deapod_inv[1:]:
                out = out[..., None] * factors
            self._deapod[real] = out.to(real)
        return self._deapod[real]


class _Workspace:
    """Scratch buffers of a plan for one (batch, dtype), reused across calls on the CPU.

    A fresh multi-megabyte tensor costs a page fault per 4 KiB page on first touch, more
    than the FFT that fills it, so a plan keeps its padded FFT inputs and its spreading
    grid between calls (buffers asked for zeroed keep their zero padding: the transforms
    only ever write the data region). A buffer may be shared by name between a transform
    that wants it zero-padded (``zero=True``) and one that overwrites it all
    (``zero=False``, which marks it dirty): the next ``zero=True`` request of a dirty
    buffer zeroes it first (the 3-D type 2 and type 1 share their grid so). One (batch,
    dtype) is kept, up to _SCRATCH_BYTES; a call that finds the buffers busy (another
    thread) or too large uses fresh ones. CUDA has its caching allocator, so there every
    buffer is fresh.

    Usage: ``with plan.workspace(batch, dtype) as ws: a = ws(name, shape, zero)``.
    """

    def __init__(self, plan: CompiledPlan, key: tuple):
        self.plan, self.key, self.dtype = plan, key, key[1]
        self.cached = plan.device.type == "cpu" and plan._scratch_lock.acquire(blocking=False)
        if self.cached and plan._scratch[0] != key:
            plan._scratch = (key, {}, set())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.cached:
            self.plan._scratch_lock.release()
        return False

    def __call__(self, name: str, shape: tuple, zero: bool) -> torch.Tensor:
        _, buffers, dirty = self.plan._scratch
        if self.cached and name in buffers:
            t = buffers[name]
            if zero and name in dirty:
                t.zero_()
                dirty.discard(name)
            elif not zero:
                dirty.add(name)
            return t
        make = torch.zeros if zero else torch.empty
        t = make(shape, dtype=self.dtype, device=self.plan.device)
        held = sum(b.numel() * b.element_size() for b in buffers.values())
        if self.cached and held + t.numel() * t.element_size() <= _SCRATCH_BYTES:
            buffers[name] = t
            if not zero:
                dirty.add(name)
        return t


class _Trajectory:
    """A cached trajectory: a private copy of the values its plans were built from, and
    the plans (key: image size, oversamp, width, beta, device)."""

    __slots__ = ("values", "plans")

    def __init__(self, values: torch.Tensor):
        self.values, self.plans = values, {}

    def holds(self, k: torch.Tensor) -> bool:
        """True when ``k`` has exactly the values the plans were built from."""
        v = self.values
        return (v.dtype == k.dtype and v.shape == k.shape and v.device == k.device
                and torch.equal(v, k))


#: ktraj tensor -> _Trajectory (weak keys: an entry lives as long as its tensor)
_PLANS = WeakIdKeyDictionary()


def _trajectory(ktraj: torch.Tensor) -> _Trajectory:
    """``ktraj``'s cache entry, rebuilt (plans dropped) when its values have changed since
    the plans were built, however they were written."""
    k = ktraj.detach()
    entry = _PLANS.get(ktraj)
    if entry is None or not entry.holds(k):
        entry = _Trajectory(k.clone())
        _PLANS[ktraj] = entry
    return entry


def _fast_kind(device: torch.device) -> str | None:
    if device.type == "cpu" and HAS_CPU_KERNELS:
        return "cpu"
    if device.type == "cuda" and cuda_available():
        return "cuda"
    return None


def _kind(device: torch.device, dims: int) -> str | None:
    """The compiled kernels ("cpu", "cuda") that serve ``dims``-D transforms on ``device``."""
    return _fast_kind(device) if dims == 2 else _fast_kind_3d(device)


def _unserved(device: torch.device, tol: float, oversamp: float | None,
              dtype: torch.dtype, dims: int = 2) -> str | None:
    """Why no compiled kernel serves this transform in ``dims`` dimensions (None: one
    does)."""
    if _kind(device, dims) is None:
        if dims == 3:
            return _unbuilt_3d(device)
        return f"no compiled NUFFT kernels for {device.type} (extension or CuPy missing)"
    choice = nufft_kernel.choose_kernel(tol, oversamp, dtype)
    if choice.width > MAX_WIDTH:
        return (f"tol={tol:g} at oversamp={choice.oversamp:g} needs a kernel of width "
                f"{choice.width} > {MAX_WIDTH}, the compiled kernels' limit")
    return None


def plan_for(ktraj: torch.Tensor, image_size, tol: float = 1e-6, oversamp: float | None = None,
             device: torch.device | None = None,
             dtype: torch.dtype = torch.complex128) -> CompiledPlan:
    """The cached compiled plan of ``ktraj`` (built on first use; rebuilt when ktraj's
    values change, however they are written).

    Args:
        ktraj: [M, 2] or [M, 3] radians in [-pi, pi].
        image_size: (H, W) for [M, 2], (D, H, W) for [M, 3].
        tol, oversamp: kernel accuracy and grid oversampling (None: chosen from tol and
            dtype).
        device: the plan's device (default: ktraj's); a compiled kernel must serve it.
        dtype: the complex dtype of the data, whose precision the kernel is chosen for.

    Returns:
        The ``CompiledPlan``; it lives as long as the ``ktraj`` tensor object keeps its
        values. Calls whose (tol, oversamp, dtype) choose the same kernel share one plan.

    Raises:
        RuntimeError: no compiled kernel serves ``device`` at this tol/oversamp.
    """
    dims = _ktraj_dims(ktraj, "plan_for")
    image_size = _image_size_for(image_size, dims, "plan_for")
    device = torch.device(device) if device is not None else ktraj.device
    reason = _unserved(device, tol, oversamp, dtype, dims)
    if reason is not None:
        raise RuntimeError(f"plan_for: {reason}")
    choice = nufft_kernel.choose_kernel(tol, oversamp, dtype)
    # dims leads the key: a 2-D and a 3-D plan never share an entry
    key = (dims, tuple(int(s) for s in image_size), choice.oversamp, choice.width,
           choice.beta, str(device))
    entry = _trajectory(ktraj)
    plans = entry.plans
    if key not in plans:
        if len(plans) >= _PLANS_PER_TRAJ:
            plans.pop(next(iter(plans)))
        build = CompiledPlan if dims == 2 else _compiled_plan_3d
        plans[key] = build(entry.values, key[1], tol, oversamp, device,
                           _kind(device, dims), dtype)
    return plans[key]


def _ktraj_dims(ktraj, fn: str) -> int:
    """ktraj's number of columns, 2 or 3 (ValueError naming ktraj for another shape)."""
    if not isinstance(ktraj, torch.Tensor):
        raise TypeError(f"{fn}: ktraj must be a torch.Tensor of shape [M, 2] or [M, 3], got "
                        f"{type(ktraj).__name__}")
    if ktraj.dim() != 2 or ktraj.shape[1] not in OPS_BY_DIMS:
        raise ValueError(f"{fn}: ktraj must have shape [M, 2] or [M, 3], got "
                         f"{tuple(ktraj.shape)}")
    return int(ktraj.shape[1])


def _image_size_for(image_size, dims: int, fn: str) -> tuple[int, ...]:
    """image_size validated for a ``dims``-column ktraj ((H, W) or (D, H, W))."""
    return validate.image_size(image_size, fn, dims, f" for a {dims}-column ktraj")


def gridding_plan(ktraj: torch.Tensor, image_size, tol: float = 1e-6,
                  oversamp: float | None = None, *, dtype: torch.dtype = torch.complex128,
                  backend: str | None = None):
    """The gridding plan (``spread``, ``interp``, ``width``, ``beta``, ``grid_size``) of the
    implementation that serves ``nufft_type1`` on ktraj's device: a ``CompiledPlan`` or
    the reference ``NufftPlan``.

    Args:
        ktraj: [M, 2] or [M, 3] validated trajectory.
        image_size: (H, W) or (D, H, W), as ktraj has 2 or 3 columns.
        tol, oversamp: validated accuracy (oversamp None: chosen from tol and dtype).
        dtype: the complex dtype the plan will run in.
        backend: as in ``nufft_type1``.
    """
    dims = _ktraj_dims(ktraj, "gridding_plan")
    image_size = _image_size_for(image_size, dims, "gridding_plan")
    op = OPS_BY_DIMS[dims][1]
    if backends.select(op, ktraj.device.type, backend) != "reference":
        reason = _unserved(ktraj.device, tol, oversamp, dtype, dims)
        if reason is None:
            return plan_for(ktraj, image_size, tol, oversamp, dtype=dtype)
        backends.fallback(op, reason)
    return NufftPlan(ktraj, image_size, tol, oversamp, dtype=dtype)


# --- the transforms on a plan ------------------------------------------------------------------

def _spread(plan: CompiledPlan, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """[B, M] -> ``out`` [B, n1, n0] (2-D, rows along W) or [B, n0, n1, n2] (3-D),
    overwritten."""
    if plan.dims == 3:
        return _spread_3d(plan, values, out)
    if plan.kind == "cuda":
        return _spread_cuda(plan, values, out)
    n0, n1 = plan.grid_size
    torch.ops.luser_fast._nufft_spread_out(values.contiguous(), plan.order, plan.start,
                                           plan.weights(values.dtype), plan.bin_offsets,
                                           n1, n0, *plan.n_bins, -1, out)
    return out


def _interp(plan: CompiledPlan, grid: torch.Tensor) -> torch.Tensor:
    """[B, n1, n0] (2-D) or [B, n0, n1, n2] (3-D) -> [B, M]."""
    if plan.dims == 3:
        return _interp_3d(plan, grid)
    if plan.kind == "cuda":
        return _interp_cuda(plan, grid)
    return torch.ops.luser_fast._nufft_interp(grid, plan.order, plan.start,
                                              plan.weights(grid.dtype))


def _scale(src: torch.Tensor, factor: torch.Tensor, out: torch.Tensor) -> None:
    """out = src * factor for complex src/out and a real factor (broadcast over the leading
    dims), on the real views, so the factor is never converted to complex."""
    torch.mul(torch.view_as_real(src), factor[..., None], out=torch.view_as_real(out))


def _type2(plan: CompiledPlan, image: torch.Tensor) -> torch.Tensor:
    if plan.dims == 3:
        return _type2_3d(plan, image)
    lead = image.shape[:-2]
    batch = math.prod(lead)
    if batch == 0 or plan.n_points == 0:
        return image.new_zeros((*lead, plan.n_points))
    (h, w), (n0, n1) = plan.image_size, plan.grid_size
    h2, w2 = h // 2, w // 2
    x = image.reshape(batch, h, w)
    if x.stride(-1) != 1:
        x = x.contiguous()
    d = plan.deapod(image.dtype)
    with plan.workspace(batch, image.dtype) as ws:
        # deapodised pixel j of a row goes to column (j - W // 2) mod n1; the other
        # columns of the workspace stay zero
        a = ws("pad_w", (batch, h, n1), zero=True)
        _scale(x[..., w2:], d[:, w2:], a[..., :w - w2])
        _scale(x[..., :w2], d[:, :w2], a[..., n1 - w2:])
        a = torch.fft.fft(a, dim=-1).transpose(-1, -2)                  # [B, n1, H]
        t = ws("pad_h", (batch, n1, n0), zero=True)
        t[..., :h - h2].copy_(a[..., h2:])
        t[..., n0 - h2:].copy_(a[..., :h2])
        grid = torch.fft.fft(t, dim=-1)                                  # [B, n1, n0]
    return _interp(plan, grid).reshape(*lead, plan.n_points)


def _type1(plan: CompiledPlan, values: torch.Tensor) -> torch.Tensor:
    if plan.dims == 3:
        return _type1_3d(plan, values)
    lead = values.shape[:-1]
    (h, w), (n0, n1) = plan.image_size, plan.grid_size
    batch = math.prod(lead)
    if batch == 0 or plan.n_points == 0:
        return values.new_zeros((*lead, h, w))
    h2, w2 = h // 2, w // 2
    with plan.workspace(batch, values.dtype) as ws:
        grid = _spread(plan, values.reshape(batch, plan.n_points),
                       ws("grid", (batch, n1, n0), zero=False))              # [B, n1, n0]
        t = torch.fft.ifft(grid, dim=-1, norm="forward")
        # keep the H of n0 frequencies that land on pixels, rows along H
        a = ws("crop_h", (batch, h, n1), zero=False)
        a[:, :h2].copy_(t[..., n0 - h2:].transpose(-1, -2))
        a[:, h2:].copy_(t[..., :h - h2].transpose(-1, -2))
        a = torch.fft.ifft(a, dim=-1, norm="forward")                    # [B, H, n1]
    d = plan.deapod(values.dtype)
    x = torch.empty((batch, h, w), dtype=values.dtype, device=values.device)
    _scale(a[..., n1 - w2:], d[:, :w2], x[..., :w2])
    _scale(a[..., :w - w2], d[:, w2:], x[..., w2:])
    return x.reshape(*lead, h, w)


# --- op kernels (CPU and CUDA; the CUDA launchers are below) ----------------------------------

def _check_raw(fn, tol, oversamp, image_size=None, **tensors):
    """What the kernels check when called directly (``torch.ops.luser_fast``, bypassing
    the public functions): the one validation of a raw call, run by the op's kernel on
    every device (CPU and CUDA share ``_type2_kernel`` / ``_type1_kernel``; the 3-D ops
    the same checks in 3-D) before any plan is built or kernel launched, with the
    structural checks of ``nufft_type2`` / ``nufft_type1`` (TypeError/ValueError naming the
    argument): complex data of the right rank (real values would be read as half as many
    complex ones), one device (a ``meta`` argument beside real data would give
    uninitialised memory), a [M, 2] trajectory for the 2-D ops and [M, 3] for the 3-D
    ones ("nufft3_*"), values with M points, a non-empty image (type 2: every image side
    >= 1; type 1: ``image_size`` positive), tol and oversamp in range. The trajectory's
    values are checked once per plan, by the C++ plan on the CPU and by ``_cuda_plan`` on
    CUDA (finite, within [-pi, pi]); by ``validate.ktraj`` where the reference serves."""
    d = 3 if fn.startswith("nufft3") else 2
    validate.same_device(fn, **tensors)
    k = tensors["ktraj"]
    if k.dim() != 2 or k.shape[1] != d:
        raise ValueError(f"{fn}: ktraj must have shape [M, {d}], got {tuple(k.shape)}")
    if k.is_complex() or not k.is_floating_point():
        raise ValueError(f"{fn}: ktraj must be real floating point (radians), got {k.dtype}")
    if image_size is not None and "image" not in tensors:
        validate.image_size(tuple(image_size), fn, d)
    if "image" in tensors:
        image = tensors["image"]
        validate.complex_tensor(image, "image", fn, d)
        if image_size is not None and min(image.shape[-d:]) < 1:
            raise ValueError(f"{fn}: image must have {_AXES[d]} >= 1, got shape "
                             f"{tuple(image.shape)}")
    else:
        values = tensors["values"]
        validate.complex_tensor(values, "values", fn, 1)
        if values.shape[-1] != k.shape[0]:
            raise ValueError(f"{fn}: values must have shape [..., M] with M = {k.shape[0]} "
                             f"(ktraj's points), got {tuple(values.shape)}")
    validate.nufft_accuracy(tol, 2.0 if oversamp is None else oversamp, fn)


def _raw_image_size(image, d: int):
    """image's trailing d sizes when it is a tensor with that many dims (else None: the
    checks then reject it with their own message)."""
    if isinstance(image, torch.Tensor) and image.dim() >= d:
        return tuple(image.shape[-d:])
    return None


def _op_kernels(d: int, type2, type1):
    """The CPU / CUDA kernels of the d-dimensional ops ``OPS_BY_DIMS[d]``: the raw-call
    checks (``_check_raw``), then the pipelines ``type2`` / ``type1`` on the trajectory's
    compiled plan, or the reference where no compiled kernel serves (``backends.fallback``
    says why; in 3-D the trajectory's values are checked first, naming the op). The
    dispatcher drops trailing arguments equal to their schema defaults, so the kernels
    repeat the defaults."""
    op2, op1 = OPS_BY_DIMS[d]

    def fallback_ktraj(ktraj, op):
        return validate.ktraj(ktraj, op, dims=3) if d == 3 else ktraj

    def type2_kernel(image, ktraj, tol=1e-6, oversamp=None):
        _check_raw(op2, tol, oversamp, image_size=_raw_image_size(image, d), image=image,
                   ktraj=ktraj)
        reason = _unserved(image.device, tol, oversamp, image.dtype, d)
        if reason is not None:
            ktraj = fallback_ktraj(ktraj, op2)
            backends.fallback(op2, reason)
            return nufft_type2_ref(image, ktraj, tol, oversamp)
        return type2(plan_for(ktraj, image.shape[-d:], tol, oversamp, device=image.device,
                              dtype=image.dtype), image)

    def type1_kernel(values, ktraj, image_size, tol=1e-6, oversamp=None):
        _check_raw(op1, tol, oversamp, image_size=image_size, values=values, ktraj=ktraj)
        reason = _unserved(values.device, tol, oversamp, values.dtype, d)
        if reason is not None:
            ktraj = fallback_ktraj(ktraj, op1)
            backends.fallback(op1, reason)
            return nufft_type1_ref(values, ktraj, tuple(image_size), tol, oversamp)
        return type1(plan_for(ktraj, image_size, tol, oversamp, device=values.device,
                              dtype=values.dtype), values)

    return type2_kernel, type1_kernel


def _register_kernels(d: int, kernels: tuple) -> None:
    """The d-dimensional ops' (type 2, type 1) kernels for the CPU and CUDA dispatch keys."""
    for op, kernel in zip(OPS_BY_DIMS[d], kernels):
        library.LIB.impl(op, kernel, "CPU")
        torch.library.register_kernel("luser_fast::" + op, "cuda", kernel)


_type2_kernel, _type1_kernel = _op_kernels(2, _type2, _type1)
_register_kernels(2, (_type2_kernel, _type1_kernel))


# --- 3-D kernels ---
#
# The 3-D op kernels on CPU and CUDA and what they need: which devices the compiled 3-D
# spreader serves (``_fast_kind_3d``), the plan ``plan_for`` builds for a 3-column ktraj
# (a ``CompiledPlan`` in 3-D: ``_compiled_plan_3d``, ``_plan_3d``), spreading and
# interpolation on it (C++: csrc/nufft/spread3.cpp; CUDA: csrc/nufft/spread3.cu), the
# type-2 / type-1 pipelines (``_type2_3d``, ``_type1_3d``) and the kernels themselves,
# which run the reference where no compiled kernel serves (``backends.fallback`` says
# why). The raw-call checks (``_check_raw``) come first, as in 2-D; the trajectory's
# values are checked once per plan (``_plan_3d``), or per call where the reference serves.
#
# Pipeline (grid n0 x n1 x n2 = oversampled D x H x W). The kernels see the grid in the
# image's axis order, [B, n0, n1, n2], so the deapodised volume is written into (and the
# result read out of) the grid's eight corner blocks without a transpose, and the FFT is
# one 3-D ``torch.fft.fftn`` over the whole grid: MKL's 3-D transform of the contiguous
# grid took 0.085 s for 8 x 128^3 complex64 on one core, against 0.26-0.29 s for the
# pruned 1-D FFTs per axis (each on the non-zero part only, as in 2-D) in either layout,
# the batch outermost or innermost. Type 2: deapodise into the zero-padded grid (a
# workspace buffer whose padding stays zero), FFT, interpolate. Type 1: spread (into a
# workspace grid; the same buffer as type 2's where two would not fit _SCRATCH_BYTES),
# inverse FFT, crop, deapodise.
#
# ``_op_kernels_3d`` tells ``luser_fast.backends`` where the public functions call the
# ops: everywhere, since the ops' kernels fall back to the reference themselves, so that
# 3-D calls always take the ops' autograd (ktraj gradients included).

#: the compiled 3-D CPU kernels are registered (the extension holds csrc/nufft/spread3.cpp)
HAS_CPU_KERNELS_3D = library.extension_has("_nufft3_interp")


def _unbuilt_3d(device: torch.device) -> str:
    """Why no compiled 3-D kernel serves ``device``."""
    if device.type == "cuda":
        return "the CUDA 3-D NUFFT kernels need CuPy (and a built or NVRTC-compiled fatbin)"
    return f"no compiled 3-D NUFFT kernels for {device.type} (extension not built)"


def _fast_kind_3d(device: torch.device) -> str | None:
    """The compiled 3-D kernels that serve ``device`` ("cpu", "cuda"), or None."""
    if device.type == "cpu" and HAS_CPU_KERNELS_3D:
        return "cpu"
    if device.type == "cuda" and _cuda3_available():
        return "cuda"
    return None


def _cuda3_available() -> bool:
    """The CUDA 3-D kernels can run here (CuPy and a CUDA device: they are compiled with
    the 2-D ones, from csrc/nufft/spread3.cu)."""
    return cuda_available()


def _op_kernels_3d(device_type: str) -> bool:
    """The 3-D ops' kernels serve ``device_type`` ("cpu", "cuda") for ``backends``."""
    return True


def _compiled_plan_3d(ktraj, image_size, tol, oversamp, device, kind, dtype):
    """The compiled plan of a 3-column trajectory (``plan_for``)."""
    return CompiledPlan(ktraj, image_size, tol, oversamp, device, kind, dtype)


def _plan_3d(plan: CompiledPlan, k64: torch.Tensor) -> None:
    """Fill ``plan``'s sorted 3-D stencils (``CompiledPlan.__init__`` in 3-D): the values of
    ktraj checked (ValueError naming ktraj), the bins, then the C++ plan
    (``_nufft3_plan``) or the CUDA one (``_cuda_plan_3d``)."""
    validate.ktraj(k64, "plan_for", dims=3)
    w = plan.width
    preferred = _CPU_BIN_3D if plan.kind == "cpu" else _cuda_bin_3d(plan.grid_size, w)
    plan.n_bins = tuple(_bin_count(n, w, preferred) for n in plan.grid_size)
    if plan.kind == "cpu":
        plan.order, plan.start, plan._weights[torch.float64], plan.bin_offsets = \
            torch.ops.luser_fast._nufft3_plan(k64.contiguous(), *plan.grid_size, w, plan.beta,
                                              *plan.n_bins)
    else:
        _cuda_plan_3d(plan, k64.contiguous())


def _spread_3d(plan: CompiledPlan, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """[B, M] -> ``out`` [B, n0, n1, n2], overwritten."""
    if plan.kind == "cuda":
        return _spread_cuda(plan, values, out)
    torch.ops.luser_fast._nufft3_spread_out(values.contiguous(), plan.order, plan.start,
                                            plan.weights(values.dtype), plan.bin_offsets,
                                            *plan.grid_size, *plan.n_bins, -1, out)
    return out


def _interp_3d(plan: CompiledPlan, grid: torch.Tensor) -> torch.Tensor:
    """[B, n0, n1, n2] -> [B, M]."""
    if plan.kind == "cuda":
        return _interp_cuda(plan, grid)
    return torch.ops.luser_fast._nufft3_interp(grid, plan.order, plan.start,
                                               plan.weights(grid.dtype))


def _corners(image_size: tuple[int, ...], grid_size: tuple[int, ...]):
    """The 2^d (image block, grid block) index pairs that place pixel j of each axis at grid
    index (j - N // 2) mod n: j in [N // 2, N) at [0, N - N // 2), j in [0, N // 2) at
    [n - N // 2, n). Empty blocks (N = 1) are left out."""
    per_axis = [[(slice(s // 2, s), slice(0, s - s // 2)), (slice(0, s // 2), slice(n - s // 2, n))]
                for s, n in zip(image_size, grid_size)]
    for blocks in itertools.product(*per_axis):
        if all(b[0].stop > b[0].start for b in blocks):
            yield (..., *(b[0] for b in blocks)), (..., *(b[1] for b in blocks))


def _type2_3d(plan: CompiledPlan, image: torch.Tensor) -> torch.Tensor:
    lead = image.shape[:-3]
    batch = math.prod(lead)
    if batch == 0 or plan.n_points == 0:
        return image.new_zeros((*lead, plan.n_points))
    x = image.reshape(batch, *plan.image_size)
    d = plan.deapod(image.dtype)
    shape = (batch, *plan.grid_size)
    # its own zero-padded buffer where two grids fit the scratch budget; else type 1's
    # grid, which the workspace re-zeroes after type 1 used it
    own = 2 * math.prod(shape) * image.element_size() <= _SCRATCH_BYTES
    with plan.workspace(batch, image.dtype) as ws:
        grid = ws("pad3" if own else "grid3", shape, zero=True)
        for src, dst in _corners(plan.image_size, plan.grid_size):
            _scale(x[src], d[src], grid[dst])
        grid = torch.fft.fftn(grid, dim=(-3, -2, -1))
    return _interp_3d(plan, grid).reshape(*lead, plan.n_points)


def _type1_3d(plan: CompiledPlan, values: torch.Tensor) -> torch.Tensor:
    lead = values.shape[:-1]
    batch = math.prod(lead)
    if batch == 0 or plan.n_points == 0:
        return values.new_zeros((*lead, *plan.image_size))
    with plan.workspace(batch, values.dtype) as ws:
        grid = _spread_3d(plan, values.reshape(batch, plan.n_points),
                          ws("grid3", (batch, *plan.grid_size), zero=False))
        grid = torch.fft.ifftn(grid, dim=(-3, -2, -1), norm="forward")
    d = plan.deapod(values.dtype)
    x = torch.empty((batch, *plan.image_size), dtype=values.dtype, device=values.device)
    for dst, src in _corners(plan.image_size, plan.grid_size):
        _scale(grid[src], d[dst], x[dst])
    return x.reshape(*lead, *plan.image_size)


# CUDA (csrc/nufft/spread3.cu). As in 2-D, the kernels' limits are checked and their
# launch grids computed by pure functions before anything is allocated or launched
# (unit-tested with sizes no machine holds, tests/test_nufft3d_ext.py).

#: preferred CUDA bin sides in 3-D, largest first: a spreading tile holds
#: (longest bin + w - 1)^3 complex cells in shared memory
_CUDA_BINS_3D = (16, 12, 8)


def _cuda_bin_3d(grid_size: tuple[int, ...], width: int) -> int:
    """The largest of _CUDA_BINS_3D whose complex64 tile fits in _CUDA_SMEM, else the width
    (the smallest bins; where even their tile does not fit, or for complex128 data whose
    tile does not, ``_spread_launch`` spreads with global atomics)."""
    for preferred in _CUDA_BINS_3D:
        longest = [-(-n // _bin_count(n, width, preferred)) for n in grid_size]
        if math.prod(n + width - 1 for n in longest) * 8 <= _CUDA_SMEM:
            return preferred
    return width


def _cuda_check_sizes_3d(m: int, grid_size: tuple[int, ...], n_bins: tuple[int, ...]) -> None:
    """ValueError unless the CUDA 3-D kernels can index the plan: fewer than 2^31 points and
    bins (int indices; products with them and cell offsets are 64-bit), grid sides of at
    most 2^28."""
    cuda_common.check_sizes("nufft3", points=m, bins=math.prod(n_bins))
    cuda_common.check_sizes("nufft3", limit=MAX_GRID_SIDE, **{"the grid side": max(grid_size)})


def _tile_3d(grid_size: tuple[int, ...], n_bins: tuple[int, ...], width: int) -> tuple[int, ...]:
    """The spreading tile: the longest bin plus the w - 1 cell halo, per axis."""
    return tuple(-(-n // nb) + width - 1 for n, nb in zip(grid_size, n_bins))


def _sort_key_3d(bins: torch.Tensor, start: torch.Tensor, grid_size, n_bins) -> torch.Tensor:
    """The C++ plan's order as one int64 key per point: the bin, then the NUFFT3_SORT_TILE^3
    cell tile of the stencil start counted from the bin's first cell (row-major), so that a
    stable sort by it gives _nufft3_plan's order exactly."""
    b = bins.long()
    nb0, nb1, nb2 = n_bins
    index = (b // (nb1 * nb2), (b // nb2) % nb1, b % nb2)
    key = b
    for d, (n, nb) in enumerate(zip(grid_size, n_bins)):
        lo = index[d] * n // nb                          # the bin's first cell
        longest = -(-n // nb)
        tiles = -(-longest // NUFFT3_SORT_TILE)          # tiles along the longest bin
        key = key * tiles + (start[:, d].long() - lo) // NUFFT3_SORT_TILE
    return key


def _cuda_plan_3d(plan: CompiledPlan, k: torch.Tensor) -> None:
    """Fill ``plan``'s sorted 3-D stencils on the GPU: per-point starts and bins
    (es_kernel.h, in nufft3_plan_points_kernel), a stable sort by the C++ plan's key
    (bin, then small tiles of cells), float64 weights in sorted order, and the spreading
    subproblems (bin, first point, end point), at most _CUDA_SUBPROBLEM each. ktraj's
    values were checked by ``_plan_3d``."""
    m, dev = plan.n_points, k.device
    n0, n1, n2 = plan.grid_size
    nb = plan.n_bins
    n_bins = math.prod(nb)
    _cuda_check_sizes_3d(m, plan.grid_size, nb)
    start = torch.empty(m, 3, dtype=torch.int32, device=dev)
    bins = torch.empty(m, dtype=torch.int32, device=dev)
    if m:
        cuda_common.launch("nufft3_plan_points_kernel", dev, cuda_common.grid(m),
                           (ptr(k), i32(m), i32(n0), i32(n1), i32(n2), i32(nb[0]), i32(nb[1]),
                            i32(nb[2]), i32(plan.width), ptr(start), ptr(bins)))
    order = torch.sort(_sort_key_3d(bins, start, plan.grid_size, nb), stable=True).indices
    plan.order = order
    plan.start = start[order].contiguous()
    counts = torch.bincount(bins.long(), minlength=n_bins)
    plan.bin_offsets = torch.cat((counts.new_zeros(1), torch.cumsum(counts, 0)))
    weights = torch.empty(m, 3, plan.width, dtype=torch.float64, device=dev)
    if m:
        cuda_common.launch("nufft3_plan_weights_kernel", dev, cuda_common.grid(m),
                           (ptr(k), ptr(order), i32(m), i32(n0), i32(n1), i32(n2),
                            i32(plan.width), f64(plan.beta), ptr(weights)))
    plan._weights[torch.float64] = weights
    plan.subproblems = _subproblems(counts, plan.bin_offsets)
    plan.tile = _tile_3d(plan.grid_size, nb, plan.width)


# --- end 3-D kernels ---


_type2_kernel_3d, _type1_kernel_3d = _op_kernels(3, _type2_3d, _type1_3d)
_register_kernels(3, (_type2_kernel_3d, _type1_kernel_3d))


# --- CUDA ------------------------------------------------------------------------------------
#
# The kernels' limits (csrc/nufft/spread.cu, "Sizes") are checked and their launch grids
# computed by the pure functions below, before anything is allocated or launched; they are
# unit-tested with sizes no machine holds (tests/test_cuda_host.py).

#: longest grid side the kernels take (the C++ kernels' kMaxGridSide, csrc/nufft/spread.cpp)
MAX_GRID_SIDE = 2 ** 28


def _cuda_check_sizes(m: int, grid_size: tuple[int, int], n_bins: tuple[int, int]) -> None:
    """ValueError unless the CUDA kernels can index the plan: fewer than 2^31 points and
    bins (int indices; products with them are 64-bit), grid sides of at most 2^28."""
    n0, n1 = grid_size
    cuda_common.check_sizes("nufft", points=m, bins=n_bins[0] * n_bins[1])
    cuda_common.check_sizes("nufft", limit=MAX_GRID_SIDE, **{"the grid side": max(n0, n1)})


def _spread_launch(n_subproblems: int, m: int, batch: int, tile: tuple[int, int],
                   itemsize: int) -> tuple[str, tuple[int, int], int]:
    """How to spread: ("tile", grid, shared bytes) with one block per subproblem when a
    shared-memory tile of ``tile`` complex cells fits in _CUDA_SMEM, else ("global",
    grid, 0) with one thread per point; planes on y (capped; the kernels stride)."""
    smem = tile[0] * tile[1] * itemsize
    if smem <= _CUDA_SMEM:
        return "tile", cuda_common.grid(n_subproblems, batch, threads=1), smem
    return "global", cuda_common.grid(m, batch), 0


def _interp_launch(m: int, batch: int) -> tuple[int, int]:
    """Interpolation grid: one thread per point on x, planes on y (capped)."""
    return cuda_common.grid(m, batch)


def _cuda_plan(plan: CompiledPlan, krc: torch.Tensor) -> None:
    """Fill ``plan``'s sorted stencils on the GPU: per-point starts and bins (es_kernel.h, in
    nufft_plan_points_kernel), a stable sort by bin, float64 weights in sorted order, and
    the spreading subproblems (bin, first point, end point), at most _CUDA_SUBPROBLEM each.
    The trajectory is checked first, as the C++ plan checks it: finite radians within
    [-pi, pi] (ValueError naming ktraj)."""
    n0, n1 = plan.grid_size
    m, dev = plan.n_points, krc.device
    nb_r, nb_c = plan.n_bins
    _cuda_check_sizes(m, plan.grid_size, plan.n_bins)
    if m and dev.type != "meta":
        if not bool(torch.isfinite(krc).all()):
            raise ValueError("plan_for: ktraj has non-finite entries (NaN or inf)")
        kmax = float(krc.abs().max())
        if kmax > NUFFT_MAX_ABS_K:
            raise ValueError(f"plan_for: ktraj must be radians in [-pi, pi]; got max |k| = "
                             f"{kmax:.6g}")
    start = torch.empty(m, 2, dtype=torch.int32, device=dev)
    bins = torch.empty(m, dtype=torch.int32, device=dev)
    if m:
        cuda_common.launch("nufft_plan_points_kernel", dev, cuda_common.grid(m),
                           (ptr(krc), i32(m), i32(n1), i32(n0), i32(nb_r), i32(nb_c),
                            i32(plan.width), ptr(start), ptr(bins)))
    order = torch.sort(bins, stable=True).indices
    plan.order = order
    plan.start = start[order].contiguous()
    counts = torch.bincount(bins.long(), minlength=nb_r * nb_c)
    plan.bin_offsets = torch.cat((counts.new_zeros(1), torch.cumsum(counts, 0)))
    weights = torch.empty(m, 2, plan.width, dtype=torch.float64, device=dev)
    if m:
        cuda_common.launch("nufft_plan_weights_kernel", dev, cuda_common.grid(m),
                           (ptr(krc), ptr(order), i32(m), i32(n1), i32(n0), i32(plan.width),
                            f64(plan.beta), ptr(weights)))
    plan._weights[torch.float64] = weights
    plan.subproblems = _subproblems(counts, plan.bin_offsets)
    longest = (-(-n1 // nb_r), -(-n0 // nb_c))
    plan.tile = (longest[0] + plan.width - 1, longest[1] + plan.width - 1)


def _subproblems(counts: torch.Tensor, bin_offsets: torch.Tensor) -> torch.Tensor:
    """The spreading subproblems [S, 3] int32 (bin, first point, end point): each bin's
    sorted points (``counts`` per bin, from ``bin_offsets``) in runs of at most
    _CUDA_SUBPROBLEM (2-D and 3-D plans alike)."""
    dev = counts.device
    n_sub = (counts + _CUDA_SUBPROBLEM - 1) // _CUDA_SUBPROBLEM
    sub_bin = torch.repeat_interleave(torch.arange(counts.numel(), device=dev), n_sub)
    first_sub = torch.repeat_interleave(torch.cumsum(n_sub, 0) - n_sub, n_sub)
    p0 = bin_offsets[sub_bin] + (torch.arange(sub_bin.numel(), device=dev) - first_sub) \
        * _CUDA_SUBPROBLEM
    p1 = torch.minimum(p0 + _CUDA_SUBPROBLEM, bin_offsets[sub_bin + 1])
    return torch.stack((sub_bin, p0, p1), dim=-1).to(torch.int32).contiguous()


def _cuda_prefix(plan: CompiledPlan) -> str:
    """The kernels' name prefix: "nufft" (csrc/nufft/spread.cu) or "nufft3" (spread3.cu)."""
    return "nufft3" if plan.dims == 3 else "nufft"


def _spread_cuda(plan: CompiledPlan, values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """[B, M] -> ``grid`` [B, *plan.kernel_grid()], overwritten (2-D and 3-D: the kernels
    take the grid's sides, bins and tile in the kernel grid's axis order)."""
    sides = tuple(i32(n) for n in plan.kernel_grid())
    batch, m = values.shape
    v = values.contiguous()
    grid.zero_()
    if batch == 0 or m == 0:
        return grid
    suffix = "f32" if v.dtype == torch.complex64 else "f64"
    weights = plan.weights(v.dtype)
    tile = plan.tile
    kind, launch_grid, smem = _spread_launch(plan.subproblems.shape[0], m, batch,
                                             (math.prod(tile[:-1]), tile[-1]),
                                             v.element_size())
    prefix = _cuda_prefix(plan)
    if kind == "tile":
        cuda_common.launch(prefix + "_spread_tile_kernel_" + suffix, v.device, launch_grid,
                           (ptr(v), ptr(plan.order), ptr(plan.start), ptr(weights),
                            ptr(plan.subproblems), i64(batch), i32(m), i32(plan.width),
                            *sides, *(i32(n) for n in plan.n_bins), *(i32(t) for t in tile),
                            ptr(grid)),
                           shared_mem=smem)
    else:
        cuda_common.launch(prefix + "_spread_global_kernel_" + suffix, v.device, launch_grid,
                           (ptr(v), ptr(plan.order), ptr(plan.start), ptr(weights),
                            i64(batch), i32(m), i32(plan.width), *sides, ptr(grid)))
    return grid


def _interp_cuda(plan: CompiledPlan, grid: torch.Tensor) -> torch.Tensor:
    """[B, *plan.kernel_grid()] -> [B, M] (2-D and 3-D)."""
    batch = grid.shape[0]
    m = plan.n_points
    g = grid.contiguous()
    out = g.new_empty(batch, m)
    if batch == 0 or m == 0:
        return out
    suffix = "f32" if g.dtype == torch.complex64 else "f64"
    cuda_common.launch(_cuda_prefix(plan) + "_interp_kernel_" + suffix, g.device,
                       _interp_launch(m, batch),
                       (ptr(g), ptr(plan.order), ptr(plan.start), ptr(plan.weights(g.dtype)),
                        i64(batch), i32(m), i32(plan.width), *(i32(n) for n in g.shape[1:]),
                        ptr(out)))
    return out


# --- shapes and gradients ------------------------------------------------------------------------
#
# One fake kernel and one autograd formula per transform type, for both dimensions: d is
# ktraj's number of columns (2 for the nufft_* ops, 3 for the nufft3_* ops, which check it).

def _register_fakes(d: int) -> None:
    type2, type1 = OPS_BY_DIMS[d]

    def type2_fake(image, ktraj, tol=1e-6, oversamp=None):
        _check_raw(type2, tol, oversamp, image=image, ktraj=ktraj)
        torch._check(image.dim() >= d, lambda: f"{type2}: image must have at least {d} dims")
        torch._check(ktraj.dim() == 2 and ktraj.shape[1] == d,
                     lambda: f"{type2}: ktraj must be [M, {d}]")
        return image.new_empty((*image.shape[:-d], ktraj.shape[0]))

    def type1_fake(values, ktraj, image_size, tol=1e-6, oversamp=None):
        _check_raw(type1, tol, oversamp, values=values, ktraj=ktraj)
        torch._check(values.dim() >= 1, lambda: f"{type1}: values must have at least 1 dim")
        torch._check(ktraj.dim() == 2 and ktraj.shape[1] == d,
                     lambda: f"{type1}: ktraj must be [M, {d}]")
        return values.new_empty((*values.shape[:-1], *image_size))

    torch.library.register_fake("luser_fast::" + type2, type2_fake)
    torch.library.register_fake("luser_fast::" + type1, type1_fake)


for _d in OPS_BY_DIMS:
    _register_fakes(_d)


def _op(kind: int, ktraj: torch.Tensor):
    """The type-``kind`` (2 or 1) op for ktraj's dimension."""
    return getattr(torch.ops.luser_fast, OPS_BY_DIMS[ktraj.shape[1]][2 - kind])


def _centred_index(x: torch.Tensor, d: int) -> list[torch.Tensor]:
    """Per axis a of the last d dims, (n_a - N_a // 2) in x's real dtype, shaped to
    broadcast over those dims ([H, 1] and [1, W] in 2-D)."""
    real = x.real.dtype
    out = []
    for axis, n in enumerate(x.shape[-d:]):
        i = torch.arange(n, dtype=real, device=x.device) - n // 2
        out.append(i.reshape(n, *(1,) * (d - 1 - axis)))
    return out


def _index_weighted_type2(x: torch.Tensor, ktraj, tol, oversamp) -> torch.Tensor:
    """[..., M, d]: type 2 of x (n_a - N_a // 2) for each axis a, stacked on the last dim."""
    d = ktraj.shape[1]
    weighted = torch.stack([x * i for i in _centred_index(x, d)], dim=0)
    y = _op(2, ktraj)(weighted, ktraj, tol, oversamp)
    return torch.stack(y.unbind(0), dim=-1)


def _ktraj_grad(a: torch.Tensor, b: torch.Tensor, ktraj: torch.Tensor) -> torch.Tensor:
    """Re(sum over batch of a[..., m, None] * b[..., m, a]) -> [M, d] in ktraj's dtype."""
    d = ktraj.shape[1]
    g = (a[..., None] * b).real.reshape(-1, ktraj.shape[0], d).sum(0)
    return g.to(ktraj.dtype)


def _defaults(inputs: tuple, n_required: int) -> tuple:
    """(tol, oversamp) from an op's inputs, where trailing defaults may be left off."""
    return (tuple(inputs[n_required:]) + (1e-6, None)[len(inputs) - n_required:])[:2]


def _type2_setup(ctx, inputs, output):
    image, ktraj, tol, oversamp = (*inputs[:2], *_defaults(inputs, 2))
    ctx.save_for_backward(image if ctx.needs_input_grad[1] else None, ktraj)
    ctx.config = (tuple(image.shape[-ktraj.shape[1]:]), tol, oversamp)


def _type2_backward(ctx, grad):
    image, ktraj = ctx.saved_tensors
    size, tol, oversamp = ctx.config
    grad_image = grad_ktraj = None
    if ctx.needs_input_grad[0]:
        grad_image = _op(1, ktraj)(grad, ktraj, size, tol, oversamp)
    if ctx.needs_input_grad[1]:
        # dy_m / dk_m,a = -i type2((n_a - N_a // 2) x)_m; grad = Re(conj(g) dy/dk)
        deriv = _index_weighted_type2(image, ktraj, tol, oversamp)
        grad_ktraj = _ktraj_grad(grad.conj(), -1j * deriv, ktraj)
    return grad_image, grad_ktraj, None, None


def _type1_setup(ctx, inputs, output):
    values, ktraj, _, tol, oversamp = (*inputs[:3], *_defaults(inputs, 3))
    ctx.save_for_backward(values if ctx.needs_input_grad[1] else None, ktraj)
    ctx.config = (tol, oversamp)


def _type1_backward(ctx, grad):
    values, ktraj = ctx.saved_tensors
    tol, oversamp = ctx.config
    grad_values = grad_ktraj = None
    if ctx.needs_input_grad[0]:
        grad_values = _op(2, ktraj)(grad, ktraj, tol, oversamp)
    if ctx.needs_input_grad[1]:
        # dx_n / dk_m,a = i (n_a - N_a // 2) y_m exp(+i k_m . n');
        # grad = Re(y_m i conj(type2((n_a - N_a // 2) G)_m))
        deriv = _index_weighted_type2(grad, ktraj, tol, oversamp)
        grad_ktraj = _ktraj_grad(values, 1j * deriv.conj(), ktraj)
    return grad_values, grad_ktraj, None, None, None


library.register_family({"nufft_type2": (_type2_backward, _type2_setup),
                         "nufft_type1": (_type1_backward, _type1_setup)},
                        cpu=lambda: HAS_CPU_KERNELS, cuda=cuda_available)
library.register_family({"nufft3_type2": (_type2_backward, _type2_setup),
                         "nufft3_type1": (_type1_backward, _type1_setup)},
                        cpu=lambda: _op_kernels_3d("cpu"), cuda=lambda: _op_kernels_3d("cuda"))


# --- public functionals ---------------------------------------------------------------------------

def nufft_type2(image: torch.Tensor, ktraj: torch.Tensor, tol: float = 1e-6,
                oversamp: float | None = None, *, backend: str | None = None) -> torch.Tensor:
    """Type-2 NUFFT (uniform grid -> points), y_m = sum_n x_n exp(-i k_m . (n - N // 2)).

    2-D or 3-D as ktraj has 2 or 3 columns: the op ``nufft_type2`` or ``nufft3_type2``,
    served by the backend ``luser_fast.backends.select(op, device)`` picks (the
    C++ CPU kernels, the CUDA kernels or the reference); the trajectory's plan is cached
    with the ``ktraj`` tensor and its values, so repeated calls with the same tensor skip
    the planning, and a call after its values changed (however they were written) plans
    anew.

    Accuracy: the kernel is chosen for tol in image's precision
    (``luser_fast.core.nufft_kernel.choose_kernel``). Each (precision, oversamp) has an
    accuracy floor (complex64: ~6e-5 at oversamp 1.25, ~1e-6 at 2.0; complex128: ~5e-10
    and ~1e-14); a tol below it gets the floor's kernel and a ``RuntimeWarning``, once.

    Args:
        image: [..., H, W] (2-D) or [..., D, H, W] (3-D) complex64 or complex128 (any
            strides).
        ktraj: [M, 2] radians in [-pi, pi], column 0 along H, column 1 along W; or [M, 3],
            columns (kz, ky, kx) along (D, H, W). Moved to image's device if it lives
            elsewhere (the plan is then cached per call only).
        tol: target relative l2 error against the exact sum, in (0, 0.1].
        oversamp: grid oversampling sigma > 1 (1.25: a smaller grid and a wider kernel;
            2.0: the reverse, and a lower floor), or None: 1.25 for tol >= 1e-4 in
            complex64 and tol >= 1e-8 in complex128, else 2.0
            (``nufft_kernel.default_oversamp``).
        backend: request a backend for this call (``luser_fast.backends``); None: the
            environment's preference.

    Returns:
        [..., M] in image's dtype; differentiable in image and ktraj.

    Raises:
        TypeError: image is not a complex tensor, or ktraj not a tensor.
        ValueError: bad shapes, ktraj not finite or outside [-pi, pi], bad tol/oversamp.

    Example:
        >>> y = nufft_type2(torch.randn(8, 256, 256, dtype=torch.complex64), ktraj, tol=1e-3)
    """
    fn = "nufft_type2"
    validate.complex_tensor(image, "image", fn)
    ktraj = validate.ktraj(ktraj, fn, image.device)
    d = ktraj.shape[1]
    if image.dim() < d:
        raise ValueError(f"{fn}: image must have at least {d} dims [..., {_AXES[d]}] for a "
                         f"{d}-column ktraj, got shape {tuple(image.shape)}")
    if min(image.shape[-d:]) < 1:
        raise ValueError(f"{fn}: image must have {_AXES[d]} >= 1, got shape "
                         f"{tuple(image.shape)}")
    tol, oversamp = validate.nufft_accuracy(tol, oversamp, fn)
    op = OPS_BY_DIMS[d][0]
    if backends.select(op, image.device.type, backend) == "reference":
        return nufft_type2_ref(image, ktraj, tol, oversamp)
    return getattr(torch.ops.luser_fast, op)(image, ktraj, tol, oversamp)


def nufft_type1(values: torch.Tensor, ktraj: torch.Tensor, image_size, tol: float = 1e-6,
                oversamp: float | None = None, *, backend: str | None = None) -> torch.Tensor:
    """Type-1 NUFFT (points -> grid), the adjoint of ``nufft_type2``:
    x_n = sum_m y_m exp(+i k_m . (n - N // 2)).

    Args:
        values: [..., M] complex64 or complex128 (any strides).
        ktraj: [M, 2] or [M, 3] radians in [-pi, pi] (as in ``nufft_type2``).
        image_size: (H, W) for [M, 2], (D, H, W) for [M, 3]; an int for a square image /
            cubic volume (a sequence of the other length is a TypeError).
        tol: target relative l2 error in (0, 0.1] (the floors of ``nufft_type2`` apply).
        oversamp: grid oversampling sigma > 1, or None (chosen from tol and values'
            precision, as in ``nufft_type2``).
        backend: as in ``nufft_type2``.

    Returns:
        [..., H, W] or [..., D, H, W] in values' dtype; differentiable in values and ktraj.

    Raises:
        TypeError: values is not a complex tensor, or ktraj not a tensor.
        ValueError: bad shapes or image_size, bad ktraj, bad tol/oversamp.
    """
    fn = "nufft_type1"
    validate.complex_tensor(values, "values", fn, 1)
    ktraj = validate.ktraj(ktraj, fn, values.device)
    d = ktraj.shape[1]
    size = _image_size_for(image_size, d, fn)
    if values.shape[-1] != ktraj.shape[0]:
        raise ValueError(f"{fn}: values must have shape [..., M] with M = {ktraj.shape[0]} "
                         f"(ktraj's points), got {tuple(values.shape)}")
    tol, oversamp = validate.nufft_accuracy(tol, oversamp, fn)
    op = OPS_BY_DIMS[d][1]
    if backends.select(op, values.device.type, backend) == "reference":
        return nufft_type1_ref(values, ktraj, size, tol, oversamp)
    return getattr(torch.ops.luser_fast, op)(values, ktraj, size, tol, oversamp)
