"""napari-focusdeep: focus stacking (classical and deep) as a library, a CLI and a napari plugin.

The core (``io``, ``registration``, ``fusion``, ``models``, ``training``) imports
neither napari nor Qt; heavy imports (torch, OpenCV) happen on first use.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "Stack", "fuse", "FusionResult", "read_stack", "write_image"]

_LAZY = {
    "Stack": ("napari_focusdeep.stack", "Stack"),
    "fuse": ("napari_focusdeep.fusion", "fuse"),
    "FusionResult": ("napari_focusdeep.fusion", "FusionResult"),
    "read_stack": ("napari_focusdeep.io", "read_stack"),
    "write_image": ("napari_focusdeep.io", "write_image"),
}


def __getattr__(name: str) -> Any:
    # Lazy so that napari reading our manifest (and the GPU trainer) pulls in nothing heavy.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'napari_focusdeep' has no attribute {name!r}")
