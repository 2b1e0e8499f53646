"""Deep focus-stacking networks, their weights and their fusion methods.

Networks (:func:`build_model`): ``"focusdeep"`` (the paper's FocusDeep, fixed
burst length), ``"focusdeep-any"`` (any burst length, streamed with constant
memory) and ``"unet"`` (the paper's baseline). Weights are safetensors files
with a JSON config beside them (:mod:`.weights`). The fusion methods of the same
names are registered by :mod:`.methods`.

Nothing here imports torch until a name is used, so ``import
napari_focusdeep.models`` stays cheap.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "build_model",
    "count_parameters",
    "ARCHITECTURES",
    "resample_frames",
    "load_model",
    "save_weights",
    "list_models",
    "pick_device",
    "FocusDeep",
    "FocusDeepAny",
    "UNet",
    "deform_conv2d",
]

_LAZY = {
    "build_model": ("factory", "build_model"),
    "count_parameters": ("factory", "count_parameters"),
    "ARCHITECTURES": ("factory", "ARCHITECTURES"),
    "resample_frames": ("base", "resample_frames"),
    "load_model": ("weights", "load_model"),
    "save_weights": ("weights", "save_weights"),
    "list_models": ("weights", "list_models"),
    "pick_device": ("device", "pick_device"),
    "FocusDeep": ("focusdeep", "FocusDeep"),
    "FocusDeepAny": ("focusdeep_any", "FocusDeepAny"),
    "UNet": ("unet", "UNet"),
    "deform_conv2d": ("deform", "deform_conv2d"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
