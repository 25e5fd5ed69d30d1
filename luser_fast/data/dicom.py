"""DICOM reader: a DICOM file or a folder of them as grey slices in [0, 1] (pydicom)."""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["read_dicom", "ROBUST_PERCENTILES"]

#: each slice is clipped to these percentiles of its values, then mapped to [0, 1]
ROBUST_PERCENTILES = (0.5, 99.5)
_LUMA = np.array([0.2125, 0.7154, 0.0721])   # ITU-R 709, as folders.read_image


def _rescale_of(ds, frame):
    """(slope, intercept) of a frame: per-frame functional group, shared group, top level."""
    for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        seq = ds.get(seq_name)
        if not seq:
            continue
        item = seq[frame] if seq_name.startswith("PerFrame") and frame < len(seq) else seq[0]
        pvt = item.get("PixelValueTransformationSequence")
        if pvt and "RescaleSlope" in pvt[0]:
            return float(pvt[0].RescaleSlope), float(pvt[0].get("RescaleIntercept", 0.0))
    return float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0)


def _normalise(arr):
    lo, hi = np.percentile(arr, ROBUST_PERCENTILES)
    if not hi > lo:
        lo, hi = arr.min(), arr.max()
    if not hi > lo:
        return np.zeros_like(arr)
    if hi / 2 - lo / 2 > np.finfo(np.float64).max / 2:   # a range beyond float64
        arr, lo, hi = arr / 2, lo / 2, hi / 2
    return (np.clip(arr, lo, hi) - lo) / (hi - lo)


def _slices(path):
    """The slices of one DICOM file, float64 [F, H, W] after rescale, before normalising."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise ValueError(f"{path}: not a DICOM file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read the DICOM file ({exc})") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError(f"{path}: DICOM file has no pixel data")
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:   # pydicom raises many types for undecodable pixel data
        raise ValueError(f"{path}: cannot decode the pixel data "
                         f"({type(exc).__name__}: {exc})") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = np.asarray(apply_color_lut(arr, ds))
        samples = 3
    colour = samples > 1
    if arr.ndim != 2 + colour + (frames > 1):
        raise ValueError(f"{path}: unexpected pixel array shape {arr.shape} "
                         f"({frames} frames, {samples} samples per pixel)")
    if colour:
        # pydicom converts YCbCr to RGB on decoding; RGB goes to grey by luma
        arr = arr[..., :3].astype(np.float64) @ _LUMA
    elif "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if frames == 1:
        arr = arr[None]
    arr = arr.astype(np.float64)
    if not colour and "ModalityLUTSequence" not in ds:
        for i in range(arr.shape[0]):
            slope, intercept = _rescale_of(ds, i)
            arr[i] = arr[i] * slope + intercept
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: pixel data has non-finite values (after rescale)")
    out = np.stack([_normalise(a) for a in arr])
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out


def _is_dicom(path):
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_dicom(path):
    """A DICOM file, or every DICOM file of a folder, as grey slices in [0, 1].

    Pixel values get the modality transform (RescaleSlope / RescaleIntercept, per frame for
    enhanced multi-frame files, or a Modality LUT), so CT slices are in Hounsfield units
    before normalising. Multi-frame files give one slice per frame. Colour images (RGB,
    YCbCr, palette) are converted to grey by ITU-R 709 luma. Each slice is then normalised
    on its own with a robust min / max: clipped to its 0.5th and 99.5th percentiles
    (``ROBUST_PERCENTILES``) and mapped linearly to [0, 1] (its plain min / max when those
    percentiles coincide; a constant slice gives zeros). MONOCHROME1 slices are inverted
    so that bright means high intensity in every slice.

    In a folder, files are read in sorted name order (not subfolders); files that are not
    DICOM (no "DICM" marker at byte 128 of the file) are skipped.

    Args:
        path: a DICOM file or a folder of DICOM files.

    Returns:
        Tensor [N, 1, H, W] float32 in [0, 1], N the total number of slices / frames.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file: not DICOM (a single file), no pixel data, undecodable
            pixel data, non-finite values, slices of different H x W; or a folder with no
            DICOM file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
        files = [os.path.join(path, n) for n in names if _is_dicom(os.path.join(path, n))]
        if not files:
            raise ValueError(f"{path}: no DICOM files in the folder")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"path {path!r}: no such DICOM file or folder")
    slices, first = [], None
    for f in files:
        arr = _slices(f)
        if first is None:
            first = (f, arr.shape[1:])
        elif arr.shape[1:] != first[1]:
            raise ValueError(f"{f}: slices are {arr.shape[1]}x{arr.shape[2]}, but {first[0]} "
                             f"has {first[1][0]}x{first[1][1]}; all slices must share H x W")
        slices.append(arr)
    return torch.from_numpy(np.concatenate(slices)[:, None]).float()
