"""Physics operators (A, adjoint, normal, norm). docs/API.md, "Operators".

Each operator family has its module here; where fast ops exist the operator dispatches
to them (``luser_fast.ops``), else the pure-PyTorch reference serves.
"""
from ..reference.blur import Blur
from ..reference.mri import MRI
from ..reference.operator import LinearFunction, Operator
from .nufft import NUFFT
from .radon import Radon

__all__ = ["Operator", "LinearFunction", "Blur", "Radon", "MRI", "NUFFT"]
