"""Receptive-field measurement, which sizes the halo of tiled inference.

A pixel of the output depends on input pixels within some radius: the
*structural* receptive field of the convolutions, plus what learned deformable
offsets can reach (bounded by ``max_offset``; see
:meth:`~napari_focusdeep.models.blocks.PCDAlign.offset_reach`).

The structural part is measured, not derived by hand, so it stays right when
the architecture changes: build the same architecture narrow (the receptive
field does not depend on the width or the burst length), make every weight and
bias positive (so no ReLU is ever inactive and no gradient cancels), replace max
pooling by average pooling (same support, gradient everywhere), and find the
support of the gradient of a band of output rows with respect to the input,
covering every alignment phase of the strided levels.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any

import torch
from torch import nn

from .blocks import pcd_offset_reach
from .deform import DeformConv2d, DeformConvPack
from .factory import build_model

__all__ = ["receptive_radius", "model_halo"]

# Options that change the width or length but not the receptive field.
_IRRELEVANT = ("features", "n_frames", "offset_groups", "in_channels", "out_channels")


def _positive_(model: nn.Module) -> None:
    from .weights import fold_weight_norm

    fold_weight_norm(model)
    pools = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]
    for name, m in pools:
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
    offset_convs = {m.conv_offset_mask for m in model.modules() if isinstance(m, DeformConvPack)}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DeformConvPack):
                # Tiny positive offsets: the sampling positions move (so the offset
                # branch's own receptive field shows in the gradient) but stay within
                # a pixel of the grid.
                m.conv_offset_mask.weight.fill_(1e-6)
                m.conv_offset_mask.bias.fill_(1e-3)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, DeformConv2d)):
                if m in offset_convs:
                    continue
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.fill_(0.01)


def _measure(model: nn.Module, in_channels: int, scale: int, multiple: int) -> int:
    """Largest distance (input pixels) from a ``multiple``-row output band to an
    input row it depends on.

    Every kernel is square, so the vertical extent is the radius; a tall strip
    ``multiple`` pixels wide measures it at a fraction of a square's cost.
    """
    size = 64
    while True:
        size = int(math.ceil(size / multiple) * multiple)
        x = torch.rand(1, 2, in_channels, size, multiple, dtype=torch.float64) + 0.5
        x.requires_grad_(True)
        out = model(x)
        c = (size // 2 // multiple) * multiple
        out[..., c * scale : (c + multiple) * scale, :].sum().backward()
        rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2, 4)) > 0).flatten()
        lo, hi = int(rows.min()), int(rows.max())
        if lo > 0 and hi < size - 1:
            return max(c - lo, hi - (c + multiple - 1))
        if size >= 8192:
            raise RuntimeError("receptive field larger than 4096 pixels")
        size *= 2


@functools.lru_cache(maxsize=32)
def _radius_cached(architecture: str, kwargs_json: str) -> int:
    kwargs = json.loads(kwargs_json)
    arch = architecture
    probe = dict(kwargs)
    if arch in ("focusdeep", "focusdeep-any"):
        probe.update(features=8, offset_groups=8)
    else:
        probe.update(features=2)
    if arch != "focusdeep-any":
        probe["n_frames"] = 2
    model = build_model(arch, **probe).double()
    _positive_(model)
    in_ch = int(probe.get("in_channels", 3))
    scale = 2 if probe.get("stem") == "raw" else 1
    return _measure(model, in_ch, scale, int(model.multiple))


def receptive_radius(architecture: str, **kwargs: Any) -> int:
    """Structural receptive-field radius, in input pixels, of a network configuration.

    Deformable offsets are not included (see :func:`model_halo`). Cached per
    configuration; the probe is a narrow copy of the network, so this takes well
    under a second even for the paper-sized configuration.
    """
    key = {k: v for k, v in sorted(kwargs.items()) if k not in _IRRELEVANT}
    return _radius_cached(architecture, json.dumps(key, sort_keys=True))


def model_halo(architecture: str, **kwargs: Any) -> int:
    """Context a tile needs on every side for exact tiled inference, in frame pixels:
    the structural radius plus the deformable offsets' bounded reach (for the
    ``"raw"`` stem, whose input is packed 2x2, in mosaic pixels: twice that)."""
    radius = receptive_radius(architecture, **kwargs)
    reach = 0.0
    if architecture in ("focusdeep", "focusdeep-any") and kwargs.get("align", True):
        # in feature pixels, which are ``scale`` input pixels apart for a half-resolution network
        reach = pcd_offset_reach(float(kwargs.get("max_offset", 4.0))) * int(kwargs.get("scale", 1))
    scale = 2 if kwargs.get("stem") == "raw" else 1  # raw: reach is in packed pixels
    halo = int(radius + math.ceil(reach)) * scale
    if kwargs.get("base") == "pyramid":
        # the classical base (computed outside autograd, so not in the measured
        # radius) depends on its own context, which the network's layers then widen
        from ..fusion.pyramid import pyramid_halo

        halo += pyramid_halo(levels=int(kwargs.get("base_levels", 3)))
    return halo
