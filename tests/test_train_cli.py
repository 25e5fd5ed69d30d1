"""train / eval / memprofile commands: exact resume, checkpoints, eval outputs, bad input."""
import json
import os

import pytest
import torch

from luser_fast.cli import main, run_memprofile
from luser_fast.metrics import psnr, ssim
from luser_fast.train import load_checkpoint

TINY = ["--size", "16", "--K", "2", "--channels", "4", "--batch", "2", "--n-train", "6",
        "--threads", "1", "--ckpt-every", "2"]


def _train(out, *extra, task="ct", model="luser"):
    return main(["train", "--task", task, "--model", model, "--out", str(out), *TINY, *extra])


def _history(out):
    with open(os.path.join(out, "history.json")) as fh:
        return json.load(fh)


@pytest.mark.parametrize("model", ["luser", "lu"])
def test_resume_is_exact(tmp_path, model):
    assert _train(tmp_path / "full", "--steps", "6", model=model) == 0
    assert _train(tmp_path / "split", "--steps", "6", "--stop-at", "3", model=model) == 0
    assert len(_history(tmp_path / "split")) == 3
    assert _train(tmp_path / "split", "--steps", "6", "--resume", model=model) == 0
    full, split = _history(tmp_path / "full"), _history(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 7))
    assert [r["loss"] for r in split] == [r["loss"] for r in full]
    a = load_checkpoint(str(tmp_path / "full" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "split" / "last.pt"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["step"] == b["step"] == 6
    assert _train(tmp_path / "split", "--steps", "6", "--stop-at", "2", "--resume", model=model) == 0
    assert load_checkpoint(str(tmp_path / "split" / "last.pt"))["step"] == 6
    assert _history(tmp_path / "split") == split


def test_checkpoint_contents(tmp_path):
    assert _train(tmp_path, "--steps", "3", "--epochs", "1", task="mri") == 0
    state = load_checkpoint(str(tmp_path / "last.pt"))
    assert {"model", "optimizer", "scheduler", "rng", "step", "history", "task", "train"} <= set(state)
    assert state["step"] == 3                     # 1 epoch = n_train // batch = 3 steps
    assert state["task"]["task"] == "mri" and state["train"]["model"] == "luser"
    assert all("solver_iterations" in r for r in state["history"])
    assert sorted(os.listdir(tmp_path)) == ["history.json", "last.pt"]   # no temporary left


def test_eval_reports_and_writes_grid(tmp_path, capsys):
    assert _train(tmp_path, "--steps", "2", task="deblur", model="lu") == 0
    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "last.pt"), "--n", "3", "--out", str(out),
                 "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" in printed and "SSIM" in printed
    with open(out / "eval_test.json") as fh:
        result = json.load(fh)
    assert len(result["model"]["psnr_per_image"]) == 3
    assert 0 < result["model"]["ssim"] <= 1 and result["x0"]["psnr"] > 10
    assert (out / "eval_test.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["train", "--task", "pet"], "invalid choice"),
    (["train", "--task", "ct", "--model", "unet"], "invalid choice"),
    (["train", "--task", "ct", "--steps", "0"], "positive int"),
    (["train", "--task", "ct", "--batch", "8", "--n-train", "4"], "larger than n_train"),
    (["train", "--task", "ct", "--noise", "-1"], "noise"),
    (["memprofile", "--vary", "width"], "invalid choice"),
    (["eval", "/nonexistent/last.pt"], "no checkpoint"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_resume_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _train(tmp_path, "--steps", "2", "--resume")
    assert "no checkpoint" in capsys.readouterr().err
    assert _train(tmp_path, "--steps", "2") == 0
    with pytest.raises(SystemExit):
        _train(tmp_path, "--steps", "2", "--lr", "0.01", "--resume")
    assert "lr: checkpoint 0.001, now 0.01" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path / "junk.pt")])
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_memprofile_table_and_plot(tmp_path):
    torch.set_num_threads(1)
    rows = run_memprofile(vary="depth", values=(2, 3), size=16, channels=8, K=2,
                          solver_iterations=5, plot=str(tmp_path / "m.png"),
                          json_path=str(tmp_path / "m.json"), log=lambda *a: None)
    assert len(rows) == 6
    fast = {r["depth"]: r["saved_bytes"] for r in rows if r["model"] == "LUSER"}
    lu = {r["depth"]: r["saved_bytes"] for r in rows if r["model"] == "LU"}
    assert fast[2] < lu[2] and lu[3] > lu[2]
    assert (tmp_path / "m.png").stat().st_size > 1000
    with open(tmp_path / "m.json") as fh:
        assert json.load(fh)["vary"] == "depth"


def test_metrics_match_definitions():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 24, 24, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    mse = (a - b).square().mean(dim=(1, 2, 3))
    assert psnr(b, a) == pytest.approx((10 * torch.log10(1 / mse)).mean().item())
    ref = [structural_similarity(a[i, 0].numpy(), b[i, 0].numpy(), data_range=1.0,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
           for i in range(2)]
    assert ssim(b, a) == pytest.approx(sum(ref) / 2, abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(TypeError, match="magnitudes"):
        psnr(a.to(torch.complex128), a.to(torch.complex128))
