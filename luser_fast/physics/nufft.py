"""NUFFT operator (the reference serves until the compiled kernels land)."""
from ..reference.nufft import NUFFT

__all__ = ["NUFFT"]
