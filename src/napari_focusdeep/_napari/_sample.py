"""napari sample data: a synthetic focus bracket with its ground truth."""
from __future__ import annotations

from typing import Any

__all__ = ["make_sample_data"]


def make_sample_data() -> list[tuple[Any, dict[str, Any], str]]:
    """The simulator's sample stack, its sharp ground truth and its true depth.

    Layers (bottom to top): ``ground truth (sharp)`` and ``true depth`` (hidden, to
    compare against a Fuse result) and the stack itself, ``synthetic focus stack``
    (uint8 RGB frames with focus breathing and noise).
    """
    from ..fusion.core import from_float
    from ..stack import Stack
    from ..training.simulate import sample_stack
    from ._layers import stack_to_layer_data

    sim = sample_stack()
    frames = sim.frames
    axes = "ZYXC" if frames.ndim == 4 else "ZYX"
    stack = Stack.from_array(frames, axes=axes, name="synthetic focus stack")
    rgb = frames.ndim == 4 and frames.shape[-1] in (3, 4)
    truth = from_float(sim.sharp, frames.dtype)
    return [
        (truth, {"name": "ground truth (sharp)", "rgb": rgb, "visible": False}, "image"),
        (
            sim.depth,
            {
                "name": "true depth",
                "colormap": "turbo",
                "visible": False,
                "contrast_limits": (0.0, float(max(1, frames.shape[0] - 1))),
                "metadata": {"depth_unit": "frame"},
            },
            "image",
        ),
        stack_to_layer_data(stack),
    ]

