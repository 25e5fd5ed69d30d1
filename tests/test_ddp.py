"""Multi-process training: 2 gloo processes on CPU follow a single-process run."""
import os
import subprocess
import sys

import torch

from luser_fast.train import load_checkpoint

ARGS = ["train", "--task", "ct", "--size", "16", "--K", "2", "--channels", "4", "--batch", "4",
        "--n-train", "8", "--steps", "3", "--threads", "1", "--ckpt-every", "0"]


def _run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_two_gloo_processes_match_one(tmp_path):
    out = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "luser_fast.cli", *ARGS, "--out", "ddp"], tmp_path)
    assert out.count("step 3/3,") == 1                   # rank 0 logs, once
    _run([sys.executable, "-m", "luser_fast.cli", *ARGS, "--out", "single"], tmp_path)
    ddp = load_checkpoint(str(tmp_path / "ddp" / "last.pt"))
    one = load_checkpoint(str(tmp_path / "single" / "last.pt"))
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert sorted(os.listdir(tmp_path / "ddp")) == ["history.json", "last.pt"]
    # The same global batch per step; only the order of the gradient sums differs.
    for key, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for a, b in zip(ddp["history"], one["history"]):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * b["loss"]
