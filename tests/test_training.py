import json
import os

import torch

from luser_fast.cli import run_demo


def test_lu_and_luser_train_on_demo_data(tmp_path):
    """The demo pipeline at a small size: both models learn and beat FBP."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = run_demo(out=str(tmp_path), steps=100, size=48, angles=30, channels=16,
                        n_train=32, n_test=8, lr=1e-3, noise=0.05, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    fbp = rows["FBP"]["psnr"]
    for name in ("LU (depth 5)", "LUSER (depth 2)"):
        r = rows[name]
        assert r["loss_last"] < 0.8 * r["loss_first"], (name, r)
        assert r["psnr"] > fbp + 1.0, (name, r["psnr"], fbp)     # measured: +2.7 dB / +2.1 dB
        assert r["saved_bytes"] > 0 and r["peak_bytes"] > 0 and r["sec_per_step"] > 0
    assert rows["LUSER (depth 2)"]["saved_bytes"] < rows["LU (depth 5)"]["saved_bytes"]
    assert os.path.getsize(rows["_png"]) > 10_000
    with open(tmp_path / "demo_ct.json") as fh:
        assert json.load(fh)["FBP"]["psnr"] == fbp
