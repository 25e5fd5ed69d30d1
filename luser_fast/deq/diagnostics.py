"""How much an equilibrium really iterates: the spectral radius of J_f at z*.

A fixed-point map f with ||J_f(z*)|| ~ 0 reaches its equilibrium in one or two solver
steps: the equilibrium then adds no depth beyond one application of f. The spectral
radius rho(J_f(z*)) says how far from that a trained map is (and rho < 1 is what makes the
forward and the adjoint fixed-point iterations converge).
"""
from __future__ import annotations

import torch

__all__ = ["jacobian_spectral_radius"]


def jacobian_spectral_radius(f, z, iters=20, seed=0):
    """Estimate rho(J_f(z)) per sample by power iteration on the transpose J_f(z)^T.

    Each step is one vector-Jacobian product on one graph of f at z (so the cost is one
    forward of f and ``iters`` backward passes); u <- J^T u / ||J^T u|| per sample, and
    the estimate is the norm ratio of the last step. For a dominant eigenvalue that is
    real and simple this converges to |lambda_max|; otherwise it is a lower bound on
    ||J_f|| and an estimate of rho.

    Args:
        f: the map z -> f(z) [B, ...] -> [B, ...] (e.g. ``lambda z: shallow(z, v)``); must
            treat samples independently.
        z: the point [B, ...] (e.g. the solved z*).
        iters: power iterations (>= 1).
        seed: seed of the random start vector.

    Returns:
        Tensor [B] float64: the estimates.
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    if not isinstance(z, torch.Tensor) or z.dim() < 1:
        raise ValueError("z must be a tensor with a leading batch dimension")
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.enable_grad():
        z_in = z.detach().requires_grad_()
        out = f(z_in)
        if not out.requires_grad:  # f does not depend on z
            return torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
        u = torch.randn(z.shape, generator=g, dtype=z.dtype).to(z.device)
        u = u / _norms(u).view(-1, *[1] * (z.dim() - 1))
        estimate = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
        for _ in range(iters):
            (w,) = torch.autograd.grad(out, z_in, u, retain_graph=True, allow_unused=True)
            if w is None:
                return torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
            estimate = _norms(w).double()
            u = w / estimate.clamp_min(1e-300).to(w.dtype).view(-1, *[1] * (z.dim() - 1))
    return estimate


def _norms(x):
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
