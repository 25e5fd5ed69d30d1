"""train / eval / memprofile commands: exact resume, checkpoints (safe loading, digest,
stale temporaries), eval outputs, bad input."""
import json
import os
import pickle
import random
import re
import shlex
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from luser_fast.cli import main
from luser_fast.data import TaskConfig, make_task
from luser_fast.metrics import psnr, ssim
from luser_fast.profile.memprofile import run_memprofile
from luser_fast.train import (CHECKPOINT_FORMAT, TrainConfig, build_model, fit, load_checkpoint,
                              save_checkpoint, train)

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


@pytest.mark.parametrize("model", ["luser", "lu"])
def test_fit_is_the_loop_of_train(tmp_path, one_thread, model):
    """The demo and the study train with ``fit``, the loop of ``luser-fast train``: the same
    model and settings give the same losses and weights, the learning rate cosine-annealed
    to 0 at the last step."""
    task = TaskConfig(task="ct", size=16)
    cfg = TrainConfig(model=model, iterations=2, channels=4, batch=2, steps=4, n_train=6,
                      out=str(tmp_path / "train"), ckpt_every=0)
    trained = train(task, cfg, log=lambda *a: None)
    data = make_task(task, "train", cfg.n_train)
    fitted = fit(build_model(cfg, data.operator, data.in_channels), data.y, data.x, cfg.steps,
                 cfg.batch, cfg.lr, cfg.seed)
    assert [r["loss"] for r in fitted["history"]] == [r["loss"] for r in trained["history"]]
    for key, value in trained["model"].state_dict().items():
        assert torch.equal(fitted["model"].state_dict()[key], value), key
    assert fitted["checkpoint"] is None and fitted["step"] == 4 and fitted["sec_per_step"] > 0
    state = load_checkpoint(trained["checkpoint"])
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="larger than the training set"):
        fit(fitted["model"], data.y, data.x, 2, 7, 1e-3, 0)


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
    (["reconstruct", "/nonexistent/last.pt", "--out", "x.npy"], "--measurements"),
    (["reconstruct", "/nonexistent/last.pt", "--measurements", "y.npy", "--out", "x.npy"],
     "no checkpoint"),
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


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def _write_malicious(path, marker, kind):
    if kind == "torch.save":
        torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "payload": _Payload(marker)}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(_Payload(marker), fh, protocol=2)


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path, capsys, kind):
    # the payload works: unpickling it (here, from bytes this test made) runs it
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(str(probe)), protocol=2))
    assert probe.exists()

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    _write_malicious(str(run / "last.pt"), str(marker), kind)
    for argv in (["eval", str(run / "last.pt"), "--threads", "1"],
                 ["train", "--task", "ct", "--out", str(run), *TINY, "--steps", "2", "--resume"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{run / 'last.pt'}: not a readable checkpoint: refused" in err, err
        assert "system" in err and "arbitrary code execution" not in err
        assert not marker.exists()
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(str(run / "last.pt"))
    assert not marker.exists()


def _tensor_record(path):
    """(offset, size) in the file of the largest tensor record of a torch.save zip."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_checkpoint_digest_detects_changes(tmp_path, capsys):
    assert _train(tmp_path, "--steps", "2", model="lu") == 0
    path = tmp_path / "last.pt"
    good = path.read_bytes()
    state = load_checkpoint(str(path))
    assert re.fullmatch(r"[0-9a-f]{64}", state["sha256"])
    digest_error = re.escape(str(path)) + ": checkpoint content does not match its SHA-256 digest"

    # flipped bytes inside a stored tensor: torch still reads the file, the digest does not match
    offset, size = _tensor_record(path)
    data = bytearray(good)
    data[offset + size // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match=digest_error):
        load_checkpoint(str(path))
    with pytest.raises(SystemExit):
        main(["eval", str(path), "--threads", "1"])
    assert "does not match its SHA-256 digest" in capsys.readouterr().err

    # a plain value changed, or the digest removed
    changed = dict(state, train={**state["train"], "lr": 0.5})
    torch.save(changed, path)
    with pytest.raises(ValueError, match=digest_error):
        load_checkpoint(str(path))
    torch.save({k: v for k, v in state.items() if k != "sha256"}, path)
    with pytest.raises(ValueError, match=digest_error):
        load_checkpoint(str(path))
    path.write_bytes(good)
    assert load_checkpoint(str(path))["sha256"] == state["sha256"]


def test_checkpoint_stores_plain_rng_states(tmp_path):
    from luser_fast.train import rng_state, set_rng_state

    np.random.seed(3)
    random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()              # leaves a cached Gaussian in numpy's state
    save_checkpoint(str(tmp_path / "c.pt"), {"format": CHECKPOINT_FORMAT, "rng": rng_state()})

    def draws():
        return (np.random.rand(3).tolist(), np.random.standard_normal(), random.random(),
                torch.rand(2).tolist())

    want = draws()
    np.random.seed(0)
    random.seed(0)
    torch.manual_seed(0)
    set_rng_state(load_checkpoint(str(tmp_path / "c.pt"))["rng"])
    assert draws() == want


def test_train_removes_stale_temporaries(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        tmp_path.mkdir(exist_ok=True)
        stale = [tmp_path / f".last.pt.{dead.pid}.tmp", tmp_path / f"history.json.{dead.pid}.tmp"]
        kept = [tmp_path / f".last.pt.{alive.pid}.tmp", tmp_path / f"history.json.{alive.pid}.tmp",
                tmp_path / "history.json.x.tmp", tmp_path / "notes.tmp"]
        for f in stale + kept:
            f.write_bytes(b"partial")
        assert _train(tmp_path, "--steps", "1") == 0
        assert not any(f.exists() for f in stale)
        assert all(f.exists() for f in kept)
    finally:
        alive.kill()
        alive.wait()


def test_memprofile_chunk_peak_falls_with_the_chunk():
    torch.set_num_threads(1)
    rows = run_memprofile(vary="chunk", values=(1, 4), size=24, channels=16, K=2,
                          solver_iterations=5, log=lambda *a: None)
    fast = {r["chunk"]: r["peak_bytes"] for r in rows if r["model"] == "LUSER"}
    saved = {r["chunk"]: r["saved_bytes"] for r in rows if r["model"] == "LUSER"}
    assert fast[4] > 1.5 * fast[1], fast              # chunk 4 = the whole batch of 4
    assert abs(saved[4] - saved[1]) <= 0.05 * saved[1]  # what is kept is the same
