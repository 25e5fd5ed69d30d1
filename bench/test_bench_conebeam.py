"""Cone-beam CT benchmarks (issue 15): luser_fast's C++ CPU projector against the pure-PyTorch
reference and against this machine's memory bandwidth.

Problem: a 64^3 float32 volume, 90 angles on a full circle, a 96 x 96 flat detector (source
128 voxels from the rotation axis, detector 64 beyond it, spacing 1.5, i.e. 1.0 at the
isocentre: the whole volume is in view), batch 1 and 4.

Measured (every timing preceded by a correctness check against the reference):

- luser_fast forward and adjoint, batch 1 and 4, on one thread (the per-core figures) and
  batch 4 on THREADS threads (the scaling);
- reference / luser_fast forward + adjoint, batch 1 and 4, on one thread: both on the first
  REF_ANGLES angles of the same geometry (the reference takes seconds per angle), called in
  interleaved rounds so load from other processes hits both alike; its time per ray is the
  same at any angle count, so the ratio holds for the full problem;
- voxel-ray updates per second per core: updates = 4 x the samples the rays take (each
  sample of Joseph's method interpolates 4 voxels of the plane it crosses; a ray takes one
  sample per plane across its major axis inside the volume, counted exactly from the
  geometry) x the batch, divided by the one-thread time (forward and adjoint alike);
- the machine's stream bandwidth: a torch copy of a 256 MiB float32 tensor (bytes read plus
  bytes written per second), on one thread and on THREADS threads, in the same run.

Memory-bandwidth model (stated here, compared with the measurement in the report). Each
update reads one voxel value (forward: sizeof(float) = 4 bytes) or reads and writes one
(adjoint: 8 bytes). If every update went to DRAM (no reuse at all), one core could do at
most ``bandwidth (1 thread) / bytes per update`` updates per second: the *streaming
bound*. The least traffic a call can make is reading its input and writing its output
once (forward: the volume and the projections; adjoint: the projections and the volume):
the *compulsory bound* on its time. A Joseph projector reuses each voxel across
neighbouring rays and angles, and a 64^3 float32 volume (1 MiB; 5 MiB padded and
interleaved for a batch of 4) stays in this CPU's L2 / L3 caches, so DRAM traffic is close
to the compulsory one and the projector is bound by its arithmetic (sample positions and
interpolation weights in float64, ~25 instructions per sample) and by cache latency: the
report shows how far the measured rates are from the streaming bound (the rate DRAM alone
would allow without caches) and from the compulsory time.

Everything goes through ``harness`` to ``bench/results/conebeam_cpu.json`` (keyed by
machine, versions and git SHA) and is printed; ``bench/report.py`` renders it.

    pytest bench/test_bench_conebeam.py --benchmark-only
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from luser_fast.core import conebeam_geometry as geo
from luser_fast.ops import conebeam as cone_ops
from luser_fast.profile import harness
from luser_fast.reference.conebeam import conebeam_adjoint_ref, conebeam_forward_ref

N, N_ANGLES, ROWS, THREADS = harness.pick((64, 90, 96, 2), (12, 6, 16, 2))
COLS = ROWS
BATCHES = (1, 4)
#: angles of the reference comparison (a prefix of the full problem's)
REF_ANGLES = harness.pick(6, 2)
SRC, DET, SPACING = 2.0 * N, 1.0 * N, (1.5, 1.5)
#: bytes of the stream-bandwidth copy
STREAM_BYTES = harness.pick(256, 8) * 2 ** 20
needs_ext = pytest.mark.skipif(not cone_ops.HAS_CPU_KERNELS,
                               reason="the C++ extension lacks the cone-beam kernels")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((a - b).double()) / torch.linalg.vector_norm(b.double()))


def samples_per_call(angles: torch.Tensor) -> int:
    """Joseph samples all rays of one projection take inside the volume (module docstring):
    per ray the steps s in [0, n_major) where both minor fractional indices f0 + s df lie
    in [-1, n) (there the sample touches the volume)."""
    origin, direction = geo.rays(angles, (ROWS, COLS), SPACING, SRC, DET)
    major, minors, f0, df, _ = geo.joseph_steps(origin, direction, (N, N, N))
    extent = torch.tensor([N, N, N], dtype=torch.float64)
    n_min, n_maj = extent[minors], extent[major]
    lo = torch.zeros_like(n_maj)
    hi = n_maj.clone()
    for m in range(2):
        f, d, n = f0[:, m], df[:, m], n_min[:, m]
        safe = torch.where(d == 0, torch.ones_like(d), d)
        a, b = (-1.0 - f) / safe, (n - f) / safe          # where f crosses -1 and n
        inc_lo, inc_hi = torch.ceil(a), torch.ceil(b)     # increasing f: [ceil a, ceil b)
        dec_lo, dec_hi = torch.floor(b) + 1, torch.floor(a) + 1
        inside = (f >= -1.0) & (f < n)                    # d == 0: all steps or none
        lo = torch.maximum(lo, torch.where(d > 0, inc_lo, torch.where(d < 0, dec_lo,
                           torch.where(inside, 0.0, n_maj))))
        hi = torch.minimum(hi, torch.where(d > 0, inc_hi, torch.where(d < 0, dec_hi,
                           torch.where(inside, n_maj, 0.0))))
    return int((hi - lo).clamp(min=0).sum())


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    angles = geo.uniform_angles(N_ANGLES, cone=True)
    x = torch.rand(max(BATCHES), N, N, N, generator=g)
    y = torch.rand(max(BATCHES), N_ANGLES, ROWS, COLS, generator=g)
    return {"angles": angles, "x": x, "y": y, "samples": samples_per_call(angles),
            "samples_ref": samples_per_call(angles[:REF_ANGLES])}


@pytest.fixture(scope="module")
def report():
    with harness.collect(THREADS, _write_report) as results:
        yield results


def forward(x, angles):
    return torch.ops.luser_fast.conebeam_forward(x, angles, ROWS, COLS, *SPACING, SRC, DET)


def adjoint(y, angles):
    return torch.ops.luser_fast.conebeam_adjoint(y, angles, N, N, N, *SPACING, SRC, DET)


def forward_ref(x, angles):
    return conebeam_forward_ref(x, angles, ROWS, COLS, SPACING, SRC, DET)


def adjoint_ref(y, angles):
    return conebeam_adjoint_ref(y, angles, (N, N, N), SPACING, SRC, DET)


def _on_threads(threads: int, fn):
    def run():
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(THREADS)
    return run


# --- luser_fast --------------------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("direction", ["forward", "adjoint"])
def test_luser_fast_one_thread(benchmark, problem, report, direction, batch):
    angles = problem["angles"]
    sub = angles[:REF_ANGLES]
    if direction == "forward":
        op, ref, arg = forward, forward_ref, problem["x"][:batch]
        assert rel(op(arg[:1], sub), ref(arg[:1], sub)) < 1e-5
    else:
        op, ref, arg = adjoint, adjoint_ref, problem["y"][:batch]
        assert rel(op(arg[:1, :REF_ANGLES], sub), ref(arg[:1, :REF_ANGLES], sub)) < 1e-5
    benchmark.pedantic(_on_threads(1, lambda: op(arg, angles)), rounds=harness.pick(5, 2),
                       warmup_rounds=1)
    t = harness.timing(benchmark)
    if t is not None:
        report.setdefault("seconds", {})[f"{direction}_b{batch}_1thread"] = t


@needs_ext
def test_luser_fast_threads(benchmark, problem, report):
    """Forward + adjoint of batch 4 on THREADS threads (the scaling over cores)."""
    x, y, angles = problem["x"][:4], problem["y"][:4], problem["angles"]
    benchmark.pedantic(lambda: (forward(x, angles), adjoint(y, angles)),
                       rounds=harness.pick(5, 2), warmup_rounds=1)
    t = harness.timing(benchmark)
    if t is not None:
        report.setdefault("seconds", {})[f"fwd_adj_b4_{THREADS}threads"] = t


@needs_ext
def test_reference_paired_rounds(benchmark, problem, report):
    """Reference and luser_fast, forward + adjoint on the first REF_ANGLES angles, batch 1
    and 4, one thread, in interleaved rounds."""
    angles = problem["angles"][:REF_ANGLES]
    calls = {}
    for b in BATCHES:
        x, y = problem["x"][:b], problem["y"][:b, :REF_ANGLES]
        assert rel(adjoint(forward(x, angles), angles),
                   adjoint_ref(forward_ref(x, angles), angles)) < 1e-5
        calls[f"luser_fast_b{b}"] = _on_threads(
            1, lambda x=x, y=y: (forward(x, angles), adjoint(y, angles)))
        calls[f"reference_b{b}"] = _on_threads(
            1, lambda x=x, y=y: (forward_ref(x, angles), adjoint_ref(y, angles)))
    times = {name: [] for name in calls}
    for _ in range(harness.pick(3, 2)):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    report["reference_rounds"] = {name: harness.stats_of(t) for name, t in times.items()}
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_stream_bandwidth(benchmark, report):
    """Bytes read + written per second by a torch copy of STREAM_BYTES, on 1 and THREADS
    threads (best of a few copies: the figure least disturbed by other load)."""
    src = torch.rand(STREAM_BYTES // 4)
    dst = torch.empty_like(src)
    out = {}
    for threads in (1, THREADS):
        best = math.inf
        for _ in range(harness.pick(7, 2)):
            start = time.perf_counter()
            _on_threads(threads, lambda: dst.copy_(src))()
            best = min(best, time.perf_counter() - start)
        out[f"{threads}_thread{'s' if threads > 1 else ''}"] = 2 * STREAM_BYTES / best
    report["bandwidth_B_s"] = out
    benchmark.pedantic(lambda: dst.copy_(src), rounds=1, iterations=1)


# --- the run record ------------------------------------------------------------------------------

def _rate(count: float, t: dict, threads: int = 1) -> dict:
    """count / time per core: median, and the band [min, max] over repeats."""
    return harness.rounded({"median": count / t["median"] / threads,
                            "low": count / t["max"] / threads,
                            "high": count / t["min"] / threads})


def _section(results: dict, samples: int, samples_ref: int) -> dict:
    out = {"ms": {k: harness.ms(t) for k, t in sorted(results.get("seconds", {}).items())},
           "updates_per_second_per_core": {}, "ratios": {}, "model": {}}
    for name, t in results.get("seconds", {}).items():
        direction, batch = name.split("_")[0], int(name.split("_b")[1].split("_")[0])
        threads = 1 if name.endswith("1thread") else THREADS
        per_call = 4 * samples * batch * (2 if direction == "fwd" else 1)
        out["updates_per_second_per_core"][name] = _rate(per_call, t, threads)
    rounds = results.get("reference_rounds", {})
    for b in BATCHES:
        ours, ref = rounds.get(f"luser_fast_b{b}"), rounds.get(f"reference_b{b}")
        if ours and ref:
            out["ratios"][f"reference / luser_fast forward + adjoint (b{b}, 1 thread)"] = \
                harness.rounded(harness.ratio(ref, ours))
            out["ms"][f"reference_fwd_adj_b{b}_{REF_ANGLES}angles_1thread"] = harness.ms(ref)
            out["ms"][f"luser_fast_fwd_adj_b{b}_{REF_ANGLES}angles_1thread"] = harness.ms(ours)
            out["updates_per_second_per_core"][f"reference_fwd_adj_b{b}_1thread"] = _rate(
                2 * 4 * samples_ref * b, ref)
    bw = results.get("bandwidth_B_s")
    if bw:
        one = bw["1_thread"]
        vol, proj = 4 * N ** 3, 4 * N_ANGLES * ROWS * COLS
        out["model"] = {
            "stream_bandwidth_GB_s": {k: round(v / 1e9, 3) for k, v in bw.items()},
            # every update from DRAM: forward reads 4 bytes, adjoint reads and writes 8
            "streaming_bound_updates_per_s_per_core": {
                "forward": float(f"{one / 4:.4g}"), "adjoint": float(f"{one / 8:.4g}")},
            # input read and output written once per call, batch 1, one core
            "compulsory_ms_per_call_b1": float(f"{1e3 * (vol + proj) / one:.4g}"),
        }
    return out


def _write_report(results: dict) -> None:
    angles = geo.uniform_angles(N_ANGLES, cone=True)
    samples, samples_ref = samples_per_call(angles), samples_per_call(angles[:REF_ANGLES])
    run = harness.new_run(THREADS)
    run["problem"] = {"volume": [N, N, N], "angles": N_ANGLES, "detector": [ROWS, COLS],
                      "source_distance": SRC, "detector_distance": DET,
                      "det_spacing": list(SPACING), "batches": list(BATCHES),
                      "dtype": "float32", "reference_angles": REF_ANGLES,
                      "rays": N_ANGLES * ROWS * COLS, "samples_per_volume": samples,
                      "updates_per_volume": 4 * samples}
    run.update(_section(results, samples, samples_ref))
    key = harness.save_run("conebeam_cpu", run)
    print(f"\nCone-beam CPU benchmark ({key}):")
    for k, t in run["ms"].items():
        print(f"  {k:44s} " + " ".join(f"{v:10.2f}" for v in t.values()) + "  ms")
    for k, r in run["updates_per_second_per_core"].items():
        print(f"  {k:44s} {r['median']:.3g} updates/s per core")
    for k, r in run["ratios"].items():
        print(f"  {k}: {r['median']}x [{r['low']}, {r['high']}]")
    if run["model"]:
        print(f"  model: {run['model']}")
