"""Tests of the compiled 3-D NUFFT: the C++ ops (``_nufft3_plan``, ``_nufft3_spread_out``,
``_nufft3_interp``, csrc/nufft/spread3.cpp) against the reference gridding and the exact
NUDFT, the compiled pipeline behind ``nufft_type2`` / ``nufft_type1`` with a 3-column
ktraj, determinism across thread counts, bad raw arguments, and the CUDA path on the host
(csrc/nufft/spread3.cu compiled by nvcc / NVRTC where present; the launchers driven with
NumPy stand-ins of the kernels, as tests/test_cuda_host.py does in 2-D).

The compiled kernels evaluate the reference's ES kernel in float64, so against the
reference gridding they agree to rounding (1e-5 relative in complex64, 1e-12 in
complex128); against the exact NUDFT to tol.
"""
from __future__ import annotations

import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import (ADJOINT_TOL, CSRC, adjoint_mismatch, assert_compiles_with_nvrtc,
                     assert_compiles_without_spills, assert_launches_match, assert_plan_equals,
                     count_plans, nufft_cuda_kernels, nvrtc, randn_like_dtype, rel_err, view_at)
from test_cuda_host import Recorder, _preprocessed_signatures

from luser_fast import backends
from luser_fast.core.operator import LinearFunction
from luser_fast.ops import cuda_common
from luser_fast.ops import nufft as nufft_ops
from luser_fast.ops import nufft_type1, nufft_type2
from luser_fast.reference.nufft import NufftPlan, nudft_type1, nudft_type2

pytestmark = pytest.mark.usefixtures("one_thread")

LF = torch.ops.luser_fast
SPREAD3_CU = os.path.join(CSRC, "nufft", "spread3.cu")
HAS_EXT3 = nufft_ops.HAS_CPU_KERNELS_3D
needs_ext = pytest.mark.skipif(not HAS_EXT3, reason="the C++ extension lacks _nufft3_plan "
                                                    "(not built, or built before the 3-D ops)")
SAME_AS_REF = {torch.complex64: 1e-5, torch.complex128: 1e-12}
REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def random_traj(m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(m, 3, generator=g, dtype=torch.float64) - 1) * math.pi


#: points on the [-pi, pi] boundary (every axis), and one at the origin
EDGES = torch.tensor([[math.pi, -math.pi, math.pi], [-math.pi, 0.0, -math.pi],
                      [0.0, math.pi, 0.0], [0.0, 0.0, 0.0], [-math.pi, -math.pi, -math.pi]],
                     dtype=torch.float64)


def stack_of_stars(spokes: int, samples: int, planes: int) -> torch.Tensor:
    """Radial spokes in (ky, kx) on ``planes`` kz planes: a structured, dense trajectory."""
    angles = torch.arange(spokes, dtype=torch.float64) * (math.pi * (math.sqrt(5) - 1) / 2)
    radius = torch.linspace(-math.pi, math.pi, samples, dtype=torch.float64)
    kz = torch.linspace(-math.pi, math.pi, planes, dtype=torch.float64)
    ky = (radius[None] * torch.sin(angles[:, None])).reshape(-1)
    kx = (radius[None] * torch.cos(angles[:, None])).reshape(-1)
    return torch.stack([kz[:, None].expand(-1, ky.numel()), ky[None].expand(planes, -1),
                        kx[None].expand(planes, -1)], dim=-1).reshape(-1, 3)


# --- the raw C++ ops ----------------------------------------------------------------------

def _raw_plan(k, size, tol, oversamp, dtype=torch.complex128, preferred=8):
    """The reference plan and the C++ plan of the same kernel and grid (bins of about
    ``preferred`` cells: several per axis even on small grids)."""
    ref = NufftPlan(k, size, tol, oversamp, dtype)
    nb = tuple(nufft_ops._bin_count(n, ref.width, preferred) for n in ref.grid_size)
    plan = LF._nufft3_plan(k, *ref.grid_size, ref.width, ref.beta, *nb)
    return ref, nb, plan


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("tol, oversamp", [(1e-2, 2.0), (1e-6, 2.0), (1e-4, 1.25), (1e-12, 1.25)])
def test_raw_ops_match_reference_at_every_instruction_set(dtype, tol, oversamp):
    """Plan (sorted permutation, wrapped starts, float64 weights), spreading and
    interpolation at every SIMD level against the reference plan: widths 3 .. 18, batches
    of 1, several and more planes than one task takes, odd non-cubic grids, points on the
    boundary."""
    g = torch.Generator().manual_seed(1)
    k = torch.cat((random_traj(400, 2), EDGES))
    ref, nb, (order, start, weights, offsets) = _raw_plan(k, (7, 10, 9), tol, oversamp, dtype)
    n = ref.grid_size
    assert torch.equal(torch.sort(order).values, torch.arange(k.shape[0]))
    assert torch.equal(start.long(), ref.start[order] % torch.tensor(n))
    assert rel_err(weights, ref.weights[order]) < 1e-14
    assert offsets[0] == 0 and offsets[-1] == k.shape[0] and offsets.numel() == math.prod(nb) + 1
    w = weights.to(REAL[dtype])
    # 70 planes (28 for the widest kernel) are more than one spreading task holds
    for batch in (1, 3, 70 if ref.width <= 10 else 30):
        vals = randn_like_dtype((batch, k.shape[0]), dtype, g)
        grid = randn_like_dtype((batch, *n), dtype, g)
        want_grid, want_vals = ref.spread(vals), ref.interp(grid)
        out = torch.empty(batch, *n, dtype=dtype)
        for simd in range(LF._nufft_simd_level() + 1):
            LF._nufft3_spread_out(vals, order, start, w, offsets, *n, *nb, simd, out)
            assert rel_err(out, want_grid) <= SAME_AS_REF[dtype], (batch, simd)
            got = LF._nufft3_interp(grid, order, start, w, simd)
            assert rel_err(got, want_vals) <= SAME_AS_REF[dtype], (batch, simd)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_sparse_points_interpolate_straight_from_the_grid(dtype):
    """A few points on a large grid: their box would be larger than their stencils, so
    the interpolation reads the grid directly (the path dense trajectories never take),
    including stencils that wrap around every axis."""
    g = torch.Generator().manual_seed(3)
    k = torch.cat((random_traj(40, 4), EDGES))
    ref, nb, (order, start, weights, offsets) = _raw_plan(k, (30, 26, 34), 1e-6, 2.0, dtype,
                                                          preferred=16)
    grid = randn_like_dtype((3, *ref.grid_size), dtype, g)
    for simd in range(LF._nufft_simd_level() + 1):
        got = LF._nufft3_interp(grid, order, start, weights.to(REAL[dtype]), simd)
        assert rel_err(got, ref.interp(grid)) <= SAME_AS_REF[dtype]
    # a non-contiguous grid is read as its contiguous copy
    t = grid.transpose(1, 3).contiguous().transpose(1, 3)
    got = LF._nufft3_interp(t, order, start, weights.to(REAL[dtype]))
    assert torch.equal(got, LF._nufft3_interp(grid, order, start, weights.to(REAL[dtype])))


@needs_ext
def test_plan_orders_points_by_bin_then_tile():
    """Within a bin the points follow the NUFFT3_SORT_TILE^3 cell tiles of their stencil
    starts, counted from the bin's first cell (input order within a tile): the key the
    CUDA plan sorts by reproduces the C++ order exactly."""
    k = torch.cat((random_traj(3000, 5), stack_of_stars(5, 16, 4), EDGES))
    ref = NufftPlan(k, (12, 16, 14), 1e-4, 2.0)
    nb = tuple(nufft_ops._bin_count(n, ref.width, 8) for n in ref.grid_size)
    order, start, _, offsets = LF._nufft3_plan(k, *ref.grid_size, ref.width, ref.beta, *nb)
    s_in = torch.empty_like(start)
    s_in[order] = start
    bins = torch.zeros(k.shape[0], dtype=torch.int64)
    for d, (n, b) in enumerate(zip(ref.grid_size, nb)):
        bins = bins * b + ((s_in[:, d].long() + 1) * b - 1) // n
    key = nufft_ops._sort_key_3d(bins, s_in, ref.grid_size, nb)
    assert torch.equal(torch.sort(key, stable=True).indices, order)
    counts = torch.bincount(bins, minlength=math.prod(nb))
    assert torch.equal(offsets[1:] - offsets[:-1], counts)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_deterministic_across_thread_counts(dtype):
    """Spreading adds the bins of one parity class in parallel and the classes in turn, so
    each cell gets its terms in the same order whatever the thread count: bitwise equal
    results with 1 and 2 threads (and for the whole transforms)."""
    g = torch.Generator().manual_seed(6)
    k = torch.cat((random_traj(3000, 7), stack_of_stars(9, 20, 5)))
    size = (14, 15, 16)
    x = randn_like_dtype((5, *size), dtype, g)
    y = randn_like_dtype((5, k.shape[0]), dtype, g)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        plan = nufft_ops.CompiledPlan(k, size, 1e-6, 2.0, torch.device("cpu"), "cpu", dtype)
        results.append((plan.spread(y), nufft_ops._type1(plan, y), nufft_ops._type2(plan, x)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_ext
def test_raw_ops_reject_bad_input_without_crashing():
    """The private ops called with malformed arguments: TORCH_CHECK raises, the C++ never
    reads or writes out of bounds."""
    k = random_traj(30, 8)
    ref, nb, (o, s, w64, off) = _raw_plan(k, (8, 8, 8), 1e-4, 2.0)
    n = ref.grid_size
    w = w64.float()
    v = torch.zeros(2, 30, dtype=torch.complex64)
    g = torch.zeros(2, *n, dtype=torch.complex64)
    out = torch.empty(2, *n, dtype=torch.complex64)
    bad_start = s.clone()
    bad_start[3, 2] = n[2]
    bad_order = o.clone()
    bad_order[0] = 30
    shifted = s.clone()
    shifted[:, 1] = (s[:, 1] + n[1] // 2) % n[1]
    huge = 2 ** 27
    big_n = (2 ** 14, 2 ** 14, 2 ** 12)
    big = LF._nufft3_plan(k, *big_n, ref.width, ref.beta, 2, 2, 2)

    def spread(*args, out=out, **kw):
        base = dict(values=v, order=o, start=s, weights=w, bin_offsets=off, n=n, nb=nb, simd=-1)
        base.update(kw)
        return LF._nufft3_spread_out(base["values"], base["order"], base["start"],
                                     base["weights"], base["bin_offsets"], *base["n"],
                                     *base["nb"], base["simd"], out)

    cases = [
        (lambda: spread(start=bad_start), "out of range"),
        (lambda: LF._nufft3_interp(g, bad_order, s, w), "out of range"),
        (lambda: spread(start=shifted), "outside its bin"),
        (lambda: spread(weights=w64), "weights must be"),
        (lambda: spread(weights=w[:, :2]), "weights must be"),
        (lambda: spread(start=s[:, :2].contiguous()), "start must be"),
        (lambda: spread(start=s.long()), "start must be"),
        (lambda: spread(values=v[:, :29]), "order must be"),
        (lambda: spread(bin_offsets=off[:-1]), "bin_offsets"),
        (lambda: spread(bin_offsets=off.flip(0).contiguous()), "bin_offsets"),
        (lambda: spread(nb=(nb[0] + 1, nb[1], nb[2])), "nb0"),
        (lambda: spread(nb=(nb[0], nb[1], 2 * n[1])), "nb2"),
        (lambda: spread(n=(n[0], 4, n[2])), "grid size"),
        (lambda: spread(values=v.real), "complex64 or complex128"),
        (lambda: spread(values=v[0]), "values must have shape"),
        (lambda: spread(simd=7), "simd"),
        (lambda: spread(out=out[:1]), "out must be"),
        (lambda: spread(out=out.to(torch.complex128)), "out must be"),
        (lambda: spread(out=out.transpose(1, 3)), "out must be"),
        (lambda: LF._nufft3_interp(g[:, :, :, :4], o, s, w), "grid size"),
        (lambda: LF._nufft3_interp(g[0], o, s, w), "grid must have shape"),
        (lambda: LF._nufft3_interp(g.real, o, s, w), "complex64 or complex128"),
        (lambda: LF._nufft3_interp(g, o, s, w, -2), "simd"),
        (lambda: LF._nufft3_interp(g, o[None], s, w), "order must be 1-D"),
        (lambda: LF._nufft3_plan(k * 9, *n, ref.width, ref.beta, *nb), "finite radians"),
        (lambda: LF._nufft3_plan(torch.where(k > 1, math.nan, k), *n, ref.width, ref.beta, *nb),
         "finite radians"),
        (lambda: LF._nufft3_plan(k.float(), *n, ref.width, ref.beta, *nb), "float64"),
        (lambda: LF._nufft3_plan(k[:, :2].contiguous(), *n, ref.width, ref.beta, *nb),
         "shape \\[M, 3\\]"),
        (lambda: LF._nufft3_plan(k, *n, 64, ref.beta, *nb), "kernel width"),
        (lambda: LF._nufft3_plan(k, *n, 1, ref.beta, *nb), "kernel width"),
        (lambda: LF._nufft3_plan(k, *n, ref.width, math.nan, *nb), "beta"),
        (lambda: LF._nufft3_plan(k, *n, ref.width, -1.0, *nb), "beta"),
        (lambda: LF._nufft3_plan(k, *n, ref.width, ref.beta, 3, nb[1], nb[2]), "nb0"),
        (lambda: LF._nufft3_plan(k, *n, ref.width, ref.beta, nb[0], 0, nb[2]), "nb1"),
        (lambda: LF._nufft3_plan(k, n[0], n[1], 2 ** 29, ref.width, ref.beta, *nb), "grid size"),
        # sides within the limit whose product is not: refused before any allocation
        (lambda: LF._nufft3_plan(k, huge, huge, huge, ref.width, ref.beta, 2, 2, 2),
         "more than"),
        # bins too large for a task's sub-grid: refused before anything is allocated
        (lambda: LF._nufft3_spread_out(v, *big[:2], big[2].float(), big[3], *big_n, 2, 2, 2, -1,
                                       out), "bins too large"),
    ]
    for call, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call()


# --- the compiled transforms ------------------------------------------------------------------

ACCURACY = [(1e-2, torch.complex64, None), (1e-4, torch.complex64, None),
            (1e-3, torch.complex128, 2.0), (1e-6, torch.complex128, None),
            (1e-9, torch.complex128, 1.25)]


@needs_ext
@pytest.mark.parametrize("tol, dtype, oversamp", ACCURACY)
@pytest.mark.parametrize("size", [(8, 8, 8), (5, 9, 7), (1, 6, 4)])
def test_matches_exact_nudft(tol, dtype, oversamp, size):
    """Random points (with the boundary and the origin) and a stack of stars, a batch of
    coils: within tol of the exact sums, served by the compiled path."""
    g = torch.Generator().manual_seed(10)
    k = torch.cat((random_traj(300, 11), stack_of_stars(3, 10, 3), EDGES))
    x = randn_like_dtype((2, 3, *size), dtype, g)
    y = randn_like_dtype((2, 3, k.shape[0]), dtype, g)
    assert nufft_ops.plan_for(k, size, tol, oversamp, dtype=dtype).kind == "cpu"
    got2, got1 = nufft_type2(x, k, tol, oversamp), nufft_type1(y, k, size, tol, oversamp)
    assert got2.shape == (2, 3, k.shape[0]) and got1.shape == (2, 3, *size)
    assert rel_err(got2, nudft_type2(x, k)) <= tol
    assert rel_err(got1, nudft_type1(y, k, size)) <= tol


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("tol, oversamp", [(1e-3, 2.0), (1e-6, 2.0), (1e-5, 1.25)])
def test_matches_reference_gridding(dtype, tol, oversamp):
    """Same kernel and grid as the reference: equal to rounding, for the ops called raw
    (torch.ops.luser_fast.nufft3_*) and through the public functions, with a batch larger
    than one spreading task holds (the planes split into chunks)."""
    g = torch.Generator().manual_seed(12)
    k = torch.cat((random_traj(500, 13), EDGES))
    size = (9, 6, 11)
    x = randn_like_dtype((3, 23, *size), dtype, g)
    y = randn_like_dtype((3, 23, k.shape[0]), dtype, g)
    plan = NufftPlan(k, size, tol, oversamp, dtype)
    assert rel_err(LF.nufft3_type2(x, k, tol, oversamp), plan.type2(x)) <= SAME_AS_REF[dtype]
    assert rel_err(LF.nufft3_type1(y, k, size, tol, oversamp), plan.type1(y)) <= SAME_AS_REF[dtype]
    assert rel_err(nufft_type2(x[0, :2], k, tol, oversamp), plan.type2(x[0, :2])) \
        <= SAME_AS_REF[dtype]


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("size", [(8, 8, 8), (7, 10, 5), (1, 1, 9)])
def test_adjoint_dot_product(dtype, size):
    g = torch.Generator().manual_seed(14)
    k = torch.cat((random_traj(400, 15), EDGES))
    op = LinearFunction(lambda x: nufft_type2(x, k, 1e-4), lambda y: nufft_type1(y, k, size, 1e-4))
    x = randn_like_dtype((3, *size), dtype, g)
    y = randn_like_dtype((3, k.shape[0]), dtype, g)
    assert adjoint_mismatch(op, x, y) <= ADJOINT_TOL[REAL[dtype]]


@needs_ext
def test_empty_batches_and_trajectories():
    k = random_traj(50, 16)
    for lead in [(0,), (2, 0)]:
        x = torch.zeros(*lead, 6, 5, 4, dtype=torch.complex64)
        y = torch.zeros(*lead, 50, dtype=torch.complex64)
        assert nufft_type2(x, k).shape == (*lead, 50)
        assert nufft_type1(y, k, (6, 5, 4)).shape == (*lead, 6, 5, 4)
    k0 = torch.zeros(0, 3, dtype=torch.float64)
    x = randn_like_dtype((2, 6, 5, 4), torch.complex128, torch.Generator().manual_seed(17))
    assert nufft_type2(x, k0).shape == (2, 0)
    assert torch.equal(nufft_type1(torch.zeros(2, 0, dtype=torch.complex128), k0, (6, 5, 4)),
                       torch.zeros(2, 6, 5, 4, dtype=torch.complex128))
    plan = nufft_ops.plan_for(k0, (6, 5, 4), 1e-6)
    assert plan.spread(torch.zeros(3, 0, dtype=torch.complex64)).abs().sum() == 0


@needs_ext
def test_strided_inputs_and_workspace_reuse():
    """Non-contiguous inputs give the contiguous inputs' results, and alternating type 2 /
    type 1 calls (which share the plan's grid buffer: type 1 overwrites it, type 2 needs
    its zero padding) give the results of fresh calls."""
    g = torch.Generator().manual_seed(18)
    k = random_traj(200, 19)
    size = (6, 7, 5)
    x = randn_like_dtype((2, *size), torch.complex64, g)
    y = randn_like_dtype((2, 200), torch.complex64, g)
    want2, want1 = nufft_type2(x, k), nufft_type1(y, k, size)
    for _ in range(2):
        assert torch.equal(nufft_type1(y, k, size), want1)
        assert torch.equal(nufft_type2(x, k), want2)
    xt = x.transpose(-1, -3).contiguous().transpose(-1, -3)
    assert torch.equal(nufft_type2(xt, k), want2)
    ys = torch.repeat_interleave(y, 2, dim=-1)[..., ::2]
    assert torch.equal(nufft_type1(ys, k, size), want1)
    kt = k.T.contiguous().T
    assert torch.equal(nufft_type2(x, kt), want2)


@needs_ext
def test_type2_and_type1_sharing_one_grid_buffer(monkeypatch):
    """Where two grids do not fit the scratch budget, type 2 takes type 1's grid buffer,
    re-zeroed after type 1 overwrote it: alternating calls give fresh calls' results."""
    g = torch.Generator().manual_seed(37)
    k = random_traj(150, 38)
    size = (5, 6, 7)
    x = randn_like_dtype((2, *size), torch.complex128, g)
    y = randn_like_dtype((2, 150), torch.complex128, g)
    want2, want1 = NufftPlan(k, size).type2(x), NufftPlan(k, size).type1(y)
    plan = nufft_ops.plan_for(k, size, 1e-6, dtype=torch.complex128)
    grid_bytes = 2 * math.prod(plan.grid_size) * 16
    monkeypatch.setattr(nufft_ops, "_SCRATCH_BYTES", int(1.5 * grid_bytes))
    for _ in range(2):
        assert rel_err(nufft_type1(y, k, size), want1) < 1e-12
        assert rel_err(nufft_type2(x, k), want2) < 1e-12
    assert set(plan._scratch[1]) == {"grid3"}


@needs_ext
def test_plan_is_cached_and_shared_by_the_gradients(monkeypatch):
    built = count_plans(monkeypatch, nufft_ops.CompiledPlan)
    g = torch.Generator().manual_seed(20)
    k = random_traj(80, 21)
    x = randn_like_dtype((2, 5, 6, 4), torch.complex128, g).requires_grad_()
    y = nufft_type2(x, k, 1e-6)
    (gx,) = torch.autograd.grad(y.abs().pow(2).sum(), x)
    nufft_type1(y.detach(), k, (5, 6, 4), 1e-6)
    assert len(built) == 1
    xd = x.detach().requires_grad_()
    (want,) = torch.autograd.grad(nudft_type2(xd, k).abs().pow(2).sum(), xd)
    assert rel_err(gx, want) < 1e-6


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_opcheck_on_the_compiled_path(dtype):
    g = torch.Generator().manual_seed(22)
    k = random_traj(23, 23)
    x = randn_like_dtype((2, 4, 5, 3), dtype, g).requires_grad_()
    y = randn_like_dtype((2, 23), dtype, g).requires_grad_()
    torch.library.opcheck(LF.nufft3_type2.default, (x, k, 1e-6, 2.0))
    torch.library.opcheck(LF.nufft3_type1.default, (y, k, (4, 5, 3), 1e-6, 2.0))


@needs_ext
def test_bad_trajectory_values_raise_value_error_once_per_plan():
    x = torch.zeros(1, 4, 4, 4, dtype=torch.complex64)
    k = random_traj(10, 24)
    for bad, match in [(torch.where(k > 1, math.nan, k), "non-finite"), (k * 2, "radians")]:
        with pytest.raises(ValueError, match=match):
            LF.nufft3_type2(x, bad)
        with pytest.raises(ValueError, match=match):
            nufft_ops.plan_for(bad, (4, 4, 4))


@needs_ext
def test_matches_finufft():
    """Agreement with FINUFFT 3-D on the same points within tol (FINUFFT at tol / 10)."""
    finufft = pytest.importorskip("finufft")
    g = torch.Generator().manual_seed(25)
    k = torch.cat((random_traj(600, 26), EDGES))
    size = (8, 10, 6)
    x = randn_like_dtype((2, *size), torch.complex128, g)
    y = randn_like_dtype((2, k.shape[0]), torch.complex128, g)
    kz, ky, kx = (k[:, d].numpy().copy() for d in range(3))
    for tol in (1e-3, 1e-7):
        # (as in 2-D) FINUFFT's first coordinate runs along the array's first axis
        f2 = finufft.nufft3d2(kz, ky, kx, x.numpy(), isign=-1, eps=tol / 10)
        f1 = finufft.nufft3d1(kz, ky, kx, y.numpy(), size, isign=1, eps=tol / 10)
        assert rel_err(nufft_type2(x, k, tol), torch.from_numpy(f2)) <= tol
        assert rel_err(nufft_type1(y, k, size, tol), torch.from_numpy(f1)) <= tol


def test_reference_serves_where_no_compiled_kernel_does(monkeypatch):
    """Without the compiled 3-D kernels (as if the extension predated them) the ops run the
    reference, saying why once through backends.fallback."""
    monkeypatch.setattr(nufft_ops, "HAS_CPU_KERNELS_3D", False)
    reasons = []
    monkeypatch.setattr(backends, "fallback", lambda op, reason: reasons.append((op, reason)))
    g = torch.Generator().manual_seed(27)
    k = random_traj(40, 28)
    x = randn_like_dtype((2, 4, 5, 3), torch.complex128, g)
    assert torch.equal(LF.nufft3_type2(x, k), NufftPlan(k, (4, 5, 3)).type2(x))
    assert reasons and reasons[0][0] == "nufft3_type2" and "3-D" in reasons[0][1]
    with pytest.raises(RuntimeError, match="3-D NUFFT kernels"):
        nufft_ops.plan_for(k, (4, 5, 3))


# --- CUDA on the host ---------------------------------------------------------------------------

@pytest.fixture
def fake_cuda(monkeypatch):
    """The 3-D launchers run as on a GPU (plans of kind "cuda"), on CPU tensors, with
    launches recorded and the kernels' NumPy stand-ins run."""
    rec = Recorder(_standins(0))
    monkeypatch.setattr(cuda_common, "launch", rec)
    monkeypatch.setattr(nufft_ops, "cuda_available", lambda: True)
    monkeypatch.setattr(nufft_ops, "_fast_kind_3d", lambda device: "cuda")
    return rec


def _real(suffix):
    return np.float32 if suffix == "f32" else np.float64


def _plan_points(grid, k, m, n0, n1, n2, nb0, nb1, nb2, width, start, bins):
    """nufft3_plan_points_kernel: es_kernel.h's stencil starts and bin id, in float64."""
    kk = view_at(k, np.float64, 3 * m).reshape(m, 3)
    s_out = view_at(start, np.int32, 3 * m).reshape(m, 3)
    b_out = view_at(bins, np.int32, m)
    ids = np.zeros(m, np.int64)
    for d, (n, nb) in enumerate(((n0, nb0), (n1, nb1), (n2, nb2))):
        t = kk[:, d] * float(n) / (2 * math.pi)
        s = np.ceil(t - 0.5 * width).astype(np.int64) % n
        s_out[:, d] = s
        ids = ids * nb + ((s + 1) * nb - 1) // n
    b_out[:] = ids


def _plan_weights(grid, k, order, m, n0, n1, n2, width, beta, weights):
    kk = view_at(k, np.float64, 3 * m).reshape(m, 3)
    o = view_at(order, np.int64, m)
    w_out = view_at(weights, np.float64, 3 * m * width).reshape(m, 3, width)
    for d, n in enumerate((n0, n1, n2)):
        t = kk[o, d] * float(n) / (2 * math.pi)
        u = t[:, None] - (np.ceil(t - 0.5 * width)[:, None] + np.arange(width))
        r = 1.0 - (u / (0.5 * width)) ** 2
        w_out[:, d] = np.where(r >= 0, np.exp(beta * (np.sqrt(np.maximum(r, 0)) - 1.0)), 0.0)


def _terms(vals, order, start, wts, pts, width, n, real):
    """The w^3 stencil terms kx[j] * (ky[i1] * (kz[i0] * v)) of points ``pts`` in the CUDA
    kernels' product order and precision, [B, P, w, w, w, 2], and their flat cells."""
    kz, ky, kx = wts[pts, 0], wts[pts, 1], wts[pts, 2]
    v = vals[:, order[pts]]                                             # [B, P, 2]
    z = (kz[None, :, :, None] * v[:, :, None, :]).astype(real)          # [B, P, w, 2]
    y = (ky[None, :, None, :, None] * z[:, :, :, None, :]).astype(real)  # [B, P, w, w, 2]
    t = (kx[None, :, None, None, :, None] * y[:, :, :, :, None, :]).astype(real)
    cells = [(start[pts, d][:, None] + np.arange(width)) % n[d] for d in range(3)]
    flat = (cells[0][:, :, None, None] * n[1] + cells[1][:, None, :, None]) * n[2] \
        + cells[2][:, None, None, :]
    return t, flat


def _spread_global(seed):
    def run(grid_dims, values, order, start, weights, batch, m, width, n0, n1, n2, grid,
            suffix):
        real, rng, n = _real(suffix), np.random.default_rng(seed), (n0, n1, n2)
        vals = view_at(values, real, 2 * batch * m).reshape(batch, m, 2)
        o = view_at(order, np.int64, m)
        st = view_at(start, np.int32, 3 * m).reshape(m, 3)
        wts = view_at(weights, real, 3 * m * width).reshape(m, 3, width)
        out = view_at(grid, real, 2 * batch * n0 * n1 * n2).reshape(batch, -1, 2)
        t, flat = _terms(vals, o, st, wts, rng.permutation(m), width, n, real)
        for b in range(batch):
            for part in range(2):
                np.add.at(out[b, :, part], flat.ravel(), t[b, ..., part].ravel())
    return run


def _spread_tile(seed):
    def run(grid_dims, values, order, start, weights, subproblems, batch, m, width, n0, n1,
            n2, nb0, nb1, nb2, t0, t1, t2, grid, suffix):
        real, rng, n = _real(suffix), np.random.default_rng(seed), (n0, n1, n2)
        vals = view_at(values, real, 2 * batch * m).reshape(batch, m, 2)
        o = view_at(order, np.int64, m)
        st = view_at(start, np.int32, 3 * m).reshape(m, 3)
        wts = view_at(weights, real, 3 * m * width).reshape(m, 3, width)
        subs = view_at(subproblems, np.int32, 3 * grid_dims[0]).reshape(-1, 3)
        out = view_at(grid, real, 2 * batch * n0 * n1 * n2).reshape(batch, -1, 2)
        for b_id, p0, p1 in rng.permutation(subs):            # blocks in any order
            bi = (b_id // (nb1 * nb2), (b_id // nb2) % nb1, b_id % nb2)
            nbs = (nb0, nb1, nb2)
            lo = [bi[d] * n[d] // nbs[d] for d in range(3)]
            ln = [(bi[d] + 1) * n[d] // nbs[d] - lo[d] for d in range(3)]
            pts = np.arange(p0, p1)
            rel = st[pts] - np.array(lo)
            pts = rng.permutation(pts[np.all((rel >= 0) & (rel < np.array(ln)), axis=1)])
            t, _ = _terms(vals, o, st, wts, pts, width, n, real)
            r = [(st[pts, d] - lo[d])[:, None] + np.arange(width) for d in range(3)]
            idx = ((r[0][:, :, None, None] * t1 + r[1][:, None, :, None]) * t2
                   + r[2][:, None, None, :]).ravel()
            tile = np.zeros((batch, t0 * t1 * t2, 2), real)
            for b in range(batch):
                for part in range(2):
                    np.add.at(tile[b, :, part], idx, t[b, ..., part].ravel())
            c0, rest = np.divmod(np.arange(t0 * t1 * t2), t1 * t2)
            c1, c2 = np.divmod(rest, t2)
            keep = (c0 < ln[0] + width - 1) & (c1 < ln[1] + width - 1) & (c2 < ln[2] + width - 1)
            g = ((((lo[0] + c0) % n0) * n1 + (lo[1] + c1) % n1) * n2 + (lo[2] + c2) % n2)
            out[:, g[keep]] += tile[:, keep]                  # distinct cells per tile
    return run


def _interp(grid_dims, grid, order, start, weights, batch, m, width, n0, n1, n2, out, suffix):
    """nufft3_interp_kernel: per point, each stencil row summed over its cells with kx,
    then the rows with kz ky, sequentially in the kernel's precision."""
    real, n = _real(suffix), (n0, n1, n2)
    g = view_at(grid, real, 2 * batch * n0 * n1 * n2).reshape(batch, -1, 2)
    o = view_at(order, np.int64, m)
    st = view_at(start, np.int32, 3 * m).reshape(m, 3)
    wts = view_at(weights, real, 3 * m * width).reshape(m, 3, width)
    res = view_at(out, real, 2 * batch * m).reshape(batch, m, 2)
    cells = [(st[:, d][:, None] + np.arange(width)) % n[d] for d in range(3)]
    acc = np.zeros((batch, m, 2), real)
    for i0 in range(width):
        for i1 in range(width):
            row = np.zeros((batch, m, 2), real)
            base = (cells[0][:, i0] * n1 + cells[1][:, i1]) * n2
            for j in range(width):
                row += wts[None, :, 2, j, None] * g[:, base + cells[2][:, j]]
            acc += (wts[None, :, 0, i0, None] * wts[None, :, 1, i1, None]).astype(real) * row
    res[:, o] = acc


def _standins(seed: int) -> dict:
    out = {"nufft3_plan_points_kernel": _plan_points,
           "nufft3_plan_weights_kernel": _plan_weights}
    for suffix in ("f32", "f64"):
        def bind(fn, sfx=suffix):
            return lambda grid_dims, *args: fn(grid_dims, *args, suffix=sfx)
        out[f"nufft3_spread_tile_kernel_{suffix}"] = bind(_spread_tile(seed))
        out[f"nufft3_spread_global_kernel_{suffix}"] = bind(_spread_global(seed))
        out[f"nufft3_interp_kernel_{suffix}"] = bind(_interp)
    return out


def test_cuda3_launch_sizes_for_huge_sizes():
    nufft_ops._cuda_check_sizes_3d(2 ** 31 - 1, (2 ** 28,) * 3, (2 ** 10, 2 ** 10, 2 ** 10))
    with pytest.raises(ValueError, match="points = 2147483648"):
        nufft_ops._cuda_check_sizes_3d(2 ** 31, (64, 64, 64), (2, 2, 2))
    with pytest.raises(ValueError, match="bins = 2147483648"):
        nufft_ops._cuda_check_sizes_3d(10, (2 ** 28,) * 3, (2 ** 11, 2 ** 10, 2 ** 10))
    with pytest.raises(ValueError, match="the grid side = 268435457"):
        nufft_ops._cuda_check_sizes_3d(10, (64, 2 ** 28 + 1, 64), (2, 2, 2))
    # tiles: the largest bins whose (bin + w - 1)^3 complex64 cells fit in shared memory
    assert nufft_ops._cuda_bin_3d((128, 128, 128), 3) == 16       # 18^3 x 8 bytes
    assert nufft_ops._cuda_bin_3d((128, 128, 128), 4) == 12       # 19^3 x 8 > 48 KiB
    assert nufft_ops._cuda_bin_3d((128, 128, 128), 8) == 8
    assert nufft_ops._cuda_bin_3d((128, 128, 128), 12) == 12      # none fits: global atomics
    assert nufft_ops._tile_3d((128, 128, 128), (16, 16, 16), 8) == (15, 15, 15)
    kind, grid, smem = nufft_ops._spread_launch(2 ** 24, 2 ** 31 - 1, 10 ** 8, (15 * 15, 15), 8)
    assert (kind, grid, smem) == ("tile", (2 ** 24, 65535), 15 ** 3 * 8)
    kind, _, _ = nufft_ops._spread_launch(2 ** 24, 2 ** 31 - 1, 3, (15 * 15, 15), 16)
    assert kind == "global"


def test_cuda3_kernels_index_with_64_bits_and_stride_over_y():
    text = open(SPREAD3_CU).read()
    src = re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))
    assert src.count("blockIdx.y") == src.count("gridDim.y") >= 3
    assert not re.search(r"\bint\s+(batch|b|p|q)\b", src)
    assert "long long batch" in src and "long long plane_cells" in src
    assert not re.search(r"\bconst int p\b|\bint p =", src)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_cuda3_launches_match_kernel_signatures(fake_cuda, monkeypatch, dtype):
    sigs = _preprocessed_signatures(SPREAD3_CU)
    assert len(sigs) == 8
    k = random_traj(300, 30)
    x = torch.randn(2, 5, 6, 7, dtype=dtype)
    y = torch.randn(2, 300, dtype=dtype)
    nufft_type2(x, k, 1e-3)
    nufft_type1(y, k, (5, 6, 7), 1e-3)
    monkeypatch.setattr(nufft_ops, "_CUDA_SMEM", 0)       # the global-atomics spreader
    nufft_type1(y, k.clone(), (5, 6, 7), 1e-3)
    suffix = "f32" if dtype == torch.complex64 else "f64"
    assert set(fake_cuda.names) == {"nufft3_plan_points_kernel", "nufft3_plan_weights_kernel",
                                    f"nufft3_interp_kernel_{suffix}",
                                    f"nufft3_spread_tile_kernel_{suffix}",
                                    f"nufft3_spread_global_kernel_{suffix}"}
    assert_launches_match(fake_cuda.calls, sigs, x.device)


@needs_ext
def test_cuda3_plan_equals_the_cpu_plan(fake_cuda, monkeypatch):
    """The CUDA plan (stand-ins of nufft3_plan_*_kernel, the launcher's sort key, offsets
    and subproblems) is the C++ plan for the same bins, exactly."""
    monkeypatch.setattr(nufft_ops, "_CUDA_SUBPROBLEM", 7)
    k = torch.cat((random_traj(900, 31), EDGES))
    plan = nufft_ops.plan_for(k, (10, 13, 9), 1e-6, dtype=torch.complex128)
    assert plan.kind == "cuda"
    cpu_plan = LF._nufft3_plan(k, *plan.grid_size, plan.width, plan.beta, *plan.n_bins)
    assert_plan_equals(plan, cpu_plan, k.shape[0], 7)


UNIT_ROUNDOFF = {torch.complex64: 2.0 ** -24, torch.complex128: 2.0 ** -53}


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("smem", ["tile", "global"])
def test_cuda3_spreading_and_interpolation_within_the_stated_bound(fake_cuda, monkeypatch,
                                                                    dtype, smem):
    """docs/DESIGN.md, "Numerical contracts": per cell (spreading) or point
    (interpolation), |CUDA - CPU| <= 2 (K + 3) u sum|terms|."""
    if smem == "global":
        monkeypatch.setattr(nufft_ops, "_CUDA_SMEM", 0)
    g = torch.Generator().manual_seed(32)
    k = torch.cat((random_traj(1500, 33), random_traj(300, 34) * 0.05))   # a dense centre
    size, tol = (8, 10, 9), (1e-4 if dtype == torch.complex64 else 1e-9)
    plan = nufft_ops.plan_for(k, size, tol, dtype=dtype)
    cpu = nufft_ops.CompiledPlan(k, size, tol, None, torch.device("cpu"), "cpu", dtype)
    assert plan.kind == "cuda" and plan.grid_size == cpu.grid_size
    u = UNIT_ROUNDOFF[dtype]
    values = torch.randn(2, k.shape[0], dtype=dtype, generator=g)
    got, want = plan.spread(values), cpu.spread(values)
    size_abs = cpu.spread(values.abs().to(dtype)).real                # sum |terms| per cell
    st, w, n = plan.start.numpy(), plan.width, plan.grid_size
    count = np.zeros(math.prod(n))                                     # K: terms per cell
    _, flat = _terms(np.zeros((1, k.shape[0], 2)), np.arange(k.shape[0]), st,
                     np.zeros((k.shape[0], 3, w)), np.arange(k.shape[0]), w, n, np.float64)
    np.add.at(count, flat.ravel(), 1)
    bound = 2 * (torch.from_numpy(count).reshape(n) + 3) * u * size_abs
    assert torch.all((got - want).abs() <= bound)
    grid = torch.randn(2, *plan.grid_size, dtype=dtype, generator=g)
    got_i, want_i = plan.interp(grid), cpu.interp(grid)
    abs_i = cpu.interp(grid.abs().to(dtype)).real
    assert torch.all((got_i - want_i).abs() <= 2 * (plan.width ** 3 + 3) * u * abs_i)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_cuda3_transforms_agree_with_the_cpu_kernels(fake_cuda, dtype):
    k = random_traj(600, 35)
    size = (6, 9, 7)
    g = torch.Generator().manual_seed(36)
    x = torch.randn(2, *size, dtype=dtype, generator=g)
    y = torch.randn(2, k.shape[0], dtype=dtype, generator=g)
    cuda2, cuda1 = nufft_type2(x, k, 1e-6), nufft_type1(y, k, size, 1e-6)
    assert nufft_ops.plan_for(k, size, 1e-6, dtype=dtype).kind == "cuda"
    cpu = nufft_ops.CompiledPlan(k.clone(), size, 1e-6, None, torch.device("cpu"), "cpu", dtype)
    tol = SAME_AS_REF[dtype]
    assert rel_err(cuda2, nufft_ops._type2(cpu, x)) <= tol
    assert rel_err(cuda1, nufft_ops._type1(cpu, y)) <= tol


needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and nufft_ops.cuda_available()),
    reason="no CUDA device with CuPy here: the 3-D CUDA kernels are compiled and checked for "
           "spills by nvcc, and their launches run on NumPy stand-ins above, but only a GPU "
           "can run them")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("tol, oversamp", [(1e-3, 2.0), (1e-6, 2.0), (1e-9, 1.25)])
def test_cuda3_matches_cpu_and_exact(dtype, tol, oversamp):
    """On a GPU: the CUDA 3-D path (tile spreading where the tile fits, global atomics
    where it does not) against the CPU kernels and the exact sums, and the adjoint pair."""
    g = torch.Generator().manual_seed(39)
    k = torch.cat((random_traj(2000, 40), stack_of_stars(7, 24, 5), EDGES))
    size = (12, 15, 10)
    x = randn_like_dtype((3, 2, *size), dtype, g)
    y = randn_like_dtype((3, 2, k.shape[0]), dtype, g)
    kc = k.cuda()
    assert nufft_ops.plan_for(kc, size, tol, oversamp, dtype=dtype).kind == "cuda"
    got2 = nufft_type2(x.cuda(), kc, tol, oversamp).cpu()
    got1 = nufft_type1(y.cuda(), kc, size, tol, oversamp).cpu()
    plan = NufftPlan(k, size, tol, oversamp, dtype)
    assert rel_err(got2, plan.type2(x)) <= SAME_AS_REF[dtype] * 10
    assert rel_err(got1, plan.type1(y)) <= SAME_AS_REF[dtype] * 10
    if dtype == torch.complex128:
        assert rel_err(got2, nudft_type2(x, k)) <= tol
        assert rel_err(got1, nudft_type1(y, k, size)) <= tol
    lhs = torch.vdot(got2.flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), got1.flatten())
    assert abs(lhs - rhs) / (got2.norm() * y.norm()) <= ADJOINT_TOL[REAL[dtype]] * 10
    torch.library.opcheck(LF.nufft3_type2.default, (x.cuda().requires_grad_(), kc, tol, oversamp))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", [80, 90])
def test_cuda3_kernels_compile_without_spills(arch):
    # registers: measured 31-54 (sm_80), 32-52 (sm_90)
    assert_compiles_without_spills(SPREAD3_CU, arch, nufft_cuda_kernels("nufft3"))


@pytest.mark.skipif(nvrtc() is None, reason="no NVRTC library (PyPI nvidia-cuda-nvrtc)")
def test_cuda3_sources_compile_with_nvrtc():
    assert_compiles_with_nvrtc("nufft/spread3.cu", b"nufft3.cu", "nufft3_spread_tile_kernel_f32")
