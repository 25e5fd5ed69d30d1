"""Equilibrium solvers and the DEQ layer. docs/API.md, "Equilibrium".

The fast core: batched Anderson with ring-buffer history and an incremental Gram matrix,
per-sample freezing without per-iteration host syncs (``anderson.py``), and the DEQ layer,
whose backward saves only z*, v and f's parameters (``layer.py``). ``SolverInfo`` and the
solver contracts are shared with the reference (``luser_fast/core/solver.py``).
"""
from ..core.solver import SolverInfo
from .solvers import anderson, bytes_per_iteration, fixed_point
from .diagnostics import jacobian_spectral_radius
from .layer import DEQ, DEQFunction

__all__ = ["anderson", "fixed_point", "DEQ", "DEQFunction", "SolverInfo", "bytes_per_iteration",
           "jacobian_spectral_radius"]
