"""Pure-PyTorch reference of every op and module of luser_fast.

Readable and float64-safe; every fast path is tested against it. It imports nothing from
``luser_fast.ops`` or the compiled extension.
"""
from .blur import Blur
from .deq import DEQ, SolverInfo, anderson, fixed_point
from .models import LU, LUSER, DeepRegularizer, ShallowEquilibrium
from .mri import MRI
from .nufft import NUFFT, nudft_type1, nudft_type2, nufft_type1_ref, nufft_type2_ref
from .operator import LinearFunction, Operator
from .radon import Radon, radon_adjoint_ref, radon_forward_ref

__all__ = [
    "Operator", "LinearFunction", "Blur", "Radon", "MRI", "NUFFT",
    "radon_forward_ref", "radon_adjoint_ref",
    "nufft_type1_ref", "nufft_type2_ref", "nudft_type1", "nudft_type2",
    "anderson", "fixed_point", "DEQ", "SolverInfo",
    "ShallowEquilibrium", "DeepRegularizer", "LUSER", "LU",
]
