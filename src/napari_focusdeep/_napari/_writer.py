"""napari writer: save an image layer as TIFF (with pixel size), OME-TIFF, PNG or JPEG."""
from __future__ import annotations

from typing import Any

__all__ = ["write_image_layer"]


def write_image_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one image layer with :func:`napari_focusdeep.io.write_image`.

    The physical pixel size comes from the layer's ``scale`` and its unit from
    the metadata the reader stored (or the layer's units). napari's save dialog has
    already asked before replacing a file, so this overwrites; the write itself is
    atomic (a temporary file renamed into place), so a failure leaves no half file.

    Returns
    -------
    list of str
        ``[path]``, as napari expects.
    """
    import numpy as np

    from ..io import write_image
    from ._layers import META_KEY, layer_axes

    if meta.get("multiscale"):
        data = data[0]  # the full-resolution level
    # numpy and dask pass through (write_image computes dask one frame at a time)
    arr = data if hasattr(data, "ndim") and hasattr(data, "shape") else np.asarray(data)
    rgb = bool(meta.get("rgb", False))
    metadata = meta.get("metadata") or {}
    axes = layer_axes(arr.ndim, rgb, metadata)
    scale_axes = [a for a in (axes or "") if a != "C"]
    scale = None
    if axes is not None and meta.get("scale") is not None:
        scale = {a: float(s) for a, s in zip(scale_axes, meta["scale"])}
    unit = (metadata.get(META_KEY) or {}).get("unit")
    if not unit and meta.get("units") is not None:
        u = meta["units"]
        u = str(u[-1]) if isinstance(u, (list, tuple)) and len(u) else str(u)
        unit = None if u in ("", "pixel", "px", "None") else u
    fd_meta = metadata.get(META_KEY) or {}
    extras = {k: fd_meta[k] for k in ("method", "source") if isinstance(fd_meta.get(k), str)}
    if meta.get("name"):
        extras["layer"] = str(meta["name"])
    write_image(path, arr, scale=scale, unit=unit, overwrite=True, axes=axes, metadata=extras or None)
    return [path]
