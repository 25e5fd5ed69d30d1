"""Data: the four tasks' datasets, the image-folder reader and the HDF5 readers."""
import math

import h5py
import numpy as np
import pytest
import torch
from helpers import write_dicom as _dicom

from luser_fast.data import (TASKS, FastMRISlices, LoDoPaB, TaskConfig, cartesian_mask,
                             ground_truth, make_task, radial_trajectory, read_dicom,
                             read_folder, read_h5_images, read_image, smooth_fields,
                             smooth_phase, textured_ellipses, with_phase)
from luser_fast.data import tasks as tasks_module


@pytest.mark.parametrize("task", TASKS)
def test_task_shapes_and_determinism(task):
    cfg = TaskConfig(task, size=16)
    a = make_task(cfg, "train", 3)
    b = make_task(TaskConfig(task, size=16), "train", 3)
    assert a.x.shape == (3, 1, 16, 16)
    assert a.x.is_complex() == (task in ("mri", "nufft-mri"))
    assert a.in_channels == (2 if a.complex else 1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert torch.isfinite(a.y.abs()).all()
    assert a.x.abs().min() >= 0 and a.x.abs().max() <= 1
    with torch.no_grad():
        clean = a.operator(a.x)
    assert clean.shape == a.y.shape
    rel = (a.y - clean).abs().square().mean().sqrt() / clean.abs().mean()
    assert rel == pytest.approx(cfg.noise, rel=0.3)
    test = make_task(cfg, "test", 3)
    assert not torch.equal(test.x, a.x)


def test_ct_geometry_and_noise_free():
    d = make_task(TaskConfig("ct", size=16, noise=0.0, angles=60), "val", 2)
    assert d.y.shape[-2] == 60
    assert torch.equal(d.y, d.operator(d.x))


def test_cartesian_mask_rate():
    m = cartesian_mask(64, acceleration=4, center_fraction=0.08, seed=3)
    assert m.shape == (64, 64)
    assert m[0].sum().item() == 16 and torch.equal(m, m[:1].expand(64, 64))
    assert m[:, 30:34].all()
    assert torch.equal(m, cartesian_mask(64, 4, 0.08, seed=3))


def test_radial_trajectory():
    ktraj, density = radial_trajectory(16, acceleration=4)
    spokes = math.ceil(math.pi / 2 * 16 / 4)
    assert ktraj.shape == (spokes * 16, 2) and density.shape == (spokes * 16,)
    assert ktraj.abs().max() <= math.pi and (density > 0).all()


@pytest.mark.parametrize("kwargs, word", [
    ({"task": "pet"}, "task"), ({"task": "ct", "size": 4}, "size"),
    ({"task": "ct", "noise": -1.0}, "noise"), ({"task": "ct", "angles": 0}, "angles"),
    ({"task": "mri", "acceleration": 0.5}, "acceleration")])
def test_task_config_bad_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        TaskConfig(**kwargs)


def test_task_config_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        TaskConfig("ct", data=str(tmp_path / "absent"))


def _write_images(folder, n):
    from skimage.io import imsave

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.random((20 + i, 24))
        if i % 2:
            np.save(folder / f"img{i}.npy", img)
        else:
            imsave(folder / f"img{i}.png", (img * 255).astype(np.uint8), check_contrast=False)
    (folder / "notes.txt").write_text("ignored")


def test_folder_reader(tmp_path):
    _write_images(tmp_path / "imgs", 4)
    images = read_folder(str(tmp_path / "imgs"))
    assert [tuple(i.shape) for i in images] == [(20, 24), (21, 24), (22, 24), (23, 24)]
    assert all(i.min() == 0 and i.max() == 1 for i in images)
    rgb = np.random.default_rng(1).random((8, 9, 3))
    np.save(tmp_path / "rgb.npy", rgb)
    assert read_image(str(tmp_path / "rgb.npy")).shape == (8, 9)


def test_folder_reader_bad_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png/.npy images"):
        read_folder(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError):
        read_folder(str(tmp_path / "absent"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: cannot read"):
        read_image(str(tmp_path / "bad.png"))
    np.save(tmp_path / "vol.npy", np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="2-D grey image"):
        read_image(str(tmp_path / "vol.npy"))
    np.save(tmp_path / "nan.npy", np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        read_image(str(tmp_path / "nan.npy"))


def test_task_from_folder(tmp_path):
    _write_images(tmp_path / "imgs", 4)
    for task in ("deblur", "ct"):
        d = make_task(TaskConfig(task, size=16, data=str(tmp_path / "imgs")), "train", 5)
        assert d.x.shape == (5, 1, 16, 16) and 0 <= d.x.min() and d.x.max() <= 1


def _fastmri(path, slices=3, kshape=(10, 8), tshape=(6, 6)):
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((slices, *kshape)) + 1j * rng.standard_normal((slices, *kshape)))
    with h5py.File(path, "w") as fh:
        fh["kspace"] = k.astype(np.complex64)
        fh["reconstruction_esc"] = rng.random((slices, *tshape)).astype(np.float32)
    return k


def test_fastmri_reader(tmp_path):
    k = _fastmri(tmp_path / "a.h5")
    _fastmri(tmp_path / "b.h5", slices=2)
    r = FastMRISlices([str(tmp_path / "a.h5"), str(tmp_path / "b.h5")])
    assert len(r) == 5
    s = r[1]
    assert s["kspace"].dtype == torch.complex64 and s["kspace"].shape == (10, 8)
    np.testing.assert_allclose(s["kspace"].numpy(), k[1].astype(np.complex64))
    assert s["target"].shape == (6, 6) and s["slice"] == 1
    assert r[4]["file"].endswith("b.h5")
    assert len(read_h5_images(str(tmp_path / "a.h5"))) == 3
    d = make_task(TaskConfig("mri", size=16, data=str(tmp_path / "a.h5")), "train", 2)
    assert d.x.shape == (2, 1, 16, 16)


def test_lodopab_reader(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.random((4, 12, 12)).astype(np.float32)
    with h5py.File(tmp_path / "ground_truth_train_000.hdf5", "w") as fh:
        fh["data"] = gt
    with h5py.File(tmp_path / "observation_train_000.hdf5", "w") as fh:
        fh["data"] = rng.random((4, 10, 7)).astype(np.float32)
    r = LoDoPaB(str(tmp_path / "ground_truth_train_000.hdf5"))
    assert len(r) == 4
    np.testing.assert_array_equal(r[2].numpy(), gt[2])
    assert LoDoPaB(str(tmp_path / "observation_train_000.hdf5"))[0].shape == (10, 7)
    d = make_task(TaskConfig("ct", size=16, data=str(tmp_path / "ground_truth_train_000.hdf5")),
                  "test", 2)
    assert d.x.shape == (2, 1, 16, 16)


def test_h5_bad_files(tmp_path):
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        FastMRISlices(str(tmp_path / "text.h5"))
    with pytest.raises(FileNotFoundError):
        LoDoPaB(str(tmp_path / "absent.hdf5"))
    with h5py.File(tmp_path / "nokspace.h5", "w") as fh:
        fh["reconstruction_esc"] = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="no dataset 'kspace'"):
        FastMRISlices(str(tmp_path / "nokspace.h5"))
    with h5py.File(tmp_path / "realk.h5", "w") as fh:
        fh["kspace"] = np.zeros((2, 4, 4), np.float32)
        fh["reconstruction_esc"] = np.zeros((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="must be complex"):
        FastMRISlices(str(tmp_path / "realk.h5"))
    _fastmri(tmp_path / "mismatch.h5")
    with h5py.File(tmp_path / "mismatch.h5", "a") as fh:
        del fh["reconstruction_esc"]
        fh["reconstruction_esc"] = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="3 slices"):
        FastMRISlices(str(tmp_path / "mismatch.h5"))
    with h5py.File(tmp_path / "flat.hdf5", "w") as fh:
        fh["data"] = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="must be 3-D"):
        LoDoPaB(str(tmp_path / "flat.hdf5"))
    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh["images"] = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="neither a fastMRI file"):
        read_h5_images(str(tmp_path / "other.h5"))


@pytest.mark.parametrize("task", ["mri", "nufft-mri"])
def test_adjoint_start_is_on_the_image_scale(task):
    from luser_fast.metrics import psnr

    d = make_task(TaskConfig(task, size=32), "val", 2)
    with torch.no_grad():
        x0 = d.operator.adjoint(d.y).abs()
    assert psnr(x0, d.x.abs()) > 12
    assert x0.mean().item() == pytest.approx(d.x.abs().mean().item(), rel=0.3)


def test_deblur_patches_have_content_and_held_out_images():
    from luser_fast.data.tasks import _BUNDLED

    x = make_task(TaskConfig("deblur", size=32), "test", 8).x
    assert (x.std(dim=(1, 2, 3)) >= 0.05).all()
    names = [n for split in _BUNDLED.values() for n in split]
    assert len(names) == len(set(names)) and "cat" not in names   # skimage's cat is chelsea


# ---------------------------------------------------------------------------------------
# anatomy-like built-in ground truth (ct, mri, nufft-mri)
# ---------------------------------------------------------------------------------------


def test_textured_ellipses_and_fields():
    a = textured_ellipses(4, 24, seed=5)
    assert a.shape == (4, 1, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, textured_ellipses(4, 24, seed=5))
    assert not torch.equal(a, textured_ellipses(4, 24, seed=6))
    assert a.min() >= 0 and a.max() <= 1 and (a.std(dim=(1, 2, 3)) > 0.02).all()
    # soft edges: more distinct grey levels than a sum of a dozen flat ellipses has
    assert len(torch.unique(a[0])) > 100
    assert a[:, :, 0, 0].abs().max() == 0   # background outside the body
    f = smooth_fields(3, (16, 20), cutoff=2.0, seed=1)
    assert f.shape == (3, 16, 20)
    np.testing.assert_allclose(f.mean(axis=(1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(f.std(axis=(1, 2)), 1, rtol=1e-9)
    with pytest.raises(ValueError, match="cutoff"):
        smooth_fields(1, 8, cutoff=0)
    with pytest.raises(ValueError, match="n must"):
        textured_ellipses(-1, 8)


def test_smooth_phase():
    p = smooth_phase(3, 16, seed=2)
    assert p.shape == (3, 1, 16, 16) and p.dtype == torch.float32
    assert torch.equal(p, smooth_phase(3, 16, seed=2))
    # smooth: at 64x64 neighbouring pixels differ by a fraction of a radian
    q = smooth_phase(20, 64, seed=3)
    assert q.diff(dim=-1).abs().max() < 0.4 and q.diff(dim=-2).abs().max() < 0.4
    assert q.std() > 1   # but the phase is far from constant
    x = torch.rand(3, 1, 16, 16)
    z = with_phase(x, seed=2)
    assert z.dtype == torch.complex64
    torch.testing.assert_close(z.abs(), x, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="x must be real"):
        with_phase(z, seed=2)


@pytest.mark.parametrize("task", ["ct", "mri", "nufft-mri"])
def test_anatomy_mix_deterministic_and_in_range(task):
    cfg = TaskConfig(task, size=32)
    a = make_task(cfg, "train", 10)
    b = make_task(TaskConfig(task, size=32), "train", 10)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.x.shape == (10, 1, 32, 32)
    mag = a.x.abs()
    assert mag.min() >= 0 and mag.max() <= 1 + 1e-6
    if task != "ct":
        assert a.x.dtype == torch.complex64 and a.x.imag.abs().max() > 0.05
    # both kinds present: phantoms have empty corners, natural patches do not
    corners = mag[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]].amax(dim=1)
    assert (corners == 0).any() and (corners > 0).any()


def test_anatomy_mix_uses_only_the_splits_images(monkeypatch):
    calls = []
    real_bundled = tasks_module._bundled

    def recording(split):
        calls.append(split)
        return real_bundled(split)

    tasks_module._pyramid.cache_clear()
    monkeypatch.setattr(tasks_module, "_bundled", recording)
    try:
        for split in ("train", "val", "test"):
            calls.clear()
            x = ground_truth(TaskConfig("ct", size=16), split, 6)
            assert set(calls) == {split}
            assert x.shape == (6, 1, 16, 16)
    finally:
        tasks_module._pyramid.cache_clear()
    train = ground_truth(TaskConfig("ct", size=16), "train", 6)
    test = ground_truth(TaskConfig("ct", size=16), "test", 6)
    assert not any(torch.equal(t, u) for t in train for u in test)


# ---------------------------------------------------------------------------------------
# DICOM reader
# ---------------------------------------------------------------------------------------


def _robust01(a):
    lo, hi = np.percentile(a, (0.5, 99.5))
    return (np.clip(a, lo, hi) - lo) / (hi - lo)


def test_read_dicom_ct_rescale(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 3000, size=(12, 10)).astype(np.int16)
    x = read_dicom(_dicom(tmp_path / "ct.dcm", raw, slope="2", intercept="-1024"))
    assert x.shape == (1, 1, 12, 10) and x.dtype == torch.float32
    hu = raw * 2.0 - 1024
    np.testing.assert_allclose(x[0, 0].numpy(), _robust01(hu), atol=1e-6)
    assert x.min() == 0 and x.max() == 1
    # the slope is applied: a negative one inverts the slice
    y = read_dicom(_dicom(tmp_path / "neg.dcm", raw, slope="-1", intercept="0"))
    np.testing.assert_allclose(y[0, 0].numpy(), 1 - x[0, 0].numpy(), atol=1e-6)


def test_read_dicom_mr_multiframe_rgb_and_folder(tmp_path):
    rng = np.random.default_rng(1)
    mr = rng.integers(0, 4000, size=(8, 8)).astype(np.uint16)
    frames = rng.integers(0, 1000, size=(3, 8, 8)).astype(np.uint16)
    rgb = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    folder = tmp_path / "series"
    folder.mkdir()
    _dicom(folder / "b_mr.dcm", mr, modality="MR")
    _dicom(folder / "a_multi.dcm", frames, modality="MR")
    _dicom(folder / "c_rgb.dcm", rgb, modality="OT", photometric="RGB")
    (folder / "notes.txt").write_text("not DICOM")
    multi = read_dicom(str(folder / "a_multi.dcm"))
    assert multi.shape == (3, 1, 8, 8)
    for k in range(3):
        np.testing.assert_allclose(multi[k, 0].numpy(), _robust01(frames[k].astype(float)),
                                   atol=1e-6)
    grey = rgb.astype(float) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(read_dicom(str(folder / "c_rgb.dcm"))[0, 0].numpy(),
                               _robust01(grey), atol=1e-6)
    x = read_dicom(str(folder))   # sorted: a_multi (3 frames), b_mr, c_rgb; notes.txt skipped
    assert x.shape == (5, 1, 8, 8) and x.dtype == torch.float32
    assert torch.equal(x[:3], multi)
    np.testing.assert_allclose(x[3, 0].numpy(), _robust01(mr.astype(float)), atol=1e-6)
    assert 0 <= x.min() and x.max() <= 1


def test_read_dicom_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="nopix.dcm: DICOM file has no pixel data"):
        read_dicom(_dicom(tmp_path / "nopix.dcm", None, pixels=False))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="empty: no DICOM files"):
        read_dicom(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="absent"):
        read_dicom(str(tmp_path / "absent"))
    (tmp_path / "text.dcm").write_text("not DICOM at all")
    with pytest.raises(ValueError, match="text.dcm: not a DICOM file"):
        read_dicom(str(tmp_path / "text.dcm"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _dicom(mixed / "a.dcm", np.zeros((8, 8), np.uint16))
    _dicom(mixed / "b.dcm", np.zeros((8, 9), np.uint16))
    with pytest.raises(ValueError, match="b.dcm: slices are 8x9.*share H x W"):
        read_dicom(str(mixed))
    # float pixel data (a parametric map) holding a NaN
    values = np.ones((4, 4), np.float32)
    values[1, 2] = np.nan
    _dicom(tmp_path / "nan.dcm", values)
    with pytest.raises(ValueError, match="nan.dcm: pixel data has non-finite values"):
        read_dicom(str(tmp_path / "nan.dcm"))
