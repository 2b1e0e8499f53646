"""Translate between a :class:`~napari_focusdeep.stack.Stack` and napari layers.

The reader, the sample data and the Fuse widget all go through here, so a stack
that was opened with FocusDeep comes back to fusion with the same axes, pixel
size and unit: they travel in ``layer.metadata["focusdeep"]``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..stack import Stack

__all__ = ["META_KEY", "stack_to_layer_data", "stack_from_layer", "layer_axes", "napari_units"]

#: Key of the layer metadata entry this plugin reads and writes.
META_KEY = "focusdeep"

_VALID_STACK_AXES = ("ZYX", "ZYXC", "TZYX", "TZYXC")


def napari_units(unit: str | None) -> str | None:
    """``unit`` if napari (pint) understands it, else None (napari then shows pixels).

    A reader must not fail because a file spells its unit oddly, and napari raises
    on units it cannot parse, so check first.
    """
    if not unit:
        return None
    try:
        import pint

        pint.get_application_registry().parse_expression(unit).units  # noqa: B018
    except Exception:  # any parse failure: keep the unit in metadata only
        return None
    return unit


def stack_to_layer_data(stack: Stack, **kwargs: Any) -> tuple[Any, dict[str, Any], str]:
    """One napari ``LayerDataTuple`` for ``stack``, lazy if the stack is.

    RGB(A) stacks (3 or 4 channels) become one RGB layer; a single channel is
    dropped; other channel counts are split into one layer per channel with
    ``channel_axis`` (each then fuses on its own). ``kwargs`` override the layer
    keyword arguments (e.g. ``name``).
    """
    data, axes = stack.data, stack.axes
    layer_kw: dict[str, Any] = {}
    if axes.endswith("C"):
        n_ch = int(data.shape[-1])
        if n_ch in (3, 4):
            layer_kw["rgb"] = True
        elif n_ch == 1:
            data, axes = data[..., 0], axes[:-1]
            layer_kw["rgb"] = False
        else:
            layer_kw["channel_axis"] = data.ndim - 1
            names = stack.metadata.get("channel_names")
            if not (isinstance(names, (list, tuple)) and len(names) == n_ch):
                names = [f"ch{i}" for i in range(n_ch)]
            layer_kw["name"] = [f"{stack.name} [{n}]" for n in names]
    else:
        layer_kw["rgb"] = False
    layer_axes_ = axes if layer_kw.get("rgb") else axes.rstrip("C")
    spatial = [a for a in stack.axes if a != "C"]
    layer_kw.setdefault("name", stack.name)
    layer_kw["scale"] = stack.layer_scale()
    layer_kw["axis_labels"] = tuple(a.lower() for a in spatial)
    units = napari_units(stack.unit)
    if units:
        # one unit per axis; time is not in the spatial unit, so it stays unitless
        layer_kw["units"] = tuple("pixel" if a == "T" else units for a in spatial)
    layer_kw["metadata"] = {
        META_KEY: {
            "axes": layer_axes_,
            "source_axes": stack.axes,
            "scale": {k: float(v) for k, v in stack.scale.items()},
            "unit": stack.unit,
            "paths": [str(p) for p in stack.paths],
            "name": stack.name,
        }
    }
    if stack.metadata.get("reader") == "raw":
        # the Fuse widget offers the raw (Bayer) network for layers read from raw files:
        # it re-reads the files' packed planes from these paths, in this frame order
        m = stack.metadata
        layer_kw["metadata"][META_KEY]["raw"] = {
            "camera": " ".join(str(m.get(k) or "") for k in ("make", "model")).strip(),
            "iso": m.get("iso"),
            "frame_order": m.get("frame_order"),
        }
    layer_kw.update(kwargs)
    return data, layer_kw, "image"


def layer_axes(ndim: int, rgb: bool, metadata: dict | None = None, *, min_z: bool = False) -> str | None:
    """The axes of a layer's data: what the reader recorded, else napari's conventions.

    Conventions: the last two non-channel axes are ``YX``; RGB layers add ``C``;
    before ``YX`` comes ``Z``, then ``T`` (napari's usual ``TZYX`` order). Returns
    None for shapes this cannot name (more than 5 axes, or fewer than 2).
    """
    meta = (metadata or {}).get(META_KEY) or {}
    axes = meta.get("axes")
    if isinstance(axes, str) and len(axes) == ndim:
        return axes
    n_spatial = ndim - (1 if rgb else 0)
    if not 2 <= n_spatial <= 4:
        return None
    return "TZYX"[4 - n_spatial :] + ("C" if rgb else "")


def stack_from_layer(layer: Any) -> Stack:
    """Build a :class:`Stack` from a napari image layer (numpy or dask, not copied).

    Raises
    ------
    ValueError
        For layers that are not a focus stack (2-D images, multiscale pyramids, ...),
        with a message meant for the user.
    """
    from ..stack import Stack

    if getattr(layer, "multiscale", False):
        raise ValueError(f"layer '{layer.name}' is a multiscale pyramid; open the full-resolution stack instead")
    data = layer.data
    rgb = bool(getattr(layer, "rgb", False))
    axes = layer_axes(data.ndim, rgb, layer.metadata)
    if axes is None or axes not in _VALID_STACK_AXES:
        kind = "RGB image" if rgb else "image"
        raise ValueError(
            f"layer '{layer.name}' is a {data.ndim}-D {kind} of shape {tuple(data.shape)}, not a focus "
            "stack: fusion needs frames along Z, i.e. (Z, Y, X), (Z, Y, X, RGB) or (T, Z, Y, X)"
        )
    meta = layer.metadata.get(META_KEY) or {}
    # The recorded scale says which axes have a known step; the layer's scale wins where
    # the user changed it (or set one on a plain array), since that is what they see.
    scale = {k: float(v) for k, v in (meta.get("scale") or {}).items()}
    for a, s in zip([a for a in axes if a != "C"], layer.scale):
        if a in scale or float(s) != 1.0:
            scale[a] = float(s)
    unit = meta.get("unit")
    if not unit:
        units = getattr(layer, "units", None)
        if units is not None and len(units):
            u = str(units[-1])
            unit = None if u in ("pixel", "px") else u
    from pathlib import Path

    return Stack.from_array(
        data,
        axes=axes,
        scale=scale,
        unit=unit,
        name=layer.name,
        paths=tuple(Path(p) for p in meta.get("paths", ())),
    )
