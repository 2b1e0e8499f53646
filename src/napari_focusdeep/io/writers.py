"""Write images and stacks atomically: :func:`write_image`, :func:`write_stack`,
:func:`atomic_write`.

The extension picks the format:

``.tif`` / ``.tiff``
    ImageJ-compatible TIFF (uint8, uint16, float32) so that Fiji shows the
    physical pixel size; other dtypes are kept as they are in a plain TIFF
    whose JSON description carries the scale (read back by :func:`read_stack`).
``.ome.tif`` / ``.ome.tiff``
    OME-TIFF with ``PhysicalSizeX/Y/Z``.
``.png``
    8- or 16-bit gray, RGB or RGBA.
``.jpg`` / ``.jpeg``
    8-bit gray or RGB only.

Every writer goes through :func:`atomic_write`: the file is written under a
temporary name next to the target and renamed over it only when complete, so
a crash or an exception never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..stack import Stack
from ._units import imagej_unit, normalize_unit

__all__ = ["atomic_write", "write_image", "write_stack", "WRITE_EXTENSIONS"]

#: Extensions :func:`write_image` understands (lower case).
WRITE_EXTENSIONS = (".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png", ".jpg", ".jpeg")

_IMAGEJ_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("float32"))
_TIFF_FORMATS = ("tiff", "ome")


# -- atomic replacement ------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; move it to ``path`` only on success.

    The temporary file lives in the same folder as ``path`` (so the final
    rename is atomic), is hidden (leading dot) and keeps ``path``'s suffix
    (so libraries that pick a format by extension still work). If the body
    raises, the temporary file is removed and ``path`` is untouched.

    Parameters
    ----------
    path : path-like
        The final file. Missing parent folders are created.
    overwrite : bool
        Replace an existing file. Without it an existing ``path`` raises
        :class:`FileExistsError`, both before writing and, should the file
        appear meanwhile, at the moment of the rename.

    Yields
    ------
    Path
        Where to write. It does not exist yet; the body must create it.

    Examples
    --------
    >>> with atomic_write("weights.safetensors", overwrite=True) as tmp:  # doctest: +SKIP
    ...     save_file(tensors, tmp)
    """
    path = Path(os.fspath(path)).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"'{path}' is a folder, not a file name")
    if not overwrite and path.exists():
        raise FileExistsError(f"'{path}' already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to the temporary file for '{path}'")
        _fsync(tmp)
        _commit(tmp, path, overwrite)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _fsync(path: Path) -> None:
    # so that a power cut after the rename cannot leave an empty file behind
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    # A hard link fails if the target exists, so no file that appeared while
    # we were writing is clobbered. Filesystems without links fall back to a
    # check-then-replace.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            f"'{path}' already exists; pass overwrite=True to replace it"
        ) from None
    except OSError:
        if path.exists():
            raise FileExistsError(
                f"'{path}' already exists; pass overwrite=True to replace it"
            ) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


# -- helpers -----------------------------------------------------------------------------


def _format_of(path: Path) -> str:
    low = path.name.lower()
    if low.endswith((".ome.tif", ".ome.tiff")):
        return "ome"
    if low.endswith((".tif", ".tiff")):
        return "tiff"
    if low.endswith(".png"):
        return "png"
    if low.endswith((".jpg", ".jpeg")):
        return "jpeg"
    raise ValueError(
        f"cannot tell the format of '{path.name}' from its extension; use one of "
        + ", ".join(WRITE_EXTENSIONS)
    )


def _infer_write_axes(shape: tuple[int, ...]) -> str:
    """Axes of an array to save when the caller does not say.

    2-D is one gray image; 3-D ending in 3 or 4 is one colour image, any other
    3-D is a gray stack; 4-D is a colour stack and 5-D a colour time series.
    """
    nd = len(shape)
    if nd == 2:
        return "YX"
    if nd == 3:
        return "YXC" if shape[-1] in (3, 4) else "ZYX"
    if nd == 4:
        return "ZYXC"
    if nd == 5:
        return "TZYXC"
    raise ValueError(f"cannot tell the axes of an array of shape {tuple(shape)}; pass axes=")


def _canonical(array: Any, axes: str | None) -> tuple[Any, str]:
    """Transpose to the order T, Z, Y, X, C (each optional except Y and X)."""
    if axes is None:
        axes = _infer_write_axes(tuple(array.shape))
    axes = axes.upper()
    if len(axes) != array.ndim or len(set(axes)) != len(axes) or set(axes) - set("TZYXC"):
        raise ValueError(
            f"axes={axes!r} does not describe an array of shape {tuple(array.shape)} "
            "(use the letters T, Z, Y, X, C once each)"
        )
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes={axes!r} must include Y and X")
    target = "".join(a for a in "TZYXC" if a in axes)
    if target != axes:
        array = array.transpose([axes.index(a) for a in target])
    return array, target


def _as_array(array: Any) -> Any:
    """numpy or dask arrays pass through (dask stays lazy); anything else via numpy."""
    if isinstance(array, np.ndarray) or hasattr(array, "compute"):
        return array
    return np.asarray(array)


def _compute(block: Any) -> np.ndarray:
    return np.asarray(block.compute() if hasattr(block, "compute") else block)


def _clean_scale(scale: Mapping[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (scale or {}).items():
        if value is None:
            continue
        value = float(value)
        if np.isfinite(value) and value > 0:
            out[str(key).upper()] = value
    return out


# -- public writers ----------------------------------------------------------------------


def write_image(
    path: str | os.PathLike,
    array: Any,
    *,
    scale: Mapping[str, float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
    axes: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    compression: str | None = None,
    quality: int = 95,
) -> Path:
    """Save an image (or a stack, for TIFF) atomically; the extension picks the format.

    Parameters
    ----------
    path : path-like
        Target file: ``.tif``/``.tiff``, ``.ome.tif``/``.ome.tiff``, ``.png``,
        ``.jpg``/``.jpeg``.
    array : array-like or Stack
        numpy or dask array (dask is computed one frame at a time), or a
        :class:`Stack`, whose axes, scale and unit are then the defaults.
    scale : dict, optional
        Physical size per axis, ``{"X": .., "Y": .., "Z": .., "T": ..}``.
        Stored in TIFF and OME-TIFF; PNG and JPEG cannot hold it.
    unit : str, optional
        Unit of the spatial scale (``"µm"``, ``"nm"``, ...).
    overwrite : bool
        Replace an existing file; otherwise :class:`FileExistsError`.
    axes : str, optional
        Axes of ``array`` using T, Z, Y, X, C (e.g. ``"YX"``, ``"YXC"``,
        ``"CYX"``, ``"ZYX"``); inferred from the shape when omitted.
    metadata : dict, optional
        JSON-serialisable extras stored in TIFF/OME-TIFF (ImageJ ``Info``,
        OME ``Description`` or the plain TIFF's JSON description) and read
        back by :func:`read_stack` as ``stack.metadata["focusdeep"]``.
    compression : str, optional
        TIFF compression, e.g. ``"zlib"``, ``"lzw"``, ``"zstd"``.
    quality : int
        JPEG quality, 1-100.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    ValueError
        The format cannot hold this array (e.g. 16-bit or float as JPEG, a
        stack as PNG), or the axes cannot be told.
    """
    path = Path(os.fspath(path)).expanduser()
    fmt = _format_of(path)
    if isinstance(array, Stack):
        stack = array
        array = stack.data
        axes = axes or stack.axes
        scale = scale if scale is not None else stack.scale
        unit = unit if unit is not None else stack.unit
    data, axes = _canonical(_as_array(array), axes)
    if metadata is not None:
        try:
            json.dumps(dict(metadata))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
    if fmt in _TIFF_FORMATS:
        _check_dtype_tiff(data.dtype)
        with atomic_write(path, overwrite) as tmp:
            _write_tiff(
                tmp,
                data,
                axes,
                fmt=fmt,
                scale=_clean_scale(scale),
                unit=unit,
                metadata=metadata,
                compression=compression,
            )
        return path
    image = _single_image(data, axes, fmt, path)
    encoded = _encode_8_16(image, fmt, path, quality)
    with atomic_write(path, overwrite) as tmp:
        encoded.tofile(tmp)
    return path


def write_stack(
    path: str | os.PathLike,
    stack: Any,
    *,
    axes: str | None = None,
    scale: Mapping[str, float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    compression: str | None = None,
) -> Path:
    """Save a (registered) stack as a multi-page TIFF or OME-TIFF, atomically.

    Like :func:`write_image` restricted to TIFF, with ``axes`` defaulting to
    ``"ZYX"``/``"ZYXC"`` the way :class:`Stack` infers them. A dask array (or a
    :class:`Stack`) is computed one frame at a time, so stacks larger than
    memory can be saved.
    """
    path = Path(os.fspath(path)).expanduser()
    if _format_of(path) not in _TIFF_FORMATS:
        raise ValueError(f"a stack is saved as .tif or .ome.tif, not '{path.name}'")
    if not isinstance(stack, Stack) and axes is None:
        from ..stack import infer_axes

        axes = infer_axes(tuple(stack.shape))
    return write_image(
        path,
        stack,
        scale=scale,
        unit=unit,
        overwrite=overwrite,
        axes=axes,
        metadata=metadata,
        compression=compression,
    )


# -- PNG / JPEG --------------------------------------------------------------------------


def _single_image(data: Any, axes: str, fmt: str, path: Path) -> np.ndarray:
    """One (Y, X[, C]) image out of ``data``; singleton T/Z are dropped."""
    while axes[0] in "TZ":
        if data.shape[0] != 1:
            raise ValueError(
                f"{fmt.upper()} holds a single image but the array has {data.shape[0]} "
                f"{'frames' if axes[0] == 'Z' else 'time points'}; save stacks as .tif"
            )
        data, axes = data[0], axes[1:]
    return _compute(data)


def _encode_8_16(image: np.ndarray, fmt: str, path: Path, quality: int) -> np.ndarray:
    import cv2  # imported here: the napari manifest must not pull OpenCV in

    dtype = image.dtype
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
        dtype = image.dtype
    allowed = (np.dtype("uint8"),) if fmt == "jpeg" else (np.dtype("uint8"), np.dtype("uint16"))
    if dtype not in allowed:
        kind = "8-bit" if fmt == "jpeg" else "8- or 16-bit"
        raise ValueError(
            f"{fmt.upper()} stores {kind} unsigned integers, not {dtype.name}; save as .tif "
            "to keep the data as it is, or convert it first"
        )
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.ndim == 3 and channels == 1:
        image = image[..., 0]
    if fmt == "jpeg" and channels not in (1, 3):
        raise ValueError(
            f"JPEG stores gray or RGB images, not {channels} channels; use .png or .tif"
        )
    if channels not in (1, 3, 4):
        raise ValueError(f"{fmt.upper()} stores 1, 3 or 4 channels, not {channels}; use .tif")
    if channels in (3, 4):
        image = image[..., [2, 1, 0, 3][:channels]]  # RGB(A) -> OpenCV's BGR(A)
    image = np.ascontiguousarray(image)
    if fmt == "jpeg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(np.clip(quality, 1, 100))]
        ok, encoded = cv2.imencode(".jpg", image, params)
    else:
        ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode '{path.name}'")
    return encoded


# -- TIFF --------------------------------------------------------------------------------


def _check_dtype_tiff(dtype: np.dtype) -> None:
    if np.dtype(dtype).kind not in "biuf":
        raise ValueError(f"TIFF cannot store {np.dtype(dtype).name} data")


def _write_tiff(
    tmp: Path,
    data: Any,
    axes: str,
    *,
    fmt: str,
    scale: dict[str, float],
    unit: str | None,
    metadata: Mapping[str, Any] | None,
    compression: str | None,
) -> None:
    """Write ``data`` (axes in T, Z, Y, X, C order) page by page with tifffile."""
    import tifffile

    dtype = np.dtype(data.dtype)
    if axes.endswith("C") and data.shape[-1] == 1:
        data, axes = data[..., 0], axes[:-1]
    channels = data.shape[-1] if axes.endswith("C") else 1
    imagej = fmt == "tiff" and dtype in _IMAGEJ_DTYPES
    # Colour samples inside a page (RGB) where readers expect them; any other
    # channel count is written as separate planes (C before Y, X).
    if imagej:
        rgb = channels == 3 and dtype == np.uint8
    else:
        rgb = channels in (3, 4) and dtype.kind == "u"
    outer = axes[: axes.index("Y")]  # T and/or Z
    outer_shape = tuple(int(n) for n in data.shape[: len(outer)])
    height, width = int(data.shape[len(outer)]), int(data.shape[len(outer) + 1])
    if rgb:
        file_axes = outer + "YXS"
        shape = outer_shape + (height, width, channels)
    elif channels > 1:
        file_axes = outer + "CYX"
        shape = outer_shape + (channels, height, width)
    else:
        file_axes = outer + "YX"
        shape = outer_shape + (height, width)

    def pages() -> Iterator[np.ndarray]:
        # one frame in memory at a time; for a dask array each frame is one chunk
        for index in np.ndindex(*outer_shape):
            frame = _compute(data[index]) if index else _compute(data)
            frame = np.ascontiguousarray(frame, dtype=dtype)
            if rgb or channels == 1:
                yield frame
            else:
                for c in range(channels):
                    yield np.ascontiguousarray(frame[..., c])

    x, y, z = scale.get("X"), scale.get("Y"), scale.get("Z")
    if x is None and y is not None:
        x = y
    if y is None and x is not None:
        y = x
    unit = normalize_unit(unit) if (x is not None or z is not None) else None
    kwargs: dict[str, Any] = {
        "shape": shape,
        "dtype": dtype,
        "photometric": "rgb" if rgb else "minisblack",
        "compression": compression,
    }
    if rgb and channels == 4:
        kwargs["extrasamples"] = ("unassalpha",)
    md: dict[str, Any] = {"axes": file_axes}
    user = json.dumps(dict(metadata)) if metadata else None
    if fmt == "ome":
        for axis, value in (("X", x), ("Y", y), ("Z", z)):
            if value is not None:
                md[f"PhysicalSize{axis}"] = value
                if unit is not None:
                    md[f"PhysicalSize{axis}Unit"] = unit
        if "T" in scale and "T" in outer:
            md["TimeIncrement"] = scale["T"]
            md["TimeIncrementUnit"] = "s"
        if user:
            md["Description"] = user
        kwargs.update(ome=True, imagej=False, metadata=md)
    elif imagej:
        if x is not None:
            kwargs["resolution"] = (1.0 / x, 1.0 / y)
        if unit is not None:
            md["unit"] = imagej_unit(unit)
        if z is not None:
            md["spacing"] = z
        if "T" in scale and "T" in outer:
            md["finterval"] = scale["T"]
        if user:
            md["Info"] = user
        kwargs.update(imagej=True, ome=False, metadata=md)
    else:
        # dtypes ImageJ cannot hold: tifffile's JSON description keeps the scale
        spatial = {a: v for a, v in (("X", x), ("Y", y), ("Z", z)) if v is not None}
        if spatial:
            md["scale"] = spatial
        if unit is not None:
            md["unit"] = unit
        if x is not None:
            kwargs["resolution"] = (1.0 / x, 1.0 / y)
            kwargs["resolutionunit"] = "NONE"
        if metadata:
            md["focusdeep"] = dict(metadata)
        kwargs.update(imagej=False, ome=False, metadata=md)
    tifffile.imwrite(tmp, pages(), **kwargs)
