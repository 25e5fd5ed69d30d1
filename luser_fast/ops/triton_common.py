"""What the Triton ops share: the optional import, where kernels may run, output allocation.

Triton is optional (the ``triton`` extra): without it ``HAS_TRITON`` is False and the ops'
references serve. Under ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernels
run on CPU tensors in Triton's interpreter, which is how they are tested without a GPU.
"""
from __future__ import annotations

import os

import torch

__all__ = ["HAS_TRITON", "triton", "tl", "INTERPRETED", "devices", "alloc"]

try:                                    # optional: the references serve without Triton
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:                     # pragma: no cover - exercised without the extra
    triton = tl = None
    HAS_TRITON = False

#: the kernels were built for the Triton interpreter (TRITON_INTERPRET=1 at import)
INTERPRETED = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") == "1"


def devices() -> tuple:
    """Device types the Triton kernels serve: CUDA, and CPU under the interpreter."""
    return ("cuda", "cpu") if INTERPRETED else ("cuda",)


def alloc(shape, dtype, device) -> torch.Tensor:
    """Output allocation of every Triton launcher (tests replace it to NaN-fill outputs,
    so an element a kernel fails to write shows up)."""
    return torch.empty(shape, dtype=dtype, device=device)
