"""Volumes: the 3-D phantoms, the ct3d task, ``luser-fast memprofile --dims 3`` and
``luser-fast demo --tasks ct3d``, at tiny sizes."""
import json
import os

import pytest
import torch

from helpers import bench_report
from luser_fast.cli import main
from luser_fast.data.phantoms import random_ellipsoids
from luser_fast.data.volumes import conebeam_geometry, make_ct3d
from luser_fast.demo import LU_NAME, LUSER_NAME
from luser_fast.profile.memprofile import (LU_3D, LUSER_3D, affine_fit, parse_bytes,
                                           run_memprofile3d)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_random_ellipsoids():
    a = random_ellipsoids(3, 12, seed=4)
    assert a.shape == (3, 1, 12, 12, 12) and a.dtype == torch.float32
    assert torch.equal(a, random_ellipsoids(3, 12, seed=4))
    assert not torch.equal(a, random_ellipsoids(3, 12, seed=5))
    assert 0 <= a.min() and a.max() <= 1 and a.mean() > 0.02
    assert (a[:, :, 0, 0, 0] == 0).all()                 # the corners are background
    assert random_ellipsoids(2, (6, 8, 10), dtype=torch.float64).shape == (2, 1, 6, 8, 10)
    assert random_ellipsoids(0, 8).shape == (0, 1, 8, 8, 8)
    for bad in (0, (8, 8), (8, 8, 0), 8.0):
        with pytest.raises(ValueError, match="size"):
            random_ellipsoids(1, bad)
    with pytest.raises(ValueError, match="n must be"):
        random_ellipsoids(-1, 8)


def test_ct3d_task_and_geometry():
    g = conebeam_geometry(10)
    assert g["volume_size"] == (10, 10, 10) and g["angles"] == 10
    assert g["detector_shape"] == (18, 18) and g["source_distance"] == 20.0
    train = make_ct3d(8, "train", 2, seed=1)
    test = make_ct3d(8, "test", 2, seed=1, operator=train.operator)
    assert train.x.shape == (2, 1, 8, 8, 8) and train.y.shape == (2, 1, 8, 15, 15)
    assert train.in_channels == 1 and train.task == "ct3d"
    assert not torch.equal(train.x, test.x)                # splits hold other volumes
    assert torch.equal(train.y, make_ct3d(8, "train", 2, seed=1).y)
    # the detector covers the volume: nothing reaches its border
    ones = train.operator(torch.ones(1, 1, 8, 8, 8))
    assert ones[..., [0, -1], :].abs().max() == 0 and ones[..., [0, -1]].abs().max() == 0
    with pytest.raises(ValueError, match="split"):
        make_ct3d(8, "dev", 1)
    with pytest.raises(ValueError, match="noise"):
        make_ct3d(8, "train", 1, noise=-1.0)


def test_parse_bytes_and_fit():
    assert parse_bytes("16GiB") == 16 * 2 ** 30 == parse_bytes("16G") == parse_bytes("16 gib")
    assert parse_bytes("1.5GB") == 1_500_000_000 and parse_bytes("512MiB") == 2 ** 29
    assert parse_bytes("1e9") == 10 ** 9 and parse_bytes(2048) == 2048
    for bad in ("16 parsecs", "-1GiB", "0", "GiB"):
        with pytest.raises(ValueError, match="budget"):
            parse_bytes(bad)
    f = affine_fit([2, 3, 4], [10 + 5 * n ** 3 for n in (2, 3, 4)])
    assert f["a"] == pytest.approx(10) and f["b"] == pytest.approx(5)
    assert f["max_rel_residual"] < 1e-12 and f["points"] == 3
    assert affine_fit([4], [1.0]) is None


def test_memprofile3d_tiny(tmp_path):
    """The study at toy sizes: every requested side measured or predicted, fits over the
    measured sides, the budget's side confirmed by a measured step, the table, the plot,
    the JSON and a harness entry."""
    results = tmp_path / "memprofile3d_cpu.json"
    lines = []
    out = run_memprofile3d(sizes=(6, 8, 30), budget="4MiB", channels=4, K=2,
                           calibration=(5,), max_measure_bytes="3MiB",
                           plot=str(tmp_path / "m.png"), json_path=str(tmp_path / "m.json"),
                           results=str(results), log=lines.append)
    rows = {(r["model"], r["side"]): r for r in out["rows"]}
    for name in (LU_3D, LUSER_3D):
        assert rows[name, 8]["status"] == "measured" and rows[name, 5]["status"] == "calibration"
        assert rows[name, 30]["status"].startswith("predicted")
        fit = out["fits"][name]["train_bytes"]
        assert fit["points"] == 3 and fit["b"] > 0
        b = out["budget"][name]
        assert b["predicted_side"] > 8 and b["confirm_side"] <= b["predicted_side"]
        confirm = rows[name, b["confirm_side"]]
        assert confirm["train_bytes"] == b["measured_train_bytes"] > 0
        assert b["within_budget"] == (confirm["train_bytes"] <= 4 * 2 ** 20)
        assert abs(b["prediction_error"]) < 0.1
    # LUSER keeps far less for backward than LU
    assert out["ratios"]["8"]["saved_ratio"] > 5 and out["ratios"]["8"]["measured"]
    assert not out["ratios"]["30"]["measured"]
    assert out["side_ratio"] > 1
    assert out["iteration_check"]["saved_ratio"] == pytest.approx(1, abs=0.02)
    bc = out["batch_check"]
    assert bc["side"] == 6 and bc["batches"] == [1, 2, 4] and len(bc["rows"]) == 6
    assert bc[LU_3D]["peak_bytes_per_sample"] > bc[LUSER_3D]["peak_bytes_per_sample"]
    assert any(line.startswith("fit LU (depth 5)") for line in lines)
    assert (tmp_path / "m.png").stat().st_size > 5_000
    with open(tmp_path / "m.json") as fh:
        assert json.load(fh)["setup"]["budget_bytes"] == 4 * 2 ** 20
    with open(results) as fh:
        (key, run), = json.load(fh).items()
    assert {"date", "machine", "git_sha", "setup", "rows", "fits", "budget"} <= set(run)
    # the report's 3-D section renders it, goals judged against the measured figures
    report = bench_report()
    goals = report.Goals()
    text = "\n".join(report.memory3d_section(run, goals, None))
    assert "## 3-D memory study" in text and "predicted (" in text and "{" not in text
    (side_goal,) = [g for g in goals.rows if "largest trainable side" in g[1]]
    assert side_goal[0] == "#15" and side_goal[3] == f"{out['side_ratio']:.3g}x"


def test_memprofile_dims_arguments(capsys):
    for argv, message in ((["--dims", "3", "--vary", "depth"], "--vary is for --dims 2"),
                          (["--budget", "1GiB"], "--budget is for --dims 3"),
                          (["--size", "16", "32"], "--size takes one value"),
                          (["--dims", "3", "--budget", "lots"], "budget must be a size"),
                          (["--dims", "4"], "invalid choice")):
        with pytest.raises(SystemExit) as exc:
            main(["memprofile", *argv])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_demo_ct3d_tiny(tmp_path):
    """`luser-fast demo --tasks ct3d` at a tiny size: both models train on cone-beam
    volumes with fit, and the run holds FDK / LU / LUSER rows and a slice PNG."""
    argv = ["demo", "--out", str(tmp_path), "--tasks", "ct3d", "--volume-size", "10",
            "--steps", "3", "--channels", "4", "--n-train", "4", "--n-test", "2",
            "--wide-channels", "0"]
    assert main(argv) == 0
    with open(tmp_path / "demo.json") as fh:
        run = json.load(fh)
    t = run["tasks"]["ct3d"]
    assert t["config"]["size"] == 10 and t["config"]["angles"] == 5       # N / 2
    # ct3d's own defaults where nothing was given
    assert t["config"]["steps"] == 3 and t["config"]["batch"] == 2 and t["config"]["lr"] == 3e-4
    assert t["rows"]["x0"]["label"] == "FDK"
    for name in (LU_NAME, LUSER_NAME):
        r = t["rows"][name]
        assert {"psnr", "ssim", "saved_bytes", "peak_bytes", "sec_per_step"} <= set(r)
        assert r["psnr"] > 10
    assert t["ratios"]["saved_ratio"] > 1
    assert os.path.getsize(tmp_path / "demo_ct3d.png") > 5_000
