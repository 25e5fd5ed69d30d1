"""3-D NUFFT: the reference against the exact NUDFT, the ops (nufft3_type2 / nufft3_type1)
behind the public nufft_type2 / nufft_type1, the NUFFT operator on volumes (coils, density,
Toeplitz normal), Pipe density in 3-D, gradients, opcheck, bad input and FINUFFT.

Conventions: ktraj [M, 3] radians in [-pi, pi], columns (kz, ky, kx) along (D, H, W);
type 2 is y_m = sum_n x_n exp(-i k_m . (n - N // 2)), type 1 its adjoint. Sizes are small
(a few hundred voxels and points) so the whole module runs in seconds on one core.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import ADJOINT_TOL, adjoint_mismatch, randn_like_dtype, rel_err
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import luser_fast
from luser_fast import backends
from luser_fast import reference as ref
from luser_fast.core import nufft_kernel
from luser_fast.core.operator import LinearFunction
from luser_fast.ops import nufft as nufft_ops
from luser_fast.ops import nufft_type1, nufft_type2
from luser_fast.physics import NUFFT
from luser_fast.physics.nufft import pipe_density
from luser_fast.reference.nufft import (NufftPlan, nudft_type1, nudft_type2, nufft_type1_ref,
                                        nufft_type2_ref)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:luser_fast. nufft3_type:RuntimeWarning")]

LF = torch.ops.luser_fast
#: (tol, dtype) of the accuracy tests: complex64 down to its floor, complex128 to 1e-9
ACCURACY = [(1e-3, torch.complex64), (1e-4, torch.complex64), (1e-6, torch.complex64),
            (1e-3, torch.complex128), (1e-6, torch.complex128), (1e-9, torch.complex128)]
SIZES = [(6, 7, 8), (8, 8, 10), (5, 4, 7)]


def real_tol(dtype):
    return ADJOINT_TOL[torch.empty((), dtype=dtype).real.dtype]


def random_traj3(m: int, seed: int = 0, scale: float = math.pi) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(m, 3, generator=g, dtype=torch.float64) - 1) * scale


def fibonacci_directions(n: int) -> torch.Tensor:
    """[n, 3] unit vectors spread evenly over the upper half sphere (z >= 0)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = i / n                                          # uniform in (0, 1): equal areas
    phi = i * math.pi * (3 - math.sqrt(5))
    r = torch.sqrt(1 - z * z)
    return torch.stack((z, r * torch.sin(phi), r * torch.cos(phi)), dim=-1)


def koosh_traj(spokes: int, samples: int) -> torch.Tensor:
    """3-D radial ("koosh ball") trajectory: diameters along ``spokes`` directions, radii
    2 pi (j - samples // 2) / samples; columns (kz, ky, kx)."""
    radius = 2 * math.pi * (torch.arange(samples, dtype=torch.float64) - samples // 2) / samples
    return (radius[None, :, None] * fibonacci_directions(spokes)[:, None, :]).reshape(-1, 3)


def cartesian_traj3(size) -> torch.Tensor:
    axes = [2 * math.pi * (torch.arange(n, dtype=torch.float64) - n // 2) / n for n in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


# --- the exact NUDFT ------------------------------------------------------------------------

def test_nudft3_matches_dense_sum_and_centred_fft():
    size = (3, 5, 4)
    k = random_traj3(13, 1)
    g = torch.Generator().manual_seed(1)
    x = randn_like_dtype((2, *size), torch.complex128, g)
    n = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) - s // 2 for s in size],
                                   indexing="ij"), dim=-1)                # [D, H, W, 3]
    dense = torch.exp(-1j * torch.einsum("mc,dhwc->mdhw", k, n))           # [M, D, H, W]
    assert rel_err(nudft_type2(x, k), torch.einsum("bdhw,mdhw->bm", x, dense)) < 1e-13
    v = randn_like_dtype((2, 13), torch.complex128, g)
    assert rel_err(nudft_type1(v, k, size),
                   torch.einsum("bm,mdhw->bdhw", v, dense.conj())) < 1e-13
    # on the Cartesian grid, type 2 is the centred 3-D DFT: column c <-> axis c
    dims = (-3, -2, -1)
    centred = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims),
                                 dim=dims)
    assert rel_err(nudft_type2(x, cartesian_traj3(size)), centred.reshape(2, -1)) < 1e-13


# --- accuracy against the exact sums --------------------------------------------------------

@pytest.mark.parametrize("tol, dtype", ACCURACY)
@pytest.mark.parametrize("size", SIZES[:2])
@pytest.mark.parametrize("oversamp", [None, 2.0])
def test_matches_exact_nudft(tol, dtype, size, oversamp):
    """Random points, public functions (the 3-D ops): relative l2 error <= tol, or, below
    complex64's floor, <= the floor the kernel choice states."""
    g = torch.Generator().manual_seed(2)
    k = random_traj3(300, 3)
    x = randn_like_dtype((2, *size), dtype, g)
    v = randn_like_dtype((2, k.shape[0]), dtype, g)
    choice = nufft_kernel.choose_kernel(tol, oversamp, dtype)
    bound = max(tol, choice.floor)
    x128, v128 = x.to(torch.complex128), v.to(torch.complex128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # the floor notice
        y = nufft_type2(x, k, tol, oversamp)
        img = nufft_type1(v, k, size, tol, oversamp)
    assert y.dtype == dtype and y.shape == (2, 300)
    assert img.dtype == dtype and img.shape == (2, *size)
    assert rel_err(y.to(torch.complex128), nudft_type2(x128, k)) <= bound
    assert rel_err(img.to(torch.complex128), nudft_type1(v128, k, size)) <= bound


def test_reference_plan_matches_exact_and_2d_plans_unchanged():
    g = torch.Generator().manual_seed(4)
    k = koosh_traj(20, 16)
    plan = NufftPlan(k, (7, 6, 9), tol=1e-6)
    assert plan.dims == 3 and len(plan.grid_size) == 3 and plan.weights.shape[1] == 3
    x = randn_like_dtype((3, 7, 6, 9), torch.complex128, g)
    assert rel_err(plan.type2(x), nudft_type2(x, k)) <= 1e-6
    v = randn_like_dtype((3, k.shape[0]), torch.complex128, g)
    assert rel_err(plan.type1(v), nudft_type1(v, k, (7, 6, 9))) <= 1e-6
    # spread is the transpose of interp on the 3-D grid
    grid = randn_like_dtype((2, *plan.grid_size), torch.complex128, g)
    w = randn_like_dtype((2, k.shape[0]), torch.complex128, g)
    op = LinearFunction(plan.interp, plan.spread)
    assert adjoint_mismatch(op, grid, w) < 1e-12
    assert NufftPlan(k[:, :2], (7, 6)).dims == 2


def test_nufft_matches_finufft():
    finufft = pytest.importorskip("finufft")
    size = (6, 9, 8)
    k = random_traj3(400, 5)
    g = torch.Generator().manual_seed(5)
    x = randn_like_dtype(size, torch.complex128, g)
    v = randn_like_dtype((k.shape[0],), torch.complex128, g)
    kz, ky, kx = (k[:, c].numpy().copy() for c in range(3))
    # FINUFFT's modes run from -N//2 (its default mode order); its first coordinate pairs
    # with the array's axis 0, as ours: (kz, ky, kx) along (D, H, W)
    y_fi = torch.from_numpy(finufft.nufft3d2(kz, ky, kx, x.numpy(), isign=-1, eps=1e-12))
    x_fi = torch.from_numpy(finufft.nufft3d1(kz, ky, kx, v.numpy(), size, isign=1, eps=1e-12))
    assert rel_err(nudft_type2(x, k), y_fi) < 1e-10
    for tol in (1e-3, 1e-6, 1e-9):
        assert rel_err(nufft_type2(x, k, tol), y_fi) <= tol
        assert rel_err(nufft_type1(v, k, size, tol), x_fi) <= tol


# --- adjointness ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("size", [(5, 6, 7), (7, 5, 4), (8, 8, 10)])
def test_functional_pair_is_adjoint(dtype, size):
    g = torch.Generator().manual_seed(6)
    k = random_traj3(200, 7)
    op = LinearFunction(lambda t: nufft_type2(t, k, 1e-6), lambda t: nufft_type1(t, k, size, 1e-6))
    x = randn_like_dtype((2, *size), dtype, g)
    y = randn_like_dtype((2, 200), dtype, g)
    assert adjoint_mismatch(op, x, y) < real_tol(dtype)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("coils", [None, "4d", "5d"])
@pytest.mark.parametrize("with_density", [False, True])
def test_operator_adjoint(dtype, coils, with_density):
    g = torch.Generator().manual_seed(8)
    size, b = (5, 6, 7), 2
    k = koosh_traj(24, 12)
    maps = None
    if coils == "4d":
        maps = randn_like_dtype((3, *size), dtype, g)
    elif coils == "5d":
        maps = randn_like_dtype((b, 3, *size), dtype, g)
    density = torch.rand(k.shape[0], generator=g, dtype=torch.float64) if with_density else None
    op = NUFFT(k, size, coil_maps=maps, density=density, tol=1e-6)
    assert op.dims == 3 and op.n_coils == (1 if maps is None else 3)
    x = randn_like_dtype((b, 1, *size), dtype, g)
    y = randn_like_dtype((b, op.n_coils, k.shape[0]), dtype, g)
    assert adjoint_mismatch(op, x, y) < real_tol(dtype)


def test_operator_convention_coils_and_density():
    g = torch.Generator().manual_seed(9)
    size = (4, 6, 5)
    k = random_traj3(80, 9)
    maps = randn_like_dtype((2, *size), torch.complex128, g)
    density = torch.rand(80, generator=g, dtype=torch.float64)
    x = randn_like_dtype((3, 1, *size), torch.complex128, g)
    op = NUFFT(k, size, coil_maps=maps, density=density, tol=1e-9)
    y = op(x)
    assert y.shape == (3, 2, 80)
    assert rel_err(y, density.sqrt() * nudft_type2(maps * x, k)) < 1e-9
    expected = torch.sum(maps.conj() * nudft_type1(density.sqrt() * y, k, size), dim=-4,
                         keepdim=True)
    assert rel_err(op.adjoint(y), expected) < 1e-9
    assert op.domain_shape(y) == (3, 1, *size)
    assert op.example_input().shape == (1, 1, *size)
    assert set(op.state_dict()) == {"ktraj", "coil_maps", "density"}
    assert NUFFT(k, 6).image_size == (6, 6, 6)


# --- Toeplitz normal and density --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("size", [(5, 6, 7), (6, 6, 4)])
def test_toeplitz_normal_matches_adjoint_forward(dtype, size):
    g = torch.Generator().manual_seed(10)
    k = torch.cat((koosh_traj(24, 12), random_traj3(100, 11)))
    maps = randn_like_dtype((2, *size), dtype, g)
    density = torch.rand(k.shape[0], generator=g, dtype=torch.float64)
    op = NUFFT(k, size, coil_maps=maps, density=density, tol=1e-6)
    x = randn_like_dtype((2, 1, *size), dtype, g)
    tol = 1e-5 if dtype == torch.complex64 else 1e-6
    assert op.toeplitz_kernel(dtype).shape == tuple(2 * s for s in size)
    assert rel_err(op.normal(x), op.adjoint(op(x))) <= tol
    plain = NUFFT(k, size, tol=1e-6)
    assert rel_err(plain.normal(x), plain.adjoint(plain(x))) <= tol


def test_pipe_density_cartesian_and_koosh():
    # (sides of at least 8: at 2x oversampling the points then sit at most two grid cells
    # apart, so the kernel's autocorrelation is summed finely enough to meet its integral)
    size = (8, 10, 8)
    kc = cartesian_traj3(size)
    dens = pipe_density(kc, size)
    assert torch.allclose(dens * math.prod(size), torch.ones_like(dens), rtol=2e-3)
    op = NUFFT(kc, size, density="pipe")
    assert torch.equal(op.density, dens)
    x = randn_like_dtype((1, 1, *size), torch.complex128, torch.Generator().manual_seed(12))
    assert rel_err(op.normal(x), x) < 2e-3
    # koosh ball: the weights follow the volume per sample r^2 dr dOmega / (2 pi)^3 away
    # from the centre and the edge (each diameter covers 2 pi / spokes of solid angle
    # on either side)
    spokes, samples = 240, 24
    k = koosh_traj(spokes, samples)
    dens = pipe_density(k, 12)
    r = k.norm(dim=-1)
    volume = r ** 2 * (2 * math.pi / samples) * (2 * math.pi / spokes) / (2 * math.pi) ** 3
    inner = (r > 0.7) & (r < 2.0)
    ratio = dens[inner] / volume[inner]
    assert abs(ratio.mean().item() - 1) < 0.02 and ratio.std().item() < 0.06
    for shell in r[inner].unique():                   # each radius on its own: within 4%
        assert abs((dens / volume)[r == shell].mean().item() - 1) < 0.04


# --- gradients and the op contract ----------------------------------------------------------

def test_gradcheck_in_data_and_ktraj():
    g = torch.Generator().manual_seed(13)
    k = (random_traj3(5, 14) * 0.9).requires_grad_()
    x = randn_like_dtype((1, 3, 2, 4), torch.complex128, g).requires_grad_()
    y = randn_like_dtype((2, 5), torch.complex128, g).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: LF.nufft3_type2(a, b, 1e-12), (x, k))
    assert torch.autograd.gradcheck(lambda a, b: LF.nufft3_type1(a, b, (3, 2, 4), 1e-12), (y, k))
    # the public functions: gradients in the data and ktraj against the exact NUDFT
    gy = randn_like_dtype((1, 5), torch.complex128, g)
    gx = randn_like_dtype((2, 3, 2, 4), torch.complex128, g)
    for fast, exact, inp, grad in [
        (lambda t, kk: nufft_type2(t, kk, 1e-12), nudft_type2, x, gy),
        (lambda t, kk: nufft_type1(t, kk, (3, 2, 4), 1e-12),
         lambda t, kk: nudft_type1(t, kk, (3, 2, 4)), y, gx),
    ]:
        got = torch.autograd.grad(fast(inp, k), (inp, k), grad)
        want = torch.autograd.grad(exact(inp, k), (inp, k), grad)
        assert rel_err(got[0], want[0]) < 1e-9 and rel_err(got[1], want[1]) < 1e-9


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_opcheck(dtype):
    g = torch.Generator().manual_seed(15)
    k = random_traj3(17, 16).requires_grad_()
    x = randn_like_dtype((2, 3, 4, 5), dtype, g).requires_grad_()
    y = randn_like_dtype((2, 17), dtype, g).requires_grad_()
    torch.library.opcheck(LF.nufft3_type2.default, (x, k, 1e-6, 2.0))
    torch.library.opcheck(LF.nufft3_type1.default, (y, k, (3, 4, 5), 1e-6, 2.0))
    torch.library.opcheck(LF.nufft3_type2.default, (x, k.detach()))


def test_ops_and_backends_know_the_3d_family():
    assert {"nufft3_type2", "nufft3_type1"} <= set(backends.OPS)
    for op in ("nufft3_type2", "nufft3_type1"):
        assert backends.select(op, "cpu", "reference") == "reference"
    assert nufft_ops.OPS_BY_DIMS == {2: ("nufft_type2", "nufft_type1"),
                                     3: ("nufft3_type2", "nufft3_type1")}


def test_plan_cache_keys_on_dims():
    """A 3-column trajectory never gets a 2-D plan: its key leads with the dimension; a
    build without the compiled 3-D kernels says so instead of planning."""
    k = random_traj3(30, 17)
    with pytest.raises(TypeError, match="image_size"):
        nufft_ops.plan_for(k, (8, 8))
    if nufft_ops.HAS_CPU_KERNELS_3D:
        plan = nufft_ops.plan_for(k, (6, 5, 4), 1e-4)
        assert tuple(plan.image_size) == (6, 5, 4)
        assert next(iter(nufft_ops._trajectory(k).plans))[0] == 3
    else:
        with pytest.raises(RuntimeError, match="3-D"):
            nufft_ops.plan_for(k, (6, 5, 4), 1e-4)
    k2 = k[:, :2].contiguous()
    if nufft_ops.HAS_CPU_KERNELS:
        nufft_ops.plan_for(k2, (6, 5), 1e-4)
        assert next(iter(nufft_ops._trajectory(k2).plans))[0] == 2
    assert isinstance(nufft_ops.gridding_plan(k, (6, 5, 4), 1e-4, backend="reference"),
                      NufftPlan)


def test_reference_binding_in_3d():
    g = torch.Generator().manual_seed(18)
    k = random_traj3(40, 19)
    maps = randn_like_dtype((2, 4, 5, 6), torch.complex128, g)
    rop = ref.NUFFT(k, (4, 5, 6), coil_maps=maps)
    z = randn_like_dtype((2, 1, 4, 5, 6), torch.complex128, g)
    assert torch.equal(rop(z), nufft_type2_ref(z * maps, k))
    y = rop(z)
    assert torch.equal(rop.adjoint(y),
                       torch.sum(maps.conj() * nufft_type1_ref(y, k, (4, 5, 6)), dim=-4,
                                 keepdim=True))
    fast = luser_fast.NUFFT(k, (4, 5, 6), coil_maps=maps)
    assert rel_err(fast(z), rop(z)) < 1e-12
    assert rel_err(fast.normal(z), rop.normal(z)) < 1e-12


def test_empty_trajectory_and_batch():
    k = torch.zeros(0, 3)
    image = torch.randn(2, 3, 4, 5, dtype=torch.complex128)
    for fn in (nufft_type2, nufft_type2_ref, nudft_type2):
        assert fn(image, k).shape == (2, 0)
    values = torch.zeros(2, 0, dtype=torch.complex128)
    for out in (nufft_type1(values, k, (3, 4, 5)), nufft_type1_ref(values, k, (3, 4, 5)),
                nudft_type1(values, k, (3, 4, 5))):
        assert out.shape == (2, 3, 4, 5) and not out.any()
    k = random_traj3(7, 20)
    assert nufft_type2(image[:0], k).shape == (0, 7)
    assert nufft_type1(torch.zeros(0, 7, dtype=torch.complex64), k, 3).shape == (0, 3, 3, 3)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("ktraj, problem", [
    (torch.zeros(5, 4), r"\[M, 2\] or \[M, 3\]"),
    (torch.zeros(5, 1), r"\[M, 2\] or \[M, 3\]"),
    (torch.tensor([[0.0, float("nan"), 0.0]]), "non-finite"),
    (torch.tensor([[0.0, 0.0, float("inf")]]), "non-finite"),
    (torch.tensor([[3.5, 0.0, 0.0]]), r"\[-pi, pi\]; got max \|k\| = 3.5"),
    (torch.zeros(4, 3, dtype=torch.int64), "real floating"),
])
def test_bad_ktraj(ktraj, problem):
    image = torch.zeros(1, 4, 4, 4, dtype=torch.complex64)
    values = torch.zeros(ktraj.shape[0], dtype=torch.complex64)
    calls = [lambda: NUFFT(ktraj, (4, 4, 4)), lambda: nufft_type2(image, ktraj),
             lambda: nufft_type1(values, ktraj, 4), lambda: nufft_type2_ref(image, ktraj),
             lambda: nufft_type1_ref(values, ktraj, 4), lambda: nudft_type2(image, ktraj),
             lambda: pipe_density(ktraj, 4), lambda: NufftPlan(ktraj, 4)]
    for call in calls:
        with pytest.raises(ValueError, match="ktraj") as info:
            call()
        assert info.match(problem)


def test_image_size_must_match_ktraj_columns():
    k3, k2 = random_traj3(6, 21), random_traj3(6, 21)[:, :2]
    v = torch.zeros(1, 6, dtype=torch.complex64)
    for call in (lambda: nufft_type1(v, k3, (4, 4)), lambda: NUFFT(k3, (4, 4)),
                 lambda: pipe_density(k3, (4, 4)), lambda: NufftPlan(k3, (4, 4)),
                 lambda: nudft_type1(v, k3, (4, 4)), lambda: nufft_type1_ref(v, k3, (4, 4))):
        with pytest.raises(TypeError, match=r"image_size must be an int or a triple of ints "
                                            r"\(D, H, W\) for a 3-column ktraj"):
            call()
    with pytest.raises(TypeError, match="image_size must be an int or a pair of ints"):
        nufft_type1(v, k2, (4, 4, 4))
    with pytest.raises(ValueError, match="image_size must be positive"):
        nufft_type1(v, k3, (4, 0, 4))
    # an image with fewer dims than ktraj's columns
    for fn in (nufft_type2, nufft_type2_ref, nudft_type2):
        with pytest.raises(ValueError, match="image must have at least 3 dims"):
            fn(torch.zeros(4, 4, dtype=torch.complex64), k3)
    with pytest.raises(ValueError, match=r"image must have D, H, W >= 1"):
        nufft_type2(torch.zeros(1, 0, 4, 4, dtype=torch.complex64), k3)


def test_operator_bad_input():
    k = random_traj3(10, 22)
    for maps in (torch.ones(2, 4, 4, dtype=torch.complex64),          # 2-D maps
                 torch.ones(2, 4, 4, 5, dtype=torch.complex64),       # wrong size
                 torch.ones(1, 1, 2, 4, 4, 4, dtype=torch.complex64)):
        with pytest.raises(ValueError, match=r"coil_maps must have shape \[Coils, D, H, W\]"):
            NUFFT(k, (4, 4, 4), coil_maps=maps)
    with pytest.raises(ValueError, match="density"):
        NUFFT(k, 4, density=torch.ones(9))
    op = NUFFT(k, (4, 4, 5), coil_maps=torch.ones(2, 4, 4, 5, dtype=torch.complex64))
    with pytest.raises(TypeError, match="x"):
        op(torch.zeros(1, 1, 4, 4, 5))
    with pytest.raises(ValueError, match="x must have shape"):
        op(torch.zeros(1, 1, 4, 5, 5, dtype=torch.complex64))
    with pytest.raises(ValueError, match="x must have shape"):
        op(torch.zeros(1, 4, 5, dtype=torch.complex64))
    with pytest.raises(ValueError, match="y must have shape"):
        op.adjoint(torch.zeros(1, 1, 10, dtype=torch.complex64))


def test_raw_ops_check_their_arguments():
    k3 = random_traj3(5, 23)
    x = torch.ones(1, 3, 4, 5, dtype=torch.complex64)
    v = torch.ones(1, 5, dtype=torch.complex64)
    cases = [
        (lambda: LF.nufft3_type2(x, k3[:, :2]), ValueError, r"nufft3_type2: ktraj must have "
                                                           r"shape \[M, 3\], got \(5, 2\)"),
        (lambda: LF.nufft3_type1(v, k3[:, :2], (3, 4, 5)), ValueError, r"\[M, 3\]"),
        (lambda: LF.nufft3_type2(x[0, 0], k3), ValueError, "image must have at least 3 dims"),
        (lambda: LF.nufft3_type2(x.real, k3), TypeError, "image must be a complex"),
        (lambda: LF.nufft3_type1(v[:, :4], k3, (3, 4, 5)), ValueError, "values must have shape"),
        (lambda: LF.nufft3_type1(v, k3, (3, 0, 5)), ValueError, "image_size"),
        (lambda: LF.nufft3_type2(x, k3 * 2), ValueError, r"\[-pi, pi\]"),
        (lambda: LF.nufft3_type2(x, k3, 0.5), ValueError, "tol"),
        (lambda: LF.nufft3_type2(x, k3.to("meta")), ValueError, "ktraj is on meta"),
        (lambda: LF.nufft_type2(x, k3), ValueError, r"nufft_type2: ktraj must have shape "
                                                   r"\[M, 2\], got \(5, 3\)"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


COMPLEX_AND_NOT = [torch.complex64, torch.complex128, torch.float32, torch.int64]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.integers(0, 2), max_size=2),
       size=st.tuples(st.integers(0, 5), st.integers(1, 5), st.integers(1, 5)),
       m=st.integers(0, 20), dtype=st.sampled_from(COMPLEX_AND_NOT),
       k_scale=st.sampled_from([1.0, math.pi, 3.3, math.nan]),
       k_cols=st.sampled_from([3, 3, 3, 2, 4]),
       tol=st.sampled_from([1e-2, 1e-6, 0.0]), adjoint=st.booleans())
def test_fuzz_public_functions(batch, size, m, dtype, k_scale, k_cols, tol, adjoint):
    """Any call either raises TypeError/ValueError naming an argument or matches the
    reference."""
    g = torch.Generator().manual_seed(24)
    k = (2 * torch.rand(m, k_cols, generator=g, dtype=torch.float64) - 1) * k_scale
    shape = (*batch, m) if adjoint else (*batch, *size)
    data = torch.full(shape, 1.5, dtype=torch.float64)
    data = data.to(dtype) if dtype.is_complex or dtype.is_floating_point else data.long()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if adjoint:
                out = nufft_type1(data, k, size, tol)
                want = nufft_type1_ref(data, k, size, tol)
            else:
                out = nufft_type2(data, k, tol)
                want = nufft_type2_ref(data, k, tol)
    except (TypeError, ValueError) as exc:
        assert any(name in str(exc) for name in ("image", "values", "ktraj", "image_size",
                                                 "tol")), str(exc)
        return
    assert out.shape == want.shape and out.dtype == data.dtype
    assert torch.isfinite(out).all()
    assert out.numel() == 0 or rel_err(out, want) < 1e-4 or (want.abs().max() == 0)
