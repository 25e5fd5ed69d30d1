"""Training and evaluation of LUSER / LU on the four tasks (``luser-fast train`` / ``eval``).

One step takes a global batch of ``batch`` samples: the training split is reshuffled
every epoch by a ``DistributedSampler`` seeded with ``seed`` (drop_last), and step s
reads batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``. The batch a step
sees is therefore a function of (seed, step) alone, which is what makes resuming exact
and a run on N processes (each taking ``batch / N`` of the global batch) follow the same
trajectory as a run on one.

Checkpoints (``OUT/last.pt``) hold the model, optimiser, scheduler, step, RNG states,
the loss history and both configs; they are written to a temporary file and renamed, so
an interrupted write never leaves a truncated checkpoint. Under ``torchrun`` the model
is wrapped in ``DistributedDataParallel`` (NCCL on GPUs, gloo on CPU) and only rank 0
logs and writes.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.distributed as dist

from .data import TaskConfig, build_operator, make_task
from .metrics import psnr_per_image, ssim_per_image
from .profile import mse

__all__ = ["TrainConfig", "build_model", "train", "evaluate", "save_checkpoint",
           "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "luser_fast-train-1"
MODELS = ("luser", "lu")
BACKWARDS = ("ift", "jfb", "phantom")
#: TrainConfig fields that may change between a run and its resumption
_RESUMABLE = ("out", "stop_at", "ckpt_every", "log_every", "device")


@dataclass
class TrainConfig:
    """Model, optimisation and run settings of ``train``.

    Attributes:
        model: "luser" or "lu".
        iterations: K, unrolled proximal-gradient steps.
        channels: network width.
        depth: regularizer depth; None gives 2 for LUSER and 5 for LU.
        solver_tol, solver_max_iter, anderson_m: LUSER's Anderson solver settings.
        backward: LUSER's backward ("ift", "jfb" or "phantom").
        batch: global batch size (split across processes under torchrun).
        steps: optimiser steps; ``epochs`` overrides it when given.
        epochs: passes over the training split (steps = epochs * (n_train // batch)).
        lr: Adam learning rate (cosine-annealed to 0 over the run).
        seed: seed of the model's initialisation and of the batch order.
        n_train: training samples.
        out: output folder (checkpoint ``last.pt``, ``history.json``).
        ckpt_every: write a checkpoint every this many steps (0: only at the end).
        stop_at: stop after this global step with a checkpoint (to split a run across
            jobs; ``--resume`` continues it).
        log_every: print a progress line every this many steps when stderr is not a
            terminal (0: ten lines per run).
        device: "auto" (the local CUDA device under torchrun when there is one, else
            CUDA if available, else CPU), "cpu" or "cuda".
    """

    model: str = "luser"
    iterations: int = 5
    channels: int = 32
    depth: int | None = None
    solver_tol: float = 1e-3
    solver_max_iter: int = 50
    anderson_m: int = 5
    backward: str = "ift"
    batch: int = 4
    steps: int = 200
    epochs: int | None = None
    lr: float = 1e-3
    seed: int = 0
    n_train: int = 64
    out: str = "out/train"
    ckpt_every: int = 50
    stop_at: int | None = None
    log_every: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {self.backward!r}")
        if self.depth is None:
            self.depth = 2 if self.model == "luser" else 5
        for name, low in (("iterations", 1), ("channels", 1), ("depth", 2), ("solver_max_iter", 1),
                          ("anderson_m", 1), ("batch", 1), ("steps", 1), ("n_train", 1),
                          ("ckpt_every", 0), ("log_every", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name in ("epochs", "stop_at"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.solver_tol) and self.solver_tol > 0):
            raise ValueError(f"solver_tol must be a finite number > 0, got {self.solver_tol!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.batch > self.n_train:
            raise ValueError(f"batch ({self.batch}) is larger than n_train ({self.n_train})")

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch if self.epochs else self.steps


def build_model(cfg: TrainConfig, operator, in_channels):
    """The model ``cfg`` describes, around ``operator``, initialised from ``cfg.seed``.

    Args:
        cfg: TrainConfig.
        operator: the task's forward model.
        in_channels: network image channels (2 for complex images).

    Returns:
        ``luser_fast.LUSER`` or ``luser_fast.LU``.
    """
    from .models import LU, LUSER

    torch.manual_seed(cfg.seed)
    if cfg.model == "lu":
        return LU(operator, iterations=cfg.iterations, in_channels=in_channels,
                  channels=cfg.channels, depth=cfg.depth)
    return LUSER(operator, iterations=cfg.iterations, in_channels=in_channels,
                 channels=cfg.channels, depth=cfg.depth,
                 solver_kwargs={"tol": cfg.solver_tol, "max_iter": cfg.solver_max_iter,
                                "m": cfg.anderson_m},
                 backward=cfg.backward)


def save_checkpoint(path, state):
    """Write ``state`` with ``torch.save`` to a temporary file beside ``path``, then rename
    it over ``path`` (atomic on POSIX: a reader sees the old or the new file, whole)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    """Read a ``train`` checkpoint; clear errors for a missing or foreign file.

    Returns:
        dict with keys format, task, train, step, model, optimizer, scheduler, rng, history.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a luser-fast train checkpoint (format "
                         f"{CHECKPOINT_FORMAT!r} expected)")
    return state


def _train_config(d):
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


def _distributed():
    """(rank, world_size, local_rank, owned): under torchrun, initialises the process group
    unless the caller did (owned tells whether this call created it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local, owned


def _device(cfg, local_rank):
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    return torch.device("cuda", local_rank)


def _magnitude(x):
    return x.abs() if x.is_complex() else x


def _rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class _Batches:
    """Indices of the local batch of each global step (see the module docstring)."""

    def __init__(self, n, batch, seed, rank, world):
        from torch.utils.data import DistributedSampler

        if batch % world:
            raise ValueError(f"batch ({batch}) must be divisible by the number of processes ({world})")
        self.local = batch // world
        self.per_epoch = n // batch
        self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self._epoch, self._indices = None, None

    def __call__(self, step):
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._indices = epoch, list(iter(self.sampler))
        return torch.tensor(self._indices[pos * self.local:(pos + 1) * self.local])


def train(task: TaskConfig, cfg: TrainConfig, resume=False, log=print):
    """Train ``cfg.model`` on ``task``; see the module docstring for what is deterministic.

    Args:
        task: TaskConfig (data and operator).
        cfg: TrainConfig (model, optimisation, output).
        resume: continue from ``cfg.out/last.pt`` (its configs must match these, apart
            from out, stop_at, ckpt_every, log_every and device).
        log: callable for rank 0's lines.

    Returns:
        dict: history (list of {step, loss, psnr, seconds, and solver_iterations for
        LUSER}; loss and psnr are means over the global batch), step reached,
        checkpoint path, seconds of this call, rank, world_size and the trained model.
    """
    rank, world, local, owned = _distributed()
    device = _device(cfg, local)
    ckpt_path = os.path.join(cfg.out, "last.pt")
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        _check_same(state, task, cfg, ckpt_path)
    operator = build_operator(task)
    data = make_task(task, "train", cfg.n_train, operator=operator)
    model = build_model(cfg, operator, data.in_channels).to(device)
    x_all, y_all = data.x.to(device), data.y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    total = cfg.total_steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    history, step = [], 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, step = list(state["history"]), state["step"]
        _set_rng_state(state["rng"])
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (operator geometry, ||A||^2) are identical on every rank: no per-forward sync.
        sync = ({"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else {"broadcast_buffers": False})
        net = DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None,
                                      **sync)
    batches = _Batches(cfg.n_train, cfg.batch, cfg.seed, rank, world)
    # A resumed run never steps back: a stop_at at or before the checkpoint's step ends at it.
    end = max(step, total if cfg.stop_at is None else min(total, cfg.stop_at))
    every = cfg.log_every or max(1, total // 10)
    progress = _progress(range(step, end), total, step, rank, f"{cfg.model} {task.task}")
    t0 = time.perf_counter()

    def checkpoint(at):
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "task": task.to_dict(), "train": asdict(cfg),
                "step": at, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": _rng_state(), "history": history,
                "world_size": world})
            _write_json(os.path.join(cfg.out, "history.json"), history)

    for s in progress:
        t_step = time.perf_counter()
        idx = batches(s).to(device)
        x, y = x_all[idx], y_all[idx]
        opt.zero_grad(set_to_none=True)
        x_hat = net(y)
        loss = mse(x_hat, x)
        loss.backward()
        opt.step()
        sched.step()
        row = _step_metrics(s + 1, loss, x_hat, x, model, world)
        row["seconds"] = time.perf_counter() - t_step
        history.append(row)
        if rank == 0:
            _report(progress, row, every, total, log)
        if cfg.ckpt_every and (s + 1) % cfg.ckpt_every == 0 and s + 1 < end:
            checkpoint(s + 1)
    checkpoint(end)
    if world > 1:
        dist.barrier()
        if owned:
            dist.destroy_process_group()
    return {"history": history, "step": end, "checkpoint": ckpt_path,
            "seconds": time.perf_counter() - t0, "rank": rank, "world_size": world,
            "model": model}


def _check_same(state, task, cfg, path):
    diffs = [f"{k}: checkpoint {v!r}, now {getattr(task, k)!r}"
             for k, v in state["task"].items() if getattr(task, k) != v]
    now = asdict(cfg)
    diffs += [f"{k}: checkpoint {v!r}, now {now.get(k)!r}"
              for k, v in state["train"].items() if k not in _RESUMABLE and now.get(k) != v]
    if diffs:
        raise ValueError(f"--resume {path}: the run's settings differ from the checkpoint's "
                         f"(an exact resume needs the same ones): " + "; ".join(diffs))


def _step_metrics(step, loss, x_hat, x, model, world):
    with torch.no_grad():
        values = torch.stack([loss.detach().double(),
                              psnr_per_image(_magnitude(x_hat), _magnitude(x)).mean()]).cpu()
        if world > 1:
            dist.all_reduce(values)
            values /= world
    row = {"step": step, "loss": values[0].item(), "psnr": values[1].item()}
    infos = getattr(model, "last_solver_info", None)
    if infos:
        row["solver_iterations"] = torch.stack([i.iterations.float() for i in infos]).mean().item()
    return row


def _progress(it, total, start, rank, desc):
    from tqdm import tqdm

    show = rank == 0 and (sys.stderr.isatty() or os.environ.get("LUSER_FAST_PROGRESS") == "1")
    return tqdm(it, total=total, initial=start, desc=desc, file=sys.stderr, dynamic_ncols=True,
                disable=not show)


def _report(progress, row, every, total, log):
    post = {"loss": f"{row['loss']:.3e}", "psnr": f"{row['psnr']:.2f}"}
    if "solver_iterations" in row:
        post["iters"] = f"{row['solver_iterations']:.1f}"
    if not progress.disable:
        progress.set_postfix(post)
    elif row["step"] % every == 0 or row["step"] == total:
        log(f"step {row['step']}/{total} " + " ".join(f"{k} {v}" for k, v in post.items()))


def _write_json(path, obj):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def evaluate(checkpoint, split="test", n=16, batch=8, out=None, log=print, device="cpu"):
    """PSNR / SSIM of a trained checkpoint and of its starting point x0 on a split.

    Images are compared on magnitudes (complex tasks) against ground truth in [0, 1]
    (data range 1); the checkpoint's task config rebuilds the data and operator.

    Args:
        checkpoint: path of a ``train`` checkpoint.
        split: "train", "val" or "test".
        n: number of samples.
        batch: evaluation batch size.
        out: folder for ``eval_<split>.png`` (ground truth, x0, model, |error| of the first
            samples) and ``eval_<split>.json``; None: the checkpoint's folder.
        device: "cpu" or "cuda".

    Returns:
        dict with "x0" and "model" entries {psnr, ssim} (means), per-image lists, the
        PNG and JSON paths.
    """
    state = load_checkpoint(checkpoint)
    task = TaskConfig(**state["task"])
    cfg = _train_config(state["train"])
    operator = build_operator(task)
    data = make_task(task, split, n, operator=operator)
    model = build_model(cfg, operator, data.in_channels)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    x0s, outs = [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            y = data.y[i:i + batch].to(device)
            x0s.append(_magnitude(model.initial(y)).cpu())
            outs.append(_magnitude(model(y)).cpu())
    truth = _magnitude(data.x)
    recon = {"x0": torch.cat(x0s), "model": torch.cat(outs)}
    result = {"checkpoint": checkpoint, "split": split, "n": n, "task": task.task,
              "model_name": cfg.model, "step": state["step"]}
    for name, r in recon.items():
        p, s = psnr_per_image(r, truth), ssim_per_image(r, truth)
        result[name] = {"psnr": p.mean().item(), "ssim": s.mean().item(),
                        "psnr_per_image": p.tolist(), "ssim_per_image": s.tolist()}
    out = out or os.path.dirname(os.path.abspath(checkpoint))
    os.makedirs(out, exist_ok=True)
    result["png"] = os.path.join(out, f"eval_{split}.png")
    result["json"] = os.path.join(out, f"eval_{split}.json")
    _grid(result["png"], truth, recon, min(4, n), f"{task.task}, {cfg.model}, step {state['step']}")
    _write_json(result["json"], result)
    log(f"{task.task} {split} n={n} {cfg.model} step {state['step']}")
    log(f"{'':<6} {'PSNR':>7} {'SSIM':>7}")
    for name in recon:
        log(f"{name:<6} {result[name]['psnr']:7.2f} {result[name]['ssim']:7.4f}")
    log(f"figure: {result['png']}")
    return result


def _grid(path, truth, recon, rows, title, error=True):
    """PNG of ``rows`` samples: ground truth, each of ``recon`` ({name: [N, 1, H, W]}, in
    [0, 1]) and, with ``error``, |model - truth| (``recon["model"]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = {"ground truth": truth, **recon}
    if error:
        columns["|model - truth|"] = (recon["model"] - truth).abs()
    rows = min(rows, truth.shape[0])
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows + 0.3),
                             squeeze=False)
    for i in range(rows):
        for j, (name, images) in enumerate(columns.items()):
            ax = axes[i, j]
            ax.imshow(images[i, 0].detach().clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
