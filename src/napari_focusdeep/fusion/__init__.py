"""Fusion: classical focus-stacking methods, the method registry and ``fuse``."""
from .core import FusionCancelled, FusionResult, Progress, fuse, fuse_iter
from .registry import Method, get_method, list_methods, register_method

__all__ = [
    "fuse",
    "fuse_iter",
    "FusionResult",
    "FusionCancelled",
    "Progress",
    "Method",
    "get_method",
    "list_methods",
    "register_method",
]
