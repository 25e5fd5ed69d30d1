"""The `Operator` base class shared by every physics operator.

An operator is a ``torch.nn.Module`` whose ``forward`` computes ``A x``. Geometry lives in
buffers, so ``.to(device)`` moves it. Subclasses that know their adjoint override
``adjoint``; anything else (a user's own forward model, even a nonlinear one) gets the
vector-Jacobian product from autograd, so LU and LUSER accept any differentiable forward.
"""
from __future__ import annotations

import torch
from torch import nn


class Operator(nn.Module):
    """Base class: ``forward`` (A x), ``adjoint`` (A^H y), ``normal`` (A^H A x), ``norm``.

    Subclasses implement ``forward`` and, where they can, ``adjoint`` and ``domain_shape``.

    Attributes:
        linear: True when ``forward`` is linear, so ``adjoint`` does not depend on the
            linearisation point and ``data_grad`` can use it directly.
        complex_domain: True when x is complex (MRI, NUFFT); networks then see it as two
            real channels.
    """

    linear: bool = True
    complex_domain: bool = False

    def domain_shape(self, y: torch.Tensor) -> torch.Size | None:
        """Shape of x for measurements ``y`` (None when the operator cannot tell)."""
        return None

    def domain_dtype(self, y: torch.Tensor) -> torch.dtype:
        """dtype of x for measurements ``y``."""
        if self.complex_domain:
            return y.dtype if y.is_complex() else torch.promote_types(y.dtype, torch.complex64)
        return y.real.dtype if y.is_complex() else y.dtype

    def _zero_domain(self, y: torch.Tensor) -> torch.Tensor:
        shape = self.domain_shape(y)
        if shape is None:
            raise ValueError(
                f"{type(self).__name__}.adjoint: cannot infer the domain shape from y; pass x= "
                "(a point in the domain) or define domain_shape(y)")
        return torch.zeros(shape, dtype=self.domain_dtype(y), device=y.device)

    def adjoint(self, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """A^H y, by default the autograd VJP of ``forward`` at ``x``.

        Args:
            y: measurements, the shape ``forward`` returns.
            x: linearisation point (only its shape matters for a linear operator);
                defaults to zeros of ``domain_shape(y)``.
        """
        x = self._zero_domain(y) if x is None else x
        _, vjp = torch.func.vjp(self.forward, x)
        return vjp(y)[0]

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x."""
        return self.adjoint(self.forward(x), x=x)

    def data_grad(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of 0.5 ||A(x) - y||^2 in x: J(x)^H (A(x) - y).

        For a linear operator this is ``adjoint(forward(x) - y)``; for a nonlinear one the
        VJP is taken at x. Differentiable, so it can sit inside a trained unrolled network.
        """
        if self.linear:
            return self.adjoint(self.forward(x) - y, x=x)
        ax, vjp = torch.func.vjp(self.forward, x)
        return vjp(ax - y)[0]

    def example_input(self) -> torch.Tensor | None:
        """A single-sample domain tensor (shape and dtype of x), or None if unknown."""
        return None

    @torch.no_grad()
    def norm(self, iters: int = 30, x: torch.Tensor | None = None, seed: int = 0) -> float:
        """||A||_2 by power iteration on A^H A.

        Args:
            iters: power iterations.
            x: a domain tensor fixing shape/dtype/device; defaults to ``example_input()``.
            seed: seed of the random start (deterministic result).
        """
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"norm: iters must be a positive int, got {iters!r}")
        like = self.example_input() if x is None else x
        if like is None:
            raise ValueError(f"{type(self).__name__}.norm: pass x= (a domain tensor)")
        g = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(like.shape, generator=g, dtype=like.real.dtype if like.is_complex() else like.dtype)
        if like.is_complex():
            v = torch.complex(v, torch.randn(like.shape, generator=g, dtype=v.dtype))
        v = v.to(like.device)
        v = v / torch.linalg.vector_norm(v)
        lam = 0.0
        for _ in range(iters):
            w = self.normal(v)
            lam = torch.linalg.vector_norm(w).item()
            if lam == 0.0:
                return 0.0
            v = w / lam
        return lam ** 0.5


class LinearFunction(Operator):
    """Wrap plain functions as an operator: ``LinearFunction(fwd, adj=None, linear=True)``.

    Args:
        fwd: callable x -> A x.
        adj: callable y -> A^H y; when None the adjoint comes from autograd.
        linear: set False for a nonlinear forward (its ``data_grad`` then uses the VJP at x).
        domain_shape: callable y -> shape of x, used when ``adj`` is None and no x is given.
    """

    def __init__(self, fwd, adj=None, *, linear: bool = True, domain_shape=None,
                 complex_domain: bool = False):
        super().__init__()
        if not callable(fwd):
            raise TypeError("LinearFunction: fwd must be callable")
        if adj is not None and not callable(adj):
            raise TypeError("LinearFunction: adj must be callable or None")
        self._fwd, self._adj, self._shape = fwd, adj, domain_shape
        self.linear = bool(linear)
        self.complex_domain = bool(complex_domain)

    def forward(self, x):
        return self._fwd(x)

    def domain_shape(self, y):
        return None if self._shape is None else torch.Size(self._shape(y))

    def adjoint(self, y, x=None):
        if self._adj is not None and self.linear:
            return self._adj(y)
        return super().adjoint(y, x=x)
