"""The one harness every benchmark suite in ``bench/`` records through (and the demo).

A suite writes one *run* per invocation into ``<results>/<suite>.json``, a dict keyed by
"machine | torch version | git SHA" (a rerun on the same key replaces its entry). A run
holds the date, the machine (CPU model, cores, threads, GPU name if any), the versions
(torch, python, triton, luser_fast and the peers the suite used), the git SHA, the
problem set-up, and its measurements. Timings are seconds over repeats as
``{"min", "median", "max"}``; a ratio row ``ours / peer`` (or ``peer / ours``) carries the
ratio of medians with the band [best case, worst case] the repeats allow, so that two runs
can be compared within the noise each reports.

GPU runs go to ``<results>/gpu_<gpu name>.json`` (``gpu_results_path``), keyed by "GPU name |
driver | CUDA | torch version | git SHA" (``run_key`` of a run with a ``"gpu"`` entry,
``gpu_info``). One GPU run is built by several processes (``luser-fast bench --suite gpu``
runs each suite in its own): ``begin_gpu_run`` starts it empty under its key, each suite
adds its measurements case by case (``record_gpu_case``) or as a whole section
(``save_gpu_section``), as soon as each is measured, so a suite stopped by the wall-clock
budget keeps what it measured; ``update_gpu_run`` adds the check's own record (tests,
suites, CuPy).

The suites themselves live in the repository's ``bench/`` folder (not installed);
``luser_fast.profile.bench.run_bench`` (``luser-fast bench``) runs them. Environment:

* ``LUSER_FAST_BENCH_RESULTS``: results folder (default ``bench/results`` of the checkout
  holding this package);
* ``LUSER_FAST_BENCH_TINY=1``: every suite shrinks its problem to a few milliseconds, so
  the test suite can run the harness end to end (tiny runs are marked ``"tiny": true``
  and the report ignores them);
* ``LUSER_FAST_GPU_RUN_KEY``: the key of the GPU run the suites add to (set by the GPU
  check to the run it started);
* ``LUSER_FAST_BENCH_DEADLINE``: a wall-clock time (seconds since the epoch) after which
  the suites' cases skip (``past_deadline``; set by the GPU check's budget).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import platform
import re
import subprocess
import time
from importlib import metadata

import torch

from .provenance import cpu_model, git_sha as _git_sha

__all__ = ["CHECKOUT", "BENCH_DIR", "results_dir", "tiny", "pick", "git_sha", "gpu_name",
           "machine", "versions", "new_run", "run_key", "store_run", "save_run", "collect",
           "add_sections", "section_lines", "timing", "stats_of", "ratio", "ms", "rounded",
           "driver_version", "gpu_info", "gpu_slug", "gpu_results_path", "cupy_version",
           "new_gpu_run", "begin_gpu_run", "update_gpu_run", "save_gpu_section",
           "record_gpu_case", "deadline", "past_deadline"]

#: the source checkout holding this package (for an editable install), and its bench/
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(CHECKOUT, "bench")


def results_dir() -> str:
    """``LUSER_FAST_BENCH_RESULTS``, else the checkout's ``bench/results``."""
    return os.environ.get("LUSER_FAST_BENCH_RESULTS") or os.path.join(BENCH_DIR, "results")


def tiny() -> bool:
    """Whether this process runs the tiny harness check (``LUSER_FAST_BENCH_TINY=1``)."""
    return os.environ.get("LUSER_FAST_BENCH_TINY") == "1"


def pick(full, small):
    """``small`` under ``LUSER_FAST_BENCH_TINY=1``, else ``full`` (problem sizes, rounds)."""
    return small if tiny() else full


def git_sha() -> str:
    """Short SHA of the checkout holding this package, or "unknown"."""
    return _git_sha(CHECKOUT)


def gpu_name() -> str | None:
    """The CUDA device's name, or None (queried only when CUDA is available)."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def machine(threads: int, gpu: str | None = None) -> dict:
    """CPU model, cores, threads and the GPU's name (``gpu``, else queried)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
            "gpu": gpu or gpu_name()}


def versions(*packages: str) -> dict:
    """torch, python, triton, luser_fast, numpy and ``packages`` (None when not installed)."""
    out = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("luser_fast", "triton", "numpy", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def new_run(threads: int, *packages: str, gpu: dict | None = None) -> dict:
    """The header of a run: date, machine, versions (with ``packages``), SHA, tiny flag;
    with ``gpu`` (``gpu_info``) a GPU run: its ``"gpu"`` entry keys it (``run_key``)."""
    run = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(threads, gpu and gpu["name"]),
        "versions": versions(*packages),
        "git_sha": git_sha(),
        "tiny": tiny(),
    }
    if gpu:
        run["gpu"] = gpu
    return run


def run_key(run: dict) -> str:
    """"machine | torch version | git SHA"; for a GPU run (one with a ``"gpu"`` entry,
    ``new_gpu_run``) "GPU name | driver | CUDA | torch version | git SHA"; and "| tiny" for a
    harness check, so a check never replaces a full run at the same SHA."""
    gpu = run.get("gpu")
    if gpu:
        key = (f"{gpu['name']} | driver {gpu.get('driver')} | CUDA {gpu.get('cuda')} | "
               f"torch {run['versions']['torch']} | {run['git_sha']}")
    else:
        key = f"{run['machine']['cpu']} | torch {run['versions']['torch']} | {run['git_sha']}"
    return key + " | tiny" if run.get("tiny") else key


def store_run(path: str, run: dict) -> str:
    """Store ``run`` under its key in the JSON file ``path`` (created with its folder; the
    other runs in it are kept); returns the key."""
    key = run_key(run)
    runs = _load_runs(path)
    runs[key] = run
    _write_runs(path, runs)
    return key


def _load_runs(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)
    return {}


def _write_runs(path: str, runs: dict) -> None:
    """Write atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(runs, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def save_run(suite: str, run: dict, folder: str | None = None) -> str:
    """Store ``run`` in ``<folder>/<suite>.json`` (default: ``results_dir()``) under its
    key; returns the key."""
    return store_run(os.path.join(folder or results_dir(), f"{suite}.json"), run)


@contextlib.contextmanager
def collect(threads: int, write, when=bool):
    """A suite's results dict, with torch on ``threads`` threads meanwhile; at the end the
    thread count is restored and, if ``when(results)`` (default: anything was collected),
    ``write(results)`` is called. For a module-scoped fixture:
    ``with harness.collect(THREADS, _write_report) as r: yield r``."""
    results: dict = {}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield results
    finally:
        torch.set_num_threads(before)
    if when(results):
        write(results)


def add_sections(run: dict, results: dict, section) -> dict:
    """Put ``section(results)`` into ``run``, and ``section`` of the interleaved-rounds
    results (``results["paired"]``, taken out of ``results``) as ``run["paired"]``."""
    paired = results.pop("paired", None)
    run.update(section(results))
    if paired:
        run["paired"] = section(paired)
    return run


def section_lines(run: dict, rows) -> list[str]:
    """Printed lines of a run's separate-rounds section and, if any, its paired-rounds
    section (``add_sections``): a title each, ``rows(section)``, then its ratio rows."""
    lines = []
    for title, section in (("separate rounds:", run), ("paired rounds:", run.get("paired"))):
        if section is not None:
            lines += [title, *rows(section)]
            lines += [f"  {k}: {v['median']}x [{v['low']}, {v['high']}]"
                      for k, v in section["ratios"].items()]
    return lines


def timing(benchmark, per: float = 1.0) -> dict | None:
    """min / median / max seconds of a pytest-benchmark fixture's rounds, divided by
    ``per`` (e.g. images per call); None when benchmarking is disabled."""
    if benchmark.disabled:
        return None
    s = benchmark.stats.stats
    return {"min": s.min / per, "median": s.median / per, "max": s.max / per}


def stats_of(seconds) -> dict:
    """min / median / max of a list of seconds (hand-timed interleaved rounds)."""
    xs = sorted(seconds)
    n = len(xs)
    median = xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
    return {"min": xs[0], "median": median, "max": xs[-1]}


def ratio(num: dict, den: dict) -> dict:
    """num / den from two timings: the ratio of medians, and the band the repeats allow
    (num's min over den's max up to num's max over den's min)."""
    return {"median": num["median"] / den["median"], "low": num["min"] / den["max"],
            "high": num["max"] / den["min"]}


def ms(t: dict | None) -> dict | None:
    """A timing in milliseconds, rounded to 4 significant digits."""
    return None if t is None else {k: float(f"{1e3 * v:.4g}") for k, v in t.items()}


def rounded(r: dict) -> dict:
    return {k: float(f"{v:.4g}") for k, v in r.items()}


# --- GPU runs ------------------------------------------------------------------------------

def _nvidia_smi(*query: str) -> list[str]:
    """Lines of ``nvidia-smi --query-gpu=<query> --format=csv,noheader,nounits``, or []."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(query)}",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()] if out.returncode == 0 else []


@functools.lru_cache(maxsize=1)
def driver_version() -> str | None:
    """The NVIDIA driver's version (``nvidia-smi``, else NVML), or None (asked once per
    process)."""
    lines = _nvidia_smi("driver_version")
    if lines:
        return lines[0]
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:                      # no NVML, no driver: unknown
        return None


def _bandwidth(index: int, props) -> tuple[float | None, str]:
    """Peak DRAM bandwidth in bytes/s (2 transfers per memory clock times the bus width)
    and where the clock and bus width were read: torch's device properties, else the CUDA
    driver through CuPy, else NVML. (None, why) when none says."""
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2.0 * clock_khz * 1e3 * bus_bits / 8, "torch device properties"
    try:
        import cupy

        attr = cupy.cuda.runtime.deviceGetAttribute
        clock_khz, bus_bits = attr(36, index), attr(37, index)   # cudaDevAttrMemoryClockRate, ...BusWidth
        if clock_khz and bus_bits:
            return 2.0 * clock_khz * 1e3 * bus_bits / 8, "CUDA device attributes (CuPy)"
    except Exception:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        mhz = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)
        bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(h)
        if mhz and bus_bits:
            return 2.0 * mhz * 1e6 * bus_bits / 8, "NVML"
    except Exception:
        pass
    return None, "unknown: neither torch, CuPy nor NVML reports the memory clock and bus width"


def gpu_info(index: int | None = None) -> dict | None:
    """The CUDA device a GPU run measures: name, driver, CUDA (torch's CUDA runtime),
    compute capability, memory, multiprocessors, device count and peak DRAM bandwidth
    (bytes/s, with its source). None when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if index is None else index
    p = torch.cuda.get_device_properties(index)
    bw, source = _bandwidth(index, p)
    return {"name": p.name, "driver": driver_version(), "cuda": torch.version.cuda,
            "capability": f"{p.major}.{p.minor}", "memory_bytes": int(p.total_memory),
            "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count(),
            "bandwidth_B_s": bw, "bandwidth_source": source}


def gpu_slug(name: str) -> str:
    """A file-name form of a GPU name: "NVIDIA H200" -> "nvidia_h200"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "gpu"


def gpu_results_path(name: str | None = None, folder: str | None = None) -> str:
    """``<results>/gpu_<slug of the GPU name>.json`` (default: this machine's GPU)."""
    if name is None:
        info = gpu_info()
        if info is None:
            raise RuntimeError("no CUDA device: a GPU run needs one")
        name = info["name"]
    return os.path.join(folder or results_dir(), f"gpu_{gpu_slug(name)}.json")


def cupy_version() -> str | None:
    """The installed CuPy's version and distribution ("13.6.0 (cupy-cuda12x)"), without
    importing it; None when none is installed."""
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"):
        try:
            return f"{metadata.version(dist)} ({dist})"
        except metadata.PackageNotFoundError:
            continue
    return None


def new_gpu_run(*packages: str) -> dict:
    """The header of a GPU run: ``new_run`` plus ``"gpu"`` (``gpu_info``) and CuPy's version."""
    info = gpu_info()
    if info is None:
        raise RuntimeError("no CUDA device: a GPU run needs one")
    run = new_run(torch.get_num_threads(), *packages, gpu=info)
    run["versions"]["cupy"] = cupy_version()
    run["sections"] = {}
    return run


def begin_gpu_run(folder: str | None = None, **fields) -> str:
    """Start this machine's GPU run afresh under its key (a run stored at the same key is
    replaced, so no section of an earlier invocation survives); ``fields`` go into it.
    Returns the key."""
    run = new_gpu_run()
    run.update(fields)
    path = gpu_results_path(run["gpu"]["name"], folder)
    runs = _load_runs(path)
    key = run_key(run)
    runs[key] = run
    _write_runs(path, runs)
    return key


def _current_gpu_run(folder, mutate, key=None) -> str:
    """Apply ``mutate`` to this machine's GPU run: the one ``LUSER_FAST_GPU_RUN_KEY`` names
    (set by the GPU check for its suites, so that all of one check lands in the run it
    started even if the checkout's SHA moves meanwhile) or ``key``, else the one under this
    process's key (created if absent)."""
    run = new_gpu_run()
    path = gpu_results_path(run["gpu"]["name"], folder)
    runs = _load_runs(path)
    key = key or os.environ.get("LUSER_FAST_GPU_RUN_KEY")
    if key not in runs:
        key = run_key(run)
    mutate(runs.setdefault(key, run))
    _write_runs(path, runs)
    return key


def update_gpu_run(fields: dict, folder: str | None = None, key: str | None = None) -> str:
    """Put ``fields`` into this machine's GPU run (the one at ``key`` if given; created if
    absent); returns its key."""
    return _current_gpu_run(folder, lambda run: run.update(fields), key)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def save_gpu_section(section: str, data: dict, folder: str | None = None) -> str:
    """Store ``data`` (measurements with their set-up) as ``run["sections"][section]`` of
    this machine's GPU run, replacing that section only; returns the run's key."""
    def put(run):
        run.setdefault("sections", {})[section] = {**data, "date": _now()}
    return _current_gpu_run(folder, put)


def record_gpu_case(section: str, case: str, row: dict, setup: dict | None = None,
                    folder: str | None = None) -> str:
    """Add one measured case to ``run["sections"][section]["cases"]`` of this machine's GPU
    run as soon as it is measured (``setup``, the section's problem description, is set
    alongside); returns the run's key."""
    def put(run):
        sec = run.setdefault("sections", {}).setdefault(section, {"cases": {}})
        if setup is not None:
            sec["setup"] = setup
        sec.setdefault("cases", {})[case] = row
        sec["date"] = _now()
    return _current_gpu_run(folder, put)


def deadline() -> float | None:
    """``LUSER_FAST_BENCH_DEADLINE`` (seconds since the epoch), or None."""
    value = os.environ.get("LUSER_FAST_BENCH_DEADLINE")
    return float(value) if value else None


def past_deadline(margin: float = 0.0) -> bool:
    """Whether the wall-clock budget (``deadline``) is spent, ``margin`` seconds early."""
    end = deadline()
    return end is not None and time.time() + margin >= end
