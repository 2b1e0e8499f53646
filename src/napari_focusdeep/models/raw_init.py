"""Start a raw-input network (``stem="raw"``) from trained RGB weights.

A raw network and an RGB one of the same size share every layer but three: the
first convolution (4 packed planes in instead of 3 colours) and the output
head's two upsampling convolutions (4x the channels, for the pixel shuffle).
Training a raw network from scratch on a CPU gets nowhere in an hour, so
:func:`init_raw_from_rgb` copies the shared layers and *derives* the other three
from the RGB ones, so that the raw network starts as close to "the RGB network
on a bilinearly demosaiced burst" as these shapes allow:

* ``extract.conv_first``: the RGB kernel with green split over ``G1`` and
  ``G2`` (the body then sees a half-resolution RGB image);
* ``head.skip_up``: the RGB kernel composed with the bilinear demosaic
  (:func:`~napari_focusdeep.models.blocks.bilinear_demosaic`); exact, because a
  3x3 kernel on the packed grid reaches every mosaic sample the composition
  needs, so the skip features equal the RGB network's on the demosaiced image;
* ``head.up``: the RGB kernel repeated at the four positions of each 2x2 cell
  (nearest-neighbour upsampling of the RGB head's features).

The raw head's residual is the bilinear demosaic of the soft-selected frame,
as the RGB head's is the selected frame itself.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .blocks import bilinear_demosaic

__all__ = ["init_raw_from_rgb", "rgb_start_weights", "RAW_ONLY"]

#: Layers whose shapes differ between the RGB and the raw stem (derived, not copied).
RAW_ONLY = ("extract.conv_first", "head.skip_up", "head.up")


def rgb_start_weights(architecture: str, directory: Any = None) -> Any:
    """Installed RGB weights a raw network of ``architecture`` can start from.

    The architecture's default weights, unless they are built on the classical
    pyramid base (which needs RGB frames, so no raw network has it); then the
    installed RGB weights of that architecture without one (for ``focusdeep-any``,
    ``focusdeep-any-select``).

    Raises
    ------
    WeightsNotFoundError
        No installed RGB weights of ``architecture`` without a pyramid base.
    """
    from .weights import WeightsNotFoundError, _installed, default_weights, read_config

    def usable(cfg: dict[str, Any]) -> bool:
        return (
            cfg.get("architecture") == architecture
            and cfg.get("input", "rgb") == "rgb"
            and cfg["kwargs"].get("base", "select") != "pyramid"
        )

    path = default_weights(architecture, directory)
    if usable(read_config(path)):
        return path
    for p in _installed(directory):
        try:
            if usable(read_config(p)):
                return p
        except (ValueError, OSError):
            continue
    raise WeightsNotFoundError(f"no installed RGB {architecture} weights without a pyramid base to start a raw network from")


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set_weight(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Set a (weight-normalised) convolution's effective weight and bias."""
    with torch.no_grad():
        conv.weight = weight.to(conv.bias.dtype if conv.bias is not None else weight.dtype)  # weight norm's right inverse
        if bias is not None:
            conv.bias.copy_(bias)


def _effective(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.no_grad():
        return conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach().clone()


def _first_conv(w: torch.Tensor) -> torch.Tensor:
    """RGB ``(nf, 3, k, k)`` -> packed ``(nf, 4, k, k)``: R, G/2, G/2, B."""
    return torch.stack([w[:, 0], w[:, 1] / 2, w[:, 1] / 2, w[:, 2]], dim=1)


def _composed_skip(w: torch.Tensor) -> torch.Tensor:
    """The packed 3x3 kernel of ``conv(w) o bilinear_demosaic``, ``(4 nf, 4, 3, 3)``
    in PixelShuffle order, found by probing the composition with impulses."""
    nf = w.shape[0]
    out = torch.zeros(nf * 4, 4, 3, 3, dtype=torch.float64)
    w64 = w.double()
    size, c = 7, 3  # impulses far enough from the edges that replication never reaches them
    for k in range(4):
        for ky in range(3):
            for kx in range(3):
                x = torch.zeros(1, 4, size, size, dtype=torch.float64)
                x[0, k, c + ky - 1, c + kx - 1] = 1.0
                y = torch.nn.functional.conv2d(bilinear_demosaic(x), w64, padding=w.shape[-1] // 2)
                for i in range(2):
                    for j in range(2):
                        out[torch.arange(nf) * 4 + 2 * i + j, k, ky, kx] = y[0, :, 2 * c + i, 2 * c + j]
    return out.to(w.dtype)


def init_raw_from_rgb(raw_model: nn.Module, rgb: str | os.PathLike | nn.Module) -> dict[str, Any]:
    """Initialise ``raw_model`` (``stem="raw"``) from RGB weights of the same size.

    Parameters
    ----------
    raw_model : BurstModel
        A ``focusdeep`` or ``focusdeep-any`` built with ``stem="raw"``,
        ``in_channels=4``, ``out_channels=3`` (modified in place).
    rgb : path, installed name or BurstModel
        RGB weights of the same architecture and size (e.g. the shipped
        ``focusdeep-any``), or an RGB model.

    Returns
    -------
    dict
        ``{"copied": n, "derived": [names]}``: tensors copied as they are, and the
        layers derived from RGB ones (:data:`RAW_ONLY`).

    Raises
    ------
    ValueError
        The models differ in architecture or in any size other than the stem.
    """
    from .factory import build_model
    from .weights import load_model_weights, read_config, resolve_weights

    if raw_model.config.get("stem") != "raw":
        raise ValueError("init_raw_from_rgb initialises a stem='raw' network")
    if isinstance(rgb, nn.Module):
        rgb_model = rgb
    else:
        path = resolve_weights(rgb)
        cfg = read_config(path)
        if cfg.get("input", "rgb") != "rgb":
            raise ValueError(f"{path.name} is not an RGB network")
        rgb_model = build_model(cfg["architecture"], **cfg["kwargs"])
        load_model_weights(rgb_model, path)
    if rgb_model.architecture != raw_model.architecture:
        raise ValueError(f"RGB weights of {rgb_model.architecture} cannot start a {raw_model.architecture}")
    shared = ("stem", "in_channels", "out_channels")
    mine = {k: v for k, v in raw_model.config.items() if k not in shared}
    theirs = {k: v for k, v in rgb_model.config.items() if k not in shared}
    if mine != theirs:
        diff = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
        raise ValueError(f"the RGB network has another size (rgb, raw): {diff}")
    rgb_state = rgb_model.state_dict()
    own = raw_model.state_dict()
    copied = {k: v for k, v in rgb_state.items() if k in own and own[k].shape == v.shape and not k.startswith(RAW_ONLY)}
    raw_model.load_state_dict({**own, **copied})
    w, b = _effective(_module(rgb_model, "extract.conv_first"))
    _set_weight(_module(raw_model, "extract.conv_first"), _first_conv(w), b)
    w, b = _effective(_module(rgb_model, "head.skip_up"))
    _set_weight(_module(raw_model, "head.skip_up"), _composed_skip(w), b.repeat_interleave(4))
    w, b = _effective(_module(rgb_model, "head.up"))
    _set_weight(_module(raw_model, "head.up"), w.repeat_interleave(4, dim=0), b.repeat_interleave(4))
    return {"copied": len(copied), "derived": list(RAW_ONLY)}
