"""The ``luser-fast`` command: info, demo, train, eval, reconstruct, memprofile, bench, study.

    luser-fast info                 versions, extension build info, which backend serves each op
    luser-fast demo [--out DIR]     LU (depth 5) vs LUSER (its defaults) on deblur, CT and MRI
                                    (--tasks ct3d: cone-beam CT volumes)
    luser-fast train --task {deblur,ct,mri,nufft-mri} [--data PATH] [--model luser|lu] ...
    luser-fast eval CHECKPOINT [--split test] [--n 16] [--data PATH]
    luser-fast reconstruct CHECKPOINT --measurements y.npy --out x.npy [--png x.png]
    luser-fast memprofile [--vary iterations|depth|batch|K|chunk] [--plot out.png]
    luser-fast memprofile --dims 3 [--size 32 64 96 128] [--budget 16GiB] [--plot out.png]
    luser-fast bench [--suite ops solver train gpu] [--json out.json]
    luser-fast study [--tasks ...] [--configs ...] [--seeds ...] [--results study.json]

This module parses arguments and calls the library: ``luser_fast.demo.run_demo``,
``luser_fast.train`` (``train``, ``evaluate``, ``reconstruct``),
``luser_fast.profile.memprofile.run_memprofile`` (``run_memprofile3d`` with ``--dims 3``),
``luser_fast.profile.bench.run_bench``,
``luser_fast.study.run_study`` and ``luser_fast.profile.provenance.environment``.

Multi-process training: ``torchrun --nproc_per_node=N -m luser_fast.cli train ...``.

A user's error (a bad argument, checkpoint or data file, a missing device, a diverged run,
a full disk) ends the command with one ``luser-fast <command>: error: ...`` line and exit
status 2 (``USER_ERRORS``); a traceback means a bug.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from .errors import UserError


def _cmd_info(args):
    from .profile.provenance import environment

    info = environment(cuda=args.cuda)
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
    from .demo import run_demo

    run_demo(out=args.out, tasks=args.tasks, steps=args.steps, size=args.size,
             channels=args.channels, batch=args.batch, n_train=args.n_train, n_test=args.n_test,
             K=args.K, lr=args.lr, seed=args.seed, noise=args.noise, angles=args.angles,
             sigma=args.sigma, acceleration=args.acceleration, wide_channels=args.wide_channels,
             results=args.results, command=args.command_line, volume_size=args.volume_size,
             volume_angles=args.volume_angles)
    return 0


def _cmd_train(args):
    from .data import TaskConfig
    from .train import TrainConfig, train

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
    from .train import evaluate

    evaluate(args.checkpoint, split=args.split, n=args.n, batch=args.batch, out=args.out,
             device=args.device, data=args.data)
    return 0


def _cmd_reconstruct(args):
    from .train import reconstruct

    x = reconstruct(args.checkpoint, args.measurements, out=args.out, png=args.png,
                    batch=args.batch, device=args.device)
    print(f"reconstruction {list(x.shape)} {str(x.dtype).replace('torch.', '')}: {args.out}"
          + (f", {args.png}" if args.png else ""))
    return 0


def _cmd_memprofile(args):
    from .profile.memprofile import (MEMPROFILE3D_BUDGET, MEMPROFILE3D_SIZES, run_memprofile,
                                     run_memprofile3d)

    if args.dims == 3:
        for flag, value in (("--vary", args.vary), ("--values", args.values),
                            ("--task", args.task)):
            if value is not None:
                raise ValueError(f"{flag} is for --dims 2 (the 3-D study varies the volume "
                                 f"side, on cone-beam CT)")
        run_memprofile3d(sizes=args.size or MEMPROFILE3D_SIZES,
                         budget=args.budget or MEMPROFILE3D_BUDGET,
                         channels=args.channels or 64, K=args.K, batch=args.batch or 1,
                         solver_iterations=args.solver_iterations or 3, seed=args.seed,
                         max_measure_bytes=args.max_measure,
                         max_step_seconds=args.max_step_seconds, plot=args.plot,
                         json_path=args.json, results=args.results, command=args.command_line)
        return 0
    for flag, value in (("--budget", args.budget), ("--results", args.results),
                        ("--max-measure", args.max_measure)):
        if value is not None:
            raise ValueError(f"{flag} is for --dims 3")
    if args.size and len(args.size) > 1:
        raise ValueError("--size takes one value with --dims 2 (several with --dims 3)")
    run_memprofile(vary=args.vary or "iterations", values=args.values, task=args.task or "ct",
                   size=args.size[0] if args.size else 32, channels=args.channels or 32,
                   batch=args.batch or 2, K=args.K,
                   solver_iterations=args.solver_iterations or 20, seed=args.seed,
                   plot=args.plot, json_path=args.json)
    return 0


def _cmd_bench(args):
    from .profile.bench import run_bench

    run = run_bench(suites=args.suite, results=args.results, json_path=args.json, tiny=args.tiny,
                    report=not args.no_report, pytest_args=args.pytest_args)
    return 1 if any(r["returncode"] not in (0, 5) for r in run["suites"].values()) else 0


def _cmd_study(args):
    from .study import run_study

    run_study(out=args.out, results=args.results, tasks=args.tasks, configs=args.configs,
              seeds=args.seeds, steps=args.steps, size=args.size, command=args.command_line)
    return 0


# --- options shared by several commands --------------------------------------------------------


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text}")
    return value


def _threads_option(p):
    p.add_argument("--threads", type=_non_negative_int, default=0,
                   help="torch threads (0: torch's default)")


def _task_options(p):
    """The task's measurement settings (``TaskConfig``) of demo and train."""
    p.add_argument("--size", type=_positive_int, default=64, help="image side")
    p.add_argument("--noise", type=float, default=None,
                   help="noise std relative to the mean |A x| (default per task)")
    p.add_argument("--angles", type=_positive_int, default=60, help="CT angles")
    p.add_argument("--sigma", type=float, default=1.5, help="deblur Gaussian sigma (pixels)")
    p.add_argument("--acceleration", type=float, default=4.0, help="MRI undersampling factor")


def _training_options(p, steps, n_train):
    """Model width, unrolled steps and the training settings of ``luser_fast.train.fit``,
    which demo and train share."""
    p.add_argument("--K", type=_positive_int, default=5, help="unrolled steps")
    p.add_argument("--channels", type=_positive_int, default=32, help="network width")
    p.add_argument("--batch", type=_positive_int, default=4, help="global batch size")
    p.add_argument("--steps", type=_positive_int, default=steps,
                   help="optimiser steps (per model)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate, cosine-annealed to 0 over the steps")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initialisation, the batch order and the task's data")
    p.add_argument("--n-train", type=_positive_int, default=n_train, help="training samples")


# --- the commands' parsers ---------------------------------------------------------------------


def _add_info_parser(sub):
    pi = sub.add_parser("info", help="versions, build info, backend per op")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.add_argument("--cuda", action="store_true", help="also query CUDA availability")
    pi.set_defaults(func=_cmd_info)


def _add_demo_parser(sub):
    from .data import TASKS
    from .data.volumes import VOLUME_TASKS
    from .demo import DEMO_TASKS

    pd = sub.add_parser("demo", help="LU (depth 5) vs LUSER (defaults) on deblur, CT and MRI, "
                                      "trained as `train` trains (minutes on a CPU)")
    pd.add_argument("--out", default="out/demo", help="output folder for the PNGs and demo.json")
    pd.add_argument("--tasks", nargs="+", default=list(DEMO_TASKS),
                    choices=TASKS + VOLUME_TASKS,
                    help="tasks to run (default: %(default)s; ct3d: cone-beam CT volumes)")
    _task_options(pd)
    _training_options(pd, steps=250, n_train=128)
    pd.add_argument("--n-test", type=_positive_int, default=None,
                    help="held-out test samples (default 16; ct3d 4)")
    pd.add_argument("--wide-channels", type=int, default=None,
                    help="also measure training memory at this width (0: skip; default 64, "
                         "ct3d 32)")
    pd.add_argument("--volume-size", type=_positive_int, default=32,
                    help="ct3d: volume side N (N^3 voxels)")
    pd.add_argument("--volume-angles", type=_positive_int, default=None,
                    help="ct3d: cone-beam angles over the full circle (default N / 2)")
    # unless given: per-task defaults (luser_fast.demo.DEFAULTS, VOLUME_DEFAULTS for ct3d:
    # steps 250 / 60, batch 4 / 2, channels 32 / 24, n-train 128 / 24, lr 1e-3 / 3e-4)
    pd.set_defaults(steps=None, batch=None, channels=None, n_train=None, lr=None)
    pd.add_argument("--results", default=None,
                    help="JSON of runs keyed by machine | torch | git SHA to store this run in "
                         "(e.g. bench/results/demo_cpu.json)")
    _threads_option(pd)
    pd.set_defaults(func=_cmd_demo)


def _add_train_parser(sub):
    from .data import TASKS

    pt = sub.add_parser("train", help="train LUSER or LU on a task (checkpoints, --resume, "
                                       "torchrun)")
    pt.add_argument("--task", required=True, choices=TASKS)
    pt.add_argument("--data", default=None,
                    help="ground-truth images: a PNG/NPY folder or a fastMRI / LoDoPaB-CT HDF5 "
                         "file (default: built-in phantoms / bundled images)")
    pt.add_argument("--model", default="luser", choices=("luser", "lu"))
    _task_options(pt)
    _training_options(pt, steps=200, n_train=64)
    pt.add_argument("--depth", type=_positive_int, default=None,
                    help="regularizer depth (default: 4 LUSER, 5 LU)")
    pt.add_argument("--share-weights", default=None, action=argparse.BooleanOptionalAction,
                    help="one regularizer for all K steps (default: untied LUSER, tied LU)")
    pt.add_argument("--chunk", type=int, default=1,
                    help="LUSER: samples per chunk of the solves and implicit backward "
                         "(0: the whole batch; same result, more memory)")
    pt.add_argument("--solver-tol", type=float, default=1e-3, help="Anderson tolerance")
    pt.add_argument("--solver-max-iter", type=_positive_int, default=50,
                    help="Anderson iterations cap")
    pt.add_argument("--anderson-m", type=_positive_int, default=5, help="Anderson history")
    pt.add_argument("--backward", default="ift", choices=("ift", "jfb", "phantom"))
    pt.add_argument("--epochs", type=_positive_int, default=None, help="epochs (overrides --steps)")
    pt.add_argument("--out", default="out/train", help="output folder (last.pt, history.json)")
    pt.add_argument("--ckpt-every", type=int, default=50,
                    help="checkpoint period in steps (0: end only)")
    pt.add_argument("--stop-at", type=_positive_int, default=None,
                    help="stop after this step with a checkpoint (continue with --resume)")
    pt.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    pt.add_argument("--log-every", type=int, default=0, help="log period without a terminal")
    pt.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    _threads_option(pt)
    pt.set_defaults(func=_cmd_train)


def _add_eval_parsers(sub):
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
    _threads_option(pe)
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
    _threads_option(pr)
    pr.set_defaults(func=_cmd_reconstruct)


def _add_memprofile_parser(sub):
    from .data import TASKS
    from .profile.memprofile import MEMPROFILE_VALUES

    pm = sub.add_parser("memprofile", help="training memory: LUSER vs reference LUSER vs LU "
                                            "(--dims 3: LU vs LUSER on cone-beam CT volumes)")
    pm.add_argument("--dims", type=int, default=2, choices=(2, 3),
                    help="2: images, one setting varied; 3: volumes of each --size, cone-beam "
                         "CT, and the largest trainable side within --budget")
    pm.add_argument("--vary", default=None, choices=tuple(MEMPROFILE_VALUES),
                    help="--dims 2: the varied setting (default iterations)")
    pm.add_argument("--values", type=_positive_int, nargs="+", default=None,
                    help="swept values (default per --vary)")
    pm.add_argument("--task", default=None, choices=TASKS, help="--dims 2: task (default ct)")
    pm.add_argument("--size", type=_positive_int, nargs="+", default=None,
                    help="image side (--dims 2, default 32) or volume sides (--dims 3, "
                         "default 32 64 96 128)")
    pm.add_argument("--channels", type=_positive_int, default=None,
                    help="network width (default 32; --dims 3: 64, the models' default)")
    pm.add_argument("--batch", type=_positive_int, default=None,
                    help="batch (default 2; --dims 3: 1)")
    pm.add_argument("--K", "--iterations", dest="K", type=_positive_int, default=5,
                    help="unrolled steps (the models' iterations)")
    pm.add_argument("--solver-iterations", type=_positive_int, default=None,
                    help="LUSER's Anderson iterations per solve (default 20; --dims 3: 3)")
    pm.add_argument("--budget", default=None,
                    help="--dims 3: memory budget, e.g. 16GiB (default 16GiB)")
    pm.add_argument("--max-measure", default=None,
                    help="--dims 3: steps predicted to need more are not run (default half "
                         "of the available memory)")
    pm.add_argument("--max-step-seconds", type=float, default=900.0,
                    help="--dims 3: steps predicted to take longer are not run")
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--plot", default=None, help="PNG path")
    pm.add_argument("--json", default=None, help="JSON path for the rows")
    pm.add_argument("--results", default=None,
                    help="--dims 3: JSON of runs keyed by machine | torch | git SHA to store "
                         "this run in (e.g. bench/results/memprofile3d_cpu.json)")
    _threads_option(pm)
    pm.set_defaults(func=_cmd_memprofile)


def _add_bench_parser(sub):
    from .profile.bench import BENCH_SUITES

    pb = sub.add_parser("bench", help="run the benchmark suites of the repository's bench/ "
                                      "folder, regenerate BENCHMARKS.md")
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
    _threads_option(ps)
    ps.set_defaults(func=_cmd_study)


def build_parser():
    p = argparse.ArgumentParser(prog="luser-fast", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_info_parser, _add_demo_parser, _add_train_parser, _add_eval_parsers,
                _add_memprofile_parser, _add_bench_parser, _add_study_parser):
        add(sub)
    return p


#: what ends a command with one ``error:`` line and status 2 instead of a traceback: the
#: user's errors (``luser_fast.errors.UserError``: checkpoints, devices, a diverged run),
#: rejected arguments and data (``ValueError``, the validation contract) and files that
#: cannot be read or written (``OSError``: missing, permissions, a full disk). Anything
#: else is a bug and keeps its traceback.
USER_ERRORS = (UserError, ValueError, OSError)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.command_line = shlex.join(["luser-fast", *args.argv])
    try:
        if getattr(args, "threads", 0):
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        parser.exit(2, f"luser-fast {args.command}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
