"""Reference equilibrium core: Anderson and fixed-point solvers and the DEQ layer.

The textbook versions, written for clarity and robustness rather than speed (the full
Anderson Gram matrix is recomputed every step, the host is synchronised every iteration);
the fast core is tested against them. docs/API.md, "Equilibrium"; docs/ALGORITHMS.md, "Anderson
acceleration" and "Implicit backward".

Conventions shared by both solvers, for a batch of B samples z of any trailing shape
(flattened per sample internally; complex z is treated as pairs of reals):

* Each solver step evaluates f once. The residual of iterate z is ``||f(z) - z||``
  (``stop="abs"``) or ``||f(z) - z|| / (||f(z)|| + REL_EPS)`` (``stop="rel"``), per sample,
  with norms taken in float64.
* A sample whose residual reaches ``tol`` is frozen: its iterate and history stop changing
  and its iteration count stops. A sample whose f(z) (or z) turns non-finite is frozen too,
  keeps its best finite iterate and is marked not converged. Nothing mixes samples, so one
  sample cannot poison another (as long as f itself treats samples independently).
* The returned z is, per sample, the iterate with the lowest residual seen.
* The solvers run under ``torch.no_grad``; gradients come from ``DEQ``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

#: eps of the relative residual ||f(z) - z|| / (||f(z)|| + REL_EPS). Tiny, so the residual
#: stays scale-free; for a fixed point at (or near) zero use stop="abs".
REL_EPS = 1e-12

#: when the bordered Anderson system cannot be solved (lam=0 with a rank-deficient history),
#: the Tikhonov weight is multiplied by this once before falling back to a fixed-point step.
_RETRY_FACTOR = 1e3

_STOPS = ("rel", "abs")
_BACKWARDS = ("ift", "jfb", "phantom")
_PHANTOM_DEFAULTS = {"k": 5, "lam": 0.5}


@dataclass
class SolverInfo:
    """Per-sample outcome of a solve; every field is a tensor of shape [B] on z0's device.

    Attributes:
        iterations: int64, evaluations of f spent on the sample, counting the one that
            converged it (or found it non-finite); ``max_iter`` when it never stopped.
        residual: float64, the stopping residual (``rel_residual`` or ``abs_residual``,
            per ``stop``) of the returned iterate; inf when no finite iterate was seen.
        converged: bool, ``residual <= tol``.
        abs_residual: float64, ``||f(z) - z||`` of the returned iterate.
        rel_residual: float64, ``||f(z) - z|| / (||f(z)|| + REL_EPS)`` of the returned iterate.
    """

    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    abs_residual: torch.Tensor
    rel_residual: torch.Tensor


def _check_option(name, value):
    """Raise ValueError naming ``name`` unless ``value`` is valid for that solver option."""
    if name in ("m", "max_iter"):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        return
    if name == "stop":
        if not isinstance(value, str) or value not in _STOPS:
            raise ValueError(f"stop must be one of {_STOPS}, got {value!r}")
        return
    real = (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))
    if name == "beta" and not (real and 0 < value <= 1):
        raise ValueError(f"beta must be a real number in (0, 1], got {value!r}")
    if name == "lam" and not (real and value >= 0):
        raise ValueError(f"lam must be a finite real number >= 0, got {value!r}")
    if name == "tol" and not (real and value > 0):
        raise ValueError(f"tol must be a finite real number > 0, got {value!r}")


def _check_problem(f, z0):
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not isinstance(z0, torch.Tensor):
        raise TypeError(f"z0 must be a torch.Tensor, got {type(z0).__name__}")
    if z0.dim() < 1 or z0.shape[0] < 1:
        raise ValueError(f"z0 must have a leading batch dimension B >= 1, got shape "
                         f"{tuple(z0.shape)}")
    if not (z0.is_floating_point() or z0.is_complex()):
        raise ValueError(f"z0 must be a floating-point or complex tensor, got {z0.dtype}")


def _flat(x):
    """[B, ...] -> [B, D] real view (complex entries become (re, im) pairs)."""
    if x.is_complex():
        x = torch.view_as_real(x.resolve_conj())
    return x.reshape(x.shape[0], -1)


def _unflat(flat, like):
    """Inverse of ``_flat``: [B, D] -> the shape and dtype of ``like``."""
    if like.is_complex():
        flat = torch.view_as_complex(flat.reshape(*like.shape, 2).contiguous())
    return flat.reshape(like.shape).to(like.dtype)


def _work_dtype(x):
    """Real dtype of the Anderson history and mixing: float32 or better."""
    real = torch.empty((), dtype=x.dtype).real.dtype if x.is_complex() else x.dtype
    return torch.promote_types(real, torch.float32)


def _evaluate(f, z):
    fz = f(z)
    if not isinstance(fz, torch.Tensor) or fz.shape != z.shape:
        got = tuple(fz.shape) if isinstance(fz, torch.Tensor) else type(fz).__name__
        raise ValueError(f"z0 has shape {tuple(z.shape)} but f(z) returned {got}; the "
                         "fixed-point map must preserve the shape of z0")
    return fz.to(z.dtype)


class _Tracker:
    """Per-sample bookkeeping shared by the solvers: residuals, best iterate, freezing."""

    def __init__(self, z0, tol, stop):
        b, dev = z0.shape[0], z0.device
        self.tol, self.stop = tol, stop
        self.best = z0.clone()
        self.abs_residual = torch.full((b,), math.inf, dtype=torch.float64, device=dev)
        self.rel_residual = self.abs_residual.clone()
        self.iterations = torch.zeros(b, dtype=torch.int64, device=dev)
        self.converged = torch.zeros(b, dtype=torch.bool, device=dev)
        self.active = torch.ones(b, dtype=torch.bool, device=dev)

    @property
    def residual(self):
        return self.rel_residual if self.stop == "rel" else self.abs_residual

    def record(self, z, fz):
        """Score iterate z (fz = f(z)) for the active samples; freeze the finished ones."""
        fz_flat = _flat(fz).double()
        abs_r = torch.linalg.vector_norm(fz_flat - _flat(z).double(), dim=1)
        fz_norm = torch.linalg.vector_norm(fz_flat, dim=1)
        rel_r = abs_r / (fz_norm + REL_EPS)
        res = rel_r if self.stop == "rel" else abs_r
        live = self.active
        finite = torch.isfinite(abs_r) & torch.isfinite(fz_norm)
        better = live & finite & (res < self.residual)
        self.best = torch.where(better.view(-1, *[1] * (z.dim() - 1)), z, self.best)
        self.abs_residual = torch.where(better, abs_r, self.abs_residual)
        self.rel_residual = torch.where(better, rel_r, self.rel_residual)
        self.iterations += live
        self.converged |= live & finite & (res <= self.tol)
        self.active = live & finite & ~self.converged

    def done(self):
        return not bool(self.active.any())

    def info(self):
        return SolverInfo(self.iterations, self.residual, self.converged,
                          self.abs_residual, self.rel_residual)


def _mixing_weights(g, lam, newest):
    """Anderson weights for residual histories ``g`` [B', n, D] (one system per sample).

    Solves [[0, 1^T], [1, G G^T + lam' I]] [mu; alpha] = [1; 0] in float64 with
    lam' = lam * mean(diag(G G^T)). A sample whose system is singular or gives non-finite
    weights retries with lam' raised by ``_RETRY_FACTOR``, then falls back to the one-hot
    weight on the newest entry (a damped fixed-point step).

    Returns:
        alpha [B', n] float64, each row summing to 1.
    """
    g = g.double()
    gram = g @ g.mT
    b, n = gram.shape[0], gram.shape[-1]
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1)
    system = gram.new_zeros(b, n + 1, n + 1)
    system[:, 0, 1:] = 1
    system[:, 1:, 0] = 1
    rhs = gram.new_zeros(b, n + 1, 1)
    rhs[:, 0] = 1
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    alpha = gram.new_zeros(b, n)
    alpha[:, newest] = 1
    pending = torch.ones(b, dtype=torch.bool, device=gram.device)
    for reg in (lam, _RETRY_FACTOR * max(lam, torch.finfo(torch.float64).eps)):
        system[:, 1:, 1:] = gram + (reg * scale)[:, None, None] * eye
        sol, status = torch.linalg.solve_ex(system, rhs)
        ok = pending & (status == 0) & torch.isfinite(sol).all(dim=(1, 2))
        alpha[ok] = sol[ok, 1:, 0]
        pending &= ~ok
        if not pending.any():
            break
    return alpha


def anderson(f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *, m: int = 5,
             beta: float = 1.0, lam: float = 1e-4, tol: float = 1e-3, max_iter: int = 50,
             stop: str = "rel") -> tuple[torch.Tensor, SolverInfo]:
    """Solve z = f(z) per sample with Anderson acceleration (type II).

    Keeps the last ``m`` iterates X_i and images F_i = f(X_i) of each sample, with
    residuals G_i = F_i - X_i, and steps to
    ``z = beta * sum_i alpha_i F_i + (1 - beta) * sum_i alpha_i X_i``, where alpha
    minimises ||sum_i alpha_i G_i||^2 + lam' ||alpha||^2 subject to sum_i alpha_i = 1,
    lam' = lam * mean(diag(G G^T)) (a Tikhonov weight scaled to the residuals, so tight
    tolerances stay reachable). The small system is solved per sample in float64 and never
    raises: a singular one falls back to a damped fixed-point step.

    Args:
        f: the map, [B, ...] -> [B, ...]; must treat samples independently.
        z0: starting point [B, ...], floating or complex.
        m: history size (>= 1).
        beta: mixing (damping) weight in (0, 1].
        lam: relative Tikhonov weight (>= 0).
        tol: stopping tolerance on the residual (> 0).
        max_iter: most evaluations of f (>= 1).
        stop: "rel" (||f(z) - z|| / (||f(z)|| + REL_EPS)) or "abs" (||f(z) - z||).

    Returns:
        (z, info): z [B, ...] the best iterate per sample, in z0's dtype, detached;
        info a ``SolverInfo``.

    Example:
        >>> z, info = anderson(lambda z: 0.5 * z + 1, torch.zeros(2, 3), tol=1e-8)
        >>> bool(info.converged.all())
        True
    """
    for name, value in (("m", m), ("beta", beta), ("lam", lam), ("tol", tol),
                        ("max_iter", max_iter), ("stop", stop)):
        _check_option(name, value)
    _check_problem(f, z0)
    with torch.no_grad():
        z = z0.detach()
        tracker = _Tracker(z, tol, stop)
        work = _work_dtype(z)
        hist_x = hist_f = None
        for k in range(max_iter):
            fz = _evaluate(f, z)
            tracker.record(z, fz)
            if k + 1 == max_iter or tracker.done():
                break
            act, slot, n = tracker.active, k % m, min(k + 1, m)
            z_flat, fz_flat = _flat(z).to(work), _flat(fz).to(work)
            if hist_x is None:
                hist_x = z_flat.new_zeros(z.shape[0], m, z_flat.shape[1])
                hist_f = torch.zeros_like(hist_x)
            hist_x[act, slot] = z_flat[act]
            hist_f[act, slot] = fz_flat[act]
            xs, fs = hist_x[act, :n], hist_f[act, :n]
            alpha = _mixing_weights(fs - xs, lam, slot).to(work).unsqueeze(1)
            mixed = (beta * (alpha @ fs) + (1 - beta) * (alpha @ xs)).squeeze(1)
            z = tracker.best.clone()
            z[act] = _unflat(mixed, z[act])
        return tracker.best, tracker.info()


def fixed_point(f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *,
                tol: float = 1e-3, max_iter: int = 50,
                stop: str = "rel") -> tuple[torch.Tensor, SolverInfo]:
    """Solve z = f(z) per sample by plain Picard iteration z <- f(z).

    Same freezing, best-iterate and non-finite rules as ``anderson``.

    Args:
        f: the map, [B, ...] -> [B, ...]; must treat samples independently.
        z0: starting point [B, ...], floating or complex.
        tol: stopping tolerance on the residual (> 0).
        max_iter: most evaluations of f (>= 1).
        stop: "rel" or "abs", as in ``anderson``.

    Returns:
        (z, info): z [B, ...] the best iterate per sample, detached; info a ``SolverInfo``.
    """
    for name, value in (("tol", tol), ("max_iter", max_iter), ("stop", stop)):
        _check_option(name, value)
    _check_problem(f, z0)
    with torch.no_grad():
        z = z0.detach()
        tracker = _Tracker(z, tol, stop)
        for k in range(max_iter):
            fz = _evaluate(f, z)
            tracker.record(z, fz)
            if k + 1 == max_iter or tracker.done():
                break
            mask = tracker.active.view(-1, *[1] * (z.dim() - 1))
            z = torch.where(mask, fz, tracker.best)
        return tracker.best, tracker.info()


_SOLVERS = {"anderson": anderson, "fixed_point": fixed_point}
_SOLVER_KEYS = {"anderson": ("m", "beta", "lam", "tol", "max_iter", "stop"),
                "fixed_point": ("tol", "max_iter", "stop")}


def _checked_kwargs(what, kwargs, allowed):
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise TypeError(f"{what} must be a dict or None, got {type(kwargs).__name__}")
    for key in kwargs:
        if key not in allowed:
            raise TypeError(f"{what}: unexpected keyword argument {key!r} "
                            f"(accepted: {', '.join(allowed) or 'none'})")
    return dict(kwargs)


def check_chunk(chunk):
    """Raise unless ``chunk`` (samples per chunk of a DEQ solve) is None or an int >= 1."""
    if chunk is None:
        return
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ValueError(f"chunk must be None (the whole batch) or an int >= 1, got {chunk!r}")


def batch_slices(batch, chunk):
    """Slices of ``range(batch)`` of at most ``chunk`` samples each (one slice if None)."""
    step = batch if chunk is None else int(chunk)
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


def cat_info(infos):
    """One ``SolverInfo`` for a batch solved in chunks (fields concatenated along B)."""
    if len(infos) == 1:
        return infos[0]
    return SolverInfo(*(torch.cat([getattr(i, name) for i in infos])
                        for name in ("iterations", "residual", "converged", "abs_residual",
                                     "rel_residual")))


class _ImplicitGradFunction(torch.autograd.Function):
    """Identity forward; backward maps the incoming g to the adjoint fixed point u.

    ``adjoint`` (a closure over the graph of one f application at z*) solves
    u = J_f(z*)^T u + g. Autograd then carries u on through that same f application to v
    and to f's parameters. The output is a copy, not a view, so callers may modify it in
    place.

    This plays the part of the usual tensor hook on z_out (Bai et al.), without its flaw:
    a hook's closure must hold z_out, which holds the hook, and that cycle runs through
    autograd's C++ graph where Python's garbage collector cannot break it, so every call's
    graph leaked. Here only this Function's node holds the closure.
    """

    @staticmethod
    def forward(ctx, z, adjoint):
        ctx.adjoint = adjoint
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "DEQ(backward='ift') does not support create_graph=True (double backward): "
                "the adjoint solve is not differentiable; use backward='phantom' instead")
        return ctx.adjoint(grad), None


class DEQ(nn.Module):
    """Equilibrium layer: z* = f(z*, v), differentiable w.r.t. v and f's parameters.

    The forward solve always runs under ``torch.no_grad`` with the chosen solver; no solver
    iterate is kept. When autograd is recording and v or a parameter of the layer requires
    grad, the output is re-attached to the graph according to ``backward``:

    * ``"ift"`` (implicit function theorem, Bai et al. 2019): returns f(z*, v) computed from
      a detached z* (so its value differs from z* by the solver residual) through an
      autograd Function whose backward solves the adjoint fixed point
      u = J_f(z*)^T u + g with the same solver (``solver_kwargs``, overridden by
      ``backward_kwargs``, e.g. ``{"tol": 1e-6, "max_iter": 100}``), each step one VJP of f
      at z* (``torch.autograd.grad`` on the kept graph). Autograd then propagates u through
      that f application: dL/dv = (df/dv)^T u, dL/dtheta = (df/dtheta)^T u. Memory kept: z*,
      v, the activations of one f application and a copy of its output (the reference
      keeps that graph; the fast core rebuilds f at z* in backward instead). Double backward (create_graph=True) is
      not supported and raises RuntimeError. The backward solve's ``SolverInfo`` is stored
      in ``last_backward_info``.
    * ``"jfb"`` (Jacobian-free backprop, Fung et al. 2022): returns f(z*, v) with z*
      detached, so u = g. Memory: one f application. No ``backward_kwargs``.
    * ``"phantom"`` (phantom gradient, Geng et al. 2021): from z = z* (detached), ``k`` times
      z = (1 - lam) z + lam f(z, v), and returns z; gradients flow through these k steps.
      ``backward_kwargs``: ``k`` int >= 1 (default 5), ``lam`` in (0, 1] (default 0.5).
      Memory: k f applications.

    Otherwise (``torch.no_grad``, or nothing requiring grad) z* is returned as is. The
    choice depends on autograd state only, not on ``self.training``, so input gradients
    in eval mode stay correct. For a plain callable f, only v's ``requires_grad`` is seen:
    wrap f in an ``nn.Module`` if it holds trainable tensors.

    Args:
        f: the map f(z, v) -> z (an ``nn.Module``, registered as a submodule, or any
            callable); must treat samples independently. If it has ``init_state(v)``, the
            solve starts there when z0 is not given.
        solver: "anderson" or "fixed_point".
        backward: "ift", "jfb" or "phantom".
        solver_kwargs: keyword arguments of the solver (e.g. ``{"tol": 1e-4, "m": 6}``).
        backward_kwargs: for "ift", solver keyword arguments overriding ``solver_kwargs``
            in the adjoint solve; for "phantom", ``k`` and ``lam``; none for "jfb".
        chunk: samples per chunk (None: the whole batch). The batch is solved and
            re-attached chunk by chunk; exact for any f that treats samples independently
            (the solvers never mix samples). This reference keeps every chunk's graph until
            backward, so chunking changes neither its results nor (much) its memory; the
            fast ``luser_fast.deq.DEQ`` is where it bounds the peak.

    Attributes:
        last_info: ``SolverInfo`` of the last forward solve.
        last_backward_info: ``SolverInfo`` of the last "ift" adjoint solve (None before).

    Shapes: v [B, ...]; z0 and the output [B, ...] (the shape f returns; v's by default).

    Example:
        >>> layer = DEQ(ShallowEquilibrium(channels=16), solver_kwargs={"tol": 1e-4})
        >>> z = layer(v)            # v [B, 1, H, W]
        >>> z.square().sum().backward()
    """

    def __init__(self, f, solver="anderson", backward="ift", solver_kwargs=None,
                 backward_kwargs=None, chunk=None):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        if not isinstance(solver, str) or solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {tuple(_SOLVERS)}, got {solver!r}")
        if not isinstance(backward, str) or backward not in _BACKWARDS:
            raise ValueError(f"backward must be one of {_BACKWARDS}, got {backward!r}")
        self.f = f
        self.solver = solver
        self.backward = backward
        keys = _SOLVER_KEYS[solver]
        self.solver_kwargs = _checked_kwargs("solver_kwargs", solver_kwargs, keys)
        allowed = {"ift": keys, "jfb": (), "phantom": tuple(_PHANTOM_DEFAULTS)}[backward]
        self.backward_kwargs = _checked_kwargs("backward_kwargs", backward_kwargs, allowed)
        if backward == "phantom":
            self.backward_kwargs = {**_PHANTOM_DEFAULTS, **self.backward_kwargs}
            lam = self.backward_kwargs["lam"]
            if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not 0 < lam <= 1:
                raise ValueError(f"lam (phantom damping) must be in (0, 1], got {lam!r}")
            k = self.backward_kwargs["k"]
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
                raise ValueError(f"k must be an int >= 1, got {k!r}")
        else:
            for name, value in self.backward_kwargs.items():
                _check_option(name, value)
        for name, value in self.solver_kwargs.items():
            _check_option(name, value)
        check_chunk(chunk)
        self.chunk = chunk
        self.last_info = None
        self.last_backward_info = None

    def extra_repr(self):
        return (f"solver={self.solver!r}, backward={self.backward!r}, "
                f"solver_kwargs={self.solver_kwargs}, backward_kwargs={self.backward_kwargs}, "
                f"chunk={self.chunk}")

    def forward(self, v: torch.Tensor, z0: torch.Tensor | None = None) -> torch.Tensor:
        """Solve z* = f(z*, v) and attach gradients as set by ``backward``.

        Args:
            v: the injected input [B, ...].
            z0: starting point; defaults to ``f.init_state(v)`` if f defines it, else
                ``zeros_like(v)``. Never differentiated (z* does not depend on it).

        Returns:
            z [B, ...]: z* (no grad), or its re-attached form (see the class docstring).
        """
        if not isinstance(v, torch.Tensor) or v.dim() < 1 or v.shape[0] < 1:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"v must be a tensor with a leading batch dimension B >= 1, "
                             f"got {shape}")
        if z0 is None:
            init = getattr(self.f, "init_state", None)
            z0 = init(v) if callable(init) else torch.zeros_like(v)
        slices = batch_slices(v.shape[0], self.chunk)
        attach = (torch.is_grad_enabled()
                  and (v.requires_grad or any(p.requires_grad for p in self.parameters())))
        backward_infos = [None] * len(slices)
        outs, infos = [], []
        for i, sl in enumerate(slices):
            z, info = self._solve(v[sl], z0[sl] if isinstance(z0, torch.Tensor) else z0)
            infos.append(info)
            outs.append(self._attach(z, v[sl], backward_infos, i) if attach else z)
        self.last_info = cat_info(infos)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _solve(self, v, z0):
        """(z*, SolverInfo) of one chunk, under no_grad."""
        with torch.no_grad():
            v_fixed = v.detach()
            if isinstance(z0, torch.Tensor):
                z0 = z0.detach()
            return _SOLVERS[self.solver](lambda z: self.f(z, v_fixed), z0, **self.solver_kwargs)

    def _attach(self, z_star, v, backward_infos, index):
        """One chunk's output re-attached to the graph as ``backward`` says (class doc)."""
        if self.backward == "jfb":
            return self.f(z_star, v)
        if self.backward == "phantom":
            k, lam = self.backward_kwargs["k"], self.backward_kwargs["lam"]
            z = z_star
            for _ in range(k):
                z = (1 - lam) * z + lam * self.f(z, v)
            return z
        z_in = z_star.detach().requires_grad_()
        z_out = self.f(z_in, v)
        return _ImplicitGradFunction.apply(
            z_out, self._adjoint_solver(z_in, z_out, backward_infos, index))

    def _adjoint_solver(self, z_in, z_out, backward_infos, index):
        """g -> u solving u = J_f(z*)^T u + g, with VJPs on the graph z_in -> z_out.

        The closure holds z_in and z_out, and only the autograd node of
        ``_ImplicitGradFunction`` holds the closure (there is no hook on z_out pointing back
        to it), so the graph is freed as soon as the output is, without reference cycles.
        With ``chunk``, each chunk has its own closure; ``last_backward_info`` is set (for
        the whole batch) once every chunk's adjoint has been solved.
        """
        solve = _SOLVERS[self.solver]
        kwargs = {**self.solver_kwargs, **self.backward_kwargs}

        def vjp(u):
            (jt_u,) = torch.autograd.grad(z_out, z_in, u, retain_graph=True,
                                          allow_unused=True)
            return torch.zeros_like(u) if jt_u is None else jt_u

        def adjoint(grad):
            u, backward_infos[index] = solve(lambda u: vjp(u) + grad, grad, **kwargs)
            if all(info is not None for info in backward_infos):
                self.last_backward_info = cat_info(backward_infos)
            return u

        return adjoint
