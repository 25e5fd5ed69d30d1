"""Physics operators (A, adjoint, normal, norm). docs/API.md, "Operators".

One class per operator family, each calling the ops of ``luser_fast.ops`` where it has
them (``Radon``, ``ConeBeam``, ``NUFFT``); ``Blur`` and ``MRI`` are FFTs and convolutions in PyTorch.
"""
from ..core.operator import LinearFunction, Operator
from .blur import Blur
from .conebeam import ConeBeam
from .mri import MRI
from .nufft import NUFFT, pipe_density
from .radon import Radon

__all__ = ["Operator", "LinearFunction", "Blur", "Radon", "ConeBeam", "MRI", "NUFFT",
           "pipe_density"]
