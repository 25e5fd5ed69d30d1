"""The DEQ layer: one definition, with a memory-minimal implicit backward.

``DEQ`` solves z* = f(z*, v) under no_grad with a batched solver and re-attaches the
output to the graph as ``backward`` says. ``luser_fast.reference.DEQ`` is the same class
bound to the reference solvers and to the textbook backward
(``luser_fast.reference.deq.attach``), which keeps the graph of one application of f at z*
(every activation of f). Here the output comes from ``DEQFunction``, an
``autograd.Function`` that saves z* and v, nothing else, and refers to f's parameters
(which f holds anyway). Its backward rebuilds f at z* under ``enable_grad`` and:

* ``"ift"``: solves u = J_f(z*)^T u + g with the same batched solver, each step one
  vector-Jacobian product on that rebuilt graph, then returns (df/dv)^T u and
  (df/dtheta)^T u (one more VJP);
* ``"jfb"``: u = g, one VJP;
* ``"phantom"``: replays the k damped steps from z* and backpropagates g through them.

So the bytes saved per layer call are |z*| + |v|, whatever the solver's iterations or f's
depth. The rebuilt graph exists only inside the backward of one layer at a time.

``chunk=n`` bounds the peak further: the solve, the output replay and the backward each
run on n samples at a time, so f's rebuilt graph, the solver histories and f's
temporaries are those of n samples, not of the batch. The maths is unchanged (the solvers
never mix samples and parameter gradients are sums over samples), so for any f that
treats samples independently the result equals the batched one; ``chunk=1`` gives the
smallest peak, at the cost of smaller (less efficient) kernels.
"""
from __future__ import annotations

import inspect
import numbers

import torch
from torch import nn

from ..core import validate
from ..core.solver import (BACKWARDS, PHANTOM_DEFAULTS, batch_slices, cat_info,
                           check_check_every, check_chunk, check_option, checked_kwargs)
from ..reference import deq as reference_deq
from .solvers import anderson, fixed_point

__all__ = ["DEQ", "DEQFunction"]

_SOLVERS = {"anderson": anderson, "fixed_point": fixed_point}
_REFERENCE_SOLVERS = {"anderson": reference_deq.anderson,
                      "fixed_point": reference_deq.fixed_point}


def _options(solve) -> tuple:
    """The keyword options a solver takes (its keyword-only parameters)."""
    return tuple(name for name, p in inspect.signature(solve).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _check_options(kwargs: dict) -> None:
    for name, value in kwargs.items():
        if name == "check_every":
            check_check_every(value)
        else:
            check_option(name, value)


def _bound_map(f, v):
    """z -> f(z, v); uses ``f.bind(v)`` when f offers one (work on v done once per solve)."""
    bind = getattr(f, "bind", None)
    return bind(v) if callable(bind) else (lambda z: f(z, v))


class DEQFunction(torch.autograd.Function):
    """z* -> f(z*, v) (phantom: k damped steps); backward rebuilds f at z* (module doc).

    ``forward(ctx, layer, z_star, v, *params)``: ``layer`` the ``DEQ`` (its ``f``, mode and
    kwargs), z_star [B, ...] the solved equilibrium (detached), v [B, ...] the injected
    input, params f's parameters (inputs so that autograd routes their gradients). Saves
    (z_star, v) for backward. The parameters are not saved tensors: they live in f anyway,
    so saving them would only add their bytes to every saved-memory count; their version
    counters are checked instead, so an in-place update between forward and backward
    raises as it would for a saved tensor.
    """

    @staticmethod
    def forward(ctx, layer, z_star, v, *params):
        ctx.layer, ctx.params = layer, params
        ctx.versions = [p._version for p in params]
        ctx.save_for_backward(z_star, v)
        slices = batch_slices(v.shape[0], layer.chunk)
        outs = [layer._replay(_bound_map(layer.f, v[sl]), z_star[sl]) for sl in slices]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "luser_fast.deq.DEQ does not support create_graph=True (double backward): "
                "its backward rebuilds f at z* and is not itself differentiable")
        layer, params = ctx.layer, ctx.params
        z_star, v = ctx.saved_tensors
        if [p._version for p in params] != ctx.versions:
            raise RuntimeError(
                "a parameter of the DEQ's f was modified in place between forward and "
                "backward (e.g. an optimizer step before backward); the implicit backward "
                "needs the parameters the forward solved with")
        need_v = ctx.needs_input_grad[2]
        wanted = [p for p, need in zip(params, ctx.needs_input_grad[3:]) if need]
        grad_v = torch.empty_like(v) if need_v else None
        sums = [None] * len(wanted)
        infos = []
        # one chunk at a time: f's graph is rebuilt for that chunk only, so the peak holds
        # one chunk's activations; parameter gradients are sums over samples, so summing
        # the chunks' is exact
        for sl in batch_slices(v.shape[0], layer.chunk):
            gv, gp, info = _chunk_backward(layer, z_star[sl], v[sl], grad[sl], need_v, wanted)
            if need_v:
                grad_v[sl] = 0 if gv is None else gv     # None: f did not use v
            sums = [g if acc is None else (acc if g is None else acc.add_(g))
                    for acc, g in zip(sums, gp)]
            infos.append(info)
        if layer.backward == "ift":
            layer.last_backward_info = cat_info(infos)
        grad_params = iter(sums)
        grad_params = [next(grad_params) if need else None for need in ctx.needs_input_grad[3:]]
        return (None, None, grad_v, *grad_params)


def _chunk_backward(layer, z_star, v, grad, need_v, wanted):
    """(dL/dv, [dL/dtheta for ``wanted``], adjoint SolverInfo or None) of one chunk, with f
    rebuilt at that chunk's z* (the module doc)."""
    with torch.enable_grad():
        v_in = v.detach().requires_grad_(need_v)

        def f(z):
            # f(z, v) as is, not bind(v): a bound map would keep its v-only
            # intermediates alive through the whole adjoint solve, which never needs them
            return layer.f(z, v_in)

        info = None
        if layer.backward == "phantom":
            out, u = layer._replay(f, z_star), grad
        else:
            ift = layer.backward == "ift"
            z_in = z_star.detach().requires_grad_(ift)
            out = f(z_in)
            u, info = layer._adjoint(out, z_in, grad) if ift else (grad, None)
        inputs = ([v_in] if need_v else []) + wanted
        grads = list(torch.autograd.grad(out, inputs, u, allow_unused=True)) if inputs else []
    grad_v = grads.pop(0) if need_v else None
    return grad_v, grads, info


class DEQ(nn.Module):
    """Equilibrium layer: z* = f(z*, v), differentiable w.r.t. v and f's parameters.

    The forward solve always runs under ``torch.no_grad`` with the chosen solver; no solver
    iterate is kept. When autograd is recording and v or a parameter of the layer requires
    grad, the output is re-attached to the graph according to ``backward``:

    * ``"ift"`` (implicit function theorem, Bai et al. 2019): returns f(z*, v) computed from
      a detached z* (so its value differs from z* by the solver residual); its backward
      solves the adjoint fixed point u = J_f(z*)^T u + g with the same solver
      (``solver_kwargs``, overridden by ``backward_kwargs``, e.g.
      ``{"tol": 1e-6, "max_iter": 100}``), each step one VJP of f at z*, then returns
      dL/dv = (df/dv)^T u and dL/dtheta = (df/dtheta)^T u. The backward's ``SolverInfo`` is
      stored in ``last_backward_info``.
    * ``"jfb"`` (Jacobian-free backprop, Fung et al. 2022): returns f(z*, v) with z*
      detached, so u = g. No ``backward_kwargs``.
    * ``"phantom"`` (phantom gradient, Geng et al. 2021): from z = z* (detached), ``k`` times
      z = (1 - lam) z + lam f(z, v), and returns z; gradients flow through these k steps.
      ``backward_kwargs``: ``k`` int >= 1 (default 5), ``lam`` in (0, 1] (default 0.5).

    Between forward and backward this layer keeps only z* and v (``DEQFunction``): f is
    rebuilt at z* in the backward, one chunk at a time, so the bytes saved do not depend on
    the solver's iterations or f's depth. The reference binding keeps the graph of one f
    application instead. Otherwise (``torch.no_grad``, or nothing requiring grad) z* is
    returned as is; the choice depends on autograd state only, not on ``self.training``.

    Trainable tensors must be parameters of f (an ``nn.Module``): the backward sees f's
    parameters and v, not tensors a plain callable closes over. Double backward
    (``create_graph=True``) raises RuntimeError.

    Args:
        f: the map f(z, v) -> z (an ``nn.Module``, registered as a submodule, or any
            callable); must treat samples independently. If it has ``init_state(v)``, the
            solve starts there when z0 is not given; if it has ``bind(v)`` returning
            ``z -> f(z, v)``, the solves use it (e.g. to compute a z-independent injection
            once per solve).
        solver: "anderson" or "fixed_point" (``luser_fast.deq.anderson``; the solver
            defaults are m=5, beta=1, lam=1e-4, tol=1e-3, max_iter=50).
        backward: "ift", "jfb" or "phantom".
        solver_kwargs: keyword options of the solver (e.g. ``{"tol": 1e-4, "m": 6}``; the
            fast solvers also take ``check_every``, iterations between host checks).
        backward_kwargs: for "ift", solver options overriding ``solver_kwargs`` in the
            adjoint solve; for "phantom", ``k`` and ``lam``; none for "jfb".
        chunk: samples per chunk for the solve, the replay and the implicit backward
            (None: the whole batch); exact for any f that does not mix samples, and the
            smaller it is the smaller the training peak.

    Attributes:
        last_info: ``SolverInfo`` of the last forward solve.
        last_backward_info: ``SolverInfo`` of the last "ift" adjoint solve (None before).

    Shapes: v [B, ...]; z0 and the output [B, ...].

    Example:
        >>> layer = DEQ(ShallowEquilibrium(channels=16), solver_kwargs={"tol": 1e-4})
        >>> z = layer(v)            # v [B, 1, H, W]
        >>> z.square().sum().backward()
    """

    #: backend requested for every op (None: ``luser_fast.backends`` chooses); "reference"
    #: binds the reference solvers and backward
    backend: str | None = None

    def __init__(self, f, solver="anderson", backward="ift", solver_kwargs=None,
                 backward_kwargs=None, chunk=None):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        if not isinstance(solver, str) or solver not in self.solvers:
            raise ValueError(f"solver must be one of {tuple(self.solvers)}, got {solver!r}")
        if not isinstance(backward, str) or backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
        self.f = f
        self.solver = solver
        self.backward = backward
        keys = _options(self.solvers[solver])
        self.solver_kwargs = checked_kwargs("solver_kwargs", solver_kwargs, keys)
        allowed = {"ift": keys, "jfb": (), "phantom": tuple(PHANTOM_DEFAULTS)}[backward]
        self.backward_kwargs = checked_kwargs("backward_kwargs", backward_kwargs, allowed)
        if backward == "phantom":
            self.backward_kwargs = {**PHANTOM_DEFAULTS, **self.backward_kwargs}
            lam = self.backward_kwargs["lam"]
            if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not 0 < lam <= 1:
                raise ValueError(f"lam (phantom damping) must be in (0, 1], got {lam!r}")
            k = self.backward_kwargs["k"]
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise ValueError(f"k must be an int >= 1, got {k!r}")
        else:
            _check_options(self.backward_kwargs)
        _check_options(self.solver_kwargs)
        check_chunk(chunk)
        self.chunk = chunk
        self.last_info = None
        self.last_backward_info = None

    @property
    def solvers(self) -> dict:
        """name -> solver function of this binding."""
        return _REFERENCE_SOLVERS if self.backend == "reference" else _SOLVERS

    def extra_repr(self):
        return (f"solver={self.solver!r}, backward={self.backward!r}, "
                f"solver_kwargs={self.solver_kwargs}, backward_kwargs={self.backward_kwargs}, "
                f"chunk={self.chunk}")

    def forward(self, v: torch.Tensor, z0: torch.Tensor | None = None) -> torch.Tensor:
        """Solve z* = f(z*, v) and attach gradients as set by ``backward``.

        Args:
            v: the injected input [B, ...].
            z0: starting point with v's shape and device (else ValueError) and dtype
                (else TypeError);
                defaults to ``f.init_state(v)`` if f defines it, else ``zeros_like(v)``.
                Never differentiated.

        Returns:
            z [B, ...]: z* (no grad), f(z*, v) ("ift", "jfb") or k damped steps from z*
            ("phantom"), differentiable w.r.t. v and f's parameters when autograd records.
        """
        if not isinstance(v, torch.Tensor) or v.dim() < 1 or v.shape[0] < 1:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"v must be a tensor with a leading batch dimension B >= 1, "
                             f"got {shape}")
        with torch.no_grad():
            v_fixed = v.detach()
            if z0 is None:
                init = getattr(self.f, "init_state", None)
                z0 = init(v_fixed) if callable(init) else torch.zeros_like(v_fixed)
            elif isinstance(z0, torch.Tensor):
                validate.tensor_like(z0, "z0", "DEQ", shape=v.shape, dtype=v.dtype,
                                     device=v.device, what="v's")
            if isinstance(z0, torch.Tensor):
                z0 = z0.detach()
            slices = batch_slices(v_fixed.shape[0], self.chunk)
            if len(slices) == 1:
                z_star, self.last_info = self.solvers[self.solver](
                    _bound_map(self.f, v_fixed), z0, **self.solver_kwargs)
            else:
                # chunk by chunk: the solver's history and f's temporaries are one chunk's
                parts, infos = [], []
                for sl in slices:
                    z_part, info = self.solvers[self.solver](
                        _bound_map(self.f, v_fixed[sl]),
                        z0[sl] if isinstance(z0, torch.Tensor) else z0, **self.solver_kwargs)
                    parts.append(z_part)
                    infos.append(info)
                z_star = torch.cat(parts)
                self.last_info = cat_info(infos)
        params = list(self.parameters())
        if not (torch.is_grad_enabled()
                and (v.requires_grad or any(p.requires_grad for p in params))):
            return z_star
        if self.backend == "reference":
            return reference_deq.attach(self, z_star, v)
        return DEQFunction.apply(self, z_star, v, *params)

    def _replay(self, f, z_star):
        """The output from z*: f(z*) ("ift", "jfb") or k damped steps z <- (1-lam) z + lam f(z)
        ("phantom")."""
        if self.backward != "phantom":
            return f(z_star)
        k, lam = self.backward_kwargs["k"], self.backward_kwargs["lam"]
        z = z_star
        for _ in range(k):
            z = (1 - lam) * z + lam * f(z)
        return z

    def _adjoint(self, out, z_in, grad):
        """(u, SolverInfo): u solves u = J_f(z*)^T u + grad, VJPs on the graph z_in -> out
        ([B, ...] each)."""
        kwargs = {**self.solver_kwargs, **self.backward_kwargs}

        def step(u):
            (jt_u,) = torch.autograd.grad(out, z_in, u, retain_graph=True, allow_unused=True)
            return grad if jt_u is None else jt_u + grad

        return self.solvers[self.solver](step, grad, **kwargs)
