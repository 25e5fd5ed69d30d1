"""``luser-fast study``: a design-space sweep of LU and LUSER configurations.

A *configuration* is a name and a dict ``{"model": "lu" | "luser", **kwargs}``; the kwargs
go to the ``LU`` / ``LUSER`` constructor unchanged (``depth``, ``share_weights``, and any
argument the constructors gain), next to the study's ``iterations`` (K), ``in_channels``
and ``channels`` (which a configuration may override). ``CONFIGS`` is the default design
space; edit it to change what ``luser-fast study`` sweeps.

For each task, configuration and seed the model is built after ``torch.manual_seed(seed)``,
trained with ``luser_fast.train.fit``, the loop of ``luser-fast train`` (Adam, learning rate
cosine-annealed over the steps; the batches depend on the seed only, so every configuration
of a seed sees the same batches) on the task's train split, and measured:
test PSNR / SSIM (mean over the held-out test images) next to x0's, the saved and peak
bytes of one training step at the training batch (``training_memory``), seconds per
step, parameters, LUSER's solver iterations and convergence on the test forward, and the
real-scan PSNR of x0 and the model (``luser_fast.data.real.evaluate_real``),
and for LUSER the mean spectral radius of J_f at the test equilibria
(``LUSER.equilibrium_diagnostics``).
The data of a task (``make_task`` with the ``TaskConfig`` defaults at ``size`` and
``data_seed``) is the same for every configuration and seed: the seeds vary the
initialisation and the batch order.

Each finished run is written at once to the results JSON (atomically), keyed by task,
configuration name, configuration dict, seed, settings and a digest of the task's data
(``data_digest``), so a rerun skips what is done, an interrupted study resumes where it
stopped, and a change to the data generators starts the affected runs afresh. A record
says how it was trained (``"schedule": "cosine"``, also in its key); records without that
entry were made before the study trained through ``luser_fast.train.fit`` (constant
learning rate, batches drawn with replacement): a study run now does not count them as
done, and ``current_runs`` never mixes them with runs of the current loop.
``summarize`` gives mean and std over seeds, ``goal_rows`` the default LUSER against LU depth 5, ``task_figure`` the PSNR
against peak memory and against seconds per step with the Pareto front.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import time

import torch

from .data.real import evaluate_real
from .experiment import magnitude, quality, solver_stats, step_memory, write_json
from .profile.provenance import cpu_model, git_sha
from .train import fit

__all__ = ["CONFIGS", "DEFAULT_LUSER", "LU_BASELINE", "STUDY_TASKS", "SEEDS", "SETTINGS",
           "GOALS", "build_model", "run_key", "run_study", "load_results", "summarize",
           "pareto_front", "goal_rows", "verdict", "task_figure", "format_tables",
           "data_digest", "current_runs"]

#: the default design space: name -> {"model": "lu" | "luser", **constructor kwargs}; a
#: LUSER entry states only what differs from LUSER's defaults (depth 4, untied weights,
#: chunk 1, IFT backward), so "luser-4" is the default model
CONFIGS = {
    "lu-3": {"model": "lu", "depth": 3},
    "lu-4": {"model": "lu", "depth": 4},
    "lu-5": {"model": "lu", "depth": 5},
    "lu-6": {"model": "lu", "depth": 6},
    "lu-7": {"model": "lu", "depth": 7},
    "lu-8": {"model": "lu", "depth": 8},
    "luser-2-shared-batched": {"model": "luser", "depth": 2, "share_weights": True,
                               "chunk": None},
    "luser-2": {"model": "luser", "depth": 2},
    "luser-3": {"model": "luser", "depth": 3},
    "luser-4": {"model": "luser"},
    "luser-5": {"model": "luser", "depth": 5},
    "luser-4-shared": {"model": "luser", "share_weights": True},
    "luser-4-phantom": {"model": "luser", "backward": "phantom"},
    "luser-4-jfb": {"model": "luser", "backward": "jfb"},
    "luser-4-tol1e-2": {"model": "luser", "solver_kwargs": {"tol": 1e-2}},
    "luser-4-adjoint8": {"model": "luser", "backward_kwargs": {"max_iter": 8}},
}
#: the LUSER configuration the goals are judged on, and the LU it is compared with
DEFAULT_LUSER = "luser-4"
LU_BASELINE = "lu-5"
STUDY_TASKS = ("deblur", "ct", "mri")
SEEDS = (0, 1, 2)
#: the demo's settings: image side, training, width, unrolled steps, split sizes, and
#: the seed of the data (phantoms, patches, mask, noise)
SETTINGS = {"size": 64, "steps": 250, "batch": 4, "lr": 1e-3, "channels": 32, "K": 5,
            "n_train": 128, "n_test": 16, "data_seed": 0}
#: the default LUSER against LU depth 5, per task: (figure, key, "at_least" | "at_most",
#: goal, unit); PSNR difference LUSER - LU, peak memory LU / LUSER, time LUSER / LU, and
#: on the real scans never trained on: LUSER - LU, and each model against x0 (> 0 dB: the
#: model does not make a real scan worse than its starting point)
GOALS = (("PSNR LUSER - LU", "psnr_diff_db", "at_least", -0.3, " dB"),
         ("peak training memory LU / LUSER", "peak_ratio", "at_least", 8.0, "x"),
         ("seconds per step LUSER / LU (stretch)", "time_ratio", "at_most", 1.5, "x"),
         ("real scans: PSNR LUSER - LU", "real_psnr_diff_db", "at_least", -0.3, " dB"),
         ("real scans: PSNR LUSER - x0", "real_gain_luser_db", "at_least", 0.0, " dB"),
         ("real scans: PSNR LU - x0", "real_gain_lu_db", "at_least", 0.0, " dB"))
#: numbers averaged over seeds by ``summarize``, in table order
METRICS = ("psnr", "ssim", "psnr_x0", "ssim_x0", "real_psnr", "real_ssim", "real_psnr_x0",
           "real_ssim_x0", "peak_bytes", "saved_bytes", "sec_per_step", "params",
           "solver_iterations", "solver_converged", "spectral_radius", "loss_last",
           "wall_seconds")
MIB = 2 ** 20


def build_model(config, operator, in_channels, channels, K):
    """The model a configuration describes (seed torch before calling for a given init).

    Args:
        config: {"model": "lu" | "luser", **kwargs for the constructor}.
        operator: the task's forward operator.
        in_channels: image channels (2 for complex images).
        channels: network width (a "channels" entry of ``config`` overrides it).
        K: unrolled steps, the constructor's ``iterations`` (``config`` may override it).

    Returns:
        ``luser_fast.models.LU`` or ``LUSER``.
    """
    from .models import LU, LUSER

    if not isinstance(config, dict) or config.get("model") not in ("lu", "luser"):
        raise ValueError(f"config must be a dict with 'model' 'lu' or 'luser', got {config!r}")
    kwargs = {"iterations": K, "in_channels": in_channels, "channels": channels}
    kwargs.update({k: v for k, v in config.items() if k != "model"})
    cls = LU if config["model"] == "lu" else LUSER
    try:
        return cls(operator, **kwargs)
    except TypeError as exc:
        raise ValueError(f"config {config!r}: {cls.__name__} does not take these arguments "
                         f"({exc})") from exc


#: how the study trains (``luser_fast.train.fit``: Adam, cosine-annealed learning rate)
SCHEDULE = "cosine"


def run_key(task, name, config, seed, settings, data=None):
    """The results key of one run: task, configuration name and dict, seed, settings and
    the digest of the data it trained and was tested on.

    Args:
        task: task name.
        name: configuration name.
        config: configuration dict.
        seed: training seed.
        settings: the study settings (``SETTINGS``'s keys).
        data: ``data_digest`` of the task's splits (None: left out of the key).

    Returns:
        str.
    """
    key = (f"{task} | {name} | {json.dumps(config, sort_keys=True)} | seed {seed} | "
           f"{json.dumps(settings, sort_keys=True)}")
    key = key if data is None else f"{key} | data {data}"
    return f"{key} | schedule {SCHEDULE}"


def data_digest(*splits):
    """SHA-256 (first 16 hex digits) of the splits' ground truth and measurements, so a
    change to the data generators (not only to the settings) gives new run keys: a result
    never outlives the data it was measured on.

    Args:
        splits: ``TaskData`` objects (e.g. train and test).

    Returns:
        str.
    """
    h = hashlib.sha256()
    for split in splits:
        for t in (split.x, split.y):
            t = t.detach().cpu().contiguous()
            if t.is_complex():
                t = torch.view_as_real(t).contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def load_results(path):
    """The runs of a results JSON ({key: record}); {} when the file does not exist.

    Args:
        path: the results file.

    Returns:
        dict.
    """
    if not path or not os.path.exists(path):
        return {}
    with open(path) as fh:
        runs = json.load(fh)
    if not isinstance(runs, dict):
        raise ValueError(f"results {path!r}: not a JSON object of runs")
    return runs


def _select_configs(configs):
    if configs is None:
        return dict(CONFIGS)
    if isinstance(configs, dict):
        chosen = dict(configs)
    else:
        names = [configs] if isinstance(configs, str) else list(configs)
        unknown = [n for n in names if n not in CONFIGS]
        if unknown:
            raise ValueError(f"configs must be names in CONFIGS ({', '.join(CONFIGS)}), "
                             f"got unknown {unknown!r}")
        chosen = {n: CONFIGS[n] for n in names}
    if not chosen:
        raise ValueError("configs must name at least one configuration")
    for name, config in chosen.items():
        if not isinstance(config, dict) or config.get("model") not in ("lu", "luser"):
            raise ValueError(f"configs[{name!r}] must be a dict with 'model' 'lu' or 'luser', "
                             f"got {config!r}")
    return chosen


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _run_one(task, name, config, seed, settings, data):
    """Train and measure one configuration at one seed; the record of the run."""
    s = settings
    task_cfg, train, test = data
    t0 = time.perf_counter()
    truth = magnitude(test.x)
    torch.manual_seed(seed)
    model = build_model(config, train.operator, train.in_channels, s["channels"], s["K"])
    with torch.no_grad():
        x0 = magnitude(model.initial(test.y)).clamp(0, 1)
    fitted = fit(model, train.y, train.x, s["steps"], s["batch"], s["lr"], seed,
                 desc=f"{task} {name} seed {seed}")
    losses = [r["loss"] for r in fitted["history"]]
    with torch.no_grad():
        x_hat = model(test.y)
    metrics = quality(x_hat, truth)
    # of the test forward (LUSER): mean over samples and unrolled steps
    metrics.update(solver_stats(model))
    if hasattr(model, "equilibrium_diagnostics"):
        # rho(J_f(z*)) at every unrolled step of the first test images: does it iterate?
        diag = model.equilibrium_diagnostics(test.y[:4])
        metrics["spectral_radius"] = diag["spectral_radius"].mean().item()
    x0_quality = quality(x0, truth)
    metrics.update({"psnr_x0": x0_quality["psnr"], "ssim_x0": x0_quality["ssim"],
                    "loss_first": losses[0],
                    "loss_last": sum(losses[-10:]) / len(losses[-10:]),
                    "sec_per_step": fitted["sec_per_step"],
                    "params": sum(p.numel() for p in model.parameters())})
    metrics.update(step_memory(model, train.y[:s["batch"]], train.x[:s["batch"]]))
    record = {"task": task, "name": name, "config": config, "seed": seed, "settings": s,
              "schedule": SCHEDULE, "task_config": task_cfg.to_dict()}
    # the real scans of the task, never trained on (plain floats and lists)
    record["real"] = evaluate_real(model, task_cfg, operator=train.operator)
    for part, suffix in (("model", ""), ("x0", "_x0")):
        for k in ("psnr", "ssim"):
            metrics[f"real_{k}{suffix}"] = record["real"][part][k]
    record["metrics"] = metrics
    record.update({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "device": "cpu"},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "git_sha": git_sha(),
        "wall_seconds": time.perf_counter() - t0})
    return record


def run_study(out="out/study", results=None, tasks=STUDY_TASKS, configs=None, seeds=SEEDS,
              steps=SETTINGS["steps"], size=SETTINGS["size"], batch=SETTINGS["batch"],
              lr=SETTINGS["lr"], channels=SETTINGS["channels"], K=SETTINGS["K"],
              n_train=SETTINGS["n_train"], n_test=SETTINGS["n_test"],
              data_seed=SETTINGS["data_seed"], command=None, plots=True, log=print):
    """Train and measure every (task, configuration, seed) not yet in ``results``.

    Args:
        out: folder for the plots ``study_<task>.png`` (created).
        results: the results JSON, read for what is done and rewritten after every run
            (default ``<out>/study.json``).
        tasks: task names (``luser_fast.data.TASKS``).
        configs: configuration names of ``CONFIGS`` (None: all), or a dict
            {name: configuration} to sweep instead.
        seeds: training seeds (model initialisation and batch order).
        steps, batch, lr: training (``luser_fast.train.fit``: Adam, learning rate
            cosine-annealed over ``steps``).
        size: image side of the tasks.
        channels, K: network width and unrolled steps (a configuration may override them).
        n_train, n_test: samples of the train and held-out test splits.
        data_seed: seed of the task data (the same for every configuration and seed).
        command: the command line, stored in each new record.
        plots: write the plots (False: results and table only).
        log: callable for progress lines and the table.

    Returns:
        dict: results (path), ran and skipped (run keys), records (the records of the
        requested runs, done before or now), plots (PNG paths).
    """
    from .data import TASKS, TaskConfig, make_task

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be among {TASKS}, got {tasks!r}")
    chosen = _select_configs(configs)
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be ints, got {seeds!r}")
    for name, value, low in (("steps", steps, 1), ("size", size, 8), ("batch", batch, 1),
                             ("channels", channels, 1), ("K", K, 1), ("n_train", n_train, 1),
                             ("n_test", n_test, 1)):
        _check_int(name, value, low)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if batch > n_train:
        raise ValueError(f"batch ({batch}) is larger than n_train ({n_train})")
    settings = {"size": size, "steps": steps, "batch": batch, "lr": lr, "channels": channels,
                "K": K, "n_train": n_train, "n_test": n_test, "data_seed": data_seed}
    os.makedirs(out, exist_ok=True)
    results = results or os.path.join(out, "study.json")
    os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
    plan = [(t, n, s) for t in tasks for n in chosen for s in seeds]
    done = load_results(results)
    ran, skipped, keys, data = [], [], [], {}
    for i, (task, name, seed) in enumerate(plan, 1):
        if task not in data:
            data.clear()                       # the plan is task by task: one task's data
            cfg = TaskConfig(task=task, size=size, seed=data_seed)
            train = make_task(cfg, "train", n_train)
            test = make_task(cfg, "test", n_test, operator=train.operator)
            data[task] = (cfg, train, test, data_digest(train, test))
        key = run_key(task, name, chosen[name], seed, settings, data[task][3])
        keys.append(key)
        if key in done:
            skipped.append(key)
            log(f"[{i}/{len(plan)}] {task} {name} seed {seed}: done before, skipped")
            continue
        record = _run_one(task, name, chosen[name], seed, settings, data[task][:3])
        record["command"] = command
        record["data_sha256"] = data[task][3]
        runs = load_results(results)           # fresh: keep what another writer added
        runs[key] = record
        write_json(results, runs)
        done = runs
        ran.append(key)
        m = record["metrics"]
        log(f"[{i}/{len(plan)}] {task} {name} seed {seed}: PSNR {m['psnr']:.2f} dB, peak "
            f"{m['peak_bytes'] / MIB:.2f} MiB, {m['sec_per_step']:.3f} s/step, "
            f"{record['wall_seconds']:.0f} s")
    records = [done[k] for k in keys if k in done]
    summary = summarize(records)
    for line in format_tables(summary, records):
        log(line)
    paths = []
    if plots:
        for task in summary:
            path = os.path.join(out, f"study_{task}.png")
            _save(task_figure(summary[task], task, settings), path)
            paths.append(path)
            log(f"figure: {path}")
    log(f"results: {results} ({len(ran)} run, {len(skipped)} done before)")
    return {"results": results, "ran": ran, "skipped": skipped, "records": records,
            "plots": paths}


# --- summaries -----------------------------------------------------------------------------


def _mean_std(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def current_runs(records):
    """The records measured on each task's newest data and training loop: per task, those
    whose ``data_sha256`` and ``schedule`` are the ones of the task's most recent record
    (records of older data or of the earlier loop are left out).

    Args:
        records: run records.

    Returns:
        (kept, dropped): lists of records.
    """
    newest = {}
    for r in records:
        if r["task"] not in newest or r["date"] > newest[r["task"]]["date"]:
            newest[r["task"]] = r
    kept, dropped = [], []
    for r in records:
        ref = newest[r["task"]]
        same = (r.get("data_sha256") == ref.get("data_sha256")
                and r.get("schedule") == ref.get("schedule"))
        (kept if same else dropped).append(r)
    return kept, dropped


def summarize(records):
    """Mean and std over seeds of every metric, per task and configuration.

    Args:
        records: run records (``run_study``'s or the results file's values).

    Returns:
        {task: {name: {"model", "config", "seeds", metric: {mean, std (None for one
        seed; sample std otherwise), n}}}} in the records' order; metrics of ``METRICS``
        present in the records.
    """
    grouped = {}
    for r in records:
        grouped.setdefault(r["task"], {}).setdefault(r["name"], []).append(r)
    out = {}
    for task, by_name in grouped.items():
        out[task] = {}
        for name, runs in by_name.items():
            row = {"model": runs[0]["config"]["model"], "config": runs[0]["config"],
                   "seeds": sorted(r["seed"] for r in runs)}
            for metric in METRICS:
                values = [(r["metrics"] if metric != "wall_seconds" else r).get(metric)
                          for r in runs]
                values = [v for v in values if isinstance(v, (int, float))]
                if values:
                    row[metric] = _mean_std(values)
            out[task][name] = row
    return out


def pareto_front(points):
    """Indices of the points no other point beats: lower or equal x and higher or equal y,
    one of them strictly (x a cost such as memory, y a quality such as PSNR).

    Args:
        points: list of (x, y).

    Returns:
        list of indices, by increasing x.
    """
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def verdict(value, op, goal, unit=""):
    """The verdict of one measured figure against its goal.

    Args:
        value: the measured figure (None: not measured).
        op: "at_least" or "at_most".
        goal: the goal.
        unit: appended to the shortfall (" dB", "x").

    Returns:
        "met", "MISSED by <shortfall><unit>", or "not measured" when ``value`` is None.
    """
    if op not in ("at_least", "at_most"):
        raise ValueError(f"op must be 'at_least' or 'at_most', got {op!r}")
    if value is None:
        return "not measured"
    gap = goal - value if op == "at_least" else value - goal
    return "met" if gap <= 0 else f"MISSED by {gap:.2f}{unit}"


def goal_rows(records, default=DEFAULT_LUSER, baseline=LU_BASELINE):
    """The goals of ``GOALS``, per task: ``default`` (LUSER) against ``baseline`` (LU),
    paired by seed (seeds where both ran), mean and std over those seeds.

    Args:
        records: run records.
        default: name of the LUSER configuration judged.
        baseline: name of the LU configuration it is compared with.

    Returns:
        list of {task, figure, key, op, goal, unit, mean, std, seeds, verdict}; mean, std
        None and verdict "not measured" where no seed has both.
    """
    by = {}
    for r in records:
        by.setdefault(r["task"], {}).setdefault(r["name"], {})[r["seed"]] = r["metrics"]
    rows = []
    for task, names in by.items():
        ours, base = names.get(default, {}), names.get(baseline, {})
        seeds = sorted(set(ours) & set(base))
        real = [s for s in seeds if "real_psnr" in ours[s] and "real_psnr" in base[s]]
        figures = {
            "psnr_diff_db": [ours[s]["psnr"] - base[s]["psnr"] for s in seeds],
            "peak_ratio": [base[s]["peak_bytes"] / ours[s]["peak_bytes"] for s in seeds],
            "time_ratio": [ours[s]["sec_per_step"] / base[s]["sec_per_step"] for s in seeds],
            "real_psnr_diff_db": [ours[s]["real_psnr"] - base[s]["real_psnr"] for s in real],
            "real_gain_luser_db": [ours[s]["real_psnr"] - ours[s]["real_psnr_x0"] for s in real],
            "real_gain_lu_db": [base[s]["real_psnr"] - base[s]["real_psnr_x0"] for s in real],
        }
        for figure, key, op, goal, unit in GOALS:
            values = figures[key]
            stats = _mean_std(values) if values else {"mean": None, "std": None}
            rows.append({"task": task, "figure": figure, "key": key, "op": op, "goal": goal,
                         "unit": unit, "mean": stats["mean"], "std": stats["std"],
                         "seeds": real if key.startswith("real") else seeds,
                         "verdict": verdict(stats["mean"], op, goal, unit)})
    return rows


def _pm(stat, digits=2, scale=1.0):
    if stat is None:
        return "n/a"
    mean = stat["mean"] / scale
    if stat.get("std") is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {stat['std'] / scale:.{digits}f}"


def format_tables(summary, records, default=DEFAULT_LUSER, baseline=LU_BASELINE):
    """The printed tables: per task, every configuration's mean ± std over seeds; then the
    goals of ``default`` against ``baseline``.

    Args:
        summary: ``summarize(records)``.
        records: the run records (for the goals).
        default, baseline: the configurations the goals compare.

    Returns:
        list of lines.
    """
    lines = []
    for task, rows in summary.items():
        first = next(iter(rows.values()))
        real = any("real_psnr" in r for r in rows.values())
        lines += ["", f"{task}: mean ± std over seeds (x0 PSNR {_pm(first.get('psnr_x0'))} dB"
                  + (f", on the real scans {_pm(first.get('real_psnr_x0'))} dB)" if real
                     else ")"),
                  f"{'config':<18} {'seeds':>5} {'PSNR dB':>14} {'SSIM':>14} {'peak MiB':>14} "
                  f"{'saved MiB':>14} {'s/step':>14} {'solver its':>10}"
                  + (f" {'real PSNR dB':>14}" if real else "")]
        for name, r in rows.items():
            its = r.get("solver_iterations")
            lines.append(f"{name:<18} {len(r['seeds']):>5} {_pm(r.get('psnr')):>14} "
                         f"{_pm(r.get('ssim'), 3):>14} {_pm(r.get('peak_bytes'), 2, MIB):>14} "
                         f"{_pm(r.get('saved_bytes'), 2, MIB):>14} "
                         f"{_pm(r.get('sec_per_step'), 3):>14} "
                         f"{'' if its is None else format(its['mean'], '.1f'):>10}"
                         + (f" {_pm(r.get('real_psnr')):>14}" if real else ""))
    goals = goal_rows(records, default, baseline)
    if goals:
        lines += ["", f"goals: {default} against {baseline}, paired by seed"]
        for g in goals:
            shown = ("not measured" if g["mean"] is None
                     else _pm(g, 2) + g["unit"] + f" ({len(g['seeds'])} seed(s))")
            sign = ">=" if g["op"] == "at_least" else "<="
            lines.append(f"{g['task']:<8} {g['figure']:<40} {shown:>28}  goal {sign} "
                         f"{g['goal']:g}{g['unit']}: {g['verdict']}")
    return lines


# --- plots ---------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_STYLE = {"lu": {"color": "C0", "marker": "o", "label": "LU (deep CNN)"},
          "luser": {"color": "C1", "marker": "s", "label": "LUSER (shallow DEQ)"}}


def task_figure(rows, task, settings=None):
    """Test PSNR against peak training memory and against seconds per step, mean ± std
    over seeds as error bars, LU and LUSER in their own colours, the Pareto front dashed.

    Args:
        rows: ``summarize(records)[task]``.
        task: the task's name (title).
        settings: the study settings (title; optional).

    Returns:
        matplotlib Figure (two panels).
    """
    plt = _pyplot()
    from matplotlib import ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [n for n, r in rows.items() if "psnr" in r]
    for ax, key, scale, label in ((axes[0], "peak_bytes", MIB, "peak training memory (MiB)"),
                                  (axes[1], "sec_per_step", 1.0, "seconds per training step")):
        pts = []
        for name in names:
            r = rows[name]
            x, y = r[key], r["psnr"]
            style = _STYLE[r["model"]]
            unshared = r["config"].get("share_weights") is False
            ax.errorbar(x["mean"] / scale, y["mean"], yerr=y["std"] or 0,
                        xerr=(x["std"] or 0) / scale, color=style["color"],
                        marker=style["marker"], mfc="white" if unshared else style["color"],
                        capsize=3, linestyle="none")
            ax.annotate(name, (x["mean"] / scale, y["mean"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
            pts.append((x["mean"] / scale, y["mean"]))
        front = pareto_front(pts)
        if front:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="grey",
                    linestyle="--", linewidth=1, drawstyle="steps-post", marker="o",
                    markersize=13, mfc="none", label="Pareto front")
        x0 = next(iter(rows.values())).get("psnr_x0")
        if x0:
            ax.axhline(x0["mean"], color="grey", linestyle=":", linewidth=1, label="x0")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_log_label))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_log_label))
        ax.tick_params(axis="x", which="both", labelsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(alpha=0.3)
    for model, style in _STYLE.items():
        axes[0].plot([], [], color=style["color"], marker=style["marker"], linestyle="none",
                     label=style["label"])
    axes[0].legend(fontsize=7, loc="best")
    seeds = sorted({s for r in rows.values() for s in r["seeds"]})
    title = f"{task}: test PSNR, mean ± std over seeds {seeds} (hollow: unshared weights)"
    if settings:
        title += (f"\n{settings['size']}x{settings['size']}, {settings['steps']} steps, batch "
                  f"{settings['batch']}, {settings['channels']} channels, K={settings['K']}")
    fig.suptitle(title, fontsize=9)
    return fig


def _log_label(value, _pos):
    """Tick label of a log axis: plain numbers at 1, 2, 3 and 5 times a power of ten."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if any(abs(lead - d) < 1e-6 for d in (1, 2, 3, 5)) else ""


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
