"""Fused Anderson history update and mixing: ``torch.ops.luser_fast.anderson_step`` /
``anderson_mix``.

One Anderson iteration of ``luser_fast.deq.anderson`` touches the [B, D] data twice, with
the (tiny) bordered solve in between, so it is two kernels, each a single pass:

1. ``_anderson_step_fwd_kernel`` (after f(z) is evaluated): reads f(z) and z, writes the
   new history slot F[:, slot] = f(z) and G[:, slot] = f(z) - z, and in the same pass
   accumulates the new Gram row <G_j, g> (j < n, its ``slot`` entry being ||g||^2, the
   squared residual) and ||f(z)||^2. Samples whose ``active`` flag is false are frozen:
   their history is left untouched and their row is zero (nothing of theirs is read).
2. ``_anderson_mix_fwd_kernel`` (after the weights alpha are solved from the Gram
   matrix): the next iterate ``sum_j alpha_j F_j - (1 - beta) sum_j alpha_j G_j`` for
   active samples, the frozen ``best`` iterate for the others.

They cannot be one pass: alpha depends on the complete Gram row, which needs every
element of g, and the row of the next iteration needs f of the mixed iterate.

Bytes moved per sample, s = itemsize, n = valid history slots (the model checked by
``bench/test_bench_triton.py``):

    anderson_step: read f(z), z (2D) + write F, G slot (2D) + read n-1 old G rows
                   ((n-1) D; the slot row is the g just computed)      = (n + 3) D s
    anderson_mix:  read n F rows (+ n G rows when beta != 1) + read best (D, only with
                   a freeze mask) + write the iterate (D)             = (n + 1 [+ n] [+ 1]) D s

The reference twins ``anderson_step_ref`` / ``anderson_mix_ref`` below are the same maths
in plain PyTorch; they serve on CPU and wherever Triton is missing. Partial Gram rows are
written per D-tile and summed on the host side of the launcher (no atomics), so results
are deterministic.

Numerics against the twins: the same sums in another order (per-tile partial sums; the
mix as sum_j alpha_j (F_j - (1 - beta) G_j), FMA-contracted when compiled), so float64
agrees to rounding (tests: 1e-12 relative, 1e-13 for the mix) and float32 within ten
times the float32 twin's own error against float64. 1 - beta is formed in float64 on
the host and passed as a float64 argument (a Python float argument would reach the
kernel as float32: 9.5e-9 relative off in float64), then rounded once to the history
dtype as the twin does.

Launches (``launch_grid``): grids (D-tiles, samples) with the batch in chunks of
``triton_common.BATCH_CHUNK``; 64-bit scalar base offsets (sample, slot, tile start), so
m D and B m D may exceed 2**31; every launch under the tensors' CUDA device.
"""
from __future__ import annotations

import torch

from .. import backends
from ..core import validate
from ..reference.anderson_ops import anderson_mix_ref, anderson_step_ref
from . import triton_common
from .triton_common import HAS_TRITON, tl, triton

__all__ = ["anderson_step", "anderson_mix", "implementations", "anderson_step_ref",
           "anderson_mix_ref", "anderson_step_fwd", "anderson_mix_fwd", "launch_grid",
           "KERNEL_DTYPES"]

#: dtypes the kernels take (history buffers are the solver's work dtype)
KERNEL_DTYPES = (torch.float32, torch.float64)
#: D-elements per program; with m <= 16 history rows a [16, 1024] fp32 tile is 64 KiB of
#: registers over 4 warps (128 per thread), so rows are loaded one at a time instead
_BLOCK_D = 1024
_NUM_WARPS = 4


# --------------------------------------------------------------------------- kernels

if HAS_TRITON:
    @triton.jit(do_not_specialize=["slot", "n"])
    def _anderson_step_fwd_kernel(fz_ptr, z_ptr, hf_ptr, hg_ptr, active_ptr, part_ptr,
                                  D, slot, n, n_tiles,
                                  M: tl.constexpr, BLOCK_D: tl.constexpr):
        """One D-tile of one sample: write F/G slot, partial Gram row and ||f||^2.

        Grid (n_tiles, B) with B <= 65535 (the launcher chunks the batch). fz, z: [B, D];
        hf, hg: [B, M, D] contiguous; active: [B] bool viewed as int8; part:
        [B, n_tiles, M + 1] partial sums (work dtype). Accumulates in the history dtype
        (float32 or float64) over a tile of BLOCK_D elements. Offsets: 64-bit scalar bases
        (sample, slot, tile start), 32-bit lanes, so any m * D is addressed. ``slot`` and
        ``n`` change every iteration: not specialised (one compiled kernel for all).
        """
        tile = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        start = tile.to(tl.int64) * BLOCK_D
        lanes = tl.arange(0, BLOCK_D)
        live = tl.load(active_ptr + b) != 0
        rem = tl.minimum(D - start, BLOCK_D).to(tl.int32)   # elements left in this tile
        mask = (lanes < rem) & live            # frozen samples read and write nothing
        dt = hf_ptr.dtype.element_ty
        x_off = b * D + start
        f = tl.load(fz_ptr + x_off + lanes, mask=mask, other=0.0).to(dt)
        g = f - tl.load(z_ptr + x_off + lanes, mask=mask, other=0.0).to(dt)
        rows = b * M                           # row j of this sample: (rows + j) * D
        s_off = (rows + slot) * D + start
        tl.store(hf_ptr + s_off + lanes, f, mask=mask)
        tl.store(hg_ptr + s_off + lanes, g, mask=mask)
        out = part_ptr + (b * n_tiles + tile) * (M + 1)
        for j in range(0, n):
            if j == slot:
                gj = g                      # just written: use the registers
            else:
                gj = tl.load(hg_ptr + ((rows + j) * D + start) + lanes, mask=mask, other=0.0)
            tl.store(out + j, tl.sum(gj * g, axis=0))
        for j in range(n, M):
            tl.store(out + j, tl.sum(g * 0.0, axis=0))
        tl.store(out + M, tl.sum(f * f, axis=0))

    @triton.jit(do_not_specialize=["n"])
    def _anderson_mix_fwd_kernel(hf_ptr, hg_ptr, alpha_ptr, active_ptr, best_ptr, out_ptr,
                                 D, n, damp: tl.float64,
                                 M: tl.constexpr, HAS_G: tl.constexpr, HAS_BEST: tl.constexpr,
                                 BLOCK_D: tl.constexpr):
        """One D-tile of one sample: out = sum alpha_j (F_j - damp G_j), or best if frozen.

        Grid (cdiv(D, BLOCK_D), B) with B <= 65535. hf, hg: [B, M, D]; alpha: [B, n]
        (history dtype); active: [B] int8; best, out: [B, D] (history dtype). damp = 1 - beta,
        computed on the host in float64 and passed as a float64 argument (a plain Python
        float argument is passed as float32), then rounded once to the history dtype as
        the reference does. HAS_G false when beta == 1 (G is then not read at all).
        """
        tile = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        start = tile.to(tl.int64) * BLOCK_D
        lanes = tl.arange(0, BLOCK_D)
        inb = lanes < tl.minimum(D - start, BLOCK_D).to(tl.int32)
        flag = tl.load(active_ptr + b)
        live = flag != 0
        mask = inb & live
        dt = hf_ptr.dtype.element_ty
        dm = tl.full([], damp, dt)         # exact in the interpreter too (a float there)
        acc = tl.zeros([BLOCK_D], dtype=dt)
        rows = b * M
        for j in range(0, n):
            a = tl.load(alpha_ptr + b * n + j)
            r_off = (rows + j) * D + start
            fj = tl.load(hf_ptr + r_off + lanes, mask=mask, other=0.0)
            if HAS_G:
                fj = fj - dm * tl.load(hg_ptr + r_off + lanes, mask=mask, other=0.0)
            acc += a * fj
        x_off = b * D + start
        if HAS_BEST:
            keep = tl.load(best_ptr + x_off + lanes, mask=inb & (flag == 0), other=0.0)
            acc = tl.where(live, acc, keep)
        tl.store(out_ptr + x_off + lanes, acc, mask=inb)


# --------------------------------------------------------------------------- launchers

def _check_history(hist_f, hist_g, d):
    if hist_f.shape != hist_g.shape or hist_f.dim() != 3 or hist_f.shape[2] != d:
        raise ValueError(f"hist_f, hist_g must both be [B, m, {d}], got "
                         f"{tuple(hist_f.shape)}, {tuple(hist_g.shape)}")
    if hist_f.dtype not in KERNEL_DTYPES or hist_g.dtype != hist_f.dtype:
        raise TypeError(f"history dtype must be one of {KERNEL_DTYPES}, got {hist_f.dtype}, "
                        f"{hist_g.dtype}")
    if not (hist_f.is_contiguous() and hist_g.is_contiguous()):
        raise ValueError("hist_f and hist_g must be contiguous (they are updated in place)")


def _flags(active):
    """[B] bool -> int8 view (no copy) of a contiguous mask."""
    return active.contiguous().view(torch.int8)


def launch_grid(b: int, d: int) -> list:
    """The launches of either kernel for a [B, D] problem: [(lo, hi, grid)], the batch
    split into ``triton_common.batch_chunks`` and each grid (D-tiles, samples) within
    CUDA's limits (host-side, unit-tested with sizes no test could allocate)."""
    tiles = triton.cdiv(d, _BLOCK_D) if HAS_TRITON else -(-d // _BLOCK_D)
    return [(lo, hi, triton_common.check_grid((tiles, hi - lo)))
            for lo, hi in triton_common.batch_chunks(b)]


def anderson_step_fwd(fz, z, hist_f, hist_g, active, slot: int, n: int):
    """Triton launcher of the history update; arguments and result as ``anderson_step_ref``.

    Launches ``_anderson_step_fwd_kernel`` on (cdiv(D, 1024), B) grids (the batch in
    chunks of ``triton_common.BATCH_CHUNK``), then sums the per-tile partial rows
    [B, tiles, m + 1] (a few hundred bytes per sample).
    """
    b, d = fz.shape
    m = hist_f.shape[1]
    _check_history(hist_f, hist_g, d)
    n_tiles = triton.cdiv(d, _BLOCK_D)
    part = triton_common.alloc((b, n_tiles, m + 1), hist_f.dtype, fz.device)
    fz, z, flags = fz.contiguous(), z.contiguous(), _flags(active)
    for lo, hi, grid in launch_grid(b, d):
        triton_common.launch(
            _anderson_step_fwd_kernel, grid, fz.device,
            fz[lo:hi], z[lo:hi], hist_f[lo:hi], hist_g[lo:hi], flags[lo:hi], part[lo:hi],
            d, int(slot), int(n), n_tiles, M=m, BLOCK_D=_BLOCK_D, num_warps=_NUM_WARPS)
    if n_tiles == 0:
        return part.new_zeros(b, m + 1)
    return part.sum(1)


def anderson_mix_fwd(hist_f, hist_g, alpha, active, best, beta: float):
    """Triton launcher of the mixing; arguments and result as ``anderson_mix_ref``.

    Launches ``_anderson_mix_fwd_kernel`` on (cdiv(D, 1024), B) grids (batch chunks as in
    ``anderson_step_fwd``).
    """
    b, m, d = hist_f.shape
    _check_history(hist_f, hist_g, d)
    out = triton_common.alloc((b, d), hist_f.dtype, hist_f.device)
    has_best = best is not None
    best_arg = best.to(hist_f.dtype).contiguous() if has_best else out
    alpha = alpha.to(hist_f.dtype).contiguous()
    flags = _flags(active)
    damp = 1.0 - float(beta)                   # float64 on the host, a float64 argument
    for lo, hi, grid in launch_grid(b, d):
        triton_common.launch(
            _anderson_mix_fwd_kernel, grid, hist_f.device,
            hist_f[lo:hi], hist_g[lo:hi], alpha[lo:hi], flags[lo:hi], best_arg[lo:hi],
            out[lo:hi], d, alpha.shape[1], damp,
            M=m, HAS_G=beta != 1, HAS_BEST=has_best, BLOCK_D=_BLOCK_D, num_warps=_NUM_WARPS)
    return out


# --------------------------------------------------------------------------- ops

# The custom ops: the reference is the kernel for every device; the Triton launchers are
# registered for the devices Triton serves (CUDA; also CPU under TRITON_INTERPRET=1).

@torch.library.custom_op("luser_fast::anderson_step", mutates_args=("hist_f", "hist_g"))
def _anderson_step_op(fz: torch.Tensor, z: torch.Tensor, hist_f: torch.Tensor,
                      hist_g: torch.Tensor, active: torch.Tensor, slot: int,
                      n: int) -> torch.Tensor:
    return anderson_step_ref(fz, z, hist_f, hist_g, active, slot, n)


@_anderson_step_op.register_fake
def _anderson_step_fake(fz, z, hist_f, hist_g, active, slot, n):
    return hist_f.new_empty(hist_f.shape[0], hist_f.shape[1] + 1)


@torch.library.custom_op("luser_fast::anderson_mix", mutates_args=())
def _anderson_mix_op(hist_f: torch.Tensor, hist_g: torch.Tensor, alpha: torch.Tensor,
                     active: torch.Tensor, best: torch.Tensor | None,
                     beta: float) -> torch.Tensor:
    return anderson_mix_ref(hist_f, hist_g, alpha, active, best, beta)


@_anderson_mix_op.register_fake
def _anderson_mix_fake(hist_f, hist_g, alpha, active, best, beta):
    return hist_f.new_empty(hist_f.shape[0], hist_f.shape[2])


if HAS_TRITON:
    for _device in triton_common.devices():
        _anderson_step_op.register_kernel(_device)(anderson_step_fwd)
        _anderson_mix_op.register_kernel(_device)(anderson_mix_fwd)
backends.register(("anderson_step", "anderson_mix"), "triton", triton_common.devices(),
                  lambda: HAS_TRITON)


def _validate(slot, n, m):
    if not 1 <= n <= m or not 0 <= slot < n:
        raise ValueError(f"need 0 <= slot < n <= m, got slot={slot}, n={n}, m={m}")


def _check_tensors(fn, hist_f, hist_g, active, real=(), shapes=()):
    """dtypes, shapes and device of the tensor arguments: TypeError naming an argument of
    the wrong dtype (an int64 history would silently truncate f(z)), ValueError for a
    shape or device.

    Args:
        real: (name, tensor) pairs that must be real floating point (or None).
        shapes: (name, tensor, expected shape) triples.
    """
    tensors = {"hist_f": hist_f, "hist_g": hist_g, "active": active, **dict(real)}
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("hist_f", hist_f), ("hist_g", hist_g)):
        if t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{fn}: {name} must be float32 or float64 (the work dtype), got "
                            f"{t.dtype}")
    if hist_g.dtype != hist_f.dtype:
        raise TypeError(f"{fn}: hist_g must have hist_f's dtype {hist_f.dtype}, got "
                        f"{hist_g.dtype}")
    if active.dtype != torch.bool:
        raise TypeError(f"{fn}: active must be a bool tensor, got {active.dtype}")
    for name, t in real:
        if t is not None and (t.is_complex() or not t.is_floating_point()):
            raise TypeError(f"{fn}: {name} must be a real floating tensor, got {t.dtype}")
    if hist_f.dim() != 3 or hist_g.shape != hist_f.shape:
        raise ValueError(f"{fn}: hist_f and hist_g must both be [B, m, D], got "
                         f"{tuple(hist_f.shape)} and {tuple(hist_g.shape)}")
    b, _, d = hist_f.shape
    for name, t, want in ((("active", active, (b,)),) + tuple(shapes)):
        if t is not None and tuple(t.shape) != tuple(want):
            raise ValueError(f"{fn}: {name} must have shape {tuple(want)} (from hist_f "
                             f"[B, m, D] = {tuple(hist_f.shape)}), got {tuple(t.shape)}")
    validate.same_device(fn, **tensors)


def anderson_step(fz: torch.Tensor, z: torch.Tensor, hist_f: torch.Tensor,
                  hist_g: torch.Tensor, active: torch.Tensor, slot: int,
                  n: int, *, backend: str | None = None) -> torch.Tensor:
    """Write history slot ``slot`` and return the new Gram row and ||f(z)||^2.

    Args:
        fz: f(z) [B, D].
        z: the iterate f was evaluated at [B, D].
        hist_f, hist_g: contiguous ring buffers [B, m, D] (float32/float64, one dtype),
            updated in place at ``slot`` for active samples.
        active: [B] bool freeze mask (false: history untouched, zero row).
        slot: the slot to write; n: valid slots after the write (0 <= slot < n <= m).
        backend: request a backend for this call (``luser_fast.backends``); None: the
            environment's preference.

    Returns:
        [B, m + 1]: <G_j, f(z) - z> in columns j < n (column ``slot``: the squared
        residual), zeros up to column m - 1, ||f(z)||^2 in column m.

    Raises:
        TypeError: a tensor argument of the wrong dtype (fz, z real floating; hist_f,
            hist_g float32/float64 alike; active bool), naming it.
        ValueError: shapes that do not fit hist_f's [B, m, D], devices that differ, or
            slot / n out of range.

    Example:
        >>> hf = torch.zeros(2, 3, 4); hg = torch.zeros_like(hf)
        >>> row = anderson_step(torch.ones(2, 4), torch.zeros(2, 4), hf, hg,
        ...                     torch.ones(2, dtype=torch.bool), 0, 1)
        >>> row[0].tolist()
        [4.0, 0.0, 0.0, 4.0]
    """
    fn = "anderson_step"
    validate.tensor_like(hist_f, "hist_f", fn)
    _check_tensors(fn, hist_f, hist_g, active, real=(("fz", fz), ("z", z)),
                   shapes=(("fz", fz, (hist_f.shape[0], hist_f.shape[-1])),
                           ("z", z, (hist_f.shape[0], hist_f.shape[-1]))))
    _validate(slot, n, hist_f.shape[1])
    if backends.select("anderson_step", fz.device.type, backend) != "triton":
        return anderson_step_ref(fz, z, hist_f, hist_g, active, slot, n)
    return torch.ops.luser_fast.anderson_step(fz, z, hist_f, hist_g, active, slot, n)


def anderson_mix(hist_f: torch.Tensor, hist_g: torch.Tensor, alpha: torch.Tensor,
                 active: torch.Tensor, best: torch.Tensor | None = None,
                 beta: float = 1.0, *, backend: str | None = None) -> torch.Tensor:
    """The next Anderson iterate from the history and the weights.

    Args:
        hist_f, hist_g: ring buffers [B, m, D].
        alpha: [B, n] weights of the first n slots (rows summing to 1).
        active: [B] bool; frozen samples take ``best`` (required unless all are active).
        best: [B, D] frozen iterates or None.
        beta: damping in (0, 1]; beta == 1 never reads hist_g.
        backend: as in ``anderson_step``.

    Returns:
        [B, D] in the history dtype.

    Raises:
        TypeError / ValueError: as in ``anderson_step`` (alpha and best real floating).
    """
    fn = "anderson_mix"
    b = validate.tensor_like(hist_f, "hist_f", fn).shape[0]
    _check_tensors(fn, hist_f, hist_g, active, real=(("alpha", alpha), ("best", best)),
                   shapes=(("best", best, (b, hist_f.shape[-1])),))
    if (alpha.dim() != 2 or alpha.shape[0] != b
            or not 1 <= alpha.shape[1] <= hist_f.shape[1]):
        raise ValueError(f"{fn}: alpha must be [B, n] with B = {b} and 1 <= n <= m = "
                         f"{hist_f.shape[1]}, got {tuple(alpha.shape)}")
    if backends.select("anderson_mix", hist_f.device.type, backend) != "triton":
        return anderson_mix_ref(hist_f, hist_g, alpha, active, best, float(beta))
    return torch.ops.luser_fast.anderson_mix(hist_f, hist_g, alpha, active, best, float(beta))


def implementations(device_type: str, backend: str | None = None) -> tuple:
    """(step, mix): what serves ``anderson_step`` and ``anderson_mix`` for tensors on
    ``device_type``, chosen once by ``luser_fast.backends.select`` as the public functions
    choose per call: the custom ops ``torch.ops.luser_fast.anderson_step`` /
    ``anderson_mix`` (the fused Triton kernels) where Triton serves, else the PyTorch twins
    ``anderson_step_ref`` / ``anderson_mix_ref``.

    They take the public functions' positional arguments (``beta`` a float) without their
    checks, for a caller that builds the arguments itself and calls them every iteration
    (``luser_fast.deq.anderson``: the checks and the choice cost about 25 us per call,
    as much as the whole update on a small CPU problem).

    Raises:
        ValueError / RuntimeError: as ``backends.select`` (an unknown backend, or a
            requested one that cannot serve on this device).
    """
    fused = backends.select("anderson_step", device_type, backend) == "triton"
    fused_mix = backends.select("anderson_mix", device_type, backend) == "triton"
    return (torch.ops.luser_fast.anderson_step if fused else anderson_step_ref,
            torch.ops.luser_fast.anderson_mix if fused_mix else anderson_mix_ref)
