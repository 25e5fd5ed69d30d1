"""The CUDA paths, tested on the host (no GPU here; issue #13 items 3, 4, 6 and 7).

- Launch parameters and size guards (item 4): the pure functions that size every launch
  (``cuda_common.grid``, ``radon._forward_grid`` / ``_adjoint_grid``, ``nufft._spread_launch``
  / ``_interp_launch`` / ``_cuda_check_sizes``) with sizes no machine could allocate, the
  kernel-argument converters, and the launchers driven with more images / planes than a
  grid's y axis holds.
- Validation (item 3): every launcher refuses what the CPU kernels refuse, before anything
  is launched (``cuda_common.launch`` replaced by a recorder).
- NUFFT through the real launchers with NumPy stand-ins of the CUDA kernels (``FakeGpu``):
  the plan the CUDA path builds equals the C++ plan, every launch matches the kernel's
  parameter list (read from the preprocessed spread.cu), and the CUDA spreading and
  interpolation, in their own summation orders (atomics: any order), agree with the CPU
  kernels within the bound of docs/DESIGN.md "Numerical contracts" (item 6).
- Radon numerics (item 6): no FMA and no flush-to-zero in the compiled Radon kernels (PTX
  from nvcc as CMake builds it, and from NVRTC with luser_fast._ext's options), so they
  compute what the CPU gather twins compute; those agree with the CPU fast kernels.
- Loading and caching (item 7), with a mocked ``cupy`` where only the Python path is under
  test: CuPy's import failure is recorded and reported, kernels are created once per
  (name, device) on the tensor's device, a fatbin built from other sources is detected and
  not used, and NVRTC's disk cache is keyed on the full source text, options and arch.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.abc
import importlib.machinery
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from helpers import (CSRC, ROOT, assert_launcher_refuses, assert_launches_match,
                     assert_plan_equals, nvrtc, nvrtc_compile, rel_err, view_at)

from luser_fast import _ext
from luser_fast.ops import cuda_common
from luser_fast.ops import nufft as nufft_ops
from luser_fast.ops import radon as radon_ops

pytestmark = pytest.mark.usefixtures("one_thread")

LF = torch.ops.luser_fast
HAS_EXT = radon_ops.HAS_CPU_KERNELS and nufft_ops.HAS_CPU_KERNELS
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="the C++ extension is not built")
RADON_CU = os.path.join(CSRC, "radon", "radon.cu")
SPREAD_CU = os.path.join(CSRC, "nufft", "spread.cu")
ANGLES = torch.tensor([0.1, 0.7, 2.0], dtype=torch.float64)


class Recorder:
    """Stands in for ``cuda_common.launch``: records (name, device, grid, args, shared_mem)
    and runs the NumPy stand-in of the kernel when one is given."""

    def __init__(self, standins: dict | None = None):
        self.calls, self.standins = [], standins or {}

    def __call__(self, name, device, grid, args, shared_mem=0):
        self.calls.append((name, device, tuple(int(g) for g in grid), tuple(args), shared_mem))
        if name in self.standins:
            self.standins[name](tuple(int(g) for g in grid), *args)

    @property
    def names(self):
        return [c[0] for c in self.calls]


@pytest.fixture
def fake_cuda(monkeypatch):
    """The launchers run as on a GPU (CUDA available, NUFFT plans of kind "cuda"), on CPU
    tensors, with launches recorded; returns the recorder (give it stand-ins to run)."""
    rec = Recorder()
    monkeypatch.setattr(cuda_common, "launch", rec)
    monkeypatch.setattr(radon_ops, "cuda_available", lambda: True)
    monkeypatch.setattr(nufft_ops, "cuda_available", lambda: True)
    monkeypatch.setattr(nufft_ops, "_fast_kind", lambda device: "cuda")
    return rec


# --- item 4: launch parameters and size guards --------------------------------------------------

def test_grid_caps_y_and_refuses_an_x_axis_too_long():
    assert cuda_common.grid(1, 1) == (1, 1)
    assert cuda_common.grid(0, 0) == (1, 1)
    assert cuda_common.grid(257, 5) == (2, 5)
    assert cuda_common.grid(10 ** 11, 10 ** 9) == (390625000, 65535)
    assert cuda_common.grid(5, 10 ** 9, threads=1) == (5, 65535)
    assert cuda_common.grid(256 * (2 ** 31 - 1), 1) == (2 ** 31 - 1, 1)
    with pytest.raises(ValueError, match="more than the 2147483647"):
        cuda_common.grid(256 * (2 ** 31 - 1) + 1, 1)


def test_kernel_arguments_never_wrap():
    assert cuda_common.i32(2 ** 31 - 1) == 2 ** 31 - 1 and cuda_common.i32(-5) == -5
    for v in (2 ** 31, -(2 ** 31) - 1):
        with pytest.raises(OverflowError):
            cuda_common.i32(v)
    assert cuda_common.i64(2 ** 40) == 2 ** 40 and type(cuda_common.i64(1)) is np.int64
    with pytest.raises(OverflowError):
        cuda_common.i64(2 ** 63)
    cuda_common.check_sizes("f", a=2 ** 31 - 1, b=0)
    with pytest.raises(ValueError, match="f: too large for the CUDA kernels: b = 2147483648"):
        cuda_common.check_sizes("f", a=1, b=2 ** 31)


def test_radon_grids_for_huge_sizes():
    # images on a capped y axis (the kernels stride over image groups): any batch
    assert radon_ops._forward_grid(2 ** 31 - 1, 10 ** 12) == (math.ceil((2 ** 31 - 1) / 256), 65535)
    assert radon_ops._forward_grid(60 * 91, 18) == (22, 5)
    # rays are int indices (and A * D ray-table entries): 2^31 of them is refused
    with pytest.raises(ValueError, match="radon_forward: too large for the CUDA kernels: rays"):
        radon_ops._forward_grid(2 ** 31, 1)
    # pixels are 64-bit in the adjoint: H * W beyond 2^31 is fine, up to the grid's x axis
    assert radon_ops._adjoint_grid(2 ** 36, 1000, 3) == (2 ** 28, 1)
    with pytest.raises(ValueError, match="blocks"):
        radon_ops._adjoint_grid((2 ** 23) ** 2, 1000, 3)
    with pytest.raises(ValueError, match="radon_adjoint: .*rays"):
        radon_ops._adjoint_grid(64, 2 ** 31, 3)


def test_nufft_launch_sizes_for_huge_sizes():
    nufft_ops._cuda_check_sizes(2 ** 31 - 1, (2 ** 28, 2 ** 28), (2 ** 15, 2 ** 15 - 1))
    with pytest.raises(ValueError, match="points = 2147483648"):
        nufft_ops._cuda_check_sizes(2 ** 31, (64, 64), (2, 2))
    with pytest.raises(ValueError, match="bins = 2147483648"):
        nufft_ops._cuda_check_sizes(10, (2 ** 28, 2 ** 28), (2 ** 16, 2 ** 15))
    with pytest.raises(ValueError, match="the grid side = 268435457"):
        nufft_ops._cuda_check_sizes(10, (2 ** 28 + 1, 64), (2, 2))
    # spreading: one block per subproblem while the tile fits in shared memory, planes on y
    kind, grid, smem = nufft_ops._spread_launch(2 ** 24, 2 ** 31 - 1, 10 ** 8, (38, 38), 16)
    assert (kind, grid, smem) == ("tile", (2 ** 24, 65535), 38 * 38 * 16)
    kind, grid, smem = nufft_ops._spread_launch(2 ** 24, 2 ** 31 - 1, 3, (60, 60), 16)
    assert (kind, grid, smem) == ("global", (math.ceil((2 ** 31 - 1) / 256), 3), 0)
    assert nufft_ops._interp_launch(2 ** 31 - 1, 10 ** 8) == (math.ceil((2 ** 31 - 1) / 256), 65535)


def _source_without_comments(path: str) -> str:
    text = open(path).read()
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def test_kernels_index_with_64_bits_and_stride_over_y():
    """What the launch functions rely on: every kernel given a y extent strides over it by
    gridDim.y, and the indices multiplied by a size (points, images, planes) are 64-bit."""
    radon = _source_without_comments(RADON_CU)
    spread = _source_without_comments(SPREAD_CU)
    for src in (radon, spread):
        assert src.count("blockIdx.y") == src.count("gridDim.y") >= 2
    assert not re.search(r"\bint\s+n_images\b", radon)
    assert not re.search(r"\bint\s+(batch|b|p|q)\b", spread)
    assert "long long n_images" in radon and "long long batch" in spread
    assert not re.search(r"\bconst int p\b|\bint p =", spread)


def test_launchers_take_more_images_than_a_grid_row(fake_cuda):
    """Radon: 262,145 one-pixel images are 65,537 groups of 4, more than grid y holds: the
    grid is capped and the kernel gets the full (64-bit) image count."""
    x = torch.zeros(262145, 1, 1)
    out = radon_ops._forward_cuda(x, ANGLES[:1], 1, 1.0, None, None)
    assert out.shape == (262145, 1, 1)
    name, device, grid, args, _ = fake_cuda.calls[-1]
    assert name == "radon_fwd_kernel_f32" and grid == (1, 65535) and device == x.device
    assert type(args[3]) is np.int64 and args[3] == 262145
    sino = torch.zeros(262145, 1, 1, dtype=torch.float64)
    radon_ops._adjoint_cuda(sino, ANGLES[:1], 1, 1, 1.0, None, None)
    name, _, grid, args, _ = fake_cuda.calls[-1]
    assert name == "radon_adj_kernel_f64" and grid == (1, 65535) and args[3] == 262145


def test_nufft_launchers_take_more_planes_than_a_grid_row(fake_cuda):
    fake_cuda.standins.update(PLAN_STANDINS)
    k = _traj(40, seed=3)
    plan = nufft_ops.plan_for(k, (6, 6), 1e-2, dtype=torch.complex64)
    assert plan.kind == "cuda"
    n0, n1 = plan.grid_size
    batch = 70000
    nufft_ops._interp_cuda(plan, torch.empty(batch, n1, n0, dtype=torch.complex64))
    name, _, grid, args, _ = fake_cuda.calls[-1]
    assert name == "nufft_interp_kernel_f32" and grid == (1, 65535)
    assert type(args[4]) is np.int64 and args[4] == batch
    nufft_ops._spread_cuda(plan, torch.zeros(batch, 40, dtype=torch.complex64),
                           torch.empty(batch, n1, n0, dtype=torch.complex64))
    name, _, grid, args, smem = fake_cuda.calls[-1]
    assert name == "nufft_spread_tile_kernel_f32" and grid == (plan.subproblems.shape[0], 65535)
    assert args[5] == batch and smem == plan.tile[0] * plan.tile[1] * 8


# --- item 3: the CUDA launchers validate like the CPU kernels ---------------------------------------

def _x(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


RADON_BAD = {  # label: (forward?, args, words the message holds)
    "fewer angles than sinogram rows": (False, (_x(2, 5, 9), ANGLES, 6, 6, 1.0, None, None),
                                        "sino must end in (A, D)"),
    "more angles than sinogram rows": (False, (_x(2, 2, 9), ANGLES, 6, 6, 1.0, None, None),
                                       "sino must end in (A, D)"),
    "empty detector axis": (False, (_x(2, 3, 0), ANGLES, 6, 6, 1.0, None, None), "n_detectors"),
    "fan source inside the image": (True, (_x(6, 6), ANGLES, 9, 1.0, 2.0, None), "source_distance"),
    "fan source inside the image (adjoint)": (False, (_x(3, 9), ANGLES, 6, 6, 1.0, 4.0, 1.0),
                                              "source_distance"),
    "NaN source distance": (True, (_x(6, 6), ANGLES, 9, 1.0, math.nan, None), "source_distance"),
    "detector distance without a source": (True, (_x(6, 6), ANGLES, 9, 1.0, None, 3.0),
                                           "detector_distance"),
    "negative detector distance": (False, (_x(3, 9), ANGLES, 6, 6, 1.0, 20.0, -1.0),
                                   "detector_distance"),
    "no detectors": (True, (_x(6, 6), ANGLES, 0, 1.0, None, None), "n_detectors"),
    "zero spacing": (True, (_x(6, 6), ANGLES, 9, 0.0, None, None), "det_spacing"),
    "infinite spacing": (False, (_x(3, 9), ANGLES, 6, 6, math.inf, None, None), "det_spacing"),
    "NaN angle": (True, (_x(6, 6), torch.tensor([0.1, math.nan], dtype=torch.float64), 9, 1.0,
                         None, None), "angles"),
    "NaN angle (adjoint)": (False, (_x(2, 9), torch.tensor([0.1, math.nan]), 6, 6, 1.0, None,
                                    None), "angles"),
    "2-D angles": (True, (_x(6, 6), ANGLES[None], 9, 1.0, None, None), "angles"),
    "no angles": (False, (_x(0, 9), ANGLES[:0], 6, 6, 1.0, None, None), "angles"),
    "complex angles": (True, (_x(6, 6), ANGLES.to(torch.complex128), 9, 1.0, None, None), "angles"),
    "1-D image": (True, (_x(6), ANGLES, 9, 1.0, None, None), "x"),
    "empty image": (True, (_x(2, 0, 6), ANGLES, 9, 1.0, None, None), "x"),
    "integer image": (True, (_x(6, 6, dtype=torch.int32), ANGLES, 9, 1.0, None, None), "x"),
    "complex sinogram": (False, (_x(3, 9, dtype=torch.complex64), ANGLES, 6, 6, 1.0, None, None),
                         "sino"),
    "zero height": (False, (_x(3, 9), ANGLES, 0, 6, 1.0, None, None), "height"),
    "height of 2^24": (False, (_x(3, 9), ANGLES, 2 ** 24, 1, 1.0, None, None), "height"),
    "angles on another device": (True, (_x(6, 6), ANGLES.to("meta"), 9, 1.0, None, None),
                                 "angles"),
}


@pytest.mark.parametrize("label", list(RADON_BAD))
def test_radon_cuda_launchers_validate_before_launching(fake_cuda, label):
    forward, args, _ = RADON_BAD[label]
    assert_launcher_refuses(fake_cuda, (radon_ops._forward_cuda, radon_ops._adjoint_cuda),
                            RADON_BAD[label])
    # the CPU op (C++ kernel, or the reference behind the same checks) refuses it too
    op = LF.radon_forward if forward else LF.radon_adjoint
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        op(*args)


def test_radon_cuda_launchers_accept_what_the_cpu_accepts(fake_cuda):
    for src, det in [(None, None), (20.0, None), (20.0, 4.0)]:
        fake_cuda.calls.clear()
        radon_ops._forward_cuda(_x(2, 6, 5), ANGLES, 9, 0.8, src, det)
        radon_ops._adjoint_cuda(_x(2, 3, 9, dtype=torch.float64), ANGLES, 6, 5, 0.8, src, det)
        assert len(fake_cuda.calls) == 4


def _traj(m: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return ((2 * torch.rand(m, 2, generator=g, dtype=torch.float64) - 1) * math.pi).to(dtype)


def _c(*shape, dtype=torch.complex64):
    return torch.zeros(shape, dtype=dtype)


NUFFT_BAD = {  # label: (type 1?, args, words)
    "real float64 values": (True, (torch.zeros(2, 30, dtype=torch.float64), "K", (8, 8)), "values"),
    "values with another M": (True, (_c(2, 29), "K", (8, 8)), "values must have shape [..., M]"),
    "scalar values": (True, (_c(), "K", (8, 8)), "values"),
    "ktraj [M, 3]": (True, (_c(2, 30), torch.zeros(30, 3), (8, 8)), "ktraj"),
    "integer ktraj": (False, (_c(8, 8), torch.zeros(30, 2, dtype=torch.int64)), "ktraj"),
    "1-D image": (False, (_c(8), "K"), "image"),
    "image without rows": (False, (_c(2, 0, 8), "K"), "image"),
    "real image": (False, (torch.zeros(8, 8), "K"), "image"),
    "image_size with a zero": (True, (_c(30), "K", (0, 8)), "image_size"),
    "tol 0": (False, (_c(8, 8), "K", 0.0), "tol"),
    "oversamp 1": (True, (_c(30), "K", (8, 8), 1e-3, 1.0), "oversamp"),
    "NaN in ktraj": (False, (_c(8, 8), "K_NAN"), "ktraj"),
    "ktraj beyond pi": (True, (_c(30), "K_BIG", (8, 8)), "ktraj"),
    "ktraj on another device": (False, (_c(8, 8), "K_META"), "ktraj"),
}


def _nufft_args(args):
    k = _traj(30, seed=11)
    subs = {"K": k, "K_NAN": torch.where(torch.arange(30)[:, None] == 7, math.nan, k),
            "K_BIG": k * 1.5, "K_META": k.to("meta")}
    return tuple(subs[a] if isinstance(a, str) else a for a in args)


@pytest.mark.parametrize("label", list(NUFFT_BAD))
def test_nufft_cuda_path_validates_before_launching(fake_cuda, label):
    type1, args, words = NUFFT_BAD[label]
    kernel = nufft_ops._type1_kernel if type1 else nufft_ops._type2_kernel
    with pytest.raises((TypeError, ValueError), match=re.escape(words)):
        kernel(*_nufft_args(args))
    assert fake_cuda.calls == []
    op = LF.nufft_type1 if type1 else LF.nufft_type2
    with pytest.raises((TypeError, ValueError, RuntimeError)):
        op(*_nufft_args(args))


# --- NUFFT on stand-ins of the CUDA kernels ---------------------------------------------------------

def _real(suffix: str):
    return np.float32 if suffix == "f32" else np.float64


def _plan_points(grid, krc, m, n_r, n_c, nb_r, nb_c, width, start, bins):
    """nufft_plan_points_kernel: es_kernel.h's stencil start and bin, in float64."""
    k = view_at(krc, np.float64, 2 * m).reshape(m, 2)
    s_out = view_at(start, np.int32, 2 * m).reshape(m, 2)
    b_out = view_at(bins, np.int32, m)
    cells = []
    for d, (n, nb) in enumerate(((n_r, nb_r), (n_c, nb_c))):
        t = k[:, d] * float(n) / (2 * math.pi)
        s = np.ceil(t - 0.5 * width).astype(np.int64) % n
        s_out[:, d] = s
        cells.append(((s + 1) * nb - 1) // n)
    b_out[:] = cells[0] * nb_c + cells[1]


def _plan_weights(grid, krc, order, m, n_r, n_c, width, beta, weights):
    """nufft_plan_weights_kernel: the ES weights of the sorted points, in float64."""
    k = view_at(krc, np.float64, 2 * m).reshape(m, 2)
    o = view_at(order, np.int64, m)
    w_out = view_at(weights, np.float64, 2 * m * width).reshape(m, 2, width)
    for d, n in enumerate((n_r, n_c)):
        t = k[o, d] * float(n) / (2 * math.pi)
        s = np.ceil(t - 0.5 * width)
        u = t[:, None] - (s[:, None] + np.arange(width))
        z = u / (0.5 * width)
        r = 1.0 - z * z
        w_out[:, d] = np.where(r >= 0, np.exp(beta * (np.sqrt(np.maximum(r, 0)) - 1.0)), 0.0)


PLAN_STANDINS = {"nufft_plan_points_kernel": _plan_points,
                 "nufft_plan_weights_kernel": _plan_weights}


def _terms(vals, order, start, wts, pts, width, n_r, n_c, real):
    """The w x w stencil terms kx[j] * (ky[i] * v) of points ``pts`` in the CUDA kernels'
    product order, in precision ``real``, and their wrapped cells: [B, P, w, w] x 2, [P, w, w]."""
    ky, kx = wts[pts, 0], wts[pts, 1]
    v = vals[:, order[pts]]                                    # [B, P, 2]
    y = ky[None, :, :, None] * v[:, :, None, :]                # [B, P, w, 2]
    t = kx[None, :, None, :, None] * y[:, :, :, None, :]       # [B, P, w, w, 2]
    rows = (start[pts, 0][:, None] + np.arange(width)) % n_r
    cols = (start[pts, 1][:, None] + np.arange(width)) % n_c
    return t.astype(real), rows[:, :, None] * n_c + cols[:, None, :]


def _spread_tile(seed):
    def run(grid_dims, values, order, start, weights, subproblems, batch, m, width, n_r, n_c,
            nb_r, nb_c, tile_r, tile_c, grid, suffix):
        real = _real(suffix)
        rng = np.random.default_rng(seed)
        vals = view_at(values, real, 2 * batch * m).reshape(batch, m, 2)
        o = view_at(order, np.int64, m)
        st = view_at(start, np.int32, 2 * m).reshape(m, 2)
        wts = view_at(weights, real, 2 * m * width).reshape(m, 2, width)
        subs = view_at(subproblems, np.int32, 3 * grid_dims[0]).reshape(-1, 3)
        out = view_at(grid, real, 2 * batch * n_r * n_c).reshape(batch, n_r * n_c, 2)
        for b_idx, p0, p1 in rng.permutation(subs):            # blocks run in any order
            br, bc = divmod(int(b_idx), nb_c)
            lo_r, lo_c = br * n_r // nb_r, bc * n_c // nb_c
            len_r, len_c = (br + 1) * n_r // nb_r - lo_r, (bc + 1) * n_c // nb_c - lo_c
            pts = np.arange(p0, p1)
            rr, cc = st[pts, 0] - lo_r, st[pts, 1] - lo_c
            pts = pts[(rr >= 0) & (rr < len_r) & (cc >= 0) & (cc < len_c)]
            pts = rng.permutation(pts)                         # shared atomics: any order
            t, _ = _terms(vals, o, st, wts, pts, width, n_r, n_c, real)
            tr = (st[pts, 0] - lo_r)[:, None, None] + np.arange(width)[None, :, None]
            tc = (st[pts, 1] - lo_c)[:, None, None] + np.arange(width)[None, None, :]
            idx = np.broadcast_to(tr * tile_c + tc, t.shape[1:4]).ravel()
            tile = np.zeros((batch, tile_r * tile_c, 2), real)
            for b in range(batch):
                for part in range(2):
                    np.add.at(tile[b, :, part], idx, t[b, ..., part].ravel())
            cell_r, cell_c = np.divmod(np.arange(tile_r * tile_c), tile_c)
            keep = (cell_r < len_r + width - 1) & (cell_c < len_c + width - 1)
            gidx = ((lo_r + cell_r) % n_r) * n_c + (lo_c + cell_c) % n_c
            out[:, gidx[keep]] += tile[:, keep]                # distinct cells per tile
    return run


def _spread_global(seed):
    def run(grid_dims, values, order, start, weights, batch, m, width, n_r, n_c, grid, suffix):
        real = _real(suffix)
        rng = np.random.default_rng(seed)
        vals = view_at(values, real, 2 * batch * m).reshape(batch, m, 2)
        o = view_at(order, np.int64, m)
        st = view_at(start, np.int32, 2 * m).reshape(m, 2)
        wts = view_at(weights, real, 2 * m * width).reshape(m, 2, width)
        out = view_at(grid, real, 2 * batch * n_r * n_c).reshape(batch, n_r * n_c, 2)
        pts = rng.permutation(m)                               # global atomics: any order
        t, idx = _terms(vals, o, st, wts, pts, width, n_r, n_c, real)
        for b in range(batch):
            for part in range(2):
                np.add.at(out[b, :, part], idx.ravel(), t[b, ..., part].ravel())
    return run


def _interp(grid_dims, grid, order, start, weights, batch, m, width, n_r, n_c, out, suffix):
    """nufft_interp_kernel: per point, each stencil row summed over its columns, then the
    rows (the CUDA order), sequentially in precision ``real``."""
    real = _real(suffix)
    g = view_at(grid, real, 2 * batch * n_r * n_c).reshape(batch, n_r * n_c, 2)
    o = view_at(order, np.int64, m)
    st = view_at(start, np.int32, 2 * m).reshape(m, 2)
    wts = view_at(weights, real, 2 * m * width).reshape(m, 2, width)
    res = view_at(out, real, 2 * batch * m).reshape(batch, m, 2)
    rows = (st[:, 0][:, None] + np.arange(width)) % n_r
    cols = (st[:, 1][:, None] + np.arange(width)) % n_c
    vals = g[:, rows[:, :, None] * n_c + cols[:, None, :]]     # [B, M, w, w, 2]
    acc = np.zeros((batch, m, 2), real)
    for i in range(width):
        row = np.zeros((batch, m, 2), real)
        for j in range(width):
            row += wts[None, :, 1, j, None] * vals[:, :, i, j]
        acc += wts[None, :, 0, i, None] * row
    res[:, o] = acc


def _in_precision(fn, suffix: str):
    return lambda grid_dims, *args: fn(grid_dims, *args, suffix=suffix)


def _standins(seed: int = 0) -> dict:
    """Stand-ins of every NUFFT kernel; ``seed`` fixes the (random) order of the atomics."""
    out = dict(PLAN_STANDINS)
    for suffix in ("f32", "f64"):
        out[f"nufft_spread_tile_kernel_{suffix}"] = _in_precision(_spread_tile(seed), suffix)
        out[f"nufft_spread_global_kernel_{suffix}"] = _in_precision(_spread_global(seed), suffix)
        out[f"nufft_interp_kernel_{suffix}"] = _in_precision(_interp, suffix)
    return out


def _preprocessed_signatures(path: str) -> dict[str, list[str]]:
    """Parameter kinds ("ptr", "int", "long long", "double") of every kernel of a .cu file,
    read from the preprocessed source (macros expanded) as NVRTC sees it."""
    cpp = shutil.which("g++") or shutil.which("cpp")
    if cpp is None:
        pytest.skip("no C preprocessor")
    text = subprocess.run([cpp, "-E", "-P", "-x", "c++", "-D__CUDACC_RTC__", f"-I{CSRC}", path],
                          capture_output=True, text=True, check=True).stdout
    sigs = {}
    for name, params in re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', text):
        kinds = []
        for p in params.split(","):
            p = " ".join(p.split())
            kinds.append("ptr" if "*" in p else " ".join(p.split()[:-1]))
        sigs[name] = kinds
    return sigs




@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_nufft_launches_match_kernel_signatures(fake_cuda, monkeypatch, dtype):
    sigs = _preprocessed_signatures(SPREAD_CU)
    assert len(sigs) == 8
    fake_cuda.standins.update(_standins())
    k = _traj(300, seed=4)
    x = torch.randn(2, 3, 10, 12, dtype=dtype)
    y = torch.randn(2, 3, 300, dtype=dtype)
    nufft_ops.nufft_type2(x, k, 1e-4)
    nufft_ops.nufft_type1(y, k, (10, 12), 1e-4)
    monkeypatch.setattr(nufft_ops, "_CUDA_SMEM", 0)  # the global-atomics spreader
    nufft_ops.nufft_type1(y, k.clone(), (10, 12), 1e-4)
    suffix = "f32" if dtype == torch.complex64 else "f64"
    assert set(fake_cuda.names) == {"nufft_plan_points_kernel", "nufft_plan_weights_kernel",
                                    f"nufft_interp_kernel_{suffix}",
                                    f"nufft_spread_tile_kernel_{suffix}",
                                    f"nufft_spread_global_kernel_{suffix}"}
    assert_launches_match(fake_cuda.calls, sigs, x.device)


def test_radon_signatures_read_from_the_preprocessed_source():
    sigs = _preprocessed_signatures(RADON_CU)
    assert len(sigs) == 7
    assert sigs["radon_adj_fan_kernel_f32"] == ["ptr", "ptr", "ptr", "long long", "int", "int",
                                                "double", "double", "double", "int", "int", "ptr"]
    assert sigs["radon_fwd_kernel_f64"] == ["ptr", "ptr", "ptr", "long long", "int", "int",
                                            "int", "ptr"]


@needs_ext
def test_cuda_plan_equals_the_cpu_plan(fake_cuda, monkeypatch):
    """The CUDA plan (nufft_plan_*_kernel stand-ins, es_kernel.h's math, and the launcher's
    sort, offsets and subproblems) is the C++ plan for the same bins, exactly."""
    fake_cuda.standins.update(PLAN_STANDINS)
    monkeypatch.setattr(nufft_ops, "_CUDA_SUBPROBLEM", 7)
    k = torch.cat((_traj(500, seed=5), torch.tensor([[math.pi, -math.pi], [0.0, 0.0]])))
    plan = nufft_ops.plan_for(k, (20, 27), 1e-6, dtype=torch.complex128)
    assert plan.kind == "cuda"
    n0, n1 = plan.grid_size
    krc = k[:, [1, 0]].contiguous()
    cpu_plan = LF._nufft_plan(krc, n1, n0, plan.width, plan.beta, *plan.n_bins)
    # the subproblems cut each bin into runs of at most _CUDA_SUBPROBLEM sorted points
    assert_plan_equals(plan, cpu_plan, k.shape[0], 7)


UNIT_ROUNDOFF = {torch.complex64: 2.0 ** -24, torch.complex128: 2.0 ** -53}


def _count_terms(plan, cells: int) -> np.ndarray:
    """Per grid cell, how many points' stencils cover it (K in the bound)."""
    st, w = plan.start.numpy(), plan.width
    n_r, n_c = plan.grid_size[1], plan.grid_size[0]
    rows = (st[:, 0][:, None] + np.arange(w)) % n_r
    cols = (st[:, 1][:, None] + np.arange(w)) % n_c
    count = np.zeros(cells)
    np.add.at(count, (rows[:, :, None] * n_c + cols[:, None, :]).ravel(), 1)
    return count


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("smem", ["tile", "global"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cuda_spreading_and_interpolation_within_the_stated_bound(fake_cuda, monkeypatch, dtype,
                                                                   smem, seed):
    """docs/DESIGN.md, "Numerical contracts": per grid cell (spreading) or point
    (interpolation), |CUDA - CPU| <= 2 (K + 3) u sum|terms|, K the number of terms, u the
    unit roundoff, sum|terms| the same operation on |data| (the ES weights are >= 0)."""
    fake_cuda.standins.update(_standins(seed))
    if smem == "global":
        monkeypatch.setattr(nufft_ops, "_CUDA_SMEM", 0)
    g = torch.Generator().manual_seed(7 + seed)
    k = torch.cat((_traj(3000, seed=6), _traj(500, seed=8) * 0.05))  # a dense centre
    size, tol = (24, 30), (1e-4 if dtype == torch.complex64 else 1e-9)
    plan = nufft_ops.plan_for(k, size, tol, dtype=dtype)
    cpu = nufft_ops.CompiledPlan(k, size, tol, None, torch.device("cpu"), "cpu", dtype)
    assert plan.kind == "cuda" and plan.grid_size == cpu.grid_size and plan.width == cpu.width
    u = UNIT_ROUNDOFF[dtype]
    values = torch.randn(3, k.shape[0], dtype=dtype, generator=g)
    got, want = plan.spread(values), cpu.spread(values)
    size_abs = cpu.spread(values.abs().to(dtype)).real            # sum |terms| per cell
    count = torch.from_numpy(_count_terms(plan, got[0].numel())).reshape(got.shape[1:])
    bound = 2 * (count + 3) * u * size_abs
    assert torch.all((got - want).abs() <= bound), float(((got - want).abs() / bound).max())
    grid = torch.randn(3, *want.shape[1:], dtype=dtype, generator=g)
    got_i, want_i = plan.interp(grid), cpu.interp(grid)
    abs_i = cpu.interp(grid.abs().to(dtype)).real
    bound_i = 2 * (plan.width ** 2 + 3) * u * abs_i
    assert torch.all((got_i - want_i).abs() <= bound_i)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_cuda_transforms_agree_with_the_cpu_kernels(fake_cuda, dtype):
    """End to end (plan, FFTs, deapodisation): the CUDA path on its stand-ins agrees with
    the CPU kernels to 1e-5 (complex64) / 1e-12 (complex128) relative, and is an adjoint
    pair to the adjoint contract's tolerances."""
    fake_cuda.standins.update(_standins(3))
    k = _traj(2000, seed=9)
    size = (17, 22)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, *size, dtype=dtype, generator=g)
    y = torch.randn(2, k.shape[0], dtype=dtype, generator=g)
    cuda2, cuda1 = nufft_ops.nufft_type2(x, k, 1e-6), nufft_ops.nufft_type1(y, k, size, 1e-6)
    assert nufft_ops.plan_for(k, size, 1e-6, dtype=dtype).kind == "cuda"
    fake_cuda.calls.clear()
    fake_cuda.standins.clear()
    k_cpu = k.clone()
    cpu_plan = nufft_ops.CompiledPlan(k_cpu, size, 1e-6, None, torch.device("cpu"), "cpu", dtype)
    cpu2, cpu1 = nufft_ops._type2(cpu_plan, x), nufft_ops._type1(cpu_plan, y)
    assert fake_cuda.calls == []
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    assert rel_err(cuda2, cpu2) <= tol and rel_err(cuda1, cpu1) <= tol
    lhs = torch.vdot(cuda2.flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), cuda1.flatten())
    assert abs(lhs - rhs) / (cuda2.norm() * y.norm()) <= tol


# --- item 6: Radon numerics -------------------------------------------------------------------------

def _entries(ptx: str) -> dict[str, str]:
    """PTX text of each kernel entry (device functions are inlined into them)."""
    parts = re.split(r"(?m)^\.visible \.entry (\w+)\(", ptx)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _cmake_nvcc_flags() -> list[str]:
    text = open(os.path.join(ROOT, "CMakeLists.txt")).read()
    line = re.search(r"COMMAND \$\{NVCC\}([^\n]*)", text).group(1)
    return line.split()


def test_builds_keep_ieee_float32():
    """No flush to zero and no fast math anywhere: NVRTC's options say so explicitly (CuPy
    would append -ftz=true to options it compiles with), nvcc's are its IEEE defaults."""
    opts = _ext.NVRTC_OPTIONS
    assert "-ftz=false" in opts and "-prec-div=true" in opts and "-prec-sqrt=true" in opts
    for flags in (opts, _cmake_nvcc_flags()):
        assert not any(("fast" in f) or f.endswith("ftz=true") or "prec-div=false" in f
                       or "prec-sqrt=false" in f for f in flags), flags


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", [80, 90])
def test_radon_kernels_have_no_fma_and_no_ftz_nvcc(tmp_path, arch):
    """The Radon kernels as CMake's nvcc compiles them (its -O3 -std=c++17, default
    -fmad=true): joseph.h's math is unfused on the device, so no FMA is left, and no
    instruction flushes subnormals."""
    out = tmp_path / "radon.ptx"
    subprocess.run(["nvcc", "-ptx", "-O3", "-std=c++17", f"-arch=sm_{arch}", f"-I{CSRC}",
                    "-o", str(out), RADON_CU], check=True, capture_output=True, timeout=600)
    ptx = out.read_text()
    entries = _entries(ptx)
    assert len(entries) == 7
    for name, body in entries.items():
        assert "fma.rn" not in body, name
    assert ".ftz" not in ptx


@pytest.mark.skipif(nvrtc() is None, reason="no NVRTC library (PyPI nvidia-cuda-nvrtc)")
def test_nvrtc_compiles_the_full_unit_ieee():
    """What _ext.nvrtc_binary compiles on a device: the full unit (includes inlined, no -I
    needed) with NVRTC_OPTIONS; its PTX has no .ftz (with -ftz=true, CuPy's default, it
    would), the Radon kernels no FMA, and NVRTC emits a cubin for sm_90."""
    code = _ext.cuda_source_text().encode()
    assert b"#include \"" not in code
    ptx = nvrtc_compile(code, [*_ext.NVRTC_OPTIONS, "--gpu-architecture=compute_90"],
                        b"luser_fast_all.cu").decode()
    entries = _entries(ptx)
    want = set().union(*(_preprocessed_signatures(path) for path in glob.glob(
        os.path.join(CSRC, "**", "*.cu"), recursive=True)))
    assert set(entries) == want and len(want) >= 19 and ".ftz" not in ptx
    for name, body in entries.items():
        if name.startswith("radon_"):
            assert "fma.rn" not in body, name
        if name.startswith("conebeam_"):      # only the ray direction's norm (conebeam.h)
            assert body.count("fma.rn") == 2, name
    flushed = nvrtc_compile(code, ["-std=c++17", "-ftz=true", "--gpu-architecture=compute_90"],
                            b"luser_fast_all.cu")
    assert b".ftz" in flushed
    cubin = nvrtc_compile(code, [*_ext.NVRTC_OPTIONS, "--gpu-architecture=sm_90"],
                          b"luser_fast_all.cu", cubin=True)
    assert cubin[:4] == b"\x7fELF"


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("src", [None, 130.0])
def test_radon_gather_twins_agree_with_the_cpu_kernels(dtype, src):
    """What the CUDA kernels compute (the gather twins, operation for operation) against
    the CPU fast kernels, also with every angle moved by 2 ulp (the device's cos/sin may
    differ from the CPU's by an ulp or two): within the stated 1e-6 / 1e-13 relative."""
    n, a = 64, 60
    g = torch.Generator().manual_seed(12)
    x = torch.rand(5, n, n, generator=g, dtype=torch.float64).to(dtype)
    angles = torch.arange(a, dtype=torch.float64) * math.pi / a
    moved = torch.nextafter(torch.nextafter(angles, angles + 1), angles + 1)
    d = math.ceil(math.sqrt(2) * n)
    y = torch.rand(5, a, d, generator=g, dtype=torch.float64).to(dtype)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    fast_f = LF.radon_forward(x, angles, d, 1.0, src, None)
    fast_a = LF.radon_adjoint(y, angles, n, n, 1.0, src, None)
    for ang in (angles, moved):
        assert rel_err(LF._radon_forward_gather(x, ang, d, 1.0, src, None), fast_f) <= tol
        assert rel_err(LF._radon_adjoint_gather(y, ang, n, n, 1.0, src, None), fast_a) <= tol


# --- item 7: loading and caching ---------------------------------------------------------------------

class FakeCupy(types.ModuleType):
    """Just enough of CuPy for luser_fast's loading path: modules from files, kernels per
    module, devices as contexts, external streams; counts what is created."""

    def __init__(self, devices=2, cc="90"):
        super().__init__("cupy")
        self.__version__ = "99.0-fake"
        self.modules, self.lookups, self.launches, self.entered = [], [], [], []
        fake = self

        class Kernel:
            def __init__(self, module, name):
                self.module, self.name = module, name

            def __call__(self, grid, block, args, shared_mem=0):
                fake.launches.append((self.name, self.module.device, grid, block, args,
                                      shared_mem))

        class RawModule:
            def __init__(self, path=None, code=None, options=()):
                assert code is None, "luser_fast compiles with its own NVRTC call"
                self.path, self.device = path, fake.current
                fake.modules.append(self)

            def get_function(self, name):
                fake.lookups.append((name, self.device, self.path))
                if getattr(fake, "fail_fatbin", False) and self.path.endswith(".fatbin"):
                    raise RuntimeError("CUDA_ERROR_NO_BINARY_FOR_GPU")
                return Kernel(self, name)

        class Device:
            def __init__(self, index=None):
                self.id = fake.current if index is None else index
                self.compute_capability = cc

            def __enter__(self):
                fake.stack.append(fake.current)
                fake.current = self.id
                fake.entered.append(self.id)
                return self

            def __exit__(self, *exc):
                fake.current = fake.stack.pop()

        class ExternalStream:
            def __init__(self, ptr):
                self.ptr = ptr

            def __enter__(self):
                fake.streams.append((self.ptr, fake.current))
                return self

            def __exit__(self, *exc):
                return False

        self.current, self.stack, self.streams = 0, [], []
        self.RawModule = RawModule
        self.cuda = types.SimpleNamespace(
            Device=Device, ExternalStream=ExternalStream,
            runtime=types.SimpleNamespace(getDeviceCount=lambda: devices,
                                          getDevice=lambda: fake.current))


@pytest.fixture
def cuda_tree(tmp_path, monkeypatch):
    """A package layout in tmp_path: csrc/ (a copy of the real one), a fatbin and its
    manifest, an NVRTC cache dir; _ext points at it, with its caches cleared before and
    after."""
    csrc = tmp_path / "csrc"
    shutil.copytree(CSRC, csrc, ignore=shutil.ignore_patterns("*.cpp", "*.md"))
    (tmp_path / "setup.py").write_text("# a checkout\n")
    fatbin = tmp_path / "pkg" / "_cuda" / "luser_fast.fatbin"
    fatbin.parent.mkdir(parents=True)
    fatbin.write_bytes(b"\x50\xed\x55\xba fake fatbin")
    (tmp_path / "pkg" / "_cuda" / "luser_fast.fatbin.sources").write_text(
        _ext.source_manifest(str(csrc)))
    monkeypatch.setattr(_ext, "FATBIN", str(fatbin))
    monkeypatch.setattr(_ext, "FATBIN_SOURCES", str(fatbin) + ".sources")
    monkeypatch.setattr(_ext, "CHECKOUT_CSRC", str(csrc))
    monkeypatch.setattr(_ext, "CUDA_SRC_DIR", str(tmp_path / "pkg" / "_cuda" / "src"))
    monkeypatch.setenv("LUSER_FAST_CACHE_DIR", str(tmp_path / "cache"))
    compiled = []

    def fake_compile(source, options, arch):
        compiled.append((hashlib.sha256(source.encode()).hexdigest(), tuple(options), arch))
        return b"\x7fELF fake cubin", ".cubin"

    monkeypatch.setattr(_ext, "nvrtc_compile", fake_compile)
    monkeypatch.setattr(_ext, "nvrtc_version", lambda: (12, 9))
    _ext.clear_cuda_caches()
    yield types.SimpleNamespace(root=tmp_path, csrc=csrc, fatbin=fatbin, compiled=compiled)
    _ext.clear_cuda_caches()


@pytest.fixture
def fake_cupy(monkeypatch):
    cupy = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(cuda_stream=1000 + int(device)))
    _ext.clear_cuda_caches()
    yield cupy
    _ext.clear_cuda_caches()


def test_kernels_are_made_once_per_name_and_device(cuda_tree, fake_cupy):
    assert cuda_common.cuda_available() and cuda_common.cuda_unavailable_reason() is None
    k1 = _ext.cuda_kernel("radon_rays_kernel", 0)
    assert _ext.cuda_kernel("radon_rays_kernel", 0) is k1
    k2 = _ext.cuda_kernel("radon_fwd_kernel_f32", 0)
    assert k2 is not k1 and len(fake_cupy.modules) == 1
    assert _ext.cuda_module_origin(0) == "fatbin"
    _ext.cuda_kernel("radon_rays_kernel", 1)
    assert len(fake_cupy.modules) == 2 and fake_cupy.modules[1].device == 1
    # one lookup per (name, device), plus the probe that loads each device's module
    assert len(fake_cupy.lookups) == 2 + 3
    for _ in range(5):
        cuda_common.launch("radon_rays_kernel", torch.device("cuda", 1), (3, 1), (1, 2))
    assert len(fake_cupy.modules) == 2 and len(fake_cupy.lookups) == 5


def test_launch_runs_on_the_tensors_device_and_stream(cuda_tree, fake_cupy):
    """A tensor on cuda:1 while cuda:0 is current: the kernel of device 1's module, launched
    with device 1 current for CuPy, on torch's current stream of device 1."""
    cuda_common.launch("radon_rays_kernel", torch.device("cuda", 1), (2, 3), (7,), 64)
    name, device, grid, block, args, smem = fake_cupy.launches[-1]
    assert (name, device, grid, block, args, smem) == ("radon_rays_kernel", 1, (2, 3),
                                                       (cuda_common.THREADS,), (7,), 64)
    assert fake_cupy.streams[-1] == (1001, 1) and fake_cupy.current == 0
    # "cuda" without an index is the current device
    cuda_common.launch("radon_rays_kernel", torch.device("cuda"), (1, 1), ())
    assert fake_cupy.launches[-1][1] == 0 and fake_cupy.streams[-1] == (1000, 0)
    with pytest.raises(ValueError, match="launch grid"):
        cuda_common.launch("radon_rays_kernel", torch.device("cuda", 0), (1, 65536), ())


def test_a_fatbin_built_from_other_sources_is_not_used(cuda_tree, fake_cupy):
    assert _ext.fatbin_status()["current"] is True
    header = cuda_tree.csrc / "radon" / "joseph.h"
    header.write_text(header.read_text() + "\n// edited after the build\n")
    status = _ext.fatbin_status()
    assert status["current"] is False and "radon/joseph.h" in status["reason"]
    with pytest.warns(RuntimeWarning, match="built from other CUDA sources.*joseph.h"):
        _ext.cuda_kernel("radon_rays_kernel", 0)
    assert _ext.cuda_module_origin(0).startswith("nvrtc: ")
    assert [m.path for m in fake_cupy.modules] == [_ext.cuda_module_origin(0)[7:]]
    assert len(cuda_tree.compiled) == 1
    info = _ext.build_info()
    assert info["cuda_fatbin_current"] is False and "joseph.h" in info["cuda_fatbin_stale_reason"]
    # a fatbin with no manifest is not trusted either
    _ext.clear_cuda_caches()
    header.write_text(header.read_text().replace("\n// edited after the build\n", ""))
    assert _ext.fatbin_status()["current"] is True
    os.remove(_ext.FATBIN_SOURCES)
    assert _ext.fatbin_status()["current"] is False
    with pytest.warns(RuntimeWarning, match="no manifest"):
        _ext.cuda_kernel("radon_rays_kernel", 0)


def test_a_fatbin_without_code_for_the_device_falls_back_to_nvrtc(cuda_tree, fake_cupy):
    fake_cupy.fail_fatbin = True
    _ext.cuda_kernel("nufft_interp_kernel_f32", 0)
    assert _ext.cuda_module_origin(0).startswith("nvrtc: ")
    assert cuda_tree.compiled[0][2] == 90  # the device's compute capability


def test_nvrtc_cache_is_keyed_on_the_full_source_options_and_arch(cuda_tree, fake_cupy,
                                                                   monkeypatch):
    os.remove(_ext.FATBIN)
    _ext.cuda_kernel("radon_rays_kernel", 0)
    first = _ext.cuda_module_origin(0)
    assert len(cuda_tree.compiled) == 1 and os.path.exists(first[7:])
    assert cuda_tree.compiled[0][1] == _ext.NVRTC_OPTIONS
    # a new process (caches cleared) with the same sources: the disk cache serves
    _ext.clear_cuda_caches()
    _ext.cuda_kernel("radon_rays_kernel", 0)
    assert len(cuda_tree.compiled) == 1 and _ext.cuda_module_origin(0) == first
    # a header's text is part of the key, though all.cu's include lines do not change
    consts = cuda_tree.csrc / "common" / "constants.h"
    consts.write_text(consts.read_text() + "\n/* upgraded */\n")
    assert "/* upgraded */" in _ext.cuda_source_text()
    _ext.clear_cuda_caches()
    _ext.cuda_kernel("radon_rays_kernel", 0)
    assert len(cuda_tree.compiled) == 2 and _ext.cuda_module_origin(0) != first
    # so are the options, the architecture and the NVRTC version
    keys = {_ext.nvrtc_cache_key("s", _ext.NVRTC_OPTIONS, 90, (12, 9)),
            _ext.nvrtc_cache_key("s", _ext.NVRTC_OPTIONS + ("-G",), 90, (12, 9)),
            _ext.nvrtc_cache_key("s", _ext.NVRTC_OPTIONS, 80, (12, 9)),
            _ext.nvrtc_cache_key("s", _ext.NVRTC_OPTIONS, 90, (12, 8)),
            _ext.nvrtc_cache_key("t", _ext.NVRTC_OPTIONS, 90, (12, 9))}
    assert len(keys) == 5
    assert not [p for p in os.listdir(_ext.cache_dir()) if p.endswith(".tmp")]


def test_cuda_source_text_inlines_every_include_once():
    text = _ext.cuda_source_text(CSRC)
    assert '#include "' not in text
    assert text.count("#define LUSER_FAST_COMMON_DEVICE_H") == 1
    for name in ("radon_adj_fan_kernel_f32", "nufft_spread_tile_kernel_", "struct JosephRay"):
        assert name in text
    assert '#line 1 "radon/joseph.h"' in text and '#line 1 "common/constants.h"' in text


class _BrokenCupyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "cupy":
            return importlib.machinery.ModuleSpec("cupy", self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError("libnvrtc.so.12: cannot open shared object file: No such file")


def test_a_cupy_that_fails_to_import_is_reported_not_blamed_on_installation(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenCupyFinder(), *sys.meta_path])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _ext.clear_cuda_caches()
    try:
        assert not cuda_common.cuda_available()
        reason = cuda_common.cuda_unavailable_reason()
        assert "installed but failed to import" in reason and "libnvrtc.so.12" in reason
        with pytest.raises(RuntimeError, match="failed to import.*libnvrtc") as err:
            _ext.cuda_kernel("radon_rays_kernel", 0)
        assert "pip install" not in str(err.value)
        assert "libnvrtc.so.12" in _ext.build_info()["cupy_reason"]
        # the ops fall back to the reference, saying why
        monkeypatch.setattr(radon_ops, "cuda_available", cuda_common.cuda_available)
        with pytest.warns(RuntimeWarning, match="libnvrtc"):
            out = radon_ops._forward_cuda(torch.ones(1, 4, 4), ANGLES, 7, 1.0, None, None)
        assert out.shape == (1, 3, 7)
    finally:
        _ext.clear_cuda_caches()


def test_no_device_for_cupy_is_a_reason(fake_cupy, cuda_tree):
    fake_cupy.cuda.runtime.getDeviceCount = lambda: 0
    _ext.clear_cuda_caches()
    assert not cuda_common.cuda_available()
    assert "sees no CUDA device" in cuda_common.cuda_unavailable_reason()


def test_info_reports_cupy_and_the_fatbin():
    r = subprocess.run([sys.executable, "-m", "luser_fast.cli", "info", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in ("cupy", "cupy_reason", "cuda_fatbin_current", "cuda_fatbin_stale_reason",
                "cuda_sources"):
        assert key in info
    assert (info["cupy"] is None) == (info["cupy_reason"] is not None)


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("nvcc") is None,
                    reason="cmake or nvcc is not installed (CMakeLists.txt needs both)")
def test_cmake_writes_the_manifest_python_checks(tmp_path):
    """CMakeLists.txt's manifest script (run with the fatbin) and _ext.source_manifest agree
    byte for byte, so a fresh build's fatbin reads as current."""
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", ROOT, "-B", str(build)], check=True, capture_output=True,
                   timeout=300)
    out = tmp_path / "manifest"
    subprocess.run(["cmake", f"-DCSRC={CSRC}", f"-DOUT={out}", "-P",
                    str(build / "luser_fast_source_manifest.cmake")], check=True,
                   capture_output=True, timeout=120)
    assert out.read_text() == _ext.source_manifest(CSRC)
    assert "radon/radon.cu " in out.read_text() and "nufft/es_kernel.h " in out.read_text()
