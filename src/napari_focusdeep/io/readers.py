"""Open a focus stack from disk, lazily: :func:`read_stack` and :func:`is_supported`.

Four readers share the work:

``"tifffile"``
    multi-page TIFF, ImageJ hyperstacks and OME-TIFF (``.tif``, ``.tiff``, ``.btf``);
``"frames"``
    a folder of frame files (JPEG, PNG, TIFF) or an explicit list of them;
``"bioio"``
    CZI, ND2, LIF and whatever else an installed bioio plugin reads;
``"raw"``
    camera raw files (DNG, RW2, CR2, NEF, ARW, ...) and folders of them, through
    rawpy, demosaiced to 16-bit sRGB (:mod:`~napari_focusdeep.io.raw`).

Each returns a :class:`~napari_focusdeep.stack.Stack` whose dask array has one
chunk per frame; nothing but headers is read until a chunk is computed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..stack import Stack
from ._axes import to_stack_axes
from ._frames import FRAME_EXTENSIONS, list_frames, read_frames, split_non_frames
from .raw import RAW_EXTENSIONS, list_raw, read_raw
from ._tiff import display_name, read_tiff, stack_name

__all__ = [
    "read_stack",
    "is_supported",
    "list_frames",
    "SUPPORTED_EXTENSIONS",
    "TIFF_EXTENSIONS",
    "FRAME_EXTENSIONS",
    "BIOIO_EXTENSIONS",
    "RAW_EXTENSIONS",
    "READERS",
    "MissingExtraError",
    "UnsupportedFormatError",
]

#: Files read with tifffile (``.ome.tif`` and ``.ome.tiff`` end with these too).
TIFF_EXTENSIONS = (".tif", ".tiff", ".btf")

#: Vendor formats read through bioio, and the plugin package each one needs.
BIOIO_EXTENSIONS: dict[str, str] = {
    ".czi": "bioio-czi",
    ".nd2": "bioio-nd2",
    ".lif": "bioio-lif",
}

#: Every extension :func:`read_stack` claims (lower case, with the dot).
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(
    sorted(set(TIFF_EXTENSIONS) | set(FRAME_EXTENSIONS) | set(BIOIO_EXTENSIONS) | set(RAW_EXTENSIONS))
)

READERS = ("tifffile", "frames", "bioio", "raw")

_EXTRA_HINT = "pip install 'napari-focusdeep[formats]'"


class MissingExtraError(ImportError):
    """A file format needs an optional dependency that is not installed."""


class UnsupportedFormatError(ValueError):
    """No reader (built in or bioio plugin) can open the file."""


PathLike = str | os.PathLike


def read_stack(
    source: PathLike | Sequence[PathLike],
    *,
    reader: str | None = None,
    axes: str | None = None,
) -> Stack:
    """Open a focus stack lazily.

    Parameters
    ----------
    source : path-like or sequence of path-like
        A stack file (TIFF/OME-TIFF, CZI, ND2, LIF, ...), a folder of frame
        files (read in natural order: ``frame_2`` before ``frame_10``), or a
        list of frame files (read in the order given).
    reader : {"tifffile", "frames", "bioio", "raw"}, optional
        Force a reader instead of choosing by extension. A folder holding camera
        raw files is read as raw (ignoring JPEG previews beside them) unless
        ``reader="frames"``.
    axes : str, optional
        For stack files whose metadata does not say which axis is Z: one
        letter (T, Z, C, Y, X) per dimension longer than 1, in file order,
        e.g. ``"ZYX"`` for a focus series saved as a time series.

    Returns
    -------
    Stack
        Lazy data (one chunk per frame), with ``scale``/``unit`` from the
        file's metadata where it has any, ``name`` from the file or folder
        and ``paths`` the files read.

    Raises
    ------
    FileNotFoundError
        When ``source`` (or a listed file) does not exist.
    ValueError
        When there are no images, frames differ in size/channels/dtype (the
        message names the odd file), or the axes of a file are ambiguous.
    MissingExtraError
        When the format needs a bioio plugin that is not installed; the
        message names the extra to install.
    """
    if reader is not None and reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    if isinstance(source, (list, tuple)):
        if source and (reader == "raw" or (reader is None and all(_is_raw(p) for p in source))):
            _no_axes(axes, "camera raw files")
            return read_raw(list(source))
        return _read_list([Path(os.fspath(p)).expanduser() for p in source], reader, axes)
    path = Path(os.fspath(source)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: '{path}'")
    if path.is_dir():
        return _read_folder(path, reader, axes)
    if reader is None:
        reader = _reader_for(path)
    if reader == "tifffile":
        return read_tiff(path, axes=axes)
    if reader == "bioio":
        return read_bioio(path, axes=axes)
    if reader == "raw":
        _no_axes(axes, "a camera raw file")
        return read_raw(path)
    _no_axes(axes, "a frame file")
    return read_frames([path])


def _reader_for(path: Path) -> str:
    low = path.name.lower()
    if low.endswith(TIFF_EXTENSIONS):
        return "tifffile"
    if low.endswith(FRAME_EXTENSIONS):
        return "frames"
    if low.endswith(RAW_EXTENSIONS):
        return "raw"
    return "bioio"  # bioio says whether it (or a plugin) can read it


def _no_axes(axes: str | None, what: str) -> None:
    if axes is not None:
        raise ValueError(f"axes= applies to stack files, not to {what}")


def _read_list(paths: list[Path], reader: str | None, axes: str | None) -> Stack:
    if not paths:
        raise ValueError("no files given")
    if len(paths) == 1 and reader != "frames":
        return read_stack(paths[0], reader=reader, axes=axes)
    if reader not in (None, "frames"):
        raise ValueError(f"a list of files is read as frames; reader={reader!r} reads one file")
    _no_axes(axes, "a list of frame files")
    return read_frames(paths)


def _is_raw(p: PathLike) -> bool:
    return os.fspath(p).lower().endswith(RAW_EXTENSIONS)


def _read_folder(path: Path, reader: str | None, axes: str | None) -> Stack:
    if reader == "bioio":
        return read_bioio(path, axes=axes)
    # Camera raw files win over the JPEG/TIFF previews that RAW+JPEG cameras write
    # beside them; reader="frames" reads those instead.
    if reader == "raw" or (reader is None and list_raw(path)):
        _no_axes(axes, "a folder of camera raw files")
        return read_raw(path)
    if reader not in (None, "frames"):
        raise ValueError(f"reader={reader!r} reads files; a folder is read as frames")
    frames = list_frames(path)
    if not frames:
        others = sum(1 for e in os.scandir(path) if not e.name.startswith("."))
        what = f" (it holds {others} other entr{'y' if others == 1 else 'ies'})" if others else ""
        raise ValueError(
            f"folder '{path.name or path}' holds no image frames{what}; looked for "
            + ", ".join(FRAME_EXTENSIONS)
        )
    frames, skipped = split_non_frames(frames)
    if skipped:
        import warnings

        names = ", ".join(p.name for p in skipped)
        warnings.warn(
            f"not fusing {names} in '{path.name or path}': the name marks a ground truth, result or "
            "depth map, not a frame (pass the files themselves to include it)",
            stacklevel=3,
        )
    if len(frames) == 1 and reader is None:
        # one file in the folder: it may be a whole stack (e.g. a multi-page TIFF)
        return replace(read_stack(frames[0], axes=axes), name=path.name)
    _no_axes(axes, "a folder of frames")
    return read_frames(frames, name=path.name)


# -- bioio -------------------------------------------------------------------------------


def _missing_extra(path: Path) -> MissingExtraError:
    ext = path.suffix.lower()
    plugin = BIOIO_EXTENSIONS.get(ext, "a bioio plugin")
    return MissingExtraError(
        f"reading {ext} files needs the 'formats' extra ({plugin}): {_EXTRA_HINT}"
    )


def read_bioio(path: PathLike, *, axes: str | None = None) -> Stack:
    """Open a file through bioio (CZI, ND2, LIF, ... with the matching plugin).

    bioio presents every format as ``TCZYX`` (plus ``S`` for RGB samples); the
    singleton axes are dropped and channels moved last. Only the first scene
    is read; bioio reports physical sizes in micrometres.
    """
    path = Path(path)
    plugin = BIOIO_EXTENSIONS.get(path.suffix.lower())
    if plugin is not None and importlib.util.find_spec(plugin.replace("-", "_")) is None:
        raise _missing_extra(path)
    try:
        from bioio import BioImage
        from bioio_base.exceptions import UnsupportedFileFormatError
    except ImportError as exc:  # bioio is a core dependency, but be plain about it
        raise MissingExtraError(f"reading {path.suffix} files needs bioio: {_EXTRA_HINT}") from exc
    what = repr(display_name(path))
    try:
        image = BioImage(path)
    except UnsupportedFileFormatError as exc:
        if plugin is not None:
            raise _missing_extra(path) from exc
        raise UnsupportedFormatError(
            f"cannot read {what}: not a format napari-focusdeep knows (supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}, and folders of frames); for other "
            f"microscopy formats install the matching bioio plugin"
        ) from None
    order = str(image.dims.order)
    data, stack_axes = to_stack_axes(image.dask_data, order, what, override=axes)
    scale: dict[str, float] = {}
    sizes = image.physical_pixel_sizes
    for axis in "ZYX":
        value = getattr(sizes, axis, None)
        if value is not None and float(value) > 0:
            scale[axis] = float(value)
    metadata: dict[str, Any] = {
        "reader": "bioio",
        "format": path.suffix.lower().lstrip("."),
        "source_axes": order,
        "source_shape": tuple(int(n) for n in image.shape),
    }
    try:
        names = list(image.channel_names or [])
        if names and "C" in stack_axes:
            metadata["channel_names"] = [str(n) for n in names]
        if len(image.scenes) > 1:
            metadata["scenes"] = list(image.scenes)
    except Exception:  # noqa: BLE001 - optional metadata, plugin dependent
        pass
    return Stack(
        data=data,
        axes=stack_axes,
        scale=scale,
        unit="\u00b5m" if scale else None,
        name=stack_name(path),
        paths=(path,),
        metadata=metadata,
    )


# -- quick check for the napari reader hook ----------------------------------------------


def is_supported(path: PathLike | Sequence[PathLike]) -> bool:
    """Whether :func:`read_stack` would try to read ``path``, decided without reading pixels.

    A file is judged by its extension (``.czi`` and friends count even when
    their bioio plugin is missing, so that reading them explains what to
    install); a folder by whether it holds at least one frame file; a list
    when every item is supported.
    """
    if isinstance(path, (list, tuple)):
        return bool(path) and all(is_supported(p) for p in path)
    try:
        p = Path(os.fspath(path))
    except TypeError:
        return False
    if p.is_dir():
        return _has_frames(p)
    return p.name.lower().endswith(SUPPORTED_EXTENSIONS)


def _has_frames(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                ext = os.path.splitext(entry.name)[1].lower()
                if (ext in FRAME_EXTENSIONS or ext in RAW_EXTENSIONS) and entry.is_file():
                    return True
    except OSError:
        return False
    return False
