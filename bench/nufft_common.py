"""What the NUFFT benchmarks (``test_bench_nufft.py``, 2-D; ``test_bench_nufft3d.py``,
3-D) share: FINUFFT's plans, the report fixture, recording a case, the JSON section and
the printed table. Not a test file itself (imported from bench/, the suites' folder)."""
from __future__ import annotations

import pytest
import torch

from luser_fast.profile import harness


def finufft_plans(ktraj: torch.Tensor, size, coils: int, tol: float, threads: int):
    """FINUFFT's complex64 type-2 and type-1 plans (the same sign conventions as ours) for
    ``coils`` transforms of ``size`` on ``ktraj`` ([M, 2] or [M, 3]; FINUFFT's first
    coordinate runs along the array's first axis, as ktraj's first column does), points
    set: (type 2, type 1)."""
    import finufft

    k = [ktraj[:, d].numpy().copy() for d in range(ktraj.shape[1])]
    plans = []
    for kind, sign in ((2, -1), (1, 1)):
        plan = finufft.Plan(kind, tuple(size), n_trans=coils, eps=tol, isign=sign,
                            nthreads=threads, dtype="complex64")
        plan.setpts(*k)
        plans.append(plan)
    return tuple(plans)


def report_fixture(threads: int, write):
    """The module-scoped ``report`` fixture: collects seconds (min, median, max) and
    errors; ``write(results)`` writes the JSON and prints the table (when anything was
    timed)."""
    @pytest.fixture(scope="module")
    def report():
        with harness.collect(threads, write, when=timed) as results:
            yield results

    return report


def timed(results: dict) -> bool:
    return any("seconds" in r for r in results.values()) or "paired" in results


def record(benchmark, name: str, error: float | None, results: dict) -> None:
    entry = results.setdefault(name, {})
    if error is not None:
        entry["error"] = error
        benchmark.extra_info["relative_l2_error"] = error
    t = harness.timing(benchmark)
    if t is not None:
        entry["seconds"] = t


def section(results: dict, ratios) -> dict:
    """A run's section: ms and errors per case, and ``ratios(seconds)``."""
    seconds = {k: v["seconds"] for k, v in results.items() if "seconds" in v}
    return {"ms": {k: harness.ms(v) for k, v in sorted(seconds.items())},
            "relative_l2_error": {k: float(f"{v['error']:.3g}") for k, v in sorted(results.items())
                                  if "error" in v},
            "ratios": ratios(seconds)}


def save_and_print(run: dict, suite: str, title: str, width: int) -> None:
    """Store ``run`` as ``suite`` and print its table (case names ``width`` wide)."""
    key = harness.save_run(suite, run)
    print(f"\n{title} ({key}), ms (min / median / max), relative l2 error:")

    def rows(section):
        errors = section["relative_l2_error"]
        return [f"  {k:{width}s} " + " ".join(f"{v:9.3f}" for v in t.values())
                + (f"   err {errors[k]:.2e}" if k in errors else "")
                for k, t in section["ms"].items()]

    print("\n".join(harness.section_lines(run, rows)))


def finufft_call(problem, size, coils: int, kind: str, tol: float, threads: int):
    """(run, error): FINUFFT's ``kind`` transform of ``problem``'s image (type 2) or values
    (type 1) as a call, and its error against the exact sums (``problem.error``), checked
    first; skips where FINUFFT is not installed."""
    pytest.importorskip("finufft")
    type2, type1 = finufft_plans(problem.ktraj, size, coils, tol, threads)
    plan, data = ((type2, problem.image.numpy()) if kind == "type2"
                  else (type1, problem.values.numpy()))

    def run():
        return plan.execute(data)

    err = problem.error(kind, run())
    # FINUFFT's complex64 transforms spread and FFT in float32: their floor is ~1e-5
    assert err <= max(10 * tol, 1e-4), err
    return run, err
