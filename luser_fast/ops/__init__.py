"""The ops, registered as ``torch.ops.luser_fast.*``; one module per op family.

Each public function validates its arguments, asks ``luser_fast.backends`` which backend
serves it (its ``backend=`` argument, the environment, or auto) and runs the reference
(``luser_fast.reference``) or the custom op whose kernels are registered per dispatch key.
"""
from .anderson import anderson_mix, anderson_step
from .conebeam import conebeam_adjoint, conebeam_forward
from .nufft import nufft_type1, nufft_type2
from .radon import radon_adjoint, radon_forward
from .shallow import shallow_inject, shallow_map

__all__ = ["radon_forward", "radon_adjoint", "nufft_type2", "nufft_type1", "anderson_step",
           "anderson_mix", "shallow_map", "shallow_inject", "conebeam_forward",
           "conebeam_adjoint"]
