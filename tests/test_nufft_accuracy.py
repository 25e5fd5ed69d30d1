"""NUFFT accuracy against tol (issue 14, item 5): the error never grows as tol shrinks.

A tol sweep per precision and grid oversampling (and the default, ``oversamp=None``)
against the exact non-uniform DFT: the relative l2 error is at most
max(tol, floor) * FACTOR, where the floor is ``nufft_kernel.accuracy_floor(sigma, dtype)``
(the table in core/nufft_kernel.py), and it is non-increasing as tol shrinks. Below the
floor the kernel stops widening (before, complex64 at oversamp 1.25 went from 1e-5 at
tol 1e-4 to 0.75 at tol 1e-12) and a warning states the floor, once. Small problems:
40 x 36 images (large enough that the grid stays 1.25 N at every width reached, so the
old rule's growth shows) and a few hundred points; the module runs in seconds.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import randn_like_dtype, rel_err

from luser_fast.core import nufft_kernel
from luser_fast.ops import nufft as nufft_ops
from luser_fast.ops import nufft_type1, nufft_type2
from luser_fast.physics import NUFFT
from luser_fast.physics.nufft import pipe_density
from luser_fast.reference.nufft import NufftPlan, nudft_type1, nudft_type2, nufft_type2_ref

TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 3e-7, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12)
SIZE = (40, 36)
#: error <= max(tol, floor) * FACTOR (measured: <= 0.35 tol above the floor, <= 1.3 floor
#: at it on random data; the floors are bounds for images whose energy sits in the corners)
FACTOR = 2.0
#: slack on "non-increasing": kernels of equal estimate at the floor may differ by rounding
MONOTONE_SLACK = 1.05


def _trajectory(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    if kind == "random":
        return (2 * torch.rand(400, 2, generator=g, dtype=torch.float64) - 1) * math.pi
    spokes, samples = 13, 32
    angles = torch.arange(spokes, dtype=torch.float64) * (math.pi * (math.sqrt(5) - 1) / 2)
    radius = (torch.arange(samples, dtype=torch.float64) - samples // 2) * (2 * math.pi / samples)
    return torch.stack((radius[None] * torch.cos(angles[:, None]),
                        radius[None] * torch.sin(angles[:, None])), -1).reshape(-1, 2)


@pytest.fixture(autouse=True)
def _quiet_floor_warnings(monkeypatch):
    """Every test starts with no floor warning given (and leaves the module's set alone)."""
    monkeypatch.setattr(nufft_kernel, "_floor_warned", set())


@pytest.mark.parametrize("traj", ["random", "radial"])
@pytest.mark.parametrize("oversamp", [1.25, 2.0, None])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_error_is_bounded_and_never_grows_as_tol_shrinks(dtype, oversamp, traj):
    k = _trajectory(traj)
    g = torch.Generator().manual_seed(12)
    x = randn_like_dtype(SIZE, torch.complex128, g)
    y = randn_like_dtype((k.shape[0],), torch.complex128, g)
    exact2, exact1 = nudft_type2(x, k), nudft_type1(y, k, SIZE)
    kk = k.to(torch.float32) if dtype == torch.complex64 else k
    errors = {2: [], 1: []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for tol in TOLS:
            errors[2].append(rel_err(nufft_type2(x.to(dtype), kk, tol, oversamp)
                                     .to(torch.complex128), exact2))
            errors[1].append(rel_err(nufft_type1(y.to(dtype), kk, SIZE, tol, oversamp)
                                     .to(torch.complex128), exact1))
    for kind, errs in errors.items():
        for tol, err in zip(TOLS, errs):
            sigma = nufft_kernel.choose_kernel(tol, oversamp, dtype).oversamp
            bound = max(tol, nufft_kernel.accuracy_floor(sigma, dtype)) * FACTOR
            assert err <= bound, (kind, tol, err, bound)
        for i in range(1, len(errs)):
            assert errs[i] <= errs[i - 1] * MONOTONE_SLACK, (kind, TOLS[i], errs)


@pytest.mark.parametrize("oversamp", [1.1, 1.25, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_kernel_stops_widening_at_the_floor(dtype, oversamp):
    """As tol shrinks the width never decreases and stops at the floor's kernel; the
    estimate stays <= max(tol, floor); explicit oversamp is kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        choices = [nufft_kernel.choose_kernel(t, oversamp, dtype) for t in TOLS + (1e-15, 1e-20)]
    widths = [c.width for c in choices]
    assert widths == sorted(widths)
    floor = nufft_kernel.accuracy_floor(oversamp, dtype)
    for tol, c in zip(TOLS + (1e-15, 1e-20), choices):
        assert c.oversamp == oversamp and c.floor == floor
        assert c.estimate <= max(tol, floor)
        assert c.width <= nufft_ops.MAX_WIDTH
    assert choices[-1] == choices[-2]                   # tol far below the floor: same kernel


def test_documented_floors():
    """The table in core/nufft_kernel.py (and the public docstrings)."""
    floors = {(1.25, torch.complex64): (6e-5, 9), (1.25, torch.complex128): (5e-10, 18),
              (2.0, torch.complex64): (1e-6, 8), (2.0, torch.complex128): (1e-14, 16)}
    for (sigma, dtype), (floor, width) in floors.items():
        assert nufft_kernel.accuracy_floor(sigma, dtype) == pytest.approx(floor, rel=0.15)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert nufft_kernel.kernel_params(1e-20, sigma, dtype)[0] == width
    # where the floor is far, the precision does not matter: the kernels of before
    for tol, sigma, width in ((1e-6, 2.0, 8), (1e-3, 2.0, 5), (1e-6, 1.25, 12), (1e-3, 1.25, 7)):
        assert nufft_kernel.kernel_params(tol, sigma, torch.complex128)[0] == width
    assert nufft_kernel.kernel_params(1e-6, 2.0, torch.complex64)[0] == 8


def test_below_the_floor_warns_once_with_the_floor():
    k = _trajectory("random")
    x = randn_like_dtype((2, *SIZE), torch.complex64, torch.Generator().manual_seed(13))
    with pytest.warns(RuntimeWarning, match=r"tol=1e-09 is below the accuracy floor of "
                                            r"complex64 data at oversamp=1.25, about 6e-05"):
        nufft_type2(x, k, 1e-9, 1.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nufft_type2(x, k, 1e-10, 1.25)                        # same precision and oversamp
        nufft_type1(torch.ones(k.shape[0], dtype=torch.complex64), k, SIZE, 1e-7, 1.25)
        nufft_type2(x, k, 1e-6, 2.0)                          # at the floor: no warning
        nufft_type2(x.to(torch.complex128), k, 1e-9, 1.25)    # complex128 reaches 1e-9
        nufft_type2(x, k, 1e-3)                               # default oversamp, reachable
    with pytest.warns(RuntimeWarning, match="complex64 data at oversamp=2, about 1e-06"):
        nufft_type2(x, k, 1e-8, 2.0)
    with pytest.warns(RuntimeWarning, match="complex128 data at oversamp=1.25, about 5e-10"):
        nufft_type2_ref(x.to(torch.complex128), k, 1e-12, 1.25)


def test_default_oversamp_follows_tol_and_precision():
    rule = {(1e-2, torch.complex64): 1.25, (1e-4, torch.complex64): 1.25,
            (9e-5, torch.complex64): 2.0, (1e-6, torch.complex64): 2.0,
            (1e-3, torch.complex128): 1.25, (1e-8, torch.complex128): 1.25,
            (9e-9, torch.complex128): 2.0, (1e-12, torch.complex128): 2.0}
    for (tol, dtype), sigma in rule.items():
        assert nufft_kernel.default_oversamp(tol, dtype) == sigma
        assert nufft_kernel.choose_kernel(tol, None, dtype).oversamp == sigma
        # the default never sits below its own floor
        assert tol >= nufft_kernel.accuracy_floor(sigma, dtype) or sigma == 2.0
    # None everywhere means the rule: functions, raw ops, reference, operator
    k = _trajectory("radial")
    g = torch.Generator().manual_seed(14)
    for tol, dtype in ((1e-3, torch.complex64), (1e-6, torch.complex64),
                       (1e-6, torch.complex128), (1e-10, torch.complex128)):
        sigma = nufft_kernel.default_oversamp(tol, dtype)
        x = randn_like_dtype((1, 1, *SIZE), dtype, g)
        y = randn_like_dtype((1, 1, k.shape[0]), dtype, g)
        want2 = nufft_type2(x, k, tol, sigma)
        assert torch.equal(nufft_type2(x, k, tol), want2)
        assert torch.equal(torch.ops.luser_fast.nufft_type2(x, k, tol), want2)
        assert torch.equal(nufft_type2_ref(x, k, tol), nufft_type2_ref(x, k, tol, sigma))
        assert torch.equal(NufftPlan(k, SIZE, tol, dtype=dtype).type2(x),
                           NufftPlan(k, SIZE, tol, sigma, dtype).type2(x))
        op = NUFFT(k, SIZE, tol=tol)
        assert op.oversamp is None
        assert torch.equal(op(x), want2)
        assert torch.equal(op.adjoint(y), nufft_type1(y, k, SIZE, tol, sigma))
    # pipe_density keeps 2.0: its estimate depends on the kernel's footprint, not on tol
    assert torch.equal(pipe_density(k, SIZE), pipe_density(k, SIZE, oversamp=2.0))


def test_plan_built_for_the_other_precision_refuses_where_the_kernel_differs():
    """A reference plan runs data of either precision where both choose the same kernel;
    below complex64's floor its kernel is narrower, and a complex128 plan says so."""
    k = _trajectory("random")
    x = randn_like_dtype((1, *SIZE), torch.complex64, torch.Generator().manual_seed(15))
    NufftPlan(k, SIZE, 1e-3, dtype=torch.complex128).type2(x)        # same kernel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        plan = NufftPlan(k, SIZE, 1e-6, 1.25, dtype=torch.complex128)
        with pytest.raises(ValueError, match=r"nufft_type2: .*chosen for torch.complex128.*"
                                             r"dtype=torch.complex64"):
            plan.type2(x)
        assert NufftPlan(k, SIZE, 1e-6, 1.25, dtype=torch.complex64).type2(x).dtype == x.dtype
    with pytest.raises(ValueError, match="NufftPlan: dtype"):
        NufftPlan(k, SIZE, 1e-3, dtype=torch.float32)
