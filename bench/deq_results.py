"""Result files of the equilibrium-core benchmarks (``test_bench_solver.py``,
``test_bench_deq_memory.py``): one JSON file per suite holding one run per key
"cpu model | torch version | git SHA"; a rerun on the same key replaces its entry."""
from __future__ import annotations

import datetime
import json
import os
import platform

import torch

from test_bench_radon import _cpu_model, _git_sha

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def new_run(threads: int, **versions) -> dict:
    """The header of a run: date, machine, versions (torch, python and ``versions``), SHA."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": threads},
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     **versions},
        "git_sha": _git_sha(),
    }


def save_run(name: str, run: dict) -> str:
    """Store ``run`` in ``bench/results/<name>`` under its key; returns the key."""
    key = f"{run['machine']['cpu']} | torch {run['versions']['torch']} | {run['git_sha']}"
    path = os.path.join(RESULTS_DIR, name)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    runs = {}
    if os.path.exists(path):
        with open(path) as fh:
            runs = json.load(fh)
    runs[key] = run
    with open(path, "w") as fh:
        json.dump(runs, fh, indent=2)
        fh.write("\n")
    return key
