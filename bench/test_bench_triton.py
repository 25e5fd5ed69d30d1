"""GPU benchmarks of the Triton kernels (shallow map forward and VJP, Anderson step and mix).

Configurations: channels 32 and 64, images 128x128 and 256x256, batch 8, one image
channel, float32, depth 2, GroupNorm (4 groups), GELU. Each case first checks the
Triton result against the PyTorch reference on the same device, then times both with
``triton.testing.do_bench`` (median ms) and reports GB/s from the kernel's bytes-moved
model (``luser_fast.ops.shallow.bytes_per_map`` / the model in ``luser_fast/ops/anderson.py``)
and the fraction of the device's memory bandwidth, with the speed-up over the reference
measured in the same run. Each case is recorded as soon as it is measured, through
``harness.record_gpu_case``, into the GPU run (``bench/results/gpu_<gpu>.json``, keyed by
GPU name, driver, CUDA, torch version and git SHA; section ``triton``; the device's peak
bandwidth and where it was read are in the run's ``gpu`` entry, ``harness.gpu_info``).
Without a CUDA device (or without Triton) every case is skipped.

    pytest bench/test_bench_triton.py -s
"""
from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="the triton extra is not installed")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the Triton benchmarks need a GPU", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1: interpreter timings are meaningless", allow_module_level=True)

from triton.testing import do_bench  # noqa: E402

from luser_fast.ops import anderson as A  # noqa: E402
from luser_fast.profile import harness  # noqa: E402
from luser_fast.ops import shallow as S  # noqa: E402
from luser_fast.reference import ShallowEquilibrium  # noqa: E402

BATCH, GROUPS = 8, 4
CASES = harness.pick([(c, n) for c in (32, 64) for n in (128, 256)], [(8, 32)])
ANDERSON_D = harness.pick([128 * 128, 256 * 256, 1 << 22], [1024])
GPU = harness.gpu_info()
SETUP = {"batch": BATCH, "groups": GROUPS, "image_channels": 1, "depth": 2,
         "activation": "gelu", "dtype": "float32",
         "timer": "triton.testing.do_bench, median ms",
         "bandwidth_B_s": GPU["bandwidth_B_s"], "bandwidth_source": GPU["bandwidth_source"]}


def _record(benchmark, fast, name, ms_fast, ms_ref, nbytes, extra):
    """Record one case (at once, so a run stopped by its budget keeps it); also time
    ``fast`` through pytest-benchmark (the suites run with --benchmark-only),
    synchronising so its clock sees the GPU work. The fraction of bandwidth is None when
    the device's bandwidth is unknown."""
    bw = GPU["bandwidth_B_s"]
    gbs = nbytes / (ms_fast * 1e-3) / 1e9
    row = {"ms": ms_fast, "ms_reference": ms_ref, "speedup": ms_ref / ms_fast,
           "bytes_model": nbytes, "GB_s": gbs,
           "fraction_of_bandwidth": gbs * 1e9 / bw if bw else None, **extra}
    harness.record_gpu_case("triton", name, row, setup=SETUP)
    print(name, {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in row.items()})
    benchmark.extra_info.update(row)
    benchmark.pedantic(lambda: (fast(), torch.cuda.synchronize()), rounds=5, warmup_rounds=1)


def _model(c):
    torch.manual_seed(0)
    return ShallowEquilibrium(1, c, depth=2, groups=GROUPS).cuda()


def _args(m):
    return ([m.conv_in.weight, m.conv_out.weight], [m.conv_in.bias, m.conv_out.bias],
            [m.norms[0].weight], [m.norms[0].bias], GROUPS, "gelu", m.norms[0].eps)


@pytest.mark.parametrize("c,n", CASES)
def test_shallow_map_forward(benchmark, c, n):
    m = _model(c)
    z = torch.randn(BATCH, 1, n, n, device="cuda")
    v = torch.randn_like(z)
    with torch.no_grad():
        inj = S.shallow_inject_fwd(v, m.inject.weight)
        fast = lambda: S.shallow_map_fwd(z, inj, v, *_args(m))  # noqa: E731
        ref = lambda: S.shallow_map_ref(z, inj, v, *_args(m))   # noqa: E731
        torch.testing.assert_close(fast(), m(z, v), rtol=1e-4, atol=1e-4)
        ms_fast, ms_ref = do_bench(fast), do_bench(ref)
    with torch.no_grad():
        _record(benchmark, fast, f"shallow_fwd_c{c}_{n}", ms_fast, ms_ref,
                BATCH * S.bytes_per_map(c, 1, n, n), {"channels": c, "size": n})


@pytest.mark.parametrize("c,n", CASES)
def test_shallow_map_vjp(benchmark, c, n):
    """J^T u only (the per-iteration work of the backward solve)."""
    m = _model(c)
    z = torch.randn(BATCH, 1, n, n, device="cuda")
    v, u = torch.randn_like(z), torch.randn_like(z)
    with torch.no_grad():
        inj = S.shallow_inject_fwd(v, m.inject.weight)
    fast = lambda: S.shallow_map_bwd(u, z, inj, v, *_args(m), param_grads=False)[0]  # noqa: E731
    zr = z.clone().requires_grad_()

    def ref():
        return torch.autograd.grad(S.shallow_map_ref(zr, inj, v, *_args(m)), zr, u)[0]

    with torch.no_grad():
        got = fast()
    torch.testing.assert_close(got, ref(), rtol=1e-3, atol=1e-4)
    ms_fast, ms_ref = do_bench(fast), do_bench(ref)
    # recompute (forward model) + backward: read u, y (C), write da (C), read da and y
    # again with the GN coefficients, write dz
    p = n * n * 4
    nbytes = BATCH * (S.bytes_per_map(c, 1, n, n) + (1 + 3 * c + 1) * p)
    _record(benchmark, fast, f"shallow_vjp_c{c}_{n}", ms_fast, ms_ref, nbytes, {"channels": c, "size": n})


@pytest.mark.parametrize("d", ANDERSON_D)
def test_anderson_step_and_mix(benchmark, d):
    """One iteration's history update and mixing (m = 5, all slots full); D = 128^2 and
    256^2 are LUSER's image states, 2^22 shows the bandwidth-bound regime."""
    m = 5
    hf = torch.randn(BATCH, m, d, device="cuda")
    hg = torch.randn_like(hf)
    fz, z = torch.randn(BATCH, d, device="cuda"), torch.randn(BATCH, d, device="cuda")
    act = torch.ones(BATCH, dtype=torch.bool, device="cuda")
    alpha = torch.softmax(torch.randn(BATCH, m, device="cuda"), -1)
    want = A.anderson_step_ref(fz, z, hf.clone(), hg.clone(), act, 2, m)
    torch.testing.assert_close(A.anderson_step_fwd(fz, z, hf.clone(), hg.clone(), act, 2, m),
                               want, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(A.anderson_mix_fwd(hf, hg, alpha, act, None, 1.0),
                               A.anderson_mix_ref(hf, hg, alpha, act, None, 1.0))
    fast = lambda: (A.anderson_step_fwd(fz, z, hf, hg, act, 2, m),  # noqa: E731
                    A.anderson_mix_fwd(hf, hg, alpha, act, None, 1.0))
    ms_fast = do_bench(fast)
    ms_ref = do_bench(lambda: (A.anderson_step_ref(fz, z, hf, hg, act, 2, m),
                               A.anderson_mix_ref(hf, hg, alpha, act, None, 1.0)))
    nbytes = BATCH * ((m + 3) + (m + 1)) * d * 4
    _record(benchmark, fast, f"anderson_d{d}", ms_fast, ms_ref, nbytes, {"D": d, "m": m})
