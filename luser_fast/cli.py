"""The ``luser-fast`` command: ``info`` and ``demo``.

    luser-fast info                 versions, extension build info, which backend serves each op
    luser-fast demo [--out DIR]     trains LU (depth 5) and LUSER (depth 2) on synthetic CT
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _cmd_info(args):
    import torch

    from . import __version__, _ext, backends

    info = {
        "luser_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available() if args.cuda else "not queried (pass --cuda)",
        "backend_requested": os.environ.get("LUSER_FAST_BACKEND", "auto"),
        **_ext.build_info(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["ops_cpu"] = backends.table("cpu")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for op, b in value.items():
                print(f"  {op:<16} {b}")
        else:
            print(f"{key:<{width}}  {value}")
    return 0


def psnr(x_hat, x_true, data_range=1.0):
    """Mean PSNR in dB over the batch; x [B, ...] real."""
    import torch

    mse = (x_hat - x_true).reshape(x_hat.shape[0], -1).square().mean(dim=1)
    return (10 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))).mean().item()


def _train(model, y, x, steps, batch, lr, seed, desc):
    import torch
    from tqdm import tqdm

    from .profile import mse

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    bar = tqdm(range(steps), desc=desc, file=sys.stderr, dynamic_ncols=True,
               disable=not sys.stderr.isatty() and os.environ.get("LUSER_FAST_PROGRESS") != "1")
    for _ in bar:
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss = mse(model(y[idx]), x[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.2e}")
    return losses, (time.perf_counter() - t0) / max(steps, 1)


def run_demo(out="out/demo", steps=200, size=64, angles=60, channels=32, batch=4, n_train=64,
             n_test=16, noise=0.03, seed=0, lr=1e-3, log=print):
    """Train LU (depth 5) and LUSER (depth 2) on synthetic CT and compare.

    Data: ``random_ellipses`` phantoms (size x size), parallel-beam Radon with ``angles``
    angles, Gaussian noise of std ``noise`` times the mean absolute sinogram value. Both
    models: K=5 steps, shared weights, Adam, the same steps, batch and seed.

    Returns:
        dict with per-model PSNR, losses, saved bytes, peak bytes, seconds per step, and the
        path of the PNG written.
    """
    import torch

    from .data import random_ellipses
    from .models import LU, LUSER
    from .physics import Radon
    from .profile import training_memory

    torch.manual_seed(seed)
    os.makedirs(out, exist_ok=True)
    x = random_ellipses(n_train + n_test, size, seed=seed)
    op = Radon(size, angles=angles)
    with torch.no_grad():
        clean = op(x)
        g = torch.Generator().manual_seed(seed + 1)
        y = clean + noise * clean.abs().mean() * torch.randn(clean.shape, generator=g)
        fbp = op.fbp(y).clamp(0, 1)
    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    rows = {"FBP": {"psnr": psnr(fbp[n_train:], xte)}}
    recon = {"FBP": fbp[n_train:]}
    models = {
        "LU (depth 5)": LU(op, iterations=5, channels=channels, depth=5),
        "LUSER (depth 2)": LUSER(op, iterations=5, channels=channels, depth=2),
    }
    for name, model in models.items():
        torch.manual_seed(seed)
        with torch.no_grad():
            psnr_before = psnr(model(yte), xte)
        mem = training_memory(model, ytr[:batch], xtr[:batch])
        losses, sec = _train(model, ytr, xtr, steps, batch, lr, seed, name)
        with torch.no_grad():
            recon[name] = model(yte)
        rows[name] = {"psnr_init": psnr_before, "psnr": psnr(recon[name], xte),
                      "loss_first": losses[0], "loss_last": sum(losses[-10:]) / len(losses[-10:]),
                      "saved_bytes": mem.saved_bytes, "peak_bytes": mem.peak_bytes,
                      "sec_per_step": sec}
        if isinstance(model, LUSER):
            its = torch.stack([i.iterations.float() for i in model.last_solver_info])
            rows[name]["solver_iterations"] = its.mean().item()
    png = os.path.join(out, "demo_ct.png")
    _plot(png, xte, recon)
    rows["_png"] = png
    _print_table(rows, log)
    with open(os.path.join(out, "demo_ct.json"), "w") as fh:
        json.dump(rows, fh, indent=2)
    return rows


def _print_table(rows, log):
    log(f"{'model':<16} {'PSNR init':>9} {'PSNR':>7} {'saved MB/step':>13} {'peak MB/step':>12} {'s/step':>7}")
    for name, r in rows.items():
        if name.startswith("_"):
            continue
        if "saved_bytes" not in r:
            log(f"{name:<16} {'':>9} {r['psnr']:7.2f}")
            continue
        log(f"{name:<16} {r['psnr_init']:9.2f} {r['psnr']:7.2f} {r['saved_bytes'] / 2**20:13.2f} "
            f"{r['peak_bytes'] / 2**20:12.2f} {r['sec_per_step']:7.3f}")
    log(f"figure: {rows['_png']}")


def _plot(path, x, recon, n=3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["ground truth"] + list(recon)
    fig, axes = plt.subplots(n, len(cols), figsize=(2.4 * len(cols), 2.4 * n), squeeze=False)
    for i in range(n):
        imgs = [x[i, 0]] + [recon[c][i, 0] for c in recon]
        for j, (title, img) in enumerate(zip(cols, imgs)):
            ax = axes[i, j]
            ax.imshow(img.detach().clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cmd_demo(args):
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    run_demo(out=args.out, steps=args.steps, size=args.size, angles=args.angles,
             channels=args.channels, batch=args.batch, seed=args.seed, noise=args.noise, lr=args.lr)
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="luser-fast", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="versions, build info, backend per op")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.add_argument("--cuda", action="store_true", help="also query CUDA availability")
    pi.set_defaults(func=_cmd_info)
    pd = sub.add_parser("demo", help="train LU and LUSER on synthetic CT (minutes on a CPU)")
    pd.add_argument("--out", default="out/demo", help="output folder for the PNG and JSON")
    pd.add_argument("--steps", type=int, default=200, help="training steps per model")
    pd.add_argument("--noise", type=float, default=0.03,
                    help="noise std relative to the mean absolute sinogram value")
    pd.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    pd.add_argument("--size", type=int, default=64, help="image size")
    pd.add_argument("--angles", type=int, default=60, help="projection angles")
    pd.add_argument("--channels", type=int, default=32, help="network width")
    pd.add_argument("--batch", type=int, default=4, help="batch size")
    pd.add_argument("--seed", type=int, default=0)
    pd.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    pd.set_defaults(func=_cmd_demo)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
