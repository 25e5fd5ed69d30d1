"""Reference equilibrium core: Anderson and fixed-point solvers and the graph-keeping
implicit backward.

The textbook versions, written for clarity and robustness rather than speed (the full
Anderson Gram matrix is recomputed every step, the host is synchronised every iteration);
the fast core is tested against them. ``DEQ`` (``luser_fast/deq/layer.py``) is one class;
the reference binds it to these solvers and to ``attach``, which keeps the graph of one
application of f at z* (the textbook implicit backward) where the fast layer rebuilds it. docs/API.md, "Equilibrium"; docs/ALGORITHMS.md, "Anderson
acceleration" and "Implicit backward".

The solvers follow the contracts of ``luser_fast/core/solver.py`` (residuals, freezing,
best iterate, non-finite samples).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..core.solver import (RETRY_FACTOR, SolverInfo, Tracker, batch_slices, cat_info,
                          check_solver_args, evaluate, flat, unflat, work_dtype)

__all__ = ["anderson", "fixed_point", "mixing_weights", "attach"]

def mixing_weights(g, lam, newest):
    """Anderson weights for residual histories ``g`` [B', n, D] (one system per sample).

    Solves [[0, 1^T], [1, G G^T + lam' I]] [mu; alpha] = [1; 0] in float64 with
    lam' = lam * mean(diag(G G^T)). A sample whose system is singular or gives non-finite
    weights retries with lam' raised by ``RETRY_FACTOR``, then falls back to the one-hot
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
    for reg in (lam, RETRY_FACTOR * max(lam, torch.finfo(torch.float64).eps)):
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
        f, z0, m, beta, lam, tol, max_iter, stop: as in ``luser_fast.deq.anderson`` (the
            fast solver, which adds ``check_every``).

    Returns:
        (z, info): z [B, ...] the best iterate per sample, in z0's dtype, detached;
        info a ``SolverInfo``.
    """
    check_solver_args(f, z0, m=m, beta=beta, lam=lam, tol=tol, max_iter=max_iter, stop=stop)
    with torch.no_grad():
        z = z0.detach()
        tracker = Tracker(z, tol, stop)
        work = work_dtype(z)
        hist_x = hist_f = None
        for k in range(max_iter):
            fz = evaluate(f, z)
            tracker.record(z, fz)
            if k + 1 == max_iter or tracker.done():
                break
            act, slot, n = tracker.active, k % m, min(k + 1, m)
            z_flat, fz_flat = flat(z).to(work), flat(fz).to(work)
            if hist_x is None:
                hist_x = z_flat.new_zeros(z.shape[0], m, z_flat.shape[1])
                hist_f = torch.zeros_like(hist_x)
            hist_x[act, slot] = z_flat[act]
            hist_f[act, slot] = fz_flat[act]
            xs, fs = hist_x[act, :n], hist_f[act, :n]
            alpha = mixing_weights(fs - xs, lam, slot).to(work).unsqueeze(1)
            mixed = (beta * (alpha @ fs) + (1 - beta) * (alpha @ xs)).squeeze(1)
            z = tracker.best.clone()
            z[act] = unflat(mixed, z[act])
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
    check_solver_args(f, z0, tol=tol, max_iter=max_iter, stop=stop)
    with torch.no_grad():
        z = z0.detach()
        tracker = Tracker(z, tol, stop)
        for k in range(max_iter):
            fz = evaluate(f, z)
            tracker.record(z, fz)
            if k + 1 == max_iter or tracker.done():
                break
            mask = tracker.active.view(-1, *[1] * (z.dim() - 1))
            z = torch.where(mask, fz, tracker.best)
        return tracker.best, tracker.info()


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




def attach(layer, z_star: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The output of ``layer`` (a ``DEQ``) re-attached to the graph, keeping the graph.

    The textbook implicit backward, chunk by chunk (``layer.chunk``):

    * ``"jfb"``: f(z*, v) with z* detached;
    * ``"phantom"``: k damped steps z <- (1 - lam) z + lam f(z, v) from z*;
    * ``"ift"``: f(z*, v) through ``_ImplicitGradFunction``, whose backward solves
      u = J_f(z*)^T u + g with VJPs on the kept graph of that f application, then lets
      autograd carry u on to v and f's parameters.

    Memory kept until backward: every chunk's graph of f (its activations), unlike the
    fast layer, which keeps only z* and v. ``layer.last_backward_info`` is set once every
    chunk's adjoint is solved.

    Args:
        layer: the ``DEQ`` (its ``f``, ``backward``, kwargs, ``chunk``, ``solvers``).
        z_star: [B, ...] the solved equilibrium (detached).
        v: [B, ...] the injected input.

    Returns:
        [B, ...] differentiable w.r.t. v and f's parameters.
    """
    slices = batch_slices(v.shape[0], layer.chunk)
    infos = [None] * len(slices)
    outs = [_attach_chunk(layer, z_star[sl], v[sl], infos, i) for i, sl in enumerate(slices)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _attach_chunk(layer, z_star, v, infos, index):
    if layer.backward == "jfb":
        return layer.f(z_star, v)
    if layer.backward == "phantom":
        k, lam = layer.backward_kwargs["k"], layer.backward_kwargs["lam"]
        z = z_star
        for _ in range(k):
            z = (1 - lam) * z + lam * layer.f(z, v)
        return z
    z_in = z_star.detach().requires_grad_()
    z_out = layer.f(z_in, v)
    return _ImplicitGradFunction.apply(z_out, _adjoint_solver(layer, z_in, z_out, infos, index))


def _adjoint_solver(layer, z_in, z_out, infos, index):
    """g -> u solving u = J_f(z*)^T u + g, with VJPs on the graph z_in -> z_out.

    The closure holds z_in and z_out, and only the autograd node of
    ``_ImplicitGradFunction`` holds the closure (there is no hook on z_out pointing back to
    it), so the graph is freed as soon as the output is, without reference cycles.
    """
    solve = layer.solvers[layer.solver]
    kwargs = {**layer.solver_kwargs, **layer.backward_kwargs}

    def vjp(u):
        (jt_u,) = torch.autograd.grad(z_out, z_in, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(u) if jt_u is None else jt_u

    def adjoint(grad):
        u, infos[index] = solve(lambda u: vjp(u) + grad, grad, **kwargs)
        if all(info is not None for info in infos):
            layer.last_backward_info = cat_info(infos)
        return u

    return adjoint
