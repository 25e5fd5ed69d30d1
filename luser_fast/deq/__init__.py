"""Equilibrium solvers and the DEQ layer. API.md, "Equilibrium".

The reference core serves until the fast core (ring-buffer Anderson, memory-minimal
implicit backward) replaces it behind the same names.
"""
from ..reference.deq import DEQ, SolverInfo, anderson, fixed_point

__all__ = ["anderson", "fixed_point", "DEQ", "SolverInfo"]
