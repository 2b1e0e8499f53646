"""Camera raw files (DNG, RW2, CR2, NEF, ARW, ORF, RAF, PEF, ...) through rawpy/LibRaw.

:func:`read_raw` opens one raw file, a list of them or a folder of them as a lazy
:class:`~napari_focusdeep.stack.Stack` (one dask chunk per frame; opening decodes
the first file once, for its colour metadata, and reads only the size and
orientation of the others), in one of two forms:

``output="rgb"`` (what :func:`~napari_focusdeep.io.read_stack` returns)
    ``(Z, Y, X, 3)`` uint16, demosaiced by LibRaw (AHD by default) with one white
    balance for the whole stack (the first frame's as-shot white balance, so that
    frames the camera balanced slightly differently still fuse without colour
    seams), converted by the camera's colour matrix to sRGB primaries, with no
    automatic brightening (which would differ from frame to frame), and encoded with
    the exact sRGB curve (``gamma="srgb"``, default) or left linear
    (``gamma="linear"``). This is the stack for viewing and classical fusion.
``output="bayer"``
    ``(Z, Y/2, X/2, 4)`` float32 packed planes ``R, G1, G2, B`` (see
    :mod:`~napari_focusdeep.io.bayer`) in the camera's own colour space, black level
    subtracted per colour and divided by ``white - black``, clipped to [0, 1]. Any
    2x2 Bayer pattern is normalised to RGGB by cropping at most one row and column.
    This is the raw network's input.

Both forms are oriented for display (the file's orientation flag, as LibRaw
applies it) and share one pixel grid: RGB pixel ``(y, x)`` lies in packed pixel
``(y // 2, x // 2)``, because the RGB stack gets the same one-pixel crop (and even
size) as the mosaic.

Metadata (``Stack.metadata``): ``reader="raw"``, ``raw_output``, ``make``,
``model``, ``cfa_pattern`` (the sensor's, as stored) and ``bayer_crop``,
``black_level`` and ``white_level`` (first frame, per packed plane), ``camera_wb``
(``[R, G, B]`` gains, green = 1), ``cam_to_srgb`` (3x3, white-balanced camera RGB ->
linear sRGB, LibRaw's ``rgb_cam``), ``gamma``, ``iso``, ``exposure_s``,
``focus_distance_m`` (per frame, from EXIF ``SubjectDistance`` where the file has
it) and ``frame_order``.

Frame order: explicit lists are read as given; a folder in natural file-name
order, unless *every* frame has a distinct EXIF focus distance, in which case the
frames are ordered near to far by it (``order="name"`` or ``"focus"`` forces one).
"""
from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ..stack import Stack
from ._natural import natural_sorted
from ._tiff import display_name, stack_name
from .bayer import PLANE_OFFSETS, apply_flip, pack, pattern_string, rggb_origin

__all__ = [
    "RAW_EXTENSIONS",
    "RawHeader",
    "is_raw",
    "list_raw",
    "read_raw_header",
    "read_raw",
    "decode_rgb",
    "decode_bayer",
    "exif_focus_distance",
]

#: Camera raw extensions read through LibRaw (lower case, with the dot). CR3 needs a
#: LibRaw built with CR3 support (rawpy's wheels have it); X-Trans RAF files open as
#: RGB only (their filter array is not 2x2 Bayer).
RAW_EXTENSIONS = (
    ".dng", ".rw2", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2",
    ".orf", ".raf", ".pef", ".srw", ".rwl", ".3fr", ".iiq", ".erf", ".kdc", ".mos", ".mrw",
)  # fmt: skip

_EXTRA_HINT = "pip install 'napari-focusdeep[raw]'"
_OUTPUTS = ("rgb", "bayer")
_GAMMAS = ("srgb", "linear")
_ORDERS = ("auto", "name", "focus")
_DEMOSAIC = {"ahd": "AHD", "aahd": "AAHD", "dht": "DHT", "vng": "VNG", "ppg": "PPG", "linear": "LINEAR"}


def is_raw(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a camera raw extension (nothing is read)."""
    return os.fspath(path).lower().endswith(RAW_EXTENSIONS)


def list_raw(folder: str | os.PathLike) -> list[Path]:
    """Camera raw files directly inside ``folder`` (hidden files skipped), in natural order."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not is_raw(entry.name):
                continue
            try:
                if entry.is_file():
                    found.append(Path(entry.path))
            except OSError:  # broken link
                continue
    return natural_sorted(found)


def _rawpy() -> Any:
    try:
        import rawpy
    except ImportError:
        from .readers import MissingExtraError

        raise MissingExtraError(f"reading camera raw files needs the 'raw' extra (rawpy): {_EXTRA_HINT}") from None
    return rawpy


def _libraw_error(path: Path, exc: Exception) -> ValueError:
    rawpy = _rawpy()
    what = f"'{display_name(path)}'"
    if isinstance(exc, rawpy.LibRawFileUnsupportedError):
        return ValueError(
            f"cannot read {what}: LibRaw {'.'.join(map(str, rawpy.libraw_version))} does not "
            "recognise it as a camera raw file it supports"
        )
    if isinstance(exc, rawpy.LibRawIOError):
        return ValueError(f"cannot read {what}: the file is truncated or unreadable ({exc})")
    return ValueError(f"cannot read {what}: {exc}")


# -- headers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawHeader:
    """What a raw file's metadata says (see :func:`read_raw_header`).

    ``height``/``width`` are those of the displayed (oriented) visible area;
    ``origin`` is the ``(row, column)`` of the oriented mosaic's first red pixel, or
    None for sensors that are not 2x2 Bayer.
    """

    path: Path
    make: str
    model: str
    height: int
    width: int
    flip: int
    cfa: str
    origin: tuple[int, int] | None
    camera_wb: tuple[float, float, float] | None
    cam_to_srgb: tuple[tuple[float, ...], ...]
    iso: float | None
    exposure_s: float | None
    focus_distance_m: float | None
    pattern: tuple[tuple[int, ...], ...] | None = None
    color_desc: str = "RGBG"
    black_level: tuple[float, ...] = ()
    white_level: float | None = None

    @property
    def crop(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of the oriented frame kept by both outputs: starting on
        red and of even size."""
        oy, ox = self.origin or (0, 0)
        h2 = (self.height - oy) // 2 * 2
        w2 = (self.width - ox) // 2 * 2
        return oy, oy + h2, ox, ox + w2


def _source_index(r: int, c: int, flip: int, h: int, w: int) -> tuple[int, int]:
    """Sensor (visible-area) coordinates of displayed pixel ``(r, c)`` under
    :func:`~napari_focusdeep.io.bayer.apply_flip` (``h, w``: the sensor's size)."""
    if flip & 4:
        r, c = c, r
    if flip & 2:
        r = h - 1 - r
    if flip & 1:
        c = w - 1 - c
    return r, c


def _oriented_pattern(pattern: np.ndarray, flip: int, h: int, w: int) -> np.ndarray:
    out = np.empty((2, 2), dtype=pattern.dtype)
    for r in range(2):
        for c in range(2):
            sr, sc = _source_index(r, c, flip, h, w)
            out[r, c] = pattern[sr % 2, sc % 2]
    return out


def _wb3(values: Any) -> tuple[float, float, float] | None:
    v = [float(x) for x in values]
    if len(v) < 3 or not all(math.isfinite(x) for x in v[:3]) or min(v[:3]) <= 0:
        return None
    return (v[0] / v[1], 1.0, v[2] / v[1])


def _colour_matrix(raw: Any) -> np.ndarray:
    """White-balanced camera RGB -> linear sRGB: LibRaw's ``rgb_cam``; else from the
    XYZ->camera matrix (rows normalised, as LibRaw does); else identity."""
    cm = np.asarray(raw.color_matrix, np.float64)[:3, :3]
    if np.any(cm) and np.all(np.isfinite(cm)):
        return cm
    xyz_cam = np.asarray(raw.rgb_xyz_matrix, np.float64)[:3, :3]
    if np.any(xyz_cam) and np.all(np.isfinite(xyz_cam)):
        from ..training.unprocess import SRGB_TO_XYZ

        rgb_cam = xyz_cam @ SRGB_TO_XYZ
        rgb_cam /= rgb_cam.sum(axis=-1, keepdims=True)
        return np.linalg.inv(rgb_cam)
    return np.eye(3)


def read_raw_header(path: str | os.PathLike, *, template: RawHeader | None = None) -> RawHeader:
    """Read a raw file's metadata.

    rawpy decodes (unpacks, without demosaicking) a file to report its colour
    filter array, white balance or colour matrix; that costs a fraction of a second
    for a 24 MP file. With ``template`` (the first frame of a burst, same camera),
    only the size and orientation are read from the file (no decoding) and the
    colour metadata is taken from the template; the filter array is checked again
    when the frame is decoded.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file; a file LibRaw cannot read (the message says so).
    MissingExtraError
        rawpy is not installed.
    """
    rawpy = _rawpy()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"raw file not found: '{path}'")
    raw = rawpy.RawPy()
    iso = exposure = None
    try:
        raw.open_file(os.fspath(path))
        sizes = raw.sizes
        flip = int(sizes.flip)
        h, w = int(sizes.height), int(sizes.width)
        if template is None:
            pattern = raw.raw_pattern
            desc = raw.color_desc.decode("ascii", "replace")
            pattern = None if pattern is None else tuple(tuple(int(v) for v in row) for row in np.asarray(pattern))
            try:
                other = raw.other
                iso = float(other.iso_speed) or None
                exposure = float(other.shutter_speed) or None
            except Exception:  # noqa: BLE001 - optional metadata, older rawpy
                pass
            wb = _wb3(raw.camera_whitebalance)
            ccm = tuple(tuple(float(x) for x in row) for row in _colour_matrix(raw))
            black = tuple(float(b) for b in raw.black_level_per_channel)
            white = float(raw.white_level)
        else:
            pattern, desc = template.pattern, template.color_desc
            wb, ccm = template.camera_wb, template.cam_to_srgb
            iso, exposure = template.iso, template.exposure_s
            black, white = template.black_level, template.white_level
    except Exception as exc:
        if isinstance(exc, (FileNotFoundError, MemoryError)):
            raise
        raise _libraw_error(path, exc) from None
    finally:
        raw.close()
    cfa, origin = "none", None
    if pattern is not None:
        cfa = pattern_string(pattern, desc)
        if np.shape(pattern) == (2, 2):
            try:
                origin = rggb_origin(_oriented_pattern(np.asarray(pattern), flip, h, w), desc)
            except ValueError:
                origin = None
    tags = _tiff_tags(path)
    if flip & 4:
        h, w = w, h
    return RawHeader(
        path=path,
        make=tags.get(_MAKE, ""),
        model=tags.get(_MODEL, ""),
        height=h,
        width=w,
        flip=flip,
        cfa=cfa,
        origin=origin,
        camera_wb=wb,
        cam_to_srgb=ccm,
        iso=iso,
        exposure_s=exposure,
        focus_distance_m=tags.get(_SUBJECT_DISTANCE),
        pattern=pattern,
        color_desc=desc,
        black_level=black,
        white_level=white,
    )


# -- EXIF (a tiny TIFF walker: LibRaw does not report the focus distance) ------------------
_TIFF_MAGICS = (42, 0x55, 0x4F52, 0x5352)  # TIFF/DNG/NEF/CR2/ARW/PEF, RW2, ORF (IIRO, IIRS)
_SUBJECT_DISTANCE = 0x9206
_EXIF_IFD = 0x8769
_MAKE, _MODEL = 0x010F, 0x0110


def _ifd_entries(fh: Any, bo: str, offset: int, size: int) -> dict[int, tuple[int, int, bytes]]:
    """``tag -> (type, count, 4-byte value field)`` of the IFD at ``offset``."""
    if not 8 <= offset < size - 2:
        return {}
    fh.seek(offset)
    (count,) = struct.unpack(bo + "H", fh.read(2))
    if count > 4096:
        return {}
    data = fh.read(12 * count)
    out = {}
    for k in range(len(data) // 12):
        tag, typ, n = struct.unpack(bo + "HHI", data[12 * k : 12 * k + 8])
        out[tag] = (typ, n, data[12 * k + 8 : 12 * k + 12])
    return out


def _tiff_tags(path: Path) -> dict[int, Any]:
    """SubjectDistance (metres, inf, or None), Make and Model from IFD0 and its EXIF
    IFD of a TIFF-structured raw file; ``{}`` for other containers (CR3, RAF, MRW)."""
    found: dict[int, Any] = {}
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8 or head[:2] not in (b"II", b"MM"):
                return found
            bo = "<" if head[:2] == b"II" else ">"
            magic, ifd0 = struct.unpack(bo + "HI", head[2:8])
            if magic not in _TIFF_MAGICS:
                return found
            entries = _ifd_entries(fh, bo, ifd0, size)
            for tag in (_MAKE, _MODEL):
                if tag in entries and entries[tag][0] == 2:
                    typ, n, val = entries[tag]
                    if n <= 4:
                        text = val[:n]
                    elif n < 256:
                        fh.seek(struct.unpack(bo + "I", val)[0])
                        text = fh.read(n)
                    else:
                        continue
                    found[tag] = text.split(b"\0", 1)[0].decode("latin-1").strip()
            if _EXIF_IFD in entries and _SUBJECT_DISTANCE not in entries:
                exif = _ifd_entries(fh, bo, struct.unpack(bo + "I", entries[_EXIF_IFD][2])[0], size)
                entries = {**entries, **{t: v for t, v in exif.items() if t == _SUBJECT_DISTANCE}}
            if _SUBJECT_DISTANCE in entries:
                typ, n, val = entries[_SUBJECT_DISTANCE]
                if typ == 5 and n >= 1:  # RATIONAL
                    offset = struct.unpack(bo + "I", val)[0]
                    if 8 <= offset <= size - 8:
                        fh.seek(offset)
                        num, den = struct.unpack(bo + "II", fh.read(8))
                        if num == 0xFFFFFFFF:
                            found[_SUBJECT_DISTANCE] = math.inf
                        elif num and den:  # 0 means unknown
                            found[_SUBJECT_DISTANCE] = num / den
    except (OSError, struct.error):
        return {}
    return found


def exif_focus_distance(path: str | os.PathLike) -> float | None:
    """The EXIF ``SubjectDistance`` in metres (``inf`` for infinity) of a
    TIFF-structured raw file (DNG, NEF, CR2, ARW, PEF, RW2, ORF), or None when the file
    does not record it (best effort: maker-note focus distances are not parsed)."""
    return _tiff_tags(Path(path)).get(_SUBJECT_DISTANCE)


# -- decoding ------------------------------------------------------------------------------
def _check_oriented_cfa(header: RawHeader, colors: np.ndarray, desc: bytes) -> None:
    try:
        found = rggb_origin(colors[:2, :2], desc)
    except ValueError as exc:
        raise ValueError(f"'{display_name(header.path)}': {exc}") from None
    if found != header.origin:
        # a burst's other frames are opened with the first frame's colour metadata
        raise ValueError(
            f"'{display_name(header.path)}' has another colour filter array layout than the first "
            "frame of the stack (a different camera or crop?)"
        )


def decode_bayer(header: RawHeader) -> np.ndarray:
    """Decode one file to packed ``(h, w, 4)`` float32 RGGB planes in [0, 1]
    (black level subtracted per colour, divided by ``white - black``, oriented,
    cropped to :attr:`RawHeader.crop`)."""
    if header.origin is None:
        raise ValueError(
            f"'{display_name(header.path)}' has a {header.cfa} colour filter array, not a 2x2 "
            "Bayer; read it with output='rgb'"
        )
    rawpy = _rawpy()
    try:
        with rawpy.imread(os.fspath(header.path)) as raw:
            # rawpy's arrays are views of LibRaw's buffers, freed when the file closes
            mosaic = np.array(raw.raw_image_visible, copy=True)
            colors = np.array(raw.raw_colors_visible, copy=True)
            black = np.asarray(raw.black_level_per_channel, np.float32)
            white = float(raw.white_level)
            desc = raw.color_desc
    except Exception as exc:
        if isinstance(exc, (FileNotFoundError, MemoryError)):
            raise
        raise _libraw_error(header.path, exc) from None
    mosaic = apply_flip(mosaic, header.flip)
    colors = apply_flip(colors, header.flip)
    _check_oriented_cfa(header, colors, desc)
    y0, y1, x0, x1 = header.crop
    mosaic, colors = mosaic[y0:y1, x0:x1], colors[y0:y1, x0:x1]
    # per-plane black and white: every plane holds one colour index
    planes = pack(mosaic).astype(np.float32)
    plane_colours = pack(colors[:2, :2])[0, 0]
    for k, c in enumerate(plane_colours):
        b = black[int(c)] if int(c) < len(black) else black[0]
        planes[..., k] -= b
        planes[..., k] *= 1.0 / max(white - b, 1.0)
    np.clip(planes, 0.0, 1.0, out=planes)
    return planes


def _plane_levels(header: RawHeader) -> list[float]:
    """Black level of each packed plane (R, G1, G2, B), from the header's pattern."""
    if header.pattern is None or header.origin is None or not header.black_level:
        return []
    cell = _oriented_pattern(np.asarray(header.pattern), header.flip, *_sensor_size(header))
    oy, ox = header.origin
    black = header.black_level
    out = []
    for dy, dx in PLANE_OFFSETS:
        c = int(cell[(oy + dy) % 2, (ox + dx) % 2])
        out.append(float(black[c]) if c < len(black) else float(black[0]))
    return out


def _sensor_size(header: RawHeader) -> tuple[int, int]:
    return (header.width, header.height) if header.flip & 4 else (header.height, header.width)


def _srgb_lut() -> np.ndarray:
    from ..training.unprocess import linear_to_srgb

    x = np.arange(65536, dtype=np.float64) / 65535.0
    return np.rint(linear_to_srgb(x).astype(np.float64) * 65535.0).astype(np.uint16)


_LUT: list[np.ndarray] = []


def decode_rgb(
    header: RawHeader,
    *,
    wb: Sequence[float] | None,
    gamma: str = "srgb",
    demosaic: str = "ahd",
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Demosaic one file to ``(H, W, 3)`` uint16 sRGB (see :func:`read_raw`).

    ``wb`` is ``[R, G, B]`` (None: LibRaw's daylight default); the result is cropped
    to :attr:`RawHeader.crop` when LibRaw's output has the oriented visible size, and
    must then have ``shape``.
    """
    rawpy = _rawpy()
    kwargs: dict[str, Any] = dict(
        output_bps=16,
        gamma=(1.0, 1.0),
        no_auto_bright=True,
        output_color=rawpy.ColorSpace.sRGB,
        demosaic_algorithm=getattr(rawpy.DemosaicAlgorithm, _DEMOSAIC[demosaic]),
        use_camera_wb=False,
        use_auto_wb=False,
        # LibRaw by default raises the white level to the brightest pixel found when that
        # is above 75 % of it: frame-dependent scaling, which a stack must not have
        adjust_maximum_thr=0.0,
    )
    if wb is not None:
        kwargs["user_wb"] = [float(wb[0]), float(wb[1]), float(wb[2]), float(wb[1])]
    try:
        with rawpy.imread(os.fspath(header.path)) as raw:
            rgb = raw.postprocess(**kwargs)
    except Exception as exc:
        if isinstance(exc, (FileNotFoundError, MemoryError)):
            raise
        raise _libraw_error(header.path, exc) from None
    if rgb.shape[:2] == (header.height, header.width):
        y0, y1, x0, x1 = header.crop
        rgb = rgb[y0:y1, x0:x1]
    if shape is not None and rgb.shape[:2] != tuple(shape):
        raise ValueError(
            f"'{display_name(header.path)}' demosaiced to {rgb.shape[1]}x{rgb.shape[0]}, "
            f"expected {shape[1]}x{shape[0]}"
        )
    if gamma == "srgb":
        if not _LUT:
            _LUT.append(_srgb_lut())
        rgb = _LUT[0][rgb]
    return np.ascontiguousarray(rgb)


# -- the stack ---------------------------------------------------------------------------
def _rgb_block(block_id: tuple[int, ...] | None = None, *, headers: tuple[RawHeader, ...], **kw: Any) -> np.ndarray:
    return decode_rgb(headers[block_id[0]], **kw)[None]


def _bayer_block(block_id: tuple[int, ...] | None = None, *, headers: tuple[RawHeader, ...]) -> np.ndarray:
    return decode_bayer(headers[block_id[0]])[None]


def _rgb_shape(header: RawHeader) -> tuple[int, int]:
    """The demosaiced frame's size: LibRaw's output size (iheight x iwidth, after
    orientation) cropped like the mosaic when it matches the visible area."""
    y0, y1, x0, x1 = header.crop
    return y1 - y0, x1 - x0


def _check_headers(headers: Sequence[RawHeader], output: str) -> None:
    first = headers[0]
    ref = f"the first frame '{display_name(first.path)}'"
    for h in headers[1:]:
        name = f"frame '{display_name(h.path)}'"
        if (h.height, h.width) != (first.height, first.width):
            raise ValueError(f"{name} is {h.width}x{h.height} but {ref} is {first.width}x{first.height}")
        if output == "bayer" and h.origin != first.origin:
            raise ValueError(f"{name} has its colour filter array at another phase than {ref}")


def _order(headers: list[RawHeader], order: str, is_folder: bool) -> tuple[list[RawHeader], str]:
    dists = [h.focus_distance_m for h in headers]
    complete = all(d is not None for d in dists) and len(set(dists)) == len(dists)
    if order == "focus" or (order == "auto" and is_folder and complete and len(headers) > 1):
        if not complete:
            raise ValueError(
                "order='focus' needs an EXIF focus distance on every frame, all different; "
                f"{sum(d is None for d in dists)} of {len(dists)} frames have none"
            )
        return sorted(headers, key=lambda h: h.focus_distance_m), "focus distance (EXIF SubjectDistance)"
    return headers, "as given" if not is_folder else "file name"


def read_raw(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    output: str = "rgb",
    gamma: str = "srgb",
    demosaic: str = "ahd",
    order: str = "auto",
) -> Stack:
    """Open camera raw files as a lazy stack (see the module docstring).

    Parameters
    ----------
    source : path-like or sequence of path-like
        One raw file, a folder of them (other files are ignored), or a list.
    output : {"rgb", "bayer"}
        Demosaiced sRGB uint16 frames, or packed RGGB float32 planes.
    gamma : {"srgb", "linear"}
        RGB output only: the sRGB curve, or linear light (both 16-bit).
    demosaic : {"ahd", "aahd", "dht", "vng", "ppg", "linear"}
        LibRaw's demosaicking algorithm (RGB output only); ``"linear"`` is fastest.
    order : {"auto", "name", "focus"}
        See the module docstring.

    Raises
    ------
    FileNotFoundError
        A missing file or folder.
    ValueError
        No raw files; a file LibRaw cannot read; frames of different sizes; a
        non-Bayer sensor with ``output="bayer"``.
    MissingExtraError
        rawpy is not installed.
    """
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
    if gamma not in _GAMMAS:
        raise ValueError(f"gamma must be one of {_GAMMAS}, got {gamma!r}")
    if demosaic not in _DEMOSAIC:
        raise ValueError(f"demosaic must be one of {tuple(_DEMOSAIC)}, got {demosaic!r}")
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    is_folder = False
    if isinstance(source, (list, tuple)):
        files = [Path(os.fspath(p)).expanduser() for p in source]
        if not files:
            raise ValueError("no files given")
        name = stack_name(files[0]) if len(files) == 1 else (files[0].parent.name or "stack")
    else:
        path = Path(os.fspath(source)).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: '{path}'")
        if path.is_dir():
            is_folder = True
            files = list_raw(path)
            if not files:
                raise ValueError(
                    f"folder '{path.name or path}' holds no camera raw files; looked for "
                    + ", ".join(RAW_EXTENSIONS)
                )
            name = path.name or "stack"
        else:
            files, name = [path], stack_name(path)
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"raw file not found: '{f}'")
    first_header = read_raw_header(files[0])
    headers = [first_header] + [read_raw_header(f, template=first_header) for f in files[1:]]
    headers, frame_order = _order(headers, order, is_folder)
    if output == "bayer" and headers[0].origin is None:
        raise ValueError(
            f"'{display_name(headers[0].path)}' has a {headers[0].cfa} colour filter array, not a "
            "2x2 Bayer; only output='rgb' is available for it"
        )
    _check_headers(headers, output)
    first = headers[0]
    hdrs = tuple(headers)
    n = len(hdrs)
    if output == "rgb":
        h, w = _rgb_shape(first)
        chunks: tuple = ((1,) * n, (h,), (w,), (3,))
        dtype = np.dtype(np.uint16)
        kw = dict(wb=first.camera_wb, gamma=gamma, demosaic=demosaic, shape=(h, w))
        data = da.map_blocks(
            _rgb_block, headers=hdrs, chunks=chunks, dtype=dtype,
            meta=np.empty((0, 0, 0, 0), dtype), name=f"read-raw-rgb-{tokenize(hdrs, kw)}", **kw,
        )  # fmt: skip
    else:
        y0, y1, x0, x1 = first.crop
        chunks = ((1,) * n, ((y1 - y0) // 2,), ((x1 - x0) // 2,), (4,))
        dtype = np.dtype(np.float32)
        data = da.map_blocks(
            _bayer_block, headers=hdrs, chunks=chunks, dtype=dtype,
            meta=np.empty((0, 0, 0, 0), dtype), name=f"read-raw-bayer-{tokenize(hdrs)}",
        )  # fmt: skip
    metadata: dict[str, Any] = {
        "reader": "raw",
        "format": first.path.suffix.lower().lstrip("."),
        "raw_output": output,
        "make": first.make,
        "model": first.model,
        "cfa_pattern": first.cfa,
        "bayer_crop": list(first.origin) if first.origin is not None else None,
        "orientation_flip": first.flip,
        "camera_wb": list(first.camera_wb) if first.camera_wb else [1.0, 1.0, 1.0],
        "camera_wb_source": "as shot (first frame)" if first.camera_wb else "none in file: LibRaw daylight",
        "cam_to_srgb": [list(r) for r in first.cam_to_srgb],
        "iso": first.iso,
        "exposure_s": first.exposure_s,
        "focus_distance_m": [h.focus_distance_m for h in hdrs],
        "frame_order": frame_order,
    }
    if output == "rgb":
        metadata["gamma"] = gamma
        metadata["demosaic"] = demosaic
        metadata["colour"] = "sRGB primaries (camera matrix), one white balance for the stack"
    else:
        metadata["black_level"] = _plane_levels(first)
        metadata["white_level"] = first.white_level
        metadata["planes"] = "R, G1, G2, B (camera colour space, linear, [0, 1])"
    return Stack(
        data=data,
        axes="ZYXC",
        scale={},
        unit=None,
        name=name,
        paths=tuple(h.path for h in hdrs),
        metadata=metadata,
    )
