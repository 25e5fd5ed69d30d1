"""Physics operators (A, adjoint, normal, norm). API.md, "Operators".

The reference operators serve until their fast ops land (Radon: C++/CUDA kernels; NUFFT:
spreading kernels); the classes keep these names and arguments.
"""
from ..reference.blur import Blur
from ..reference.mri import MRI
from ..reference.nufft import NUFFT
from ..reference.operator import LinearFunction, Operator
from ..reference.radon import Radon

__all__ = ["Operator", "LinearFunction", "Blur", "Radon", "MRI", "NUFFT"]
