"""Radon operator (the reference serves until the compiled kernels land)."""
from ..reference.radon import Radon

__all__ = ["Radon"]
