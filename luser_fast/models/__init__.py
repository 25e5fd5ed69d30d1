"""Models: ShallowEquilibrium, DeepRegularizer, LUSER, LU. docs/API.md, "Models".

One definition each (``networks.py``); ``luser_fast.reference`` exposes the same classes
bound to the reference ops (same arguments and ``state_dict`` keys).
"""
from .networks import LU, LUSER, DeepRegularizer, ShallowEquilibrium

__all__ = ["ShallowEquilibrium", "DeepRegularizer", "LUSER", "LU"]
