"""The ``luser_fast`` torch.library namespace: where every public op schema is defined.

Each op family defines its public schemas here (``define``), once, in Python; the C++
extension (``luser_fast._C``) adds private CPU kernel ops (``torch.ops.luser_fast._*``)
that the families' CPU kernels call. Kernels are registered per dispatch key by the
family modules, with one fake kernel and one autograd formula per op.
"""
from __future__ import annotations

import torch

from .. import _ext, backends

__all__ = ["LIB", "defined", "define", "extension_has", "register_family"]

#: the fragment of the ``luser_fast`` namespace this package defines its ops in
LIB = torch.library.Library("luser_fast", "FRAGMENT")


def defined(name: str) -> bool:
    """``torch.ops.luser_fast.<name>`` exists."""
    try:
        getattr(torch.ops.luser_fast, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def define(schemas: dict) -> None:
    """Define ``name + schema`` for each entry not defined yet."""
    for name, schema in schemas.items():
        if not defined(name):
            LIB.define(name + schema)


def extension_has(name: str) -> bool:
    """The compiled extension is loaded and registered the op ``name``."""
    return _ext.extension() is not None and defined(name)


def register_family(autograd: dict, cpu, cuda) -> None:
    """Register an op family's autograd formulas and backends, once.

    Args:
        autograd: op name -> (backward, setup_context) for ``torch.library.register_autograd``.
        cpu, cuda: ``available()`` callables: the compiled CPU / CUDA kernels serve the
            family's ops (``luser_fast.backends.register``).
    """
    for name, (backward, setup) in autograd.items():
        torch.library.register_autograd("luser_fast::" + name, backward, setup_context=setup)
    backends.register(tuple(autograd), "cpu", ("cpu",), cpu)
    backends.register(tuple(autograd), "cuda", ("cuda",), cuda)
