"""The one harness every benchmark suite in ``bench/`` records through (and the demo).

A suite writes one *run* per invocation into ``<results>/<suite>.json``, a dict keyed by
"machine | torch version | git SHA" (a rerun on the same key replaces its entry). A run
holds the date, the machine (CPU model, cores, threads, GPU name if any), the versions
(torch, python, triton, luser_fast and the peers the suite used), the git SHA, the
problem set-up, and its measurements. Timings are seconds over repeats as
``{"min", "median", "max"}``; a ratio row ``ours / peer`` (or ``peer / ours``) carries the
ratio of medians with the band [best case, worst case] the repeats allow, so that two runs
can be compared within the noise each reports.

The suites themselves live in the repository's ``bench/`` folder (not installed);
``luser_fast.profile.bench.run_bench`` (``luser-fast bench``) runs them. Environment:

* ``LUSER_FAST_BENCH_RESULTS``: results folder (default ``bench/results`` of the checkout
  holding this package);
* ``LUSER_FAST_BENCH_TINY=1``: every suite shrinks its problem to a few milliseconds, so
  the test suite can run the harness end to end (tiny runs are marked ``"tiny": true``
  and the report ignores them).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
from importlib import metadata

import torch

from .provenance import cpu_model, git_sha as _git_sha

__all__ = ["CHECKOUT", "BENCH_DIR", "results_dir", "tiny", "pick", "git_sha", "gpu_name",
           "machine", "versions", "new_run", "run_key", "store_run", "save_run", "collect",
           "add_sections", "section_lines", "timing", "stats_of", "ratio", "ms", "rounded"]

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


def machine(threads: int) -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "gpu": gpu_name()}


def versions(*packages: str) -> dict:
    """torch, python, triton, luser_fast, numpy and ``packages`` (None when not installed)."""
    out = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("luser_fast", "triton", "numpy", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def new_run(threads: int, *packages: str) -> dict:
    """The header of a run: date, machine, versions (with ``packages``), SHA, tiny flag."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(threads),
        "versions": versions(*packages),
        "git_sha": git_sha(),
        "tiny": tiny(),
    }


def run_key(run: dict) -> str:
    """"machine | torch version | git SHA" (and "| tiny" for a harness check, so a check
    never replaces a full run at the same SHA)."""
    key = f"{run['machine']['cpu']} | torch {run['versions']['torch']} | {run['git_sha']}"
    return key + " | tiny" if run.get("tiny") else key


def store_run(path: str, run: dict) -> str:
    """Store ``run`` under its key in the JSON file ``path`` (created with its folder; the
    other runs in it are kept); returns the key."""
    key = run_key(run)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    runs = {}
    if os.path.exists(path):
        with open(path) as fh:
            runs = json.load(fh)
    runs[key] = run
    with open(path, "w") as fh:
        json.dump(runs, fh, indent=2)
        fh.write("\n")
    return key


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
