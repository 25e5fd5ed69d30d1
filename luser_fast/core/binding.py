"""Binding one class to the reference ops: how ``luser_fast.reference`` gets its classes.

Every operator, solver and model class is defined once (``luser_fast.physics``,
``luser_fast.deq``, ``luser_fast.models``) and calls ops; its class attribute ``backend``
(None: the ops choose, ``luser_fast.backends``) is passed to every op it calls. The
reference namespace exposes the same classes with ``backend = "reference"``: the same
code, arguments and ``state_dict`` keys, every op on its pure-PyTorch reference. A bound
class overrides nothing but that attribute.
"""
from __future__ import annotations

__all__ = ["bind_reference", "bound"]

_BOUND: dict = {}


def bind_reference(cls: type) -> type:
    """``cls`` bound to the reference ops (cached: one bound class per class).

    The result is a subclass whose only own attribute is ``backend = "reference"`` (plus
    its module name, so it prints as ``luser_fast.reference.<Name>``).
    """
    if cls not in _BOUND:
        _BOUND[cls] = type(cls.__name__, (cls,), {
            "backend": "reference", "__module__": "luser_fast.reference",
            "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    return _BOUND[cls]


def bound(cls: type, backend: str | None) -> type:
    """``cls`` as a class with ``backend`` would build it: bound to the reference ops when
    ``backend == "reference"``, else ``cls`` itself (how a model builds its parts)."""
    return bind_reference(cls) if backend == "reference" else cls
