"""Radon transform benchmarks: luser_fast's kernels against scikit-image and ASTRA.

CPU (this machine): 256 x 256 images, 180 angles on [0, pi), D = 363 detectors, float32.
luser_fast runs batch 8 with 2 threads (forward, adjoint), and batch 1, and batch 8 on one
thread; scikit-image's ``radon`` and ASTRA's CPU ``linear`` projector (forward and
back-projection) run one image per call, as they take it, on one thread (neither
threads its CPU path). Every timing is preceded by a correctness check against the
reference (ASTRA's ``linear`` projector is the same Joseph discretisation with the same
conventions, so it must agree to float32 rounding; scikit-image rotates about pixel
N // 2 with bilinear interpolation, so it agrees to a few percent). Per-image medians and
minima (the min is the estimate least disturbed by other load on a shared machine) and
maxima, the ratios against the peers measured in the same run, and a throughput sweep
over image sizes go through ``harness`` to ``bench/results/radon_cpu.json`` (keyed by
machine, versions and git SHA) and are printed.

GPU (only where one exists, with CuPy): 256 x 256, 256 angles, batch 128, float32: images/s
for the forward and the adjoint, each checked against the reference first; recorded case by
case through ``harness.record_gpu_case`` into the GPU run (``bench/results/gpu_<gpu>.json``,
keyed by GPU name, driver, CUDA, torch version and git SHA; section ``radon``). The report
judges them against torch-radon's published ~19.5k images/s (fp32, V100), the comparison
issue 5 names.

    pytest bench/test_bench_radon.py --benchmark-only
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from luser_fast import backends
from luser_fast.ops import radon as radon_ops
from luser_fast.profile import harness
from luser_fast.ops import radon_adjoint, radon_forward
from luser_fast.reference.radon import radon_adjoint_ref, radon_forward_ref

N, N_ANGLES, BATCH, THREADS = harness.pick((256, 180, 8, 2), (32, 12, 2, 2))
N_DET = math.ceil(math.sqrt(2) * N)
#: image sides of the throughput sweep (forward + adjoint, batch BATCH, N_ANGLES angles)
SIZES = harness.pick((64, 128, 256, 512), (16, 32))
GPU_ANGLES, GPU_BATCH = harness.pick((256, 128), (16, 4))


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def phantoms(n: int, batch: int) -> np.ndarray:
    """[batch, n, n] float32: Shepp-Logan, each with a bright block in a different place."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    base = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    out = np.repeat(base[None], batch, 0).astype(np.float32)
    for b in range(batch):
        r, c = (17 * b) % (n // 2) + n // 8, (29 * b) % (n // 2) + n // 4
        out[b, r:r + n // 12, c:c + n // 12] += 1.0
    return out


@pytest.fixture(scope="module")
def data():
    x = phantoms(N, BATCH)
    angles = torch.arange(N_ANGLES, dtype=torch.float64) * (math.pi / N_ANGLES)
    y = np.random.default_rng(0).random((BATCH, N_ANGLES, N_DET), dtype=np.float32)
    return {"x": x, "angles": angles, "y": y}


@pytest.fixture(scope="module")
def report():
    """Collects per-image seconds (median and min); writes the JSON and prints the table."""
    with harness.collect(THREADS, _write_report) as results:
        yield results


def _per_image(benchmark, name: str, images: int, results: dict) -> None:
    t = harness.timing(benchmark, per=images)
    if t is not None:
        results[name] = t


#: ratio rows: label -> (numerator timings, denominator timings), each a tuple of names
#: whose per-image seconds add up (peer over ours: above 1, we are faster)
RATIOS = {
    "skimage radon / luser_fast forward (b8)": (("skimage_radon",), ("luser_fast_forward_b8",)),
    "skimage radon / luser_fast forward + adjoint (b8)":
        (("skimage_radon",), ("luser_fast_forward_b8", "luser_fast_adjoint_b8")),
    "astra forward + backprojection / luser_fast forward + adjoint (b8)":
        (("astra_forward", "astra_backprojection"),
         ("luser_fast_forward_b8", "luser_fast_adjoint_b8")),
    "astra forward / luser_fast forward (b8)": (("astra_forward",), ("luser_fast_forward_b8",)),
    "astra backprojection / luser_fast adjoint (b8)":
        (("astra_backprojection",), ("luser_fast_adjoint_b8",)),
    "astra forward + backprojection / luser_fast forward + adjoint (b8, 1 thread)":
        (("astra_forward", "astra_backprojection"), ("luser_fast_fwd_adj_b8_1thread",)),
}


def _sum(results: dict, names) -> dict | None:
    if not all(n in results for n in names):
        return None
    return {k: sum(results[n][k] for n in names) for k in ("min", "median", "max")}


def _section(results: dict) -> dict:
    out = {"ms_per_image": {k: harness.ms(v) for k, v in sorted(results.items())}, "ratios": {}}
    for label, (num, den) in RATIOS.items():
        a, b = _sum(results, num), _sum(results, den)
        if a is not None and b is not None:
            out["ratios"][label] = harness.rounded(harness.ratio(a, b))
    return out


def _write_report(results: dict) -> None:
    run = harness.new_run(THREADS, "scikit-image", "astra-toolbox")
    run["problem"] = {"image": [N, N], "angles": N_ANGLES, "detectors": N_DET,
                      "batch": BATCH, "dtype": "float32", "sizes": list(SIZES)}
    harness.add_sections(run, results, _section)
    key = harness.save_run("radon_cpu", run)
    print(f"\nRadon CPU benchmark ({key}), ms per image (min / median / max):")
    print("\n".join(harness.section_lines(run, lambda sec: [
        f"  {k:34s} " + " ".join(f"{v:9.3f}" for v in t.values())
        for k, t in sec["ms_per_image"].items()])))


# --- luser_fast on the CPU ----------------------------------------------------------------

@pytest.mark.skipif(not radon_ops.HAS_CPU_KERNELS, reason="the C++ extension is not built")
@pytest.mark.parametrize("direction", ["forward", "adjoint"])
def test_luser_fast_b8(benchmark, data, report, direction):
    if direction == "forward":
        op, ref, arg, size = radon_forward, radon_forward_ref, torch.from_numpy(data["x"]), N_DET
    else:
        op, ref, arg, size = radon_adjoint, radon_adjoint_ref, torch.from_numpy(data["y"]), N
    assert rel(op(arg, data["angles"], size), ref(arg, data["angles"], size)) < 1e-5
    benchmark.pedantic(op, (arg, data["angles"], size), rounds=harness.pick(10, 2),
                       warmup_rounds=1)
    _per_image(benchmark, f"luser_fast_{direction}_b8", BATCH, report)


@pytest.mark.skipif(not radon_ops.HAS_CPU_KERNELS, reason="the C++ extension is not built")
def test_luser_fast_forward_adjoint_b1(benchmark, data, report):
    x = torch.from_numpy(data["x"][:1])

    def both():
        return radon_adjoint(radon_forward(x, data["angles"], N_DET), data["angles"], N)

    ref = radon_adjoint_ref(radon_forward_ref(x, data["angles"], N_DET), data["angles"], N)
    assert rel(both(), ref) < 1e-5
    benchmark.pedantic(both, rounds=harness.pick(10, 2), warmup_rounds=1)
    _per_image(benchmark, "luser_fast_fwd_adj_b1", 1, report)


@pytest.mark.skipif(not radon_ops.HAS_CPU_KERNELS, reason="the C++ extension is not built")
def test_luser_fast_forward_adjoint_b8_one_thread(benchmark, data, report):
    """The same work on one thread, for a per-core comparison (the peers run on one)."""
    x = torch.from_numpy(data["x"])

    def both():
        return radon_adjoint(radon_forward(x, data["angles"], N_DET), data["angles"], N)

    torch.set_num_threads(1)
    try:
        benchmark.pedantic(both, rounds=harness.pick(5, 2), warmup_rounds=1)
    finally:
        torch.set_num_threads(THREADS)
    _per_image(benchmark, "luser_fast_fwd_adj_b8_1thread", BATCH, report)


@pytest.mark.skipif(not radon_ops.HAS_CPU_KERNELS, reason="the C++ extension is not built")
@pytest.mark.parametrize("size", SIZES)
def test_luser_fast_size_sweep(benchmark, data, report, size):
    """Throughput against image size: forward + adjoint of BATCH images, N_ANGLES angles,
    ceil(sqrt(2) size) detectors (the report plots images/s against size)."""
    x = torch.from_numpy(phantoms(size, BATCH))
    det = math.ceil(math.sqrt(2) * size)

    def both():
        return radon_adjoint(radon_forward(x, data["angles"], det), data["angles"], size)

    ref = radon_adjoint_ref(radon_forward_ref(x[:1], data["angles"], det), data["angles"], size)
    assert rel(both()[:1], ref) < 1e-5
    benchmark.pedantic(both, rounds=harness.pick(5, 2), warmup_rounds=1)
    _per_image(benchmark, f"luser_fast_fwd_adj_b{BATCH}_n{size}", BATCH, report)


# --- peers, one image per call -----------------------------------------------------------

def test_skimage_radon(benchmark, data, report):
    from skimage.transform import radon

    img = data["x"][0]
    theta = np.rad2deg(data["angles"].numpy())
    sino = radon(img, theta=theta, circle=False).T
    # same geometry up to scikit-image's centring (index N // 2) and its bilinear rotation
    assert sino.shape == (N_ANGLES, N_DET)
    # (at the tiny harness-check size the half-pixel centring offset weighs more)
    assert rel(sino, radon_forward_ref(torch.from_numpy(img), data["angles"], N_DET)) < harness.pick(
        0.06, 0.3)
    benchmark.pedantic(radon, (img,), {"theta": theta, "circle": False},
                       rounds=harness.pick(3, 2), warmup_rounds=0)
    _per_image(benchmark, "skimage_radon", 1, report)


@pytest.fixture(scope="module")
def astra_projector(data):
    astra = pytest.importorskip("astra", reason="astra-toolbox is not installed "
                                                "(pip install astra-toolbox)")
    vol = astra.create_vol_geom(N, N)
    proj = astra.create_proj_geom("parallel", 1.0, N_DET, data["angles"].numpy())
    pid = astra.create_projector("linear", proj, vol)
    yield astra, pid
    astra.projector.delete(pid)


def _astra(astra, pid, kind, array):
    """ASTRA's forward projection ("forward") or back-projection of one image / sinogram."""
    create = astra.create_sino if kind == "forward" else astra.create_backprojection
    handle, out = create(array, pid)
    astra.data2d.delete(handle)
    return out


@pytest.mark.parametrize("kind", ["forward", "backprojection"])
def test_astra(benchmark, data, astra_projector, report, kind):
    astra, pid = astra_projector
    if kind == "forward":
        array = data["x"][0]
        ref = radon_forward_ref(torch.from_numpy(array), data["angles"], N_DET)
    else:
        array = data["y"][0]
        ref = radon_adjoint_ref(torch.from_numpy(array), data["angles"], N)
    # ASTRA's linear projector is Joseph's method with our conventions
    assert rel(_astra(astra, pid, kind, array), ref) < 1e-3
    benchmark.pedantic(_astra, (astra, pid, kind, array), rounds=harness.pick(5, 2),
                       warmup_rounds=1)
    _per_image(benchmark, f"astra_{kind}", 1, report)


def test_paired_rounds(benchmark, data, report, request):
    """luser_fast (batch 8, THREADS threads and one), scikit-image and ASTRA called in
    interleaved rounds, so that load from other processes on a shared machine hits every
    implementation alike; per-image min, median and max go to the JSON as ``paired`` (the
    report's headline ratios). (The benchmark fixture times one round of all of them.)"""
    import time

    from skimage.transform import radon

    try:
        astra, pid = request.getfixturevalue("astra_projector")
    except pytest.skip.Exception:                    # ASTRA is optional: paired without it
        astra = None
    x, y, angles = torch.from_numpy(data["x"]), torch.from_numpy(data["y"]), data["angles"]
    theta = np.rad2deg(angles.numpy())

    def one_thread():
        torch.set_num_threads(1)
        try:
            radon_adjoint(radon_forward(x, angles, N_DET), angles, N)
        finally:
            torch.set_num_threads(THREADS)

    # name -> (call, images per call); correctness of each is asserted by the tests above
    calls = {"luser_fast_forward_b8": (lambda: radon_forward(x, angles, N_DET), BATCH),
             "luser_fast_adjoint_b8": (lambda: radon_adjoint(y, angles, N), BATCH),
             "luser_fast_fwd_adj_b8_1thread": (one_thread, BATCH),
             "skimage_radon": (lambda: radon(data["x"][0], theta=theta, circle=False), 1)}
    if astra is not None:
        calls.update(astra_forward=(lambda: _astra(astra, pid, "forward", data["x"][0]), 1),
                     astra_backprojection=(
                         lambda: _astra(astra, pid, "backprojection", data["y"][0]), 1))
    times = {name: [] for name in calls}
    for _ in range(harness.pick(7, 2)):
        for name, (fn, images) in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / images)
    report["paired"] = {name: harness.stats_of(t) for name, t in times.items()}
    benchmark.pedantic(lambda: [fn() for fn, _ in calls.values()], rounds=1, iterations=1)


# --- GPU -------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and radon_ops.cuda_available()),
    reason="no CUDA device with CuPy here: the GPU benchmark runs only where one exists")


@functools.lru_cache(maxsize=1)
def _gpu_images() -> torch.Tensor:
    """[GPU_BATCH, N, N] phantoms (made once: scikit-image's resize takes seconds)."""
    return torch.from_numpy(phantoms(N, GPU_BATCH))


@needs_gpu
@pytest.mark.parametrize("direction", ["forward", "adjoint"])
def test_luser_fast_cuda_throughput(benchmark, direction):
    angles = torch.arange(GPU_ANGLES, dtype=torch.float64, device="cuda") * (
        math.pi / GPU_ANGLES)
    x = _gpu_images().cuda()
    y = radon_forward(x, angles, N_DET)
    back = radon_adjoint(y, angles, N)
    if direction == "forward":
        err = rel(y[:4].cpu(), radon_forward_ref(x[:4].cpu(), angles.cpu(), N_DET))

        def run():
            radon_forward(x, angles, N_DET)
            torch.cuda.synchronize()
    else:
        err = rel(back[:4].cpu(), radon_adjoint_ref(y[:4].cpu(), angles.cpu(), N))

        def run():
            radon_adjoint(y, angles, N)
            torch.cuda.synchronize()
    assert err < 1e-5, err
    benchmark.pedantic(run, rounds=harness.pick(20, 2), warmup_rounds=3)
    t = harness.timing(benchmark)
    if t is None:
        return
    row = {"ms_per_batch": harness.ms(t), "images_per_second": GPU_BATCH / t["median"],
           "images_per_second_band": [GPU_BATCH / t["max"], GPU_BATCH / t["min"]],
           "relative_error_vs_reference": float(f"{err:.3g}"),
           "backend": backends.select(f"radon_{direction}", "cuda")}
    harness.record_gpu_case("radon", direction, row, setup={
        "image": [N, N], "angles": GPU_ANGLES, "detectors": N_DET, "batch": GPU_BATCH,
        "dtype": "float32", "rounds": harness.pick(20, 2),
        "reference_check": "first 4 images against the reference on the CPU"})
    print(f"\n{torch.cuda.get_device_name()}: radon {direction} {N}x{N}, {GPU_ANGLES} angles, "
          f"batch {GPU_BATCH}: {row['images_per_second']:.0f} images/s (error {err:.1e})")
