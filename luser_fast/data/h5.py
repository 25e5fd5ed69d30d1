"""HDF5 readers for the fastMRI single-coil and LoDoPaB-CT layouts, and generic image
files (h5py).

fastMRI single-coil knee files hold ``kspace`` [slices, H_k, W_k] complex and
``reconstruction_esc`` [slices, H, W] real (the target magnitude, 320 x 320 in the
release). LoDoPaB-CT files hold one dataset ``data``: ``ground_truth_*.hdf5`` files
[n, 362, 362] images, ``observation_*.hdf5`` files [n, 1000, 513] sinograms. Files are
read slice by slice (nothing loads a whole volume unless asked). A generic file holds its
images in one 2-D [H, W] or 3-D [N, H, W] numeric dataset (at any group depth).
"""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["FastMRISlices", "LoDoPaB", "read_h5_images", "read_h5_generic", "read_h5"]


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading HDF5 needs h5py: pip install h5py") from exc
    return h5py


def _open(path):
    h5py = _h5py()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no HDF5 file {path!r}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _finite(arr, path, name, s):
    """``arr`` (one slice of dataset ``name``), or a ValueError naming the file, the dataset
    and the slice when it holds NaN or inf."""
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: dataset {name!r} slice {s} has non-finite values "
                         "(NaN or inf)")
    return arr


def _dataset(fh, path, name, ndim, layout):
    if name not in fh:
        raise ValueError(f"{path}: no dataset {name!r} (a {layout} file has "
                         f"{name!r}; this one has {sorted(fh.keys())})")
    ds = fh[name]
    if not hasattr(ds, "shape") or len(ds.shape) != ndim:
        shape = getattr(ds, "shape", "a group")
        raise ValueError(f"{path}: dataset {name!r} must be {ndim}-D in the {layout} layout, got {shape}")
    if ds.shape[0] == 0:
        raise ValueError(f"{path}: dataset {name!r} is empty")
    return ds


class FastMRISlices:
    """Slices of fastMRI single-coil files, read one at a time.

    Args:
        paths: one path or a list of ``.h5`` files.
        target: "reconstruction_esc" (default) or another target dataset name.

    ``len(r)`` is the number of slices over all files; ``r[i]`` returns a dict with
    ``kspace`` Tensor [H_k, W_k] complex64, ``target`` Tensor [H, W] float32 and ``file``,
    ``slice``.

    Raises:
        FileNotFoundError / ValueError naming the file and what is wrong with it (``r[i]``:
        non-finite values in its slice, naming the file, dataset and slice).
    """

    layout = "fastMRI single-coil"

    def __init__(self, paths, target="reconstruction_esc"):
        self.paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not self.paths:
            raise ValueError("FastMRISlices: no files given")
        self.target = target
        self._index = []
        for path in self.paths:
            with _open(path) as fh:
                k = _dataset(fh, path, "kspace", 3, self.layout)
                t = _dataset(fh, path, target, 3, self.layout)
                if not np.issubdtype(k.dtype, np.complexfloating):
                    raise ValueError(f"{path}: 'kspace' must be complex, got {k.dtype}")
                if k.shape[0] != t.shape[0]:
                    raise ValueError(f"{path}: 'kspace' has {k.shape[0]} slices but {target!r} "
                                     f"has {t.shape[0]}")
                self._index += [(path, s) for s in range(k.shape[0])]

    def __len__(self):
        return len(self._index)

    def __getitem__(self, i):
        path, s = self._index[i]
        with _open(path) as fh:
            kspace = _finite(np.asarray(fh["kspace"][s]).astype(np.complex64), path,
                             "kspace", s)
            target = _finite(np.asarray(fh[self.target][s], dtype=np.float32), path,
                             self.target, s)
        kspace = torch.from_numpy(kspace)
        target = torch.from_numpy(target)
        return {"kspace": kspace, "target": target, "file": path, "slice": s}

    def targets(self):
        """Every target slice, as a list of Tensor [H, W] float32."""
        return [self[i]["target"] for i in range(len(self))]


class LoDoPaB:
    """Images or sinograms of LoDoPaB-CT files (dataset ``data``), read one at a time.

    Args:
        paths: one path or a list of ``ground_truth_*.hdf5`` or ``observation_*.hdf5``
            files (all of one kind).

    ``len(r)`` counts samples over all files; ``r[i]`` is Tensor [H, W] float32 (an image
    for ground truth, a [angles, detectors] sinogram for observations); a sample with NaN
    or inf raises ValueError naming the file and the sample.
    """

    layout = "LoDoPaB-CT"

    def __init__(self, paths):
        self.paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not self.paths:
            raise ValueError("LoDoPaB: no files given")
        self._index = []
        for path in self.paths:
            with _open(path) as fh:
                ds = _dataset(fh, path, "data", 3, self.layout)
                if not np.issubdtype(ds.dtype, np.floating):
                    raise ValueError(f"{path}: 'data' must be real floating point, got {ds.dtype}")
                self._index += [(path, s) for s in range(ds.shape[0])]

    def __len__(self):
        return len(self._index)

    def __getitem__(self, i):
        path, s = self._index[i]
        with _open(path) as fh:
            return torch.from_numpy(_finite(np.asarray(fh["data"][s], dtype=np.float32),
                                            path, "data", s))

    def targets(self):
        """Every sample, as a list of Tensor [H, W] float32."""
        return [self[i] for i in range(len(self))]


def read_h5_images(path):
    """Ground-truth images of one HDF5 file in either layout, detected by its datasets.

    A fastMRI file gives its ``reconstruction_esc`` slices, a LoDoPaB file its ``data``
    samples (use ground-truth files).

    Returns:
        list of Tensor [H, W] float32.

    Raises:
        ValueError: the file is in neither layout.
    """
    with _open(path) as fh:
        keys = set(fh.keys())
    layout = _layout(keys)
    if layout is FastMRISlices:
        return FastMRISlices(path).targets()
    if layout is LoDoPaB:
        return LoDoPaB(path).targets()
    raise ValueError(f"{path}: neither a fastMRI file ('kspace', 'reconstruction_esc') nor a "
                     f"LoDoPaB-CT file ('data'); its datasets are {sorted(keys)}")


def _layout(keys):
    """The reader class of a file whose top-level names are ``keys``, or None."""
    if "kspace" in keys:
        return FastMRISlices
    if "data" in keys:
        return LoDoPaB
    return None


def read_h5_generic(path):
    """Images of a generic HDF5 file: its one 2-D or 3-D numeric dataset.

    The file must hold exactly one dataset (at any group depth) of shape [H, W] (one image)
    or [N, H, W] (N images) with a real or complex numeric dtype; complex images give their
    magnitude. Each image is rescaled to [0, 1] by its min and max (a constant image gives
    zeros), as the folder reader does.

    Args:
        path: HDF5 file.

    Returns:
        list of Tensor [H, W] float32 in [0, 1].

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file: not HDF5, no image dataset or several, an empty one,
            non-finite values.
    """
    from .folders import _to_grey01

    found = []
    with _open(path) as fh:
        def visit(name, obj):
            if (hasattr(obj, "shape") and len(obj.shape) in (2, 3)
                    and np.issubdtype(obj.dtype, np.number)):
                found.append(name)

        fh.visititems(visit)
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise ValueError(f"{path}: a generic HDF5 image file needs exactly one 2-D [H, W] "
                             f"or 3-D [N, H, W] numeric dataset; found {what}"
                             + (f" ({found})" if found else ""))
        ds = fh[found[0]]
        if min(ds.shape) < 1:
            raise ValueError(f"{path}: dataset {found[0]!r} is empty (shape {ds.shape})")
        count = 1 if ds.ndim == 2 else ds.shape[0]
        images = []
        for i in range(count):
            arr = np.asarray(ds[()] if ds.ndim == 2 else ds[i])
            where = f"{path}: dataset {found[0]!r}" + ("" if ds.ndim == 2 else f" image {i}")
            images.append(torch.from_numpy(_to_grey01(arr, where)).float())
    return images


def read_h5(path):
    """Ground-truth images of any HDF5 file: fastMRI or LoDoPaB-CT (``read_h5_images``,
    values as stored) or else a generic image file (``read_h5_generic``, each image in
    [0, 1]).

    Args:
        path: HDF5 file.

    Returns:
        list of Tensor [H, W] float32.
    """
    with _open(path) as fh:
        layout = _layout(set(fh.keys()))
    return read_h5_generic(path) if layout is None else read_h5_images(path)
