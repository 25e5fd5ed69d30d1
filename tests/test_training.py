import json
import os

import pytest
import torch

from luser_fast.cli import main
from luser_fast.demo import LU_NAME, LUSER_NAME, run_demo


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_lu_and_luser_train_on_demo_data(tmp_path, one_thread):
    """The demo pipeline on CT at a small size: both models learn and beat FBP."""
    run = run_demo(out=str(tmp_path), tasks=("ct",), steps=100, size=48, angles=30, channels=16,
                   n_train=32, n_test=8, lr=1e-3, noise=0.05, wide_channels=0,
                   log=lambda *a: None)
    ct = run["tasks"]["ct"]
    rows = ct["rows"]
    fbp = rows["x0"]["psnr"]
    assert rows["x0"]["label"] == "FBP"
    for name in (LU_NAME, LUSER_NAME):
        r = rows[name]
        assert r["loss_last"] < 0.8 * r["loss_first"], (name, r)
        assert r["psnr"] > fbp + 1.0, (name, r["psnr"], fbp)
        assert r["ssim"] > rows["x0"]["ssim"], (name, r["ssim"], rows["x0"]["ssim"])
        assert r["saved_bytes"] > 0 and r["peak_bytes"] > 0 and r["sec_per_step"] > 0
    assert rows[LUSER_NAME]["solver_iterations"] >= 1
    assert ct["ratios"]["saved_ratio"] > 1
    assert ct["ratios"]["psnr_diff_db"] == pytest.approx(rows[LUSER_NAME]["psnr"] - rows[LU_NAME]["psnr"])
    assert os.path.getsize(ct["png"]) > 10_000
    with open(tmp_path / "demo.json") as fh:
        assert json.load(fh)["tasks"]["ct"]["rows"]["x0"]["psnr"] == fbp


def test_demo_command_runs_deblur_and_mri(tmp_path, one_thread):
    """`luser-fast demo --tasks deblur mri` at a tiny size writes its PNGs, demo.json and a
    results entry keyed by machine | torch | git SHA."""
    results = tmp_path / "results" / "demo_cpu.json"
    argv = ["demo", "--out", str(tmp_path), "--tasks", "deblur", "mri", "--steps", "3",
            "--size", "16", "--channels", "4", "--n-train", "8", "--n-test", "4",
            "--wide-channels", "8", "--results", str(results)]
    assert main(argv) == 0
    with open(tmp_path / "demo.json") as fh:
        run = json.load(fh)
    assert list(run["tasks"]) == ["deblur", "mri"]
    assert run["command"] == "luser-fast " + " ".join(argv)
    for task, label in (("deblur", "A^T y"), ("mri", "|A^H y|")):
        t = run["tasks"][task]
        assert t["config"]["task"] == task and t["config"]["steps"] == 3
        assert t["rows"]["x0"]["label"] == label
        for name in (LU_NAME, LUSER_NAME):
            assert {"psnr", "ssim", "saved_bytes", "peak_bytes", "sec_per_step"} <= set(t["rows"][name])
        r = t["ratios"]
        assert all(isinstance(v, (int, float)) for v in r.values())     # a flat row of figures
        assert r["met"] == (r["peak_goal_met"] and r["saved_goal_met"] and r["psnr_goal_met"])
        assert t["wide"]["channels"] == 8 and r["wide_peak_ratio"] == t["wide"]["peak_ratio"]
        assert os.path.getsize(tmp_path / f"demo_{task}.png") > 5_000
    with open(results) as fh:
        stored = json.load(fh)
    (key, entry), = stored.items()
    assert key == f"{run['machine']['cpu']} | torch {torch.__version__} | {run['git_sha']}"
    assert entry == run
    assert {"date", "machine", "versions", "git_sha", "command", "wall_seconds", "tasks"} <= set(entry)
