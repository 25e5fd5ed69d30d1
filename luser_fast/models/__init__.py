"""Models: ShallowEquilibrium, LUSER, LU. API.md, "Models".

Same classes, arguments and state_dict keys as ``luser_fast.reference``; the reference
models serve until the fast equilibrium core replaces LUSER's solver.
"""
from ..reference.models import LU, LUSER, DeepRegularizer, ShallowEquilibrium

__all__ = ["ShallowEquilibrium", "DeepRegularizer", "LUSER", "LU"]
