"""Measuring one trained model: what ``luser-fast demo`` and ``luser-fast study`` share
(both train through ``luser_fast.train.fit``, the loop ``luser-fast train`` uses).

* ``quality``: PSNR / SSIM of a reconstruction on magnitudes, data range 1.
* ``step_memory``: saved and peak bytes of one training step (``training_memory``).
* ``solver_stats``: LUSER's mean solver iterations and convergence rate of its last forward.
* ``memory_ratios``: one model's saved and peak bytes over another's.
* ``magnitude``, ``write_json``, ``image_grid``: |x| of complex images, atomic JSON writes,
  PNG grids of reconstructions.
"""
from __future__ import annotations

import json
import os

import torch

from .metrics import psnr, ssim
from .profile import training_memory

__all__ = ["quality", "step_memory", "solver_stats", "memory_ratios", "magnitude",
           "write_json", "image_grid"]


def magnitude(x):
    """|x| of complex images; real images unchanged.

    Args:
        x: tensor, real or complex.

    Returns:
        Real tensor shaped like ``x``.
    """
    return x.abs() if x.is_complex() else x


def write_json(path, obj):
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file, then ``os.replace``),
    so a reader or an interrupted writer never leaves a half-written file.

    Args:
        path: destination file; its folder must exist.
        obj: JSON-serialisable object.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def quality(x_hat, truth):
    """PSNR and SSIM of a reconstruction, mean over the batch.

    Args:
        x_hat: reconstructions [B, C, H, W], real or complex (compared on magnitudes).
        truth: real ground truth [B, C, H, W] in [0, 1] (magnitudes of complex images).

    Returns:
        dict: psnr (dB), ssim (floats; data range 1).
    """
    x_hat = magnitude(x_hat)
    return {"psnr": psnr(x_hat, truth), "ssim": ssim(x_hat, truth)}


def step_memory(model, y, x):
    """Saved and peak bytes of one training step (forward + MSE + backward) of ``model`` on
    the batch (y, x), measured by ``luser_fast.profile.training_memory``; the gradients it
    leaves are cleared.

    Args:
        model: module called as ``model(y)``.
        y: measurements of one batch.
        x: ground truth of that batch.

    Returns:
        dict: saved_bytes, peak_bytes (ints).
    """
    r = training_memory(model, y, x)
    model.zero_grad(set_to_none=True)
    return {"saved_bytes": r.saved_bytes, "peak_bytes": r.peak_bytes}


def solver_stats(model):
    """Solver iterations and convergence of the model's last forward, for models with an
    equilibrium solver (``last_solver_info``: LUSER); mean over samples and unrolled steps.

    Args:
        model: a model; one without ``last_solver_info`` (LU) has no solver figures.

    Returns:
        dict: solver_iterations (mean iterations) and solver_converged (fraction of solves
        that met the tolerance), or {} for a model without a solver or before a forward.
    """
    infos = getattr(model, "last_solver_info", None)
    if not infos:
        return {}
    out = {}
    for key, attr in (("solver_iterations", "iterations"), ("solver_converged", "converged")):
        values = [torch.as_tensor(getattr(info, attr)).float().reshape(-1) for info in infos]
        out[key] = torch.cat(values).mean().item()
    return out


def memory_ratios(num, den):
    """Peak and saved bytes of one step of one model over another's.

    Args:
        num: dict with peak_bytes and saved_bytes (e.g. LU's ``step_memory``).
        den: the same for the other model (e.g. LUSER's).

    Returns:
        dict: peak_ratio, saved_ratio (num / den).
    """
    return {"peak_ratio": num["peak_bytes"] / den["peak_bytes"],
            "saved_ratio": num["saved_bytes"] / den["saved_bytes"]}


def image_grid(path, truth, recon, rows, title, error=True):
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
