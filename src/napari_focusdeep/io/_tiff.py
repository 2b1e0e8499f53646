"""Lazy reading of TIFF, ImageJ hyperstack and OME-TIFF stacks with tifffile.

Pixels are read through tifffile's zarr store (one chunk per TIFF page), so
opening a stack only parses headers; frames are decoded when a dask chunk is
computed. Physical pixel size comes from OME-XML, ImageJ metadata or the JSON
description our own writer leaves in plain TIFFs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ..stack import Stack
from ._axes import to_stack_axes
from ._units import MICRON, convert_length, normalize_unit

__all__ = [
    "read_tiff",
    "tiff_scale",
    "display_name",
    "stack_name",
    "tifffile_messages",
    "damage_in",
    "plain_reason",
]

log = logging.getLogger(__name__)

# tifffile *logs* (instead of raising) when a file's page chain is broken, and goes on
# with the pages it could reach: a truncated stack then opens with fewer frames, or
# with frames whose data lies past the end of the file. These messages mean damage.
_DAMAGE_MESSAGES = (
    "invalid page offset",
    "invalid offset to",
    "invalid next page",
    "corrupted tag list",
    "corrupted IFD",
    "failed to reshape",
    "invalid circular reference",
    "contains no pages",
    "missing data offset",
    "missing data ByteCounts",
    "missing ByteCounts",
)
_REPR_PREFIX = re.compile(r"^<[^>]*>\s*")


class _ThreadMessages(logging.Handler):
    """Collects the messages logged by one thread (dask reads frames in several)."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self._into = into
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            self._into.append(_REPR_PREFIX.sub("", record.getMessage()))


@contextlib.contextmanager
def tifffile_messages() -> Iterator[list[str]]:
    """Collect what tifffile logs (WARNING and up) in this thread, instead of printing it.

    Without a handler Python prints tifffile's messages (``<tifffile.TiffPages @8>
    invalid page offset 6656``) to stderr; collected, they decide whether a file
    is damaged (:func:`damage_in`) and are logged at INFO level otherwise.
    """
    messages: list[str] = []
    handler = _ThreadMessages(messages)
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        for message in messages:
            log.info("tifffile: %s", message)


def damage_in(messages: list[str]) -> str | None:
    """The first of tifffile's messages that says the file is truncated or damaged."""
    for message in messages:
        if any(key in message for key in _DAMAGE_MESSAGES):
            return message
    return None


def plain_reason(exc: BaseException) -> str:
    """An exception as a short reason for a one-line message (type name if it says nothing)."""
    text = _REPR_PREFIX.sub("", str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    if len(text) > 160:
        text = text[:157] + "..."
    return text or type(exc).__name__


def display_name(path: Path) -> str:
    """``folder/file`` for messages: enough to find the file, short enough to read."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def stack_name(path: Path) -> str:
    """The file name without its extension(s): ``a.ome.tif`` -> ``a``."""
    name = Path(path).name
    low = name.lower()
    for ext in (".ome.tiff", ".ome.tif", ".ome.btf"):
        if low.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def read_tiff(path: Path, *, axes: str | None = None) -> Stack:
    """Open a (multi-page, ImageJ or OME) TIFF file as a lazy :class:`Stack`.

    Parameters
    ----------
    path : Path
        The TIFF file.
    axes : str, optional
        Overrides the axis letters tifffile reports for the first series, one
        letter per dimension longer than 1, e.g. ``"ZYX"`` for a focus series
        that was saved as a time series.

    Returns
    -------
    Stack
        Lazy data, one frame per chunk, with scale and unit from the metadata.

    Raises
    ------
    ValueError
        Naming the file, when it is not a TIFF, is truncated or damaged (also
        when that only shows while a frame is decoded), or its axes are
        ambiguous.
    """
    path = Path(path)
    what = repr(display_name(path))
    with tifffile_messages() as messages:
        try:
            tif, series = _open_series(path)
        except Exception as exc:  # noqa: BLE001 - a damaged header breaks tifffile in many ways
            raise ValueError(f"cannot read {what} as a TIFF file: {plain_reason(exc)}") from exc
        return _stack_from_series(tif, series, path, what, axes, messages)


def _stack_from_series(
    tif: Any, series: Any, path: Path, what: str, axes: str | None, messages: list[str]
) -> Stack:
    try:
        damage = damage_in(messages)
        if damage is not None:
            raise ValueError(f"{what} is truncated or damaged ({damage}); copy it again from its source")
        if series is None:
            raise ValueError(f"{what} holds no images")
        try:
            _check_extent(tif, series, what)
            store = series.aszarr(level=0, chunkmode="page")
            data = _named_reads(store, path, what)
            src_axes = str(series.axes)
            source_shape = tuple(int(n) for n in series.shape)
        except ValueError as exc:
            if what in str(exc):
                raise
            raise ValueError(f"cannot read {what} as a TIFF file: {plain_reason(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - as above
            raise ValueError(f"cannot read {what} as a TIFF file: {plain_reason(exc)}") from exc
        series_index = 0
        data, stack_axes = to_stack_axes(data, src_axes, what, override=axes)
        scale, unit, extra = tiff_scale(tif, series_index)
        metadata: dict[str, Any] = {
            "reader": "tifffile",
            "format": _format_name(tif),
            "source_axes": src_axes,
            "source_shape": source_shape,
            "series": len(tif.series),
            **extra,
        }
        if len(tif.series) > 1:
            log.info("%s holds %d image series; reading the first", what, len(tif.series))
        if "T" not in stack_axes:
            scale.pop("T", None)
        return Stack(
            data=data,
            axes=stack_axes,
            scale=scale,
            unit=unit,
            name=stack_name(path),
            paths=(path,),
            metadata=metadata,
        )
    finally:
        # The zarr store reopens the file when a chunk is read, so no handle
        # stays open between reads (and the file can be moved or deleted).
        tif.close()


def _open_series(path: Path) -> tuple[Any, Any]:
    """Open ``path`` and parse its first image series (``None`` when it has none)."""
    import tifffile

    tif = tifffile.TiffFile(path)
    try:
        if len(tif.series) > 1 and _is_sequence_of_images(tif.series):
            # A file built by appending single images (tifffile writes one
            # "shaped" series per image): read all pages as one generic series.
            tif.close()
            tif = tifffile.TiffFile(path, is_shaped=False)
        if not tif.series:
            return tif, None
        series = tif.series[0]
        # parse what reading will need now, so that a damaged header fails here
        _ = series.shape, series.axes, np.dtype(series.dtype)
        return tif, series
    except BaseException:
        tif.close()
        raise


def _check_extent(tif: Any, series: Any, what: str) -> None:
    """Refuse a file whose pixel data (as its headers say) runs past its end."""
    size = int(tif.filehandle.size)
    offset = series.dataoffset
    if offset is not None:  # contiguous data: one check covers every frame
        end = int(offset) + int(series.nbytes)
    else:
        pages = [series.pages[0], series.pages[len(series.pages) - 1]]
        end = 0
        for page in pages:
            if page is None:
                continue
            for start, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                if count:
                    end = max(end, int(start) + int(count))
    if end > size:
        raise ValueError(
            f"{what} is truncated: its images need {end} bytes but the file has {size}; "
            "copy it again from its source"
        )


class _NamedReads:
    """Array-like over a tifffile zarr store that names the file when a read fails.

    Decoding happens when dask computes a chunk, long after :func:`read_tiff`
    returned; tifffile and its codecs then raise anything from ``struct.error``
    to ``DeflateError`` without saying which file. Here every such error becomes
    a ``ValueError`` naming the file.
    """

    def __init__(self, array: Any, what: str) -> None:
        self._array = array
        self._what = what
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        with tifffile_messages() as messages:
            try:
                out = np.asarray(self._array[key])
            except MemoryError:
                raise  # not damage: a frame too large for this machine
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                raise ValueError(
                    f"cannot read {self._what}: the file is truncated or damaged "
                    f"({plain_reason(exc)})"
                ) from exc
        damage = damage_in(messages)
        if damage is not None:
            raise ValueError(f"cannot read {self._what}: the file is truncated or damaged ({damage})")
        return out


def _named_reads(store: Any, path: Path, what: str) -> da.Array:
    import zarr  # tifffile's lazy store is a zarr (v3) store

    array = zarr.open_array(store, mode="r")
    stat = os.stat(path)
    # the name depends on the file's identity and version, so that dask never
    # confuses two files, or two versions of one, in its caches
    token = tokenize(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    return da.from_array(
        _NamedReads(array, what),
        chunks=tuple(int(c) for c in array.chunks),
        name=f"read-tiff-{token}",
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
        asarray=False,
        fancy=False,
        lock=False,
    )


def _is_sequence_of_images(series: list) -> bool:
    """True when every series is one image of the same shape and dtype."""
    first = series[0]
    return all(
        s.axes in ("YX", "YXS") and s.shape == first.shape and s.dtype == first.dtype
        for s in series
    )


def _format_name(tif: Any) -> str:
    if tif.is_ome:
        return "ome-tiff"
    if tif.is_imagej:
        return "imagej-tiff"
    return "tiff"


# -- physical scale --------------------------------------------------------------------


def tiff_scale(tif: Any, series_index: int = 0) -> tuple[dict[str, float], str | None, dict]:
    """Pixel size, z-step and frame interval from a TIFF file's metadata.

    OME-XML is preferred, then ImageJ metadata, then the JSON description of
    a plain TIFF written by :func:`~napari_focusdeep.io.write_image`.
    Resolution tags of ordinary TIFFs (72 dpi and the like) are ignored: they
    describe print size, not the size of what was imaged.

    Returns
    -------
    scale : dict
        ``{"Z", "Y", "X", "T"}`` -> float, only the keys the file knows.
    unit : str or None
        Unit of the spatial entries, normalised (``"µm"``).
    extra : dict
        Further metadata worth keeping (channel names, time unit, ...).
    """
    try:
        if tif.is_ome and tif.ome_metadata:
            return _ome_scale(tif.ome_metadata, series_index)
        if tif.is_imagej and tif.imagej_metadata is not None:
            return _imagej_scale(tif.imagej_metadata, tif.pages[0])
        if tif.is_shaped and tif.shaped_metadata:
            return _shaped_scale(tif.shaped_metadata[0])
    except Exception as exc:  # noqa: BLE001 - metadata is optional, pixels are not
        log.warning("ignoring unreadable scale metadata in %s: %s", tif.filename, exc)
    return {}, None, {}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_scale(xml: str, index: int) -> tuple[dict[str, float], str | None, dict]:
    root = ET.fromstring(xml)
    images = [el for el in root if _local(el.tag) == "Image"]
    if not images:
        return {}, None, {}
    image = images[index] if index < len(images) else images[0]
    pixels = next((el for el in image if _local(el.tag) == "Pixels"), None)
    if pixels is None:
        return {}, None, {}
    attrs = pixels.attrib
    sizes: dict[str, tuple[float, str]] = {}
    for axis in "XYZ":
        value = attrs.get(f"PhysicalSize{axis}")
        if value is None:
            continue
        size = float(value)
        if size > 0:
            # OME's default unit is the micrometre
            sizes[axis] = (
                size,
                normalize_unit(attrs.get(f"PhysicalSize{axis}Unit", MICRON)) or MICRON,
            )
    scale: dict[str, float] = {}
    unit = None
    if sizes:
        unit = next(sizes[a][1] for a in "XYZ" if a in sizes)
        for axis, (size, u) in sizes.items():
            converted = convert_length(size, u, unit)
            if converted is None:
                log.warning("cannot convert PhysicalSize%s from %s to %s; ignored", axis, u, unit)
                continue
            scale[axis] = _tidy(converted)
    extra: dict[str, Any] = {}
    increment = attrs.get("TimeIncrement")
    if increment is not None and float(increment) > 0:
        scale["T"] = float(increment)
        extra["time_unit"] = attrs.get("TimeIncrementUnit", "s")
    names = [ch.get("Name") for ch in pixels if _local(ch.tag) == "Channel"]
    if any(names):
        extra["channel_names"] = [n or f"channel {i}" for i, n in enumerate(names)]
    description = next((el for el in image if _local(el.tag) == "Description"), None)
    if description is not None and description.text:
        user = _parse_json_object(description.text)
        if user is not None:
            extra["focusdeep"] = user
    return scale, unit, extra


def _resolution_sizes(page: Any) -> dict[str, float]:
    """Pixel size from the X/YResolution tags (pixels per unit)."""
    out: dict[str, float] = {}
    try:
        xres, yres = page.get_resolution()
    except Exception:  # noqa: BLE001 - malformed or missing tags
        return out
    for axis, res in (("X", xres), ("Y", yres)):
        if res and res > 0:
            # TIFF stores pixels per unit as a rational: 1/0.325 comes back as
            # 0.32499999999999996; 9 significant digits is what the tag can hold
            out[axis] = _tidy(1.0 / float(res), 9)
    return out


def _tidy(value: float, digits: int = 12) -> float:
    """Drop the float noise unit conversions and rationals leave (1.5e-3 + 2e-19)."""
    return float(f"{value:.{digits}g}")


def _imagej_scale(md: dict, page: Any) -> tuple[dict[str, float], str | None, dict]:
    extra: dict[str, Any] = {}
    imagej = {k: v for k, v in md.items() if isinstance(v, (str, int, float, bool))}
    if imagej:
        extra["imagej"] = imagej
    info = md.get("Info")
    if isinstance(info, str):
        user = _parse_json_object(info)
        if user is not None:
            extra["focusdeep"] = user
    labels = md.get("Labels")
    if isinstance(labels, (list, tuple)):
        extra["labels"] = list(labels)
    scale: dict[str, float] = {}
    finterval = md.get("finterval")
    if isinstance(finterval, (int, float)) and finterval > 0:
        scale["T"] = float(finterval)
        extra["time_unit"] = "s"
    unit = normalize_unit(md.get("unit"))
    sizes = _resolution_sizes(page)
    if unit is None and all(abs(v - 1.0) < 1e-12 for v in sizes.values()):
        # uncalibrated: ImageJ's pixel size is then one pixel
        sizes = {}
    scale.update(sizes)
    spacing = md.get("spacing")
    if isinstance(spacing, (int, float)) and spacing > 0:
        scale["Z"] = float(spacing)
    if not any(a in scale for a in "XYZ"):
        unit = None
    return scale, unit, extra


def _shaped_scale(md: dict) -> tuple[dict[str, float], str | None, dict]:
    extra: dict[str, Any] = {}
    user = md.get("focusdeep")
    if isinstance(user, dict):
        extra["focusdeep"] = user
    unit = normalize_unit(md.get("unit"))
    stored = md.get("scale")
    scale: dict[str, float] = {}
    if isinstance(stored, dict):
        for axis in "XYZ":
            value = stored.get(axis)
            if isinstance(value, (int, float)) and value > 0:
                scale[axis] = float(value)
    if not scale:
        unit = None
    return scale, unit, extra


def _parse_json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
