"""eval --data (PNG/NPY folders, HDF5, DICOM), read_images and reconstruct."""
import json
import os

import numpy as np
import pytest
import torch
from helpers import write_dicom

from luser_fast.cli import main
from luser_fast.data import (TaskConfig, build_operator, make_task, measure, read_h5_generic,
                             read_images)
from luser_fast.metrics import psnr_per_image
from luser_fast.train import TrainConfig, build_model, load_checkpoint, reconstruct

TINY = ["--size", "16", "--K", "2", "--channels", "4", "--batch", "2", "--n-train", "4",
        "--steps", "2", "--threads", "1", "--ckpt-every", "0", "--model", "lu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny trained LU checkpoints of ct, mri and nufft-mri: {task: path}."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for task in ("ct", "mri", "nufft-mri"):
        assert main(["train", "--task", task, "--out", str(root / task), *TINY]) == 0
        paths[task] = str(root / task / "last.pt")
    return paths


def _model(checkpoint):
    state = load_checkpoint(checkpoint)
    task = TaskConfig(**state["task"])
    op = build_operator(task)
    model = build_model(TrainConfig.from_dict(state["train"]), op, 2 if task.task != "ct" else 1)
    model.load_state_dict(state["model"])
    return task, model.eval()


def _expected_x0_psnr(checkpoint, images):
    """PSNR of x0 per image, computed here from read_images' output and measure."""
    task, model = _model(checkpoint)
    d = measure(task, images, "test", operator=model.operator)
    with torch.no_grad():
        x0 = model.initial(d.y)
    x0 = x0.abs() if x0.is_complex() else x0
    return psnr_per_image(x0, images).tolist()


def _eval(checkpoint, data, out, *extra):
    assert main(["eval", checkpoint, "--data", str(data), "--out", str(out), "--threads", "1",
                 *extra]) == 0
    stem = os.path.splitext(os.path.basename(os.path.normpath(str(data))))[0]
    with open(out / f"eval_data_{stem}.json") as fh:
        result = json.load(fh)
    assert (out / f"eval_data_{stem}.png").stat().st_size > 1000
    assert result["data"] == str(data)
    for name in ("x0", "model"):
        assert len(result[name]["psnr_per_image"]) == result["n"]
        assert all(np.isfinite(result[name]["psnr_per_image"]))
        assert 0 < result[name]["ssim"] <= 1
    return result


def _blobs(n, shape, seed=0):
    """Smooth test images (not constant) [n, H, W] in [0, 1]."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * (h, w)
        r = rng.uniform(0.2, 0.4) * min(h, w)
        img = np.clip(1.2 - np.hypot(yy - cy, xx - cx) / r, 0, 1) + 0.1 * rng.random((h, w))
        out.append(img / img.max())
    return np.stack(out)


def test_eval_data_png_folder(checkpoints, tmp_path):
    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(_blobs(3, (24, 20))):
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    (folder / "readme.txt").write_text("not an image")
    images = read_images(str(folder), size=16)
    assert images.shape == (3, 1, 16, 16) and images.dtype == torch.float32
    result = _eval(checkpoints["ct"], folder, tmp_path / "out")
    assert result["n"] == 3 and result["task"] == "ct"
    np.testing.assert_allclose(result["x0"]["psnr_per_image"],
                               _expected_x0_psnr(checkpoints["ct"], images), rtol=1e-5)
    # the task's split instead (no --data) is unchanged: its own name, 16 samples by default
    assert main(["eval", checkpoints["ct"], "--out", str(tmp_path / "out"), "--threads", "1"]) == 0
    with open(tmp_path / "out" / "eval_test.json") as fh:
        split = json.load(fh)
    assert split["n"] == 16 and split["data"] is None
    assert split["x0"]["psnr"] != result["x0"]["psnr"]


def test_eval_data_npy_folder_on_mri(checkpoints, tmp_path):
    folder = tmp_path / "npys"
    folder.mkdir()
    for i, img in enumerate(_blobs(2, (16, 16), seed=1)):
        np.save(folder / f"s{i}.npy", img * 7.0 - 3.0)          # any range: rescaled to [0, 1]
    images = read_images(str(folder), size=16)
    assert images.min() == 0 and images.max() == 1
    result = _eval(checkpoints["mri"], folder, tmp_path / "out", "--n", "1")
    assert result["n"] == 1
    np.testing.assert_allclose(result["x0"]["psnr_per_image"],
                               _expected_x0_psnr(checkpoints["mri"], images[:1]), rtol=1e-5)
    task, model = _model(checkpoints["mri"])
    d = measure(task, images, "test", operator=model.operator)
    assert d.x.dtype == torch.complex64 and d.y.dtype == torch.complex64


def _write_h5(path, layout, n=3):
    import h5py

    imgs = _blobs(n, (20, 20), seed=2).astype(np.float32)
    with h5py.File(path, "w") as fh:
        if layout == "fastmri":
            fh["kspace"] = np.fft.fft2(imgs).astype(np.complex64)
            fh["reconstruction_esc"] = imgs * 3e-4          # fastMRI's own scale
        elif layout == "lodopab":
            fh["data"] = imgs
        else:
            fh.create_group("scan")["slices"] = imgs * 1000.0
            fh["labels"] = np.arange(n)                      # 1-D: not an image dataset
    return imgs


@pytest.mark.parametrize("layout", ["fastmri", "lodopab", "generic"])
def test_eval_data_hdf5(checkpoints, tmp_path, layout):
    path = tmp_path / f"{layout}.h5"
    imgs = _write_h5(path, layout)
    images = read_images(str(path))
    assert images.shape == (3, 1, 20, 20)
    lo = imgs.min(axis=(1, 2), keepdims=True)
    hi = imgs.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(images[:, 0].numpy(), (imgs - lo) / (hi - lo), atol=1e-5)
    result = _eval(checkpoints["ct"], path, tmp_path / "out")
    assert result["n"] == 3


def test_generic_hdf5_needs_one_image_dataset(tmp_path):
    import h5py

    with h5py.File(tmp_path / "two.h5", "w") as fh:
        fh["a"] = np.zeros((2, 4, 4))
        fh["b"] = np.zeros((4, 4))
    with pytest.raises(ValueError, match=r"two.h5: .*exactly one .*found 2"):
        read_h5_generic(str(tmp_path / "two.h5"))
    with h5py.File(tmp_path / "nan.h5", "w") as fh:
        fh["images"] = np.full((1, 4, 4), np.nan)
    with pytest.raises(ValueError, match="nan.h5: dataset 'images' image 0.*non-finite"):
        read_images(str(tmp_path / "nan.h5"))


def _write_dicom(path, pixels, modality="CT"):
    """A CT (int16, rescale intercept -1024) or MR (uint16) image file."""
    if modality == "CT":
        return write_dicom(path, pixels.astype(np.int16), modality="CT", slope=1,
                           intercept=-1024)
    return write_dicom(path, pixels.astype(np.uint16), modality="MR")


def test_eval_data_dicom_file_and_folder(checkpoints, tmp_path):
    imgs = _blobs(3, (24, 24), seed=3)
    folder = tmp_path / "series"
    folder.mkdir()
    for i, img in enumerate(imgs):
        # DICOM files need no suffix: found by their "DICM" marker
        _write_dicom(folder / f"IM{i:04d}", np.round(img * 1500), "CT")
    (folder / "DICOMDIR.txt").write_text("not DICOM")
    series = read_images(str(folder))
    assert series.shape == (3, 1, 24, 24) and series.min() >= 0 and series.max() <= 1
    result = _eval(checkpoints["ct"], folder, tmp_path / "out")
    assert result["n"] == 3
    np.testing.assert_allclose(result["x0"]["psnr_per_image"],
                               _expected_x0_psnr(checkpoints["ct"], read_images(str(folder), 16)),
                               rtol=1e-5)
    mr = tmp_path / "mr.dcm"
    _write_dicom(mr, np.round(imgs[0] * 4000), "MR")
    assert read_images(str(mr)).shape == (1, 1, 24, 24)
    result = _eval(checkpoints["mri"], mr, tmp_path / "out")
    assert result["n"] == 1 and result["task"] == "mri"


def test_read_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        read_images(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no .png/.npy images or DICOM files"):
        read_images(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not a PNG/NPY image, HDF5 or DICOM"):
        read_images(str(tmp_path / "notes.txt"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", np.eye(4))
    _write_dicom(mixed / "b.dcm", np.eye(4) * 100)
    with pytest.raises(ValueError, match="mixes"):
        read_images(str(mixed))
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    np.save(sizes / "a.npy", np.eye(4))
    np.save(sizes / "b.npy", np.eye(5))
    with pytest.raises(ValueError, match="different sizes"):
        read_images(str(sizes))
    assert read_images(str(sizes), size=8).shape == (2, 1, 8, 8)
    np.save(tmp_path / "one.npy", np.eye(6))
    assert read_images(str(tmp_path / "one.npy")).shape == (1, 1, 6, 6)


def test_eval_data_bad_path(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", checkpoints["ct"], "--data", str(tmp_path / "absent")])
    assert exc.value.code == 2
    assert "absent" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["ct", "mri", "nufft-mri"])
def test_reconstruct_matches_the_model(checkpoints, tmp_path, task):
    cfg, model = _model(checkpoints[task])
    y = make_task(cfg, "test", 3, operator=model.operator).y
    with torch.no_grad():
        want = model(y)
    batched = reconstruct(checkpoints[task], y.numpy(), batch=2)
    assert batched.shape == (3, 1, 16, 16) and batched.dtype == want.dtype
    torch.testing.assert_close(batched, want, rtol=1e-5, atol=1e-6)
    one = reconstruct(checkpoints[task], y[1].numpy())                 # unbatched
    assert one.shape == (1, 16, 16)
    torch.testing.assert_close(one, want[1], rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "y.npy", y.numpy())
    assert main(["reconstruct", checkpoints[task], "--measurements", str(tmp_path / "y.npy"),
                 "--out", str(tmp_path / "x.npy"), "--png", str(tmp_path / "x.png"),
                 "--threads", "1"]) == 0
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (3, 1, 16, 16)
    assert np.iscomplexobj(x) == (task != "ct")                        # complex stays complex
    np.testing.assert_allclose(x, want.numpy(), rtol=1e-5, atol=1e-6)
    from PIL import Image

    with Image.open(tmp_path / "x.png") as img:
        assert img.size == (3 * 16, 16) and img.mode == "L"
        grey = np.asarray(img)
    mag = want.abs() if want.is_complex() else want
    np.testing.assert_allclose(grey[:, 16:32] / 255, mag[1, 0].clamp(0, 1).numpy(), atol=1 / 255)


def _bad_inputs():
    nan = np.zeros((1, 16, 16), np.complex64)
    nan[0, 3, 4] = np.nan
    return {
        "wrong shape": (np.zeros((1, 16, 15), np.complex64), "shape \\[1, 16, 15\\] does not fit"),
        "wrong batched shape": (np.zeros((2, 2, 16, 16), np.complex64), "does not fit"),
        "non-finite": (nan, "non-finite"),
        "real where complex": (np.zeros((1, 16, 16), np.float32),
                               "are complex .* got dtype float32"),
        "bool": (np.zeros((1, 16, 16), bool), "are complex .* got dtype bool"),
    }


@pytest.mark.parametrize("case", ["wrong shape", "wrong batched shape", "non-finite",
                                  "real where complex", "bool"])
def test_reconstruct_bad_measurements(checkpoints, tmp_path, capsys, case):
    arr, message = _bad_inputs()[case]
    with pytest.raises(ValueError, match=f"^--measurements \\(array\\): .*{message}"):
        reconstruct(checkpoints["mri"], arr)
    np.save(tmp_path / "y.npy", arr)
    with pytest.raises(SystemExit) as exc:
        main(["reconstruct", checkpoints["mri"], "--measurements", str(tmp_path / "y.npy"),
              "--out", str(tmp_path / "x.npy")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--measurements" in err and str(tmp_path / "y.npy") in err
    assert not (tmp_path / "x.npy").exists()


def test_reconstruct_bad_files_and_real_tasks(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="--measurements .*the ct operator's measurements are "
                                         "real"):
        reconstruct(checkpoints["ct"], np.zeros((1, 60, 23), np.complex64))
    with pytest.raises(ValueError, match="--measurements .*got dtype <U1"):
        reconstruct(checkpoints["ct"], np.array([["a"]]))
    with pytest.raises(FileNotFoundError, match="--measurements .*no such file"):
        reconstruct(checkpoints["ct"], str(tmp_path / "absent.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="--measurements .*objects.npy: not a readable .npy"):
        reconstruct(checkpoints["ct"], str(tmp_path / "objects.npy"))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="--measurements .*junk.npy: not a readable .npy"):
        reconstruct(checkpoints["ct"], str(tmp_path / "junk.npy"))
    x = reconstruct(checkpoints["ct"], np.zeros((1, 60, 23), np.float64))   # real: any float
    assert x.dtype == torch.float32 and x.shape == (1, 16, 16)
