"""``luser-fast bench``: run the benchmark suites of the repository's ``bench/`` folder and
regenerate BENCHMARKS.md from what they recorded.

The suites (pytest-benchmark files) and the report generator ``bench/report.py`` are part
of the source checkout, not of the installed package: this module finds them next to the
package (an editable install in a checkout) and says so when they are not there. The
suites record through ``luser_fast.profile.harness``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from . import harness

__all__ = ["BENCH_SUITES", "bench_dir", "run_bench"]

#: ``luser-fast bench --suite``: pytest files of bench/ (and a -k filter) per suite
BENCH_SUITES = {
    "ops": (("test_bench_radon.py", "test_bench_nufft.py"), "not cuda"),
    "solver": (("test_bench_solver.py",), None),
    "train": (("test_bench_deq_memory.py",), None),
    "gpu": (("test_bench_triton.py", "test_bench_radon.py", "test_bench_nufft.py"),
            "cuda or triton"),
}


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
    versions and git SHA. The GPU suite runs only on a machine with a CUDA device and is
    otherwise recorded as skipped, with the reason. This invocation is recorded too
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
    for suite in dict.fromkeys(suites):
        files, select = BENCH_SUITES[suite]
        if suite == "gpu" and not torch.cuda.is_available():
            record["skipped"][suite] = "no CUDA device on this machine"
            log(f"bench {suite}: skipped (no CUDA device on this machine)")
            continue
        cmd = [sys.executable, "-m", "pytest", *(os.path.join(bench, f) for f in files), "-q",
               "-s", "-p", "no:cacheprovider", "--benchmark-only",
               *(["-k", select] if select else []), *pytest_args]
        log(f"bench {suite}: {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=env, cwd=os.path.dirname(bench)).returncode
        record["suites"][suite] = {"files": list(files), "returncode": rc,
                                   "wall_seconds": round(time.perf_counter() - t0, 1)}
    run = harness.new_run(torch.get_num_threads())
    run["tiny"] = tiny
    run["command"] = "luser-fast bench --suite " + " ".join(dict.fromkeys(suites))
    run.update(record)
    harness.save_run("bench_runs", run, folder=results)
    if json_path:
        _write_produced(json_path, run, results, started)
    if report and not tiny:
        subprocess.run([sys.executable, os.path.join(bench, "report.py"), "--results", results],
                       check=True)
    failed = [s for s, r in record["suites"].items() if r["returncode"] not in (0, 5)]
    if failed:
        log(f"bench: suites with failures: {', '.join(failed)}")
    return run


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
