"""Pure-PyTorch reference of every op, and every class bound to it.

The modules here hold only oracle implementations, readable and float64-safe, importing
nothing but ``luser_fast.core``: the Radon projector (``radon.py``), the cone-beam
projector (``conebeam.py``), the gridding NUFFT
and exact NUDFT (``nufft.py``), the textbook Anderson / fixed-point solvers and implicit
backward (``deq.py``), and the plain-PyTorch twins of the fused Triton ops
(``anderson.py``, ``shallow.py``). Every fast path is tested against them.

The classes (``Radon``, ``ConeBeam``, ``NUFFT``, ``DEQ``, ``ShallowEquilibrium``, ``LUSER``, ``LU``, ...)
are the package's own, defined once, bound here to the reference ops
(``luser_fast/core/binding.py``): same arguments, outputs and ``state_dict`` keys, so a
model built from ``luser_fast.reference`` and one built from ``luser_fast`` load each
other's checkpoints. They are bound on first access (the class definitions import the
ops, which import this package's oracles).
"""
from ..core.operator import LinearFunction, Operator
from ..core.solver import SolverInfo
from .conebeam import conebeam_adjoint_ref, conebeam_forward_ref
from .deq import anderson, fixed_point
from .nufft import nudft_type1, nudft_type2, nufft_type1_ref, nufft_type2_ref
from .radon import radon_adjoint_ref, radon_fbp_ref, radon_forward_ref

__all__ = [
    "Operator", "LinearFunction", "Blur", "Radon", "ConeBeam", "MRI", "NUFFT", "pipe_density",
    "radon_forward_ref", "radon_adjoint_ref", "radon_fbp_ref",
    "conebeam_forward_ref", "conebeam_adjoint_ref",
    "nufft_type1_ref", "nufft_type2_ref", "nudft_type1", "nudft_type2",
    "anderson", "fixed_point", "DEQ", "SolverInfo",
    "ShallowEquilibrium", "DeepRegularizer", "LUSER", "LU",
]

#: public name -> (module, class or function) of the package, bound on first access
_BOUND = {
    "Blur": "luser_fast.physics", "MRI": "luser_fast.physics",
    "Radon": "luser_fast.physics", "NUFFT": "luser_fast.physics",
    "ConeBeam": "luser_fast.physics",
    "pipe_density": "luser_fast.physics",
    "DEQ": "luser_fast.deq",
    "ShallowEquilibrium": "luser_fast.models", "DeepRegularizer": "luser_fast.models",
    "LUSER": "luser_fast.models", "LU": "luser_fast.models",
}


def __getattr__(name):
    if name not in _BOUND:
        raise AttributeError(f"module 'luser_fast.reference' has no attribute {name!r}")
    import functools
    import importlib

    from ..core.binding import bind_reference

    obj = getattr(importlib.import_module(_BOUND[name]), name)
    if isinstance(obj, type):
        bound = bind_reference(obj) if hasattr(obj, "backend") else obj
    else:
        bound = functools.partial(obj, backend="reference")
    globals()[name] = bound
    return bound


def __dir__():
    return sorted(set(globals()) | set(__all__))
