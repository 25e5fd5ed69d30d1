"""Image-folder reader: every ``.png`` and ``.npy`` image of a folder, as grey float images."""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["read_image", "read_folder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".npy")


def _to_grey01(arr, path):
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: image has non-numeric dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ValueError(f"{path}: expected a 2-D grey image or an RGB(A) image [H, W, 3|4], "
                         f"got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: image has non-finite values")
    lo, hi = arr.min(), arr.max()
    if hi / 2 - lo / 2 > np.finfo(np.float64).max / 2:   # a range beyond float64
        arr, lo, hi = arr / 2, lo / 2, hi / 2
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def read_image(path):
    """One image file (PNG or NPY) as a grey image rescaled to [0, 1].

    RGB(A) images are converted to grey (ITU-R 709 luma); NPY arrays may be [H, W] or
    [H, W, 3|4], any real or complex dtype (complex gives the magnitude).

    Returns:
        Tensor [H, W] float32.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown suffix, unreadable file or an array that is not an image.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image file {path!r}")
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as img:
                arr = np.asarray(img.convert("I") if img.mode in ("I;16", "I;16B") else img)
        else:
            raise ValueError(f"{path}: unsupported image type {suffix!r} (use {IMAGE_SUFFIXES})")
    except ValueError as exc:
        if str(exc).startswith(path):
            raise
        raise ValueError(f"{path}: cannot read the image ({exc})") from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the image ({exc})") from exc
    return torch.from_numpy(_to_grey01(arr, path)).float()


def read_folder(folder):
    """Every PNG and NPY image directly in ``folder``, sorted by file name.

    Returns:
        list of Tensor [H_i, W_i] float32 in [0, 1] (sizes may differ).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder holds no image, or an image is unreadable.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no image folder {folder!r}")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise ValueError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images in the folder")
    return [read_image(os.path.join(folder, n)) for n in names]
