"""``luser-fast memprofile``: training memory of LUSER, reference LUSER and LU against one
setting (solver iterations, depth, batch, unrolled steps or chunk), as a table, a JSON and
a plot. The benchmark suite ``bench/test_bench_deq_memory.py`` records its sweep through
``run_memprofile`` too.
"""
from __future__ import annotations

import json

__all__ = ["MEMPROFILE_VALUES", "run_memprofile", "format_table", "plot_rows"]

#: values swept by ``memprofile --vary`` by default
MEMPROFILE_VALUES = {"iterations": (5, 10, 20, 40), "depth": (2, 3, 5, 8), "batch": (1, 2, 4, 8),
                     "K": (1, 2, 4, 8), "chunk": (1, 2, 4, 8)}


def run_memprofile(vary="iterations", values=None, task="ct", size=32, channels=32, batch=2,
                   K=5, solver_iterations=20, seed=0, plot=None, json_path=None, log=print):
    """Training memory of LUSER (fast), reference LUSER and LU against one setting.

    One forward + backward step per point, measured by ``luser_fast.profile.training_memory``.
    Baseline settings: K unrolled steps, LUSER depth 2 with chunk 1 (its other arguments at
    their defaults), LU depth 5, width ``channels``,
    Anderson run for exactly ``solver_iterations`` iterations (tol 1e-12). ``vary``:

    * iterations: solver iterations (LU has no solver: its row repeats one setting);
    * depth: regularizer depth of all three models;
    * batch: batch size;
    * K: unrolled steps;
    * chunk: LUSER's samples per chunk of the solves and implicit backward, at a batch of
      the largest value (so that value is the batched solve; LU has no chunk: its row
      repeats one setting).

    Args:
        vary: "iterations", "depth", "batch", "K" or "chunk".
        values: the swept values (default ``MEMPROFILE_VALUES[vary]``).
        task: one of the four tasks (data and operator from ``make_task``).
        size, channels, batch, K, solver_iterations: the fixed settings.
        seed: seed of the data and of every model's initialisation.
        plot: PNG path for saved and peak bytes against the swept value (None: no plot).
        json_path: JSON path for the rows (None: not written).
        log: callable for the table lines.

    Returns:
        list of rows {model, <vary>, saved_bytes, peak_bytes, seconds}.
    """
    import torch

    from ..data import TaskConfig, make_task
    from ..models import LU, LUSER
    from ..reference import LUSER as ReferenceLUSER
    from .memory import training_memory

    if vary not in MEMPROFILE_VALUES:
        raise ValueError(f"vary must be one of {tuple(MEMPROFILE_VALUES)}, got {vary!r}")
    values = tuple(MEMPROFILE_VALUES[vary] if values is None else values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"values must be positive ints, got {values!r}")
    if vary == "depth" and min(values) < 2:
        raise ValueError("depth values must be >= 2")
    if vary == "chunk":
        batch = max(values)
    n = max(values) if vary == "batch" else batch
    data = make_task(TaskConfig(task=task, size=size, seed=seed), "train", n)
    models = {"LUSER": LUSER, "LUSER (reference)": ReferenceLUSER, "LU": LU}
    rows = []
    for value in values:
        setting = {"K": K, "batch": batch, "iterations": solver_iterations, "depth": None,
                   "chunk": 1}
        setting[vary] = value
        for name, cls in models.items():
            depth = setting["depth"] or (5 if cls is LU else 2)
            kwargs = dict(iterations=setting["K"], in_channels=data.in_channels,
                          channels=channels, depth=depth)
            if cls is not LU:
                kwargs["solver_kwargs"] = {"tol": 1e-12, "max_iter": setting["iterations"]}
                kwargs["chunk"] = setting["chunk"]
            torch.manual_seed(seed)
            model = cls(data.operator, **kwargs)
            b = setting["batch"]
            r = training_memory(model, data.y[:b], data.x[:b])
            rows.append({"model": name, vary: value, "saved_bytes": r.saved_bytes,
                         "peak_bytes": r.peak_bytes, "seconds": r.seconds})
    for line in format_table(rows, vary):
        log(line)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"vary": vary, "task": task, "size": size, "channels": channels,
                       "batch": batch, "K": K, "solver_iterations": solver_iterations,
                       "rows": rows}, fh, indent=1)
    if plot:
        plot_rows(plot, rows, vary, task)
        log(f"figure: {plot}")
    return rows


def format_table(rows, vary):
    """The lines of the table of ``run_memprofile``'s rows: model, swept value, saved and
    peak MB, seconds per step.

    Args:
        rows: ``run_memprofile``'s rows.
        vary: the swept setting (the rows' key).

    Returns:
        list of str.
    """
    lines = [f"{'model':<18} {vary:>10} {'saved MB':>9} {'peak MB':>9} {'s/step':>7}"]
    for r in rows:
        lines.append(f"{r['model']:<18} {r[vary]:>10} {r['saved_bytes'] / 2**20:9.3f} "
                     f"{r['peak_bytes'] / 2**20:9.3f} {r['seconds']:7.3f}")
    return lines


def plot_rows(path, rows, vary, task):
    """PNG of saved and peak bytes (log scale) against the swept value, one line per model.

    Args:
        path: PNG path.
        rows: ``run_memprofile``'s rows.
        vary: the swept setting (x axis).
        task: the task's name (title).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in zip(axes, ("saved_bytes", "peak_bytes"),
                              ("saved for backward (MB)", "peak per step (MB)")):
        for name in dict.fromkeys(r["model"] for r in rows):
            pts = [(r[vary], r[key] / 2**20) for r in rows if r["model"] == name]
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xlabel("solver iterations" if vary == "iterations" else vary)
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"training memory, {task}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- volumes: ``luser-fast memprofile --dims 3`` ----------------------------------------------

#: sides of the 3-D study (N^3 volumes) and its memory budget
MEMPROFILE3D_SIZES = (32, 64, 96, 128)
MEMPROFILE3D_BUDGET = 16 * 2 ** 30
#: extra sides measured for the fits (cheap; at least 3 points per fit). Not below 24:
#: torch runs a float32 conv3d of fewer than about 6e5 input elements (64 channels at 21^3)
#: through its im2col path (``slow_conv3d``), whose column buffers (27 x the input) would
#: add a transient that larger sides, on oneDNN, do not have
MEMPROFILE3D_CALIBRATION = (24, 48)
#: the model names of the 3-D study
LU_3D, LUSER_3D = "LU (depth 5)", "LUSER (defaults)"
_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 10 ** 3, "kib": 2 ** 10, "m": 2 ** 20,
          "mb": 10 ** 6, "mib": 2 ** 20, "g": 2 ** 30, "gb": 10 ** 9, "gib": 2 ** 30,
          "t": 2 ** 40, "tb": 10 ** 12, "tib": 2 ** 40}


def parse_bytes(text) -> int:
    """"16GiB", "16G" (binary), "16GB" (decimal), "512MiB", "1e9" -> bytes (int > 0).

    Raises:
        ValueError: not a positive amount of bytes.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        import re

        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*",
                             str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"budget must be a size like 16GiB, 512MiB or 1e9, got {text!r}")
        value, unit = float(match.group(1)), match.group(2).lower()
    nbytes = int(value * _UNITS[unit])
    if nbytes <= 0:
        raise ValueError(f"budget must be positive, got {text!r}")
    return nbytes


def affine_fit(sides, values):
    """Least-squares fit of ``values`` = a + b N^3 over the sides N.

    Returns:
        dict: a, b, max_rel_residual (max |fit - value| / value over the points; 0 for
        two points, None for fewer than two points: no fit).
    """
    import numpy as np

    if len(sides) < 2:
        return None
    v = np.asarray(sides, dtype=np.float64) ** 3
    y = np.asarray(values, dtype=np.float64)
    design = np.stack([np.ones_like(v), v], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = np.abs(design @ np.array([a, b]) - y) / np.maximum(y, 1)
    return {"a": float(a), "b": float(b), "max_rel_residual": float(resid.max()),
            "points": len(sides)}


def _predict(fit, side):
    return None if fit is None else fit["a"] + fit["b"] * side ** 3


def _largest_side(fit, limit):
    """The largest side N whose fitted value stays within ``limit`` (None: no fit or a
    non-growing fit)."""
    if fit is None or fit["b"] <= 0 or limit <= fit["a"]:
        return None if fit is None or fit["b"] <= 0 else 0
    side = int(((limit - fit["a"]) / fit["b"]) ** (1 / 3))
    while _predict(fit, side + 1) <= limit:
        side += 1
    while side > 0 and _predict(fit, side) > limit:
        side -= 1
    return side


class _FromX0:
    """``model(y, x0)`` with x0 fixed, as ``training_memory`` calls ``model(y)``; the
    parameters are the model's."""

    def __init__(self, model, x0):
        self.model, self.x0 = model, x0

    def __call__(self, y):
        return self.model(y, x0=self.x0)

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)

    def parameters(self):
        return self.model.parameters()


def _available_memory():
    """MemAvailable of this machine in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_memprofile3d(sizes=MEMPROFILE3D_SIZES, budget=MEMPROFILE3D_BUDGET, channels=64, K=5,
                     batch=1, solver_iterations=3, seed=0, calibration=MEMPROFILE3D_CALIBRATION,
                     max_measure_bytes=None, max_step_seconds=900.0, confirm=True, plot=None,
                     json_path=None, results=None, command=None, log=print):
    """Training memory of LU (depth 5) and LUSER (defaults) on cone-beam CT volumes, and
    the largest volume each trains within a memory budget.

    One training step (forward + MSE + backward; ``training_memory``) per model and side
    N, on N^3 ``random_ellipsoids`` volumes measured by ``ConeBeam`` in the geometry of
    ``luser_fast.data.volumes.conebeam_geometry`` (N angles, detector ceil(1.6 N) + 2
    square, source 2 N from the axis). Models: ``LU(op, iterations=K, channels=channels,
    spatial_dims=3)`` (depth 5, tied) and ``LUSER(op, iterations=K, channels=channels,
    spatial_dims=3)`` (depth 4, untied, chunk 1) with Anderson run for exactly
    ``solver_iterations`` iterations forward and backward (tol 1e-30): bytes do not
    depend on that count (checked here at the smallest side with 3x the iterations),
    seconds do.

    The step starts from x0 = FDK(y), computed once per volume beforehand (as data: both
    models start there and its transient buffers are the projector's, not the model's; its
    own peak is recorded as ``fdk_peak_bytes``). Each step records saved bytes
    (saved-tensor hooks, exact), peak bytes (CPU: live tensor
    bytes; CUDA: allocator peak), the peak resident growth of the process (Linux CPU) and
    the bytes a training process needs for it ("train bytes": the step's peak plus the
    batch (x, y, x0), the parameters and Adam's two moments, 3 x the parameters). Sides are
    measured in increasing order; a side whose step is predicted (from the sides measured
    so far) to need more than ``max_measure_bytes`` or ``max_step_seconds`` is not run:
    its figures are predicted and marked so.

    Growth: for each model and figure, a least-squares fit bytes = a + b N^3 over the
    measured sides (the requested ones that ran and the ``calibration`` sides), with its
    largest relative residual on those sides. The largest trainable side within
    ``budget`` solves a + b N^3 = budget for the train bytes; with ``confirm`` a step is
    then measured at that side, or, when it would exceed this machine's limits, at the
    largest side within them (both reported, with the prediction's error there).

    Args:
        sizes: sides N to report.
        budget: memory budget in bytes (or a string such as "16GiB").
        channels, K, batch: network width, unrolled steps and batch of both models.
        solver_iterations: LUSER's Anderson iterations per solve (forward and adjoint).
        seed: seed of the data and of the models' initialisation.
        calibration: extra small sides measured for the fits.
        max_measure_bytes: the largest predicted train bytes of a step that is run
            (default: half of this machine's available memory at the start).
        max_step_seconds: the longest predicted step that is run.
        confirm: measure a step at the side found for the budget (or the largest within
            this machine's limits).
        plot: PNG path (bytes against N with the fits and the budget).
        json_path: JSON path for the result (None: not written).
        results: JSON of runs keyed by machine | torch | git SHA to store this run in
            (e.g. bench/results/memprofile3d_cpu.json; ``harness.store_run``).
        command: the command line recorded in the run.
        log: callable for the table lines.

    Returns:
        dict: setup, rows (model, side, voxels, status "measured" / "calibration" /
        "confirm" / "predicted (...)", saved_bytes, peak_bytes, resident_peak_bytes,
        train_bytes, seconds), fits {model: {saved, peak, train, seconds}}, budget
        {model: {predicted_side, confirm_side, measured_train_bytes, ...}}, ratios and
        the iteration check; with ``results``, the harness header too.
    """
    import gc

    import torch

    from ..core import validate
    from ..data.volumes import conebeam_operator, make_ct3d
    from ..models import LU, LUSER
    from . import harness
    from .memory import LiveTensorBytes, training_memory

    budget = parse_bytes(budget)
    # the run's header now: date, machine and git SHA of the code that measures (the
    # checkout may move during a run of an hour)
    header = harness.new_run(torch.get_num_threads()) if results else None
    sizes = tuple(sizes)
    for name, values in (("sizes", sizes), ("calibration", tuple(calibration))):
        if any(not validate.is_int(v) or v < 4 for v in values):
            raise ValueError(f"{name} must be ints >= 4, got {values!r}")
    if not sizes:
        raise ValueError("sizes must not be empty")
    for name, value in (("channels", channels), ("K", K), ("batch", batch),
                        ("solver_iterations", solver_iterations)):
        validate.int_arg(name, value, 1, "memprofile")
    if channels % 4:
        raise ValueError(f"channels must be a multiple of 4 (GroupNorm's 4 groups), got "
                         f"{channels}")
    if max_measure_bytes is None:
        available = _available_memory()
        max_measure_bytes = available // 2 if available else 4 * 2 ** 30
    max_measure_bytes = parse_bytes(max_measure_bytes)
    all_sides = sorted(set(sizes) | set(calibration))
    setup = {"sizes": list(sizes), "calibration": [s for s in all_sides if s not in sizes],
             "budget_bytes": budget, "channels": channels, "K": K, "batch": batch,
             "solver_iterations": solver_iterations, "seed": seed,
             "max_measure_bytes": max_measure_bytes, "max_step_seconds": max_step_seconds,
             "geometry": "ConeBeam, luser_fast.data.volumes.conebeam_geometry(N): N angles "
                         "over 360 degrees, detector ceil(1.6 N) + 2 square (spacing 1), "
                         "source 2 N from the axis, detector through the axis",
             "models": {LU_3D: f"LU(iterations={K}, channels={channels}, depth=5, "
                               f"share_weights=True, spatial_dims=3)",
                        LUSER_3D: f"LUSER(iterations={K}, channels={channels}, depth=4, "
                                  f"share_weights=False, chunk=1, spatial_dims=3), Anderson "
                                  f"{solver_iterations} iterations forward and adjoint"},
             "dtype": "float32", "device": "cpu", "threads": torch.get_num_threads()}
    from .. import backends

    setup["conebeam_backend"] = backends.select("conebeam_forward", "cpu")

    def build(name, op):
        torch.manual_seed(seed)
        if name == LU_3D:
            return LU(op, iterations=K, channels=channels, spatial_dims=3)
        return LUSER(op, iterations=K, channels=channels, spatial_dims=3,
                     solver_kwargs={"tol": 1e-30, "max_iter": solver_iterations})

    data, ops = {}, {}

    def task(side, n):
        if (side, n) not in data:
            data.clear()
            if side not in ops:
                ops.clear()
                gc.collect()
                op = conebeam_operator(side)
                # ||A|| once per side: every model's constructor would compute the same
                # value (30 power iterations of A^T A: minutes of projections at 128^3)
                norm = op.norm(iters=30, x=op.example_input())
                op.norm = lambda iters=30, x=None, seed=0: norm
                ops[side] = op
            d = make_ct3d(side, "train", n, seed=seed, operator=ops[side])
            with torch.no_grad(), LiveTensorBytes() as live:
                x0 = d.operator.fdk(d.y)
            data[side, n] = (d, x0, live.peak)
        return data[side, n]

    def measure(name, side, status, iterations=None, n=batch):
        d, x0, fdk_peak = task(side, n)
        model = build(name, d.operator)
        if iterations is not None:
            for deq in model.deqs:
                deq.solver_kwargs = {**deq.solver_kwargs, "max_iter": iterations}
        r = training_memory(_FromX0(model, x0), d.y, d.x)
        params = r.param_bytes
        extra = 3 * params + sum(t.numel() * t.element_size() for t in (d.x, d.y, x0))
        row = {"model": name, "side": side, "voxels": side ** 3, "status": status, "batch": n,
               "saved_bytes": r.saved_bytes, "peak_bytes": r.peak_bytes,
               "resident_peak_bytes": r.resident_peak_bytes,
               "train_bytes": r.peak_bytes + extra, "param_bytes": params,
               "fdk_peak_bytes": fdk_peak, "seconds": r.seconds}
        infos = getattr(model, "last_solver_info", None)
        if infos:
            row["solver_iterations"] = max(int(i.iterations.max()) for i in infos)
        del model
        gc.collect()
        return row

    keys = ("saved_bytes", "peak_bytes", "train_bytes", "seconds")
    rows, fits = [], {}

    def fit_of(name):
        pts = [r for r in rows if r["model"] == name and r["status"] != "predicted"
               and not r["status"].startswith("predicted")]
        return {k: affine_fit([r["side"] for r in pts], [r[k] for r in pts]) for k in keys}

    # one untimed step first: the libraries' one-time allocations and set-up are not a
    # step's
    for name in (LU_3D, LUSER_3D):
        measure(name, all_sides[0], "warm-up")
    for name in (LU_3D, LUSER_3D):
        for side in all_sides:
            f = fit_of(name)
            train, secs = _predict(f["train_bytes"], side), _predict(f["seconds"], side)
            why = None
            if train is not None and train > max_measure_bytes:
                why = (f"predicted {validate.format_bytes(train)} > the measuring limit "
                       f"{validate.format_bytes(max_measure_bytes)}")
            elif secs is not None and secs > max_step_seconds:
                why = f"predicted step {secs:.0f} s > {max_step_seconds:g} s"
            if why is None:
                status = "measured" if side in sizes else "calibration"
                rows.append(measure(name, side, status))
                r = rows[-1]
                log(f"{name:<17} N={side:<4} saved {r['saved_bytes'] / 2**20:10.1f} MiB  peak "
                    f"{r['peak_bytes'] / 2**20:10.1f} MiB  {r['seconds']:8.1f} s")
            elif side in sizes:
                rows.append({"model": name, "side": side, "voxels": side ** 3,
                             "status": f"predicted ({why})",
                             **{k: _predict(f[k], side) for k in keys}})
        fits[name] = fit_of(name)
    # bytes do not depend on the solver's iterations: one check at the smallest side
    smallest = all_sides[0]
    check = measure(LUSER_3D, smallest, "iterations check", iterations=3 * solver_iterations)
    base = next(r for r in rows if r["model"] == LUSER_3D and r["side"] == smallest)
    iteration_check = {"side": smallest, "iterations": [solver_iterations, 3 * solver_iterations],
                       "saved_ratio": check["saved_bytes"] / base["saved_bytes"],
                       "peak_ratio": check["peak_bytes"] / base["peak_bytes"]}
    # what a larger batch adds: LUSER (chunk 1) one sample's |z*| + |v| + data per step,
    # LU a whole sample's activations
    side = min(sizes)
    batch_check = {"side": side, "batches": [batch, 2 * batch, 4 * batch], "rows": []}
    for name in (LU_3D, LUSER_3D):
        if any(r["model"] == name and r["side"] == side and r["status"] == "measured"
               for r in rows):
            batch_check["rows"] += [measure(name, side, "batch check", n=n)
                                    for n in batch_check["batches"]]
    for name in (LU_3D, LUSER_3D):
        pts = [r for r in batch_check["rows"] if r["model"] == name]
        if len(pts) > 1:
            per = (pts[-1]["peak_bytes"] - pts[0]["peak_bytes"]) / (pts[-1]["batch"] - pts[0]["batch"])
            batch_check[name] = {"peak_bytes_per_sample": per,
                                 "peak_growth_of_one_sample": per / pts[0]["peak_bytes"] * batch}
    budget_rows = {}
    for name in (LU_3D, LUSER_3D):
        f = fits[name]
        side = _largest_side(f["train_bytes"], budget)
        entry = {"predicted_side": side,
                 "predicted_train_bytes": _predict(f["train_bytes"], side) if side else None}
        if confirm and side:
            cap = min(side, _largest_side(f["train_bytes"], max_measure_bytes) or 0)
            while cap > 0 and (_predict(f["seconds"], cap) or 0) > max_step_seconds:
                cap -= 1
            measured = max(r["side"] for r in rows if r["model"] == name
                           and not r["status"].startswith("predicted"))
            entry["confirm_side"] = cap
            if cap > measured:
                r = measure(name, cap, "confirm")
                rows.append(r)
                log(f"{name:<17} N={cap:<4} (confirm) peak {r['peak_bytes'] / 2**20:10.1f} MiB "
                    f"train {r['train_bytes'] / 2**20:10.1f} MiB  {r['seconds']:8.1f} s")
            else:
                cap = measured
                entry["confirm_side"] = cap
                r = next(r for r in rows if r["model"] == name and r["side"] == cap)
            predicted = _predict(f["train_bytes"], cap)
            entry.update(measured_train_bytes=r["train_bytes"],
                         measured_peak_bytes=r["peak_bytes"],
                         measured_resident_peak_bytes=r.get("resident_peak_bytes"),
                         predicted_train_bytes_at_confirm=predicted,
                         prediction_error=(predicted - r["train_bytes"]) / r["train_bytes"],
                         within_budget=r["train_bytes"] <= budget,
                         confirmed=cap == side and r["train_bytes"] <= budget)
        budget_rows[name] = entry
    ratios = {}
    for side in sizes:
        pair = [next((r for r in rows if r["model"] == m and r["side"] == side), None)
                for m in (LU_3D, LUSER_3D)]
        if all(pair):
            ratios[str(side)] = {
                "peak_ratio": pair[0]["peak_bytes"] / pair[1]["peak_bytes"],
                "saved_ratio": pair[0]["saved_bytes"] / pair[1]["saved_bytes"],
                "train_ratio": pair[0]["train_bytes"] / pair[1]["train_bytes"],
                "measured": not any(r["status"].startswith("predicted") for r in pair)}
    lu_side = budget_rows[LU_3D]["predicted_side"]
    us_side = budget_rows[LUSER_3D]["predicted_side"]
    out = {"setup": setup, "rows": sorted(rows, key=lambda r: (r["model"] != LU_3D, r["side"])),
           "fits": fits, "budget": budget_rows, "ratios": ratios,
           "side_ratio": us_side / lu_side if lu_side and us_side else None,
           "iteration_check": iteration_check, "batch_check": batch_check}
    for line in format_table3d(out):
        log(line)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(out, fh, indent=1)
    if plot:
        plot_rows3d(plot, out)
        log(f"figure: {plot}")
    if results:
        run = header
        run["command"] = command
        run.update(out)
        key = harness.store_run(results, run)
        log(f"results: {results} [{key}]")
    return out


def _mib(v):
    return "n/a" if v is None else f"{v / 2**20:,.1f}"


def format_table3d(result):
    """The lines of the 3-D study's tables (``run_memprofile3d``'s result): steps by model
    and side, the fits, the budget."""
    s = result["setup"]
    lines = [f"3-D memory study: {s['geometry']}; batch {s['batch']}, K = {s['K']}, "
             f"{s['channels']} channels, float32, {s['device']}",
             f"{'model':<17} {'N':>4} {'saved MiB':>11} {'peak MiB':>11} {'RSS MiB':>10} "
             f"{'train MiB':>11} {'s/step':>8}  status"]
    for r in result["rows"]:
        lines.append(f"{r['model']:<17} {r['side']:>4} {_mib(r['saved_bytes']):>11} "
                     f"{_mib(r['peak_bytes']):>11} {_mib(r.get('resident_peak_bytes')):>10} "
                     f"{_mib(r['train_bytes']):>11} {r['seconds']:8.1f}  {r['status']}")
    for name, f in result["fits"].items():
        t = f["train_bytes"]
        if t:
            lines.append(f"fit {name}: train bytes = {_mib(t['a'])} MiB + {t['b']:.1f} B x N^3 "
                         f"({t['points']} sides, max residual {100 * t['max_rel_residual']:.2f}%)")
    budget = s["budget_bytes"]
    for name, b in result["budget"].items():
        line = f"within {budget / 2**30:g} GiB, {name}: largest side {b['predicted_side']}"
        if "confirm_side" in b:
            line += (f"; measured at {b['confirm_side']}: train {_mib(b['measured_train_bytes'])}"
                     f" MiB (prediction {100 * b['prediction_error']:+.1f}%), "
                     + ("confirmed" if b["confirmed"] else
                        "within budget" if b["within_budget"] else "OVER budget"))
        lines.append(line)
    for side, r in result["ratios"].items():
        lines.append(f"LU / LUSER at {side}^3: peak {r['peak_ratio']:.2f}x, saved "
                     f"{r['saved_ratio']:.1f}x, train {r['train_ratio']:.2f}x"
                     + ("" if r["measured"] else " (predicted)"))
    if result["side_ratio"]:
        lines.append(f"largest side LUSER / LU: {result['side_ratio']:.2f}x")
    c = result["iteration_check"]
    lines.append(f"LUSER at {c['side']}^3 with {c['iterations'][1]} vs {c['iterations'][0]} "
                 f"solver iterations: saved x{c['saved_ratio']:.4f}, peak x{c['peak_ratio']:.4f}")
    bc = result.get("batch_check", {})
    for name in (LU_3D, LUSER_3D):
        if name in bc:
            peaks = ", ".join(f"{_mib(r['peak_bytes'])}" for r in bc["rows"] if r["model"] == name)
            lines.append(f"{name} at {bc['side']}^3, batch {bc['batches']}: peak {peaks} MiB; "
                         f"+{_mib(bc[name]['peak_bytes_per_sample'])} MiB per sample")
    return lines


def plot_rows3d(path, result):
    """PNG: peak and train bytes against the side N (log-log) with the N^3 fits, the
    budget and the largest side found for it; saved bytes in a second panel."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["setup"]
    budget = s["budget_bytes"] / 2 ** 30
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    sides = [r["side"] for r in result["rows"]] + [b["predicted_side"] or 0
                                                   for b in result["budget"].values()]
    grid = np.linspace(min(sides), max(max(sides), 8) * 1.1, 200)
    for (name, f), color in zip(result["fits"].items(), ("C3", "C0")):
        for ax, key, label in ((axes[0], "train_bytes", "train"), (axes[1], "saved_bytes", "saved")):
            pts = [r for r in result["rows"] if r["model"] == name]
            meas = [(r["side"], r[key] / 2 ** 30) for r in pts if not r["status"].startswith("predicted")]
            pred = [(r["side"], r[key] / 2 ** 30) for r in pts if r["status"].startswith("predicted")]
            if meas:
                ax.plot(*zip(*meas), "o", color=color, label=f"{name}, measured")
            if pred:
                ax.plot(*zip(*pred), "x", color=color, ms=8, label=f"{name}, predicted")
            if f[key]:
                ax.plot(grid, (f[key]["a"] + f[key]["b"] * grid ** 3) / 2 ** 30, "-",
                        color=color, alpha=0.5, lw=1)
        side = result["budget"][name]["predicted_side"]
        if side:
            axes[0].axvline(side, color=color, ls=":", lw=1)
            axes[0].annotate(f"{side}", (side, budget), color=color, fontsize=8,
                             xytext=(3, 4), textcoords="offset points")
    axes[0].axhline(budget, color="k", ls="--", lw=1, label=f"budget {budget:g} GiB")
    ticks = [t for t in (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
             if min(sides) <= t <= grid[-1]]
    for ax, title in zip(axes, ("training bytes (step peak + batch + parameters + Adam)",
                                "saved for backward")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("volume side N (N^3 voxels)")
        ax.set_ylabel("GiB")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"3-D cone-beam CT, batch {s['batch']}, K = {s['K']}, {s['channels']} channels",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
