"""Reference equilibrium core: Anderson and Picard solvers, the DEQ layer, SolverInfo.

The textbook implementation, written for clarity and robustness; the fast core is tested
against it.

Solvers take ``f`` (a callable z -> f(z), batch first, any trailing shape, flattened per
sample) and ``z0``, and return ``(z, info)``. Per sample they

* stop when the residual is <= ``tol`` (``stop="rel"``: ||f(z) - z|| / (||f(z)|| + 1e-12);
  ``stop="abs"``: ||f(z) - z||) and freeze: the sample stops changing and keeps its own
  iteration count (the number of evaluations of f it took);
* return the iterate with the lowest residual seen;
* when f(z) turns non-finite, keep the best finite iterate, freeze and report
  ``converged=False``; no quantity is shared across samples, so one bad sample never
  poisons the others.

Anderson (type II, Walker & Ni 2011): with the last n <= m iterates X_i, images F_i and
residuals G_i = F_i - X_i of a sample, the weights alpha (sum alpha = 1) minimise
||sum alpha_i G_i||^2 + lam' ||alpha||^2 through the bordered system
[[0, 1^T], [1, G G^T + lam' I]] [mu; alpha] = [1; 0], solved in float64, with
lam' = lam * mean(diag(G G^T)) (a lambda relative to the residuals' scale: an absolute one
dominates once residuals are small and stalls the solver at tight tolerances). The next
iterate is beta * sum alpha_i F_i + (1 - beta) * sum alpha_i X_i. A singular or non-finite
solve retries with lam' * 1e3 and then falls back to the damped step
beta * f(z) + (1 - beta) z for that sample; the solvers never raise on it. The full Gram
matrix is recomputed every iteration (O(m^2 D)); the fast core updates it incrementally.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SolverInfo", "anderson", "fixed_point", "DEQ"]

_EPS = 1e-12
_STOPS = ("rel", "abs")


@dataclass
class SolverInfo:
    """Per-sample outcome of a solve (every field a tensor of shape [B]).

    Attributes:
        iterations: evaluations of f each sample took (int64).
        residual: the stopping residual (rel or abs, as requested) of the returned iterate.
        converged: residual <= tol reached (bool).
        abs_residual: ||f(z) - z|| of the returned iterate.
        rel_residual: ||f(z) - z|| / (||f(z)|| + 1e-12) of the returned iterate.
    """

    iterations: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    abs_residual: torch.Tensor
    rel_residual: torch.Tensor


def _check_common(tol, max_iter, stop):
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol > 0 or not math.isfinite(tol):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if stop not in _STOPS:
        raise ValueError(f"stop must be one of {_STOPS}, got {stop!r}")


def _check_anderson(m, beta, lam):
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an int >= 1, got {m!r}")
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0 or not math.isfinite(lam):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")


def _check_z0(z0):
    if not isinstance(z0, torch.Tensor):
        raise TypeError(f"z0 must be a tensor, got {type(z0).__name__}")
    if z0.dim() < 1 or z0.shape[0] < 1:
        raise ValueError(f"z0 must have a leading batch dimension of size >= 1, got shape {tuple(z0.shape)}")
    if not (z0.is_floating_point() or z0.is_complex()):
        raise ValueError(f"z0 must be floating point or complex, got {z0.dtype}")


def _anderson_weights(X, F, lam):
    """Anderson weights [B, n] for histories X, F [B, n, D] (float64 small system)."""
    B, n, _ = X.shape
    G = (F - X).to(torch.float64 if not X.is_complex() else torch.complex128)
    gram = (G @ G.conj().transpose(1, 2)).real                            # [B, n, n]
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-300)   # [B]
    H = torch.zeros(B, n + 1, n + 1, dtype=torch.float64, device=X.device)
    H[:, 0, 1:] = 1
    H[:, 1:, 0] = 1
    rhs = torch.zeros(B, n + 1, 1, dtype=torch.float64, device=X.device)
    rhs[:, 0] = 1
    eye = torch.eye(n, dtype=torch.float64, device=X.device)
    alpha = torch.zeros(B, n, dtype=torch.float64, device=X.device)
    alpha[:, -1] = 1.0                      # the damped fixed-point step, the last resort
    todo = torch.ones(B, dtype=torch.bool, device=X.device)
    for factor in (1.0, 1e3):
        H[:, 1:, 1:] = gram + (lam * factor * scale + 1e-300)[:, None, None] * eye
        sol, status = torch.linalg.solve_ex(H, rhs)
        a = sol[:, 1:, 0]
        ok = todo & (status == 0) & torch.isfinite(a).all(dim=1)
        alpha = torch.where(ok[:, None], a, alpha)
        todo = todo & ~ok
        if not todo.any():
            break
    return alpha


def _solve(f, z0, mix, tol, max_iter, stop):
    """The shared loop of both solvers; ``mix(k, X, F, n)`` returns the next iterate [B, D]."""
    _check_z0(z0)
    B, shape = z0.shape[0], z0.shape
    x = z0.reshape(B, -1).clone()
    D = x.shape[1]
    real = x.real.dtype if x.is_complex() else x.dtype
    active = torch.ones(B, dtype=torch.bool, device=x.device)
    converged = torch.zeros_like(active)
    iterations = torch.zeros(B, dtype=torch.int64, device=x.device)
    best = x.clone()
    best_res = torch.full((B,), math.inf, dtype=real, device=x.device)
    best_abs = best_res.clone()
    best_rel = best_res.clone()
    m = getattr(mix, "m", 1)
    X = torch.zeros(B, m, D, dtype=x.dtype, device=x.device)
    F = torch.zeros_like(X)
    for k in range(max_iter):
        fx = f(x.view(shape))
        if not isinstance(fx, torch.Tensor) or fx.shape != shape:
            raise ValueError(f"f(z) must return a tensor of the shape of z0 {tuple(shape)}, "
                             f"got {getattr(fx, 'shape', type(fx).__name__)}")
        fx = fx.reshape(B, -1)
        iterations += active.to(torch.int64)
        abs_res = torch.linalg.vector_norm(fx - x, dim=1)
        rel_res = abs_res / (torch.linalg.vector_norm(fx, dim=1) + _EPS)
        res = rel_res if stop == "rel" else abs_res
        finite = torch.isfinite(fx).all(dim=1) & torch.isfinite(res)
        better = active & finite & (res < best_res)
        best = torch.where(better[:, None], x, best)
        best_res = torch.where(better, res, best_res)
        best_abs = torch.where(better, abs_res, best_abs)
        best_rel = torch.where(better, rel_res, best_rel)
        done = active & finite & (res <= tol)
        converged |= done
        active &= finite & ~done
        if not active.any() or k == max_iter - 1:
            break
        slot = k % m
        X[:, slot] = x
        F[:, slot] = torch.where(finite[:, None], fx, x)
        n = min(k + 1, m)
        # chronological order of the ring buffer, newest last
        order = [(slot - n + 1 + i) % m for i in range(n)]
        x = torch.where(active[:, None], mix(X[:, order], F[:, order]), x)
    info = SolverInfo(iterations=iterations, residual=best_res, converged=converged,
                      abs_residual=best_abs, rel_residual=best_rel)
    return best.view(shape), info


class _AndersonMix:
    def __init__(self, m, beta, lam):
        self.m, self.beta, self.lam = m, beta, lam

    def __call__(self, X, F):
        alpha = _anderson_weights(X, F, self.lam).to(X.dtype)[:, None, :]   # [B, 1, n]
        fmix = (alpha @ F)[:, 0]
        if self.beta == 1.0:
            return fmix
        return self.beta * fmix + (1 - self.beta) * (alpha @ X)[:, 0]


def _picard(X, F):
    return F[:, -1]


def anderson(f, z0, *, m=5, beta=1.0, lam=1e-4, tol=1e-3, max_iter=50, stop="rel"):
    """Solve z = f(z) by Anderson acceleration, per sample.

    Args:
        f: callable z [B, ...] -> f(z) [B, ...].
        z0: starting point [B, ...].
        m: history size.
        beta: mixing (damping) in (0, 1].
        lam: Tikhonov regularisation, relative to the mean diagonal of G G^T.
        tol: stopping tolerance on the residual chosen by ``stop``.
        max_iter: maximum evaluations of f.
        stop: "rel" or "abs" residual.

    Returns:
        (z [B, ...], SolverInfo).

    Example:
        >>> z, info = anderson(lambda z: 0.5 * z + 1, torch.zeros(2, 3), tol=1e-8)
    """
    _check_anderson(m, beta, lam)
    _check_common(tol, max_iter, stop)
    return _solve(f, z0, _AndersonMix(m, beta, lam), tol, max_iter, stop)


def fixed_point(f, z0, *, tol=1e-3, max_iter=50, stop="rel"):
    """Solve z = f(z) by plain fixed-point (Picard) iteration, per sample.

    Args and returns as ``anderson`` (without m, beta, lam).
    """
    _check_common(tol, max_iter, stop)
    return _solve(f, z0, _picard, tol, max_iter, stop)


_SOLVERS = {"anderson": anderson, "fixed_point": fixed_point}
_SOLVER_KEYS = {"anderson": ("m", "beta", "lam", "tol", "max_iter", "stop"),
                "fixed_point": ("tol", "max_iter", "stop")}
_BACKWARDS = ("ift", "jfb", "phantom")
_BACKWARD_KEYS = {"ift": _SOLVER_KEYS, "jfb": (), "phantom": ("k", "lam")}


def _check_kwargs(name, kwargs, allowed):
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise TypeError(f"{name} must be a dict or None, got {type(kwargs).__name__}")
    for key in kwargs:
        if key not in allowed:
            raise TypeError(f"{name}: unexpected keyword {key!r}; allowed: {allowed}")
    return dict(kwargs)


class DEQ(nn.Module):
    """Equilibrium layer: z* = f(z*, v), differentiable w.r.t. v and f's parameters.

    Args:
        f: module or callable (z, v) -> z. If it defines ``init_state(v)``, the solve
            starts there, else at zeros.
        solver: "anderson" or "fixed_point".
        backward: how gradients are formed --
            "ift": implicit function theorem. The forward re-attaches one step
                f(z*, v) to the graph; a hook on its output solves the adjoint fixed
                point u = J_f(z*)^T u + g with the same solver (each step one VJP of f at
                z*), and u flows into f's graph to v and the parameters. Memory: the graph
                of one f application (the fast core keeps only z*, v and the parameters).
                Double backward is not supported and raises.
            "jfb": Jacobian-free backprop (Fung et al. 2022): returns f(z*, v) with z*
                detached, so the gradient is the one step's (u = g).
            "phantom": phantom gradient (Geng et al. 2021): k damped steps
                z <- (1 - lam) z + lam f(z, v) from the detached z*, differentiated
                through; memory grows with k.
        solver_kwargs: solver arguments (m, beta, lam, tol, max_iter, stop).
        backward_kwargs: "ift": solver arguments for the adjoint solve (default: those of
            the forward); "phantom": {"k": 5, "lam": 0.5}; "jfb": none.

    Attributes:
        last_info: SolverInfo of the last forward solve.
        last_backward_info: SolverInfo of the last adjoint solve ("ift").

    Shapes: v [B, ...] -> z [B, ...] (the shape of ``f``'s state).
    """

    def __init__(self, f, solver="anderson", backward="ift", solver_kwargs=None,
                 backward_kwargs=None):
        super().__init__()
        if not callable(f):
            raise TypeError("f must be callable (z, v) -> z")
        if solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {tuple(_SOLVERS)}, got {solver!r}")
        if backward not in _BACKWARDS:
            raise ValueError(f"backward must be one of {_BACKWARDS}, got {backward!r}")
        self.f = f
        self.solver = solver
        self.backward = backward
        self.solver_kwargs = _check_kwargs("solver_kwargs", solver_kwargs, _SOLVER_KEYS[solver])
        allowed = _BACKWARD_KEYS[backward]
        allowed = allowed[solver] if isinstance(allowed, dict) else allowed
        self.backward_kwargs = _check_kwargs("backward_kwargs", backward_kwargs, allowed)
        self._validate()
        self.last_info = None
        self.last_backward_info = None

    def _validate(self):
        probe = lambda z: z  # noqa: E731 -- validates the values with one cheap call
        z = torch.zeros(1, 1)
        _SOLVERS[self.solver](probe, z, **self.solver_kwargs)
        if self.backward == "ift":
            _SOLVERS[self.solver](probe, z, **{**self.solver_kwargs, **self.backward_kwargs})
        if self.backward == "phantom":
            k = self.backward_kwargs.get("k", 5)
            lam = self.backward_kwargs.get("lam", 0.5)
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"backward_kwargs k must be an int >= 1, got {k!r}")
            if not isinstance(lam, (int, float)) or not 0 < lam <= 1:
                raise ValueError(f"backward_kwargs lam must be in (0, 1], got {lam!r}")

    def _params_require_grad(self):
        return isinstance(self.f, nn.Module) and any(p.requires_grad for p in self.f.parameters())

    def forward(self, v, z0=None):
        """Solve and return z* [B, ...]; see the class docstring for gradients."""
        if z0 is None:
            z0 = self.f.init_state(v) if hasattr(self.f, "init_state") else torch.zeros_like(v)
        solve = _SOLVERS[self.solver]
        with torch.no_grad():
            z_star, self.last_info = solve(lambda z: self.f(z, v), z0, **self.solver_kwargs)
        if not torch.is_grad_enabled() or not (v.requires_grad or self._params_require_grad()):
            return z_star
        if self.backward == "jfb":
            return self.f(z_star, v)
        if self.backward == "phantom":
            k = self.backward_kwargs.get("k", 5)
            lam = self.backward_kwargs.get("lam", 0.5)
            z = z_star
            for _ in range(k):
                z = (1 - lam) * z + lam * self.f(z, v)
            return z
        return self._ift(z_star, v, solve)

    def _ift(self, z_star, v, solve):
        z_star = z_star.detach().requires_grad_()
        fz = self.f(z_star, v)
        kwargs = {**self.solver_kwargs, **self.backward_kwargs}

        solving = []   # non-empty while the adjoint solve runs: its VJPs re-enter this hook

        def adjoint_hook(g):
            if solving or g is None:      # re-entry from our own VJPs, or an undefined grad
                return None
            if torch.is_grad_enabled():
                raise RuntimeError("DEQ backward='ift' does not support double backward "
                                   "(create_graph=True); use backward='phantom'")

            def vjp(u):
                return torch.autograd.grad(fz, z_star, u, retain_graph=True)[0] + g

            solving.append(True)
            try:
                u, self.last_backward_info = solve(vjp, g, **kwargs)
            finally:
                solving.clear()
            return u

        fz.register_hook(adjoint_hook)
        return fz
