"""``build_model``: architecture name + constructor keywords -> network.

Used by weights loading and by the trainer, so a saved config rebuilds exactly
the network that was trained.
"""
from __future__ import annotations

from typing import Any

from .base import BurstModel

__all__ = ["ARCHITECTURES", "build_model", "count_parameters"]

#: Architecture names (the same as the fusion method names).
ARCHITECTURES = ("focusdeep", "focusdeep-any", "unet")


def _classes() -> dict[str, type[BurstModel]]:
    from .focusdeep import FocusDeep
    from .focusdeep_any import FocusDeepAny
    from .unet import UNet

    return {"focusdeep": FocusDeep, "focusdeep-any": FocusDeepAny, "unet": UNet}


def build_model(architecture: str, **kwargs: Any) -> BurstModel:
    """Build a freshly initialised network.

    Parameters
    ----------
    architecture : {"focusdeep", "focusdeep-any", "unet"}
    **kwargs
        Constructor arguments (see each class). ``n_frames`` is accepted and
        ignored by ``focusdeep-any``, so one config shape serves all three.

    Examples
    --------
    >>> model = build_model("focusdeep-any", features=16, front_blocks=1, groups=1, blocks_per_group=1)
    >>> model.architecture
    'focusdeep-any'
    """
    classes = _classes()
    key = architecture.lower().replace("_", "-")
    if key not in classes:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    if key == "focusdeep-any":
        kwargs.pop("n_frames", None)
    try:
        return classes[key](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for {key}: {exc}") from None


def count_parameters(model: Any) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
