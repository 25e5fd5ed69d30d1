"""luser_fast: memory-efficient learned reconstruction (LUSER) with fast physics operators.

Public API (see docs/API.md): physics operators, equilibrium solvers, models, profiling.

    from luser_fast import LUSER, LU, Radon, training_memory

Importing never touches CUDA and never fails for a missing extension.
"""
from ._version import __version__
from .deq import DEQ, SolverInfo, anderson, fixed_point
from .models import LU, LUSER, ShallowEquilibrium
from .physics import MRI, NUFFT, Blur, ConeBeam, Operator, Radon
from .profile import training_memory

__all__ = [
    "__version__",
    "Blur", "Radon", "ConeBeam", "MRI", "NUFFT", "Operator",
    "anderson", "fixed_point", "DEQ", "SolverInfo",
    "ShallowEquilibrium", "LUSER", "LU",
    "training_memory",
]
