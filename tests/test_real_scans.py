"""Real scans (pydicom's bundled CT / MR slices) and the real-scan evaluation."""
import math

import pytest
import torch

from luser_fast import LU, LUSER
from luser_fast.data import TaskConfig, evaluate_real, real_scan_files, real_scans
from luser_fast.data.real import REAL_CT, REAL_MR


@pytest.mark.parametrize("task, n", [("ct", len(REAL_CT)), ("mri", len(REAL_MR)),
                                     ("nufft-mri", len(REAL_MR)),
                                     ("deblur", len(REAL_CT) + len(REAL_MR))])
def test_real_scans_shapes(task, n):
    x = real_scans(task, 24)
    assert x.shape == (n, 1, 24, 24)
    mag = x.abs()
    assert mag.min() >= 0 and mag.max() <= 1 + 1e-6
    assert (mag.std(dim=(1, 2, 3)) > 0.05).all()   # anatomy, not flat images
    if task in ("mri", "nufft-mri"):
        assert x.dtype == torch.complex64 and x.imag.abs().max() > 0.05
        zero = real_scans(task, 24, phase="zero")
        assert zero.dtype == torch.complex64 and zero.imag.abs().max() == 0
        torch.testing.assert_close(zero.real, mag, rtol=1e-5, atol=1e-6)
    else:
        assert x.dtype == torch.float32
    assert torch.equal(x, real_scans(task, 24))
    assert len(real_scan_files(task)) == n


def test_real_scans_bad_args():
    with pytest.raises(ValueError, match="task"):
        real_scans("pet", 32)
    with pytest.raises(ValueError, match="size"):
        real_scans("ct", 4)
    with pytest.raises(ValueError, match="phase"):
        real_scans("mri", 32, phase="random")


@pytest.mark.parametrize("task, cls", [("ct", LU), ("mri", LUSER), ("nufft-mri", LU),
                                       ("deblur", LUSER)])
def test_evaluate_real_untrained(task, cls):
    from luser_fast.data import build_operator

    cfg = TaskConfig(task, size=16)
    torch.manual_seed(0)
    model = cls(build_operator(cfg), iterations=1, in_channels=2 if task.endswith("mri") else 1,
                channels=4, depth=2)
    model.train()
    r = evaluate_real(model, cfg)
    assert model.training   # mode restored
    n = len(real_scan_files(task))
    assert r["n"] == n and len(r["files"]) == n and r["files"][0].endswith(".dcm")
    for key in ("x0", "model"):
        assert set(r[key]) == {"psnr", "ssim", "psnr_per_image", "ssim_per_image"}
        assert math.isfinite(r[key]["psnr"]) and math.isfinite(r[key]["ssim"])
        assert len(r[key]["psnr_per_image"]) == n
        assert all(math.isfinite(v) for v in r[key]["psnr_per_image"] + r[key]["ssim_per_image"])
    assert r["x0"]["psnr"] > 10   # x0 (FBP / adjoint / blurred) is close to the scan
    assert r == evaluate_real(model, cfg)   # fixed noise seed: the same numbers again
    assert r["phase"] == ("smooth" if task.endswith("mri") else None)


def test_evaluate_real_bad_config():
    from luser_fast.data import build_operator

    cfg = TaskConfig("ct", size=16)
    model = LU(build_operator(cfg), iterations=1, channels=4, depth=2)
    with pytest.raises(TypeError, match="task_cfg"):
        evaluate_real(model, {"task": "ct"})
