"""LUSER on the fast equilibrium core (``luser_fast.deq``).

The reference classes (``luser_fast.reference.models``) define the maths, arguments and
``state_dict`` keys; this module changes only how the regularizer's equilibrium is solved
and differentiated:

* ``ShallowEquilibrium.bind(v)`` computes the injection U v once per solve instead of once
  per solver iteration, and adds it into conv_in's output in place (one 64-channel map
  fewer at the peak);
* ``LUSER`` solves every unrolled step with the fast ``DEQ`` (batched Anderson, backward
  saving only z*, v and the parameters), optionally warm-started from the previous step's
  equilibrium.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import backends
from ..deq import DEQ
from ..ops import shallow as _shallow
from ..reference import models as _ref

__all__ = ["ShallowEquilibrium", "LUSER"]


class ShallowEquilibrium(_ref.ShallowEquilibrium):
    """The reference shallow map f(z, v) (same arguments, parameters and outputs) with
    ``bind``.

    Shapes: z, v [B, C_in, H, W] -> [B, C_in, H, W].
    """

    def bind(self, v: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """z -> f(z, v) with the injection U v [B, channels, H, W] computed once, here."""
        if self._fused(v):
            injected = _shallow.shallow_inject(v, self.inject.weight)
            return lambda z: self._fused_map(z, v, injected)
        injected = self.inject(v)
        return lambda z: self._map(z, v, injected)

    def forward(self, z, v):
        if self._fused(v):
            return self._fused_map(z, v, _shallow.shallow_inject(v, self.inject.weight))
        return self._map(z, v, self.inject(v))

    def _fused(self, x):
        """The Triton shallow map serves x's device (``LUSER_FAST_BACKEND`` / auto) and this
        architecture (3x3 convolutions, a kernel dtype)."""
        return (backends.select("shallow_map", x.device.type) == "triton"
                and x.dtype in _shallow.KERNEL_DTYPES and self.conv_in.kernel_size == (3, 3))

    def _fused_map(self, z, v, injected):
        norm = isinstance(self.norms[0], nn.GroupNorm)
        act = {nn.GELU: "gelu", nn.ReLU: "relu", nn.SiLU: "silu", nn.ELU: "elu"}[type(self.act)]
        return _shallow.shallow_map(
            z, injected, v, [self.conv_in.weight, *(c.weight for c in self.hidden),
                             self.conv_out.weight],
            [self.conv_in.bias, *(c.bias for c in self.hidden), self.conv_out.bias],
            [n.weight for n in self.norms] if norm else [],
            [n.bias for n in self.norms] if norm else [],
            self.norms[0].num_groups if norm else 1, act,
            self.norms[0].eps if norm else 1e-5)

    def _map(self, z, v, injected):
        # conv_in's output is not saved by autograd (conv saves its input and weight), so
        # adding in place is safe and saves one [B, channels, H, W] allocation.
        h = self.act(self.norms[0](self.conv_in(z).add_(injected)))
        for conv, norm in zip(self.hidden, self.norms[1:]):
            h = self.act(norm(conv(h)))
        return v + self.conv_out(h)


class LUSER(_ref.LUSER):
    """LUSER (``luser_fast.reference.LUSER``) on the fast equilibrium core.

    Same constructor arguments, defaults, ``state_dict`` keys and outputs as the reference
    (a reference checkpoint loads as is); the regularizer of each step is the fast
    ``luser_fast.deq.DEQ``, so a training step keeps z*, v and the data-term gradient per
    unrolled step and nothing of the solver or of f's activations.

    Args:
        operator, iterations, in_channels, channels, depth, share_weights, step_init,
        solver, solver_kwargs, backward, backward_kwargs, chunk: as in the reference
            (``solver_kwargs`` / ``backward_kwargs`` also accept ``check_every``); with
            ``chunk=n`` the solves and implicit backward of every step run n samples at a
            time, which bounds the training peak by n samples' worth of f's graph.
        warm_start: start the solve of step k >= 1 from the equilibrium of step k - 1
            (x_k) instead of ``init_state(v_k) = v_k``.

    Attributes:
        last_solver_info: list of ``SolverInfo``, one per unrolled step of the last call.

    Example:
        >>> model = LUSER(Radon(64, angles=60), channels=32)
        >>> x_hat = model(sinogram)       # sinogram [B, 1, 60, 91] -> x_hat [B, 1, 64, 64]
    """

    def __init__(self, operator, iterations=5, in_channels=1, channels=64, depth=4,
                 share_weights=False, step_init=-1.0, solver="anderson", solver_kwargs=None,
                 backward="ift", backward_kwargs=None, chunk=1, warm_start=False):
        # The reference LUSER.__init__ would build reference DEQs; build the shared parts
        # (operator, steps) with _Unrolled's, then the same modules in the same order (so
        # the same seed gives the same parameters) around the fast DEQ.
        _ref._Unrolled.__init__(self, operator, iterations, in_channels, share_weights,
                                step_init)
        if not isinstance(warm_start, bool):
            raise TypeError("warm_start must be a bool")
        n = 1 if share_weights else iterations
        self.regularizers = nn.ModuleList(
            [ShallowEquilibrium(in_channels, channels, depth) for _ in range(n)])
        self.deqs = [DEQ(f, solver=solver, backward=backward, solver_kwargs=solver_kwargs,
                         backward_kwargs=backward_kwargs, chunk=chunk)
                     for f in self.regularizers]
        self.warm_start = warm_start
        self.last_solver_info = []
        self._previous = None
        self._probe = None

    def forward(self, y, x0=None):
        """x_K from measurements y (see ``luser_fast.reference.LUSER``); shaped like x0."""
        self._previous = None
        try:
            return super().forward(y, x0)
        finally:
            self._previous = None

    def _regularize(self, k, v):
        deq = self.deqs[0 if self.share_weights else k]
        z0 = self._previous if self.warm_start else None
        z = deq(v, z0=z0)
        self._previous = z.detach()
        self.last_solver_info.append(deq.last_info)
        if self._probe is not None:
            self._probe.append((deq.f, v.detach(), z.detach()))
        return z

    @torch.no_grad()
    def equilibrium_diagnostics(self, y, iters=20):
        """How much each unrolled step's equilibrium iterates, on measurements y.

        Runs a forward (no gradients) and, at each step's equilibrium z*_k, estimates the
        spectral radius of J_f(z*_k) by power iteration
        (``luser_fast.deq.jacobian_spectral_radius``). A radius near 0 means the
        equilibrium is reached in one or two steps and adds no depth beyond one pass of f.

        Args:
            y: measurements [B, ...].
            iters: power iterations per step.

        Returns:
            dict: ``iterations`` [K, B] float (solver iterations per step and sample) and
            ``spectral_radius`` [K, B] float64.
        """
        from ..deq import jacobian_spectral_radius

        self._probe = []
        try:
            self(y)
            probes = self._probe
        finally:
            self._probe = None
        rho = torch.stack([jacobian_spectral_radius(lambda z, f=f, v=v: f(z, v), z, iters=iters)
                           for f, v, z in probes])
        its = torch.stack([info.iterations.float() for info in self.last_solver_info])
        return {"iterations": its, "spectral_radius": rho}
