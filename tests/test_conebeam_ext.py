"""Tests of the compiled cone-beam kernels: the C++ CPU ops (private ops
``_conebeam_forward`` / ``_conebeam_adjoint`` and the CUDA algorithms' CPU twins
``_conebeam_forward_gather`` / ``_conebeam_adjoint_scatter``), the CUDA kernels (compiled
here by nvcc for sm_80 / sm_90: no spills, no FMA but the norm's), and the CUDA launchers
run on the host with the launch recorded and the kernels' CPU twins standing in.

Every kernel is checked against the pure-PyTorch reference (luser_fast/reference/
conebeam.py), which fixes the discretisation; tolerances 1e-5 (float32) / 1e-12 (float64)
relative. The public functionals, physics.ConeBeam, autograd and FDK are tested in
tests/test_conebeam.py.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from helpers import ADJOINT_TOL, CSRC, assert_launcher_refuses, ptxas_report, rel_err, view_at

from luser_fast import backends
from luser_fast.constants import CONE_IMAGES_PER_THREAD
from luser_fast.ops import conebeam as cone_ops
from luser_fast.ops import cuda_common, library
from luser_fast.reference.conebeam import conebeam_adjoint_ref, conebeam_forward_ref

pytestmark = pytest.mark.usefixtures("one_thread")

LF = torch.ops.luser_fast
CONE_CU = os.path.join(CSRC, "conebeam", "conebeam.cu")
HAS_EXT = cone_ops.HAS_CPU_KERNELS and library.extension_has("_conebeam_forward_gather")
needs_ext = pytest.mark.skipif(not HAS_EXT,
                               reason="the C++ extension lacks the cone-beam kernels")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
REL_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
# the major-axis switches (45 degrees and either side), the axes, a full circle
ANGLES = torch.tensor([0.0, math.pi / 4, math.pi / 4 + 1e-9, math.pi / 2, 2.0,
                       3 * math.pi / 4 - 1e-9, math.pi, 4.0, 5.9], dtype=torch.float64)
# (D, H, W), (rows, cols), (sr, sc), leading dims, cone geometry (R, Dd)
CASES = [
    ((5, 7, 6), (4, 9), (1.0, 1.0), (2,), (9.0, 3.0)),
    ((7, 6, 9), (5, 8), (1.3, 0.9), (2, 3), (12.0, 0.0)),
    # a tall detector close to the source: z-major rays (|d_z| largest)
    ((9, 8, 7), (30, 10), (2.5, 1.1), (), (9.0, 20.0)),
    ((1, 1, 1), (1, 1), (1.0, 1.0), (3,), (2.0, 1.0)),
    ((4, 3, 5), (3, 4), (1.0, 1.0), (0,), (6.0, 1.0)),
]
IDS = ["odd", "bc-batch", "z-major", "one-voxel", "empty-batch"]


def data(size, shape, lead, dtype, seed=0, n_angles=ANGLES.numel()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, *size, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(*lead, n_angles, *shape, generator=g, dtype=torch.float64).to(dtype)
    return x, y


def close(got, want, dtype) -> bool:
    if want.numel() == 0 or float(want.abs().max()) == 0.0:
        return got.shape == want.shape and not bool(got.any())
    return rel_err(got.double(), want.double()) <= REL_TOL[dtype]


# --- C++ kernels against the reference -------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cone", [False, True], ids=["parallel", "cone"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cpu_kernels_match_reference(case, cone, dtype):
    size, shape, spacing, lead, (src, det) = case
    src, det = (src, det) if cone else (None, None)
    x, y = data(size, shape, lead, dtype)
    want_f = conebeam_forward_ref(x, ANGLES, *shape, spacing, src, det)
    want_a = conebeam_adjoint_ref(y, ANGLES, size, spacing, src, det)
    args_f = (ANGLES, *shape, *spacing, src, det)
    args_a = (ANGLES, *size, *spacing, src, det)
    for fwd in (LF._conebeam_forward, LF._conebeam_forward_gather, LF.conebeam_forward):
        got = fwd(x, *args_f)
        assert got.dtype == dtype and got.shape == want_f.shape
        assert close(got, want_f, dtype), fwd
    for adj in (LF._conebeam_adjoint, LF._conebeam_adjoint_scatter, LF.conebeam_adjoint):
        got = adj(y, *args_a)
        assert got.dtype == dtype and got.shape == want_a.shape
        assert close(got, want_a, dtype), adj


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cone", [False, True], ids=["parallel", "cone"])
def test_adjoint_dot_product(cone, dtype):
    size, shape, spacing = (7, 6, 9), (6, 11), (1.2, 0.8)
    src, det = (11.0, 4.0) if cone else (None, None)
    x, y = data(size, shape, (2,), dtype, seed=1)
    pairs = [(LF._conebeam_forward, LF._conebeam_adjoint),
             (LF._conebeam_forward_gather, LF._conebeam_adjoint_scatter)]
    for fwd, adj in pairs:
        ax = fwd(x, ANGLES, *shape, *spacing, src, det)
        aty = adj(y, ANGLES, *size, *spacing, src, det)
        lhs, rhs = torch.sum(ax.double() * y.double()), torch.sum(x.double() * aty.double())
        scale = torch.linalg.vector_norm(ax.double()) * torch.linalg.vector_norm(y.double())
        assert (abs(lhs - rhs) / scale).item() < ADJOINT_TOL[dtype]


@needs_ext
def test_realistic_size_uniform_angles():
    # a 20^3 volume, 24 full-circle angles, a detector wider than the volume: many rays
    # per voxel, every orientation, x- and y-major (and the ray ranges at the edges)
    size, shape, spacing = (16, 20, 18), (21, 26), (1.1, 1.0)
    angles = torch.arange(24, dtype=torch.float64) * (2 * math.pi / 24)
    for src, det in [(None, None), (30.0, 15.0)]:
        for dtype in (torch.float32, torch.float64):
            x, y = data(size, shape, (1,), dtype, seed=2, n_angles=24)
            assert close(LF._conebeam_forward(x, angles, *shape, *spacing, src, det),
                         conebeam_forward_ref(x, angles, *shape, spacing, src, det), dtype)
            assert close(LF._conebeam_adjoint(y, angles, *size, *spacing, src, det),
                         conebeam_adjoint_ref(y, angles, size, spacing, src, det), dtype)


@needs_ext
def test_thread_counts_and_batches_give_identical_bits():
    """Deterministic: the forward (one thread per ray sum) and the adjoint (one slab of
    slices per thread, each voxel one sum in ray order) give the same bits on 1, 2 and 3
    threads (1, 2, 3 slabs: z-major rays cross the slab boundaries too); and a volume's
    result does not depend on the rest of its batch (lane groups of 8 / 4)."""
    size, shape = (11, 12, 10), (9, 14)
    angles = torch.arange(20, dtype=torch.float64) * 0.31
    for dtype in (torch.float32, torch.float64):
        x, y = data(size, shape, (9,), dtype, seed=3, n_angles=20)
        for sr, src, det in [(1.0, None, None), (1.0, 15.0, 5.0), (6.0, 15.0, 5.0)]:
            args_f = (angles, *shape, sr, 1.1, src, det)
            args_a = (angles, *size, sr, 1.1, src, det)
            out = {}
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                out[threads] = (LF._conebeam_forward(x, *args_f),
                                LF._conebeam_adjoint(y, *args_a))
            torch.set_num_threads(1)
            for threads in (2, 3):
                for a, b in zip(out[1], out[threads]):
                    assert torch.equal(a, b), (threads, sr, src)
            fwd, adj = out[1]
            for n in (1, 2, 5):
                assert torch.equal(LF._conebeam_forward(x[:n], *args_f), fwd[:n])
                assert torch.equal(LF._conebeam_adjoint(y[:n], *args_a), adj[:n])
            # non-contiguous input
            xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)[::2]
            assert torch.equal(LF._conebeam_forward(xt, *args_f), fwd[::2])


@needs_ext
def test_cuda_algorithms_agree_with_the_fast_cpu_kernels():
    """The CUDA kernels' algorithms, run on the CPU by the twins: the adjoint scatter adds
    the same contributions in the same order (rays, then steps) as the CPU's slab adjoint,
    so they agree bit for bit (on the device, atomics add them in any order: conebeam.cu
    states the bound); the forward gather sums each ray sequentially, the CPU in 4 partial
    sums: equal to rounding (docs/DESIGN.md, 1e-6 / 1e-13 relative)."""
    size, shape = (13, 14, 12), (15, 17)
    angles = torch.arange(16, dtype=torch.float64) * (2 * math.pi / 16)
    torch.set_num_threads(2)
    try:
        for dtype in (torch.float32, torch.float64):
            x, y = data(size, shape, (3,), dtype, seed=6, n_angles=16)
            for geometry in [(1.0, 1.0, None, None), (1.2, 0.9, 25.0, 8.0),
                             (3.0, 1.0, 15.0, 5.0)]:
                a = LF._conebeam_adjoint(y, angles, *size, *geometry)
                assert torch.equal(a, LF._conebeam_adjoint_scatter(y, angles, *size, *geometry))
                f = LF._conebeam_forward(x, angles, *shape, *geometry)
                g = LF._conebeam_forward_gather(x, angles, *shape, *geometry)
                assert rel_err(g, f) <= (1e-6 if dtype == torch.float32 else 1e-13)
    finally:
        torch.set_num_threads(1)


@needs_ext
def test_central_row_is_the_fan_beam_and_parallel_rows_are_radon():
    """Odd D and odd rows: the cone beam's central detector row is the 2-D fan beam of the
    central slice; with sr = 1 and rows = D the parallel beam is the 2-D parallel Radon
    transform of every slice (through the C++ kernels of both families)."""
    d, h, w, cols = 5, 9, 8, 13
    angles = ANGLES
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, d, h, w, generator=g, dtype=torch.float64)
    cone = LF._conebeam_forward(x, angles, 3, cols, 1.0, 0.9, 14.0, 6.0)
    fan = LF.radon_forward(x[:, d // 2], angles, cols, 0.9, 14.0, 6.0)
    assert rel_err(cone[:, :, 1], fan) <= 1e-13
    par = LF._conebeam_forward(x, angles, d, cols, 1.0, 0.9, None, None)
    radon = LF.radon_forward(x, angles, cols, 0.9, None, None)      # [2, D, A, cols]
    assert rel_err(par, radon.transpose(1, 2)) <= 1e-13


@needs_ext
def test_raw_ops_reject_bad_arguments_without_crashing():
    x, y = data((4, 5, 6), (3, 7), (2,), torch.float32, n_angles=3)
    a = ANGLES[:3]
    bad_forward = [
        (x[0, 0], a, 3, 7, 1.0, 1.0, None, None),                    # 2-D volume
        (x.to(torch.int32), a, 3, 7, 1.0, 1.0, None, None),          # integer volume
        (x.to(torch.complex64), a, 3, 7, 1.0, 1.0, None, None),      # complex volume
        (x.half(), a, 3, 7, 1.0, 1.0, None, None),                   # half (raw op: no)
        (x, a[None], 3, 7, 1.0, 1.0, None, None),                    # 2-D angles
        (x, a[:0], 3, 7, 1.0, 1.0, None, None),                      # no angles
        (x, a.to(torch.int64), 3, 7, 1.0, 1.0, None, None),          # integer angles
        (x, torch.tensor([0.1, math.nan], dtype=torch.float64), 3, 7, 1.0, 1.0, None, None),
        (x, torch.tensor([math.inf]), 3, 7, 1.0, 1.0, None, None),
        (x, a.to("meta"), 3, 7, 1.0, 1.0, None, None),               # another device
        (x, a, 0, 7, 1.0, 1.0, None, None),                          # no rows
        (x, a, 3, -2, 1.0, 1.0, None, None),
        (x, a, 2 ** 24, 7, 1.0, 1.0, None, None),
        (x, a, 3, 7, 0.0, 1.0, None, None),                          # zero spacing
        (x, a, 3, 7, 1.0, math.nan, None, None),
        (x, a, 3, 7, 1.0, -1.0, None, None),
        (x, a, 3, 7, 1.0, 1.0, 2.0, None),                           # source inside
        (x, a, 3, 7, 1.0, 1.0, math.inf, None),
        (x, a, 3, 7, 1.0, 1.0, None, 3.0),                           # det without source
        (x, a, 3, 7, 1.0, 1.0, 20.0, -1.0),
        (x, a, 3, 7, 1.0, 1.0, 20.0, math.nan),
        (torch.zeros(2, 0, 5, 6), a, 3, 7, 1.0, 1.0, None, None),    # empty volume
        (x.to("meta"), a.to("meta"), 3, 7, 1.0, 1.0, None, None),    # not a CPU tensor
    ]
    bad_adjoint = [
        (y[0, 0], a, 4, 5, 6, 1.0, 1.0, None, None),                 # 2-D projections
        (y, ANGLES[:4], 4, 5, 6, 1.0, 1.0, None, None),              # A mismatch
        (y, ANGLES[:2], 4, 5, 6, 1.0, 1.0, None, None),
        (y[..., :0], a, 4, 5, 6, 1.0, 1.0, None, None),              # no columns
        (y, a, 0, 5, 6, 1.0, 1.0, None, None),                       # zero depth
        (y, a, 4, -5, 6, 1.0, 1.0, None, None),
        (y, a, 4, 5, 2 ** 24, 1.0, 1.0, None, None),
        (y, a, 2 ** 23, 2 ** 23, 2 ** 23, 1.0, 1.0, None, None),     # volume too large
        (y, a, 4, 5, 6, 1.0, 0.0, None, None),
        (y, a, 4, 5, 6, 1.0, 1.0, 3.0, 1.0),
        (y, a, 4, 5, 6, 1.0, 1.0, None, 1.0),
        (y.double(), a.float() * math.nan, 4, 5, 6, 1.0, 1.0, None, None),
    ]
    for op in (LF._conebeam_forward, LF._conebeam_forward_gather):
        for args in bad_forward:
            with pytest.raises((RuntimeError, ValueError, TypeError)):
                op(*args)
    for op in (LF._conebeam_adjoint, LF._conebeam_adjoint_scatter):
        for args in bad_adjoint:
            with pytest.raises((RuntimeError, ValueError, TypeError)):
                op(*args)
    # the public ops refuse them too (but for meta tensors, which their fake kernel serves)
    for args in bad_forward[:-1]:
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            LF.conebeam_forward(*args)
    for args in bad_adjoint:
        with pytest.raises((RuntimeError, ValueError, TypeError)):
            LF.conebeam_adjoint(*args)
    # and the good call still works
    assert LF._conebeam_forward(x, a, 3, 7, 1.0, 1.0, 20.0, 2.0).shape == (2, 3, 3, 7)


# --- CUDA kernels: compiled here by nvcc ------------------------------------------------------

KERNELS = {"conebeam_fwd_kernel_f32", "conebeam_fwd_kernel_f64", "conebeam_adj_kernel_f32",
           "conebeam_adj_kernel_f64"}


@needs_nvcc
@pytest.mark.parametrize("arch", [80, 90])
def test_cuda_kernels_compile_without_spills(arch):
    report = ptxas_report(CONE_CU, arch, include_dirs=[CSRC])
    assert set(report) == KERNELS
    for name, r in report.items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, (name, r)
        # measured with nvcc 13.0: 56-69 (sm_80), 56-78 (sm_90)
        assert r["registers"] <= 96, (name, r)


@needs_nvcc
@pytest.mark.parametrize("arch", [80, 90])
def test_cuda_kernels_have_only_the_norms_fma_and_no_ftz(tmp_path, arch):
    """As CMake's nvcc compiles them (-O3, default -fmad=true): the per-sample math is
    unfused (common/rounding.h), so the only FMAs are the two of the ray direction's norm,
    written as torch's vector_norm computes it; nothing flushes subnormals; the adjoint
    adds with atomics (4 neighbours x CONE_IMAGES_PER_THREAD volumes)."""
    out = tmp_path / "conebeam.ptx"
    subprocess.run(["nvcc", "-ptx", "-O3", "-std=c++17", f"-arch=sm_{arch}", f"-I{CSRC}",
                    "-o", str(out), CONE_CU], check=True, capture_output=True, timeout=600)
    ptx = out.read_text()
    parts = re.split(r"(?m)^\.visible \.entry (\w+)\(", ptx)
    entries = {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    assert set(entries) == KERNELS and ".ftz" not in ptx
    for name, body in entries.items():
        assert re.findall(r"fma\.rn\.\w+", body) == ["fma.rn.f64"] * 2, name
        atomics = len(re.findall(r"\batom\.", body)) + len(re.findall(r"\bred\.", body))
        assert atomics == (4 * CONE_IMAGES_PER_THREAD if "adj" in name else 0), name


def test_kernels_index_with_64_bits_and_stride_over_y():
    text = re.sub(r"//[^\n]*", "", open(CONE_CU).read())
    # one grid-stride loop over y, for_volume_groups, which both kernels run
    assert text.count("blockIdx.y") == text.count("gridDim.y") == 1
    assert "long long n_images" in text and not re.search(r"\bint\s+n_images\b", text)
    assert "long long n0" in text and "long long r =" in text


# --- CUDA launchers on the host --------------------------------------------------------------

def _kernel_signature() -> list[str]:
    """Parameter kinds of the LF_CONE_KERNEL macro's kernels ("ptr", "int", ...)."""
    src = open(CONE_CU).read()
    macro = re.search(r"#define LF_CONE_KERNEL\(NAME, FN, T\)(.*?)\{", src, re.S).group(1)
    params = re.search(r"void NAME\((.*)\)", macro, re.S).group(1)
    kinds = []
    for p in params.replace("\\", " ").split(","):
        p = p.strip()
        kinds.append("ptr" if "*" in p else " ".join(p.split()[:-1]))
    assert set(re.findall(r"^LF_CONE_KERNEL\((\w+),", src, re.M)) == KERNELS
    return kinds


class Recorder:
    """Stands in for ``cuda_common.launch``: records (name, device, grid, args) and, with
    ``run``, runs the kernel's CPU twin on the arguments (pointers read back as arrays),
    checking that trig holds torch's cos / sin of ``angles``."""

    def __init__(self, angles=None, run=False):
        self.calls, self.angles, self.run = [], angles, run

    def __call__(self, name, device, grid, args, shared_mem=0):
        self.calls.append((name, device, tuple(int(g) for g in grid), tuple(args)))
        if not self.run:
            return
        (data, trig, n_images, n_ang, rows, cols, d, h, w, sr, sc, src, det, out) = args
        dt = torch.float32 if name.endswith("f32") else torch.float64
        npt = np.float32 if dt == torch.float32 else np.float64
        t = torch.from_numpy(view_at(trig, np.float64, 2 * n_ang).copy()).view(n_ang, 2)
        assert torch.equal(t, torch.stack((torch.cos(self.angles), torch.sin(self.angles)), -1))
        geometry = (float(sr), float(sc), float(src) if src > 0 else None,
                    float(det) if src > 0 else None)
        n_rays = int(n_ang) * int(rows) * int(cols)
        vol_n = int(n_images) * int(d) * int(h) * int(w)
        if "fwd" in name:
            x = torch.from_numpy(view_at(data, npt, vol_n).copy()).view(-1, d, h, w)
            got = LF._conebeam_forward_gather(x, self.angles, int(rows), int(cols), *geometry)
            view_at(out, npt, n_images * n_rays)[:] = got.reshape(-1).numpy()
        else:
            p = torch.from_numpy(view_at(data, npt, n_images * n_rays).copy())
            p = p.view(-1, n_ang, rows, cols)
            got = LF._conebeam_adjoint_scatter(p, self.angles, int(d), int(h), int(w), *geometry)
            view = view_at(out, npt, vol_n)
            assert not view.any()                   # the launcher zeroed it
            view[:] = got.reshape(-1).numpy()


@pytest.fixture
def fake_cuda(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(cuda_common, "launch", rec)
    monkeypatch.setattr(cone_ops, "cuda_available", lambda: True)
    return rec


def test_launch_grid_for_huge_sizes():
    grid = cone_ops._launch_grid
    assert grid("f", 2 ** 31 - 1, 10 ** 12) == (math.ceil((2 ** 31 - 1) / 256), 65535)
    assert grid("f", 180 * 96 * 96, 1) == (6480, 1)
    assert grid("f", 1, 9) == (1, 3)
    with pytest.raises(ValueError, match="conebeam_forward: too large for the CUDA kernels: rays"):
        grid("conebeam_forward", 2 ** 31, 1)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_launchers_run_the_kernels_algorithms(monkeypatch, dtype):
    """The launchers with the launch replaced by the kernels' CPU twins: the arguments
    reach the kernels in the order and types of their parameter list, the grid is one
    thread per ray by groups of volumes, and the results are the reference's."""
    angles = ANGLES[:5]
    rec = Recorder(angles, run=True)
    monkeypatch.setattr(cuda_common, "launch", rec)
    monkeypatch.setattr(cone_ops, "cuda_available", lambda: True)
    kinds = _kernel_signature()
    want_type = {"ptr": np.uint64, "int": np.int32, "long long": np.int64, "double": np.float64}
    size, shape, spacing = (5, 6, 7), (4, 9), (1.2, 0.9)
    x, y = data(size, shape, (3, 2), dtype, seed=5, n_angles=5)
    for src, det in [(None, None), (11.0, None), (11.0, 3.0)]:
        rec.calls.clear()
        got = cone_ops._forward_cuda(x, angles, *shape, *spacing, src, det)
        assert close(got, conebeam_forward_ref(x, angles, *shape, spacing, src, det), dtype)
        got = cone_ops._adjoint_cuda(y, angles, *size, *spacing, src, det)
        assert close(got, conebeam_adjoint_ref(y, angles, size, spacing, src, det), dtype)
        suffix = "f32" if dtype == torch.float32 else "f64"
        assert [c[0] for c in rec.calls] == ["conebeam_fwd_kernel_" + suffix,
                                             "conebeam_adj_kernel_" + suffix]
        for name, device, grid, args in rec.calls:
            assert device == x.device
            assert [type(a) for a in args] == [want_type[k] for k in kinds], name
            assert grid == (1, 2)                    # 180 rays, 6 volumes in groups of 4
            assert args[2] == 6 and args[11] == (src or 0.0) and args[12] == (det or 0.0)


def test_launchers_take_more_volumes_than_a_grid_row(fake_cuda):
    x = torch.zeros(262145, 1, 1, 1)
    out = cone_ops._forward_cuda(x, ANGLES[:1], 1, 1, 1.0, 1.0, None, None)
    assert out.shape == (262145, 1, 1, 1)
    name, device, grid, args = fake_cuda.calls[-1]
    assert name == "conebeam_fwd_kernel_f32" and grid == (1, 65535) and device == x.device
    assert type(args[2]) is np.int64 and args[2] == 262145
    proj = torch.zeros(262145, 1, 1, 1, dtype=torch.float64)
    cone_ops._adjoint_cuda(proj, ANGLES[:1], 1, 1, 1, 1.0, 1.0, 3.0, None)
    name, _, grid, args = fake_cuda.calls[-1]
    assert name == "conebeam_adj_kernel_f64" and grid == (1, 65535) and args[2] == 262145


def test_launchers_handle_empty_batches_and_refuse_too_many_rays(fake_cuda):
    out = cone_ops._forward_cuda(torch.zeros(0, 2, 3, 4), ANGLES[:2], 3, 5, 1.0, 1.0, None,
                                 None)
    assert out.shape == (0, 2, 3, 5)
    back = cone_ops._adjoint_cuda(torch.zeros(0, 2, 3, 5), ANGLES[:2], 2, 3, 4, 1.0, 1.0,
                                  None, None)
    assert back.shape == (0, 2, 3, 4) and fake_cuda.calls == []
    # 2^31 rays (A * rows * cols) do not fit the kernels' int ray index
    with pytest.raises(ValueError, match="rays"):
        cone_ops._forward_cuda(torch.zeros(1, 1, 1), torch.zeros(2, dtype=torch.float64),
                               2 ** 15, 2 ** 15, 1.0, 1.0, None, None)
    assert fake_cuda.calls == []


def _z(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


A3 = ANGLES[:3]
BAD = {  # label: (forward?, args, words the message holds)
    "A mismatch": (False, (_z(2, 4, 3, 5), A3, 4, 5, 6, 1.0, 1.0, None, None), "proj"),
    "empty detector": (False, (_z(2, 3, 3, 0), A3, 4, 5, 6, 1.0, 1.0, None, None), "cols"),
    "2-D volume": (True, (_z(5, 6), A3, 3, 5, 1.0, 1.0, None, None), "x"),
    "integer volume": (True, (_z(4, 5, 6, dtype=torch.int32), A3, 3, 5, 1.0, 1.0, None, None),
                       "x"),
    "complex projections": (False, (_z(3, 3, 5, dtype=torch.complex64), A3, 4, 5, 6, 1.0, 1.0,
                                    None, None), "proj"),
    "source inside": (True, (_z(4, 5, 6), A3, 3, 5, 1.0, 1.0, 2.0, None), "source_distance"),
    "NaN source": (False, (_z(3, 3, 5), A3, 4, 5, 6, 1.0, 1.0, math.nan, None),
                   "source_distance"),
    "detector without source": (True, (_z(4, 5, 6), A3, 3, 5, 1.0, 1.0, None, 2.0),
                                "detector_distance"),
    "negative detector": (False, (_z(3, 3, 5), A3, 4, 5, 6, 1.0, 1.0, 20.0, -1.0),
                          "detector_distance"),
    "zero spacing": (True, (_z(4, 5, 6), A3, 3, 5, 0.0, 1.0, None, None), "det_spacing"),
    "infinite spacing": (False, (_z(3, 3, 5), A3, 4, 5, 6, 1.0, math.inf, None, None),
                         "det_spacing"),
    "NaN angle": (True, (_z(4, 5, 6), torch.tensor([0.1, math.nan], dtype=torch.float64), 3, 5,
                         1.0, 1.0, None, None), "angles"),
    "2-D angles": (True, (_z(4, 5, 6), A3[None], 3, 5, 1.0, 1.0, None, None), "angles"),
    "no angles": (False, (_z(0, 3, 5), A3[:0], 4, 5, 6, 1.0, 1.0, None, None), "angles"),
    "zero rows": (True, (_z(4, 5, 6), A3, 0, 5, 1.0, 1.0, None, None), "rows"),
    "depth 2^24": (False, (_z(3, 3, 5), A3, 2 ** 24, 1, 1, 1.0, 1.0, None, None), "depth"),
    "angles on another device": (True, (_z(4, 5, 6), A3.to("meta"), 3, 5, 1.0, 1.0, None, None),
                                 "angles"),
}


@pytest.mark.parametrize("label", list(BAD))
def test_cuda_launchers_validate_before_launching(fake_cuda, label):
    assert_launcher_refuses(fake_cuda, (cone_ops._forward_cuda, cone_ops._adjoint_cuda),
                            BAD[label])


def test_half_precision_falls_back_to_the_reference(fake_cuda, monkeypatch):
    reasons = []
    monkeypatch.setattr(backends, "fallback", lambda op, why: reasons.append((op, why)))
    x = torch.rand(2, 3, 4, 5, dtype=torch.float16)
    out = cone_ops._forward_cuda(x, A3, 3, 6, 1.0, 1.0, 9.0, None)
    assert out.dtype == torch.float16 and out.shape == (2, 3, 3, 6)
    assert fake_cuda.calls == [] and reasons[0][0] == "conebeam_forward"
    assert "float16" in reasons[0][1]
    monkeypatch.setattr(cone_ops, "cuda_available", lambda: False)
    y = torch.rand(2, 3, 3, 6, dtype=torch.float64)
    back = cone_ops._adjoint_cuda(y, A3, 3, 4, 5, 1.0, 1.0, None, None)
    torch.testing.assert_close(back, conebeam_adjoint_ref(y, A3, (3, 4, 5)))
    assert fake_cuda.calls == [] and reasons[-1][0] == "conebeam_adjoint"
