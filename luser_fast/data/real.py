"""Real scans never seen in training: the CT and MR slices bundled with pydicom's test files.

The embedded training data are synthetic (phantoms and natural-image patches); these few
real slices check that a trained model does not make a real scan worse than its starting
point x0. They are read with ``read_dicom`` (rescale slope / intercept, robust per-slice
min / max to [0, 1]), exactly as a user's own DICOM files would be, then resized and
centre-cropped to the task's size like ``--data`` images (``fit_images``).

==============================  ====  ===========================================
file (pydicom/data/test_files)  kind  content
==============================  ====  ===========================================
CT_small.dcm                    CT    thorax at a vertebra, 128x128 crop
693_J2KI.dcm                    CT    head, 512x512 (JPEG 2000)
J2K_pixelrep_mismatch.dcm       CT    head at the skull base, 512x512 (JPEG 2000)
MR_small.dcm                    MR    64x64 crop of an MR slice
examples_overlay.dcm            MR    abdomen at the kidneys, 300x484
==============================  ====  ===========================================

The other bundled files are not used: copies of these (other transfer syntaxes), synthetic
or secondary-capture images, segmentations (``liver_*.dcm``), RT dose grids, ultrasound and
nuclear-medicine images. ``ct`` uses the CT slices, ``mri`` and ``nufft-mri`` the MR ones,
``deblur`` all five.
"""
from __future__ import annotations

import copy
import os

import torch

from .dicom import read_dicom
from .tasks import TASKS, TaskConfig, build_operator, fit_images, measure, with_phase

__all__ = ["REAL_CT", "REAL_MR", "PHASES", "real_scan_files", "real_scans", "evaluate_real"]

REAL_CT = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")
REAL_MR = ("MR_small.dcm", "examples_overlay.dcm")
PHASES = ("smooth", "zero")
#: seed of the real MR scans' phase maps (a fixed seed, not the config's)
_REAL_PHASE_SEED = 4_000_037


def real_scan_files(task):
    """Paths of the real DICOM slices used for ``task``.

    Args:
        task: one of ``TASKS``.

    Returns:
        list of str (CT files for ct, MR for mri / nufft-mri, all for deblur).

    Raises:
        ValueError: unknown task.
        FileNotFoundError: pydicom's test files are missing a file.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    import pydicom.data

    names = {"ct": REAL_CT, "mri": REAL_MR, "nufft-mri": REAL_MR}.get(task, REAL_CT + REAL_MR)
    folder = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
    paths = [os.path.join(folder, name) for name in names]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"real scan {p!r} not found (pydicom's bundled test files)")
    return paths


def real_scans(task, size=64, phase="smooth"):
    """The real slices of ``task`` at ``size`` x ``size``: ground truth for evaluation.

    Args:
        task: one of ``TASKS``.
        size: output side (int >= 8).
        phase: MRI tasks only: "smooth" multiplies the magnitude by exp(i phi), phi a
            ``smooth_phase`` map drawn with a fixed seed (the convention of the training
            data, where phase maps are drawn the same way); "zero" gives real-valued
            complex images.

    Returns:
        Tensor [N, 1, size, size]: float32 in [0, 1] (deblur, ct) or complex64 with
        magnitude in [0, 1] (mri, nufft-mri); N = 3 (ct), 2 (mri, nufft-mri), 5 (deblur).

    Raises:
        ValueError: unknown task, bad size or phase.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    slices = [read_dicom(p)[0, 0] for p in real_scan_files(task)]
    x = fit_images(slices, size)
    if task in ("mri", "nufft-mri"):
        return with_phase(x, _REAL_PHASE_SEED) if phase == "smooth" else x.to(torch.complex64)
    return x


def evaluate_real(model, task_cfg, operator=None, phase="smooth"):
    """PSNR / SSIM of a model and of its x0 on the real scans of its task.

    Measurements are simulated from ``real_scans(task_cfg.task, task_cfg.size, phase)``
    with the task's operator and noise level (``measure``, the "test" split's noise seed,
    so the same config always gives the same y). x0 is ``model.initial(y)`` (FBP for CT,
    A^H y otherwise). Both are compared as magnitudes with data range 1
    (``luser_fast.metrics``); x0 is clamped to [0, 1] (the strongest form of the classical
    baseline, as in the demo), the model's output is not. The model runs under ``no_grad`` and in
    eval mode (its mode is restored afterwards), on the device of its parameters.

    Args:
        model: a trained ``LU`` / ``LUSER`` (anything with ``initial(y)`` and ``model(y)``).
        task_cfg: the ``TaskConfig`` the model was trained on.
        operator: the forward model to simulate y with; None takes ``model.operator``
            when the model has one, else ``build_operator(task_cfg)``.
        phase: "smooth" or "zero", the MR scans' phase (see ``real_scans``).

    Returns:
        dict {"x0": {"psnr", "ssim", "psnr_per_image", "ssim_per_image"},
        "model": {same keys}, "n": N, "files": [N file names], "phase": phase or None}
        (means as floats, per-image values as lists of floats).
    """
    from ..metrics import psnr_per_image, ssim_per_image

    if not isinstance(task_cfg, TaskConfig):
        raise TypeError(f"task_cfg must be a TaskConfig, got {type(task_cfg).__name__}")
    op = operator if operator is not None else getattr(model, "operator", None)
    if op is None:
        op = build_operator(task_cfg)
    x = real_scans(task_cfg.task, task_cfg.size, phase)
    params = next(iter(model.parameters()), None)
    device = params.device if params is not None else torch.device("cpu")
    if any(t.device.type != "cpu" for t in [*op.parameters(), *op.buffers()]):
        op = copy.deepcopy(op).cpu()   # y is simulated on the CPU (CPU noise generator)
    data = measure(task_cfg, x, "test", operator=op)
    truth = x.abs().float()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = data.y.to(device)
            x0 = model.initial(y)
            out = model(y)
    finally:
        model.train(was_training)
    result = {}
    for key, est in (("x0", x0), ("model", out)):
        est = (est.abs() if est.is_complex() else est).float().cpu()
        if key == "x0":
            est = est.clamp(0, 1)
        p = psnr_per_image(est, truth)
        s = ssim_per_image(est, truth)
        result[key] = {"psnr": p.mean().item(), "ssim": s.mean().item(),
                       "psnr_per_image": p.tolist(), "ssim_per_image": s.tolist()}
    result["n"] = x.shape[0]
    result["files"] = [os.path.basename(p) for p in real_scan_files(task_cfg.task)]
    result["phase"] = phase if task_cfg.task in ("mri", "nufft-mri") else None
    return result
