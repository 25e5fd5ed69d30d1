"""Fast ops, registered as ``torch.ops.luser_fast.*``; one module per op family."""
from .radon import radon_adjoint, radon_forward
from .nufft import nufft_type1, nufft_type2
from .anderson import anderson_mix, anderson_step
from .shallow import shallow_inject, shallow_map
