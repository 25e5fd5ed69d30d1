"""Shared test utilities (imported by the test modules; not a test file itself)."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

#: the repository root and its C++/CUDA sources
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

#: dot-product test tolerances per real dtype (docs/DESIGN.md numerical contracts)
ADJOINT_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def randn_like_dtype(shape, dtype, generator=None, device="cpu"):
    """Standard normal tensor of `shape`; complex dtypes get independent real/imag parts."""
    if dtype.is_complex:
        real = torch.empty((), dtype=dtype).real.dtype
        re = torch.randn(shape, dtype=real, generator=generator)
        im = torch.randn(shape, dtype=real, generator=generator)
        return torch.complex(re, im).to(device)
    return torch.randn(shape, dtype=dtype, generator=generator).to(device)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product Re <a, b> (conjugating a)."""
    return torch.sum(a.conj() * b).real if a.is_complex() else torch.sum(a * b)


def adjoint_mismatch(op, x: torch.Tensor, y: torch.Tensor) -> float:
    """|<A x, y> - <x, A^H y>| / (||A x|| ||y||) -- the dot-product adjoint test."""
    ax = op(x)
    aty = op.adjoint(y)
    assert ax.shape == y.shape, (ax.shape, y.shape)
    assert aty.shape == x.shape, (aty.shape, x.shape)
    lhs, rhs = inner(ax, y), inner(x, aty)
    scale = torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(y)
    return (abs(lhs - rhs) / scale).item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def contractions(dim: int, rates, seed: int = 0, dtype=torch.float64):
    """Linear fixed-point problems z = W_i z + b_i: symmetric W_i [dim, dim] with eigenvalues
    spread over [-rate_i, rate_i] (spectral radius rate_i), and b [len(rates), dim]."""
    g = torch.Generator().manual_seed(seed)
    ws = []
    for rate in rates:
        q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64, generator=g))
        eig = torch.linspace(-rate, rate, dim, dtype=torch.float64)
        ws.append(q @ torch.diag(eig) @ q.T)
    b = torch.randn(len(rates), dim, dtype=torch.float64, generator=g)
    return torch.stack(ws).to(dtype), b.to(dtype)


def linear_map(w: torch.Tensor, b: torch.Tensor):
    """z [B, D] -> W z + b, batched over the problems of ``contractions``."""
    return lambda z: (w @ z[..., None])[..., 0] + b


def exact_fixed_point(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The solution of z = W z + b per problem, [B, D]."""
    return torch.linalg.solve(torch.eye(w.shape[-1], dtype=w.dtype) - w, b)


def poisoned_map(w: torch.Tensor, b: torch.Tensor):
    """``linear_map`` with sample 1 turning NaN after its first step and sample 3 non-finite
    from the start (for the solvers' per-sample freezing)."""
    def f(z):
        out = linear_map(w, b)(z).clone()
        if torch.count_nonzero(z[1]) > 0:      # sample 1 blows up after its first step
            out[1] = float("nan")
        out[3, 0] = float("inf")               # sample 3 is non-finite from the start
        return out
    return f


def nvrtc():
    """The NVRTC library (PyPI nvidia-cuda-nvrtc) through ctypes, or None."""
    import ctypes
    import glob
    import os
    import sys

    for pattern in ("nvidia/cu*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
        for site in sys.path:
            for path in sorted(glob.glob(os.path.join(site, pattern))):
                if "builtins" not in path:
                    return ctypes.CDLL(path)
    return None


def nvrtc_compile(code: bytes, options, name: bytes = b"all.cu", cubin: bool = False) -> bytes:
    """PTX (or, with ``cubin``, the CUBIN) of CUDA ``code`` compiled by NVRTC with
    ``options`` (str); AssertionError with NVRTC's log when compilation fails."""
    import ctypes

    lib = nvrtc()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), code, name, 0, None, None) == 0
    try:
        opts = [o.encode() for o in options]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        assert rc == 0, log.value.decode()
        kind = "CUBIN" if cubin else "PTX"
        getattr(lib, f"nvrtcGet{kind}Size")(prog, ctypes.byref(size))
        out = ctypes.create_string_buffer(size.value)
        getattr(lib, f"nvrtcGet{kind}")(prog, out)
        return out.raw[: size.value]
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def nvrtc_ptx(code: bytes, include_dir: str, arch: str, name: bytes = b"all.cu") -> bytes:
    """PTX of CUDA ``code`` compiled by NVRTC for ``arch`` (e.g. "compute_90") as CuPy
    would on a device the fatbin lacks: no standard headers, ``include_dir`` on the path."""
    return nvrtc_compile(code, ["-std=c++17", f"-I{include_dir}", f"--gpu-architecture={arch}"],
                         name)


def supersampled_disk(n: int, radius: float, ss: int = 8) -> torch.Tensor:
    """[n, n] float64 centred disk, each pixel the covered fraction on an ss x ss grid."""
    import numpy as np

    offsets = (np.arange(ss) + 0.5) / ss - 0.5
    c = np.arange(n) - (n - 1) / 2
    xs = c[None, :, None, None] + offsets[None, None, None, :]
    ys = c[:, None, None, None] + offsets[None, None, :, None]
    return torch.tensor((xs ** 2 + ys ** 2 <= radius ** 2).mean((2, 3)))


def count_plans(monkeypatch, plan_class) -> list:
    """A list that grows by one entry (the plan's image size) per ``plan_class`` built."""
    built = []
    init = plan_class.__init__

    def counting(self, *args, **kwargs):
        built.append(args[1])
        init(self, *args, **kwargs)

    monkeypatch.setattr(plan_class, "__init__", counting)
    return built


class LinearF(nn.Module):
    """The DEQ tests' linear map f(z, v) = W z + v, with W a parameter."""

    def __init__(self, w):
        super().__init__()
        self.W = nn.Parameter(w.clone())

    def forward(self, z, v):
        return z @ self.W.T + v


#: prepended to a script to run it as if the extension was never built
#: (LUSER_FAST_BUILD_EXT=0): the import of luser_fast._C fails
_NO_EXTENSION = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "luser_fast._C":
            raise ModuleNotFoundError("No module named 'luser_fast._C'", name=name)
sys.meta_path.insert(0, _Block())
"""


def run_without_extension(code: str, timeout: int = 120):
    """Run Python ``code`` (dedented) in a subprocess where luser_fast._C cannot be
    imported; returns the CompletedProcess (stdout, stderr as text)."""
    import subprocess
    import sys
    import textwrap

    return subprocess.run([sys.executable, "-c", _NO_EXTENSION + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout)


def linear_deq_solution(w: torch.Tensor, v: torch.Tensor, c: torch.Tensor):
    """For z* = W z* + v and the loss sum(c * z*): (z*, u) with u = (I - W)^-T c, per sample
    (rows of v and c); the implicit gradients are dL/dv = u and dL/dW = u z*^T summed."""
    a = torch.eye(w.shape[-1], dtype=w.dtype) - w
    return torch.linalg.solve(a, v.detach().T).T, torch.linalg.solve(a.T, c.T).T


def ptxas_report(source: str, arch: int, include_dirs=()) -> dict:
    """Compile one .cu file with nvcc for sm_<arch> and parse ``-Xptxas -v``.

    Returns:
        {kernel_name: {"registers": int, "spill_stores": int, "spill_loads": int,
                       "smem": int}} for every kernel in the file.
    """
    import re
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["nvcc", "-cubin", "-O3", "-std=c++17", f"-arch=sm_{arch}", "-Xptxas", "-v",
               *[f"-I{d}" for d in include_dirs], "-o", f"{tmp}/out.cubin", source]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed for {source} sm_{arch}:\n{r.stderr}")
    report, current = {}, None
    for line in r.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = m.group(1)
            report[current] = {"registers": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            report[current]["spill_stores"] = int(m.group(1))
            report[current]["spill_loads"] = int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            report[current]["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            report[current]["smem"] = int(m.group(1))
    return report


def write_dicom(path, arr, *, modality="CT", photometric="MONOCHROME2", slope=None,
                intercept=None, pixels=True):
    """Write ``arr`` ([H, W], [F, H, W] or [H, W, 3] integers; or [H, W] float32, stored as a
    parametric map's float pixel data) as a DICOM file of ``modality`` (CT, MR, else
    secondary capture), with an optional rescale slope / intercept; ``pixels=False``
    leaves the pixel data out. Returns the path (str)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, MRImageStorage,
                             ParametricMapStorage, SecondaryCaptureImageStorage, generate_uid)

    arr = None if not pixels else np.asarray(arr)
    floats = arr is not None and arr.dtype == np.float32
    sop = ParametricMapStorage if floats else {"CT": CTImageStorage, "MR": MRImageStorage}.get(
        modality, SecondaryCaptureImageStorage)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if floats:
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.BitsAllocated = 1, 32
        ds.PhotometricInterpretation = photometric
        ds.FloatPixelData = arr.tobytes()
    elif pixels:
        ds.set_pixel_data(arr, photometric, 8 if arr.dtype == np.uint8 else 16)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def bench_report():
    """The ``bench/report.py`` module (bench/ is not a package: imported from its folder)."""
    import importlib
    import os
    import sys

    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
    sys.path.insert(0, bench)
    try:
        return importlib.import_module("report")
    finally:
        sys.path.remove(bench)


def excite(model, scale: float) -> None:
    """conv_out of each of ``model``'s regularizers starts at 1% of its init (f nearly
    constant in z); scale it up so the equilibrium takes real solver work."""
    with torch.no_grad():
        for f in model.regularizers:
            f.conv_out.weight.mul_(scale)
            f.conv_out.bias.normal_(0, 0.01)


def outputs_and_gradients(models, y: torch.Tensor, x: torch.Tensor):
    """Each model's output on ``y`` and its parameters' gradients of mse(out, x) (one
    backward each), checking that every solve converged: (outputs, [{name: grad}])."""
    from luser_fast.profile import mse

    outs, grads = [], []
    for model in models:
        out = model(y)
        mse(out, x).backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
        assert all(i.converged.all() for i in model.last_solver_info)
    return outs, grads


def assert_plan_equals(plan, cpu_plan, n_points: int, subproblem: int) -> None:
    """A CUDA plan (2-D or 3-D) is the C++ plan ``cpu_plan`` = (order, start, weights,
    offsets) for the same bins, exactly, and its subproblems cut each bin into runs of at
    most ``subproblem`` sorted points that cover the ``n_points`` points once."""
    order, start, weights, offsets = cpu_plan
    assert torch.equal(plan.order, order) and torch.equal(plan.start, start)
    assert torch.equal(plan.bin_offsets, offsets)
    assert torch.allclose(plan.weights(torch.complex128), weights, rtol=1e-14, atol=1e-300)
    subs = plan.subproblems.long()
    assert torch.all(subs[:, 2] - subs[:, 1] <= subproblem) and torch.all(subs[:, 2] > subs[:, 1])
    covered = torch.zeros(n_points, dtype=torch.long)
    for b, p0, p1 in subs.tolist():
        assert offsets[b] <= p0 < p1 <= offsets[b + 1]
        covered[p0:p1] += 1
    assert torch.all(covered == 1)


def assert_launcher_refuses(fake_cuda, launchers, case) -> None:
    """``case`` = (forward, args, words): the forward (else the adjoint) CUDA launcher of
    ``launchers`` = (forward, adjoint) raises TypeError / ValueError matching ``words``
    and launches nothing."""
    import re

    import pytest

    forward, args, words = case
    launcher = launchers[0] if forward else launchers[1]
    with pytest.raises((TypeError, ValueError), match=re.escape(words)):
        launcher(*args)
    assert fake_cuda.calls == []


def assert_compiles_without_spills(source: str, arch: int, kernels: set,
                                   max_registers: int = 64) -> None:
    """nvcc compiles ``source`` for sm_<arch> into exactly ``kernels``, none spilling or
    using more than ``max_registers`` registers."""
    report = ptxas_report(source, arch, include_dirs=[CSRC])
    assert set(report) == kernels
    for name, r in report.items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, (name, r)
        assert r["registers"] <= max_registers, (name, r)


def assert_compiles_with_nvrtc(header: str, name: bytes, entry: str) -> None:
    """What CuPy compiles on a device the fatbin lacks: NVRTC, no standard headers; the
    file ``header`` (under csrc/) compiles for compute_80 and compute_90 with ``entry``."""
    for arch in ("compute_80", "compute_90"):
        ptx = nvrtc_ptx(f'#include "{header}"\n'.encode(), CSRC, arch, name)
        assert b".entry " + entry.encode() in ptx


def nufft_cuda_kernels(prefix: str) -> set:
    """The kernels of csrc/nufft/spread.cu (``prefix`` "nufft") or spread3.cu ("nufft3")."""
    return {f"{prefix}_{k}" for k in (
        "plan_points_kernel", "plan_weights_kernel",
        "spread_tile_kernel_f32", "spread_tile_kernel_f64",
        "spread_global_kernel_f32", "spread_global_kernel_f64",
        "interp_kernel_f32", "interp_kernel_f64")}


#: the NumPy scalar type of each kernel parameter type (a launch's arguments, by signature)
ARG_TYPES = {"ptr": np.uint64, "int": np.int32, "long long": np.int64, "double": np.float64}


def view_at(address, dtype, count: int):
    """A writable NumPy view of ``count`` elements at a (CPU) tensor's data pointer."""
    import ctypes

    dtype, count = np.dtype(dtype), int(count)
    if count == 0:
        return np.empty(0, dtype)
    buf = (ctypes.c_char * (count * dtype.itemsize)).from_address(int(address))
    return np.frombuffer(buf, dtype=dtype, count=count)


def assert_launches_match(calls, signatures: dict, device) -> None:
    """Every recorded launch (name, device, grid, args, shared) passes the argument types
    of its kernel's signature in ``signatures``, on ``device``, within the grid limits."""
    from luser_fast.ops import cuda_common

    for name, dev, grid, args, _ in calls:
        assert [type(a) for a in args] == [ARG_TYPES[t] for t in signatures[name]], name
        assert dev == device
        assert 1 <= grid[0] <= cuda_common.MAX_GRID_X and 1 <= grid[1] <= cuda_common.MAX_GRID_Y
