"""Reference Blur and MRI operators: adjointness, agreement with direct definitions, validation."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import ADJOINT_TOL, adjoint_mismatch, randn_like_dtype, rel_err
from luser_fast.physics.blur import Blur, gaussian_kernel
from luser_fast.physics.mri import MRI, fft2c, ifft2c

REAL = [torch.float32, torch.float64]
COMPLEX = [torch.complex64, torch.complex128]


def _real_tol(dtype):
    return ADJOINT_TOL[torch.empty((), dtype=dtype).real.dtype]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _conv_by_shifts(x, kernel, circular):
    """Definition: y = sum_{a,b} K[a,b] x[i - a + kh//2, j - b + kw//2], shift by shift."""
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    y = torch.zeros_like(x)
    for a in range(kh):
        for b in range(kw):
            s0, s1 = a - kh // 2, b - kw // 2
            if circular:
                shifted = torch.roll(x, shifts=(s0, s1), dims=(-2, -1))
            else:
                big = F.pad(x, (kw, kw, kh, kh))
                shifted = big[..., kh - s0:kh - s0 + h, kw - s1:kw - s1 + w]
            y = y + kernel[a, b] * shifted
    return y


# ---------------------------------------------------------------- Blur

@pytest.mark.parametrize("padding", ["circular", "zero"])
@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize("kernel_shape", [None, (5, 3), (4, 6)])
def test_blur_adjoint(padding, dtype, kernel_shape):
    g = _gen(1)
    if kernel_shape is None:
        op = Blur(sigma=1.3, padding=padding)
    else:
        op = Blur(kernel=torch.rand(kernel_shape, generator=g, dtype=torch.float64), padding=padding)
    x = randn_like_dtype((2, 3, 17, 23), dtype, g)
    y = randn_like_dtype((2, 3, 17, 23), dtype, g)
    assert adjoint_mismatch(op, x, y) < ADJOINT_TOL[dtype]


@pytest.mark.parametrize("kernel_shape", [(5, 5), (3, 7), (4, 6)])
def test_blur_circular_matches_definition_and_conv2d(kernel_shape):
    g = _gen(2)
    kernel = torch.rand(kernel_shape, generator=g, dtype=torch.float64)
    x = torch.randn(2, 1, 17, 23, generator=g, dtype=torch.float64)
    y = Blur(kernel=kernel)(x)
    assert rel_err(y, _conv_by_shifts(x, kernel, circular=True)) < 1e-13
    kh, kw = kernel_shape
    padded = F.pad(x, (kw - 1 - kw // 2, kw // 2, kh - 1 - kh // 2, kh // 2), mode="circular")
    assert rel_err(y, F.conv2d(padded, kernel.flip(0, 1)[None, None])) < 1e-13


@pytest.mark.parametrize("kernel_shape", [(5, 5), (3, 7), (4, 6)])
def test_blur_zero_matches_definition_and_conv2d(kernel_shape):
    g = _gen(3)
    kernel = torch.rand(kernel_shape, generator=g, dtype=torch.float64)
    x = torch.randn(2, 1, 17, 23, generator=g, dtype=torch.float64)
    y = Blur(kernel=kernel, padding="zero")(x)
    assert rel_err(y, _conv_by_shifts(x, kernel, circular=False)) < 1e-13
    if kernel_shape[0] % 2 and kernel_shape[1] % 2:
        ref = F.conv2d(x, kernel.flip(0, 1)[None, None], padding=(kernel_shape[0] // 2, kernel_shape[1] // 2))
        assert rel_err(y, ref) < 1e-13


def test_blur_kernel_larger_than_image_wraps():
    kernel = torch.rand(9, 9, dtype=torch.float64)
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64)
    assert rel_err(Blur(kernel=kernel)(x), _conv_by_shifts(x, kernel, circular=True)) < 1e-13
    assert rel_err(Blur(kernel=kernel, padding="zero")(x), _conv_by_shifts(x, kernel, circular=False)) < 1e-13


def test_blur_image_size_cache_any_size_and_leading_dims():
    cached = Blur(sigma=1.0, image_size=(8, 8))
    plain = Blur(sigma=1.0)
    for shape in [(8, 8), (3, 2, 8, 8), (10, 13), (1, 1, 1, 10, 13)]:
        x = torch.randn(shape)
        assert rel_err(cached(x), plain(x)) < 1e-6
        assert cached(x).shape == x.shape
    assert cached.example_input().shape == (1, 1, 8, 8)
    assert plain.example_input() is None
    y = torch.randn(2, 1, 8, 8)
    assert cached.domain_shape(y) == y.shape
    assert set(cached.state_dict()) == {"kernel"}


def test_gaussian_kernel():
    k = gaussian_kernel(1.5)
    assert k.shape == (2 * math.ceil(4.5) + 1,) * 2
    assert abs(k.sum().item() - 1) < 1e-6
    assert torch.equal(k, k.flip(0)) and torch.equal(k, k.T)
    assert k.argmax().item() == (k.shape[0] // 2) * k.shape[1] + k.shape[1] // 2
    assert gaussian_kernel(1.0, 3).shape == (3, 3)
    x = torch.full((1, 1, 12, 12), 2.0, dtype=torch.float64)
    assert rel_err(Blur(sigma=2.0)(x), x) < 1e-6


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"kernel": torch.ones(3, 3), "sigma": 1.0}, "exactly one"),
    ({"sigma": 0.0}, "sigma"),
    ({"sigma": -1.0}, "sigma"),
    ({"sigma": float("nan")}, "sigma"),
    ({"sigma": 1.0, "kernel_size": 4}, "kernel_size"),
    ({"sigma": 1.0, "kernel_size": 0}, "kernel_size"),
    ({"kernel": torch.ones(3, 3), "kernel_size": 3}, "kernel_size"),
    ({"kernel": torch.ones(3)}, "kernel"),
    ({"kernel": torch.ones(3, 3, dtype=torch.int64)}, "kernel"),
    ({"kernel": torch.full((3, 3), float("inf"))}, "kernel"),
    ({"sigma": 1.0, "padding": "reflect"}, "padding"),
    ({"sigma": 1.0, "image_size": (0, 4)}, "image_size"),
])
def test_blur_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Blur(**kwargs)


def test_blur_rejects_complex_input():
    with pytest.raises(TypeError, match="x"):
        Blur(sigma=1.0)(torch.zeros(1, 1, 4, 4, dtype=torch.complex64))


# ---------------------------------------------------------------- MRI

def _coil_maps(shape, dtype, g, normalise=False):
    maps = randn_like_dtype(shape, dtype, g)
    if normalise:
        maps = maps / torch.sqrt(torch.sum(maps.abs() ** 2, dim=-3, keepdim=True))
    return maps


@pytest.mark.parametrize("dtype", COMPLEX)
@pytest.mark.parametrize("coils", [None, "3d", "4d"])
def test_mri_adjoint(dtype, coils):
    g = _gen(4)
    h, w, b = 17, 23, 2
    mask = torch.rand(h, w, generator=g) < 0.4
    maps = None
    if coils == "3d":
        maps = _coil_maps((4, h, w), dtype, g)
    elif coils == "4d":
        maps = _coil_maps((b, 4, h, w), dtype, g)
    op = MRI(mask, coil_maps=maps)
    x = randn_like_dtype((b, 1, h, w), dtype, g)
    y = randn_like_dtype((b, op.n_coils, h, w), dtype, g)
    assert adjoint_mismatch(op, x, y) < _real_tol(dtype)


@pytest.mark.parametrize("dtype", COMPLEX)
def test_mri_full_mask_preserves_norm(dtype):
    g = _gen(5)
    h, w = 16, 15
    x = randn_like_dtype((3, 1, h, w), dtype, g)
    eps = 10 * _real_tol(dtype)
    y = MRI(torch.ones(h, w))(x)
    assert abs(torch.linalg.vector_norm(y) / torch.linalg.vector_norm(x) - 1) < eps
    op = MRI(torch.ones(h, w, dtype=torch.bool), coil_maps=_coil_maps((5, h, w), dtype, g, normalise=True))
    y = op(x)
    assert abs(torch.linalg.vector_norm(y) / torch.linalg.vector_norm(x) - 1) < eps
    assert rel_err(op.adjoint(y), x) < eps


def test_mri_centred_fft_convention():
    h, w = 6, 7
    delta = torch.zeros(h, w, dtype=torch.complex128)
    delta[h // 2, w // 2] = 1
    assert rel_err(fft2c(delta), torch.full((h, w), 1 / math.sqrt(h * w), dtype=torch.complex128)) < 1e-14
    x = torch.randn(2, h, w, dtype=torch.complex128)
    assert rel_err(ifft2c(fft2c(x)), x) < 1e-14
    # the centred spectrum at index p is the DFT at frequency p - N // 2
    direct = torch.zeros(h, w, dtype=torch.complex128)
    n0 = torch.arange(h, dtype=torch.float64) - h // 2
    n1 = torch.arange(w, dtype=torch.float64) - w // 2
    for p0 in range(h):
        for p1 in range(w):
            phase = 2 * math.pi * ((p0 - h // 2) * n0[:, None] / h + (p1 - w // 2) * n1[None, :] / w)
            direct[p0, p1] = torch.sum(x[0] * torch.exp(-1j * phase)) / math.sqrt(h * w)
    assert rel_err(fft2c(x)[0], direct) < 1e-13


def test_mri_mask_bool_equals_float_and_zeros_unsampled():
    g = _gen(6)
    mask = torch.rand(8, 9, generator=g) < 0.5
    x = randn_like_dtype((1, 1, 8, 9), torch.complex64, g)
    y = MRI(mask)(x)
    assert torch.equal(y, MRI(mask.float())(x))
    assert torch.all(y[..., ~mask] == 0)
    op = MRI(mask)
    assert op.example_input().shape == (1, 1, 8, 9) and op.example_input().dtype == torch.complex64
    assert op.domain_shape(torch.zeros(3, 1, 8, 9)) == (3, 1, 8, 9)
    assert set(op.state_dict()) == {"mask"}


def test_mri_validation():
    mask = torch.ones(8, 8)
    with pytest.raises(TypeError, match="x"):
        MRI(mask)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="x"):
        MRI(mask)(torch.zeros(1, 2, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="y"):
        MRI(mask, coil_maps=torch.ones(3, 8, 8, dtype=torch.complex64)).adjoint(
            torch.zeros(1, 2, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="coil_maps"):
        MRI(mask, coil_maps=torch.ones(3, 8, 7, dtype=torch.complex64))
    with pytest.raises(ValueError, match="coil_maps"):
        MRI(mask, coil_maps=torch.ones(8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="mask"):
        MRI(torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="mask"):
        MRI(torch.ones(8, 8, dtype=torch.complex64))
