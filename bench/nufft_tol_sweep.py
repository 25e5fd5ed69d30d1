"""NUFFT accuracy against tol (issue 14, item 5): relative l2 error of type 2 and type 1
against the exact non-uniform DFT, per tol, precision, grid oversampling and trajectory,
with FINUFFT's error on the same data where it is installed.

    OMP_NUM_THREADS=1 .venv/bin/python bench/nufft_tol_sweep.py [--size 64] [--points 3000]
        [--oversamp 1.25 2.0 default] [--type 2] [--backend cpu|reference]

"default" runs without ``oversamp`` (the value the ops choose from tol and precision,
where they choose one). The exact sums run in complex128 on the complex128 copy of the
data, so a complex64 row measures the complex64 transform against the exact answer. A
script, not a test: it prints a table (one row per tol) and takes ~1 minute at 64 x 64.
"""
from __future__ import annotations

import argparse
import inspect
import math
import warnings

import torch

from luser_fast.core import nufft_kernel
from luser_fast.ops import nufft_type1, nufft_type2
from luser_fast.reference.nufft import nudft_type1, nudft_type2

TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 3e-7, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12)


def trajectory(kind: str, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return (2 * torch.rand(m, 2, generator=g, dtype=torch.float64) - 1) * math.pi
    samples = 64
    spokes = max(1, m // samples)
    angles = torch.arange(spokes, dtype=torch.float64) * (math.pi * (math.sqrt(5) - 1) / 2)
    radius = (torch.arange(samples, dtype=torch.float64) - samples // 2) * (2 * math.pi / samples)
    return torch.stack((radius[None] * torch.cos(angles[:, None]),
                        radius[None] * torch.sin(angles[:, None])), -1).reshape(-1, 2)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.to(torch.complex128)
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def finufft_err(kind: int, data: torch.Tensor, k: torch.Tensor, size, tol: float,
                oversamp, exact: torch.Tensor) -> float | None:
    try:
        import finufft
    except ImportError:
        return None
    single = data.dtype == torch.complex64
    real = "float32" if single else "float64"
    x, y = (k[:, d].numpy().astype(real) for d in (0, 1))
    opts = {} if oversamp == "default" else {"upsampfac": float(oversamp)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == 2:
                out = finufft.nufft2d2(x, y, data.numpy(), eps=tol, isign=-1, **opts)
            else:
                out = finufft.nufft2d1(x, y, data.numpy(), size, eps=tol, isign=1, **opts)
        except Exception:  # FINUFFT refuses some (tol, upsampfac)
            return math.nan
    return rel(torch.from_numpy(out), exact)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--points", type=int, default=3000)
    p.add_argument("--oversamp", nargs="+", default=["1.25", "2.0"])
    p.add_argument("--type", type=int, choices=(1, 2), default=2)
    p.add_argument("--trajs", nargs="+", default=["random", "radial"])
    p.add_argument("--dtypes", nargs="+", default=["complex64", "complex128"])
    p.add_argument("--backend", default=None)
    p.add_argument("--no-finufft", action="store_true")
    args = p.parse_args()
    size = (args.size, args.size)
    g = torch.Generator().manual_seed(1)
    takes_dtype = "dtype" in inspect.signature(nufft_kernel.kernel_params).parameters
    print(f"type {args.type}, {size[0]}x{size[1]}, relative l2 error vs the exact NUDFT "
          f"(fin: FINUFFT on the same data; w: luser_fast's kernel width)")
    for traj in args.trajs:
        k = trajectory(traj, args.points)
        m = k.shape[0]
        x128 = torch.complex(torch.randn(*size, generator=g, dtype=torch.float64),
                             torch.randn(*size, generator=g, dtype=torch.float64))
        y128 = torch.complex(torch.randn(m, generator=g, dtype=torch.float64),
                             torch.randn(m, generator=g, dtype=torch.float64))
        exact = nudft_type2(x128, k) if args.type == 2 else nudft_type1(y128, k, size)
        for dt in args.dtypes:
            dtype = getattr(torch, dt)
            data = (x128 if args.type == 2 else y128).to(dtype)
            kk = k if dtype == torch.complex128 else k.float()
            exact_dt = exact
            for os_ in args.oversamp:
                print(f"\n{traj} M={m} {dt} oversamp={os_}")
                print(f"{'tol':>8} {'err':>9} {'err/tol':>8} {'w':>3} {'fin':>9}")
                for tol in TOLS:
                    kw = {} if os_ == "default" else {"oversamp": float(os_)}
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        if args.type == 2:
                            out = nufft_type2(data, kk, tol, backend=args.backend, **kw)
                        else:
                            out = nufft_type1(data, kk, size, tol, backend=args.backend, **kw)
                    e = rel(out, exact_dt)
                    sig = float(os_) if os_ != "default" else None
                    if takes_dtype:
                        w = nufft_kernel.kernel_params(tol, sig, dtype)[0]
                    else:
                        w = nufft_kernel.kernel_params(tol, sig if sig else 2.0)[0]
                    fe = None if args.no_finufft else finufft_err(args.type, data, kk, size,
                                                                  tol, os_, exact_dt)
                    fin = "" if fe is None else f"{fe:9.2e}"
                    note = " (warned)" if caught else ""
                    print(f"{tol:8.0e} {e:9.2e} {e / tol:8.2g} {w:3d} {fin}{note}")


if __name__ == "__main__":
    main()
