"""Tests of the Radon extension: C++ CPU kernels, CUDA kernels (compiled here, run where a
GPU exists), torch.library registration, physics.Radon on the ops, fallbacks, bad input.

Every kernel is checked against the pure-PyTorch reference (luser_fast/reference/radon.py),
which fixes the discretisation; the tolerances are 1e-5 (float32) / 1e-12 (float64)
relative, the same as the adjoint contract.
"""
from __future__ import annotations

import glob
import math
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import (ADJOINT_TOL, CSRC, adjoint_mismatch, nvrtc, nvrtc_ptx, ptxas_report,
                     rel_err, run_without_extension, supersampled_disk)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luser_fast import _ext, backends
from luser_fast import reference as ref
from luser_fast.core import radon_geometry as geo
from luser_fast.ops import cuda_common, radon_adjoint, radon_forward
from luser_fast.ops import radon as radon_ops
from luser_fast.physics import Radon
from luser_fast.reference.radon import (radon_adjoint_ref, radon_fbp_ref, radon_forward_ref)

RADON_CU = os.path.join(CSRC, "radon", "radon.cu")
REL_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
# the major-axis switch (45 deg and either side), the axes, and the fan's full circle
AWKWARD_ANGLES = torch.tensor([0.0, math.pi / 4, math.pi / 4 + 1e-9, math.pi / 2, 2.0,
                               3 * math.pi / 4 - 1e-9, math.pi, 4.0, 5.9], dtype=torch.float64)
HAS_EXT = radon_ops.HAS_CPU_KERNELS
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="the C++ extension is not built")
needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and radon_ops.cuda_available()),
    reason="no CUDA device with CuPy here: the CUDA kernels are compiled and checked for "
           "spills by nvcc, and their math runs on the CPU (_radon_*_gather), but only a GPU "
           "can run them")
CASES = [  # (H, W), batch, n_detectors, det_spacing
    ((17, 23), (2,), None, 1.0),
    ((9, 4), (2, 3), 11, 1.7),
    ((7, 1), (), 5, 0.6),
    ((1, 1), (3,), 3, 1.0),
    ((13, 13), (9,), None, 1.0),
]


def over_cases(test):
    """Parametrize ``test`` over both float dtypes, both geometries and every case."""
    for name, values in (("size,batch,n_det,spacing", CASES), ("geometry", ["parallel", "fan"]),
                         ("dtype", [torch.float32, torch.float64])):
        test = pytest.mark.parametrize(name, values)(test)
    return test


def geometry_kwargs(geometry: str, h: int, w: int) -> dict:
    if geometry == "parallel":
        return {}
    return dict(source_distance=1.5 * math.hypot(h, w) / 2 + 1.0, detector_distance=3.0)


def make_data(size, batch, n_det, spacing, geometry, dtype, seed=0):
    h, w = size
    kw = geometry_kwargs(geometry, h, w)
    op = Radon(size, angles=AWKWARD_ANGLES, n_detectors=n_det, det_spacing=spacing,
               geometry=geometry, **kw)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, h, w, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(*batch, AWKWARD_ANGLES.numel(), op.n_detectors, generator=g,
                    dtype=torch.float64).to(dtype)
    return op, x, y, dict(n_detectors=op.n_detectors, det_spacing=spacing, **kw)


def raw_args(kw: dict) -> tuple:
    return (kw["det_spacing"], kw.get("source_distance"), kw.get("detector_distance"))


# --- kernels against the reference -------------------------------------------------------

@needs_ext
@over_cases
def test_cpu_kernels_match_reference(dtype, geometry, size, batch, n_det, spacing):
    op, x, y, kw = make_data(size, batch, n_det, spacing, geometry, dtype)
    h, w = size
    want_fwd = radon_forward_ref(x, AWKWARD_ANGLES, **kw)
    want_adj = radon_adjoint_ref(y, AWKWARD_ANGLES, size, **kw)
    lf = torch.ops.luser_fast
    fwd = {"fast": lf.radon_forward(x, AWKWARD_ANGLES, op.n_detectors, *raw_args(kw)),
           "gather": lf._radon_forward_gather(x, AWKWARD_ANGLES, op.n_detectors, *raw_args(kw)),
           "physics": op(x)}
    adj = {"fast": lf.radon_adjoint(y, AWKWARD_ANGLES, h, w, *raw_args(kw)),
           "gather": lf._radon_adjoint_gather(y, AWKWARD_ANGLES, h, w, *raw_args(kw)),
           "physics": op.adjoint(y)}
    for name in fwd:
        assert fwd[name].dtype == dtype and adj[name].dtype == dtype
        assert rel_err(fwd[name], want_fwd) <= REL_TOL[dtype], name
        assert rel_err(adj[name], want_adj) <= REL_TOL[dtype], name


@needs_ext
@over_cases
def test_adjoint_dot_product(dtype, geometry, size, batch, n_det, spacing):
    op, x, y, kw = make_data(size, batch, n_det, spacing, geometry, dtype, seed=1)
    assert adjoint_mismatch(op, x, y) < ADJOINT_TOL[dtype]
    # the CUDA kernels' pair (ray gather forward, pixel gather adjoint), run on the CPU
    h, w = size
    ax = torch.ops.luser_fast._radon_forward_gather(x, AWKWARD_ANGLES, op.n_detectors,
                                                   *raw_args(kw))
    aty = torch.ops.luser_fast._radon_adjoint_gather(y, AWKWARD_ANGLES, h, w, *raw_args(kw))
    lhs, rhs = torch.sum(ax * y), torch.sum(x * aty)
    scale = torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(y)
    assert (abs(lhs - rhs) / scale).item() < ADJOINT_TOL[dtype]


@needs_ext
def test_uniform_angles_at_scale_and_many_rays_per_pixel():
    # default geometry at a realistic size; then detectors 4x finer than pixels, where the
    # adjoint gather must find 8+ candidate rays per pixel and angle
    for size, kw in [((64, 48), dict(angles=90)),
                     ((40, 40), dict(angles=60, n_detectors=230, det_spacing=0.25)),
                     ((40, 40), dict(angles=60, n_detectors=230, det_spacing=0.25,
                                     geometry="fan", source_distance=35.0,
                                     detector_distance=20.0))]:
        op = Radon(size, **kw)
        base = ref.Radon(size, **kw)
        g = torch.Generator().manual_seed(2)
        for dtype in (torch.float32, torch.float64):
            x = torch.rand(2, *size, generator=g, dtype=torch.float64).to(dtype)
            y = torch.rand(2, op.angles.numel(), op.n_detectors, generator=g,
                           dtype=torch.float64).to(dtype)
            assert rel_err(op(x), base(x)) <= REL_TOL[dtype]
            assert rel_err(op.adjoint(y), base.adjoint(y)) <= REL_TOL[dtype]
            a, h, w = op.angles, *size
            gat = torch.ops.luser_fast._radon_adjoint_gather(
                y, a, h, w, op.det_spacing, op.source_distance, op.detector_distance)
            assert rel_err(gat, base.adjoint(y)) <= REL_TOL[dtype]


@needs_ext
def test_batches_across_lane_groups_and_strides():
    # the CPU kernels process 8 (float32) / 4 (float64) images per group: batches that fill
    # groups partly, and non-contiguous inputs, give each image's own result
    g = torch.Generator().manual_seed(3)
    angles = AWKWARD_ANGLES
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(13, 19, 11, generator=g, dtype=torch.float64).to(dtype)
        y = torch.randn(13, angles.numel(), 25, generator=g, dtype=torch.float64).to(dtype)
        kw = dict(source_distance=30.0, detector_distance=4.0)
        full = radon_forward(x, angles, 25, **kw)
        back = radon_adjoint(y, angles, (19, 11), **kw)
        for n in (1, 3, 5, 9):
            torch.testing.assert_close(radon_forward(x[:n], angles, 25, **kw), full[:n],
                                       rtol=0, atol=0)
            torch.testing.assert_close(radon_adjoint(y[:n], angles, (19, 11), **kw), back[:n],
                                       rtol=0, atol=0)
        xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)[::2]
        torch.testing.assert_close(radon_forward(xt, angles, 25, **kw), full[::2])
        yt = y.transpose(-1, -2).contiguous().transpose(-1, -2)[1::3]
        torch.testing.assert_close(radon_adjoint(yt, angles, (19, 11), **kw), back[1::3])


@needs_ext
def test_ray_table_orientation_matches_reference():
    # the x-/y-major choice is discontinuous: the C++ ray setup must reproduce the
    # reference's bit for bit, including fan rays at multiples of 45 degrees
    angles = torch.cat((AWKWARD_ANGLES, torch.arange(16, dtype=torch.float64) * math.pi / 8))
    for src, det, spacing, n_det in [(None, None, 1.0, 31), (30.0, 0.0, 1.0, 31),
                                     (25.0, 7.0, 0.7, 40), (1e4, 0.0, 1.0, 21)]:
        table = torch.ops.luser_fast._radon_rays(angles, 20, 21, n_det, spacing, src, det)
        _, direction = geo.rays(angles, n_det, spacing, src, det)
        x_major = direction[:, 0].abs() >= direction[:, 1].abs()
        assert torch.equal(table[..., 3].reshape(-1).bool(), x_major)
        slope = torch.where(x_major, direction[:, 1] / direction[:, 0],
                            direction[:, 0] / direction[:, 1])
        torch.testing.assert_close(table[..., 1].reshape(-1), -slope, rtol=1e-14, atol=1e-14)
        assert bool((table[..., 4] <= table[..., 5]).all())


# --- torch.library registration -------------------------------------------------------------

def test_schemas_match_python_copy():
    for name, schema in radon_ops.SCHEMAS.items():
        got = str(getattr(torch.ops.luser_fast, name).default._schema)
        assert got == f"luser_fast::{name}{schema}"


@pytest.mark.parametrize("geometry", [(None, None), (20.0, 3.0)])
def test_opcheck(geometry):
    g = torch.Generator().manual_seed(4)
    angles = torch.tensor([0.3, math.pi / 4, 2.0], dtype=torch.float64)
    x = torch.randn(2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.luser_fast.radon_forward.default,
                          (x, angles, 9, 0.8, *geometry))
    torch.library.opcheck(torch.ops.luser_fast.radon_adjoint.default,
                          (y, angles, 5, 6, 0.8, *geometry))


def test_gradcheck():
    g = torch.Generator().manual_seed(5)
    angles = torch.tensor([0.3, math.pi / 4, 2.5], dtype=torch.float64)
    for kw in [{}, dict(source_distance=8.0, detector_distance=2.0)]:
        x = torch.randn(1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
        y = torch.randn(1, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: radon_forward(t, angles, 7, **kw), (x,))
        assert torch.autograd.gradcheck(lambda t: radon_adjoint(t, angles, (4, 5), **kw), (y,))
        assert torch.autograd.gradgradcheck(lambda t: radon_forward(t, angles, 7, **kw), (x,))
        op = Radon((4, 5), angles=angles, n_detectors=7, geometry="fan" if kw else "parallel",
                   **kw)
        assert torch.autograd.gradcheck(lambda t: op.fbp(t, filter="hann"), (y,))


def test_torch_compile_fullgraph_matches_eager():
    angles = torch.tensor([0.1, 1.0, 2.2, 3.0], dtype=torch.float64)

    def fn(img, sino):
        a = radon_forward(img, angles, 11, 1.0)
        b = torch.ops.luser_fast.radon_adjoint(sino, angles, 7, 8, 0.9, 20.0, 2.0)
        return a * 2.0, b + 1.0

    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(2, 7, 8, generator=g), torch.randn(2, 4, 11, generator=g)
    got = torch.compile(fn, fullgraph=True)(x, y)
    want = fn(x, y)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# --- physics operator, FBP, analytic checks ---------------------------------------------------

@pytest.mark.parametrize("geometry", ["parallel", "fan"])
def test_disk_sinogram_matches_analytic_chords(geometry):
    n, r, src, det = 96, 30.0, 150.0, 100.0
    fan = geometry == "fan"
    kw = dict(geometry="fan", source_distance=src, detector_distance=det) if fan else {}
    op = Radon(n, angles=90, **kw)
    sino = op(supersampled_disk(n, r).float())
    u = (torch.arange(op.n_detectors, dtype=torch.float64) - (op.n_detectors - 1) / 2)
    s = src * u / torch.sqrt((src + det) ** 2 + u ** 2) if fan else u  # ray to centre
    chord = 2 * torch.sqrt((r ** 2 - s ** 2).clamp(min=0))
    err = torch.linalg.vector_norm(sino.double() - chord, dim=-1) / torch.linalg.vector_norm(chord)
    assert err.max() <= 0.02


@pytest.mark.parametrize("geometry", ["parallel", "fan"])
def test_fbp_matches_reference(geometry):
    n = 33
    kw = {} if geometry == "parallel" else dict(geometry="fan", source_distance=40.0,
                                                detector_distance=10.0)
    op, base = Radon(n, angles=40, **kw), ref.Radon(n, angles=40, **kw)
    g = torch.Generator().manual_seed(7)
    y = torch.rand(2, 40, op.n_detectors, generator=g, dtype=torch.float64)
    for name in ("ramp", "shepp-logan", "cosine", "hann"):
        assert rel_err(op.fbp(y, filter=name), base.fbp(y, filter=name)) <= 1e-12
    assert rel_err(op.fbp(y.float()), base.fbp(y.float())) <= 1e-5


def test_fbp_matches_skimage_iradon():
    skt = pytest.importorskip("skimage.transform")
    from skimage.data import shepp_logan_phantom

    n = 101
    img = skt.resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    theta = np.arange(180.0)
    op = Radon(n, angles=torch.tensor(np.deg2rad(theta)))
    sino = op(torch.tensor(img))
    rec = op.fbp(sino).numpy()
    # scikit-image's conventions coincide with ours for odd n and odd D (101 -> 143)
    want = skt.iradon(sino.numpy().T, theta=theta, filter_name="ramp", circle=False)
    assert np.linalg.norm(rec - want) / np.linalg.norm(want) < 0.05


def test_backend_selection(monkeypatch):
    op = Radon(12, angles=6)
    x = torch.rand(1, 12, 12, dtype=torch.float64)
    want = radon_forward_ref(x, op.angles)
    monkeypatch.setenv("LUSER_FAST_BACKEND", "reference")
    assert backends.select("radon_forward", "cpu") == "reference"
    torch.testing.assert_close(op(x), want, rtol=1e-12, atol=1e-12)
    # the global variable is a preference: an op it cannot serve on this device picks as
    # auto does; a per-op variable or a backend= argument is a request and raises
    monkeypatch.setenv("LUSER_FAST_BACKEND", "cuda")
    torch.testing.assert_close(op(x), want, rtol=1e-12, atol=1e-12)
    assert backends.select("radon_forward", "cpu") == ("cpu" if HAS_EXT else "reference")
    monkeypatch.setenv("LUSER_FAST_BACKEND_RADON_FORWARD", "cuda")
    with pytest.raises(RuntimeError, match="cannot serve it on cpu"):
        op(x)
    op.adjoint(torch.zeros(1, 6, op.n_detectors, dtype=x.dtype))   # other ops unaffected
    monkeypatch.delenv("LUSER_FAST_BACKEND_RADON_FORWARD")
    with pytest.raises(RuntimeError, match="'cuda' was requested for radon_adjoint"):
        radon_adjoint(torch.zeros(1, 6, op.n_detectors), op.angles, 12, backend="cuda")
    monkeypatch.setenv("LUSER_FAST_BACKEND", "cpu")
    if HAS_EXT:
        torch.testing.assert_close(op(x), want, rtol=1e-12, atol=1e-12)
    else:
        with pytest.raises(RuntimeError, match="cannot serve"):
            radon_forward(x, op.angles, backend="cpu")


def test_half_precision_is_computed_in_float32():
    x = torch.rand(2, 10, 12)
    angles = torch.linspace(0, 3, 7, dtype=torch.float64)
    for dtype in (torch.float16, torch.bfloat16):
        got = radon_forward(x.to(dtype), angles)
        assert got.dtype == dtype
        want = radon_forward(x.to(dtype).float(), angles).to(dtype)
        torch.testing.assert_close(got, want)
        back = radon_adjoint(got, angles, (10, 12))
        assert back.dtype == dtype and back.shape == x.shape


def test_reference_serves_without_extension():
    # the extension import is blocked as if it was never built (LUSER_FAST_BUILD_EXT=0)
    r = run_without_extension("""
        import math
        import torch, luser_fast
        from luser_fast import _ext, backends
        from luser_fast.ops import radon as radon_ops
        from luser_fast.reference import Radon as RefRadon
        assert _ext.extension() is None and not radon_ops.HAS_CPU_KERNELS
        assert "not built" in _ext.build_info()["cpu_extension_reason"]
        assert backends.select("radon_forward", "cpu") == "reference"
        op, base = luser_fast.Radon(9, angles=5), RefRadon(9, angles=5)
        x = torch.rand(2, 1, 9, 9, dtype=torch.float64, requires_grad=True)
        assert torch.equal(op(x), base(x))
        y = torch.ops.luser_fast.radon_forward(x, op.angles, op.n_detectors, 1.0, None, None)
        assert torch.equal(y, base(x))
        y.sum().backward()
        assert torch.allclose(x.grad, base.adjoint(torch.ones_like(y)))
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    # the raw op called without the extension runs the reference and says so, once
    assert "Traceback" not in r.stderr
    assert r.stderr.count("radon_forward runs its reference: the C++ extension is not built") == 1


# --- bad input ------------------------------------------------------------------------------

def test_bad_inputs_raise_python_errors_naming_the_argument():
    x = torch.zeros(1, 8, 10)
    a = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y = torch.zeros(1, 2, 15)
    cases = [
        (lambda: radon_forward(x.long(), a), ValueError, "x must be a real floating"),
        (lambda: radon_forward(x.to(torch.complex64), a), ValueError, "x must be a real"),
        (lambda: radon_forward(torch.zeros(5), a), ValueError, "x must have at least 2"),
        (lambda: radon_forward(x.numpy(), a), TypeError, "x must be a torch.Tensor"),
        (lambda: radon_forward(x, [0.0, 1.0]), TypeError, "angles must be a 1-D"),
        (lambda: radon_forward(x, a[None]), ValueError, "angles must be a non-empty 1-D"),
        (lambda: radon_forward(x, a[:0]), ValueError, "angles must be a non-empty 1-D"),
        (lambda: radon_forward(x, a.to(torch.complex128)), ValueError, "angles must be real"),
        (lambda: radon_forward(x, a * math.inf), ValueError, "angles must be finite"),
        (lambda: radon_forward(x, a, 0), ValueError, "n_detectors must be positive"),
        (lambda: radon_forward(x, a, 3.5), TypeError, "n_detectors must be an int"),
        (lambda: radon_forward(x, a, det_spacing=-1.0), ValueError, "det_spacing"),
        (lambda: radon_forward(x, a, source_distance=2.0), ValueError, "source_distance"),
        (lambda: radon_forward(x, a, detector_distance=2.0), ValueError, "detector_distance"),
        (lambda: radon_adjoint(y, a, (8, 10), 14), ValueError, "sino must end in"),
        (lambda: radon_adjoint(y, a, (8, 0)), ValueError, "image_size"),
        (lambda: radon_adjoint(y, a, "8"), TypeError, "image_size"),
        (lambda: radon_adjoint(y.long(), a, 8), ValueError, "sino must be a real floating"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


@needs_ext
def test_raw_op_rejects_bad_input_without_crashing():
    # called directly, bypassing the Python checks: TORCH_CHECK raises, C++ never crashes
    lf = torch.ops.luser_fast
    x = torch.zeros(1, 8, 10)
    a = torch.tensor([0.0, 1.0], dtype=torch.float64)
    cases = [
        (lambda: lf.radon_forward(x.long(), a, 15, 1.0, None, None), "x must be float32"),
        (lambda: lf.radon_forward(torch.zeros(4), a, 15, 1.0, None, None), "x must have"),
        (lambda: lf.radon_forward(x, a[None], 15, 1.0, None, None), "angles must be"),
        (lambda: lf.radon_forward(x, a[:0], 15, 1.0, None, None), "angles must be"),
        (lambda: lf.radon_forward(x, a, 0, 1.0, None, None), "n_detectors"),
        (lambda: lf.radon_forward(x, a, 15, 0.0, None, None), "det_spacing"),
        (lambda: lf.radon_forward(x, a, 15, 1.0, 3.0, None), "source_distance"),
        (lambda: lf.radon_forward(x, a, 15, 1.0, None, 3.0), "detector_distance"),
        (lambda: lf.radon_adjoint(torch.zeros(1, 3, 15), a, 8, 10, 1.0, None, None), "sino"),
        (lambda: lf.radon_adjoint(torch.zeros(1, 2, 15), a, 0, 10, 1.0, None, None), "size"),
        (lambda: lf._radon_adjoint_gather(torch.zeros(1, 2, 15), a, -1, 10, 1.0, None, None),
         "size"),
    ]
    for call, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call()
    # non-finite angles reach the kernels only this way: forward and adjoint both refuse them
    bad = torch.tensor([math.nan, 0.0])
    with pytest.raises(RuntimeError, match="radon_forward: angles must be finite"):
        lf.radon_forward(torch.ones(1, 8, 10), bad, 15, 1.0, None, None)
    with pytest.raises(RuntimeError, match="radon_adjoint: angles must be finite"):
        lf.radon_adjoint(torch.ones(1, 2, 15), bad, 8, 10, 1.0, None, None)


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32,
          torch.complex64, torch.bool]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.integers(0, 3), max_size=2), h=st.integers(0, 9), w=st.integers(0, 9),
       dtype=st.sampled_from(DTYPES), n_angles=st.integers(0, 4),
       angle_scale=st.sampled_from([1.0, 1e6, math.nan]),
       n_det=st.one_of(st.none(), st.integers(-1, 14)),
       spacing=st.sampled_from([1.0, 0.3, 4.0, 0.0, -1.0, math.inf]),
       src=st.sampled_from([None, 3.0, 9.0, 1e9, math.nan]),
       det=st.sampled_from([None, 0.0, 5.0, -1.0]),
       transposed=st.booleans(), adjoint=st.booleans(), device=st.sampled_from(DEVICES))
def test_fuzz_no_crash(batch, h, w, dtype, n_angles, angle_scale, n_det, spacing, src, det,
                       transposed, adjoint, device):
    """Any call either raises TypeError/ValueError naming an argument or returns a finite
    tensor of the right shape (never a C++ crash)."""
    g = torch.Generator().manual_seed(8)
    angles = torch.rand(n_angles, generator=g, dtype=torch.float64) * angle_scale
    kw = dict(det_spacing=spacing, source_distance=src, detector_distance=det)
    names = ("x", "sino", "angles", "image_size", "n_detectors", "det_spacing",
             "source_distance", "detector_distance")
    if adjoint:
        d = n_det if n_det is not None else max(1, math.ceil(math.sqrt(2) * max(h, w, 1)))
        shape = (*batch, n_angles, max(d, 0))
    else:
        shape = (*batch, h, w)
    data = torch.ones(shape).to(device=device, dtype=dtype)
    if transposed and data.dim() >= 2:
        data = data.transpose(-1, -2).contiguous().transpose(-1, -2)
    try:
        if adjoint:
            out = radon_adjoint(data, angles, (h, w), n_det, **kw)
        else:
            out = radon_forward(data, angles, n_det, **kw)
    except (TypeError, ValueError) as exc:
        assert re.search(r"\b(" + "|".join(names) + r")\b", str(exc)), str(exc)
        return
    assert out.dtype == dtype
    assert bool(torch.isfinite(out.float()).all())
    if adjoint:
        assert out.shape == (*batch, h, w)
    else:
        assert out.shape == (*batch, n_angles, out.shape[-1])


# --- CUDA: compiled here, run where a GPU exists ---------------------------------------------

def _fatbin_entries(path: str) -> list[tuple[str, int]]:
    """(kind, sm) of every entry of a CUDA fatbin container: kind "elf" (cubin) or "ptx".
    Layout: a 16-byte header (magic 0xBA55ED50, version, header size, payload size), then
    entries, each with a header (kind u16, ..., header size u32 at 4, payload size u64 at
    8, architecture u32 at 28) followed by its payload."""
    data = open(path, "rb").read()
    magic, _, header, size = struct.unpack_from("<IHHQ", data, 0)
    assert magic == 0xBA55ED50, hex(magic)
    entries, off = [], header
    while off < header + size:
        kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, off)
        (arch,) = struct.unpack_from("<I", data, off + 28)
        entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
        off += entry_header + payload
    return entries


@pytest.mark.skipif(not os.path.exists(_ext.FATBIN),
                    reason="no fatbin: nvcc was absent when the package was built")
def test_fatbin_holds_sm80_sm90_and_ptx():
    entries = _fatbin_entries(_ext.FATBIN)
    assert ("elf", 80) in entries and ("elf", 90) in entries and ("ptx", 90) in entries
    cuobjdump = shutil.which("cuobjdump") or next(iter(glob.glob(os.path.join(
        os.path.dirname(sys.executable), "..", "lib", "python*", "site-packages", "nvidia",
        "cu*", "bin", "cuobjdump"))), None)
    if cuobjdump is None:
        return
    # cross-check with NVIDIA's tool (PyPI nvidia-cuda-cuobjdump): every Radon kernel is in
    # both cubins and none uses local memory (no spills)
    listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", _ext.FATBIN],
                             capture_output=True, text=True, check=True).stdout
    assert "sm_80.cubin" in listing and "sm_90.cubin" in listing and "sm_90.ptx" in listing
    usage = subprocess.run([cuobjdump, "--dump-resource-usage", _ext.FATBIN],
                           capture_output=True, text=True, check=True).stdout
    for kernel in ("radon_fwd_kernel_f32", "radon_adj_kernel_f32", "radon_adj_fan_kernel_f64"):
        assert usage.count(f"Function {kernel}:") == 2
    assert "LOCAL:0" in usage and not any(
        "LOCAL:" in line and "LOCAL:0" not in line for line in usage.splitlines())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", [80, 90])
def test_cuda_kernels_compile_without_spills(arch):
    report = ptxas_report(RADON_CU, arch, include_dirs=[CSRC])
    want = {"radon_rays_kernel", "radon_fwd_kernel_f32", "radon_fwd_kernel_f64",
            "radon_adj_kernel_f32", "radon_adj_kernel_f64", "radon_adj_fan_kernel_f32",
            "radon_adj_fan_kernel_f64"}
    assert set(report) == want
    for name, r in report.items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, (name, r)
        assert r["registers"] <= 96, (name, r)  # measured 36-69 (sm_80), 30-63 (sm_90)


def _kernel_signatures() -> dict[str, list[str]]:
    """Parameter kinds ("ptr", "int", "long long", "double") of every extern "C" kernel in
    radon.cu, including those the LF_RADON_ADJ_KERNEL macro stamps out."""
    src = open(RADON_CU).read()

    def kinds(params: str) -> list[str]:
        out = []
        for p in params.replace("\\", " ").split(","):
            p = p.strip()
            kind = "ptr" if "*" in p else " ".join(p.split()[:-1])
            assert kind in ("ptr", "int", "long long", "double"), p
            out.append(kind)
        return out

    sigs = {m.group(1): kinds(m.group(2)) for m in re.finditer(
        r'extern "C" __global__ void (\w+)\(([^)]*)\)', src)}
    macro = re.search(r"#define LF_RADON_ADJ_KERNEL\(NAME, T, FAN\)(.*?)\{", src, re.S).group(1)
    params = re.search(r"void NAME\((.*)\)", macro, re.S).group(1)
    for name in re.findall(r"^LF_RADON_ADJ_KERNEL\((\w+),", src, re.M):
        sigs[name] = kinds(params)
    sigs.pop("NAME", None)
    return sigs


def test_cuda_launches_match_kernel_signatures(monkeypatch):
    """The launchers, run with the launch itself recorded instead of executed (no GPU here):
    every kernel exists in radon.cu and gets its parameters' count and types."""
    calls = []
    monkeypatch.setattr(cuda_common, "launch", lambda name, device, grid, args, shared_mem=0:
                        calls.append((name, grid, args)))
    monkeypatch.setattr(radon_ops, "cuda_available", lambda: True)
    sigs = _kernel_signatures()
    assert len(sigs) == 7
    angles = AWKWARD_ANGLES
    for dtype in (torch.float32, torch.float64):
        x = torch.zeros(9, 2, 7, 6, dtype=dtype)
        y = torch.zeros(9, 2, angles.numel(), 11, dtype=dtype)
        for src, det in [(None, None), (20.0, None), (20.0, 4.0)]:
            calls.clear()
            out = radon_ops._forward_cuda(x, angles, 11, 1.0, src, det)
            assert out.shape == (9, 2, angles.numel(), 11) and out.dtype == dtype
            back = radon_ops._adjoint_cuda(y, angles, 7, 6, 1.0, src, det)
            assert back.shape == (9, 2, 7, 6) and back.dtype == dtype
            suffix = "f32" if dtype == torch.float32 else "f64"
            adj = ("radon_adj_fan_kernel_" if src else "radon_adj_kernel_") + suffix
            assert [c[0] for c in calls] == ["radon_rays_kernel", "radon_fwd_kernel_" + suffix,
                                             "radon_rays_kernel", adj]
            for name, grid, args in calls:
                want = {"ptr": np.uint64, "int": np.int32, "long long": np.int64,
                        "double": np.float64}
                assert [type(a) for a in args] == [want[k] for k in sigs[name]], name
                assert len(grid) == 2 and 1 <= grid[1] <= 65535 and grid[0] >= 1
            # one thread per ray (forward) / pixel (adjoint), 4 images per thread
            assert calls[1][1] == (1, 5) and calls[3][1] == (1, 5)


@pytest.mark.skipif(nvrtc() is None or not os.path.exists(
    os.path.join(_ext.CUDA_SRC_DIR, "all.cu")),
    reason="no NVRTC library (PyPI nvidia-cuda-nvrtc) or no shipped CUDA sources")
def test_shipped_sources_compile_with_nvrtc():
    """What CuPy compiles on a device the fatbin lacks: the shipped sources (here the Radon
    part of all.cu), with NVRTC's builtins only (no standard headers)."""
    src_dir = _ext.CUDA_SRC_DIR
    with open(os.path.join(src_dir, "all.cu"), "rb") as fh:
        assert b'#include "radon/radon.cu"' in fh.read()
    for arch in ("compute_80", "compute_90"):
        ptx = nvrtc_ptx(b'#include "radon/radon.cu"\n', src_dir, arch)
        assert b".entry radon_adj_fan_kernel_f32" in ptx


@needs_gpu
@over_cases
def test_cuda_kernels_match_reference(dtype, geometry, size, batch, n_det, spacing):
    op, x, y, kw = make_data(size, batch, n_det, spacing, geometry, dtype, seed=9)
    op = op.cuda()
    xc, yc = x.cuda(), y.cuda()
    assert backends.select("radon_forward", "cuda") == "cuda"
    assert rel_err(op(xc).cpu(), radon_forward_ref(x, AWKWARD_ANGLES, **kw)) <= REL_TOL[dtype]
    assert rel_err(op.adjoint(yc).cpu(),
                   radon_adjoint_ref(y, AWKWARD_ANGLES, size, **kw)) <= REL_TOL[dtype]
    assert adjoint_mismatch(op, xc, yc) < ADJOINT_TOL[dtype]


@needs_gpu
def test_cuda_opcheck_and_fbp():
    angles = torch.tensor([0.3, math.pi / 4, 2.0], dtype=torch.float64, device="cuda")
    x = torch.randn(5, 5, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.luser_fast.radon_forward.default,
                          (x, angles, 9, 0.8, 20.0, 3.0))
    y = torch.randn(5, 3, 9, dtype=torch.float64, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.luser_fast.radon_adjoint.default,
                          (y, angles, 5, 6, 0.8, None, None))
    op = Radon(31, angles=30)
    s = torch.rand(2, 30, op.n_detectors, dtype=torch.float64)
    assert rel_err(op.cuda().fbp(s.cuda()).cpu(), radon_fbp_ref(s, op.angles.cpu(), 31)) <= 1e-12
