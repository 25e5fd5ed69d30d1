"""Training, evaluation and reconstruction with LUSER / LU on the four tasks
(``luser-fast train`` / ``eval`` / ``reconstruct``).

``fit`` is the package's one training loop: ``train`` (``luser-fast train``), the demo
(``luser_fast.demo``) and the study (``luser_fast.study``) all train through it, so the
same model, data, seed and settings give the same trained weights whichever of them runs
it. Adam, the learning rate cosine-annealed to 0 over the run, MSE loss.

One step takes a global batch of ``batch`` samples: the training split is reshuffled
every epoch by a ``DistributedSampler`` seeded with ``seed`` (drop_last), and step s
reads batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``. The batch a step
sees is therefore a function of (seed, step) alone, which is what makes resuming exact
and a run on N processes (each taking ``batch / N`` of the global batch) follow the same
trajectory as a run on one.

Checkpoints (``OUT/last.pt``) hold the model, optimiser, scheduler, step, RNG states,
the loss history and both configs; they are written to a temporary file and renamed, so
an interrupted write never leaves a truncated checkpoint (a temporary file left by a
process that died is removed when ``train`` next starts in that folder). A checkpoint is
untrusted input: it holds tensors and plain Python types only, is read with
``torch.load(..., weights_only=True)`` (no pickled code runs) and carries a SHA-256
digest of its content (``checkpoint_digest``) that ``load_checkpoint`` verifies;
``check_checkpoint`` checks its entries, its configs and its step (within its run). A loss
or weights that turn non-finite stop ``fit`` (``TrainingDivergedError``) and leave the last
good checkpoint in place. Under ``torchrun`` the model is wrapped in
``DistributedDataParallel`` (NCCL on GPUs, gloo on CPU) and only rank 0 logs and writes.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import pickle
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.distributed as dist

from .data import TaskConfig, build_operator, make_task, measure, read_images
from .errors import CheckpointError, DeviceUnavailableError, TrainingDivergedError
from .metrics import psnr_per_image, ssim_per_image
from .experiment import image_grid, magnitude, write_json
from .profile import mse

__all__ = ["TrainConfig", "build_model", "fit", "train", "evaluate", "reconstruct",
           "save_checkpoint", "load_checkpoint", "check_checkpoint", "checkpoint_digest",
           "rng_state", "set_rng_state", "CHECKPOINT_FORMAT"]

#: format 2: tensors and plain types only (weights_only loading) and a SHA-256 digest
CHECKPOINT_FORMAT = "luser_fast-train-2"
#: tasks whose images are complex (2 network channels) and whose measurements are complex
_COMPLEX_TASKS = ("mri", "nufft-mri")
#: temporary files of interrupted writes: ``save_checkpoint``'s and ``write_json``'s
_TMP_NAMES = re.compile(r"^(?:\.last\.pt|history\.json)\.(\d+)\.tmp$")
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
        depth: regularizer depth; None gives LUSER's default (4) and 5 for LU.
        share_weights: one regularizer for all K steps; None gives each model's default
            (untied for LUSER, tied for LU).
        chunk: LUSER's samples per chunk of the equilibrium solves and implicit backward
            (0: the whole batch; results do not depend on it, memory does).
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
    share_weights: bool | None = None
    chunk: int = 1
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
            self.depth = _default("depth") if self.model == "luser" else 5
        if self.share_weights is None:
            self.share_weights = _default("share_weights") if self.model == "luser" else True
        if not isinstance(self.share_weights, bool):
            raise ValueError(f"share_weights must be a bool, got {self.share_weights!r}")
        for name, low in (("iterations", 1), ("channels", 1), ("depth", 2),
                          ("solver_max_iter", 1), ("anderson_m", 1), ("chunk", 0), ("batch", 1),
                          ("steps", 1), ("n_train", 1), ("ckpt_every", 0), ("log_every", 0)):
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

    @classmethod
    def from_dict(cls, d):
        """The config a checkpoint's ``"train"`` entry (``asdict``) describes; entries that
        are not fields of this version are left out.

        Args:
            d: dict of TrainConfig fields.

        Returns:
            TrainConfig.
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch if self.epochs else self.steps


def _default(name):
    """LUSER's constructor default of argument ``name`` (one source for the defaults)."""
    from .models import LUSER

    return inspect.signature(LUSER).parameters[name].default


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
                  channels=cfg.channels, depth=cfg.depth, share_weights=cfg.share_weights)
    return LUSER(operator, iterations=cfg.iterations, in_channels=in_channels,
                 channels=cfg.channels, depth=cfg.depth, share_weights=cfg.share_weights,
                 chunk=cfg.chunk or None,
                 solver_kwargs={"tol": cfg.solver_tol, "max_iter": cfg.solver_max_iter,
                                "m": cfg.anderson_m},
                 backward=cfg.backward)


def _canonical(obj, tensors):
    """``obj`` as JSON-ready data, its tensors replaced by their index in ``tensors``
    (appended in a fixed order: dict entries sorted by typed key)."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return {"tensor": len(tensors) - 1, "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, dict):
        keyed = {f"{type(k).__name__}:{k}": v for k, v in obj.items()}
        return {"dict": [[k, _canonical(keyed[k], tensors)] for k in sorted(keyed)]}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"a checkpoint holds tensors and plain types only, got {type(obj).__name__}")


def checkpoint_digest(state):
    """SHA-256 over a checkpoint's content: a canonical JSON of its structure and plain
    values (sorted keys, tensors as dtype and shape) followed by every tensor's bytes.

    Args:
        state: checkpoint dict (its ``"sha256"`` entry, if any, is left out).

    Returns:
        str: 64 hex digits.

    Raises:
        TypeError: ``state`` holds something other than tensors, dicts, lists, tuples,
            str, int, float, bool and None.
    """
    tensors = []
    meta = _canonical({k: v for k, v in state.items() if k != "sha256"}, tensors)
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_checkpoint(path, state):
    """Write ``state`` and its digest with ``torch.save`` to a temporary file beside
    ``path``, then rename it over ``path`` (atomic on POSIX: a reader sees the old or the
    new file, whole).

    Args:
        path: checkpoint path.
        state: dict of tensors and plain types (see ``checkpoint_digest``).
    """
    state = {**state, "sha256": checkpoint_digest(state)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _refusal(exc):
    """The reason line of torch's weights-only refusal (its message also suggests turning
    the weights-only check off, which is no advice for an untrusted file)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "unsupported" in line.lower():
            return line
    for line in lines:
        if "weights_only" not in line and "torch.load" not in line:
            return line
    return type(exc).__name__


def load_checkpoint(path):
    """Read a ``train`` checkpoint safely: ``torch.load(..., weights_only=True)`` (a file
    holding any other Python object is refused, none of its code runs), then the format
    and the SHA-256 digest are checked.

    Args:
        path: checkpoint file.

    Returns:
        dict with keys format, task, train, step, model, optimizer, scheduler, rng,
        history, world_size, sha256.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ValueError): naming the file: unreadable, refused (not
            tensors and plain types only), another format, or content that does not match
            its digest.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint: refused by weights-only "
                              f"loading, which accepts tensors and plain types only "
                              f"({_refusal(exc)})") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a luser-fast train checkpoint (format "
                              f"{CHECKPOINT_FORMAT!r} expected)")
    digest = state.get("sha256")
    try:
        matches = isinstance(digest, str) and checkpoint_digest(state) == digest
    except TypeError:
        matches = False
    if not matches:
        raise CheckpointError(f"{path}: checkpoint content does not match its SHA-256 digest "
                              f"(the file is corrupted or was modified)")
    return state


def _first_line(exc):
    """``Type: first line of the message`` of an exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


#: what a ``train`` checkpoint holds, with the type of each entry
_ENTRIES = {"task": dict, "train": dict, "step": int, "model": dict, "optimizer": dict,
            "scheduler": dict, "rng": dict, "history": list, "world_size": int}


def check_checkpoint(state, path, keys=tuple(_ENTRIES)):
    """Check that a loaded checkpoint has the entries ``keys`` with their types, configs
    that build, and a step within its run (0 <= step <= its total steps, one history row
    per step).

    Args:
        state: ``load_checkpoint``'s dict.
        path: the file (for messages).
        keys: the entries the caller needs (default: all that ``train`` writes).

    Returns:
        (TaskConfig, TrainConfig) of the checkpoint.

    Raises:
        CheckpointError: naming the file and the entry.
    """
    for key in dict.fromkeys((*keys, "task", "train")):
        want = _ENTRIES[key]
        value = state.get(key)
        if key not in state or not isinstance(value, want) or (
                want is int and isinstance(value, bool)):
            got = "missing" if key not in state else f"a {type(value).__name__}"
            raise CheckpointError(f"{path}: the checkpoint's {key!r} entry is {got} "
                                  f"(a {want.__name__} expected)")
    try:
        task = TaskConfig(**state["task"])
        cfg = TrainConfig.from_dict(state["train"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's configuration is invalid "
                              f"({_first_line(exc)})") from exc
    if "step" in keys:
        step = state["step"]
        if not 0 <= step <= cfg.total_steps:
            raise CheckpointError(f"{path}: the checkpoint's step {step} is outside its run "
                                  f"(0 to {cfg.total_steps} steps)")
        if "history" in keys and len(state["history"]) != step:
            raise CheckpointError(f"{path}: the checkpoint's history has "
                                  f"{len(state['history'])} rows for step {step}")
    return task, cfg


def _remove_stale_tmp(folder):
    """Remove temporary files of interrupted checkpoint / history writes in ``folder``
    whose writing process is gone (a live process's file is left alone).

    Returns:
        list of removed paths.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        m = _TMP_NAMES.match(name)
        if m and not _pid_alive(int(m.group(1))):
            path = os.path.join(folder, name)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    return True


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
    _check_device("cuda")
    return torch.device("cuda", local_rank)


def _check_device(device):
    """DeviceUnavailableError unless ``device`` ("cpu", "cuda", "cuda:1", ...) is here."""
    device = torch.device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceUnavailableError(f"--device {device}: no CUDA device is available "
                                         "(torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(f"--device {device}: this machine has {count} CUDA "
                                         "device(s)")
    elif device.type != "cpu":
        raise DeviceUnavailableError(f"--device {device}: only cpu and cuda are supported")


def rng_state():
    """torch, numpy and Python RNG states as tensors and plain types (what a checkpoint
    stores as ``"rng"``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "cached_gaussian": cached},
            "python": [version, list(internal), gauss]}


def set_rng_state(state):
    """Restore the RNG states ``rng_state`` returned (inverse of ``rng_state``)."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


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


def fit(model, y, x, steps, batch, lr, seed, *, checkpoint=None, meta=None, resume=None,
        ckpt_every=0, stop_at=None, desc=None, log=None, log_every=0):
    """Train ``model`` on (y, x): the package's one training loop (``train``, i.e.
    ``luser-fast train``, the demo and the study all train through it).

    Adam with learning rate ``lr`` cosine-annealed to 0 over ``steps``
    (``CosineAnnealingLR``), MSE loss, a global batch of ``batch`` samples per step whose
    indices depend on (seed, step) alone (see the module docstring), so every model trained
    with the same seed on the same data sees the same batches, and a resumed run continues
    exactly. Under ``torch.distributed`` (a process group the caller initialised, e.g.
    ``train`` under torchrun) the model is wrapped in ``DistributedDataParallel``, each
    process takes ``batch / world_size`` samples of each global batch, and only rank 0
    logs and writes.

    Args:
        model: module called as ``model(y)``; trained in place on the device of its
            parameters (``y`` and ``x`` are moved there).
        y: measurements [N, ...] of the training set.
        x: ground truth [N, ...] of the training set.
        steps: length of the run and of the cosine schedule (>= 1).
        batch: global batch size (1 <= batch <= N).
        lr: Adam's initial learning rate (> 0).
        seed: seed of the batch order.
        checkpoint: path of the checkpoint written every ``ckpt_every`` steps and at the
            end (``save_checkpoint``; ``history.json`` beside it), or None for none.
        meta: entries added to every checkpoint (e.g. the format and the configs).
        resume: a checkpoint (``load_checkpoint``) to continue from: model, optimiser,
            scheduler, RNG states, history and step.
        ckpt_every: checkpoint period in steps (0: only at the end).
        stop_at: stop after this step (with a checkpoint); None: at ``steps``.
        desc: label of the progress bar (shown on a terminal or with
            ``LUSER_FAST_PROGRESS=1``).
        log: callable for progress lines when the bar is not shown (None: no lines).
        log_every: period of those lines in steps (0: ten per run).

    Returns:
        dict: history (list of {step, loss, psnr, seconds, and solver_iterations for
        LUSER}, from step 1, resumed steps included; loss and psnr are means over the
        global batch), step reached, seconds and sec_per_step of this call's steps,
        checkpoint (path or None), rank, world_size and the trained model.

    Raises:
        TrainingDivergedError: the loss (checked every step, before the optimiser step)
            or the weights (checked before every checkpoint) turned non-finite; the last
            checkpoint written stays as it was, and none with non-finite weights is written.
        CheckpointError: ``resume`` holds a step outside 0..steps, a history that is not
            one row per step, or entries that do not fit the model and optimiser.
        OSError: a checkpoint could not be written (e.g. the disk is full), naming it; the
            previous checkpoint is kept.
    """
    for name, value in (("steps", steps), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if batch > x.shape[0]:
        raise ValueError(f"batch ({batch}) is larger than the training set ({x.shape[0]})")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history, step = [], 0
    if resume is not None:
        history, step = _resume(resume, model, opt, sched, steps, checkpoint)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (operator geometry, ||A||^2) are identical on every rank: no per-forward sync.
        sync = ({"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else {"broadcast_buffers": False})
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, **sync)
    batches = _Batches(x.shape[0], batch, seed, rank, world)
    # A resumed run never steps back: a stop_at at or before the checkpoint's step ends at it.
    start = step
    end = max(step, steps if stop_at is None else min(steps, stop_at))
    every = log_every or max(1, steps // 10)
    progress = _progress(range(step, end), steps, step, rank, desc)
    t0 = time.perf_counter()
    # the last checkpoint written (or resumed from), kept when the run diverges
    good = {"step": step if resume is not None else None}

    def diverged(what, at):
        if checkpoint is None:
            kept = "no checkpoint is written"
        elif good["step"] is None:
            kept = f"no checkpoint was written to {checkpoint}"
        else:
            kept = f"the last good checkpoint, step {good['step']}, is kept in {checkpoint}"
        return TrainingDivergedError(
            f"training stopped at step {at}: {what} (non-finite data, a learning rate too "
            f"large for this model, lr={lr:g}?); {kept}")

    def save(at):
        # every rank checks (the weights are the same on all), so all stop together
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise diverged("the weights are not finite", at)
        if rank == 0 and checkpoint is not None:
            target = checkpoint
            try:
                save_checkpoint(checkpoint, {
                    **(meta or {}), "step": at, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng": rng_state(), "history": history, "world_size": world})
                good["step"] = at
                target = os.path.join(os.path.dirname(os.path.abspath(checkpoint)),
                                      "history.json")
                write_json(target, history)
            except OSError as exc:
                kept = ("" if good["step"] is None
                        else f"; the checkpoint of step {good['step']} is in {checkpoint}")
                raise OSError(exc.errno, f"cannot write {target} at step {at}: "
                                         f"{exc.strerror or exc}{kept}") from exc
        good["step"] = at

    for s in progress:
        t_step = time.perf_counter()
        idx = batches(s).to(device)
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        x_hat = net(yb)
        loss = mse(x_hat, xb)
        loss.backward()
        # the loss averaged over ranks, so every rank stops at the same step
        row = _step_metrics(s + 1, loss, x_hat, xb, model, world)
        if not math.isfinite(row["loss"]):
            raise diverged(f"the training loss is {row['loss']}", s + 1)
        opt.step()
        sched.step()
        row["seconds"] = time.perf_counter() - t_step
        history.append(row)
        if rank == 0 and log is not None:
            _report(progress, row, every, steps, log)
        if ckpt_every and (s + 1) % ckpt_every == 0 and s + 1 < end:
            save(s + 1)
    seconds = time.perf_counter() - t0
    save(end)
    if world > 1:
        dist.barrier()                 # every rank returns once rank 0 has written
    return {"history": history, "step": end, "seconds": seconds,
            "sec_per_step": seconds / max(1, end - start), "checkpoint": checkpoint,
            "rank": rank, "world_size": world, "model": model}


def _resume(state, model, opt, sched, steps, checkpoint):
    """Restore ``fit``'s state from a checkpoint; (history, step). CheckpointError when the
    step is outside the run or the entries do not fit this model and optimiser."""
    where = checkpoint or "the resumed checkpoint"
    step, history = state.get("step"), state.get("history")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= steps:
        raise CheckpointError(f"{where}: the checkpoint's step {step!r} is outside this run "
                              f"(0 to {steps} steps)")
    if not isinstance(history, list) or len(history) != step:
        raise CheckpointError(f"{where}: the checkpoint's history does not hold one row per "
                              f"step up to {step}")
    part = "model"
    try:
        model.load_state_dict(state["model"])
        part = "optimizer"
        opt.load_state_dict(state["optimizer"])
        part = "scheduler"
        sched.load_state_dict(state["scheduler"])
        part = "rng"
        set_rng_state(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{where}: the checkpoint's {part!r} entry does not fit this "
                              f"run's model and optimiser ({_first_line(exc)})") from exc
    return list(history), step


def train(task: TaskConfig, cfg: TrainConfig, resume=False, log=print):
    """Train ``cfg.model`` on ``task`` through ``fit``, with checkpoints in ``cfg.out``;
    see the module docstring for what is deterministic.

    Args:
        task: TaskConfig (data and operator).
        cfg: TrainConfig (model, optimisation, output).
        resume: continue from ``cfg.out/last.pt`` (its configs must match these, apart
            from out, stop_at, ckpt_every, log_every and device).
        log: callable for rank 0's lines.

    Returns:
        ``fit``'s dict: history (list of {step, loss, psnr, seconds, and
        solver_iterations for LUSER}; loss and psnr are means over the global batch), step
        reached, checkpoint path, seconds of this call, rank, world_size and the trained
        model.
    """
    rank, world, local, owned = _distributed()
    try:
        device = _device(cfg, local)
        ckpt_path = os.path.join(cfg.out, "last.pt")
        if rank == 0:
            _remove_stale_tmp(cfg.out)
        state = None
        if resume:
            state = load_checkpoint(ckpt_path)
            check_checkpoint(state, ckpt_path)
            _check_same(state, task, cfg, ckpt_path)
        operator = build_operator(task)
        data = make_task(task, "train", cfg.n_train, operator=operator)
        model = build_model(cfg, operator, data.in_channels).to(device)
        meta = {"format": CHECKPOINT_FORMAT, "task": task.to_dict(), "train": asdict(cfg)}
        return fit(model, data.y, data.x, cfg.total_steps, cfg.batch, cfg.lr, cfg.seed,
                   checkpoint=ckpt_path, meta=meta, resume=state, ckpt_every=cfg.ckpt_every,
                   stop_at=cfg.stop_at, desc=f"{cfg.model} {task.task}", log=log,
                   log_every=cfg.log_every)
    finally:
        if owned:
            dist.destroy_process_group()


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
                              psnr_per_image(magnitude(x_hat), magnitude(x)).mean()]).cpu()
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


def _load_model(checkpoint, device):
    """(state, task, cfg, model) of a checkpoint, the model on ``device`` in eval mode."""
    _check_device(device)
    state = load_checkpoint(checkpoint)
    task, cfg = check_checkpoint(state, checkpoint, ("task", "train", "step", "model"))
    operator = build_operator(task)
    model = build_model(cfg, operator, 2 if task.task in _COMPLEX_TASKS else 1)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{checkpoint}: the checkpoint's weights do not fit the model "
                              f"its configuration describes ({cfg.model}, depth {cfg.depth}, "
                              f"{cfg.channels} channels; {_first_line(exc)})") from exc
    model.to(device).eval()
    return state, task, cfg, model


def evaluate(checkpoint, split="test", n=None, batch=8, out=None, log=print, device="cpu",
             data=None):
    """PSNR / SSIM of a trained checkpoint and of its starting point x0 on a split of its
    task or on other ground-truth images.

    Images are compared on magnitudes (complex tasks) against ground truth in [0, 1]
    (data range 1); the checkpoint's task config rebuilds the operator, and the data:

    * without ``data``: the task's ``split`` (``make_task``);
    * with ``data``: its images (``luser_fast.data.read_images``: PNG/NPY folder or file,
      HDF5 file, DICOM file or folder), each resized and centre-cropped whole to the task's
      size (also for deblur, whose training patches are random crops), made complex for the
      MRI tasks as ``make_task`` makes a ``data`` folder's images (zero phase), and
      measured with the checkpoint's operator and noise level, the noise drawn from the
      task's seed and ``split`` (``luser_fast.data.measure``).

    Args:
        checkpoint: path of a ``train`` checkpoint.
        split: "train", "val" or "test".
        n: number of samples; None: 16 from the split, or every image of ``data``.
        batch: evaluation batch size.
        out: folder for the PNG (ground truth, x0, model, |error| of the first samples) and
            the JSON, named ``eval_<split>`` or, with ``data``, ``eval_data_<name of data>``;
            None: the checkpoint's folder.
        log: callable for the report lines.
        device: "cpu" or "cuda".
        data: path of ground-truth images, or None.

    Returns:
        dict with "x0" and "model" entries {psnr, ssim} (means), per-image lists, the
        PNG and JSON paths.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    state, task, cfg, model = _load_model(checkpoint, device)
    if data is None:
        n = 16 if n is None else n
        samples = make_task(task, split, n, operator=model.operator)
        name = split
    else:
        images = read_images(data, size=task.size)[:n]
        samples = measure(task, images, split, operator=model.operator)
        n = len(images)
        stem = os.path.splitext(os.path.basename(os.path.normpath(data)))[0]
        name = "data_" + (re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "images")
    x0s, outs = [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            y = samples.y[i:i + batch].to(device)
            x0s.append(magnitude(model.initial(y)).cpu())
            outs.append(magnitude(model(y)).cpu())
    truth = magnitude(samples.x)
    recon = {"x0": torch.cat(x0s), "model": torch.cat(outs)}
    result = {"checkpoint": checkpoint, "split": split, "data": data, "n": n, "task": task.task,
              "model_name": cfg.model, "step": state["step"]}
    for key, r in recon.items():
        p, s = psnr_per_image(r, truth), ssim_per_image(r, truth)
        result[key] = {"psnr": p.mean().item(), "ssim": s.mean().item(),
                       "psnr_per_image": p.tolist(), "ssim_per_image": s.tolist()}
    out = out or os.path.dirname(os.path.abspath(checkpoint))
    os.makedirs(out, exist_ok=True)
    result["png"] = os.path.join(out, f"eval_{name}.png")
    result["json"] = os.path.join(out, f"eval_{name}.json")
    image_grid(result["png"], truth, recon, min(4, n), f"{task.task}, {cfg.model}, step {state['step']}")
    write_json(result["json"], result)
    log(f"{task.task} {split if data is None else data} n={n} {cfg.model} step {state['step']}")
    log(f"{'':<6} {'PSNR':>7} {'SSIM':>7}")
    for key in recon:
        log(f"{key:<6} {result[key]['psnr']:7.2f} {result[key]['ssim']:7.4f}")
    log(f"figure: {result['png']}")
    return result


def _measurements(measurements, shape, complex_, task):
    """Validated measurements as a batch, and whether they came unbatched.

    Args:
        measurements: path of a ``.npy`` file, or an array / tensor.
        shape: the operator's measurement shape for one image (no batch dim).
        complex_: whether the operator's measurements are complex.
        task: task name (for messages).

    Returns:
        (Tensor [B, *shape] complex64 or float32, unbatched: bool).
    """
    if isinstance(measurements, (str, os.PathLike)):
        src = os.fspath(measurements)
        if not os.path.isfile(src):
            raise FileNotFoundError(f"--measurements {src!r}: no such file")
        try:
            arr = np.load(src, allow_pickle=False)
        except Exception as exc:
            raise ValueError(f"--measurements {src}: not a readable .npy array "
                             f"({type(exc).__name__}: {exc})") from exc
    elif isinstance(measurements, torch.Tensor):
        src, arr = "(tensor)", measurements.detach().cpu().numpy()
    else:
        src, arr = "(array)", np.asarray(measurements)
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"--measurements {src}: expected one array, got {type(arr).__name__}")
    want = f"{'complex' if complex_ else 'real'} {list(shape)} or [B, {', '.join(map(str, shape))}]"
    if complex_ and not np.iscomplexobj(arr):
        raise ValueError(f"--measurements {src}: the {task} operator's measurements are complex "
                         f"({want}), got dtype {arr.dtype}")
    if not complex_ and (np.iscomplexobj(arr) or arr.dtype == bool
                         or not np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"--measurements {src}: the {task} operator's measurements are real "
                         f"numbers ({want}), got dtype {arr.dtype}")
    if tuple(arr.shape) == tuple(shape):
        arr, unbatched = arr[None], True
    elif arr.ndim == len(shape) + 1 and tuple(arr.shape[1:]) == tuple(shape) and arr.shape[0] > 0:
        unbatched = False
    else:
        raise ValueError(f"--measurements {src}: shape {list(arr.shape)} does not fit the {task} "
                         f"operator's measurements ({want})")
    if not np.isfinite(arr).all():
        raise ValueError(f"--measurements {src}: has non-finite values (NaN or inf)")
    dtype = torch.complex64 if complex_ else torch.float32
    return torch.from_numpy(np.ascontiguousarray(arr)).to(dtype), unbatched


def reconstruct(checkpoint, measurements, out=None, png=None, batch=8, device="cpu"):
    """Reconstruct a user's own measurements with a trained checkpoint and its operator.

    The measurements must be on the scale the model was trained on: ``A x`` (plus noise)
    for ground truth x in [0, 1], with the operator the checkpoint's task config builds.

    Args:
        checkpoint: path of a ``train`` checkpoint.
        measurements: path of a ``.npy`` file, or an array / tensor: one measurement shaped
            like the operator's output for one image (e.g. [1, A, D] for CT, [1, H, W] for
            Cartesian MRI, [1, M] for NUFFT; complex for the MRI tasks, real otherwise) or a
            batch [B, ...] of them.
        out: write the reconstruction here as ``.npy`` (None: not written).
        png: write the magnitude of the reconstruction(s) here as a grey PNG, images side by
            side, clipped to [0, 1] (None: not written).
        batch: reconstruction batch size.
        device: "cpu" or "cuda".

    Returns:
        Tensor [1, H, W] for one measurement or [B, 1, H, W] for a batch: complex64 for
        the MRI tasks, float32 otherwise.

    Raises:
        FileNotFoundError: no checkpoint or measurements file.
        ValueError: naming ``--measurements``: unreadable, wrong dtype (real where complex
            is expected or the reverse), wrong shape, non-finite values; or a bad checkpoint.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    state, task, cfg, model = _load_model(checkpoint, device)
    complex_ = task.task in _COMPLEX_TASKS
    probe = torch.zeros(1, 1, task.size, task.size,
                        dtype=torch.complex64 if complex_ else torch.float32, device=device)
    with torch.no_grad():
        shape = tuple(model.operator(probe).shape[1:])
    y, unbatched = _measurements(measurements, shape, complex_, task.task)
    with torch.no_grad():
        x = torch.cat([model(y[i:i + batch].to(device)).cpu() for i in range(0, len(y), batch)])
    x = x[0] if unbatched else x
    if out is not None:
        folder = os.path.dirname(os.path.abspath(out))
        os.makedirs(folder, exist_ok=True)
        with open(out, "wb") as fh:
            np.save(fh, x.numpy())
    if png is not None:
        _image_png(png, magnitude(x.reshape(-1, 1, *x.shape[-2:])))
    return x


def _image_png(path, images):
    """8-bit grey PNG of ``images`` [N, 1, H, W] (real, clipped to [0, 1]) side by side."""
    from PIL import Image

    row = torch.cat(list(images[:, 0].detach().clamp(0, 1)), dim=1)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray((row.numpy() * 255).round().astype(np.uint8)).save(path, format="PNG")
