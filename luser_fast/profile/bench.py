"""``luser-fast bench``: run the benchmark suites of the repository's ``bench/`` folder and
regenerate BENCHMARKS.md from what they recorded.

The suites (pytest-benchmark files) and the report generator ``bench/report.py`` are part
of the source checkout, not of the installed package: this module finds them next to the
package (an editable install in a checkout) and says so when they are not there. The
suites record through ``luser_fast.profile.harness``.

The ``gpu`` suite is the GPU check (``run_gpu_check``, ``make gpu-check``): on a CUDA
machine it makes CuPy and the CUDA code available, runs the GPU tests and the GPU
benchmarks within a wall-clock budget, records one GPU run in
``bench/results/gpu_<gpu>.json`` and regenerates BENCHMARKS.md; without CUDA it prints what
it would run and runs nothing.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from importlib import metadata

from . import harness

__all__ = ["BENCH_SUITES", "GPU_TESTS_K", "GPU_BUDGET_S", "bench_dir", "run_bench",
           "run_gpu_check", "gpu_plan", "cupy_package", "cuda_major"]

#: ``luser-fast bench --suite``: pytest files of bench/ (and a -k filter) per suite; the
#: gpu suite's files run in this order (the goal figures first), one process each
BENCH_SUITES = {
    "ops": (("test_bench_radon.py", "test_bench_nufft.py", "test_bench_nufft3d.py",
             "test_bench_conebeam.py"), "not cuda"),
    "solver": (("test_bench_solver.py",), "not cuda"),
    "train": (("test_bench_deq_memory.py",), "not cuda"),
    "gpu": (("test_bench_radon.py", "test_bench_nufft.py", "test_bench_deq_memory.py",
             "test_bench_triton.py", "test_bench_solver.py"), "cuda or triton"),
}
#: the GPU check's tests: those of tests/ whose names say cuda, gpu or triton, and the fuzz
#: tests (they take the CUDA device too when there is one); not the two modules that run
#: the benchmark harness and this check themselves
GPU_TESTS_K = ("(cuda or gpu or triton or fuzz) and not test_bench_harness "
               "and not test_gpu_check")
#: the GPU benchmark files that need CuPy (the CUDA Radon and NUFFT kernels launch through it)
CUPY_FILES = ("test_bench_radon.py", "test_bench_nufft.py")
#: wall-clock budget of the whole GPU check, seconds (``LUSER_FAST_GPU_BUDGET_S``); the tests
#: get at most TESTS_MAX_S of it, the report RESERVE_S
GPU_BUDGET_S = 540
TESTS_MAX_S = 240
INSTALL_MAX_S = 120
RESERVE_S = 30


def bench_dir() -> str:
    """The ``bench/`` folder of the source checkout holding this package.

    Raises:
        FileNotFoundError: the package is not installed from a checkout (``pip install -e``)
            that has the suites.
    """
    path = harness.BENCH_DIR
    if not os.path.exists(os.path.join(path, "report.py")):
        raise FileNotFoundError(
            f"no bench/ suites next to the package ({path}): `luser-fast bench` needs the "
            "repository's bench/ folder; run it from a source checkout installed with "
            "`pip install -e .`")
    return path


def run_bench(suites=("ops", "solver", "train", "gpu"), results=None, json_path=None, tiny=False,
              report=True, pytest_args=(), log=print):
    """Run the benchmark suites of ``bench/`` and regenerate BENCHMARKS.md from their JSON.

    Each suite runs in its own ``python -m pytest ... --benchmark-only`` process (so one
    suite's failure or crash does not hide the others); its results go through
    ``luser_fast.profile.harness`` into ``<results>/<suite file>.json`` keyed by machine,
    versions and git SHA. The GPU suite (``run_gpu_check``) runs only on a machine with a
    CUDA device and is otherwise recorded as skipped, with the reason. This invocation is
    recorded too
    (``<results>/bench_runs.json``: suites, exit codes, wall seconds), and
    ``bench/report.py`` then rewrites BENCHMARKS.md and the plots.

    Args:
        suites: names from ``BENCH_SUITES`` (ops: Radon and NUFFT against their peers;
            solver: Anderson against the reference and torchdeq; train: a training step's
            memory and time, LUSER vs LU; gpu: Triton, Radon and NUFFT on the device).
        results: results folder (default ``bench/results``).
        json_path: also write this invocation's record and every run it produced here.
        tiny: run every suite on a tiny problem (a harness check; the report ignores it).
        report: regenerate BENCHMARKS.md afterwards (never for tiny runs).
        pytest_args: extra pytest arguments.
        log: callable for progress lines.

    Returns:
        dict: the invocation record (suites -> files, returncode, wall_seconds; skipped).
        The gpu suite is ``run_gpu_check`` (its tests, benchmarks and report are its own; a
        dry run without CUDA is recorded under ``skipped``); an invocation of the gpu suite
        alone is recorded in its GPU run only, not in ``bench_runs.json``.

    Raises:
        ValueError: an unknown suite, or none.
        FileNotFoundError: no ``bench/`` folder (see ``bench_dir``).
    """
    import torch

    unknown = [s for s in suites if s not in BENCH_SUITES]
    if unknown or not suites:
        raise ValueError(f"suite must be among {tuple(BENCH_SUITES)}, got {list(suites)!r}")
    bench = bench_dir()
    results = os.path.abspath(results or os.path.join(bench, "results"))
    env = dict(os.environ, LUSER_FAST_BENCH_RESULTS=results,
               LUSER_FAST_BENCH_TINY="1" if tiny else "0")
    record = {"suites": {}, "skipped": {}}
    started = time.time()
    cpu = [s for s in dict.fromkeys(suites) if s != "gpu"]
    for suite in cpu:
        files, select = BENCH_SUITES[suite]
        cmd = [sys.executable, "-m", "pytest", *(os.path.join(bench, f) for f in files), "-q",
               "-s", "-p", "no:cacheprovider", "--benchmark-only",
               *(["-k", select] if select else []), *pytest_args]
        log(f"bench {suite}: {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=env, cwd=os.path.dirname(bench)).returncode
        record["suites"][suite] = {"files": list(files), "returncode": rc,
                                   "wall_seconds": round(time.perf_counter() - t0, 1)}
    if "gpu" in suites:
        t0 = time.perf_counter()
        check = run_gpu_check(results=results, tiny=tiny, report=report and not cpu, log=log,
                              pytest_args=pytest_args)
        if check.get("dry_run"):
            record["skipped"]["gpu"] = check["reason"]
        else:
            record["suites"]["gpu"] = {"files": list(BENCH_SUITES["gpu"][0]),
                                       "returncode": check["returncode"],
                                       "wall_seconds": round(time.perf_counter() - t0, 1)}
            if check.get("reason"):
                record["suites"]["gpu"]["note"] = check["reason"]
    run = harness.new_run(torch.get_num_threads())
    run["tiny"] = tiny
    run["command"] = "luser-fast bench --suite " + " ".join(dict.fromkeys(suites))
    run.update(record)
    if cpu:              # a GPU check alone is recorded in its GPU run (gpu_<gpu>.json)
        harness.save_run("bench_runs", run, folder=results)
    if json_path:
        _write_produced(json_path, run, results, started)
    if report and not tiny and cpu:
        _report(bench, results, log)
    failed = [s for s, r in record["suites"].items() if r["returncode"] not in (0, 5)]
    if failed:
        log(f"bench: suites with failures: {', '.join(failed)}")
    return run


def _report(bench, results, log=print, python=None) -> int:
    """Rewrite BENCHMARKS.md and the plots from ``results`` (``bench/report.py``)."""
    cmd = [python or sys.executable, os.path.join(bench, "report.py"), "--results", results]
    log(f"report: {shlex.join(cmd)}")
    return subprocess.run(cmd, cwd=os.path.dirname(bench), env=_env()).returncode


def _write_produced(path, run, results, started):
    """``{"invocation": run, "runs": {suite: {key: run}}}`` of the runs dated since
    ``started`` in the results folder."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))
    produced = {}
    for name in sorted(os.listdir(results)):
        if name.endswith(".json") and name != "bench_runs.json":
            with open(os.path.join(results, name)) as fh:
                new = {k: r for k, r in json.load(fh).items() if r.get("date", "") >= since}
            if new:
                produced[name[:-5]] = new
    with open(path, "w") as fh:
        json.dump({"invocation": run, "runs": produced}, fh, indent=1)


# --- the GPU check (``make gpu-check``, ``luser-fast bench --suite gpu``) ---------------------

def _env(**extra) -> dict:
    """The environment of every command the check runs: the checkout on PYTHONPATH (so a
    Python without luser_fast installed, e.g. the system one of a GPU machine, imports it
    from the checkout), plus ``extra``."""
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=harness.CHECKOUT + (os.pathsep + path if path else ""))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cuda_major(torch_cuda: str | None, driver_cuda: str | None = None) -> int | None:
    """The CUDA major version to match: torch's CUDA runtime ("12.4" -> 12), else the
    driver's (``nvidia-smi``'s "CUDA Version"), else None."""
    for v in (torch_cuda, driver_cuda):
        m = re.match(r"\s*(\d+)", v or "")
        if m:
            return int(m.group(1))
    return None


def cupy_package(major: int | None) -> str:
    """The CuPy wheel for a CUDA major: ``cupy-cuda11x``, ``cupy-cuda12x`` (the ``gpu``
    extra's), ``cupy-cuda13x``; ``cupy-cuda12x`` when the major is unknown."""
    return f"cupy-cuda{major or 12}x"


def _nvidia_smi() -> dict:
    """What ``nvidia-smi`` says: GPU names and the driver's CUDA version ({} without it)."""
    names = harness._nvidia_smi("name")
    if not names:
        return {}
    cuda = None
    try:
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"CUDA Version:\s*([\d.]+)", head)
        cuda = m.group(1) if m else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"gpus": names, "driver": harness.driver_version(), "cuda": cuda}


def _probe(python: str, code: str, timeout: float = 120) -> tuple[bool, str]:
    """Run ``code`` in ``python``: (exit 0, its last line of output or error)."""
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True,
                           timeout=timeout, env=_env())
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    except OSError as exc:
        return False, str(exc)
    lines = (r.stdout if r.returncode == 0 else (r.stderr or r.stdout)).strip().splitlines()
    return r.returncode == 0, lines[-1] if lines else f"exit {r.returncode}"


_CUPY_PROBE = ("import cupy; n = cupy.cuda.runtime.getDeviceCount(); "
               "assert int(cupy.arange(4).sum()) == 6; "
               "print(f'CuPy {cupy.__version__}, {n} device(s)')")
_TORCH_CUDA_PROBE = ("import torch; assert torch.cuda.is_available(), 'no CUDA'; "
                     "print(torch.__version__)")


def _cuda_pythons() -> list[str]:
    """Other Pythons on PATH whose torch sees a CUDA device (``GPU_PYTHON`` first)."""
    here = os.path.realpath(sys.executable)
    found = []
    for cand in (os.environ.get("GPU_PYTHON"), shutil.which("python3"), shutil.which("python")):
        if cand and os.path.realpath(cand) != here and os.path.realpath(cand) not in found:
            if _probe(cand, _TORCH_CUDA_PROBE, 180)[0]:
                found.append(os.path.realpath(cand))
    return found


def gpu_plan(python: str, results: str, cupy: str | None, tiny: bool = False,
             report: bool = True, pytest_args=()) -> list[tuple[str, list[str]]]:
    """The GPU check's steps as (what, command): install CuPy (``cupy``: the package, or
    None when a working CuPy is there), the GPU tests, each GPU benchmark file, the report.
    The dry run prints these; the real run runs them."""
    bench = harness.BENCH_DIR
    steps = []
    if cupy and not tiny:
        steps.append((f"install CuPy when none works ({cupy}; offline: only from a wheel on "
                      "this machine)",
                      [python, "-m", "pip", "install", "--retries", "0", "--timeout", "15", cupy]))
    if not tiny:
        steps.append(("GPU tests", [python, "-m", "pytest", os.path.join(harness.CHECKOUT, "tests"),
                                    "-q", "-rfE", "-p", "no:cacheprovider", "-k", GPU_TESTS_K]))
    files, select = BENCH_SUITES["gpu"]
    for f in files:
        steps.append((f"GPU benchmark {f}",
                      [python, "-m", "pytest", os.path.join(bench, f), "-q", "-s", "-p",
                       "no:cacheprovider", "--benchmark-only", "-k", select, *pytest_args]))
    if report and not tiny:
        steps.append(("report (BENCHMARKS.md)",
                      [python, os.path.join(bench, "report.py"), "--results", results]))
    return steps


def _junit(path: str) -> dict:
    """Counts (passed, failed, errors, skipped) and the failed tests and skip reasons of a
    pytest --junitxml file."""
    out = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [],
           "skip_reasons": {}}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return out
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            out["failed"] += 1
            out["failures"].append(name)
        elif case.find("error") is not None:
            out["errors"] += 1
            out["failures"].append(name + " (error)")
        elif case.find("skipped") is not None:
            out["skipped"] += 1
            why = (case.find("skipped").get("message") or "").strip()[:160]
            out["skip_reasons"][why] = out["skip_reasons"].get(why, 0) + 1
        else:
            out["passed"] += 1
    out["failures"] = out["failures"][:40]
    return out


def _run_step(cmd, timeout: float, env: dict, log, junit: str | None = None) -> dict:
    """Run one command (its output goes to the console) in its own process group, killed
    with its children at ``timeout`` seconds; returns returncode, wall seconds, whether it
    timed out, and the junit counts."""
    cmd = list(cmd) + ([f"--junitxml={junit}"] if junit else [])
    log(f"$ {shlex.join(cmd)}   (at most {max(timeout, 0):.0f} s)")
    t0 = time.perf_counter()
    timed_out = False
    if timeout <= 0:
        return {"command": shlex.join(cmd), "returncode": None, "wall_seconds": 0.0,
                "timed_out": True, "note": "not started: the wall-clock budget is spent"}
    proc = subprocess.Popen(cmd, env=env, cwd=harness.CHECKOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc = proc.returncode
    out = {"command": shlex.join(cmd), "returncode": rc,
           "wall_seconds": round(time.perf_counter() - t0, 1), "timed_out": timed_out}
    if junit:
        out.update(_junit(junit))
    return out


def _dist_version(*names) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cuda_code(python: str, major_arch: str | None, timeout: float, log,
               build: bool = True) -> dict:
    """Make the CUDA kernels loadable: the fatbin if it is there; else build it with nvcc
    for this device (``setup.py build_py``, which also ships the sources); else ship the
    sources for CuPy's NVRTC (``LUSER_FAST_BUILD_EXT=0 setup.py build_py``). With ``build``
    False, only say what is there."""
    from .. import _ext

    src = os.path.join(_ext.CUDA_SRC_DIR, "all.cu")
    if os.path.exists(_ext.FATBIN):
        return {"kind": "fatbin", "path": _ext.FATBIN, "sources": os.path.exists(src)}
    if not build:
        return {"kind": "sources (compiled by CuPy's NVRTC at the first launch)"
                if os.path.exists(src) else "none: no fatbin and no sources (not built: tiny run)",
                "path": src if os.path.exists(src) else None}
    setup = [python, os.path.join(harness.CHECKOUT, "setup.py"), "-q", "build_py"]
    if shutil.which("nvcc") and shutil.which("cmake"):
        log(f"CUDA code: no fatbin; building it with nvcc for sm_{major_arch}")
        step = _run_step(setup, timeout, _env(LUSER_FAST_CUDA_ARCHS=major_arch or "80;90"), log)
        if os.path.exists(_ext.FATBIN):
            return {"kind": f"fatbin built here for sm_{major_arch}", "path": _ext.FATBIN,
                    "sources": os.path.exists(src), "build": step}
    if not os.path.exists(src):
        log("CUDA code: no fatbin and no nvcc; shipping the sources for CuPy's NVRTC")
        _run_step(setup, min(timeout, 60), _env(LUSER_FAST_BUILD_EXT="0"), log)
    return {"kind": "sources (compiled by CuPy's NVRTC at the first launch)"
            if os.path.exists(src) else "none: no fatbin and no sources",
            "path": src if os.path.exists(src) else None}


def run_gpu_check(results=None, tiny=False, report=True, budget_s=None, dry_run=None,
                  pytest_args=(), log=print) -> dict:
    """The GPU check (``make gpu-check``, ``luser-fast bench --suite gpu``).

    On a machine whose torch sees a CUDA device, within ``budget_s`` seconds of wall clock
    (default ``GPU_BUDGET_S``, or ``LUSER_FAST_GPU_BUDGET_S``):

    1. prints the environment (GPU, driver, CUDA of torch and of the driver, torch, CuPy,
       Triton, Python) and starts this machine's GPU run in
       ``<results>/gpu_<gpu name>.json`` (``harness.begin_gpu_run``);
    2. CuPy: kept when a working one imports; else installs the ``gpu`` extra's CuPy for
       the local CUDA major (``cupy_package``: torch's CUDA, else the driver's) with pip,
       which offline succeeds only from a wheel on the machine; if none works it says so,
       and the CUDA Radon and NUFFT parts are recorded "not measured: CuPy unavailable"
       while everything else still runs;
    3. the CUDA code: the fatbin, else built with nvcc for this device, else the sources
       for NVRTC;
    4. the GPU tests (``GPU_TESTS_K`` over tests/, at most ``TESTS_MAX_S`` seconds);
    5. each GPU benchmark file in its own process; each records its cases into the GPU run
       as soon as they are measured; once the budget (less ``RESERVE_S``) is spent, the
       cases not started skip (``LUSER_FAST_BENCH_DEADLINE``) and a file still running is
       stopped, so the run keeps what was measured and says what was not;
    6. records the check itself in the run (environment, CuPy, tests, suites, budget) and
       regenerates BENCHMARKS.md (``bench/report.py``), then prints the GPU goal rows.

    Without CUDA (no device, or ``LUSER_FAST_GPU_CHECK_DRY_RUN=1``, or ``dry_run``) it
    prints what it would run and runs nothing. When ``nvidia-smi`` sees a GPU but this
    Python's torch has no CUDA (a CPU build), it reruns itself with another Python on PATH
    whose torch has CUDA (``GPU_PYTHON`` first), or says so and fails.

    Returns:
        dict: returncode (0: everything ran and passed; 1: a test or benchmark failed or
        was stopped by the budget; 2: a GPU but no CUDA torch), dry_run, reason, and on a
        real run the record stored in the GPU run.
    """
    import torch

    start = time.time()
    results = os.path.abspath(results or harness.results_dir())
    if budget_s is None:
        budget_s = float(os.environ.get("LUSER_FAST_GPU_BUDGET_S", GPU_BUDGET_S))
    if dry_run is None:
        dry_run = os.environ.get("LUSER_FAST_GPU_CHECK_DRY_RUN") == "1"
    smi = _nvidia_smi()
    torch_cuda = torch.cuda.is_available()
    major = cuda_major(torch.version.cuda, smi.get("cuda"))

    if not torch_cuda and smi and not dry_run:
        why = (f"nvidia-smi sees {', '.join(smi['gpus'])} (driver {smi.get('driver')}, CUDA "
               f"{smi.get('cuda')}) but torch {torch.__version__} in {sys.executable} has no "
               "CUDA" + (" (a CPU build)" if torch.version.cuda is None else
                         " (torch.cuda.is_available() is False)"))
        others = [] if os.environ.get("LUSER_FAST_GPU_CHECK_REEXEC") else _cuda_pythons()
        if others:
            log(f"gpu-check: {why}; rerunning with {others[0]}, whose torch has CUDA")
            cmd = [others[0], "-m", "luser_fast.cli", "bench", "--suite", "gpu",
                   "--results", results, *([] if report else ["--no-report"]),
                   *(["--tiny"] if tiny else []),
                   *(["--pytest-args", *pytest_args] if pytest_args else [])]
            rc = subprocess.run(cmd, cwd=harness.CHECKOUT,
                                env=_env(LUSER_FAST_GPU_CHECK_REEXEC=1)).returncode
            return {"returncode": rc, "dry_run": False, "python": others[0],
                    "reason": f"{why}; ran with {others[0]}"}
        log(f"gpu-check: {why}, and no other Python on PATH has a CUDA torch: nothing measured. "
            "Run it with a Python whose torch has CUDA: make gpu-check GPU_PYTHON=/path/to/python")
        return {"returncode": 2, "dry_run": False, "reason": why + "; nothing measured"}

    if dry_run or not torch_cuda:
        reason = ("dry run (LUSER_FAST_GPU_CHECK_DRY_RUN=1)" if dry_run and torch_cuda else
                  f"no CUDA device on this machine (torch {torch.__version__}, "
                  f"torch.version.cuda {torch.version.cuda}, "
                  + ("nvidia-smi sees no GPU" if not smi else f"nvidia-smi: {smi['gpus']}") + ")")
        pkg = cupy_package(major)
        log(f"gpu-check: {reason}: nothing is installed or run. On a CUDA machine it would "
            f"run, within {budget_s:.0f} s of wall clock:")
        log(f"  0. print the environment (GPU, driver, CUDA, torch, CuPy, Triton) and start the "
            f"GPU run in {os.path.join(results, 'gpu_<gpu name>.json')} (keyed by GPU name, "
            "driver, CUDA, torch version, git SHA)")
        log("  1. CuPy: keep one that imports and sees the device, else install the gpu extra's "
            "CuPy for the local CUDA major ("
            + (f"here {pkg}" if major else "unknown here: cupy-cuda12x for CUDA 12, "
               "cupy-cuda13x for 13") + "); without a working CuPy the CUDA Radon and NUFFT "
            "parts are recorded 'not measured: CuPy unavailable' and the rest still runs")
        log("  2. CUDA code: the fatbin, else built with nvcc for the device (setup.py "
            "build_py), else the sources for CuPy's NVRTC")
        for what, cmd in gpu_plan(sys.executable, results, pkg, tiny, report, pytest_args):
            log(f"  - {what}: {shlex.join(cmd)}")
        log("  (before the report the check records itself in the GPU run: environment, CuPy, "
            "tests, each benchmark's exit and time, what the budget stopped; after it, it "
            "prints the GPU goal verdicts)")
        return {"returncode": 0, "dry_run": True, "reason": reason}

    # --- a real run --------------------------------------------------------------------
    deadline = start + budget_s - RESERVE_S
    gpu = harness.gpu_info()
    env_info = {"python": sys.executable, "python_version": sys.version.split()[0],
                "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                "driver_cuda": smi.get("cuda"), "cuda_major": major,
                "triton": _dist_version("triton"), "cupy": harness.cupy_version(),
                "nvidia_smi": smi.get("gpus")}
    log(f"gpu-check: {gpu['name']} (compute {gpu['capability']}, "
        f"{gpu['memory_bytes'] / 2**30:.0f} GiB, {gpu['count']} device(s)), driver "
        f"{gpu['driver']}, CUDA {gpu['cuda']} (torch) / {smi.get('cuda')} (driver), torch "
        f"{torch.__version__}, CuPy {env_info['cupy']}, Triton {env_info['triton']}, Python "
        f"{env_info['python_version']} ({sys.executable}); peak bandwidth "
        + (f"{gpu['bandwidth_B_s'] / 1e9:.0f} GB/s ({gpu['bandwidth_source']})"
           if gpu["bandwidth_B_s"] else gpu["bandwidth_source"])
        + f"; budget {budget_s:.0f} s")
    key = harness.begin_gpu_run(results, check={"environment": env_info, "status": "running",
                                                "budget_seconds": budget_s})
    log(f"gpu-check: recording into {harness.gpu_results_path(gpu['name'], results)} "
        f"under \"{key}\"")

    # CuPy
    pkg = cupy_package(major)
    ok, detail = _probe(sys.executable, _CUPY_PROBE)
    cupy = {"package": pkg, "available": ok, "detail": detail, "installed_by_check": False}
    if ok:
        log(f"CuPy: {detail} (already installed; nothing to install)")
    elif tiny:
        cupy["reason"] = f"CuPy unavailable ({detail}); a tiny run installs nothing"
    else:
        log(f"CuPy: not usable ({detail}); installing {pkg}, the gpu extra's CuPy for CUDA "
            f"{major}")
        step = _run_step(gpu_plan(sys.executable, results, pkg)[0][1], INSTALL_MAX_S, _env(), log)
        ok, detail = _probe(sys.executable, _CUPY_PROBE)
        cupy.update(available=ok, detail=detail, installed_by_check=ok, install=step)
        if ok:
            log(f"CuPy: {detail} (installed {pkg})")
        else:
            cupy["reason"] = (f"CuPy unavailable: pip install {pkg} failed (exit "
                              f"{step['returncode']}; offline, pip installs only from a wheel "
                              f"on this machine) and no working CuPy imports ({detail})")
            log(f"CuPy: {cupy['reason']}. The CUDA Radon and NUFFT tests and benchmarks cannot "
                "run and are recorded 'not measured: CuPy unavailable'; the Triton, solver and "
                "memory parts still run.")
    cuda_code = _cuda_code(sys.executable, gpu["capability"].replace(".", ""),
                           min(240, max(0, deadline - time.time() - 240)), log, build=not tiny)
    log(f"CUDA code: {cuda_code['kind']}")
    check = {"environment": env_info, "cupy": cupy, "cuda_code": cuda_code,
             "budget_seconds": budget_s, "status": "running"}
    harness.update_gpu_run({"check": check}, results, key)

    steps = gpu_plan(sys.executable, results, None, tiny, False, pytest_args)
    tmp = tempfile.mkdtemp(prefix="luser_fast_gpu_check_")
    env = _env(LUSER_FAST_BENCH_RESULTS=results, LUSER_FAST_BENCH_TINY=1 if tiny else 0,
               LUSER_FAST_GPU_RUN_KEY=key)
    if not tiny:
        what, cmd = steps.pop(0)
        log(f"--- {what} (-k \"{GPU_TESTS_K}\")")
        limit = min(TESTS_MAX_S, deadline - time.time() - 180)
        check["tests"] = _run_step(cmd, limit, env, log, os.path.join(tmp, "tests.xml"))
        t = check["tests"]
        log(f"tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
            f"{t['skipped']} skipped in {t['wall_seconds']} s"
            + (" (stopped by the budget)" if t["timed_out"] else ""))
        harness.update_gpu_run({"check": check}, results, key)
    check["suites"] = {}
    env["LUSER_FAST_BENCH_DEADLINE"] = f"{deadline:.0f}"
    for (what, cmd), name in zip(steps, BENCH_SUITES["gpu"][0]):
        log(f"--- {what}")
        if not cupy["available"] and name in CUPY_FILES:
            check["suites"][name] = {"returncode": None, "not_run": "CuPy unavailable"}
            log(f"{name}: not run (CuPy unavailable)")
            continue
        if time.time() >= deadline:
            check["suites"][name] = {"returncode": None, "not_run": "the wall-clock budget is spent"}
            log(f"{name}: not run (the wall-clock budget is spent)")
            continue
        check["suites"][name] = _run_step(cmd, deadline - time.time() + 20, env, log,
                                          os.path.join(tmp, f"{name}.xml"))
        harness.update_gpu_run({"check": check}, results, key)
    shutil.rmtree(tmp, ignore_errors=True)

    failed = ([] if tiny or (check["tests"]["returncode"] in (0, 5)
                             and not check["tests"]["timed_out"]) else ["tests"])
    cut = []
    for name, r in check["suites"].items():
        if r.get("not_run") == "the wall-clock budget is spent" or r.get("timed_out"):
            cut.append(name)
        elif r.get("returncode") not in (None, 0, 5):
            failed.append(name)
        elif any("budget" in why for why in r.get("skip_reasons", {})):
            cut.append(name)
    check.update(status="done", wall_seconds=round(time.time() - start, 1),
                 failed=failed, stopped_by_budget=cut)
    harness.update_gpu_run({"check": check}, results, key)
    if report and not tiny:
        if _report(harness.BENCH_DIR, results, log) == 0:
            _print_gpu_goals(log)
        else:
            failed.append("report")
            check["failed"] = failed
            harness.update_gpu_run({"check": check}, results, key)
            log("gpu-check: bench/report.py failed: BENCHMARKS.md was not regenerated; the run "
                "is recorded, rerun `python bench/report.py` where it works")
    log(f"gpu-check: {time.time() - start:.0f} s; results in "
        f"{harness.gpu_results_path(gpu['name'], results)}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + (f"; stopped by the {budget_s:.0f} s budget: {', '.join(cut)}" if cut else ""))
    return {"returncode": 1 if failed or cut else 0, "dry_run": False,
            "reason": None if not (failed or cut) else
            f"failed: {failed}; stopped by the budget: {cut}", "check": check}


def _print_gpu_goals(log) -> None:
    """The GPU rows of BENCHMARKS.md's goal table."""
    path = os.path.join(harness.CHECKOUT, "BENCHMARKS.md")
    try:
        with open(path) as fh:
            rows = [ln for ln in fh if ln.startswith("| #") and "GPU" in ln]
    except OSError:
        return
    log("GPU goals (BENCHMARKS.md):")
    for ln in rows:
        log("  " + ln.rstrip())
