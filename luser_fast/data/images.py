"""One entry point for ground-truth images from a path: PNG/NPY folders or files, HDF5
files (fastMRI, LoDoPaB-CT or generic) and DICOM files or folders.

``read_images`` picks the reader by what the path is and hands over to the readers of
``folders``, ``h5`` and ``dicom``:

=====================================  =============================================
path                                   reader
=====================================  =============================================
folder with ``.png`` / ``.npy`` files  ``read_folder`` (each image min/max to [0, 1])
folder with DICOM files                ``read_dicom`` (robust per-slice [0, 1])
``.png`` / ``.npy`` file               ``read_image``
HDF5 file (signature or ``.h5``,       ``read_h5``: fastMRI targets, LoDoPaB-CT ground
``.hdf5``)                             truth or a generic image dataset
DICOM file ("DICM" at byte 128 or      ``read_dicom``
``.dcm``)
=====================================  =============================================

HDF5 images are rescaled to [0, 1] by their min and max (fastMRI targets are stored on
their own scale), so every source gives images in [0, 1].
"""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["read_images"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_DICOM_SUFFIXES = (".dcm", ".dicom")


def _is_hdf5(path):
    """HDF5 signature at offset 0, 512, 1024, ... (a user block may precede it)."""
    with open(path, "rb") as fh:
        offset = 0
        while True:
            fh.seek(offset)
            head = fh.read(8)
            if len(head) < 8:
                return False
            if head == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else 2 * offset


def _is_dicom(path):
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _kind(path):
    """"folder", "dicom-folder", "image", "hdf5" or "dicom" for an existing ``path``."""
    from .folders import IMAGE_SUFFIXES

    if os.path.isdir(path):
        files = [os.path.join(path, n) for n in sorted(os.listdir(path))]
        files = [f for f in files if os.path.isfile(f)]
        images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
        dicoms = [f for f in files if f not in images
                  and (f.lower().endswith(_DICOM_SUFFIXES) or _is_dicom(f))]
        if images and dicoms:
            raise ValueError(f"{path}: the folder mixes {'/'.join(IMAGE_SUFFIXES)} images and "
                             f"DICOM files; put them in separate folders")
        if images:
            return "folder"
        if dicoms:
            return "dicom-folder"
        raise ValueError(f"{path}: no {'/'.join(IMAGE_SUFFIXES)} images or DICOM files in the "
                         f"folder")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in _HDF5_SUFFIXES or _is_hdf5(path):
        return "hdf5"
    if suffix in _DICOM_SUFFIXES or _is_dicom(path):
        return "dicom"
    raise ValueError(f"{path}: not a PNG/NPY image, HDF5 or DICOM file (by suffix and "
                     f"signature)")


def _unit(image, where):
    """[H, W] rescaled to [0, 1] by its min and max, with the folder reader's checks."""
    from .folders import _to_grey01

    return torch.from_numpy(_to_grey01(image.numpy().astype(np.float64), where)).float()


def read_images(path, size=None):
    """Ground-truth images from a PNG/NPY folder or file, an HDF5 file, or a DICOM file or
    folder, picked by what ``path`` is (see the module docstring).

    Args:
        path: the folder or file.
        size: None keeps the images' own H x W (they must then all share it); an int
            resizes and centre-crops every image to size x size as ``make_task`` does with
            its ``data`` (``fit_images``).

    Returns:
        Tensor [N, 1, H, W] float32 in [0, 1] (H = W = size when given).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the path or file: an unknown kind of file, a folder with no
            images or with both PNG/NPY and DICOM files, an unreadable or non-finite image,
            images of different sizes without ``size``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no image file or folder {path!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    kind = _kind(path)
    if kind in ("dicom", "dicom-folder"):
        from .dicom import read_dicom

        images = list(read_dicom(path)[:, 0])
    elif kind == "folder":
        from .folders import read_folder

        images = read_folder(path)
    elif kind == "image":
        from .folders import read_image

        images = [read_image(path)]
    else:
        from .h5 import read_h5

        raw = read_h5(path)
        images = [_unit(img, f"{path}: image {i}") for i, img in enumerate(raw)]
    if not images:
        raise ValueError(f"{path}: no images")
    if size is not None:
        from .tasks import fit_images

        return fit_images(images, size)
    shapes = sorted({tuple(img.shape) for img in images})
    if len(shapes) > 1:
        raise ValueError(f"{path}: images of different sizes {shapes}; pass size to resize "
                         f"them to one")
    return torch.stack(images)[:, None].float()
