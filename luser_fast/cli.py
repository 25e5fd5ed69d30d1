"""The ``luser-fast`` command: info, demo, train, eval, reconstruct, memprofile, bench, study.

    luser-fast info                 versions, extension build info, which backend serves each op
    luser-fast demo [--out DIR]     LU (depth 5) vs LUSER (its defaults) on deblur, CT and MRI
    luser-fast train --task {deblur,ct,mri,nufft-mri} [--data PATH] [--model luser|lu] ...
    luser-fast eval CHECKPOINT [--split test] [--n 16] [--data PATH]
    luser-fast reconstruct CHECKPOINT --measurements y.npy --out x.npy [--png x.png]
    luser-fast memprofile [--vary iterations|depth|batch|K] [--plot out.png]
    luser-fast bench [--suite ops solver train gpu] [--json out.json]
    luser-fast study [--tasks ...] [--configs ...] [--seeds ...] [--results study.json]

Multi-process training: ``torchrun --nproc_per_node=N -m luser_fast.cli train ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _cmd_info(args):
    import torch

    from . import __version__, _ext, backends

    info = {
        "luser_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available() if args.cuda else "not queried (pass --cuda)",
        "backend_requested": os.environ.get("LUSER_FAST_BACKEND", "auto"),
        **_ext.build_info(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["ops_cpu"] = backends.table("cpu")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for op, b in value.items():
                print(f"  {op:<16} {b}")
        else:
            print(f"{key:<{width}}  {value}")
    return 0


def _cmd_demo(args):
    import shlex

    import torch

    from .demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(out=args.out, tasks=args.tasks, steps=args.steps, size=args.size,
             channels=args.channels, batch=args.batch, n_train=args.n_train, n_test=args.n_test,
             K=args.K, lr=args.lr, seed=args.seed, noise=args.noise, angles=args.angles,
             sigma=args.sigma, acceleration=args.acceleration, wide_channels=args.wide_channels,
             results=args.results, command=shlex.join(["luser-fast", *args.argv]))
    return 0


def _cmd_train(args):
    import torch

    from .data import TaskConfig
    from .train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    task = TaskConfig(task=args.task, size=args.size, noise=args.noise, angles=args.angles,
                      sigma=args.sigma, acceleration=args.acceleration, data=args.data,
                      seed=args.seed)
    cfg = TrainConfig(model=args.model, iterations=args.K, channels=args.channels,
                      depth=args.depth, share_weights=args.share_weights, chunk=args.chunk,
                      solver_tol=args.solver_tol,
                      solver_max_iter=args.solver_max_iter, anderson_m=args.anderson_m,
                      backward=args.backward, batch=args.batch, steps=args.steps,
                      epochs=args.epochs, lr=args.lr, seed=args.seed, n_train=args.n_train,
                      out=args.out, ckpt_every=args.ckpt_every, stop_at=args.stop_at,
                      log_every=args.log_every, device=args.device)
    result = train(task, cfg, resume=args.resume)
    if result["rank"] == 0:
        last = result["history"][-1] if result["history"] else None
        summary = f"step {result['step']}/{cfg.total_steps}"
        if last:
            summary += f", last loss {last['loss']:.4e}, batch PSNR {last['psnr']:.2f} dB"
        print(f"{summary}; checkpoint {result['checkpoint']}")
    return 0


def _cmd_eval(args):
    import torch

    from .train import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    evaluate(args.checkpoint, split=args.split, n=args.n, batch=args.batch, out=args.out,
             device=args.device, data=args.data)
    return 0


def _cmd_reconstruct(args):
    import torch

    from .train import reconstruct

    if args.threads:
        torch.set_num_threads(args.threads)
    x = reconstruct(args.checkpoint, args.measurements, out=args.out, png=args.png,
                    batch=args.batch, device=args.device)
    print(f"reconstruction {list(x.shape)} {str(x.dtype).replace('torch.', '')}: {args.out}"
          + (f", {args.png}" if args.png else ""))
    return 0


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
        plot: PNG path for saved and peak bytes against the swept value (None: no plot).
        json_path: JSON path for the rows (None: not written).

    Returns:
        list of rows {model, <vary>, saved_bytes, peak_bytes, seconds}.
    """
    import torch

    from .data import TaskConfig, make_task
    from .models import LU, LUSER
    from .profile import training_memory
    from .reference import LUSER as ReferenceLUSER

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
    _memprofile_table(rows, vary, log)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"vary": vary, "task": task, "size": size, "channels": channels,
                       "batch": batch, "K": K, "solver_iterations": solver_iterations,
                       "rows": rows}, fh, indent=1)
    if plot:
        _memprofile_plot(plot, rows, vary, task)
        log(f"figure: {plot}")
    return rows


def _memprofile_table(rows, vary, log):
    log(f"{'model':<18} {vary:>10} {'saved MB':>9} {'peak MB':>9} {'s/step':>7}")
    for r in rows:
        log(f"{r['model']:<18} {r[vary]:>10} {r['saved_bytes'] / 2**20:9.3f} "
            f"{r['peak_bytes'] / 2**20:9.3f} {r['seconds']:7.3f}")


def _memprofile_plot(path, rows, vary, task):
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


def _cmd_memprofile(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    run_memprofile(vary=args.vary, values=args.values, task=args.task, size=args.size,
                   channels=args.channels, batch=args.batch, K=args.K,
                   solver_iterations=args.solver_iterations, seed=args.seed, plot=args.plot,
                   json_path=args.json)
    return 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text}")
    return value


def _add_train_parser(sub):
    from .data import TASKS

    pt = sub.add_parser("train", help="train LUSER or LU on a task (checkpoints, --resume, torchrun)")
    pt.add_argument("--task", required=True, choices=TASKS)
    pt.add_argument("--data", default=None,
                    help="ground-truth images: a PNG/NPY folder or a fastMRI / LoDoPaB-CT HDF5 "
                         "file (default: built-in phantoms / bundled images)")
    pt.add_argument("--model", default="luser", choices=("luser", "lu"))
    pt.add_argument("--size", type=_positive_int, default=64, help="image side")
    pt.add_argument("--noise", type=float, default=None,
                    help="noise std relative to the mean |A x| (default per task)")
    pt.add_argument("--angles", type=_positive_int, default=60, help="CT angles")
    pt.add_argument("--sigma", type=float, default=1.5, help="deblur Gaussian sigma (pixels)")
    pt.add_argument("--acceleration", type=float, default=4.0, help="MRI undersampling factor")
    pt.add_argument("--K", type=_positive_int, default=5, help="unrolled steps")
    pt.add_argument("--channels", type=_positive_int, default=32, help="network width")
    pt.add_argument("--depth", type=_positive_int, default=None,
                    help="regularizer depth (default: 4 LUSER, 5 LU)")
    pt.add_argument("--share-weights", default=None, action=argparse.BooleanOptionalAction,
                    help="one regularizer for all K steps (default: untied LUSER, tied LU)")
    pt.add_argument("--chunk", type=int, default=1,
                    help="LUSER: samples per chunk of the solves and implicit backward "
                         "(0: the whole batch; same result, more memory)")
    pt.add_argument("--solver-tol", type=float, default=1e-3, help="Anderson tolerance")
    pt.add_argument("--solver-max-iter", type=_positive_int, default=50, help="Anderson iterations cap")
    pt.add_argument("--anderson-m", type=_positive_int, default=5, help="Anderson history")
    pt.add_argument("--backward", default="ift", choices=("ift", "jfb", "phantom"))
    pt.add_argument("--batch", type=_positive_int, default=4, help="global batch size")
    pt.add_argument("--steps", type=_positive_int, default=200, help="optimiser steps")
    pt.add_argument("--epochs", type=_positive_int, default=None, help="epochs (overrides --steps)")
    pt.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine schedule)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--n-train", type=_positive_int, default=64, help="training samples")
    pt.add_argument("--out", default="out/train", help="output folder (last.pt, history.json)")
    pt.add_argument("--ckpt-every", type=int, default=50, help="checkpoint period in steps (0: end only)")
    pt.add_argument("--stop-at", type=_positive_int, default=None,
                    help="stop after this step with a checkpoint (continue with --resume)")
    pt.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    pt.add_argument("--log-every", type=int, default=0, help="log period without a terminal")
    pt.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    pt.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    pt.set_defaults(func=_cmd_train)

    pe = sub.add_parser("eval", help="PSNR/SSIM of a checkpoint on a split or on other images, "
                                      "PNG grid")
    pe.add_argument("checkpoint")
    pe.add_argument("--split", default="test", choices=("train", "val", "test"),
                    help="the task's split (with --data: only the noise seed)")
    pe.add_argument("--data", default=None,
                    help="ground-truth images instead of the split: a PNG/NPY folder, an HDF5 "
                         "file (fastMRI, LoDoPaB-CT or one image dataset) or a DICOM file or "
                         "folder; resized to the task's size, measured with its operator")
    pe.add_argument("--n", type=_positive_int, default=None,
                    help="samples (default: 16 from the split, every image of --data)")
    pe.add_argument("--batch", type=_positive_int, default=8)
    pe.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    pe.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    pe.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    pe.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("reconstruct", help="reconstruct your own measurements with a checkpoint")
    pr.add_argument("checkpoint")
    pr.add_argument("--measurements", required=True,
                    help=".npy of one measurement shaped like the operator's output for one "
                         "image, or a batch [B, ...] (complex for mri / nufft-mri)")
    pr.add_argument("--out", required=True, help=".npy for the reconstruction ([1, H, W] or "
                                                 "[B, 1, H, W]; complex for mri / nufft-mri)")
    pr.add_argument("--png", default=None, help="PNG of the reconstruction's magnitude")
    pr.add_argument("--batch", type=_positive_int, default=8)
    pr.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    pr.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    pr.set_defaults(func=_cmd_reconstruct)

    pm = sub.add_parser("memprofile", help="training memory: LUSER vs reference LUSER vs LU")
    pm.add_argument("--vary", default="iterations", choices=tuple(MEMPROFILE_VALUES))
    pm.add_argument("--values", type=_positive_int, nargs="+", default=None,
                    help="swept values (default per --vary)")
    pm.add_argument("--task", default="ct", choices=TASKS)
    pm.add_argument("--size", type=_positive_int, default=32)
    pm.add_argument("--channels", type=_positive_int, default=32)
    pm.add_argument("--batch", type=_positive_int, default=2)
    pm.add_argument("--K", type=_positive_int, default=5, help="unrolled steps")
    pm.add_argument("--solver-iterations", type=_positive_int, default=20)
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--plot", default=None, help="PNG path")
    pm.add_argument("--json", default=None, help="JSON path for the rows")
    pm.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    pm.set_defaults(func=_cmd_memprofile)


#: ``luser-fast bench --suite``: pytest files of bench/ (and a -k filter) per suite
BENCH_SUITES = {
    "ops": (("test_bench_radon.py", "test_bench_nufft.py"), "not cuda"),
    "solver": (("test_bench_solver.py",), None),
    "train": (("test_bench_deq_memory.py",), None),
    "gpu": (("test_bench_triton.py", "test_bench_radon.py", "test_bench_nufft.py"),
            "cuda or triton"),
}


def _bench_dir():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(here, "bench")
    if not os.path.exists(os.path.join(path, "harness.py")):
        raise FileNotFoundError(f"no bench/ suites next to the package ({path}): "
                                "`luser-fast bench` runs from a source checkout")
    return path


def run_bench(suites=("ops", "solver", "train", "gpu"), results=None, json_path=None, tiny=False,
              report=True, pytest_args=(), log=print):
    """Run the benchmark suites of ``bench/`` and regenerate BENCHMARKS.md from their JSON.

    Each suite runs in its own ``python -m pytest ... --benchmark-only`` process (so one
    suite's failure or crash does not hide the others); its results go through
    ``bench/harness.py`` into ``<results>/<suite file>.json`` keyed by machine, versions
    and git SHA. The GPU suite runs only on a machine with a CUDA device and is otherwise
    recorded as skipped, with the reason. This invocation is recorded too
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

    Returns:
        dict: the invocation record (suites -> files, returncode, wall_seconds; skipped).
    """
    import subprocess

    import torch

    bench = _bench_dir()
    unknown = [s for s in suites if s not in BENCH_SUITES]
    if unknown or not suites:
        raise ValueError(f"suite must be among {tuple(BENCH_SUITES)}, got {list(suites)!r}")
    results = os.path.abspath(results or os.path.join(bench, "results"))
    env = dict(os.environ, LUSER_FAST_BENCH_RESULTS=results,
               LUSER_FAST_BENCH_TINY="1" if tiny else "0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (bench, env.get("PYTHONPATH")) if p)
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
    sys.path.insert(0, bench)
    try:
        import harness
    finally:
        sys.path.remove(bench)
    run = harness.new_run(torch.get_num_threads())
    run["tiny"] = tiny
    run["command"] = "luser-fast bench --suite " + " ".join(dict.fromkeys(suites))
    run.update(record)
    harness.save_run("bench_runs", run, folder=results)
    if json_path:
        produced = {}
        for name in sorted(os.listdir(results)):
            if name.endswith(".json") and name != "bench_runs.json":
                with open(os.path.join(results, name)) as fh:
                    new = {k: r for k, r in json.load(fh).items()
                           if r.get("date", "") >= time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                 time.gmtime(started))}
                if new:
                    produced[name[:-5]] = new
        with open(json_path, "w") as fh:
            json.dump({"invocation": run, "runs": produced}, fh, indent=1)
    if report and not tiny:
        subprocess.run([sys.executable, os.path.join(bench, "report.py"), "--results", results],
                       check=True)
    failed = [s for s, r in record["suites"].items() if r["returncode"] not in (0, 5)]
    if failed:
        log(f"bench: suites with failures: {', '.join(failed)}")
    return run


def _cmd_bench(args):
    run = run_bench(suites=args.suite, results=args.results, json_path=args.json, tiny=args.tiny,
                    report=not args.no_report, pytest_args=args.pytest_args)
    return 1 if any(r["returncode"] not in (0, 5) for r in run["suites"].values()) else 0


def _add_bench_parser(sub):
    pb = sub.add_parser("bench", help="run the benchmark suites, regenerate BENCHMARKS.md")
    pb.add_argument("--suite", nargs="+", default=list(BENCH_SUITES), choices=tuple(BENCH_SUITES),
                    help="suites to run (default: all; gpu only runs on a CUDA machine)")
    pb.add_argument("--json", default=None, help="write this run's record and results here")
    pb.add_argument("--results", default=None, help="results folder (default bench/results)")
    pb.add_argument("--tiny", action="store_true",
                    help="tiny problems: a check that the harness runs (no report)")
    pb.add_argument("--no-report", action="store_true", help="do not rewrite BENCHMARKS.md")
    pb.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[],
                    help="extra pytest arguments (the rest of the command line)")
    pb.set_defaults(func=_cmd_bench)


def _cmd_study(args):
    import shlex

    import torch

    from .study import run_study

    if args.threads:
        torch.set_num_threads(args.threads)
    run_study(out=args.out, results=args.results, tasks=args.tasks, configs=args.configs,
              seeds=args.seeds, steps=args.steps, size=args.size,
              command=shlex.join(["luser-fast", *args.argv]))
    return 0


def _add_study_parser(sub):
    from .data import TASKS
    from .study import CONFIGS, SEEDS, SETTINGS, STUDY_TASKS

    ps = sub.add_parser("study", help="design-space sweep of LU / LUSER configurations "
                                      "(resumable; PSNR against memory and time plots)")
    ps.add_argument("--out", default="out/study", help="output folder for the PNGs")
    ps.add_argument("--results", default=None,
                    help="results JSON, rewritten after each run; runs in it are skipped "
                         "(default OUT/study.json; e.g. bench/results/study_cpu.json)")
    ps.add_argument("--tasks", nargs="+", default=list(STUDY_TASKS), choices=TASKS,
                    help="tasks (default: %(default)s)")
    ps.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=tuple(CONFIGS),
                    metavar="CONFIG", help="configurations of luser_fast.study.CONFIGS "
                                           "(default: all: %(default)s)")
    ps.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                    help="training seeds (default: %(default)s)")
    ps.add_argument("--steps", type=_positive_int, default=SETTINGS["steps"],
                    help="training steps per run")
    ps.add_argument("--size", type=_positive_int, default=SETTINGS["size"], help="image side")
    ps.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ps.set_defaults(func=_cmd_study)


def build_parser():
    from .data import TASKS
    from .demo import DEMO_TASKS

    p = argparse.ArgumentParser(prog="luser-fast", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="versions, build info, backend per op")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.add_argument("--cuda", action="store_true", help="also query CUDA availability")
    pi.set_defaults(func=_cmd_info)
    pd = sub.add_parser("demo", help="LU (depth 5) vs LUSER (defaults) on deblur, CT and MRI "
                                      "(minutes on a CPU)")
    pd.add_argument("--out", default="out/demo", help="output folder for the PNGs and demo.json")
    pd.add_argument("--tasks", nargs="+", default=list(DEMO_TASKS), choices=TASKS,
                    help="tasks to run (default: %(default)s)")
    pd.add_argument("--steps", type=_positive_int, default=250, help="training steps per model")
    pd.add_argument("--batch", type=_positive_int, default=4, help="batch size")
    pd.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    pd.add_argument("--channels", type=_positive_int, default=32, help="network width")
    pd.add_argument("--K", type=_positive_int, default=5, help="unrolled steps")
    pd.add_argument("--size", type=_positive_int, default=64, help="image side")
    pd.add_argument("--n-train", type=_positive_int, default=128, help="training samples")
    pd.add_argument("--n-test", type=_positive_int, default=16, help="held-out test samples")
    pd.add_argument("--noise", type=float, default=None,
                    help="noise std relative to the mean |A x| (default per task)")
    pd.add_argument("--angles", type=_positive_int, default=60, help="CT angles")
    pd.add_argument("--sigma", type=float, default=1.5, help="deblur Gaussian sigma (pixels)")
    pd.add_argument("--acceleration", type=float, default=4.0, help="MRI undersampling factor")
    pd.add_argument("--wide-channels", type=int, default=64,
                    help="also measure training memory at this width (0: skip)")
    pd.add_argument("--results", default=None,
                    help="JSON of runs keyed by machine | torch | git SHA to store this run in "
                         "(e.g. bench/results/demo_cpu.json)")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    pd.set_defaults(func=_cmd_demo)
    _add_train_parser(sub)
    _add_bench_parser(sub)
    _add_study_parser(sub)
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"luser-fast {args.command}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
