"""Embedded data: deterministic synthetic phantoms and scikit-image's bundled images."""
from .phantoms import disk, random_ellipses, shepp_logan

__all__ = ["random_ellipses", "disk", "shepp_logan"]
