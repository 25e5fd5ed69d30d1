"""``luser-fast demo``: the paper's comparison, small, on a CPU.

For each task (deblur, ct, mri by default; data and operator from ``make_task``), LU with a
deep CNN regularizer (depth 5) and LUSER with a shallow equilibrium regularizer
(``LUSER``'s defaults: depth 4, one map per unrolled step, chunk 1) are built and trained
as ``luser-fast train --model lu`` / ``--model luser`` builds and trains them
(``luser_fast.train.build_model`` and ``fit``: Adam, cosine schedule) with the same K,
width, seed, batch order, learning rate and number of steps, then compared on
held-out test samples: PSNR / SSIM (magnitudes, data range 1) next to the starting point
x0, PSNR on real scans never trained on (``luser_fast.data.real``), the bytes saved for
backward and the peak bytes of one training step (``training_memory``), seconds per step,
and LUSER's solver iterations. One run is one seed: the goals are judged over seeds by
``luser-fast study``. Each task gets a
table, the LU / LUSER ratios against the goals below, and a PNG; one JSON holds every row.

Volumes (``--tasks ct3d``, not in the default tasks: it takes about six minutes on two
cores, the three 2-D tasks together about ten): cone-beam CT of N^3
``random_ellipsoids`` phantoms (``luser_fast.data.volumes``: N / 2 angles over the full
circle by default, a detector covering the volume), the same two models with
``spatial_dims=3`` (Conv3d networks), trained by ``fit`` in the same way, compared on
held-out volumes by PSNR (per volume) and SSIM (mean over axial slices), all clamped to
[0, 1], against FDK, with a PNG of the central axial, coronal and sagittal slices. Its own defaults (``VOLUME_DEFAULTS``: fewer steps,
a smaller batch and width) keep it to minutes on two cores; any setting given explicitly
applies to it as to the 2-D tasks.
"""
from __future__ import annotations

import os
import time

import torch

from .data import TaskConfig, make_task
from .data.real import evaluate_real
from .data.volumes import CT3D_NOISE, VOLUME_TASKS, make_ct3d
from .experiment import (image_grid, magnitude, memory_ratios, quality, solver_stats,
                         step_memory, write_json)
from .metrics import psnr, ssim
from .profile import harness
from .train import TrainConfig, build_model, fit

__all__ = ["DEMO_TASKS", "VOLUME_TASKS", "DEFAULTS", "VOLUME_DEFAULTS", "GOALS", "run_demo"]

DEMO_TASKS = ("deblur", "ct", "mri")
#: training settings of the 2-D tasks and of the volume task (ct3d) when not given
DEFAULTS = {"steps": 250, "batch": 4, "channels": 32, "n_train": 128, "n_test": 16,
            "wide_channels": 64, "lr": 1e-3}
#: ct3d: 32^3 volumes from 16 angles (N / 2), 60 steps at lr 3e-4 (at 1e-3 both models
#: first fell 10 dB and had not recovered 60 steps later); 24 channels, not 16: torch runs
#: a float32 conv3d of one sample whose B C D H < 20480 elements through its im2col path,
#: about 10x slower than oneDNN (16 x 32 x 32 is below, 24 x 32 x 32 above), so 24
#: channels train faster than 16 under chunk=1
VOLUME_DEFAULTS = {"steps": 60, "batch": 2, "channels": 24, "n_train": 24, "n_test": 4,
                   "wide_channels": 32, "lr": 3e-4}
#: the claims checked per task: LU / LUSER peak and saved bytes of a training step at
#: least these factors, and LUSER's test PSNR at most this far below LU's
GOALS = {"peak_ratio": 8.0, "saved_ratio": 10.0, "psnr_tolerance_db": 0.3}
LU_NAME, LUSER_NAME = "LU (depth 5)", "LUSER (defaults)"
_X0_LABEL = {"ct": "FBP", "deblur": "A^T y"}


def _config(name, settings, channels=None):
    """The ``TrainConfig`` of a demo model: LU as the paper's baseline (depth 5); LUSER with
    its constructor's defaults (depth, untied weights, chunk, solver), the ones chosen from
    the design-space study; the demo's training settings."""
    s = settings
    return TrainConfig(model="lu" if name == LU_NAME else "luser", iterations=s["K"],
                       channels=channels or s["channels"], batch=s["batch"], steps=s["steps"],
                       lr=s["lr"], seed=s["seed"], n_train=s["n_train"])


def _build_volume_model(cfg, operator):
    """``luser_fast.train.build_model`` for volumes: the same model from the same config
    and seed, with ``spatial_dims=3``."""
    from .models import LU, LUSER

    torch.manual_seed(cfg.seed)
    if cfg.model == "lu":
        return LU(operator, iterations=cfg.iterations, channels=cfg.channels, depth=cfg.depth,
                  share_weights=cfg.share_weights, spatial_dims=3)
    return LUSER(operator, iterations=cfg.iterations, channels=cfg.channels, depth=cfg.depth,
                 share_weights=cfg.share_weights, chunk=cfg.chunk or None,
                 solver_kwargs={"tol": cfg.solver_tol, "max_iter": cfg.solver_max_iter,
                                "m": cfg.anderson_m},
                 backward=cfg.backward, spatial_dims=3)


def _quality3d(x_hat, truth):
    """PSNR per volume and SSIM over the axial slices, means over the batch, of the
    reconstruction clamped to the data range [0, 1] (as x0 is: most of a volume is
    background, where unclamped negative values would decide the PSNR)."""
    def slices(v):
        return v.reshape(-1, 1, *v.shape[-2:])

    x_hat = x_hat.clamp(0, 1)
    return {"psnr": psnr(x_hat, truth), "ssim": ssim(slices(x_hat), slices(truth))}


def _central_slices(v):
    """[B, 1, N, N, N] -> [3 B, 1, N, N]: the central axial, coronal and sagittal slice of
    each volume, in that order."""
    d, h, w = v.shape[-3:]
    return torch.stack([v[:, 0, d // 2], v[:, 0, :, h // 2], v[:, 0, :, :, w // 2]],
                       dim=1).reshape(-1, 1, *v.shape[-2:])


def _run_volume_task(task, settings, out, log):
    """ct3d: the paired training on cone-beam volumes (module docstring)."""
    s = settings
    size, noise = s["volume_size"], s["noise"]
    train = make_ct3d(size, "train", s["n_train"], angles=s["volume_angles"], noise=noise,
                      seed=s["seed"])
    test = make_ct3d(size, "test", s["n_test"], angles=s["volume_angles"], noise=noise,
                     seed=s["seed"], operator=train.operator)
    op = train.operator
    config = {"task": task, "size": size, "angles": op.angles.numel(),
              "detector": list(op.detector_shape), "source_distance": op.source_distance,
              "noise": noise, **{k: v for k, v in s.items()
                                 if k not in ("volume_size", "volume_angles", "noise")}}
    configs = {name: _config(name, s) for name in (LU_NAME, LUSER_NAME)}
    models = {name: _build_volume_model(c, op) for name, c in configs.items()}
    with torch.no_grad():
        x0 = models[LU_NAME].initial(test.y).clamp(0, 1)          # FDK
    rows = {"x0": {"label": "FDK", **_quality3d(x0, test.x)}}
    recon = {"x0 (FDK)": x0}
    for name, model in models.items():
        with torch.no_grad():
            before = _quality3d(model(test.y), test.x)
        c = configs[name]
        fitted = fit(model, train.y, train.x, c.total_steps, c.batch, c.lr, c.seed,
                     desc=f"{task} {name}")
        losses = [r["loss"] for r in fitted["history"]]
        with torch.no_grad():
            recon[name] = model(test.y)
        row = {**_quality3d(recon[name], test.x), "psnr_init": before["psnr"],
               "ssim_init": before["ssim"], "loss_first": losses[0],
               "loss_last": sum(losses[-10:]) / len(losses[-10:]),
               "sec_per_step": fitted["sec_per_step"],
               "params": sum(p.numel() for p in model.parameters())}
        row.update(solver_stats(model))
        row.update(step_memory(model, train.y[:s["batch"]], train.x[:s["batch"]]))
        rows[name] = row
    result = {"config": config, "rows": rows, "ratios": _ratios(rows, real=False)}
    if s["wide_channels"]:
        wide = {name: step_memory(_build_volume_model(_config(name, s, s["wide_channels"]), op),
                                  train.y[:s["batch"]], train.x[:s["batch"]])
                for name in (LU_NAME, LUSER_NAME)}
        _add_wide(result, wide, s["wide_channels"])
    png = os.path.join(out, f"demo_{task}.png")
    image_grid(png, _central_slices(test.x[:1]),
               {k: _central_slices(v[:1].clamp(0, 1)) for k, v in recon.items()}, 3,
               f"{task} {size}^3, held-out volume: central axial / coronal / sagittal slices",
               error=False)
    result["png"] = png
    _print_task(task, result, log)
    return result


def _ratios(rows, real=True):
    """LU / LUSER memory ratios, PSNR / SSIM differences and the goals' verdicts."""
    ratios = memory_ratios(rows[LU_NAME], rows[LUSER_NAME])
    ratios["psnr_diff_db"] = rows[LUSER_NAME]["psnr"] - rows[LU_NAME]["psnr"]
    ratios["ssim_diff"] = rows[LUSER_NAME]["ssim"] - rows[LU_NAME]["ssim"]
    if real:
        ratios["real_psnr_diff_db"] = rows[LUSER_NAME]["real_psnr"] - rows[LU_NAME]["real_psnr"]
        ratios["real_beats_x0"] = all(rows[n]["real_psnr"] > rows["x0"]["real_psnr"]
                                      for n in (LU_NAME, LUSER_NAME))
    ratios["peak_goal_met"] = ratios["peak_ratio"] >= GOALS["peak_ratio"]
    ratios["saved_goal_met"] = ratios["saved_ratio"] >= GOALS["saved_ratio"]
    ratios["psnr_goal_met"] = ratios["psnr_diff_db"] >= -GOALS["psnr_tolerance_db"]
    ratios["met"] = ratios["peak_goal_met"] and ratios["saved_goal_met"] and ratios["psnr_goal_met"]
    return ratios


def _add_wide(result, wide, channels):
    result["wide"] = {"channels": channels, "rows": wide,
                      **memory_ratios(wide[LU_NAME], wide[LUSER_NAME])}
    result["ratios"]["wide_peak_ratio"] = result["wide"]["peak_ratio"]
    result["ratios"]["wide_saved_ratio"] = result["wide"]["saved_ratio"]


def _run_task(task, cfg, settings, out, log):
    s = settings
    train = make_task(cfg, "train", s["n_train"])
    test = make_task(cfg, "test", s["n_test"], operator=train.operator)
    truth = magnitude(test.x)
    configs = {name: _config(name, s) for name in (LU_NAME, LUSER_NAME)}
    models = {name: build_model(c, train.operator, train.in_channels)
              for name, c in configs.items()}
    with torch.no_grad():
        # x0 as both models start from it (FBP for CT, A^T y / A^H y otherwise), clamped
        # to the data range: the strongest form of the classical baseline
        x0 = magnitude(models[LU_NAME].initial(test.y)).clamp(0, 1)
    x0_label = _X0_LABEL.get(task, "|A^H y|")
    rows = {"x0": {"label": x0_label, **quality(x0, truth)}}
    recon = {f"x0 ({x0_label})": x0}
    for name, model in models.items():
        with torch.no_grad():
            before = quality(model(test.y), truth)
        c = configs[name]
        fitted = fit(model, train.y, train.x, c.total_steps, c.batch, c.lr, c.seed,
                     desc=f"{task} {name}")
        losses = [r["loss"] for r in fitted["history"]]
        with torch.no_grad():
            recon[name] = magnitude(model(test.y))
        row = {**quality(recon[name], truth), "psnr_init": before["psnr"],
               "ssim_init": before["ssim"], "loss_first": losses[0],
               "loss_last": sum(losses[-10:]) / len(losses[-10:]),
               "sec_per_step": fitted["sec_per_step"],
               "params": sum(p.numel() for p in model.parameters())}
        # of the test-set forward (LUSER): mean over samples and unrolled steps
        row.update(solver_stats(model))
        row.update(step_memory(model, train.y[:s["batch"]], train.x[:s["batch"]]))
        real = evaluate_real(model, cfg, operator=train.operator)
        row["real_psnr"], row["real_ssim"] = real["model"]["psnr"], real["model"]["ssim"]
        rows["x0"].update(real_psnr=real["x0"]["psnr"], real_ssim=real["x0"]["ssim"],
                          real_files=real["files"])
        rows[name] = row
    result = {"config": {**cfg.to_dict(), **s}, "rows": rows, "ratios": _ratios(rows)}
    if s["wide_channels"]:
        # memory at a realistic width: one measured step per model, untrained weights
        wide = {name: step_memory(build_model(_config(name, s, s["wide_channels"]),
                                              train.operator, train.in_channels),
                                  train.y[:s["batch"]], train.x[:s["batch"]])
                for name in (LU_NAME, LUSER_NAME)}
        _add_wide(result, wide, s["wide_channels"])
    png = os.path.join(out, f"demo_{task}.png")
    image_grid(png, truth, recon, 3, f"{task} {cfg.size}x{cfg.size}, held-out test samples",
          error=False)
    result["png"] = png
    _print_task(task, result, log)
    return result


def run_demo(out="out/demo", tasks=DEMO_TASKS, steps=None, size=64, channels=None, batch=None,
             n_train=None, n_test=None, K=5, lr=None, seed=0, noise=None, angles=60, sigma=1.5,
             acceleration=4.0, wide_channels=None, results=None, command=None,
             volume_size=32, volume_angles=None, log=print):
    """Train LU (depth 5) and LUSER (its defaults) on each task and compare them.

    Args:
        out: folder for ``demo_<task>.png`` (ground truth / x0 / LU / LUSER) and
            ``demo.json`` (the whole run, as returned).
        tasks: task names (``luser_fast.data.TASKS`` and ``VOLUME_TASKS``; default
            deblur, ct, mri).
        steps, batch, lr, seed: training of both models (``luser_fast.train.fit``: Adam,
            learning rate cosine-annealed over ``steps``, the same batches).
        size, noise, angles, sigma, acceleration: the task configs (``TaskConfig``; noise
            None takes each task's default).
        channels, K: network width and unrolled steps of both models.
        n_train, n_test: samples of the train and (held-out) test splits.
        wide_channels: also measure training memory at this width (0: skip).
        volume_size, volume_angles: ct3d's volume side N and projection angles over the
            full circle (default N // 2); ct3d takes ``noise`` when given (else 0.03).

        steps, channels, batch, n_train, n_test, wide_channels and lr left None take
        ``DEFAULTS`` (2-D tasks: 250, 32, 4, 128, 16, 64, 1e-3) or ``VOLUME_DEFAULTS``
        (ct3d: 60, 24, 2, 24, 4, 32, 3e-4).
        results: JSON file of runs keyed by "<cpu> | torch <version> | <git sha>"; this
            run is stored under its key (``luser_fast.profile.harness.store_run``; None: not
            written).
        command: the command line recorded in the run.

    Returns:
        dict: date, machine, versions, git_sha, command, wall_seconds and ``tasks``
        {task: {config, rows {"x0", "LU (depth 5)", "LUSER (defaults)": {psnr, ssim,
        saved_bytes, peak_bytes, sec_per_step, ...}}, ratios {peak_ratio, saved_ratio,
        psnr_diff_db, ssim_diff, <goal>_goal_met, met, wide_*_ratio} (numbers and bools
        only), wide {channels, rows, peak_ratio, saved_ratio}, png}}.
    """
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    given = {"steps": steps, "batch": batch, "channels": channels, "n_train": n_train,
             "n_test": n_test, "wide_channels": wide_channels, "lr": lr}

    def settings_of(defaults):
        return {**{k: defaults[k] if v is None else v for k, v in given.items()},
                "schedule": "cosine", "seed": seed, "K": K}

    settings = settings_of(DEFAULTS)
    run = harness.new_run(torch.get_num_threads())
    del run["tiny"]                       # a demo run, never a harness check
    run["command"] = command
    run["goals"] = GOALS
    run["tasks"] = {}
    for task in tasks:
        if task in VOLUME_TASKS:
            s = {**settings_of(VOLUME_DEFAULTS), "volume_size": volume_size,
                 "volume_angles": volume_angles or max(1, volume_size // 2),
                 "noise": CT3D_NOISE if noise is None else noise}
            run["tasks"][task] = _run_volume_task(task, s, out, log)
            continue
        cfg = TaskConfig(task=task, size=size, noise=noise, angles=angles, sigma=sigma,
                         acceleration=acceleration, seed=seed)
        run["tasks"][task] = _run_task(task, cfg, settings, out, log)
    run["wall_seconds"] = time.perf_counter() - t0
    log(f"demo: {len(run['tasks'])} tasks in {run['wall_seconds']:.0f} s")
    write_json(os.path.join(out, "demo.json"), run)
    if results:
        key = harness.store_run(results, run)
        log(f"results: {results} [{key}]")
    return run


def _print_task(task, result, log):
    c, rows, r = result["config"], result["rows"], result["ratios"]
    shape = (f"{c['size']}^3 ({c['angles']} angles)" if task in VOLUME_TASKS
             else f"{c['size']}x{c['size']}")
    log(f"\n{task} {shape}, noise {c['noise']:g}, {c['steps']} steps (lr "
        f"{c['lr']:g}, {c['schedule']} schedule), batch {c['batch']}, {c['channels']} channels, "
        f"K={c['K']}; {c['n_test']} held-out test samples")
    log(f"{'model':<22} {'PSNR init':>9} {'PSNR':>7} {'SSIM':>6} {'real PSNR':>9} "
        f"{'saved MB':>9} {'peak MB':>8} {'s/step':>7} {'solver its':>10}")
    for name, row in rows.items():
        if name == "x0":
            log(f"{'x0 (' + row['label'] + ')':<22} {'':>9} {row['psnr']:7.2f} {row['ssim']:6.3f} "
                f"{row.get('real_psnr', float('nan')):9.2f}")
            continue
        its = f"{row['solver_iterations']:10.1f}" if "solver_iterations" in row else ""
        log(f"{name:<22} {row['psnr_init']:9.2f} {row['psnr']:7.2f} {row['ssim']:6.3f} "
            f"{row.get('real_psnr', float('nan')):9.2f} {row['saved_bytes'] / 2**20:9.2f} "
            f"{row['peak_bytes'] / 2**20:8.2f} {row['sec_per_step']:7.3f} {its}")
    if "real_files" in rows["x0"]:
        log(f"real PSNR: {len(rows['x0']['real_files'])} real scans never trained on "
            f"({', '.join(rows['x0']['real_files'])})")

    def mark(ok):
        return "met" if ok else "MISSED"

    log(f"LU/LUSER peak {r['peak_ratio']:.1f}x (goal >= {GOALS['peak_ratio']:g}x: "
        f"{mark(r['peak_goal_met'])}), saved {r['saved_ratio']:.1f}x (goal >= "
        f"{GOALS['saved_ratio']:g}x: {mark(r['saved_goal_met'])}), PSNR LUSER - LU "
        f"{r['psnr_diff_db']:+.2f} dB (goal >= -{GOALS['psnr_tolerance_db']:g} dB: "
        f"{mark(r['psnr_goal_met'])})")
    if "real_psnr_diff_db" in r:
        log(f"real scans: LUSER - LU {r['real_psnr_diff_db']:+.2f} dB; both beat x0: "
            f"{'yes' if r['real_beats_x0'] else 'NO'}")
    if "wide" in result:
        w = result["wide"]
        log(f"at {w['channels']} channels (untrained): peak {w['peak_ratio']:.1f}x, "
            f"saved {w['saved_ratio']:.1f}x")
    log(f"figure: {result['png']}")
