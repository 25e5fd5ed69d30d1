"""Reference NUFFT: exact NUDFT, gridding accuracy per tol, adjointness, density, validation."""
import math

import pytest
import torch

from helpers import ADJOINT_TOL, adjoint_mismatch, randn_like_dtype, rel_err
from luser_fast.core.nufft_kernel import kernel_params
from luser_fast.core.operator import LinearFunction
from luser_fast.reference import NUFFT, pipe_density
from luser_fast.reference.nufft import (NufftPlan, nudft_type1, nudft_type2, nufft_type1_ref,
                                        nufft_type2_ref)

COMPLEX = [torch.complex64, torch.complex128]
#: (tol, dtype) pairs the accuracy tests cover: complex64 cannot resolve 1e-6
ACCURACY = [(1e-3, torch.complex64), (1e-6, torch.complex128)]
SIZES = [(16, 16), (15, 20)]


def _real_tol(dtype):
    return ADJOINT_TOL[torch.empty((), dtype=dtype).real.dtype]


def _random_traj(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(m, 2, generator=g, dtype=torch.float64) - 1) * math.pi


def _radial_traj(spokes, samples):
    angles = torch.arange(spokes, dtype=torch.float64) * math.pi / spokes
    radius = torch.linspace(-math.pi, math.pi, samples, dtype=torch.float64)
    return torch.stack([radius[None, :] * torch.cos(angles[:, None]),
                        radius[None, :] * torch.sin(angles[:, None])], dim=-1).reshape(-1, 2)


def _cartesian_traj(h, w):
    g0 = 2 * math.pi * (torch.arange(h, dtype=torch.float64) - h // 2) / h
    g1 = 2 * math.pi * (torch.arange(w, dtype=torch.float64) - w // 2) / w
    return torch.stack(torch.meshgrid(g0, g1, indexing="ij"), dim=-1).reshape(-1, 2)


TRAJS = {"random": lambda: _random_traj(900), "radial": lambda: _radial_traj(18, 48)}


# ---------------------------------------------------------------- exact NUDFT

def test_nudft_matches_dense_sum_and_fft_convention():
    h, w = 5, 7
    k = _random_traj(11, seed=1)
    x = randn_like_dtype((2, h, w), torch.complex128, torch.Generator().manual_seed(1))
    n0 = torch.arange(h, dtype=torch.float64) - h // 2
    n1 = torch.arange(w, dtype=torch.float64) - w // 2
    phase = k[:, 0, None, None] * n0[None, :, None] + k[:, 1, None, None] * n1[None, None, :]
    dense = torch.exp(-1j * phase)                                    # [M, H, W]
    assert rel_err(nudft_type2(x, k), torch.einsum("bhw,mhw->bm", x, dense)) < 1e-13
    v = randn_like_dtype((2, 11), torch.complex128, torch.Generator().manual_seed(2))
    assert rel_err(nudft_type1(v, k, (h, w)), torch.einsum("bm,mhw->bhw", v, dense.conj())) < 1e-13
    # on the Cartesian grid k = 2 pi (p - N//2) / N, type 2 is the centred DFT (axis 0 <-> H)
    kc = _cartesian_traj(h, w)
    centred = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1))), dim=(-2, -1))
    assert rel_err(nudft_type2(x, kc), centred.reshape(2, -1)) < 1e-13


@pytest.mark.parametrize("dtype", COMPLEX)
def test_nudft_pair_adjoint(dtype):
    g = torch.Generator().manual_seed(3)
    k = _random_traj(40, seed=3)
    op = LinearFunction(lambda x: nudft_type2(x, k), lambda y: nudft_type1(y, k, (9, 6)))
    x = randn_like_dtype((3, 9, 6), dtype, g)
    y = randn_like_dtype((3, 40), dtype, g)
    assert adjoint_mismatch(op, x, y) < _real_tol(dtype)


# ---------------------------------------------------------------- gridding accuracy

@pytest.mark.parametrize("tol, dtype", ACCURACY)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("oversamp", [2.0, 1.25])
@pytest.mark.parametrize("traj", sorted(TRAJS))
def test_nufft_matches_nudft(tol, dtype, size, oversamp, traj):
    g = torch.Generator().manual_seed(4)
    k = TRAJS[traj]()
    x = randn_like_dtype((2, *size), dtype, g)
    v = randn_like_dtype((2, k.shape[0]), dtype, g)
    plan = NufftPlan(k, size, tol, oversamp)
    y = plan.type2(x)
    img = plan.type1(v)
    assert y.dtype == dtype and img.dtype == dtype
    assert rel_err(y.to(torch.complex128), nudft_type2(x.to(torch.complex128), k)) <= tol
    assert rel_err(img.to(torch.complex128), nudft_type1(v.to(torch.complex128), k, size)) <= tol


def test_functional_forms_match_plan_and_batch_dims():
    k = _radial_traj(8, 20)
    x = randn_like_dtype((2, 3, 10, 9), torch.complex128, torch.Generator().manual_seed(5))
    y = nufft_type2_ref(x, k, tol=1e-6)
    assert y.shape == (2, 3, k.shape[0])
    assert torch.equal(y, NufftPlan(k, (10, 9), 1e-6).type2(x))
    assert torch.equal(nufft_type1_ref(y, k, (10, 9)), NufftPlan(k, (10, 9)).type1(y))
    # a non-contiguous image gives the same values
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not xt.is_contiguous()
    assert rel_err(nufft_type2_ref(xt, k), y) < 1e-14


def test_nufft_matches_finufft():
    finufft = pytest.importorskip("finufft")
    h, w = 15, 20
    k = _random_traj(700, seed=6)
    g = torch.Generator().manual_seed(6)
    x = randn_like_dtype((h, w), torch.complex128, g)
    v = randn_like_dtype((k.shape[0],), torch.complex128, g)
    k0, k1 = k[:, 0].numpy().copy(), k[:, 1].numpy().copy()
    # FINUFFT's modes run from -N//2 (CMCL order), its first coordinate pairs with axis 0
    y_fi = torch.from_numpy(finufft.nufft2d2(k0, k1, x.numpy(), isign=-1, eps=1e-12))
    x_fi = torch.from_numpy(finufft.nufft2d1(k0, k1, v.numpy(), (h, w), isign=1, eps=1e-12))
    for tol in (1e-3, 1e-6):
        assert rel_err(nufft_type2_ref(x, k, tol=tol), y_fi) <= tol
        assert rel_err(nufft_type1_ref(v, k, (h, w), tol=tol), x_fi) <= tol


def test_kernel_params():
    assert kernel_params(1e-6, 2.0)[0] == 8
    assert kernel_params(1e-3, 2.0)[0] == 5
    w, beta = kernel_params(1e-6, 1.25)
    assert w == 12 and beta == pytest.approx(0.97 * math.pi * 0.6 * w)
    plan = NufftPlan(_random_traj(5), (15, 20), tol=1e-6, oversamp=1.25)
    assert plan.grid_size == (24, 30)


@pytest.mark.parametrize("fn", ["type2", "type1"])
def test_nufft_gradcheck(fn):
    k = _random_traj(7, seed=7)
    plan = NufftPlan(k, (5, 4), tol=1e-6)
    if fn == "type2":
        inp = torch.randn(2, 5, 4, dtype=torch.complex128, requires_grad=True)
    else:
        inp = torch.randn(2, 7, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(getattr(plan, fn), (inp,))


# ---------------------------------------------------------------- NUFFT operator

@pytest.mark.parametrize("dtype", COMPLEX)
@pytest.mark.parametrize("coils", [None, "3d", "4d"])
@pytest.mark.parametrize("with_density", [False, True])
def test_nufft_operator_adjoint(dtype, coils, with_density):
    g = torch.Generator().manual_seed(8)
    h, w, b = 12, 9, 2
    k = _radial_traj(10, 24)
    maps = None
    if coils == "3d":
        maps = randn_like_dtype((3, h, w), dtype, g)
    elif coils == "4d":
        maps = randn_like_dtype((b, 3, h, w), dtype, g)
    density = pipe_density(k, (h, w), iters=3) if with_density else None
    op = NUFFT(k, (h, w), coil_maps=maps, density=density, tol=1e-6)
    x = randn_like_dtype((b, 1, h, w), dtype, g)
    y = randn_like_dtype((b, op.n_coils, k.shape[0]), dtype, g)
    assert adjoint_mismatch(op, x, y) < _real_tol(dtype)


def test_nufft_operator_density_and_coils_convention():
    g = torch.Generator().manual_seed(9)
    h, w = 10, 11
    k = _random_traj(60, seed=9)
    maps = randn_like_dtype((2, h, w), torch.complex128, g)
    density = torch.rand(60, generator=g, dtype=torch.float64)
    x = randn_like_dtype((3, 1, h, w), torch.complex128, g)
    op = NUFFT(k, (h, w), coil_maps=maps, density=density, tol=1e-6)
    y = op(x)
    assert y.shape == (3, 2, 60)
    assert rel_err(y, density.sqrt() * nudft_type2(maps * x, k)) < 1e-6
    raw = randn_like_dtype((3, 2, 60), torch.complex128, g)
    assert torch.equal(op.compensate(raw), raw * density.sqrt())
    expected = torch.sum(maps.conj() * nudft_type1(density.sqrt() * y, k, (h, w)), dim=-3, keepdim=True)
    assert rel_err(op.adjoint(y), expected) < 1e-6
    assert op.domain_shape(y) == (3, 1, h, w)
    assert op.example_input().shape == (1, 1, h, w)
    assert set(op.state_dict()) == {"ktraj", "coil_maps", "density"}
    assert set(NUFFT(k, (h, w)).state_dict()) == {"ktraj"}


def test_pipe_density_cartesian_and_radial():
    h, w = 16, 12
    kc = _cartesian_traj(h, w)
    dens = pipe_density(kc, (h, w))
    assert torch.allclose(dens * h * w, torch.ones_like(dens), rtol=2e-3)
    op = NUFFT(kc, (h, w), density=dens)
    x = randn_like_dtype((1, 1, h, w), torch.complex128, torch.Generator().manual_seed(10))
    assert rel_err(op.normal(x), x) < 2e-3
    # radial: weights follow the ramp |k| dk dtheta / (2 pi)^2 away from the centre and edge
    spokes, samples = 48, 48
    angles = torch.arange(spokes, dtype=torch.float64) * math.pi / spokes
    radius = 2 * math.pi * (torch.arange(samples, dtype=torch.float64) - samples // 2) / samples
    kr = torch.stack([radius[None, :] * torch.cos(angles[:, None]),
                      radius[None, :] * torch.sin(angles[:, None])], dim=-1).reshape(-1, 2)
    dens = pipe_density(kr, (24, 24))
    r = kr.norm(dim=-1)
    ramp = (2 * math.pi / samples) * (math.pi / spokes) * r / (2 * math.pi) ** 2
    inner = (r > 0.3) & (r < 2.5)
    ratio = dens[inner] / ramp[inner]
    assert abs(ratio.mean().item() - 1) < 0.02 and ratio.std().item() < 0.02


# ---------------------------------------------------------------- validation

def test_empty_trajectory_gives_empty_results():
    """One rule for every NUFFT entry point: M = 0 is a valid (empty) trajectory."""
    k = torch.zeros(0, 2)
    image = torch.randn(2, 4, 5, dtype=torch.complex128)
    for fn in (nufft_type2_ref, nudft_type2):
        assert fn(image, k).shape == (2, 0)
    values = torch.zeros(2, 0, dtype=torch.complex128)
    for out in (nufft_type1_ref(values, k, (4, 5)), nudft_type1(values, k, (4, 5))):
        assert out.shape == (2, 4, 5) and not out.any()
    assert NUFFT(k, (4, 5))(image[:, None]).shape == (2, 1, 0)


@pytest.mark.parametrize("ktraj, problem", [
    (torch.zeros(5, 4), "shape"),   # [M, 3] is a 3-D trajectory (test_nufft3d.py)
    (torch.zeros(5), "shape"),
    (torch.tensor([[0.0, float("nan")]]), "non-finite"),
    (torch.tensor([[0.0, float("inf")]]), "non-finite"),
    (torch.tensor([[0.0, 3.5]]), r"\[-pi, pi\]; got max \|k\| = 3.5"),
    (torch.zeros(4, 2, dtype=torch.int64), "real floating"),
])
def test_bad_ktraj(ktraj, problem):
    image = torch.zeros(4, 4, dtype=torch.complex64)
    values = torch.zeros(max(1, ktraj.shape[0]), dtype=torch.complex64)
    for call in (lambda: NUFFT(ktraj, (4, 4)), lambda: nufft_type2_ref(image, ktraj),
                 lambda: nufft_type1_ref(values, ktraj, 4), lambda: nudft_type2(image, ktraj)):
        with pytest.raises(ValueError, match="ktraj") as info:
            call()
        assert info.match(problem)


def test_float32_pi_is_in_range():
    k = torch.tensor([[math.pi, -math.pi], [-math.pi, math.pi]], dtype=torch.float32)
    assert NUFFT(k, (6, 6))(torch.ones(1, 1, 6, 6, dtype=torch.complex64)).shape == (1, 1, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"tol": 0.0}, "tol"),
    ({"tol": 0.5}, "tol"),
    ({"tol": -1e-3}, "tol"),
    ({"oversamp": 1.0}, "oversamp"),
    ({"oversamp": float("inf")}, "oversamp"),
    ({"image_size": (0, 8)}, "image_size"),
    ({"coil_maps": torch.ones(2, 8, 7, dtype=torch.complex64)}, "coil_maps"),
    ({"coil_maps": torch.ones(8, 8, dtype=torch.complex64)}, "coil_maps"),
    ({"density": torch.ones(9)}, "density"),
    ({"density": -torch.ones(10)}, "density"),
    ({"density": torch.full((10,), float("nan"))}, "density"),
])
def test_nufft_operator_validation(kwargs, match):
    """Values out of range: ValueError naming the argument (wrong types are TypeErrors,
    ``test_nufft_operator_type_errors``)."""
    args = {"ktraj": _random_traj(10), "image_size": (8, 8), **kwargs}
    with pytest.raises(ValueError, match=match):
        NUFFT(**args)


def test_nufft_operator_type_errors():
    for kwargs in ({"image_size": (8, 8, 8)}, {"image_size": 2.5}, {"image_size": None},
                   {"tol": True}, {"oversamp": "2"}):
        args = {"ktraj": _random_traj(10), "image_size": (8, 8), **kwargs}
        with pytest.raises(TypeError, match=next(iter(kwargs))):
            NUFFT(**args)


def test_nufft_operator_input_checks():
    op = NUFFT(_random_traj(10), (8, 8), coil_maps=torch.ones(2, 8, 8, dtype=torch.complex64))
    with pytest.raises(TypeError, match="x"):
        op(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="x"):
        op(torch.zeros(1, 1, 8, 9, dtype=torch.complex64))
    with pytest.raises(ValueError, match="y"):
        op.adjoint(torch.zeros(1, 1, 10, dtype=torch.complex64))
    with pytest.raises(TypeError, match="image"):
        nufft_type2_ref(torch.zeros(8, 8), _random_traj(10))
    with pytest.raises(ValueError, match="iters"):
        pipe_density(_random_traj(10), 8, iters=0)
