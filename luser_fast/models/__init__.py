"""Models: ShallowEquilibrium, LUSER, LU. docs/API.md, "Models".

Same classes, arguments and state_dict keys as ``luser_fast.reference``. ``LUSER`` (and
its ``ShallowEquilibrium``) run on the fast equilibrium core (``luser_fast.deq``); ``LU``
and ``DeepRegularizer`` are the reference ones (plain autograd, nothing to replace).
"""
from ..reference.models import LU, DeepRegularizer
from .luser import LUSER, ShallowEquilibrium

__all__ = ["ShallowEquilibrium", "DeepRegularizer", "LUSER", "LU"]
