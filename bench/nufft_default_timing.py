"""NUFFT defaults against FINUFFT, and the cost of the plan cache's value check (issue 14,
items 4 and 5). Prints two tables; writes nothing.

1. Type 2 (and type 1) at tol 1e-3 on the benchmark problem (bench/test_bench_nufft.py:
   256 x 256, golden-angle radial 402 x 256 = 102,912 points, 8 coils, complex64) with
   ``oversamp`` left to its default, with the old default 2.0 and with 1.25, against
   FINUFFT's ``Plan.execute`` (setpts once), in interleaved rounds in one process:
   medians and the ratio to FINUFFT.
2. The plan cache's value check (``torch.equal`` of ktraj with the copy its plans were
   built from) on that trajectory in float32 and float64, against one type-2 transform
   of a 64 x 64 and a 256 x 256 image (1 and 8 coils) and against building the plan
   (what dropping the cache would cost per call).

    OMP_NUM_THREADS=2 .venv/bin/python bench/nufft_default_timing.py [--threads 2] [--rounds 15]
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import torch

from luser_fast.core import nufft_kernel
from luser_fast.ops import nufft as nufft_ops
from luser_fast.ops import nufft_type1, nufft_type2


def golden_angle_radial(spokes: int = 402, samples: int = 256) -> torch.Tensor:
    angles = torch.arange(spokes, dtype=torch.float64) * (math.pi * (math.sqrt(5) - 1) / 2)
    radius = (torch.arange(samples, dtype=torch.float64) - samples // 2) * (2 * math.pi / samples)
    return torch.stack((radius[None] * torch.cos(angles[:, None]),
                        radius[None] * torch.sin(angles[:, None])), -1).reshape(-1, 2).float()


def interleaved(calls: dict, rounds: int) -> dict:
    """Median seconds per call, rounds interleaved so that load hits every call alike, in
    a new random order each round: a call right after FINUFFT's runs slower (its OpenMP
    threads still spin), which a fixed order would charge to one call every time."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    rng = random.Random(0)
    names = list(calls)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def versus_finufft(k: torch.Tensor, threads: int, rounds: int, tol: float = 1e-3) -> None:
    from test_bench_nufft import finufft_plans   # bench/ is this script's folder

    h = w = 256
    coils = 8
    g = torch.Generator().manual_seed(0)
    image = torch.complex(torch.randn(coils, h, w, generator=g), torch.randn(coils, h, w, generator=g))
    values = torch.complex(torch.randn(coils, k.shape[0], generator=g),
                           torch.randn(coils, k.shape[0], generator=g))
    p2, p1 = finufft_plans(k, (h, w), coils, tol, threads)
    default = nufft_kernel.default_oversamp(tol, torch.complex64)
    calls = {
        "type2 default": lambda: nufft_type2(image, k, tol),
        "type2 oversamp=2.0": lambda: nufft_type2(image, k, tol, 2.0),
        "type2 oversamp=1.25": lambda: nufft_type2(image, k, tol, 1.25),
        "type2 FINUFFT": lambda: p2.execute(image.numpy()),
        "type1 default": lambda: nufft_type1(values, k, (h, w), tol),
        "type1 oversamp=2.0": lambda: nufft_type1(values, k, (h, w), tol, 2.0),
        "type1 oversamp=1.25": lambda: nufft_type1(values, k, (h, w), tol, 1.25),
        "type1 FINUFFT": lambda: p1.execute(values.numpy()),
    }
    med = interleaved(calls, rounds)
    print(f"\n{h}x{w}, {k.shape[0]} points, {coils} coils, complex64, tol {tol:g}, "
          f"{threads} thread(s), median of {rounds} interleaved rounds "
          f"(default oversamp = {default:g})")
    for name, t in med.items():
        kind = name.split()[0]
        ratio = t / med[f"{kind} FINUFFT"]
        print(f"  {name:22s} {t * 1e3:8.2f} ms   {ratio:5.2f}x FINUFFT")


def cache_check_cost(k32: torch.Tensor, rounds: int) -> None:
    print(f"\nplan cache value check, {k32.shape[0]} points (median of {rounds * 10})")
    for k in (k32, k32.double()):
        copy = k.clone()
        check = interleaved({"check": lambda: torch.equal(k, copy)}, rounds * 10)["check"]
        build = interleaved({"plan": lambda: nufft_ops.plan_for(k.clone(), (256, 256), 1e-3,
                                                                dtype=torch.complex64)},
                            max(3, rounds // 3))["plan"]
        print(f"  ktraj {str(k.dtype):14s} check {check * 1e6:7.1f} us; building the plan "
              f"(256 x 256, tol 1e-3) {build * 1e3:7.2f} ms")
        for size, coils in ((64, 1), (64, 8), (256, 1), (256, 8)):
            x = torch.randn(coils, size, size, dtype=torch.complex64)
            t = interleaved({"t2": lambda: nufft_type2(x, k, 1e-3)}, rounds)["t2"]
            print(f"    type 2 {size}x{size} x {coils} coil(s), tol 1e-3: {t * 1e3:7.2f} ms; "
                  f"check = {100 * check / t:4.1f}% of it")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--skip-finufft", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    k = golden_angle_radial()
    if not args.skip_finufft:
        versus_finufft(k, args.threads, args.rounds)
    cache_check_cost(k, args.rounds)


if __name__ == "__main__":
    main()
