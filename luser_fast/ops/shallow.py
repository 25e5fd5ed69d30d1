"""Fused shallow fixed-point map of LUSER: ``torch.ops.luser_fast.shallow_map``.

The map of ``luser_fast.models.ShallowEquilibrium`` (3x3 convolutions):

    y_1 = conv_in(z) + b_in + U v        h_i = act(GN_i(y_i))
    y_i = hidden_i(h_{i-1}) + b_i        f(z, v) = v + conv_out(h_{L-1}) + b_out

One kernel, ``_shallow_map_fwd_kernel``, serves every layer: a 3x3 convolution as an
implicit GEMM (``tl.dot`` of a [pixels x C_in-block] im2col tile built on the fly from
the NCHW input, one per tap, with a [C_in-block x C_out-block] weight tile), then bias,
an optional added tensor (the injection U v for conv_in, v for conv_out) and, for layers
followed by GroupNorm, per-tile per-channel partial sums of y and y^2. The GroupNorm and
activation of h_i are never a pass of their own: the next layer applies
``act(y * scale + shift)`` to each input element as it loads it (scale, shift [B, C] from
the statistics), then zeroes the padding. The statistics ([B, pixel tiles, C], a few KiB)
are reduced in float64 with torch between the layers: a Triton kernel would save one
tiny launch, not bytes. Partial sums are float32 over at most 64 pixels per tile before
the float64 reduction, so E[y^2] - E[y]^2 loses accuracy only when |mean| >> std.

The injection U v does not depend on z: ``shallow_inject`` computes it once per solve with
the same kernel (no bias, nothing added).

Storage float32, float16 or bfloat16; accumulation float32 (float32 inputs use IEEE fp32
``tl.dot``, not TF32, to match the reference). Only ``kernel_size`` 3 is fused.

Launches (``conv_plan``, plain Python, unit-tested on the host): the grid is (pixel tiles,
C_out blocks, samples), the batch split into chunks of ``triton_common.BATCH_CHUNK`` (CUDA
allows 65535 programs on that axis); every launch runs under the tensors' CUDA device
(``triton_common.launch``). Offsets: the per-program bases (sample, channel block) are
64-bit, so C H W may exceed 2**31; within a tile they are 32-bit unless a channel block
spans 2**31 elements (``OFF64``, images of 8192 x 8192 and more). Images of 2**31 pixels
or more and weights of 9 C_in C_out >= 2**31 run the reference (``size_reason``). The
C_in-block and tap loops are one flattened loop (``tl.range(flatten=True)``): nested, ptxas
unrolled the nine taps where registers allowed and spilled (sm_80, float32).

Bytes moved per map evaluation, s = itemsize, P = H W pixels, C hidden channels, C_in
image channels, L = depth convolutions (weights and statistics ignored; each input tile
is re-read once per C_out block, counted once, as it is served from L2):

    conv_in:   read z (C_in P) + U v (C P) + write y_1 (C P)
    hidden_i:  read y_{i-1} (C P) + write y_i (C P)
    conv_out:  read y_{L-1} (C P) + v (C_in P) + write f (C_in P)
    total      = ((3 + 2 (L - 2)) C + 3 C_in) P s per sample

against the unfused PyTorch map's (8 + 7 (L - 2)) C P + 4 C_in P (conv, add, GN read
twice and written, activation read and written, per layer).

Volumes ([B, C, D, H, W], k x k x k weights): the fused kernel is 2-D, so the map runs
``shallow_map_ref`` (conv3d). Where autograd records it (the graph LUSER's implicit
backward rebuilds at z*), it runs in the kernel's spirit (``shallow_map_lean``): each
layer's GroupNorm + activation is ``_NormAct``, which keeps only its pre-norm input y
and recomputes act(GN(y)) in its backward (the GroupNorm VJP in closed form, the
activation's through torch's own backward kernels, in place), and the next convolution's
saved input, act(GN(y)), is not stored either: a saved-tensor hook replaces it by a
recipe that recomputes it from y when the convolution's backward unpacks it. A graph of
f then holds the L - 1 pre-norm outputs instead of 3 (L - 1) activations of C channels
(plus the input), and a vector-Jacobian product adds about three more at its peak, so
LUSER's training peak in 3-D is about 6 C-channel volumes of one sample instead of about
11. Same maths, same values (the recomputation repeats the forward's operations); the
reference binding (``backend="reference"``) and ``LUSER_FAST_BACKEND=reference`` keep the
plain autograd graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backends
from ..reference.shallow import ACTIVATIONS, conv_nd, shallow_map_ref
from . import triton_common
from .triton_common import HAS_TRITON, tl, triton

__all__ = ["shallow_map", "shallow_inject", "shallow_map_ref", "shallow_map_fwd",
           "shallow_inject_fwd", "shallow_map_lean", "ACTS", "KERNEL_DTYPES", "bytes_per_map"]

#: activation codes of the kernel
ACTS = {"gelu": 0, "relu": 1, "silu": 2, "elu": 3}
#: storage dtypes the kernel takes (float32 accumulation)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: tiles and launch options by storage itemsize: 64 pixels x up to (max_co, max_ci)
#: channels per tl.dot. Checked by tests/test_triton_compile.py as Triton 3.7.1 launches
#: them (divisibility and constant-1 specialisation) over every activation, IN_MODE,
#: epilogue, dtype, channel count class and image size class, sm_80 and sm_90a: 1751
#: specialisations, 0 spill bytes. float32 uses the IEEE dot (FMAs, each thread holding
#: whole K-slices of both operands): at most 206 registers (the hidden conv with
#: GroupNorm statistics, 64 x 32 x 16); its VJP layers with the GroupNorm-activation
#: epilogue use 16-channel output blocks (with 32, one spilled 8 bytes at the 128
#: registers ptxas chose on sm_80; they needed up to 220), at most 168. fp16/bf16 use
#: tensor cores with 8 warps and ``maxnreg`` 128: without a cap ptxas aimed at 64-80
#: registers (occupancy) and spilled 8-48 bytes on sm_80; with it at most 128, no spills.
#: No float32 cap: with one ptxas fills it (255 would be used) and spills more.
_TILES = {4: {"BLOCK_P": 64, "max_co": 32, "max_co_norm_vjp": 16, "max_ci": 16,
              "num_warps": 4, "maxnreg": None, "num_stages": None},
          2: {"BLOCK_P": 64, "max_co": 32, "max_co_norm_vjp": 32, "max_ci": 32,
              "num_warps": 8, "maxnreg": 128, "num_stages": None}}
#: pixels per tile of the largest tile (the size checks allow for it)
_BLOCK_P = max(t["BLOCK_P"] for t in _TILES.values())

if HAS_TRITON:
    @triton.jit
    def _act(x, ACT: tl.constexpr):
        """Elementwise activation in float32 (erf GELU, as torch's default)."""
        if ACT == 0:
            y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
        elif ACT == 1:
            y = tl.maximum(x, 0.0)
        elif ACT == 2:
            y = x * tl.sigmoid(x)
        else:
            y = tl.where(x > 0, x, tl.exp(x) - 1.0)
        return y

    @triton.jit
    def _tile(C_out, H, W, OFF64: tl.constexpr, BLOCK_P: tl.constexpr,
              BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr):
        """The tile of this program, shared by the forward and VJP conv kernels: the sample b
        (64-bit), H W, the tile's pixels (offs_p, p_ok, their row yy and column xx), its
        output channels (co0 + co, co_ok), the input-channel lanes ci, and the lanes'
        channel offsets ci * H W, co * H W (64-bit with OFF64)."""
        b = tl.program_id(2).to(tl.int64)
        hw = H * W
        offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        co0 = tl.program_id(1) * BLOCK_CO
        co = tl.arange(0, BLOCK_CO)
        ci = tl.arange(0, BLOCK_CI)
        if OFF64:
            ci_lane = ci.to(tl.int64)[None, :] * hw
            co_lane = co.to(tl.int64)[None, :] * hw
        else:
            ci_lane = ci[None, :] * hw
            co_lane = co[None, :] * hw
        return (b, hw, offs_p, offs_p < hw, offs_p // W, offs_p % W, co0, co, co0 + co < C_out,
                ci, ci_lane, co_lane)

    @triton.jit
    def _shallow_map_fwd_kernel(x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, add_ptr,
                                out_ptr, psum_ptr, psq_ptr,
                                C_in, C_out, H, W, n_ptiles,
                                IN_MODE: tl.constexpr, ACT: tl.constexpr,
                                HAS_BIAS: tl.constexpr, HAS_ADD: tl.constexpr,
                                STATS: tl.constexpr, IEEE: tl.constexpr,
                                OFF64: tl.constexpr, BLOCK_P: tl.constexpr,
                                BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr):
        """One [BLOCK_P pixels, BLOCK_CO channels] tile of a 3x3 conv layer, one sample.

        Grid (cdiv(H W, BLOCK_P), cdiv(C_out, BLOCK_CO), B) with B <= 65535 (the launcher
        chunks the batch). x: [B, C_in, H, W]; w: [9, C_in, C_out] (tap-major, C_out
        contiguous); bias: [C_out] fp32; scale, shift: [B, C_in] fp32 (IN_MODE 2: the input
        is act(x * scale + shift); IN_MODE 1: act(x); IN_MODE 0: x); add, out:
        [B, C_out, H, W]; psum, psq: [B, n_ptiles, C_out] fp32 partial sums of out and
        out^2 over this tile's pixels (STATS).

        Offsets: the (sample, channel block) bases are 64-bit scalars, so C H W may exceed
        2**31; within a tile, channel * H W + pixel is 32-bit unless OFF64 (the launcher
        sets it when BLOCK_C H W reaches 2**31). H W and 9 C_in C_out stay below 2**31.
        """
        (b, hw, offs_p, p_ok, yy, xx, co0, co, co_ok, ci, ci_lane,
         co_lane) = _tile(C_out, H, W, OFF64, BLOCK_P, BLOCK_CO, BLOCK_CI)
        acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
        for ci0 in tl.range(0, C_in, BLOCK_CI, flatten=True):
            ci_ok = ci0 + ci < C_in
            x_blk = x_ptr + (b * C_in + ci0) * hw          # 64-bit scalar base
            if IN_MODE == 2:
                sc = tl.load(scale_ptr + (b * C_in + ci0) + ci, mask=ci_ok, other=0.0)
                sh = tl.load(shift_ptr + (b * C_in + ci0) + ci, mask=ci_ok, other=0.0)
            for tap in range(9):
                iy = yy + (tap // 3 - 1)
                ix = xx + (tap % 3 - 1)
                ok = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                m2 = ok[:, None] & ci_ok[None, :]
                a = tl.load(x_blk + ci_lane + (iy * W + ix)[:, None],
                            mask=m2, other=0.0).to(tl.float32)
                if IN_MODE == 2:
                    a = a * sc[None, :] + sh[None, :]
                if IN_MODE >= 1:
                    a = tl.where(m2, _act(a, ACT), 0.0)     # zero padding is of h, not y
                wt = tl.load(w_ptr + ((tap * C_in + ci0) * C_out + co0)
                             + ci[:, None] * C_out + co[None, :],
                             mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
                if IEEE:
                    acc = tl.dot(a, wt.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(a.to(wt.dtype), wt, acc)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + co0 + co, mask=co_ok, other=0.0)[None, :]
        m_out = p_ok[:, None] & co_ok[None, :]
        o_base = (b * C_out + co0) * hw                     # 64-bit scalar base
        o_lane = co_lane + offs_p[:, None]
        if HAS_ADD:
            acc += tl.load(add_ptr + o_base + o_lane, mask=m_out, other=0.0).to(tl.float32)
        tl.store(out_ptr + o_base + o_lane, acc.to(out_ptr.dtype.element_ty), mask=m_out)
        if STATS:
            accm = tl.where(m_out, acc, 0.0)
            s_base = (b * n_ptiles + tl.program_id(0)) * C_out + co0
            tl.store(psum_ptr + s_base + co, tl.sum(accm, axis=0), mask=co_ok)
            tl.store(psq_ptr + s_base + co, tl.sum(accm * accm, axis=0), mask=co_ok)


    @triton.jit
    def _act_grad(x, ACT: tl.constexpr):
        """d act / dx in float32."""
        if ACT == 0:
            d = (0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
                 + x * 0.3989422804014327 * tl.exp(-0.5 * x * x))
        elif ACT == 1:
            d = tl.where(x > 0, 1.0, 0.0)
        elif ACT == 2:
            sg = tl.sigmoid(x)
            d = sg * (1.0 + x * (1.0 - sg))
        else:
            d = tl.where(x > 0, 1.0, tl.exp(x))
        return d

    @triton.jit
    def _shallow_map_bwd_kernel(g_ptr, y_in_ptr, w_ptr, p_ptr, q_ptr, r_ptr,
                                y_out_ptr, scale_ptr, shift_ptr, out_ptr, psum_ptr, pdot_ptr,
                                C_in, C_out, H, W, n_ptiles,
                                IN_GN: tl.constexpr, EPI_ACT: tl.constexpr,
                                EPI_NORM: tl.constexpr, ACT: tl.constexpr,
                                STATS: tl.constexpr, IEEE: tl.constexpr,
                                OFF64: tl.constexpr, BLOCK_P: tl.constexpr,
                                BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr):
        """One [BLOCK_P, BLOCK_CO] tile of a transposed 3x3 conv in the VJP, one sample.

        Grid (cdiv(H W, BLOCK_P), cdiv(C_out, BLOCK_CO), B) with B <= 65535.
        g: [B, C_in, H, W] incoming cotangent; with IN_GN it is da of a GroupNorm layer and
        the conv input is the GroupNorm backward ``g * p + y_in * q + r`` (p, q, r:
        [B, C_in] fp32, y_in: the layer's recomputed pre-norm output [B, C_in, H, W]).
        w: [9, C_in, C_out] (flipped, channel-swapped forward weights).
        EPI_ACT: the result is multiplied by act'(y_out * scale + shift) (EPI_NORM) or
        act'(y_out) (y_out [B, C_out, H, W]; scale, shift [B, C_out] fp32): it becomes da.
        out: [B, C_out, H, W]; psum, pdot: [B, n_ptiles, C_out] fp32 partial sums of da and
        da * y_out (STATS), the GroupNorm backward's reductions. Offsets as in the forward
        kernel (64-bit scalar bases, OFF64 for 64-bit lanes).
        """
        (b, hw, offs_p, p_ok, yy, xx, co0, co, co_ok, ci, ci_lane,
         co_lane) = _tile(C_out, H, W, OFF64, BLOCK_P, BLOCK_CO, BLOCK_CI)
        acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
        for ci0 in tl.range(0, C_in, BLOCK_CI, flatten=True):
            ci_ok = ci0 + ci < C_in
            in_blk = (b * C_in + ci0) * hw                 # 64-bit scalar base
            if IN_GN:
                pc = tl.load(p_ptr + (b * C_in + ci0) + ci, mask=ci_ok, other=0.0)
                qc = tl.load(q_ptr + (b * C_in + ci0) + ci, mask=ci_ok, other=0.0)
                rc = tl.load(r_ptr + (b * C_in + ci0) + ci, mask=ci_ok, other=0.0)
            for tap in range(9):
                iy = yy + (tap // 3 - 1)
                ix = xx + (tap % 3 - 1)
                ok = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                m2 = ok[:, None] & ci_ok[None, :]
                lane = ci_lane + (iy * W + ix)[:, None]
                a = tl.load(g_ptr + in_blk + lane, mask=m2, other=0.0).to(tl.float32)
                if IN_GN:
                    yv = tl.load(y_in_ptr + in_blk + lane, mask=m2, other=0.0).to(tl.float32)
                    a = tl.where(m2, a * pc[None, :] + yv * qc[None, :] + rc[None, :], 0.0)
                wt = tl.load(w_ptr + ((tap * C_in + ci0) * C_out + co0)
                             + ci[:, None] * C_out + co[None, :],
                             mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
                if IEEE:
                    acc = tl.dot(a, wt.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(a.to(wt.dtype), wt, acc)
        m_out = p_ok[:, None] & co_ok[None, :]
        o_base = (b * C_out + co0) * hw                     # 64-bit scalar base
        o_lane = co_lane + offs_p[:, None]
        if EPI_ACT:
            yo = tl.load(y_out_ptr + o_base + o_lane, mask=m_out, other=0.0).to(tl.float32)
            if EPI_NORM:
                sc = tl.load(scale_ptr + (b * C_out + co0) + co, mask=co_ok, other=0.0)
                sh = tl.load(shift_ptr + (b * C_out + co0) + co, mask=co_ok, other=0.0)
                acc = acc * _act_grad(yo * sc[None, :] + sh[None, :], ACT)
            else:
                acc = acc * _act_grad(yo, ACT)
            if STATS:
                accm = tl.where(m_out, acc, 0.0)
                s_base = (b * n_ptiles + tl.program_id(0)) * C_out + co0
                tl.store(psum_ptr + s_base + co, tl.sum(accm, axis=0), mask=co_ok)
                tl.store(pdot_ptr + s_base + co, tl.sum(accm * yo, axis=0), mask=co_ok)
        tl.store(out_ptr + o_base + o_lane, acc.to(out_ptr.dtype.element_ty), mask=m_out)


def _pow2_block(c, cap):
    return min(cap, max(16, 1 << max(0, int(c) - 1).bit_length()))


def conv_tiles(c_in: int, c_out: int, itemsize: int, norm_vjp: bool = False) -> dict:
    """Tiles and launch options of one conv layer (forward or VJP) with ``c_in`` input and
    ``c_out`` output channels stored with ``itemsize`` bytes (``_TILES``): {"BLOCK_P",
    "BLOCK_CO", "BLOCK_CI" (channel blocks: the next power of two >= 16 up to the
    maximum; ``norm_vjp``: a VJP layer with the GroupNorm-activation epilogue, whose
    output blocks are capped at ``max_co_norm_vjp``), "num_warps", and "maxnreg" /
    "num_stages" where set}."""
    t = _TILES[itemsize]
    max_co = t["max_co_norm_vjp"] if norm_vjp else t["max_co"]
    return {"BLOCK_P": t["BLOCK_P"], "BLOCK_CO": _pow2_block(c_out, max_co),
            "BLOCK_CI": _pow2_block(c_in, t["max_ci"]),
            **{k: t[k] for k in ("num_warps", "maxnreg", "num_stages") if t[k] is not None}}


def conv_plan(b: int, c_in: int, c_out: int, h: int, w: int, itemsize: int,
              norm_vjp: bool = False) -> dict:
    """Launch parameters of one conv layer on [B, C_in, H, W] -> [B, C_out, H, W] (plain
    Python, unit-tested on the host with sizes no test could allocate).

    Returns:
        {"tiles": ``conv_tiles``'s dict, "n_ptiles": pixel tiles,
        "off64": whether the per-element offsets within a tile need 64 bits,
        "launches": [(lo, hi, grid)]: the batch in ``triton_common.batch_chunks``, each
        grid (pixel tiles, C_out blocks, samples) within CUDA's limits}.
    """
    tiles = conv_tiles(c_in, c_out, itemsize, norm_vjp)
    block_p, block_co, block_ci = tiles["BLOCK_P"], tiles["BLOCK_CO"], tiles["BLOCK_CI"]
    hw = h * w
    n_pt = -(-hw // block_p)
    # largest 32-bit lane offset formed: channel lane * H W + pixel (masked taps reach
    # one row and one pixel beyond the image)
    off64 = triton_common.needs_int64(max(block_co, block_ci) * hw + w + 1)
    launches = [(lo, hi, triton_common.check_grid((n_pt, -(-c_out // block_co), hi - lo)))
                for lo, hi in triton_common.batch_chunks(b)]
    return {"tiles": tiles, "n_ptiles": n_pt, "off64": off64, "launches": launches}


def size_reason(c_in: int, c_out: int, h: int, w: int) -> str | None:
    """Why the kernels cannot address a conv layer of these sizes (None: they can). The
    kernels keep H W and the weight offsets 9 C_in C_out in 32 bits; any C H W and batch
    are addressed (64-bit bases, batch chunks)."""
    if triton_common.needs_int64(h * w + w + _BLOCK_P):
        return f"an image of {h}x{w} pixels exceeds the kernels' 32-bit pixel offsets"
    if triton_common.needs_int64(9 * c_in * c_out):
        return (f"a 3x3 conv of {c_in} -> {c_out} channels exceeds the kernels' 32-bit "
                "weight offsets")
    return None


def _conv_layer(x, w, bias, scale, shift, add, in_mode, act, stats):
    """Launch one fused conv layer; returns (out [B, C_out, H, W], psum, psq or None)."""
    b, c_in, h, wd = x.shape
    c_out = w.shape[0]
    w_t = w.permute(2, 3, 1, 0).reshape(9, c_in, c_out).contiguous()
    plan = conv_plan(b, c_in, c_out, h, wd, x.element_size())
    n_pt = plan["n_ptiles"]
    out = triton_common.alloc((b, c_out, h, wd), x.dtype, x.device)
    psum = triton_common.alloc((b, n_pt, c_out), torch.float32, x.device) if stats else None
    psq = triton_common.alloc((b, n_pt, c_out), torch.float32, x.device) if stats else None
    has_bias = bias is not None
    bias = bias.float().contiguous() if has_bias else out
    add = add.contiguous() if add is not None else None
    for lo, hi, grid in plan["launches"]:
        def per(t, lo=lo, hi=hi):    # this chunk's slice of a per-sample tensor, else out
            return out if t is None else t[lo:hi]
        triton_common.launch(
            _shallow_map_fwd_kernel, grid, x.device,
            x[lo:hi], w_t, bias, per(scale), per(shift), per(add), out[lo:hi], per(psum),
            per(psq), c_in, c_out, h, wd, n_pt,
            IN_MODE=in_mode, ACT=ACTS[act] if in_mode else 0, HAS_BIAS=has_bias,
            HAS_ADD=add is not None, STATS=stats, IEEE=x.dtype == torch.float32,
            OFF64=plan["off64"], **plan["tiles"])
    return out, psum, psq


def _norm_affine(psum, psq, gamma, beta, groups, hw, eps):
    """GroupNorm as a per-(sample, channel) affine map from the partial sums (float64)."""
    b, _, c = psum.shape
    cpg = c // groups
    count = hw * cpg
    s = psum.double().sum(1).view(b, groups, cpg).sum(-1) / count          # mean [B, G]
    q = psq.double().sum(1).view(b, groups, cpg).sum(-1) / count
    rstd = (q - s * s).clamp_min(0).add(eps).rsqrt()
    rstd_c = rstd.repeat_interleave(cpg, dim=1)                             # [B, C]
    mean_c = s.repeat_interleave(cpg, dim=1)
    scale = rstd_c * gamma.double()
    shift = beta.double() - mean_c * scale
    return scale.float().contiguous(), shift.float().contiguous()


def shallow_inject_fwd(v, w_inject):
    """Triton launcher of the injection U v: v [B, C_in, H, W], w [C, C_in, 3, 3] ->
    [B, C, H, W] in v's dtype (no bias)."""
    return _conv_layer(v.contiguous(), w_inject.to(v.dtype), None, None, None, None, 0,
                       "relu", False)[0]


def shallow_map_fwd(z, injected, v, weights, biases, gammas, betas, groups: int, act: str,
                    eps: float):
    """Triton launcher of the map; arguments and result as ``shallow_map_ref``.

    L launches of ``_shallow_map_fwd_kernel`` (one per conv), GroupNorm statistics reduced
    in between; the intermediate y_i [B, C, H, W] are the only full-size temporaries.
    """
    dtype = z.dtype
    x = z.contiguous()
    hw = z.shape[-1] * z.shape[-2]
    scale = shift = None
    in_mode = 0
    n = len(weights)
    for i in range(n):
        last = i == n - 1
        add = injected if i == 0 else (v if last else None)
        stats = bool(gammas) and not last
        x, psum, psq = _conv_layer(x, weights[i].to(dtype), biases[i], scale, shift,
                                   None if add is None else add.to(dtype), in_mode, act, stats)
        if stats:
            scale, shift = _norm_affine(psum, psq, gammas[i], betas[i], groups, hw, eps)
            in_mode = 2
        else:
            in_mode = 1
    return x


def _conv_bwd_layer(g, w, pqr, y_in, y_out, scale, shift, epi_act, act, stats):
    """Launch one transposed conv of the VJP: conv_T(g', w) [* act'(...)] where g' is g or
    its GroupNorm backward ``g p + y_in q + r`` (pqr given). Returns (out, psum, pdot)."""
    b, c_in, h, wd = g.shape                  # c_in: the forward layer's output channels
    c_out = w.shape[1]
    w_t = w.flip(2, 3).permute(2, 3, 0, 1).reshape(9, c_in, c_out).contiguous()
    plan = conv_plan(b, c_in, c_out, h, wd, g.element_size(),
                     norm_vjp=epi_act and scale is not None)
    n_pt = plan["n_ptiles"]
    out = triton_common.alloc((b, c_out, h, wd), g.dtype, g.device)
    psum = triton_common.alloc((b, n_pt, c_out), torch.float32, g.device) if stats else None
    pdot = triton_common.alloc((b, n_pt, c_out), torch.float32, g.device) if stats else None
    p, q, r = pqr if pqr is not None else (None, None, None)
    for lo, hi, grid in plan["launches"]:
        def per(t, lo=lo, hi=hi):    # this chunk's slice of a per-sample tensor, else out
            return out if t is None else t[lo:hi]
        triton_common.launch(
            _shallow_map_bwd_kernel, grid, g.device,
            g[lo:hi], per(y_in), w_t, per(p), per(q), per(r), per(y_out), per(scale),
            per(shift), out[lo:hi], per(psum), per(pdot), c_in, c_out, h, wd, n_pt,
            IN_GN=pqr is not None, EPI_ACT=epi_act, EPI_NORM=scale is not None,
            ACT=ACTS[act] if epi_act else 0, STATS=stats, IEEE=g.dtype == torch.float32,
            OFF64=plan["off64"], **plan["tiles"])
    return out, psum, pdot


def _gn_backward_coeffs(psum, pdot, mean, rstd, gamma, groups, hw):
    """GroupNorm backward as dy = da p + y q + r per (sample, channel), from the partial
    sums of da and da * y (float64); also (dgamma, dbeta) [C]."""
    b, _, c = psum.shape
    cpg = c // groups
    n = hw * cpg
    sd = psum.double().sum(1)                                   # [B, C]  sum da
    sdy = pdot.double().sum(1)                                  # [B, C]  sum da * y
    mean_c = mean.repeat_interleave(cpg, dim=1)
    rstd_c = rstd.repeat_interleave(cpg, dim=1)
    gam = gamma.double()
    dxhat_xhat = rstd_c * (sdy - mean_c * sd)                   # sum da * xhat per channel
    m1 = (gam * sd).view(b, groups, cpg).sum(-1) / n            # mean of dxhat
    m2 = (gam * dxhat_xhat).view(b, groups, cpg).sum(-1) / n    # mean of dxhat * xhat
    p = rstd_c * gam
    q = (-rstd * rstd * m2).repeat_interleave(cpg, dim=1)
    r = (-rstd * m1 + rstd * rstd * m2 * mean).repeat_interleave(cpg, dim=1)
    coeffs = tuple(t.float().contiguous() for t in (p, q, r))
    return coeffs, dxhat_xhat.sum(0), sd.sum(0)


def _forward_saved(z, injected, v, weights, biases, gammas, betas, groups, act, eps):
    """Recompute the pre-norm outputs y_i and their GroupNorm statistics (one VJP call
    keeps them; nothing is kept between calls). Returns (ys, norms) with norms[i] =
    (scale, shift, mean, rstd) or None."""
    dtype, hw = z.dtype, z.shape[-1] * z.shape[-2]
    x, scale, shift, in_mode = z.contiguous(), None, None, 0
    ys, norms = [], []
    for i in range(len(weights) - 1):
        add = injected.to(dtype) if i == 0 else None
        x, psum, psq = _conv_layer(x, weights[i].to(dtype), biases[i], scale, shift, add,
                                   in_mode, act, bool(gammas))
        ys.append(x)
        if gammas:
            scale, shift = _norm_affine(psum, psq, gammas[i], betas[i], groups, hw, eps)
            b, c = psum.shape[0], psum.shape[2]
            cpg = c // groups
            mean = psum.double().sum(1).view(b, groups, cpg).sum(-1) / (hw * cpg)
            var = psq.double().sum(1).view(b, groups, cpg).sum(-1) / (hw * cpg) - mean * mean
            norms.append((scale, shift, mean, var.clamp_min(0).add(eps).rsqrt()))
            in_mode = 2
        else:
            norms.append(None)
            in_mode = 1
    return ys, norms


def shallow_map_bwd(u, z, injected, v, weights, biases, gammas, betas, groups: int,
                    act: str, eps: float, param_grads: bool = True):
    """Triton VJP of the map: activations recomputed, then transposed convs backwards.

    Args:
        u: cotangent of f [B, C_in, H, W]; the rest as ``shallow_map_ref``.
        param_grads: also return the parameter gradients (the end of a backward solve);
            False returns only the input cotangents (each solver iteration).

    Returns:
        (dz [B, C_in, H, W], dinjected [B, C, H, W], dv [B, C_in, H, W], dweights,
        dbiases, dgammas, dbetas): parameter lists like the inputs (None when not
        ``param_grads``). J^T u goes through ``_shallow_map_bwd_kernel`` (L launches);
        the weight gradients, needed once per backward solve, use torch's conv2d_weight
        on the recomputed h (one more recompute, no storage between calls).
    """
    dtype, hw = z.dtype, z.shape[-1] * z.shape[-2]
    u = u.to(dtype).contiguous()
    ys, norms = _forward_saved(z, injected, v, weights, biases, gammas, betas, groups, act, eps)
    n = len(weights)
    g, pqr, g_in_y = u, None, None            # cotangent of y_i, possibly lazily GN-backed
    dys, dgam, dbet = [None] * n, [None] * (n - 1), [None] * (n - 1)
    dys[n - 1] = u
    for i in range(n - 1, 0, -1):
        nrm = norms[i - 1]
        da, psum, pdot = _conv_bwd_layer(g, weights[i].to(dtype), pqr, g_in_y, ys[i - 1],
                                         nrm[0] if nrm else None, nrm[1] if nrm else None,
                                         True, act, nrm is not None)
        if nrm is not None:
            pqr, dgam[i - 1], dbet[i - 1] = _gn_backward_coeffs(
                psum, pdot, nrm[2], nrm[3], gammas[i - 1], groups, hw)
            g_in_y = ys[i - 1]
            if param_grads:
                p, q, r = pqr
                dys[i - 1] = (da * p[..., None, None] + ys[i - 1] * q[..., None, None]
                              + r[..., None, None]).to(dtype)
        else:
            pqr, g_in_y = None, None
            dys[i - 1] = da
        g = da
    dz = _conv_bwd_layer(g, weights[0].to(dtype), pqr, g_in_y, None, None, None, False, act,
                         False)[0]
    if pqr is not None:
        p, q, r = pqr
        dinj = (g * p[..., None, None] + ys[0] * q[..., None, None] + r[..., None, None]).to(dtype)
    else:
        dinj = g
    if not param_grads:
        return dz, dinj, u, None, None, None, None
    fn = ACTIVATIONS[act]
    dws, dbs = [], []
    for i in range(n):
        if i == 0:
            x_in = z
        elif norms[i - 1] is not None:
            sc, sh = norms[i - 1][0], norms[i - 1][1]
            x_in = fn(ys[i - 1].float() * sc[..., None, None] + sh[..., None, None]).to(dtype)
        else:
            x_in = fn(ys[i - 1])
        dy = dinj if i == 0 else dys[i]
        dws.append(torch.nn.grad.conv2d_weight(x_in, weights[i].shape, dy, padding=1)
                   .to(weights[i].dtype))
        dbs.append(dy.sum((0, 2, 3)).to(biases[i].dtype))
    dgammas = [d.to(t.dtype) for d, t in zip(dgam, gammas)] if gammas else []
    dbetas = [d.to(t.dtype) for d, t in zip(dbet, betas)] if gammas else []
    return dz, dinj, u, dws, dbs, dgammas, dbetas


def _check(z, injected, v, weights, biases, gammas, betas, groups, act):
    fn = "shallow_map"
    n = len(weights)
    if n < 2 or len(biases) != n:
        raise ValueError(f"{fn}: need >= 2 weights and as many biases, got {n}, {len(biases)}")
    if len(gammas) not in (0, n - 1) or len(betas) != len(gammas):
        raise ValueError(f"{fn}: gammas/betas must hold {n - 1} tensors each or none")
    if z.dim() not in (4, 5):
        raise ValueError(f"{fn}: z must be [B, C_in, H, W] (2-D) or [B, C_in, D, H, W] (3-D), "
                         f"got shape {tuple(z.shape)}")
    sd = z.dim() - 2                                   # spatial dims of the call
    k = weights[0].shape[-1]
    if (k % 2 == 0 or any(w.dim() != 2 + sd or tuple(w.shape[2:]) != (k,) * sd
                          for w in weights)):
        kind = "k x k" if sd == 2 else "k x k x k"
        raise ValueError(f"{fn}: weights must be {kind} convolutions of one odd size k for "
                         f"{sd}-D images z {tuple(z.shape)}, got "
                         f"{[tuple(w.shape) for w in weights]}")
    if act not in ACTS:
        raise ValueError(f"{fn}: act must be one of {tuple(ACTS)}, got {act!r}")
    c = weights[0].shape[0]
    if gammas and (groups < 1 or c % groups):
        raise ValueError(f"{fn}: groups={groups} must divide channels={c}")
    if z.shape != v.shape or injected.shape != (z.shape[0], c) + z.shape[2:]:
        sp = "H, W" if sd == 2 else "D, H, W"
        raise ValueError(f"{fn}: z, v must be [B, C_in, {sp}] and injected [B, {c}, {sp}], "
                         f"got {tuple(z.shape)}, {tuple(v.shape)}, {tuple(injected.shape)}")


#: why 3-D calls run the reference map
NOT_2D = "the fused kernel is 2-D"


def _unfused(t: torch.Tensor, weights) -> str | None:
    """Why the fused kernel cannot take this call on t [B, C, H, W] with these conv weights
    (None: it can). Volumes [B, C, D, H, W] never: the kernel is 2-D (``NOT_2D``)."""
    if t.dim() != 4 or any(w.dim() != 4 for w in weights):
        return NOT_2D
    if t.dtype not in KERNEL_DTYPES:
        return f"the fused kernel takes {KERNEL_DTYPES}, got {t.dtype}"
    k = weights[0].shape[-1]
    if k != 3:
        return f"only 3x3 convolutions are fused, got {k}x{k}"
    for w in weights:
        reason = size_reason(w.shape[1], w.shape[0], t.shape[-2], t.shape[-1])
        if reason is not None:
            return reason
    return None


def _fusable(z: torch.Tensor, weights) -> bool:
    """The custom op's kernel can run the fused path for z (Triton present for z's device,
    a kernel dtype, 3x3, sizes the kernels address)."""
    return (HAS_TRITON and z.device.type in triton_common.devices()
            and _unfused(z, weights) is None)


def _use_triton(op: str, t: torch.Tensor, weights, backend: str | None) -> bool:
    """Whether ``op`` runs the Triton kernel for ``t`` (the backend chosen for t's device is
    triton and the kernel takes this call; a fallback is announced once)."""
    if backends.select(op, t.device.type, backend) != "triton":
        return False
    reason = _unfused(t, weights)
    if reason is not None:
        backends.fallback(op, reason)
    return reason is None


@torch.library.custom_op("luser_fast::shallow_map", mutates_args=())
def _shallow_map_op(z: torch.Tensor, injected: torch.Tensor, v: torch.Tensor,
                    weights: list[torch.Tensor], biases: list[torch.Tensor],
                    gammas: list[torch.Tensor], betas: list[torch.Tensor], groups: int,
                    act: str, eps: float) -> torch.Tensor:
    if _fusable(z, weights):
        return shallow_map_fwd(z, injected, v, weights, biases, gammas, betas, groups, act, eps)
    backends.fallback("shallow_map", "torch.ops.luser_fast.shallow_map was called where the "
                      "fused kernel cannot serve")
    return shallow_map_ref(z, injected, v, weights, biases, gammas, betas, groups, act, eps)


@_shallow_map_op.register_fake
def _shallow_map_fake(z, injected, v, weights, biases, gammas, betas, groups, act, eps):
    return torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    z, injected, v, weights, biases, gammas, betas, groups, act, eps = inputs
    ctx.save_for_backward(z, injected, v, *weights, *biases, *gammas, *betas)
    ctx.sizes = (len(weights), len(gammas))
    ctx.config = (groups, act, eps)
    ctx.param_grads = any(t.requires_grad for t in (*weights, *biases, *gammas, *betas))


def _backward(ctx, grad):
    n, n_norm = ctx.sizes
    z, injected, v, *rest = ctx.saved_tensors
    weights, biases = rest[:n], rest[n:2 * n]
    gammas, betas = rest[2 * n:2 * n + n_norm], rest[2 * n + n_norm:]
    args = (list(weights), list(biases), list(gammas), list(betas), *ctx.config)
    if _fusable(z, weights):
        dz, dinj, dv, dws, dbs, dgs, dbe = shallow_map_bwd(grad, z, injected, v, *args,
                                                           param_grads=ctx.param_grads)
        dv = dv.to(v.dtype)
    else:
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (z, injected, v, *rest)]
            out = shallow_map_ref(*leaves[:3], leaves[3:3 + n], leaves[3 + n:3 + 2 * n],
                                  leaves[3 + 2 * n:3 + 2 * n + n_norm],
                                  leaves[3 + 2 * n + n_norm:], *ctx.config)
            grads = torch.autograd.grad(out, leaves, grad)
        dz, dinj, dv = grads[:3]
        g = grads[3:]
        dws, dbs = list(g[:n]), list(g[n:2 * n])
        dgs, dbe = list(g[2 * n:2 * n + n_norm]), list(g[2 * n + n_norm:])
    return dz, dinj, dv, dws, dbs, dgs, dbe, None, None, None


torch.library.register_autograd("luser_fast::shallow_map", _backward,
                                setup_context=_setup_context)
backends.register(("shallow_map", "shallow_inject"), "triton", triton_common.devices(),
                  lambda: HAS_TRITON)


# --- volumes: the reference map keeping only the pre-norm outputs for backward ----------------

_ATEN = torch.ops.aten


def _norm_act_inplace(y, gamma, beta, groups, act, eps):
    """``norm_act_ref``'s values with one allocation: GroupNorm (or a copy of y without
    norm), then the activation written over it (its out= kernel). No autograd."""
    g = F.group_norm(y, groups, gamma, beta, eps) if gamma is not None else y.clone()
    if act == "gelu":
        return _ATEN.gelu.out(g, approximate="none", out=g)
    if act == "silu":
        return _ATEN.silu.out(g, out=g)
    if act == "elu":
        return _ATEN.elu.out(g, 1.0, 1.0, 1.0, out=g)
    return g.relu_()


def _act_backward_(grad, a, act):
    """grad * act'(a), written over a (torch's activation backward kernels, out=)."""
    if act == "gelu":
        return _ATEN.gelu_backward.grad_input(grad, a, approximate="none", grad_input=a)
    if act == "silu":
        return _ATEN.silu_backward.grad_input(grad, a, grad_input=a)
    if act == "elu":
        return _ATEN.elu_backward.grad_input(grad, 1.0, 1.0, 1.0, False, a, grad_input=a)
    return _ATEN.threshold_backward.grad_input(grad, a, 0, grad_input=a)


def _rowdot(a, b):
    """sum of a * b over the last axis ([..., S] -> [...]) without an [..., S] temporary."""
    return torch.bmm(a.reshape(-1, 1, a.shape[-1]), b.reshape(-1, b.shape[-1], 1)).reshape(
        a.shape[:-1])


class _NormAct(torch.autograd.Function):
    """h = act(GN(y)) (``norm_act_ref``) keeping only y, gamma, beta for backward.

    Backward: a = GN(y) recomputed, da = g * act'(a) over it, then the GroupNorm VJP in
    closed form from per-(sample, channel) sums (sum da, sum da y), without a normalised
    copy of y: with xhat = (y - mean) rstd per group of n elements,

        dgamma_c = sum da xhat       dbeta_c = sum da
        dy = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))    dxhat = gamma da

    computed in da's storage. Peak: y (kept) + the incoming gradient + one volume.
    """

    @staticmethod
    def forward(ctx, y, gamma, beta, groups, act, eps):
        ctx.save_for_backward(y, gamma, beta)
        ctx.config = (groups, act, eps)
        return _norm_act_inplace(y, gamma, beta, groups, act, eps)

    @staticmethod
    def backward(ctx, grad):
        y, gamma, beta = ctx.saved_tensors
        groups, act, eps = ctx.config
        grad = grad.contiguous()
        if gamma is None:
            return _act_backward_(grad, y.clone(), act), None, None, None, None, None
        b, c = y.shape[:2]
        cpg = c // groups
        n = cpg * y[0, 0].numel()
        da = _act_backward_(grad, F.group_norm(y, groups, gamma, beta, eps), act)
        var, mean = torch.var_mean(y.reshape(b, groups, -1), dim=-1, unbiased=False)
        rstd = (var + eps).rsqrt()                                   # [B, G]
        dac = da.view(b, c, -1)
        s_da = dac.sum(-1)                                           # [B, C]
        mean_c, rstd_c = mean.repeat_interleave(cpg, 1), rstd.repeat_interleave(cpg, 1)
        s_daxhat = rstd_c * (_rowdot(dac, y.reshape(b, c, -1)) - mean_c * s_da)
        m1 = (gamma * s_da).view(b, groups, cpg).sum(-1) / n         # mean dxhat
        m2 = (gamma * s_daxhat).view(b, groups, cpg).sum(-1) / n     # mean dxhat xhat
        k = rstd * rstd * m2
        dv = dac.mul_(gamma[:, None]).view(b, groups, -1)            # dxhat, in place
        dv.mul_(rstd[..., None])
        torch.addcmul(dv, y.reshape(b, groups, -1), -k[..., None], out=dv)
        dv.add_((k * mean - rstd * m1)[..., None])
        need = ctx.needs_input_grad
        return (da, s_daxhat.sum(0) if need[1] else None, s_da.sum(0) if need[2] else None,
                None, None, None)


def _norm_act_lean(y, gamma, beta, groups, act, eps):
    return _NormAct.apply(y, gamma, beta, groups, act, eps)


class _Recompute:
    """A saved tensor that is an output of ``_NormAct``: recomputed, not stored."""

    __slots__ = ("node",)

    def __init__(self, node):
        self.node = node

    def __call__(self):
        y, gamma, beta = self.node.saved_tensors
        with torch.no_grad():
            return _norm_act_inplace(y, gamma, beta, *self.node.config)


def _recompute_hooks():
    """Saved-tensor hooks storing ``_NormAct`` outputs as ``_Recompute`` recipes; other
    tensors go to the hooks active outside (e.g. ``profile.SavedTensorBytes``, which then
    counts exactly what is stored) or are stored as they are."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    try:
        outer = top(False) if top is not None else None
    except (RuntimeError, TypeError):
        outer = None
    outer_pack, outer_unpack = outer if outer else (None, None)

    def pack(t):
        if isinstance(t.grad_fn, _NormAct._backward_cls):
            return _Recompute(t.grad_fn)
        return (outer_pack(t),) if outer_pack else t

    def unpack(p):
        if isinstance(p, _Recompute):
            return p()
        return outer_unpack(p[0]) if outer_pack else p

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def shallow_map_lean(z, injected, v, weights, biases, gammas, betas, groups: int, act: str,
                     eps: float):
    """``shallow_map_ref`` keeping for backward only each layer's pre-norm output (the
    module docstring, "Volumes"): the same values and gradients, about half the memory of
    its graph. For a map autograd records; arguments as ``shallow_map_ref``."""
    with _recompute_hooks():
        return shallow_map_ref(z, injected, v, weights, biases, gammas, betas, groups, act,
                               eps, norm_act=_norm_act_lean)


def _records(*tensors) -> bool:
    return torch.is_grad_enabled() and any(
        t.requires_grad for t in tensors if isinstance(t, torch.Tensor))


def shallow_inject(v: torch.Tensor, w_inject: torch.Tensor, *,
                   backend: str | None = None) -> torch.Tensor:
    """The injection U v (odd k x k, zero padding, no bias), computed once per solve.

    Args:
        v: [B, C_in, H, W]; w_inject: [C, C_in, k, k]. Volumes: v [B, C_in, D, H, W],
            w_inject [C, C_in, k, k, k] (conv3d; the fused kernel is 2-D, so the reference
            serves them).
        backend: request a backend for this call (``luser_fast.backends``); None: the
            environment's preference.

    Returns:
        [B, C, H, W] ([B, C, D, H, W]) in v's dtype.
    """
    if (_use_triton("shallow_inject", v, [w_inject], backend)
            and not (torch.is_grad_enabled() and (v.requires_grad or w_inject.requires_grad))):
        return shallow_inject_fwd(v, w_inject)
    return conv_nd(w_inject)(v, w_inject, padding=w_inject.shape[-1] // 2)


def shallow_map(z, injected, v, weights, biases, gammas=(), betas=(), groups: int = 1,
                act: str = "gelu", eps: float = 1e-5, *,
                backend: str | None = None) -> torch.Tensor:
    """f(z, v) of ``ShallowEquilibrium`` with U v given (see ``shallow_inject``).

    Runs the fused Triton kernel (``torch.ops.luser_fast.shallow_map``, with its fused VJP)
    where ``luser_fast.backends`` selects Triton and the call suits it (3x3, a kernel
    dtype); else the PyTorch reference ``shallow_map_ref``, differentiated by autograd.
    Volumes (5-D z, k x k x k weights) take the same arguments and run the reference
    (conv3d): the fused kernel is 2-D, and a request for Triton says so once
    (``backends.fallback``: "the fused kernel is 2-D"); where autograd records, through
    ``shallow_map_lean`` (same values, half the graph: the module docstring), except on
    the reference backend.

    Args:
        z, v: [B, C_in, H, W] (or [B, C_in, D, H, W]).
        injected: U v [B, C, H, W] (or [B, C, D, H, W]).
        weights: [C, C_in, k, k], (L - 2) x [C, C, k, k], [C_in, C, k, k] (k odd; one more
            k for volumes).
        biases: [C], ..., [C_in].
        gammas, betas: L - 1 GroupNorm weights and biases [C], or empty for no norm.
        groups: GroupNorm groups; act: "gelu", "relu", "silu" or "elu"; eps: GN epsilon.
        backend: as in ``shallow_inject``.

    Returns:
        f(z, v), shaped like z.

    Example:
        >>> m = luser_fast.ShallowEquilibrium(1, 8, groups=2)
        >>> z = torch.randn(1, 1, 5, 7)
        >>> f = shallow_map(z, shallow_inject(z, m.inject.weight), z,
        ...                 [m.conv_in.weight, m.conv_out.weight],
        ...                 [m.conv_in.bias, m.conv_out.bias],
        ...                 [m.norms[0].weight], [m.norms[0].bias], groups=2)
    """
    weights, biases, gammas, betas = list(weights), list(biases), list(gammas), list(betas)
    _check(z, injected, v, weights, biases, gammas, betas, groups, act)
    if not _use_triton("shallow_map", z, weights, backend):
        if (z.dim() == 5 and (backend or backends.requested("shallow_map")) != "reference"
                and _records(z, injected, v, *weights, *biases, *gammas, *betas)):
            return shallow_map_lean(z, injected, v, weights, biases, gammas, betas,
                                    int(groups), act, float(eps))
        return shallow_map_ref(z, injected, v, weights, biases, gammas, betas, int(groups),
                               act, float(eps))
    return torch.ops.luser_fast.shallow_map(z, injected, v, weights, biases, gammas, betas,
                                            int(groups), act, float(eps))


def bytes_per_map(channels: int, in_channels: int, height: int, width: int, depth: int = 2,
                  itemsize: int = 4, fused: bool = True) -> int:
    """Bytes one map evaluation moves per sample (the model in this module's docstring).

    Args:
        channels: C; in_channels: C_in; height, width: image size; depth: L convolutions.
        itemsize: bytes per stored element; fused: this module (True) or plain PyTorch.

    Returns:
        bytes per sample.
    """
    c, ci, p = channels, in_channels, height * width
    if fused:
        return ((3 + 2 * (depth - 2)) * c + 3 * ci) * p * itemsize
    return ((8 + 7 * (depth - 2)) * c + 4 * ci) * p * itemsize
