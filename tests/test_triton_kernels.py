"""Triton kernels vs their references, under the Triton interpreter (no GPU needed).

The interpreter is chosen when a ``@triton.jit`` function is decorated, i.e. when
``luser_fast.ops`` is first imported. This module sets TRITON_INTERPRET=1 before that; if
another test module imported ``luser_fast`` earlier in the same process (the kernels are
then compiled-mode functions, unusable on CPU tensors), the same tests run in one
subprocess with TRITON_INTERPRET=1 instead.

Output buffers are NaN-filled before each kernel call so an unwritten element fails.
Tolerances: float64 to 1e-12 relative; float32 relative to the float32 reference's own
error against float64 (times 10, plus a few ulps).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Triton imported before TRITON_INTERPRET was set (another test module collected first)
# mixes interpreted kernels with compiled helpers: the subprocess then runs the kernels
_LATE = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="the triton extra is not installed")

import torch  # noqa: E402

from luser_fast.ops import anderson as A  # noqa: E402
from luser_fast.ops import shallow as S  # noqa: E402
from luser_fast.ops import triton_common  # noqa: E402
from luser_fast.reference import ShallowEquilibrium  # noqa: E402

INTERPRETED = triton_common.INTERPRETED and not _LATE
_SUBPROCESS = os.environ.get("LUSER_FAST_TRITON_SUBPROCESS") == "1"

if not INTERPRETED and not _SUBPROCESS:
    def test_interpreter_suite_in_subprocess():
        """Kernels were built in compiled mode by an earlier import: rerun this module with
        TRITON_INTERPRET=1 in a fresh process (one torch import, a few seconds)."""
        env = dict(os.environ, TRITON_INTERPRET="1", LUSER_FAST_TRITON_SUBPROCESS="1")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            __file__], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
else:
    pytestmark = pytest.mark.skipif(not INTERPRETED,
                                    reason="kernels not built for the Triton interpreter")


# --------------------------------------------------------------------------- launch rules
# Host-side: plain Python, with sizes no test could allocate (run in either mode).


def test_batch_chunks_and_grid_limits():
    tc = triton_common
    assert tc.batch_chunks(0) == [] and tc.batch_chunks(5) == [(0, 5)]
    for b in (65535, 65536, 10 ** 6 + 7, 2 ** 31):
        chunks = tc.batch_chunks(b)
        assert chunks[0][0] == 0 and chunks[-1][1] == b
        assert all(lo < hi <= lo + tc.BATCH_CHUNK for lo, hi in chunks)
        assert all(a[1] == c[0] for a, c in zip(chunks, chunks[1:]))
    assert tc.batch_chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError):
        tc.batch_chunks(4, 65536)
    assert tc.check_grid((5,)) == (5, 1, 1)
    assert tc.check_grid((2 ** 31 - 1, 65535, 65535)) == (2 ** 31 - 1, 65535, 65535)
    for bad in ((2 ** 31, 1, 1), (1, 65536), (1, 1, 65536), (-1,)):
        with pytest.raises(ValueError, match="grid axis"):
            tc.check_grid(bad)
    assert not tc.needs_int64(2 ** 31 - 1) and tc.needs_int64(2 ** 31)


@pytest.mark.parametrize("b,d", [(1, 1), (3, 1025), (70000, 4096), (2 ** 20, 2 ** 33)])
def test_anderson_launch_grids(b, d):
    """Every launch of the Anderson kernels within CUDA's limits, the batch covered once
    (B > 65535 and D > 2**31 included)."""
    launches = A.launch_grid(b, d)
    assert [lo for lo, _, _ in launches] == list(range(0, b, triton_common.BATCH_CHUNK))
    assert launches[-1][1] == b
    for lo, hi, grid in launches:
        assert grid == (-(-d // 1024), hi - lo, 1) and hi - lo <= 65535


@pytest.mark.parametrize("b,c_in,c_out,h,w,itemsize,off64", [
    (2, 1, 64, 64, 64, 4, False),
    (100_000, 128, 128, 4096, 4096, 2, False),   # C H W = 2**31: 64-bit bases, 32-bit lanes
    (1, 64, 64, 8192, 8192, 4, True),            # a 32-channel block spans 2**31 elements
    (1, 3, 1, 46340, 46340, 4, True),
])
def test_shallow_conv_plans(b, c_in, c_out, h, w, itemsize, off64):
    plan = S.conv_plan(b, c_in, c_out, h, w, itemsize)
    t = plan["tiles"]
    assert plan["off64"] is off64
    assert plan["n_ptiles"] == -(-h * w // t["BLOCK_P"])
    assert plan["launches"][0][0] == 0 and plan["launches"][-1][1] == b
    for lo, hi, grid in plan["launches"]:
        assert grid == (plan["n_ptiles"], -(-c_out // t["BLOCK_CO"]), hi - lo)
        assert grid[0] <= 2 ** 31 - 1 and grid[1] <= 65535 and grid[2] <= 65535
    assert S.size_reason(c_in, c_out, h, w) is None


def test_shallow_sizes_beyond_the_kernels_fall_back():
    """Sizes the kernels cannot address are refused by name (the op then runs its
    reference, announced once): H W >= 2**31 pixels, 9 C_in C_out >= 2**31 weights."""
    assert "pixel offsets" in S.size_reason(1, 8, 46341, 46341)
    assert "weight offsets" in S.size_reason(16384, 16384, 8, 8)
    assert S.size_reason(128, 128, 16384, 16384) is None


def test_launches_run_under_the_device_guard(monkeypatch):
    """``triton_common.launch`` enters torch.cuda.device(<the tensors' device>) around
    the launch (a tensor on a non-current GPU would fault), and nothing for CPU tensors."""
    entered = []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append(None)
            return False

    launched = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: launched.append((grid, list(entered), args, meta))

    monkeypatch.setattr(torch.cuda, "device", Guard)
    dev = torch.device("cuda", 1)
    triton_common.launch(Kernel(), (2, 3), dev, 7, X=1)
    assert launched == [((2, 3, 1), [dev], (7,), {"X": 1})] and entered == [dev, None]
    entered.clear()

    class OnGpu1:                             # a tensor-like on cuda:1 (no GPU needed)
        device = dev
    with triton_common.device_guard(OnGpu1()):
        assert entered == [dev]
    entered.clear()
    triton_common.launch(Kernel(), (2,), torch.device("cpu"))
    assert entered == [] and launched[-1][0] == (2, 1, 1)
    triton_common.launch(Kernel(), (0, 3), dev)         # empty grid: nothing launched
    assert len(launched) == 2 and entered == []


def test_every_launch_goes_through_triton_common():
    """No launcher indexes a kernel with a grid itself: they all call
    triton_common.launch (device guard, grid check)."""
    import inspect
    import re
    for mod in (A, S):
        src = inspect.getsource(mod)
        assert not re.search(r"_kernel\s*\[", src), mod.__name__
        assert "triton_common.launch(" in src


def _nan_alloc(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    """Every launcher output starts NaN: an element the kernel does not write fails."""
    monkeypatch.setattr(triton_common, "alloc", _nan_alloc)


def _tol(dtype, ref_err=0.0):
    return 1e-12 if dtype == torch.float64 else 10 * ref_err + 1e-6


def _history(b, m, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return mk(b, m, d), mk(b, m, d), mk(b, d), mk(b, d)


def _relmax(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


if INTERPRETED:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("b", [1, 3])
    @pytest.mark.parametrize("d,m,slot,n", [(1037, 4, 2, 3), (5, 3, 0, 1), (2049, 5, 4, 5)])
    def test_anderson_step_matches_reference(dtype, b, d, m, slot, n):
        hf64, hg64, fz64, z64 = _history(b, m, d, dtype, 7 + d)
        active = torch.tensor([True, False, True])[:b]
        want = A.anderson_step_ref(fz64, z64, hf64.clone(), hg64.clone(), active, slot, n)
        hf, hg = hf64.to(dtype), hg64.to(dtype)
        ref32 = A.anderson_step_ref(fz64.to(dtype), z64.to(dtype), hf.clone(), hg.clone(),
                                    active, slot, n)
        got = A.anderson_step_fwd(fz64.to(dtype), z64.to(dtype), hf, hg, active, slot, n)
        assert got.dtype == dtype and got.shape == (b, m + 1)
        tol = _tol(dtype, _relmax(ref32.double(), want))
        assert _relmax(got.double(), want) <= tol
        exp_f, exp_g = hf64.to(dtype), hg64.to(dtype)
        exp_f[active, slot] = fz64.to(dtype)[active]
        exp_g[active, slot] = (fz64.to(dtype) - z64.to(dtype))[active]
        assert torch.equal(hf, exp_f) and torch.equal(hg, exp_g)
        if b > 1:                    # frozen sample: zero row, history untouched
            assert torch.equal(got[1], torch.zeros_like(got[1]))
            assert torch.equal(hf[1], hf64[1].to(dtype))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("b", [1, 3])
    @pytest.mark.parametrize("beta", [1.0, 0.7])
    @pytest.mark.parametrize("with_best", [True, False])
    def test_anderson_mix_matches_reference(dtype, b, beta, with_best):
        d, m, n = 1031, 4, 3
        hf64, hg64, best64, _ = _history(b, m, d, dtype, 11)
        alpha = torch.randn(b, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        active = torch.tensor([True, False, True])[:b] if with_best else torch.ones(b, dtype=torch.bool)
        best = best64.to(dtype) if with_best else None
        want = A.anderson_mix_ref(hf64, hg64, alpha, active, best64 if with_best else None, beta)
        ref32 = A.anderson_mix_ref(hf64.to(dtype), hg64.to(dtype), alpha, active, best, beta)
        got = A.anderson_mix_fwd(hf64.to(dtype), hg64.to(dtype), alpha, active, best, beta)
        assert got.dtype == dtype and got.shape == (b, d) and torch.isfinite(got).all()
        assert _relmax(got.double(), want) <= _tol(dtype, _relmax(ref32.double(), want))
        if with_best and b > 1:
            assert torch.equal(got[1], best[1])

    def test_anderson_kernels_leave_no_element_unwritten():
        """History and output buffers NaN-filled: every written element becomes finite."""
        b, m, d = 3, 3, 1029
        hf = torch.full((b, m, d), float("nan"))
        hg = torch.full((b, m, d), float("nan"))
        fz, z = torch.randn(b, d), torch.randn(b, d)
        row = A.anderson_step_fwd(fz, z, hf, hg, torch.ones(b, dtype=torch.bool), 0, 1)
        assert torch.isfinite(hf[:, 0]).all() and torch.isfinite(hg[:, 0]).all()
        assert torch.isfinite(row).all()
        out = A.anderson_mix_fwd(hf, hg, torch.ones(b, 1), torch.ones(b, dtype=torch.bool),
                                 None, 1.0)
        assert torch.equal(out, fz)

    def test_anderson_ops_dispatch_to_triton(monkeypatch):
        """LUSER_FAST_BACKEND=triton serves the registered ops with the kernels on CPU."""
        monkeypatch.setenv("LUSER_FAST_BACKEND", "triton")
        b, m, d = 2, 3, 77
        hf, hg = torch.zeros(b, m, d), torch.zeros(b, m, d)
        fz, z = torch.randn(b, d), torch.randn(b, d)
        act = torch.ones(b, dtype=torch.bool)
        row = A.anderson_step(fz, z, hf, hg, act, 0, 1)
        torch.testing.assert_close(row[:, 0], ((fz - z) ** 2).sum(1))
        torch.testing.assert_close(row[:, m], (fz ** 2).sum(1))
        torch.testing.assert_close(A.anderson_mix(hf, hg, torch.ones(b, 1), act), fz)
        torch.library.opcheck(torch.ops.luser_fast.anderson_mix,
                              (hf, hg, torch.ones(b, 1), act, None, 1.0),
                              test_utils=("test_schema", "test_faketensor"))

    def test_batch_chunks_give_the_unchunked_results(monkeypatch):
        """Launchers split the batch (B > 65535 on a GPU; 2 here, lowered by
        monkeypatch): every kernel gives the results of a single launch, bit for bit."""
        b, m, d = 5, 3, 1030
        hf0, hg0, fz, z = (t.float() for t in _history(b, m, d, torch.float32, 5))
        active = torch.tensor([True, False, True, True, False])
        alpha = torch.rand(b, 2, generator=torch.Generator().manual_seed(1))
        mc = _shallow_case(3, 2, 8, 2, "group", "silu", 2, seed=4)[0]
        ws, bs, gs, be = (_cast(t, torch.float32) for t in _params(mc))
        zz, vv = torch.randn(2, 3, 2, 7, 9).unbind(0)

        def run():
            hf, hg = hf0.clone(), hg0.clone()
            row = A.anderson_step_fwd(fz, z, hf, hg, active, 1, 2)
            mix = A.anderson_mix_fwd(hf, hg, alpha, active, fz, 0.6)
            inj = S.shallow_inject_fwd(vv, mc.inject.weight.float())
            f = S.shallow_map_fwd(zz, inj, vv, ws, bs, gs, be, 2, "silu", 1e-5)
            vjp = S.shallow_map_bwd(torch.ones_like(zz), zz, inj, vv, ws, bs, gs, be, 2,
                                    "silu", 1e-5, param_grads=False)[:2]
            return (hf, hg, row, mix, inj, f, *vjp)

        calls = []
        real_launch = triton_common.launch
        monkeypatch.setattr(triton_common, "launch",
                            lambda k, grid, *a, **kw: (calls.append(grid), real_launch(k, grid, *a, **kw)))
        whole = run()
        assert max(g[1] if g[2] == 1 else g[2] for g in calls) == b
        calls.clear()
        monkeypatch.setattr(triton_common, "BATCH_CHUNK", 2)
        chunked = run()
        assert max(g[1] if g[2] == 1 else g[2] for g in calls) == 2
        for x, y in zip(whole, chunked):
            assert torch.equal(x, y)

    def test_64_bit_lane_variant_gives_the_same_results(monkeypatch):
        """The OFF64 kernels (64-bit offsets within a tile, chosen for images of 8192 x
        8192 and more) compute what the 32-bit ones do, forward and VJP, bit for bit."""
        mc = _shallow_case(1, 2, 8, 2, "group", "gelu", 2, seed=6)[0]
        ws, bs, gs, be = (_cast(t, torch.float32) for t in _params(mc))
        zz, vv = torch.randn(2, 2, 2, 6, 7).unbind(0)
        inj = S.shallow_inject_fwd(vv, mc.inject.weight.float())

        def run():
            return (S.shallow_map_fwd(zz, inj, vv, ws, bs, gs, be, 2, "gelu", 1e-5),
                    *S.shallow_map_bwd(torch.ones_like(zz), zz, inj, vv, ws, bs, gs, be, 2,
                                       "gelu", 1e-5, param_grads=False)[:2])

        flags = []
        real_launch = triton_common.launch
        monkeypatch.setattr(triton_common, "launch", lambda k, grid, dev, *a, **kw: (
            flags.append(kw["OFF64"]), real_launch(k, grid, dev, *a, **kw)))
        narrow = run()
        monkeypatch.setattr(triton_common, "needs_int64", lambda *sizes: True)
        wide = run()
        assert set(flags[:len(flags) // 2]) == {False} and set(flags[len(flags) // 2:]) == {True}
        for x, y in zip(narrow, wide):
            assert torch.equal(x, y)

    def test_anderson_mix_float64_damping_exact():
        """1 - beta reaches the float64 kernel in float64 (a float argument is passed as
        float32 when compiled, and tl.cast of a float rounds it to float32 in the
        interpreter): the mix matches the reference to 1e-13 for damping that float32
        cannot hold."""
        b, m, d = 2, 3, 300
        hf, hg, _, _ = _history(b, m, d, torch.float64, 2)
        alpha = torch.randn(b, m, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        act = torch.ones(b, dtype=torch.bool)
        for beta in (0.7, 1 / 3, 1 - 1e-9):
            got = A.anderson_mix_fwd(hf, hg, alpha, act, None, beta)
            want = A.anderson_mix_ref(hf, hg, alpha, act, None, beta)
            assert _relmax(got, want) <= 1e-13, beta

    @pytest.mark.parametrize("dtype,beta,check_every,how", [
        (torch.float64, 1.0, 1, "argument"),
        (torch.float64, 0.6, 3, "environment"),
        (torch.float32, 1.0, 2, "argument"),
        (torch.complex128, 0.8, 1, "argument"),
    ])
    def test_solver_runs_the_fused_kernels(monkeypatch, dtype, beta, check_every, how):
        """luser_fast.deq.anderson with the Triton backend (as on CUDA; here the
        interpreter on CPU) runs anderson_step / anderson_mix kernels every iteration and
        gives the iteration counts of the reference twins' run, and its iterates to
        rounding; frozen samples keep their best iterate."""
        from helpers import contractions, linear_map

        from luser_fast import deq

        d = 40
        w, rhs = contractions(d, [0.2, 0.5, 0.7], seed=3)
        if dtype.is_complex:
            f = lambda z: (w.to(dtype) @ z[..., None])[..., 0] + rhs.to(dtype) * (1 + 1j)  # noqa: E731
        else:
            f = linear_map(w.to(dtype), rhs.to(dtype))
        z0 = torch.zeros(3, d, dtype=dtype)
        kw = {"m": 3, "beta": beta, "tol": 1e-9 if dtype != torch.float32 else 1e-5,
              "max_iter": 60, "check_every": check_every}
        launched = []
        real_launch = triton_common.launch
        monkeypatch.setattr(triton_common, "launch",
                            lambda k, *a, **m: (launched.append(k), real_launch(k, *a, **m)))
        z_ref, info_ref = deq.anderson(f, z0, backend="reference", **kw)
        assert not launched
        if how == "environment":
            monkeypatch.setenv("LUSER_FAST_BACKEND", "triton")
            z, info = deq.anderson(f, z0, **kw)
        else:
            z, info = deq.anderson(f, z0, backend="triton", **kw)
        steps = sum(k is A._anderson_step_fwd_kernel for k in launched)
        mixes = sum(k is A._anderson_mix_fwd_kernel for k in launched)
        last = int(info.iterations.max())   # the host notices at the next check
        assert steps == min(kw["max_iter"], -(-last // check_every) * check_every)
        assert mixes == steps - 1 and steps > 3
        assert torch.equal(info.iterations, info_ref.iterations)
        assert info.converged.all() and len(set(info.iterations.tolist())) > 1
        tol = 1e-12 if dtype != torch.float32 else 1e-5
        assert _relmax(torch.view_as_real(z) if z.is_complex() else z,
                       torch.view_as_real(z_ref) if z.is_complex() else z_ref) < tol

    def _params(m):
        ws = [m.conv_in.weight] + [c.weight for c in m.hidden] + [m.conv_out.weight]
        bs = [m.conv_in.bias] + [c.bias for c in m.hidden] + [m.conv_out.bias]
        norm = not isinstance(m.norms[0], torch.nn.Identity)
        gs = [n.weight for n in m.norms] if norm else []
        be = [n.bias for n in m.norms] if norm else []
        return ws, bs, gs, be

    def _cast(ts, dtype):
        return [t.detach().to(dtype) for t in ts]

    def _shallow_case(b, c_in, c, depth, norm, act, groups, seed):
        torch.manual_seed(seed)
        m = ShallowEquilibrium(c_in, c, depth=depth, norm=norm, groups=groups, act=act).double()
        with torch.no_grad():
            m.conv_out.weight.mul_(50)          # make conv_out matter in the comparison
            for n in m.norms if norm == "group" else ():
                n.weight.uniform_(0.5, 1.5)
                n.bias.uniform_(-0.5, 0.5)
        z = torch.randn(b, c_in, 17, 23, dtype=torch.float64)
        return m, z, torch.randn_like(z)

    @pytest.mark.parametrize("b,c_in,c,depth,norm,act,groups", [
        (1, 2, 12, 2, "group", "gelu", 3),
        (3, 2, 12, 2, "group", "gelu", 3),
        (3, 1, 12, 3, "group", "silu", 4),
        (1, 2, 6, 2, "none", "relu", 1),
        (1, 1, 10, 3, "none", "elu", 1),
        (3, 2, 6, 2, "none", "relu", 1),
        (1, 2, 40, 2, "group", "gelu", 5),      # two C_in blocks in the second conv
    ])
    def test_shallow_map_matches_reference(b, c_in, c, depth, norm, act, groups):
        """float32 kernel vs the float64 ShallowEquilibrium, relative to the float32
        reference's own error."""
        m, z, v = _shallow_case(b, c_in, c, depth, norm, act, groups, seed=c + depth)
        ws, bs, gs, be = _params(m)
        with torch.no_grad():
            want = m(z, v)
            inj32 = S.shallow_inject_fwd(v.float(), m.inject.weight.float())
            inj64 = torch.nn.functional.conv2d(v, m.inject.weight, padding=1)
            args32 = (_cast(ws, torch.float32), _cast(bs, torch.float32),
                      _cast(gs, torch.float32), _cast(be, torch.float32), groups, act, 1e-5)
            got = S.shallow_map_fwd(z.float(), inj32, v.float(), *args32)
            ref32 = S.shallow_map_ref(z.float(), inj64.float(), v.float(), *args32)
        assert got.shape == z.shape and got.dtype == torch.float32
        assert _relmax(inj32.double(), inj64) <= 1e-6
        scale = (want - v).norm()                      # the part the kernel computes
        err = ((got.double() - want).norm() / scale).item()
        ref_err = ((ref32.double() - want).norm() / scale).item()
        assert err <= 10 * ref_err + 1e-6, (err, ref_err)

    def test_shallow_map_float16_storage():
        """float16 storage, float32 accumulation: within float16 rounding of the reference."""
        m, z, v = _shallow_case(3, 2, 12, 2, "group", "gelu", 3, seed=5)
        ws, bs, gs, be = _params(m)
        with torch.no_grad():
            want = m(z, v)
            inj = S.shallow_inject_fwd(v.half(), m.inject.weight.half())
            got = S.shallow_map_fwd(z.half(), inj, v.half(), _cast(ws, torch.float16),
                                    _cast(bs, torch.float32), _cast(gs, torch.float32),
                                    _cast(be, torch.float32), 3, "gelu", 1e-5)
        assert got.dtype == torch.float16
        assert ((got.double() - want).norm() / (want - v).norm()).item() < 2e-2

    def test_shallow_model_through_op(monkeypatch):
        """LUSER_FAST_BACKEND=triton: the registered op (and its fake) serve the map."""
        monkeypatch.setenv("LUSER_FAST_BACKEND", "triton")
        m, z, v = _shallow_case(1, 1, 8, 2, "group", "gelu", 2, seed=1)
        m = m.float()
        ws, bs, gs, be = _params(m)
        with torch.no_grad():
            z, v = z.float(), v.float()
            inj = S.shallow_inject(v, m.inject.weight)
            got = S.shallow_map(z, inj, v, ws, bs, gs, be, groups=2)
            torch.testing.assert_close(got, m(z, v), rtol=1e-4, atol=1e-5)
            torch.library.opcheck(torch.ops.luser_fast.shallow_map,
                                  (z, inj, v, list(ws), list(bs), list(gs), list(be), 2,
                                   "gelu", 1e-5),
                                  test_utils=("test_schema", "test_faketensor"))

    @pytest.mark.parametrize("b,c_in,c,depth,norm,act,groups", [
        (1, 2, 12, 2, "group", "gelu", 3),
        (3, 1, 12, 3, "group", "silu", 4),
        (3, 2, 10, 3, "none", "elu", 1),
        (1, 2, 6, 2, "none", "relu", 1),
    ])
    def test_shallow_map_vjp_matches_reference(b, c_in, c, depth, norm, act, groups):
        """J^T u and every parameter gradient (float32 kernels) vs float64 autograd of the
        reference, relative to the float32 reference autograd's own error."""
        m, z, v = _shallow_case(b, c_in, c, depth, norm, act, groups, seed=3 * c + depth)
        u = torch.randn_like(z)
        ws, bs, gs, be = _params(m)
        inj = torch.nn.functional.conv2d(v, m.inject.weight, padding=1).detach()

        def ref_grads(dtype):
            leaves = [t.detach().to(dtype).requires_grad_() for t in (z, inj, *ws, *bs, *gs, *be)]
            n = len(ws)
            f = S.shallow_map_ref(leaves[0], leaves[1], v.to(dtype), leaves[2:2 + n],
                                  leaves[2 + n:2 + 2 * n], leaves[2 + 2 * n:2 + 2 * n + len(gs)],
                                  leaves[2 + 2 * n + len(gs):], groups, act, 1e-5)
            return torch.autograd.grad(f, leaves, u.to(dtype))

        want, ref32 = ref_grads(torch.float64), ref_grads(torch.float32)
        with torch.no_grad():
            dz, dinj, dv, dws, dbs, dgs, dbe = S.shallow_map_bwd(
                u.float(), z.float(), inj.float(), v.float(), _cast(ws, torch.float32),
                _cast(bs, torch.float32), _cast(gs, torch.float32), _cast(be, torch.float32),
                groups, act, 1e-5)
        assert torch.equal(dv, u.float())
        got = [dz, dinj, *dws, *dbs, *dgs, *dbe]
        assert len(got) == len(want)
        for name, g, w, r in zip(range(len(got)), got, want, ref32):
            assert g.shape == w.shape and torch.isfinite(g).all(), name
            err = ((g.double() - w).norm() / w.norm()).item()
            ref_err = ((r.double() - w).norm() / w.norm()).item()
            assert err <= 10 * ref_err + 1e-6, (name, err, ref_err)

    def test_shallow_map_autograd_through_op(monkeypatch):
        """register_autograd: gradients of the op (Triton forward and VJP) match the
        module's autograd for inputs and all parameters."""
        monkeypatch.setenv("LUSER_FAST_BACKEND", "triton")
        m, z, v = _shallow_case(1, 1, 8, 2, "group", "gelu", 2, seed=2)
        m = m.float()
        z = z.float().requires_grad_()
        v = v.float().requires_grad_()
        ws, bs, gs, be = _params(m)
        f = S.shallow_map(z, S.shallow_inject(v, m.inject.weight), v, ws, bs, gs, be, groups=2)
        u = torch.randn_like(f)
        params = [z, v, *m.parameters()]
        got = torch.autograd.grad(f, params, u)
        want = torch.autograd.grad(m(z, v), params, u)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)

    def test_luser_end_to_end_triton_backend(monkeypatch):
        """LUSER with LUSER_FAST_BACKEND=triton (fused map, inject and VJP in the solver
        and the backward solve) matches the reference backend's output and gradients."""
        from luser_fast.data import random_ellipses
        from luser_fast.models import LUSER
        from luser_fast.reference import Blur

        torch.manual_seed(0)
        op = Blur(sigma=1.0, image_size=8)
        solve = {"tol": 1e-6, "max_iter": 12}
        model = LUSER(op, iterations=1, channels=12, solver_kwargs=solve, backward_kwargs=solve)
        with torch.no_grad():
            model.regularizers[0].conv_out.weight.mul_(20)
        x = random_ellipses(1, 8, seed=1)
        y = op(x)
        results = {}
        for backend in ("reference", "triton"):
            monkeypatch.setenv("LUSER_FAST_BACKEND", backend)
            model.zero_grad()
            out = model(y)
            ((out - x) ** 2).mean().backward()
            results[backend] = (out.detach(), {n: p.grad.clone()
                                               for n, p in model.named_parameters()})
        out_t, grads_t = results["triton"]
        out_r, grads_r = results["reference"]
        assert torch.isfinite(out_t).all()
        assert _relmax(out_t.double(), out_r.double()) < 1e-5
        for name, g in grads_r.items():
            assert _relmax(grads_t[name].double(), g.double()) < 1e-4, name
