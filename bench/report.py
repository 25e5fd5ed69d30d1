"""BENCHMARKS.md and its plots, generated from the measured JSON in ``bench/results``.

    python bench/report.py [--results bench/results] [--out BENCHMARKS.md] [--plots bench/plots]

Every figure in BENCHMARKS.md comes from a run that a suite in ``bench/`` wrote through
``luser_fast.profile.harness`` (``luser-fast bench`` runs them all): for each results file
the newest run (by date) that is not a tiny harness check is shown, with the machine,
versions, git SHA and date it was measured at. Goal figures of the issues are checked
against those runs: each verdict ("met" / "missed") is computed from the measured value
against the goal stated next to it, and a goal without a measured value reads "not
measured" (with the reason where the run records one), never "met". GPU runs
(``gpu_<gpu>.json``, written by ``make gpu-check``) are shown one per GPU, the newest of
each; every GPU goal is in the goal table whether or not a GPU run exists (``GPU_GOALS``).
The design-space study (``study_cpu.json``, written by ``luser-fast study``) holds every
run of a resumable sweep; its section shows mean ± std over seeds. Nothing here is typed by
hand: edit the suites or this generator, never the output.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
MIB = 2 ** 20

# --- loading -------------------------------------------------------------------------------


def latest(results: str, suite: str, tiny: bool = False) -> dict | None:
    """The newest harness-format run of ``<results>/<suite>.json``: a full one, or with
    ``tiny`` a tiny harness check too (the harness's own test renders those)."""
    path = os.path.join(results, f"{suite}.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        runs = json.load(fh)
    if suite == "demo_cpu":                  # written by luser_fast.demo, not the harness
        runs = list(runs.values())
    else:
        runs = [r for r in runs.values() if r.get("tiny") is False or (tiny and r.get("tiny"))]
    return max(runs, key=lambda r: r["date"]) if runs else None


SUITES = ("radon_cpu", "nufft_cpu", "nufft3d_cpu", "conebeam_cpu", "solver_cpu",
          "deq_memory_cpu", "memprofile_cpu", "memprofile3d_cpu", "demo_cpu", "bench_runs")


def latest_gpu(results: str, tiny: bool = False) -> list[dict]:
    """The newest run of each ``<results>/gpu_<gpu>.json`` (one file per GPU model, written
    through ``luser_fast.profile.harness`` by ``make gpu-check``), by GPU name."""
    runs = []
    if os.path.isdir(results):
        for name in sorted(os.listdir(results)):
            if name.startswith("gpu_") and name.endswith(".json"):
                run = latest(results, name[:-5], tiny)
                if run is not None:
                    runs.append(run)
    return sorted(runs, key=lambda r: r["gpu"]["name"])


def load(results: str, tiny: bool = False) -> dict:
    runs = {s: latest(results, s, tiny) for s in SUITES}
    runs["gpu"] = latest_gpu(results, tiny)
    return runs


# --- formatting ----------------------------------------------------------------------------


def fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"


def band(r: dict) -> str:
    """A ratio row: median [low, high] (the band the repeats allow)."""
    return f"**{fmt(r['median'])}** [{fmt(r['low'])}, {fmt(r['high'])}]"


def timing(t: dict | None) -> str:
    return "n/a" if t is None else f"{fmt(t['min'])} / **{fmt(t['median'])}** / {fmt(t['max'])}"


def table(header, rows, left=1) -> list[str]:
    """A markdown table; the first ``left`` columns align left, the rest (figures) right."""
    def cell(c):
        return str(c).replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out + [""]


def provenance(run: dict) -> str:
    m, v = run["machine"], run["versions"]
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    extra = ", ".join(f"{k} {val}" for k, val in v.items()
                      if k not in ("torch", "python") and val is not None)
    return (f"Measured {run['date']} at git `{run['git_sha']}` on \"{m['cpu']}\" ({m['cores']} "
            f"cores, {m['threads']} thread(s){gpu}); torch {v['torch']}, Python {v['python']}"
            + (f", {extra}" if extra else "") + ".")


# --- goals ---------------------------------------------------------------------------------


class Goals:
    """Rows of the goal table: issue, figure, goal, measured, verdict."""

    def __init__(self):
        self.rows = []

    def add(self, issue, figure, goal, value, ok, note="", why=None):
        """One row; ``value`` None: "not measured" (": ``why``" when the reason is known)."""
        if value is None:
            verdict = "not measured" + (f": {why}" if why else "")
        else:
            verdict = "met" if ok else "**missed**"
        shown = "not measured" if value is None else value
        self.rows.append((f"#{issue}", figure, goal, shown, verdict + (f" ({note})" if note else "")))

    def at_least(self, issue, figure, value, goal, suffix="x", note="", why=None, show=fmt):
        self.add(issue, figure, f">= {show(goal)}{suffix}",
                 None if value is None else f"{show(value)}{suffix}",
                 value is not None and value >= goal, note, why)

    def at_most(self, issue, figure, value, goal, suffix="x", note="", why=None, show=fmt):
        self.add(issue, figure, f"<= {show(goal)}{suffix}",
                 None if value is None else f"{show(value)}{suffix}",
                 value is not None and value <= goal, note, why)


# --- sections ------------------------------------------------------------------------------


def no_run(command: str) -> list[str]:
    """The body of a section without a full run: the command that records one."""
    return [f"No full run recorded: `{command}`.", ""]


def radon_section(run, goals, plots) -> list[str]:
    out = ["## Radon transform (CPU)", ""]
    if run is None:
        goals.at_least(5, "scikit-image radon / luser_fast, per image", None, 30)
        goals.at_least(5, "ASTRA CPU / luser_fast, forward + adjoint per image", None, 4)
        return out + no_run("luser-fast bench --suite ops")
    p = run["problem"]
    out += [provenance(run), "",
            f"{p['image'][0]} x {p['image'][1]} images, {p['angles']} angles, {p['detectors']} "
            f"detectors, {p['dtype']}; luser_fast on batch {p['batch']} with "
            f"{run['machine']['threads']} threads (and on 1); scikit-image `radon` and ASTRA's CPU "
            "`linear` projector one image per call on one thread (as they run). Correctness "
            "against the reference is asserted before each timing.", ""]
    sections = [("separate rounds (pytest-benchmark)", run)]
    if run.get("paired"):
        sections.append(("paired rounds (interleaved calls: load from other processes hits "
                         "every implementation alike)", run["paired"]))
    for title, sec in sections:
        out += [f"Milliseconds per image, {title} (min / **median** / max):", ""]
        out += table(("case", "ms per image"), [(k, timing(t)) for k, t in sec["ms_per_image"].items()])
        out += ["Ratios (peer / luser_fast; above 1: luser_fast is faster), **median** [band over "
                "repeats]:", ""]
        out += table(("ratio", "value"), [(k, band(r)) for k, r in sec["ratios"].items()])
    judged = run.get("paired") or run
    which = "paired rounds" if run.get("paired") else "separate rounds"
    ratios = judged["ratios"]
    sk = ratios.get("skimage radon / luser_fast forward + adjoint (b8)")
    goals.at_least(5, "scikit-image radon / luser_fast forward + adjoint, per image (b8)",
                   sk and sk["median"], 30, note=which)
    ast = ratios.get("astra forward + backprojection / luser_fast forward + adjoint (b8)")
    goals.at_least(5, "ASTRA CPU forward + backprojection / luser_fast, per image (b8)",
                   ast and ast["median"], 4, note=which)
    one = ratios.get("astra forward + backprojection / luser_fast forward + adjoint "
                     "(b8, 1 thread)")
    goals.at_least(5, "... the same on 1 thread (per core)", one and one["median"], 4,
                   note=which)
    sweep = {int(k.rsplit("_n", 1)[1]): t for k, t in run["ms_per_image"].items()
             if "_n" in k and k.startswith("luser_fast_fwd_adj")}
    if sweep and plots:
        path = _plot_sweep(plots, sweep, p)
        out += [f"![Radon throughput against image size]({path})", ""]
    return out


def _plot_sweep(plots, sweep, p) -> str:
    plt = _pyplot()
    sizes = sorted(sweep)
    rate = [1e3 / sweep[s]["median"] for s in sizes]
    lo = [r - 1e3 / sweep[s]["max"] for r, s in zip(rate, sizes)]
    hi = [1e3 / sweep[s]["min"] - r for r, s in zip(rate, sizes)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(sizes, rate, yerr=[lo, hi], marker="o", capsize=3,
                label=f"luser_fast forward + adjoint, batch {p['batch']}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("image side (pixels)")
    ax.set_ylabel("images / s")
    ax.set_title(f"Radon CPU, {p['angles']} angles", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save(fig, "radon_throughput_vs_size.png")


def _nufft_timings(run) -> tuple[list[str], dict, str]:
    """A NUFFT run's timing and ratio tables (separate rounds, then paired rounds when the
    run has them), and the rounds its goals are judged on (paired where present) with their
    name: (lines, judged, which)."""
    out = []
    sections = [("separate rounds (pytest-benchmark)", run)]
    if run.get("paired"):
        sections.append(("paired rounds (interleaved calls: load from other processes hits "
                         "every implementation alike)", run["paired"]))
    for title, sec in sections:
        out += [f"Milliseconds, {title} (min / **median** / max):", ""]
        out += table(("case", "ms", "relative l2 error"),
                     [(k, timing(t), fmt(sec["relative_l2_error"].get(k)))
                      for k, t in sec["ms"].items()])
        out += table(("ratio", "**median** [band]"), [(k, band(r)) for k, r in sec["ratios"].items()])
    judged = run.get("paired") or run
    which = "paired rounds" if run.get("paired") else "separate rounds"
    return out, judged, which


def nufft_section(run, goals) -> list[str]:
    out = ["## NUFFT (CPU)", ""]
    kinds = [(k, t) for k in ("type2", "type1") for t in ("0.001", "1e-06")]
    if run is None:
        for kind, tol in kinds:
            goals.at_most(6, f"luser_fast / finufft, {kind}, tol {tol}", None, 1.0)
        return out + no_run("luser-fast bench --suite ops")
    p = run["problem"]
    out += [provenance(run), "",
            f"{p['image'][0]} x {p['image'][1]} image, {p['trajectory']} {p['spokes']} spokes x "
            f"{p['samples']} samples ({p['points']:,} points), {p['coils']} coils, {p['dtype']}, "
            f"{run['machine']['threads']} threads; luser_fast's grid oversampling per tol "
            f"{p.get('luser_fast_oversamp', 'n/a')} (FINUFFT chooses its own). "
            "Each result is checked against the exact "
            "NUDFT on a subset first; the relative l2 error is shown next to the time. "
            "torchkbnufft's accuracy is fixed by its table (numpoints 6).", ""]
    lines, judged, which = _nufft_timings(run)
    out += lines
    for kind, tol in kinds:
        r = judged["ratios"].get(f"luser_fast / finufft, {kind}, tol {tol}")
        goals.at_most(6, f"luser_fast / finufft time, {kind}, tol {tol}", r and r["median"], 1.0,
                      note=which)
    errors = judged["relative_l2_error"]
    for kind in ("type2", "type1"):
        # the goal: >= 10x at equal or better accuracy, so ours at the loosest tol whose
        # error is at most torchkbnufft's (its table fixes its accuracy)
        kb = errors.get(f"torchkbnufft_{kind}")
        tols = [t for _, t in kinds if kb is not None
                and errors.get(f"luser_fast_{kind}_{t}", math.inf) <= kb]
        tol = max(tols, key=float) if tols else None
        r = judged["ratios"].get(f"torchkbnufft / luser_fast, {kind}, tol {tol}")
        goals.at_least(6, f"torchkbnufft / luser_fast time, {kind}, equal or better accuracy "
                       f"(ours at tol {tol})", r and r["median"], 10, note=which)
    return out


def nufft3d_section(run, goals) -> list[str]:
    """The 3-D NUFFT against FINUFFT 3-D (full problem, 1 thread and all threads) and
    torchkbnufft 3-D (on the subset trajectory, with ours on the same subset); #15 goals."""
    out = ["## 3-D NUFFT (CPU)", ""]
    kinds = [(k, t) for k in ("type2", "type1") for t in ("0.001", "1e-06")]
    if run is None:
        for kind, tol in kinds:
            goals.at_most(15, f"3-D luser_fast / finufft time, {kind}, tol {tol}", None, 1.0)
        for kind in ("type2", "type1"):
            goals.at_least(15, f"3-D torchkbnufft / luser_fast time, {kind}", None, 10)
        return out + no_run("luser-fast bench --suite ops")
    p = run["problem"]
    out += [provenance(run), "",
            f"{' x '.join(map(str, p['volume']))} volume, {p['trajectory']} {p['spokes']:,} spokes "
            f"x {p['samples']} samples ({p['points']:,} points), {p['coils']} coils, "
            f"{p['dtype']}, on {' and '.join(str(t) for t in p['threads'])} thread(s); "
            f"luser_fast's grid oversampling per tol {p.get('luser_fast_oversamp', 'n/a')} "
            "(FINUFFT chooses its own, the coils as n_trans of one plan). torchkbnufft 3-D is "
            f"timed on a subset of {p['subset_spokes']:,} spokes ({p['subset_points']:,} points), "
            "with luser_fast on the same subset (cases `*_subset`), on all threads: one of its "
            "calls on the full problem takes minutes. Each result is checked against the "
            "exact NUDFT on a subset first; the relative l2 error is shown next to the time.", ""]
    lines, judged, which = _nufft_timings(run)
    out += lines
    for kind, tol in kinds:
        for t in p["threads"]:
            r = judged["ratios"].get(f"luser_fast / finufft, {kind}, tol {tol}, {t} thread(s)")
            goals.at_most(15, f"3-D luser_fast / finufft time, {kind}, tol {tol}, {t} thread(s)",
                          r and r["median"], 1.0, note=which)
    errors = judged["relative_l2_error"]
    for kind in ("type2", "type1"):
        # >= 10x at equal or better accuracy: ours at the loosest tol whose error on the
        # subset is at most torchkbnufft's
        kb = errors.get(f"torchkbnufft_{kind}_subset")
        tols = [t for _, t in kinds if kb is not None
                and errors.get(f"luser_fast_{kind}_{t}_subset", math.inf) <= kb]
        tol = max(tols, key=float) if tols else None
        r = judged["ratios"].get(f"torchkbnufft / luser_fast, {kind}, tol {tol}, subset")
        goals.at_least(15, f"3-D torchkbnufft / luser_fast time, {kind}, equal or better "
                       f"accuracy (ours at tol {tol}; {p['subset_points']:,} points)",
                       r and r["median"], 10, note=which)
    return out


#: issue 15 names no number for the cone-beam CPU projector against its reference; this
#: goal is ours (the 2-D projector's is 30x scikit-image per image)
CONEBEAM_GOAL = 20


def conebeam_section(run, goals) -> list[str]:
    out = ["## Cone-beam CT (CPU)", ""]
    figure = "reference / luser_fast cone-beam CPU forward + adjoint (b1, 1 thread)"
    if run is None:
        goals.at_least(15, figure, None, CONEBEAM_GOAL)
        return out + no_run("luser-fast bench --suite ops")
    p = run["problem"]
    model = run.get("model") or {}
    bw = model.get("stream_bandwidth_GB_s", {})
    out += [provenance(run), "",
            f"{p['volume'][0]}^3 {p['dtype']} volume, {p['angles']} angles (full circle), "
            f"{p['detector'][0]} x {p['detector'][1]} detector, source {fmt(p['source_distance'])}"
            f" and detector {fmt(p['detector_distance'])} from the axis; {p['rays']:,} rays "
            f"taking {p['samples_per_volume']:,} samples per volume (an update is one of the 4 "
            "voxels a sample interpolates). The reference comparison runs both on the first "
            f"{p['reference_angles']} angles, in interleaved rounds, on one thread. Correctness "
            "against the reference is asserted before each timing.", ""]
    out += ["Milliseconds per call (min / **median** / max):", ""]
    out += table(("case", "ms"), [(k, timing(t)) for k, t in run["ms"].items()])
    out += ["Voxel-ray updates per second per core, **median** [band over repeats]:", ""]
    out += table(("case", "updates / s / core"),
                 [(k, f"**{sci(r['median'])}** [{sci(r['low'])}, {sci(r['high'])}]")
                  for k, r in run["updates_per_second_per_core"].items()])
    if run["ratios"]:
        out += table(("ratio (above 1: luser_fast is faster)", "**median** [band]"),
                     [(k, band(r)) for k, r in run["ratios"].items()])
    if model:
        stream = model["streaming_bound_updates_per_s_per_core"]
        out += [f"Memory-bandwidth model (stated in bench/test_bench_conebeam.py): stream "
                f"bandwidth {fmt(bw.get('1_thread'))} GB/s on one thread, "
                f"{fmt(max(bw.values()))} GB/s on all; were every update a DRAM access "
                f"(no reuse) one core could do at most {sci(stream['forward'])} forward / "
                f"{sci(stream['adjoint'])} adjoint updates per second (the streaming bound); "
                f"reading the input and writing the output once takes "
                f"{fmt(model['compulsory_ms_per_call_b1'])} ms per call (the compulsory "
                "bound)."]
        rates = run["updates_per_second_per_core"]
        parts = [f"{d} b{b} {fmt(rates[f'{d}_b{b}_1thread']['median'] / stream[d])}"
                 for d in ("forward", "adjoint") for b in p["batches"]
                 if f"{d}_b{b}_1thread" in rates]
        if parts:
            out[-1] += " Measured, as a fraction of the streaming bound: " + ", ".join(parts) + "."
        out += [""]
    r = run["ratios"].get("reference / luser_fast forward + adjoint (b1, 1 thread)")
    goals.at_least(15, figure, r and r["median"], CONEBEAM_GOAL)
    return out


def solver_section(run, goals) -> list[str]:
    out = ["## Anderson solver (CPU)", ""]
    if run is None:
        goals.at_least(3, "Anderson speed-up vs reference and torchdeq", None, 1.5)
        return out + no_run("luser-fast bench --suite solver")
    s = run["setup"]
    out += [provenance(run), "",
            f"Same f, same start, m = {s['m']}, exactly {s['iterations']} evaluations of f for "
            f"every solver (tol 1e-30), {s['dtype']}; solutions checked against each other "
            f"first. Problems: light = {s['light']}; shallow = {s['shallow']}. "
            "Milliseconds per iteration (min / **median** / max); \"own\" is the solver's own "
            "time, the total minus f alone (minima).", ""]
    rows = []
    for problem, e in run["problems"].items():
        for rounds, sec in (("separate", e), ("paired", e.get("paired"))):
            for name, t in (sec or {}).get("ms_per_iteration", {}).items():
                own = sec.get("solver_own_ms_per_iteration", {}).get(name)
                speed = sec.get("speedup_of_fast", {}).get(name)
                rows.append((problem, rounds, name, timing(t), fmt(own),
                             band(speed) if speed else ""))
    out += table(("problem", "rounds", "solver", "ms / iteration", "own ms / iteration",
                  "its time / fast's"), rows, left=3)
    for problem, e in run["problems"].items():
        judged = e.get("paired") or e
        which = "paired rounds" if e.get("paired") else "separate rounds"
        for peer in ("reference", "torchdeq"):
            r = judged.get("speedup_of_fast", {}).get(peer)
            t = judged["ms_per_iteration"]
            # a solver with no cost of its own would still evaluate f: the ceiling
            bound = (f"; ceiling {fmt(t[peer]['median'] / t['f_alone']['median'])}x with f alone"
                     if peer in t and "f_alone" in t else "")
            goals.at_least(3, f"Anderson total time {peer} / fast, {problem}",
                           r and r["median"], 1.5, note=which + bound)
    e = next(iter(run["problems"].values()))
    b = e["model_bytes_per_iteration_per_sample"]
    out += ["Bytes moved per iteration and sample, f excluded, from the op-by-op model in "
            "`luser_fast/deq/solvers.py` (`luser_fast.deq.bytes_per_iteration`), as a "
            "fraction of the textbook (reference) version:", ""]
    out += table(("implementation", "fraction of textbook"),
                 [(k, fmt(v / b["reference"])) for k, v in b.items()])
    goals.at_most(3, "Anderson bytes per iteration, fast (masked copies) / textbook",
                  b["fast_masked"] / b["reference"], 0.4, suffix="")
    return out


def memory_section(run, sweep, goals, plots) -> list[str]:
    out = ["## Training memory of one step (CPU)", ""]
    if run is None:
        goals.at_least(3, "LU deep-5 / LUSER peak training memory", None, 8)
        return out + no_run("luser-fast bench --suite train")
    s = run["setup"]
    out += [provenance(run), "",
            f"{s['task']}, {s['image'][0]} x {s['image'][1]}, {s['angles']} angles, batch "
            f"{s['batch']}, K = {s['K']}, {s['channels']} channels (LUSER depth 2, LU depth 5), "
            f"{s['dtype']}: one forward + MSE + backward through "
            "`luser_fast.profile.training_memory` (saved: saved-tensor hooks; peak: live "
            "tensor bytes tracked by a dispatch mode). The max_iter rows run a tol no "
            "residual reaches, so every solve takes exactly max_iter iterations.", ""]
    out += table(("model", "saved MiB", "peak MiB", "parameters MiB", "step s"),
                 [(k, fmt(v["saved"]), fmt(v["peak"]), fmt(v["params"]), fmt(v["seconds"]))
                  for k, v in run["MiB"].items()])
    out += table(("ratio", "value"), [(k, fmt(v)) for k, v in run["ratios"].items()])
    parts = run["fast_luser_peak_parts_MiB"]
    out += ["Where the fast LUSER's step peak goes (MiB; the peak is reached in a backward, "
            "while the adjoint fixed point of one unrolled step is solved):", ""]
    out += table(("part", "MiB"), [(k, fmt(v)) for k, v in parts.items()])
    r = run["ratios"]
    goals.add(3, "LUSER saved bytes, max_iter high / low", "within 2%",
              fmt(r["saved maxiter high / maxiter low"], 4),
              abs(r["saved maxiter high / maxiter low"] - 1) <= 0.02)
    goals.add(3, "LUSER saved bytes, depth 4 / depth 2", "within 10%",
              fmt(r["saved depth 4 / depth 2"], 4), abs(r["saved depth 4 / depth 2"] - 1) <= 0.1)
    goals.at_most(3, "LUSER saved / (K (|z*|+|v|+|x|) + parameters)",
                  r["saved / (K (|z*| + |v| + |x|) + params)"], 1.2)
    goals.at_least(3, "LU deep-5 / LUSER saved bytes", r["LU saved / fast LUSER saved"], 8,
                   note="aim 10")
    goals.at_least(3, "LU deep-5 / LUSER peak training memory", r["LU peak / fast LUSER peak"], 8)
    if sweep:
        ss = sweep["setup"]
        out += [f"Memory against solver iterations ({ss['task']}, {ss['size']} x {ss['size']}, "
                f"batch {ss['batch']}, K = {ss['K']}, {ss['channels']} channels; "
                "`luser-fast memprofile --vary iterations`), measured at git "
                f"`{sweep['git_sha']}`, {sweep['date']}:", ""]
        names = list(dict.fromkeys(row["model"] for row in sweep["rows"]))
        out += table(("model", *(f"{v} it: saved / peak MiB" for v in ss["values"])),
                     [(n, *(f"{fmt(row['saved_bytes'] / MIB)} / {fmt(row['peak_bytes'] / MIB)}"
                            for row in sweep["rows"] if row["model"] == n)) for n in names])
        if plots:
            path = _plot_memory(plots, sweep)
            out += [f"![Training memory against solver iterations]({path})", ""]
    return out


def _plot_memory(plots, sweep) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(dict.fromkeys(row["model"] for row in sweep["rows"]))
    for ax, key, label in zip(axes, ("saved_bytes", "peak_bytes"),
                              ("saved for backward (MiB)", "peak per step (MiB)")):
        for name in names:
            pts = [(row["iterations"], row[key] / MIB) for row in sweep["rows"]
                   if row["model"] == name]
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xlabel("solver iterations")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"training memory, {sweep['setup']['task']} (git {sweep['git_sha']})",
                 fontsize=10)
    return plots.save(fig, "memory_vs_iterations.png")


def _mib(v) -> str:
    return "n/a" if v is None else fmt(v / MIB)


def memory3d_section(run, goals, plots) -> list[str]:
    """The 3-D memory study (``luser-fast memprofile --dims 3 --results
    bench/results/memprofile3d_cpu.json``): LU deep-5 vs LUSER on cone-beam CT volumes."""
    out = ["## 3-D memory study (cone-beam CT volumes, CPU)", ""]
    command = ("luser-fast memprofile --dims 3 --size 32 64 96 128 --budget 16GiB "
               "--results bench/results/memprofile3d_cpu.json")
    if run is None:
        goals.at_least(15, "LU deep-5 / LUSER peak training memory at 64^3", None, 8)
        goals.at_least(15, "largest trainable side within 16 GiB, LUSER / LU", None, 2)
        return out + no_run(command)
    s = run["setup"]
    budget = s["budget_bytes"] / 2 ** 30
    out += [provenance(run), "", f"Command: `{run.get('command') or command}`.", "",
            f"One training step (forward + MSE + backward, `training_memory`) per model and "
            f"side N on N^3 volumes, batch {s['batch']}, K = {s['K']}, {s['channels']} "
            f"channels, float32: {s['models']['LU (depth 5)']}; "
            f"{s['models']['LUSER (defaults)']} (bytes do not depend on that count: see the "
            f"check below). Geometry: {s['geometry']}; cone-beam projector: "
            f"{s.get('conebeam_backend', 'n/a')}. Saved: bytes of the tensors autograd saves; "
            "peak: live tensor bytes during the step; RSS: the process's peak resident growth; "
            "train: peak + the batch (x, y, x0) + parameters + Adam's moments (what a "
            "training process needs). x0 = FDK(y) is computed once per volume before the step "
            "(as data; its own transient peak is in the JSON, fdk_peak_bytes). Sides "
            f"predicted to need more than {_mib(s['max_measure_bytes'])} MiB or "
            f"{fmt(s['max_step_seconds'])} s were not run on this machine: their figures are "
            "predicted from the fits (marked). Bytes do not depend on the machine's load; the "
            "step seconds (one step each) do.", ""]
    out += table(("model", "N", "status", "saved MiB", "peak MiB", "RSS MiB", "train MiB",
                  "step s"),
                 [(r["model"], r["side"], r["status"], _mib(r["saved_bytes"]),
                   _mib(r["peak_bytes"]), _mib(r.get("resident_peak_bytes")),
                   _mib(r["train_bytes"]), fmt(r["seconds"])) for r in run["rows"]], left=3)
    fit_rows = []
    for name, fits in run["fits"].items():
        for key in ("saved_bytes", "peak_bytes", "train_bytes"):
            f = fits.get(key)
            if f:
                fit_rows.append((name, key.replace("_bytes", ""), fmt(f["a"] / MIB),
                                 fmt(f["b"]), f["points"],
                                 f"{100 * f['max_rel_residual']:.2f}%"))
    out += ["Growth: least-squares fits bytes = a + b N^3 over the measured sides, with the "
            "largest relative residual on them:", ""]
    out += table(("model", "figure", "a (MiB)", "b (bytes per voxel)", "sides",
                  "max residual"), fit_rows, left=2)
    budget_rows = []
    for name, b in run["budget"].items():
        if "confirm_side" not in b:
            budget_rows.append((name, b["predicted_side"], "not measured", "", "", ""))
            continue
        verdict = ("confirmed (measured at the predicted side)" if b["confirmed"]
                   else "within budget, measured below the predicted side"
                   if b["within_budget"] else "**over budget**")
        budget_rows.append((name, b["predicted_side"], b["confirm_side"],
                            _mib(b["measured_train_bytes"]),
                            f"{100 * b['prediction_error']:+.1f}%", verdict))
    out += [f"Largest trainable side within {fmt(budget)} GiB (train bytes a + b N^3 = budget), "
            "and a step measured at it or, where this machine's limits stop it, at the largest "
            "side within them:", ""]
    out += table(("model", "predicted side", "measured at", "train MiB there",
                  "prediction error there", "status"), budget_rows, left=1)
    ratio_rows = [(f"{side}^3", fmt(r["peak_ratio"]), fmt(r["saved_ratio"]),
                   fmt(r["train_ratio"]), "measured" if r["measured"] else "predicted")
                  for side, r in run["ratios"].items()]
    out += ["LU deep-5 / LUSER:", ""]
    out += table(("side", "peak", "saved", "train", "status"), ratio_rows)
    c = run["iteration_check"]
    out += [f"Solver iterations: LUSER at {c['side']}^3 with {c['iterations'][1]} instead of "
            f"{c['iterations'][0]} Anderson iterations: saved bytes x{c['saved_ratio']:.4f}, "
            f"peak x{c['peak_ratio']:.4f}.", ""]
    bc = run.get("batch_check") or {}
    if bc.get("rows"):
        out += [f"Batch (LUSER's chunk 1: the solves and the implicit backward one sample at a "
                f"time) at {bc['side']}^3:", ""]
        out += table(("model", *(f"batch {b}: peak MiB" for b in bc["batches"]),
                      "peak added per sample MiB"),
                     [(name, *(_mib(r["peak_bytes"]) for r in bc["rows"] if r["model"] == name),
                       _mib(bc[name]["peak_bytes_per_sample"]))
                      for name in ("LU (depth 5)", "LUSER (defaults)") if name in bc])
    if plots:
        out += [f"![3-D memory study]({_plot_memory3d(plots, run)})", ""]
    r64 = run["ratios"].get("64")
    goals.at_least(15, "LU deep-5 / LUSER peak training memory at 64^3",
                   r64 and r64["peak_ratio"], 8,
                   note="" if not r64 or r64["measured"] else "predicted",
                   why="64 not among the sides")
    lu, us = (run["budget"].get(n, {}).get("predicted_side")
              for n in ("LU (depth 5)", "LUSER (defaults)"))
    confirmed = all(run["budget"].get(n, {}).get("confirmed")
                    for n in ("LU (depth 5)", "LUSER (defaults)"))
    goals.at_least(15, f"largest trainable side within {fmt(budget)} GiB, LUSER / LU",
                   us / lu if lu and us else None, 2,
                   note=f"LUSER {us}, LU {lu}; "
                        + ("both measured at the side" if confirmed else
                           "predicted from the fits, not all measured at the side"))
    return out


def _plot_memory3d(plots, run) -> str:
    """The 3-D study's plot, drawn by the one function ``luser-fast memprofile --dims 3``
    draws it with (``luser_fast.profile.memprofile.plot_rows3d``)."""
    from luser_fast.profile.memprofile import plot_rows3d

    os.makedirs(plots.folder, exist_ok=True)
    path = os.path.join(plots.folder, "memprofile3d.png")
    plot_rows3d(path, run)
    return os.path.relpath(path, plots.base)


def schedule_note(schedules) -> str:
    """How runs of the demo or the study were trained, from their ``schedule`` entries
    (None: a run made before they trained through ``luser_fast.train.fit``, at a constant
    learning rate with batches drawn with replacement)."""
    schedules = list(schedules)
    new = sorted({x for x in schedules if x is not None})
    old = sum(1 for x in schedules if x is None)
    fit = ("learning rate " + "/".join(new) + "-annealed by `luser_fast.train.fit`, the loop "
           "of `luser-fast train`")
    before = ("constant learning rate, batches drawn with replacement: made before training "
              "went through `luser_fast.train.fit`, the loop of `luser-fast train`")
    if not old:
        return fit
    return before if not new else f"{old} of {len(schedules)} runs: {before}; the others: {fit}"


def demo_section(run, goals, plots) -> list[str]:
    out = ["## The paper's claims, small (`luser-fast demo`, CPU)", ""]
    if run is None:
        for task in ("deblur", "ct", "mri"):
            goals.at_least(7, f"{task}: LU deep-5 / LUSER peak memory", None, 8)
        return out + no_run("luser-fast demo --results bench/results/demo_cpu.json")
    out += [provenance(run), "", f"Command: `{run.get('command', 'luser-fast demo')}`"
            + (f"; wall time {fmt(run['wall_seconds'])} s." if "wall_seconds" in run else "."),
            ""]
    for task, t in run["tasks"].items():
        cfg = ", ".join(f"{k} {v}" for k, v in t.get("config", {}).items())
        if cfg:
            cfg += f" ({schedule_note([t['config'].get('schedule')])})"
        out += [f"### {task}", "", cfg, ""] if cfg else [f"### {task}", ""]
        rows = t["rows"]
        keys = [k for k in ("psnr", "ssim", "psnr_init", "real_psnr", "saved_bytes",
                            "peak_bytes", "sec_per_step", "solver_iterations")
                if any(k in r for r in rows.values())]
        out += table(("model", *keys),
                     [(name, *(fmt(r[k] / MIB) + " MiB" if k.endswith("bytes") and k in r
                               else fmt(r.get(k), 4) for k in keys))
                      for name, r in rows.items()])
        ratios = t.get("ratios", {})
        if ratios:
            out += table(("figure", "value"), [(k, fmt(v, 4)) for k, v in ratios.items()])
        png = os.path.join(ROOT, t.get("png", ""))
        if plots and t.get("png") and _written_by(png, run):
            # the demo's own figure of this run (ground truth / x0 / LU / LUSER)
            out += [f"![{task}: ground truth, x0, LU, LUSER]({plots.copy(png, f'demo_{task}.png')})",
                    ""]
        lu = next((r for n, r in rows.items() if n.startswith("LU ")), None)
        us = next((r for n, r in rows.items() if n.startswith("LUSER")), None)
        if lu and us:
            goals.at_least(7, f"{task}: LU deep-5 / LUSER peak training memory",
                           lu["peak_bytes"] / us["peak_bytes"], 8)
            goals.at_least(7, f"{task}: LU deep-5 / LUSER saved bytes",
                           lu["saved_bytes"] / us["saved_bytes"], 10)
            goals.at_least(7, f"{task}: PSNR LUSER - LU", us["psnr"] - lu["psnr"], -0.3,
                           suffix=" dB")
    if "wall_seconds" in run:
        goals.at_most(7, "`luser-fast demo` wall time on this machine", run["wall_seconds"], 600,
                      suffix=" s")
    return out


def _pm(stat: dict | None, digits=4, scale=1.0) -> str:
    """mean ± std of a ``luser_fast.study.summarize`` figure (the mean alone for one seed)."""
    if stat is None:
        return "n/a"
    mean = fmt(stat["mean"] / scale, digits)
    return mean if stat.get("std") is None else f"{mean} ± {fmt(stat['std'] / scale, 2)}"


def study_section(results: str, plots, goals=None) -> list[str]:
    """The design-space study (``luser-fast study --results <results>/study_cpu.json``):
    what ran, mean ± std over seeds per task and configuration, the plots, and the default
    LUSER against LU depth 5. The file holds every run of the sweep (a resumed study adds
    to it); the runs at the settings with the most runs are shown. Empty when there is no
    study file."""
    path = os.path.join(results, "study_cpu.json")
    if not os.path.exists(path):
        return []
    from luser_fast import study

    records = list(study.load_results(path).values())
    if not records:
        return []
    groups = {}
    for r in records:
        groups.setdefault(json.dumps(r["settings"], sort_keys=True), []).append(r)
    chosen = max(groups, key=lambda k: (len(groups[k]), max(r["date"] for r in groups[k])))
    runs, settings = groups[chosen], groups[chosen][0]["settings"]
    runs, stale = study.current_runs(runs)
    newest = max(runs, key=lambda r: r["date"])
    m, v = newest["machine"], newest["versions"]
    shas = ", ".join(f"`{s}`" for s in dict.fromkeys(r["git_sha"] for r in runs))
    cpus = "; ".join(f"\"{c}\"" for c in dict.fromkeys(r["machine"]["cpu"] for r in runs))
    out = ["## Design-space study (`luser-fast study`, CPU)", "",
           f"{len(runs)} runs measured {min(r['date'] for r in runs)} to {newest['date']} at "
           f"git {shas} on {cpus} ({m['cores']} cores, {m['threads']} thread(s)); torch "
           f"{v['torch']}, Python {v['python']}; {fmt(sum(r['wall_seconds'] for r in runs))} s "
           f"of runs in all. Latest command: `{newest.get('command') or 'luser-fast study'}`.",
           "",
           f"Settings: {settings['size']} x {settings['size']} images, {settings['steps']} Adam "
           f"steps at lr {settings['lr']:g} ({schedule_note(r.get('schedule') for r in runs)}), "
           f"batch {settings['batch']}, {settings['channels']} "
           f"channels, K = {settings['K']}, {settings['n_train']} training and "
           f"{settings['n_test']} held-out test samples, data seed {settings['data_seed']}. "
           "Each run seeds torch with its seed before building the model; the batches depend "
           "on the seed only, so every configuration of a seed sees the same batches. Figures "
           "are mean ± std (sample) over seeds; peak and saved bytes are of one training step "
           "at the training batch (`training_memory`), solver iterations of the test forward.",
           ""]
    if len(groups) > 1:
        out += [f"Not shown: {len(records) - len(runs) - len(stale)} runs at other settings in "
                f"`{os.path.relpath(path, ROOT)}`.", ""]
    if stale:
        out += [f"Not shown: {len(stale)} runs measured on an earlier version of their task's "
                "data (their data digest differs from the newest run's).", ""]
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    names = list(dict.fromkeys(r["name"] for r in runs))
    seeds_of = {}
    for r in runs:
        seeds_of.setdefault((r["name"], r["task"]), []).append(r["seed"])
    rows = []
    for name in names:
        config = next(r["config"] for r in runs if r["name"] == name)
        ran = ", ".join(f"{t}: {sorted(seeds_of[name, t])}" for t in tasks if (name, t) in seeds_of)
        rows.append((name, ", ".join(f"{k}={val}" for k, val in config.items()),
                     "yes" if study.CONFIGS.get(name) == config else "**no** (changed or removed)",
                     ran))
    out += ["Configurations that ran (seeds per task):", ""]
    out += table(("config", "definition", "as in CONFIGS", "seeds per task"), rows, left=4)
    missing = [n for n in study.CONFIGS if n not in names]
    out += [("Configurations of `luser_fast.study.CONFIGS` that did not run: "
             + ", ".join(f"`{n}`" for n in missing) + ".") if missing
            else "Every configuration of `luser_fast.study.CONFIGS` ran on at least one task "
                 "and seed (the table lists which).", ""]
    spread = {}
    for r in runs:
        spread.setdefault((r["task"], r["name"]), []).append(r["metrics"]["psnr"])
    widest = max(((max(v) - min(v), key) for key, v in spread.items() if len(v) > 1),
                 default=None)
    if widest:
        out += [f"Single-seed rows carry no spread: two seeds of one configuration differ by "
                f"up to {fmt(widest[0])} dB in test PSNR here ({widest[1][1]} on "
                f"{widest[1][0]}), so read one-seed differences smaller than that as noise.", ""]
    summary = study.summarize(runs)
    real = any("real_psnr" in row for t in summary.values() for row in t.values())
    for task, by_name in summary.items():
        first = next(iter(by_name.values()))
        out += [f"### {task}", "", f"x0 PSNR {_pm(first.get('psnr_x0'))} dB, SSIM "
                f"{_pm(first.get('ssim_x0'), 3)}"
                + (f"; real scans: x0 PSNR {_pm(first.get('real_psnr_x0'))} dB" if real else "")
                + ".", ""]
        header = ["config", "model", "seeds", "PSNR dB", "SSIM"]
        header += ["real-scan PSNR dB"] if real else []
        header += ["peak MiB", "saved MiB", "s / step", "solver iterations", "rho(J_f)"]
        body = []
        for name, row in by_name.items():
            body.append((name, row["model"], len(row["seeds"]), _pm(row.get("psnr")),
                         _pm(row.get("ssim"), 3),
                         *([_pm(row.get("real_psnr"))] if real else []),
                         _pm(row.get("peak_bytes"), 3, MIB), _pm(row.get("saved_bytes"), 3, MIB),
                         _pm(row.get("sec_per_step"), 3), _pm(row.get("solver_iterations"), 3),
                         _pm(row.get("spectral_radius"), 3)))
        out += table(header, body, left=2)
        if plots:
            fig = study.task_figure(by_name, task, settings)
            link = plots.save(fig, f"study_{task}.png")
            out += [f"![{task}: test PSNR against peak training memory and seconds per step]"
                    f"({link})", ""]
    out += [f"### Goals: `{study.DEFAULT_LUSER}` (`luser_fast.study.DEFAULT_LUSER`) against "
            f"`{study.LU_BASELINE}`", "",
            "Paired by seed (the seeds where both ran), mean ± std over those seeds; each "
            "verdict from the measured mean.", ""]
    goal_rows = []
    for g in study.goal_rows(runs):
        sign = ">=" if g["op"] == "at_least" else "<="
        measured = ("not measured" if g["mean"] is None
                    else _pm({"mean": g["mean"], "std": g["std"]}, 3) + g["unit"])
        shown = f"**{g['verdict']}**" if g["verdict"].startswith("MISSED") else g["verdict"]
        goal_rows.append((g["task"], g["figure"], f"{sign} {g['goal']:g}{g['unit']}", measured,
                          str(g["seeds"]), shown))
        if goals is not None:
            # the headline table: the study's goals of the default LUSER (issue 11)
            goals.add(11, f"{g['task']}: {g['figure']} (`{study.DEFAULT_LUSER}` vs "
                          f"`{study.LU_BASELINE}`, study, seeds {g['seeds']})",
                      f"{sign} {g['goal']:g}{g['unit']}",
                      None if g["mean"] is None else measured, g["verdict"] == "met")
    out += table(("task", "figure", "goal", "measured", "seeds", "verdict"), goal_rows, left=2)
    return out


def _written_by(path: str, run: dict) -> bool:
    """Whether ``path`` exists and was last written while ``run`` ran (not by a later one)."""
    import datetime

    if not os.path.exists(path):
        return False
    start = datetime.datetime.fromisoformat(run["date"]).timestamp()
    return start - 1 <= os.path.getmtime(path) <= start + run.get("wall_seconds", 0) + 60


#: The GPU goals. Where an issue names a comparison point but no number (#4, #5, #6), the
#: goal is stated here, with its source, and judged only against a measured value.
GPU_GOALS = {
    # key: (issue, goal, figure, what the goal is and where it comes from)
    "radon": (5, 19_500, "Radon CUDA forward and adjoint, images/s",
              "torch-radon's published fp32 figure on a V100, the comparison #5 names "
              "(256x256, 256 angles, batch 128)"),
    "nufft": (6, 6e8, "NUFFT CUDA type 2 and type 1, tol 1e-5, points/s",
              "cuFINUFFT's published figure on an A6000 (2-D, fp32, tol 1e-5), the "
              "comparison #6 names"),
    "triton_speedup": (4, 1.0, "Triton kernels / PyTorch reference speed-up, slowest case",
                       "the fused kernels of #4 must not be slower than the reference on the "
                       "same device"),
    "triton_bandwidth": (4, 0.5, "Triton Anderson step + mix at D = 2^22, fraction of peak "
                                 "DRAM bandwidth",
                         "set here: a bandwidth-bound fused kernel should reach half the "
                         "device's peak (#4 asks for the fraction, names no number)"),
    "memory": (3, 8, "LU deep-5 / LUSER peak training memory on the GPU",
               "#3's goal, measured with torch.cuda.max_memory_allocated"),
}
#: the benchmark file that records each section of a GPU run
GPU_FILES = {"radon": "test_bench_radon.py", "nufft": "test_bench_nufft.py",
             "memory": "test_bench_deq_memory.py", "triton": "test_bench_triton.py",
             "solver": "test_bench_solver.py"}
ANDERSON_BANDWIDTH_CASE = f"anderson_d{1 << 22}"


def sci(v) -> str:
    return f"{v:.3g}"


def _why_missing(run, section: str) -> str:
    """Why a GPU run has no figure of ``section``: what its check recorded."""
    if run is None:
        return "no GPU run"
    check = run.get("check", {})
    if section in ("radon", "nufft") and check.get("cupy", {}).get("available") is False:
        return "CuPy unavailable"
    suite = check.get("suites", {}).get(GPU_FILES[section])
    if suite:
        if suite.get("not_run"):
            return suite["not_run"]
        if suite.get("timed_out") or any("budget" in w for w in suite.get("skip_reasons", {})):
            return "stopped by the wall-clock budget"
        if suite.get("returncode") not in (0, 5, None):
            return f"its benchmark failed (exit {suite['returncode']})"
        reasons = [w for w in suite.get("skip_reasons", {}) if w]
        if reasons:
            return "skipped: " + reasons[0]
    if check.get("status") == "running":
        return "the check stopped before this part"
    return "not recorded in this run"


def _cases(run, section) -> dict:
    return ((run or {}).get("sections", {}).get(section) or {}).get("cases", {})


def gpu_goals(run, goals) -> None:
    """Every GPU goal row, from ``run`` (None: no GPU run): each verdict from the measured
    value against ``GPU_GOALS``; a value the run lacks reads "not measured" with the reason."""
    where = f"GPU ({run['gpu']['name']})" if run else "GPU"

    def backend_note(row):
        b = row.get("backend")
        return "" if b in (None, "cuda") else f"served by the {b} backend, not the CUDA kernels"

    issue, goal = GPU_GOALS["radon"][:2]
    cases = _cases(run, "radon")
    for direction in ("forward", "adjoint"):
        row = cases.get(direction, {})
        goals.at_least(issue, f"{where}: Radon CUDA {direction}, images/s", row.get(
            "images_per_second"), goal, suffix="", why=_why_missing(run, "radon"),
                       note=backend_note(row))
    issue, goal = GPU_GOALS["nufft"][:2]
    cases = _cases(run, "nufft")
    for kind in ("type2", "type1"):
        row = cases.get(kind, {})
        goals.at_least(issue, f"{where}: NUFFT CUDA {kind}, tol 1e-5, points/s",
                       row.get("points_per_second"), goal, suffix="", show=sci,
                       why=_why_missing(run, "nufft"), note=backend_note(row))
    issue, goal = GPU_GOALS["triton_speedup"][:2]
    cases = _cases(run, "triton")
    for prefix, label in (("shallow_fwd", "shallow map forward"),
                          ("shallow_vjp", "shallow map VJP"), ("anderson", "Anderson step + mix")):
        speed = [r["speedup"] for c, r in cases.items() if c.startswith(prefix)]
        goals.at_least(issue, f"{where}: Triton {label} / PyTorch reference speed-up, slowest "
                              "case", min(speed) if speed else None, goal,
                       note=f"of {len(speed)} cases" if speed else "",
                       why=_why_missing(run, "triton"))
    issue, goal = GPU_GOALS["triton_bandwidth"][:2]
    row = cases.get(ANDERSON_BANDWIDTH_CASE)
    why = _why_missing(run, "triton")
    if row is not None and row.get("fraction_of_bandwidth") is None:
        why = "the device's peak bandwidth is unknown (" + str(
            (run.get("gpu") or {}).get("bandwidth_source")) + ")"
    goals.at_least(issue, f"{where}: Triton Anderson step + mix at D = 2^22, fraction of peak "
                          "DRAM bandwidth", row and row.get("fraction_of_bandwidth"), goal,
                   suffix="", why=why)
    issue, goal = GPU_GOALS["memory"][:2]
    cases = _cases(run, "memory")
    fast, lu = cases.get("fast_luser"), cases.get("lu_depth5")
    goals.at_least(issue, f"{where}: LU deep-5 / LUSER peak training memory (CUDA)",
                   lu["peak_MiB"] / fast["peak_MiB"] if fast and lu and fast["peak_MiB"] else None,
                   goal, why=_why_missing(run, "memory"))


def gpu_provenance(run) -> str:
    g, m, v = run["gpu"], run["machine"], run["versions"]
    env = run.get("check", {}).get("environment", {})
    bw = (f"peak DRAM bandwidth {fmt(g['bandwidth_B_s'] / 1e9)} GB/s ({g.get('bandwidth_source')})"
          if g.get("bandwidth_B_s") else f"peak bandwidth unknown ({g.get('bandwidth_source')})")
    return (f"Measured {run['date']} at git `{run['git_sha']}` on {g['name']} (compute "
            f"{g.get('capability')}, {fmt(g.get('memory_bytes', 0) / 2**30)} GiB, {bw}), driver "
            f"{g.get('driver')}, CUDA {g.get('cuda')} (torch)"
            + (f" / {env['driver_cuda']} (driver)" if env.get("driver_cuda") else "")
            + f"; host \"{m['cpu']}\" ({m['cores']} cores); torch {v['torch']}, Python "
            f"{v['python']}, CuPy {v.get('cupy')}, Triton {v.get('triton')}.")


def _gpu_check_lines(run) -> list[str]:
    check = run.get("check")
    if not check:
        return ["No `make gpu-check` record in this run (its suites were run by hand).", ""]
    out = []
    cupy = check.get("cupy", {})
    if cupy:
        out.append(f"- CuPy: {cupy.get('detail')}" + (" (installed by the check)" if cupy.get(
            "installed_by_check") else "") + (f"; {cupy['reason']}" if cupy.get("reason") else ""))
    if check.get("cuda_code"):
        out.append(f"- CUDA code: {check['cuda_code']['kind']}")
    t = check.get("tests")
    if t:
        out.append(f"- GPU tests (`{t['command']}`): {t.get('passed', 0)} passed, "
                   f"{t.get('failed', 0)} failed, {t.get('errors', 0)} errors, "
                   f"{t.get('skipped', 0)} skipped in {fmt(t['wall_seconds'])} s"
                   + (" (stopped by the budget)" if t.get("timed_out") else ""))
        out += [f"  - failed: `{name}`" for name in t.get("failures", [])]
    out.append(f"- Budget {fmt(check.get('budget_seconds'))} s; the check took "
               f"{fmt(check.get('wall_seconds'))} s; status {check.get('status')}"
               + (f"; stopped by the budget: {', '.join(check['stopped_by_budget'])}"
                  if check.get("stopped_by_budget") else "")
               + (f"; failed: {', '.join(check['failed'])}" if check.get("failed") else "") + ".")
    out.append("")
    rows = []
    for name, r in check.get("suites", {}).items():
        rows.append((name, r.get("returncode") if r.get("returncode") is not None else "",
                     fmt(r.get("wall_seconds")),
                     f"{r.get('passed', 0)} / {r.get('failed', 0) + r.get('errors', 0)} / "
                     f"{r.get('skipped', 0)}" if "passed" in r else "",
                     r.get("not_run") or ("stopped by the budget" if r.get("timed_out") or any(
                         "budget" in w for w in r.get("skip_reasons", {})) else "")))
    if rows:
        out += table(("benchmark", "exit", "wall s", "cases passed / failed / skipped", "note"),
                     rows)
    return out


def gpu_section(runs, goals) -> list[str]:
    out = ["## GPU", ""]
    out += ["The GPU goals (their verdicts are in the goal table; a goal is judged only "
            "against a measured value):", ""]
    out += table(("issue", "figure", "source", "goal"),
                 [(f"#{i}", fig, src, f">= {fmt(g) if g < 1e6 else sci(g)}")
                  for i, g, fig, src in GPU_GOALS.values()], left=3)
    if not runs:
        gpu_goals(None, goals)
        return out + ["Not measured: no run on a GPU machine has been recorded. `make gpu-check` "
                      "(`luser-fast bench --suite gpu`) on a CUDA machine runs the GPU tests and "
                      "the Triton, Radon, NUFFT, solver and training-memory GPU benchmarks and "
                      "records them in `bench/results/gpu_<gpu>.json`.", ""]
    for run in runs:
        gpu_goals(run, goals)
        out += [f"### {run['gpu']['name']}", "", gpu_provenance(run), ""]
        if run.get("synthetic"):
            out += [f"**Not a measurement**: {run['synthetic']}", ""]
        out += _gpu_check_lines(run)
        sections = run.get("sections", {})
        radon = sections.get("radon")
        if radon:
            p = radon.get("setup", {})
            out += [f"Radon CUDA: {p.get('image')} images, {p.get('angles')} angles, batch "
                    f"{p.get('batch')}, {p.get('dtype')}; {p.get('reference_check')}.", ""]
            out += table(("direction", "ms per batch", "images/s", "error vs reference",
                          "backend"),
                         [(k, timing(r["ms_per_batch"]), fmt(r["images_per_second"]),
                           fmt(r.get("relative_error_vs_reference")), r.get("backend"))
                          for k, r in radon["cases"].items()])
        nufft = sections.get("nufft")
        if nufft:
            p = nufft.get("setup", {})
            out += [f"NUFFT CUDA: {p.get('image')} image, {p.get('trajectory')} "
                    f"{p.get('points')} points x {p.get('coils')} coils, {p.get('dtype')}, tol "
                    f"{p.get('tol')}; error against the exact NUDFT on a subset.", ""]
            out += table(("type", "ms", "points/s", "relative l2 error", "/ cuFINUFFT published",
                          "backend"),
                         [(k, timing(r["ms"]), sci(r["points_per_second"]),
                           fmt(r.get("relative_l2_error")), fmt(r.get("vs_cufinufft_published")),
                           r.get("backend")) for k, r in nufft["cases"].items()])
        memory = sections.get("memory")
        if memory:
            p = memory.get("setup", {})
            out += [f"Training memory on the GPU: {p.get('task')}, {p.get('image')}, "
                    f"{p.get('angles')} angles, batch {p.get('batch')}, K = {p.get('K')}, "
                    f"{p.get('channels')} channels ({p.get('models')}); peak: {p.get('peak')}; "
                    f"Radon backend {p.get('radon backend')}.", ""]
            out += table(("model", "saved MiB", "peak MiB", "parameters MiB", "step s"),
                         [(k, fmt(r["saved_MiB"]), fmt(r["peak_MiB"]), fmt(r["params_MiB"]),
                           fmt(r["seconds"])) for k, r in memory["cases"].items()])
        triton = sections.get("triton")
        if triton:
            p = triton.get("setup", {})
            out += [f"Triton kernels: batch {p.get('batch')}, {p.get('dtype')}, depth "
                    f"{p.get('depth')}, GroupNorm ({p.get('groups')} groups), "
                    f"{p.get('activation')}; {p.get('timer')}; GB/s from each kernel's "
                    "bytes-moved model.", ""]
            keys = ("ms", "ms_reference", "speedup", "GB_s", "fraction_of_bandwidth")
            out += table(("case", *keys), [(k, *(fmt(r.get(x)) for x in keys))
                                           for k, r in triton["cases"].items()])
        solver = sections.get("solver")
        if solver:
            p = solver.get("setup", {})
            out += [f"Anderson on the GPU (m = {p.get('m')}, {p.get('iterations')} iterations, "
                    f"{p.get('dtype')}; light = {p.get('light')}; shallow = {p.get('shallow')}), "
                    "interleaved rounds, ms per iteration (min / **median** / max); no goal: "
                    "#3's speed goal is a CPU goal.", ""]
            rows = []
            for problem, r in solver["cases"].items():
                for name, t in r["ms_per_iteration"].items():
                    speed = r.get("speedup_of_fast", {}).get(name)
                    rows.append((problem, name, timing(t), band(speed) if speed else ""))
            out += table(("problem", "solver", "ms / iteration", "its time / fast's"), rows,
                         left=2)
    return out


def _ratio_rows(runs: dict) -> dict:
    """Every ratio row {median, low, high} of the timing suites, by "suite: label"."""
    out = {}
    for suite, run in runs.items():
        if run is None:
            continue
        if suite == "solver_cpu":
            for problem, e in run["problems"].items():
                for peer, r in e.get("speedup_of_fast", {}).items():
                    out[f"anderson {problem}: {peer} / fast"] = r
                for peer, r in e.get("paired", {}).get("speedup_of_fast", {}).items():
                    out[f"anderson (paired) {problem}: {peer} / fast"] = r
            continue
        for label, r in run.get("ratios", {}).items():
            out[f"{suite.split('_')[0]}: {label}"] = r
        for label, r in run.get("paired", {}).get("ratios", {}).items():
            out[f"{suite.split('_')[0]} (paired): {label}"] = r
    return out


def repeat_section(runs, repeat_dir, goals, tiny=False) -> list[str]:
    """The same ratios from a second invocation of the harness: do the bands (the noise
    each run reports) overlap?"""
    if not repeat_dir or not os.path.isdir(repeat_dir):
        return []
    suites = ("radon_cpu", "nufft_cpu", "solver_cpu")
    first = _ratio_rows({s: runs[s] for s in suites})
    again = _ratio_rows({s: latest(repeat_dir, s, tiny) for s in suites})
    common = [k for k in first if k in again]
    if not common:
        return []
    rows, headline, agree = [], 0, 0
    for k in common:
        a, b = first[k], again[k]
        ok = a["low"] <= b["high"] and b["low"] <= a["high"]       # the bands overlap
        # the goal figures use paired rounds
        if "(paired)" in k:
            headline += 1
            agree += ok
        rows.append((k, band(a), band(b), "yes" if ok else "**no**"))
    rep = latest(repeat_dir, "solver_cpu", tiny) or latest(repeat_dir, "radon_cpu", tiny)
    out = ["## Repeatability", "",
           f"The ratios above against a repeat run of the same harness ({rep['date']}, git "
           f"`{rep['git_sha']}`, results in `{os.path.relpath(repeat_dir, ROOT)}`): "
           "\"within\" when the two runs' bands (the noise each reports) overlap. Ratios "
           "of separate rounds compare peers timed minutes apart, so they drift with the "
           "machine's load; the paired rounds, which the goal figures use, interleave the calls.",
           ""]
    out += table(("ratio", "this report's run", "repeat run", "within"), rows)
    goals.add(8, "goal ratios (paired rounds) of two harness runs agree within "
              "their reported noise", f"all {headline}", f"{agree} of {headline}",
              agree == headline)
    return out


def bench_runs_section(run, goals) -> list[str]:
    if run is None:
        goals.at_most(8, "`luser-fast bench` wall time on this CPU", None, 900, suffix=" s")
        return []
    out = ["## The harness run", "", provenance(run), "",
           f"Command: `{run['command']}`.", ""]
    out += table(("suite", "files", "exit", "wall s"),
                 [(k, " ".join(v["files"]), v["returncode"], fmt(v["wall_seconds"]))
                  for k, v in run["suites"].items()])
    for k, why in run.get("skipped", {}).items():
        out += [f"- {k}: skipped, {why}"]
    total = sum(v["wall_seconds"] for v in run["suites"].values())
    if set(run["suites"]) >= {"ops", "solver", "train"}:
        goals.at_most(8, "`luser-fast bench` (ops, solver, train) wall time on this CPU", total,
                      900, suffix=" s")
    return out + [""]


# --- output --------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Plots:
    """Where the PNG plots go, and the folder their links in the markdown are relative to."""

    def __init__(self, folder: str, base: str):
        self.folder, self.base = folder, base

    def save(self, fig, name: str) -> str:
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        _pyplot().close(fig)
        return os.path.relpath(path, self.base)

    def copy(self, src: str, name: str) -> str:
        import shutil

        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, name)
        if os.path.abspath(src) != os.path.abspath(path):
            shutil.copyfile(src, path)
        return os.path.relpath(path, self.base)


def render(results: str, plots: Plots | None, tiny: bool = False,
           repeat: str | None = None) -> str:
    runs = load(results, tiny)
    goals = Goals()
    body = []
    body += radon_section(runs["radon_cpu"], goals, plots)
    body += nufft_section(runs["nufft_cpu"], goals)
    body += nufft3d_section(runs["nufft3d_cpu"], goals)
    body += conebeam_section(runs["conebeam_cpu"], goals)
    body += solver_section(runs["solver_cpu"], goals)
    body += memory_section(runs["deq_memory_cpu"], runs["memprofile_cpu"], goals, plots)
    body += memory3d_section(runs["memprofile3d_cpu"], goals, plots)
    body += demo_section(runs["demo_cpu"], goals, plots)
    body += study_section(results, plots, goals)
    body += gpu_section(runs["gpu"], goals)
    body += repeat_section(runs, repeat, goals, tiny)
    body += bench_runs_section(runs["bench_runs"], goals)
    head = ["# Benchmarks", "",
            "Generated by `python bench/report.py` from the JSON in `bench/results/` that the "
            "suites in `bench/` wrote (`luser-fast bench` runs them and then this report); "
            "do not edit by hand. Each section names the machine, versions, git SHA and date "
            "of the run it shows. Timings on this shared 2-core CPU carry noise: every timing "
            "is min / **median** / max over repeats, and every ratio is the ratio of medians "
            "with the band [low, high] its repeats allow. No GPU figure appears unless it was "
            "measured on a GPU.", "",
            "## Goal figures", ""]
    head += table(("issue", "figure", "goal", "measured", "verdict"), goals.rows, left=5)
    return "\n".join(head + body).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=os.path.join(BENCH_DIR, "results"))
    p.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    p.add_argument("--plots", default=os.path.join(BENCH_DIR, "plots"),
                   help="folder for the PNG plots ('' for none)")
    p.add_argument("--repeat", default=os.path.join(BENCH_DIR, "results", "repeat"),
                   help="results folder of a second harness run to compare ratios with")
    p.add_argument("--include-tiny", action="store_true",
                   help="also take tiny harness-check runs (for the harness's own test)")
    args = p.parse_args(argv)
    plots = Plots(args.plots, os.path.dirname(os.path.abspath(args.out))) if args.plots else None
    text = render(args.results, plots, args.include_tiny, args.repeat)
    with open(args.out, "w") as fh:
        fh.write(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
