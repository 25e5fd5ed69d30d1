"""Shared test utilities (imported by the test modules; not a test file itself)."""
from __future__ import annotations

import torch

#: dot-product test tolerances per real dtype (DESIGN.md numerical contracts)
ADJOINT_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def randn_like_dtype(shape, dtype, generator=None, device="cpu"):
    """Standard normal tensor of `shape`; complex dtypes get independent real/imag parts."""
    if dtype.is_complex:
        real = torch.empty((), dtype=dtype).real.dtype
        re = torch.randn(shape, dtype=real, generator=generator)
        im = torch.randn(shape, dtype=real, generator=generator)
        return torch.complex(re, im).to(device)
    return torch.randn(shape, dtype=dtype, generator=generator).to(device)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product Re <a, b> (conjugating a)."""
    return torch.sum(a.conj() * b).real if a.is_complex() else torch.sum(a * b)


def adjoint_mismatch(op, x: torch.Tensor, y: torch.Tensor) -> float:
    """|<A x, y> - <x, A^H y>| / (||A x|| ||y||) -- the dot-product adjoint test."""
    ax = op(x)
    aty = op.adjoint(y)
    assert ax.shape == y.shape, (ax.shape, y.shape)
    assert aty.shape == x.shape, (aty.shape, x.shape)
    lhs, rhs = inner(ax, y), inner(x, aty)
    scale = torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(y)
    return (abs(lhs - rhs) / scale).item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()
