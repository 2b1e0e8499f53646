"""A focus series stored as one image file per frame (JPEG, PNG or TIFF).

Opening reads only each file's header (PNG's IHDR chunk, Pillow's lazy open for
JPEG, tifffile's page tags), which is enough to refuse a stack whose frames do
not match before any pixel is decoded. The dask array has one chunk per frame;
a frame is decoded when its chunk is computed.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ..stack import Stack
from ._natural import natural_sorted
from ._tiff import damage_in, display_name, plain_reason, stack_name, tiff_scale, tifffile_messages

__all__ = [
    "split_non_frames",
    "FRAME_EXTENSIONS",
    "FrameInfo",
    "list_frames",
    "read_header",
    "decode_frame",
    "read_frames",
]

log = logging.getLogger(__name__)

#: Extensions (lower case) picked up when a folder is opened as a series of frames.
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_TIFF_EXTENSIONS = (".tif", ".tiff")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# PNG colour type -> channels as OpenCV decodes it with IMREAD_UNCHANGED
# (grey+alpha comes back as BGRA, palette as BGR, or BGRA with a tRNS chunk).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}

# Pillow mode -> (channels, dtype) for formats other than PNG and TIFF.
_PIL_MODES = {
    "1": (1, "uint8"),
    "L": (1, "uint8"),
    "I;16": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "RGB": (3, "uint8"),
    "YCbCr": (3, "uint8"),
    "CMYK": (3, "uint8"),  # OpenCV converts CMYK JPEGs to colour
    "LA": (4, "uint8"),
    "RGBA": (4, "uint8"),
}


@dataclass(frozen=True)
class FrameInfo:
    """What a frame file's header says about its pixels.

    ``height`` and ``width`` are those of the frame as shown, i.e. after the
    EXIF ``orientation`` is applied. ``channels == 1`` means grayscale (no C
    axis). ``planar`` marks TIFFs that store colour samples before Y and X.
    """

    path: Path
    kind: str
    height: int
    width: int
    channels: int
    dtype: str
    orientation: int = 1
    planar: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        if self.channels == 1:
            return (self.height, self.width)
        return (self.height, self.width, self.channels)


# Names that mark an image beside the frames as something else: a ground truth, a depth
# map, another tool's result (``expected.jpg`` in focus-stack's sample folders). Whole stems
# or ``_suffix`` forms only, so ``result_001.png`` is still a frame. The training folders
# (training/folder.py) find ground truths and depth maps with the same patterns.
GROUND_TRUTH_NAME = re.compile(r"^(ground[_-]?truth|gt)$|[_-](gt|ground[_-]?truth)$", re.IGNORECASE)
DEPTH_NAME = re.compile(r"^depth(map)?$|[_-]depth(map)?$", re.IGNORECASE)
_RESULT_NAME = re.compile(
    r"^(expected|fused|result|stacked|all[_-]?in[_-]?focus)$|[_-](expected|fused|result|stacked)$", re.IGNORECASE
)


def split_non_frames(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Split image paths into frames and files whose names mark them as no frame.

    ``ground_truth.*``, ``gt.*``, ``expected.*``, ``fused.*``, ``result.*``,
    ``stacked.*``, ``depth.*`` and ``NAME_gt.*``-style suffixes are not frames of
    the stack. When every file has such a name, all are kept as frames.

    Examples
    --------
    >>> split_non_frames([Path("a_1.png"), Path("expected.png"), Path("a_2.png")])
    ([PosixPath('a_1.png'), PosixPath('a_2.png')], [PosixPath('expected.png')])
    """
    frames: list[Path] = []
    others: list[Path] = []
    for p in paths:
        stem = Path(p).name.split(".")[0]
        named = any(r.search(stem) for r in (GROUND_TRUTH_NAME, DEPTH_NAME, _RESULT_NAME))
        (others if named else frames).append(p)
    return (frames, others) if frames else (list(paths), [])


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, in natural order.

    Hidden files (names starting with ``.``, including macOS ``._`` resource
    files), sub-folders and files that are not JPEG, PNG or TIFF are ignored.
    """
    found: list[Path] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if os.path.splitext(entry.name)[1].lower() not in FRAME_EXTENSIONS:
                continue
            try:
                if not entry.is_file():
                    continue
            except OSError:  # broken link
                continue
            found.append(Path(entry.path))
    return natural_sorted(found)


# -- headers -----------------------------------------------------------------------------


def read_header(path: Path) -> FrameInfo:
    """Shape, channels and dtype of one frame file, without decoding its pixels.

    Raises
    ------
    ValueError
        When the file cannot be read as an image, or holds more than one image.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in _TIFF_EXTENSIONS:
            return _tiff_header(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head == _PNG_SIGNATURE:
            return _png_header(path)
        return _pil_header(path)
    except ValueError as exc:
        if display_name(path) in str(exc):  # ours, already naming the file
            raise
        raise ValueError(f"cannot read frame '{display_name(path)}': {plain_reason(exc)}") from exc
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"cannot read frame '{display_name(path)}': {plain_reason(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - any parser error means "not an image we read"
        raise ValueError(f"cannot read frame '{display_name(path)}': {plain_reason(exc)}") from exc


def _png_header(path: Path) -> FrameInfo:
    with open(path, "rb") as fh:
        data = fh.read(33)
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise ValueError(f"frame '{display_name(path)}' is not a valid PNG file")
        if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
            # a damaged size field would otherwise promise a huge image
            raise ValueError(f"frame '{display_name(path)}' is damaged (its PNG header fails its checksum)")
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        if colour not in _PNG_CHANNELS:
            raise ValueError(
                f"frame '{display_name(path)}' has an unknown PNG colour type {colour}"
            )
        channels = _PNG_CHANNELS[colour]
        if colour == 3 and _png_has_transparency(fh):
            channels = 4
    dtype = "uint16" if depth == 16 else "uint8"
    return FrameInfo(path, "png", int(height), int(width), channels, dtype)


def _png_has_transparency(fh: Any) -> bool:
    """Walk the chunk headers (seeking over their data) up to the first IDAT."""
    fh.seek(8)
    while True:
        head = fh.read(8)
        if len(head) < 8:
            return False
        length, kind = struct.unpack(">I4s", head)
        if kind == b"tRNS":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        fh.seek(length + 4, os.SEEK_CUR)  # data + CRC


def _pil_header(path: Path) -> FrameInfo:
    from PIL import Image  # Image.open reads the header only; pixels stay on disk

    with Image.open(path) as im:
        width, height = im.size
        mode = im.mode
        fmt = im.format or ""
        orientation = 1
        if fmt == "JPEG":
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # noqa: BLE001 - corrupt EXIF: show the frame as stored
                orientation = 1
        if mode == "P":
            channels, dtype = (4 if "transparency" in im.info else 3), "uint8"
        elif mode in _PIL_MODES:
            channels, dtype = _PIL_MODES[mode]
        else:
            raise ValueError(
                f"frame '{display_name(path)}' is a {fmt or 'image'} in mode {mode!r}, "
                "which is not supported; convert the frames to 8/16-bit PNG or TIFF"
            )
    if orientation not in range(1, 9):
        orientation = 1
    if orientation >= 5:  # rotated by 90 degrees: shown with width and height swapped
        width, height = height, width
    return FrameInfo(
        path,
        "jpeg" if fmt == "JPEG" else fmt.lower() or "image",
        int(height),
        int(width),
        channels,
        dtype,
        orientation,
    )


def _tiff_header(path: Path) -> FrameInfo:
    import tifffile

    with tifffile_messages() as messages, tifffile.TiffFile(path) as tif:
        series = tif.series[0] if tif.series else None
        if series is not None:
            axes, shape = series.axes, tuple(int(n) for n in series.shape)
            dtype = np.dtype(series.dtype).name
    # tifffile logs a broken page chain and carries on with what it reached
    damage = damage_in(messages)
    if damage is not None:
        raise ValueError(f"frame '{display_name(path)}' is truncated or damaged ({damage})")
    if series is None:
        raise ValueError(f"frame '{display_name(path)}' holds no image")
    if axes == "YX":
        return FrameInfo(path, "tiff", shape[0], shape[1], 1, dtype)
    if axes == "YXS":
        return FrameInfo(path, "tiff", shape[0], shape[1], shape[2], dtype)
    if axes == "SYX":
        return FrameInfo(path, "tiff", shape[1], shape[2], shape[0], dtype, planar=True)
    raise ValueError(
        f"frame '{display_name(path)}' holds several images (axes {axes}, shape "
        f"{'x'.join(map(str, shape))}); open that file as a stack on its own"
    )


# -- decoding ----------------------------------------------------------------------------


def decode_frame(info: FrameInfo) -> np.ndarray:
    """Decode one frame file to ``(H, W)`` or ``(H, W, C)`` (RGB order).

    Raises
    ------
    ValueError
        When the file cannot be decoded, or decodes to something other than
        what its header promised (a file changed since it was opened).
    """
    path = info.path
    if info.kind == "tiff":
        arr = _decode_tiff(path)
        if info.planar:
            arr = np.moveaxis(arr, 0, -1)
    else:
        import cv2  # imported here: napari reading our manifest must not import OpenCV

        # imdecode from bytes instead of imread(path): OpenCV cannot open
        # non-ASCII paths on Windows. IMREAD_UNCHANGED keeps 16-bit and alpha,
        # and ignores EXIF orientation, which is applied below to match the header.
        buffer = np.fromfile(path, dtype=np.uint8)
        try:
            arr = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
        except cv2.error as exc:  # some codecs raise rather than return None
            raise ValueError(
                f"cannot decode frame '{display_name(path)}': {plain_reason(exc)}"
            ) from exc
        if arr is None:
            # OpenCV refuses truncated PNG and JPEG data (it does not return a partly
            # grey image), so this also catches a copy that stopped half way
            raise ValueError(
                f"cannot decode frame '{display_name(path)}': the file is truncated or damaged"
            )
        if arr.ndim == 3 and arr.shape[2] in (3, 4):
            # BGR(A) -> RGB(A); cvtColor is several times faster than a fancy-index gather
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
        arr = _match_channels(arr, info.channels)
        arr = apply_orientation(arr, info.orientation)
    if arr.shape != info.shape or arr.dtype != np.dtype(info.dtype):
        raise ValueError(
            f"frame '{display_name(path)}' decoded to {_describe(arr.shape, arr.dtype)} "
            f"but its header said {_describe(info.shape, info.dtype)}; did it change on disk?"
        )
    return arr


def _decode_tiff(path: Path) -> np.ndarray:
    """Decode a single-image TIFF, naming the file in whatever error its codec raises."""
    import tifffile

    with tifffile_messages() as messages:
        try:
            arr = tifffile.imread(path, series=0, level=0)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - codecs raise struct.error, DeflateError, ...
            raise ValueError(
                f"cannot decode frame '{display_name(path)}': the file is truncated or damaged "
                f"({plain_reason(exc)})"
            ) from exc
    damage = damage_in(messages)
    if damage is not None:
        raise ValueError(f"cannot decode frame '{display_name(path)}': the file is truncated or damaged ({damage})")
    return arr


def _match_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Reconcile the decoder's channel count with the header's, where it is lossless."""
    have = 1 if arr.ndim == 2 else arr.shape[2]
    if have == channels:
        return arr
    if channels == 1 and arr.ndim == 3:
        return arr[..., 0]  # grey decoded as colour: all channels are equal
    if channels == 3 and have == 4:
        return arr[..., :3]
    if channels == 4 and have == 3:
        alpha = np.full(arr.shape[:2] + (1,), np.iinfo(arr.dtype).max, arr.dtype)
        return np.concatenate([arr, alpha], axis=2)
    if channels in (3, 4) and arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
        return _match_channels(arr, channels)
    return arr  # left for the shape check to report


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip a decoded frame as its EXIF orientation tag asks (as Pillow's exif_transpose)."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:
        arr = np.rot90(arr, -1)
    elif orientation == 7:
        arr = arr.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        arr = np.rot90(arr, 1)
    else:
        return arr  # upright (1, or no tag): no copy
    return np.ascontiguousarray(arr)


def _describe(shape: tuple[int, ...], dtype: Any) -> str:
    size = f"{shape[1]}x{shape[0]}"
    chans = "" if len(shape) == 2 else f"x{shape[2]}"
    return f"{size}{chans} {np.dtype(dtype).name}"


def _channels_text(n: int) -> str:
    return {1: "1 channel (grayscale)", 3: "3 channels (RGB)", 4: "4 channels (RGBA)"}.get(
        n, f"{n} channels"
    )


# -- the stack ---------------------------------------------------------------------------


def check_frames(infos: Sequence[FrameInfo]) -> None:
    """Refuse frames that differ from the first in size, channels or dtype."""
    first = infos[0]
    ref = f"the first frame '{display_name(first.path)}'"
    for info in infos[1:]:
        name = f"frame '{display_name(info.path)}'"
        if (info.height, info.width) != (first.height, first.width):
            raise ValueError(
                f"{name} is {info.width}x{info.height} but {ref} is {first.width}x{first.height}"
            )
        if info.channels != first.channels:
            raise ValueError(
                f"{name} has {_channels_text(info.channels)} but {ref} has "
                f"{_channels_text(first.channels)}"
            )
        if info.dtype != first.dtype:
            raise ValueError(f"{name} is {info.dtype} but {ref} is {first.dtype}")


def _frame_block(
    block_id: tuple[int, ...] | None = None, *, frames: tuple[FrameInfo, ...]
) -> np.ndarray:
    # decode_frame is looked up at call time, so tests can count decodes
    return decode_frame(frames[block_id[0]])[None]


def read_frames(paths: Sequence[str | os.PathLike], *, name: str | None = None) -> Stack:
    """Open frame files, in the given order, as a lazy ``ZYX`` / ``ZYXC`` stack.

    Parameters
    ----------
    paths : sequence of path-like
        One file per frame, in Z order.
    name : str, optional
        Stack name; defaults to the folder holding the first frame (or the
        file's name for a single frame).

    Raises
    ------
    ValueError
        When there are no frames, or a frame differs from the first in size,
        channel count or dtype (the message names the odd file).
    FileNotFoundError
        When a file does not exist.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError("no frames given")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"frame file not found: '{f}'")
    infos = tuple(read_header(f) for f in files)
    check_frames(infos)
    first = infos[0]
    dtype = np.dtype(first.dtype)
    chunks: tuple[tuple[int, ...], ...] = ((1,) * len(infos), (first.height,), (first.width,))
    if first.channels > 1:
        chunks += ((first.channels,),)
    token = tokenize(infos)
    data = da.map_blocks(
        _frame_block,
        frames=infos,
        chunks=chunks,
        dtype=dtype,
        meta=np.empty((0,) * len(chunks), dtype=dtype),
        name=f"read-frames-{token}",
    )
    scale: dict[str, float] = {}
    unit = None
    if first.kind == "tiff":
        import tifffile

        with tifffile.TiffFile(first.path) as tif:
            tiff_md, unit, _ = tiff_scale(tif)
        # a frame's own z-spacing means nothing for a series of separate files
        scale = {k: v for k, v in tiff_md.items() if k in "YX"}
        if not scale:
            unit = None
    if name is None:
        name = stack_name(files[0]) if len(files) == 1 else (files[0].parent.name or "stack")
    metadata: dict[str, Any] = {"reader": "frames", "format": first.kind}
    rotated = [display_name(i.path) for i in infos if i.orientation != 1]
    if rotated:
        metadata["exif_orientation_applied"] = len(rotated)
    return Stack(
        data=data,
        axes="ZYXC" if first.channels > 1 else "ZYX",
        scale=scale,
        unit=unit,
        name=name,
        paths=tuple(files),
        metadata=metadata,
    )
