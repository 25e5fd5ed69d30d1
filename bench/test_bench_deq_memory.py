"""Training memory of LUSER on the fast equilibrium core against the reference LUSER and LU.

CT (``luser_fast.physics.Radon``), 128 x 128 images, 128 angles, batch 4, K = 5 unrolled
steps, 64 channels (LUSER depth 2, LU depth 5), float32, CPU, one thread. One training
step (forward, MSE loss, backward) per model through ``luser_fast.profile.training_memory``:
saved bytes (saved-tensor hooks) and peak live tensor bytes (dispatch-mode tracker), plus
the structural checks of issue 3 (saved bytes independent of solver iterations and of
depth, at the K (|z*| + |v| + |x|) limit) and the parts of the fast LUSER's peak. Results
go to ``bench/results/deq_memory_cpu.json`` (keyed by machine, versions, git SHA) and are
printed.

GPU (only where one exists): the same step on the device (``training_memory`` measures the
peak there with ``torch.cuda.max_memory_allocated``) for the fast LUSER, the reference LUSER
and LU depth 5, with the seconds of the step; recorded model by model through
``harness.record_gpu_case`` into the GPU run (``bench/results/gpu_<gpu>.json``, section
``memory``), and judged by the report against issue 3's goal (LU / LUSER peak >= 8).

    pytest bench/test_bench_deq_memory.py --benchmark-only -s
"""
from __future__ import annotations

import json

import pytest
import torch

from luser_fast import reference
from luser_fast.models import LU, LUSER
from luser_fast.physics import Radon
from luser_fast.profile import LiveTensorBytes, SavedTensorBytes, harness, mse, training_memory
from luser_fast.profile.memprofile import run_memprofile

N, BATCH, K, CHANNELS, M = harness.pick((128, 4, 5, 64, 5), (32, 2, 2, 8, 5))
MAX_ITERS = harness.pick((10, 100), (3, 6))
#: ``luser-fast memprofile --vary iterations`` sweep: training memory against solver
#: iterations (CT, 32 x 32, batch 2, K 5, 32 channels), plotted by the report
SWEEP = harness.pick({"values": (5, 10, 20, 40), "size": 32, "channels": 32},
                     {"values": (2, 4), "size": 16, "channels": 4})
MIB = 2 ** 20


@pytest.fixture(scope="module")
def ct():
    op = Radon(N, angles=N)
    torch.manual_seed(0)
    x = torch.rand(BATCH, 1, N, N)
    return op, op(x), x


def _build(name, op):
    torch.manual_seed(0)
    if name == "lu_depth5":
        return LU(op, iterations=K, channels=CHANNELS, depth=5)
    cls = LUSER if name.startswith("fast") else reference.LUSER
    kwargs = {"iterations": K, "channels": CHANNELS}
    if name == "fast_luser_depth4":
        kwargs["depth"] = 4
    if name.startswith("fast_luser_maxiter"):
        # a tol no residual reaches: every solve runs exactly max_iter iterations
        kwargs["solver_kwargs"] = {"tol": 1e-30, "max_iter": int(name.rsplit("_", 1)[1])}
        kwargs["backward_kwargs"] = {"max_iter": 10}
    return cls(op, **kwargs)


def _peak_parts(op, y, x):
    """Forward-only peak, the graph f rebuilds at z*, one VJP's temporaries, the solver's
    ring buffers: the parts of the fast LUSER's step peak (MiB)."""
    model = _build("fast_luser", op)
    with LiveTensorBytes() as live:
        loss = mse(model(y), x)
        forward_peak = live.peak
        loss.backward()
    f = model.regularizers[0]
    z = torch.rand(BATCH, 1, N, N, requires_grad=True)
    v = torch.rand(BATCH, 1, N, N, requires_grad=True)
    with SavedTensorBytes() as graph:
        out = f(z, v)
    with LiveTensorBytes() as vjp:
        torch.autograd.grad(out, z, torch.ones_like(out))
    return {"forward_peak": forward_peak / MIB, "step_peak": live.peak / MIB,
            "f_graph_at_z_star": graph.bytes / MIB, "one_vjp_temporaries": vjp.peak / MIB,
            "anderson_ring_buffers": 2 * M * BATCH * N * N * 4 / MIB,
            "hidden_map": BATCH * CHANNELS * N * N * 4 / MIB}


def test_training_memory(benchmark, ct):
    op, y, x = ct
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        names = ["fast_luser", "reference_luser", "lu_depth5", "fast_luser_depth4",
                 *(f"fast_luser_maxiter_{n}" for n in MAX_ITERS)]
        reports = {}
        for name in names[1:]:
            model = _build(name, op)
            reports[name] = training_memory(model, y, x)
            if name.startswith("fast_luser_maxiter"):
                max_iter = int(name.rsplit("_", 1)[1])
                assert all((i.iterations == max_iter).all() for i in model.last_solver_info)
        model = _build("fast_luser", op)
        reports["fast_luser"] = benchmark.pedantic(training_memory, args=(model, y, x),
                                                   rounds=1, iterations=1)
        parts = _peak_parts(op, y, x)
    finally:
        torch.set_num_threads(threads)
    fast = reports["fast_luser"]
    image = x.numel() * x.element_size()
    limit = K * 3 * image + fast.param_bytes
    checks = {
        "saved maxiter high / maxiter low":
            reports[f"fast_luser_maxiter_{MAX_ITERS[1]}"].saved_bytes
            / reports[f"fast_luser_maxiter_{MAX_ITERS[0]}"].saved_bytes,
        "saved depth 4 / depth 2": reports["fast_luser_depth4"].saved_bytes / fast.saved_bytes,
        "saved / (K (|z*| + |v| + |x|) + params)": fast.saved_bytes / limit,
        "LU saved / fast LUSER saved": reports["lu_depth5"].saved_bytes / fast.saved_bytes,
        "LU peak / fast LUSER peak": reports["lu_depth5"].peak_bytes / fast.peak_bytes,
        "reference LUSER saved / fast LUSER saved":
            reports["reference_luser"].saved_bytes / fast.saved_bytes,
        "reference LUSER peak / fast LUSER peak":
            reports["reference_luser"].peak_bytes / fast.peak_bytes,
    }
    assert abs(checks["saved maxiter high / maxiter low"] - 1) <= 0.02
    assert abs(checks["saved depth 4 / depth 2"] - 1) <= 0.1
    assert checks["saved / (K (|z*| + |v| + |x|) + params)"] <= 1.2
    assert checks["LU saved / fast LUSER saved"] >= 8
    _write_report(reports, checks, parts)


def _write_report(reports, checks, parts):
    run = harness.new_run(1)
    run["setup"] = {"task": "CT parallel beam", "image": [N, N], "angles": N, "batch": BATCH,
                    "K": K, "channels": CHANNELS, "dtype": "float32",
                    "max_iters": list(MAX_ITERS)}
    run["MiB"] = {name: {"saved": round(r.saved_bytes / MIB, 3),
                         "peak": round(r.peak_bytes / MIB, 3),
                         "params": round(r.param_bytes / MIB, 3),
                         "seconds": round(r.seconds, 2)} for name, r in reports.items()}
    run["ratios"] = {k: round(v, 3) for k, v in checks.items()}
    run["fast_luser_peak_parts_MiB"] = {k: round(v, 2) for k, v in parts.items()}
    key = harness.save_run("deq_memory_cpu", run)
    print(key)
    print(json.dumps({"MiB": run["MiB"], "ratios": run["ratios"],
                      "peak parts": run["fast_luser_peak_parts_MiB"]}, indent=1))


def test_memory_against_iterations(benchmark):
    """Saved and peak bytes of a training step against solver iterations, fast LUSER vs
    reference LUSER vs LU (``luser_fast.profile.memprofile.run_memprofile``): the report's
    memory plot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = benchmark.pedantic(
            run_memprofile, kwargs=dict(vary="iterations", values=SWEEP["values"],
                                        size=SWEEP["size"], channels=SWEEP["channels"],
                                        log=lambda *a: None), rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    fast = [r["saved_bytes"] for r in rows if r["model"] == "LUSER"]
    assert max(fast) <= 1.02 * min(fast)
    run = harness.new_run(1)
    run["setup"] = {"task": "ct", "vary": "iterations", "batch": 2, "K": 5, **SWEEP}
    run["rows"] = rows
    print(harness.save_run("memprofile_cpu", run))


# --- GPU --------------------------------------------------------------------------------------

GPU_MODELS = ("fast_luser", "reference_luser", "lu_depth5")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device: the GPU benchmark runs only where one exists")
def test_training_memory_cuda(benchmark):
    """One training step per model on the GPU: saved bytes, peak bytes above what was
    allocated before the step (``torch.cuda.max_memory_allocated``) and seconds; a first
    step of each model warms up (kernel compilation, allocator), the second is recorded."""
    import inspect

    from luser_fast import backends

    defaults = inspect.signature(LUSER).parameters
    torch.manual_seed(0)
    op = Radon(N, angles=N).cuda()
    x = torch.rand(BATCH, 1, N, N, device="cuda")
    y = op(x)
    setup = {"task": "CT parallel beam", "image": [N, N], "angles": N, "batch": BATCH, "K": K,
             "channels": CHANNELS, "dtype": "float32",
             "models": "fast_luser and reference_luser: LUSER's defaults ("
                       + ", ".join(f"{k} {defaults[k].default}" for k in ("depth", "chunk"))
                       + "); lu_depth5: LU depth 5",
             "peak": "torch.cuda.max_memory_allocated during the step, minus what was "
                     "allocated before it",
             "radon backend": backends.select("radon_forward", "cuda")}
    reports = {}
    for name in GPU_MODELS:
        model = _build(name, op).cuda()
        training_memory(model, y, x)                  # warm-up
        if name == "fast_luser":
            r = benchmark.pedantic(training_memory, args=(model, y, x), rounds=1, iterations=1)
        else:
            r = training_memory(model, y, x)
        reports[name] = r
        harness.record_gpu_case("memory", name, {
            "saved_MiB": round(r.saved_bytes / MIB, 3), "peak_MiB": round(r.peak_bytes / MIB, 3),
            "params_MiB": round(r.param_bytes / MIB, 3), "seconds": round(r.seconds, 4)},
            setup=setup)
        del model
        torch.cuda.empty_cache()
    fast, lu = reports["fast_luser"], reports["lu_depth5"]
    ratios = {"LU peak / fast LUSER peak": round(lu.peak_bytes / fast.peak_bytes, 3),
              "LU saved / fast LUSER saved": round(lu.saved_bytes / fast.saved_bytes, 3),
              "reference LUSER peak / fast LUSER peak":
                  round(reports["reference_luser"].peak_bytes / fast.peak_bytes, 3),
              "fast LUSER seconds / LU seconds": round(fast.seconds / lu.seconds, 3)}
    print(f"\n{torch.cuda.get_device_name()}: training memory "
          + json.dumps({k: {"saved_MiB": round(r.saved_bytes / MIB, 2),
                            "peak_MiB": round(r.peak_bytes / MIB, 2),
                            "seconds": round(r.seconds, 4)} for k, r in reports.items()})
          + f" ratios {ratios}")
