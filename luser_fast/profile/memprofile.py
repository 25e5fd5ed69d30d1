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
