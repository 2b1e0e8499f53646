"""Fuse camera raw bursts into a colour-managed all-in-focus image.

Two paths, picked by :func:`fuse_raw` (``path="auto"``):

``"rgb"`` (every method)
    The burst is demosaiced by LibRaw to 16-bit sRGB (camera white balance and
    colour matrix applied, one white balance for the whole stack, see
    :mod:`napari_focusdeep.io.raw`), registered and fused by
    :func:`~napari_focusdeep.fusion.fuse` like any RGB stack.
``"bayer"`` (deep methods with raw-input weights: ``stem="raw"``)
    The packed RGGB planes (``(Z, H/2, W/2, 4)``, linear camera colour) are
    registered on a quick half-size luminance (or on the demosaiced frames,
    ``register_on="rgb"``), warped plane by plane with the full-resolution
    transforms (Bayer phase kept, see :mod:`napari_focusdeep.io.bayer`), and
    streamed through the network, which demosaics and fuses jointly and outputs
    linear camera RGB at full resolution (pixel shuffle). White balance, the camera
    matrix and the sRGB curve are applied afterwards
    (:func:`~napari_focusdeep.training.unprocess.process`), as in Brooks et al.

Both return a :class:`RawFusionResult` whose ``image`` is 16-bit sRGB and whose
``linear`` is the same image in linear sRGB (16-bit), for a "DNG-like" linear TIFF.
``path="bayer"`` without ``weights=`` uses the installed raw-input weights
(``focusdeep-any-raw``, see :func:`raw_weights`); ``path="auto"`` takes the Bayer
path only when the given ``weights`` are raw ones, so a deep method without
``weights=`` runs its RGB network on the demosaiced frames (docs/raw.md).
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fusion.core import FusionCancelled, Progress, block_grid, from_float, fuse_iter, to_float
from .stack import Stack

__all__ = ["RawFusionResult", "fuse_raw", "fuse_raw_iter", "raw_weights", "write_raw_result", "PATHS"]

PATHS = ("auto", "rgb", "bayer")
_DEEP_RAW = ("focusdeep", "focusdeep-any")
_FOCUS_SIGMA = 2.0


@dataclass
class RawFusionResult:
    """What :func:`fuse_raw` returns.

    Attributes
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint16, sRGB (white balance, camera matrix, sRGB curve).
    linear : numpy.ndarray
        ``(H, W, 3)`` uint16, the same image in linear sRGB.
    depth : numpy.ndarray
        float32 ``(H, W)``, the sharpest frame per pixel (frame indices).
    method, path : str
        The fusion method and ``"rgb"`` or ``"bayer"``.
    transforms : Transforms or None
        Full-resolution registration transforms.
    valid_region : tuple or None
        ``(y0, y1, x0, x1)`` covered by every registered frame.
    metadata : dict
        The raw stack's metadata (camera, white balance, colour matrix, ...).
    """

    image: np.ndarray
    linear: np.ndarray
    depth: np.ndarray
    method: str
    path: str
    transforms: Any = None
    valid_region: tuple[int, int, int, int] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    unit: str | None = None
    depth_unit: str = "frame"


# -- weights ------------------------------------------------------------------------------
def _weights_config(method: str, weights: Any, *, raw_default: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """The weights a deep method would use and their config; None for classical methods
    or when no weights can be found (the caller decides whether that is an error).
    Without ``weights``: the installed raw weights if ``raw_default``, else None."""
    if method not in ("focusdeep", "focusdeep-any", "unet"):
        return None
    from .models.weights import WeightsNotFoundError, read_config, resolve_weights

    if weights in (None, "") and not raw_default:
        return None
    try:
        path = resolve_weights(weights) if weights not in (None, "") else raw_weights(method)
    except WeightsNotFoundError:
        return None
    return path, read_config(path)


def raw_weights(architecture: str) -> Path:
    """The installed raw-input weights of ``architecture``.

    ``focusdeep-any-raw`` is shipped (trained on CPU on simulated raw bursts,
    docs/model-card.md); there are none for ``focusdeep``.

    Raises
    ------
    WeightsNotFoundError
        None are installed for ``architecture``.
    """
    from .models.weights import WeightsNotFoundError, _installed, read_config

    for p in _installed():
        try:
            cfg = read_config(p)
        except (ValueError, OSError):
            continue
        if cfg.get("architecture") == architecture and cfg.get("input") == "raw":
            return p
    raise WeightsNotFoundError(
        f"no raw-input weights are installed for {architecture}; pass weights=PATH to a model "
        "trained with stem='raw', or fuse the demosaiced frames (path='rgb')"
    )


def _choose_path(path: str, method: str, options: dict[str, Any]) -> tuple[str, tuple[Path, dict] | None]:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    # "auto" without weights keeps the RGB network on the demosaiced frames, as it
    # always did; the raw network is asked for with path="bayer" (--raw)
    found = _weights_config(method, options.get("weights"), raw_default=path == "bayer")
    is_raw = found is not None and found[1].get("input") == "raw"
    if path == "bayer":
        if method not in _DEEP_RAW:
            raise ValueError(
                f"the raw (Bayer) path needs a deep method with raw-input weights ({', '.join(_DEEP_RAW)}); "
                f"{method!r} fuses the demosaiced frames"
            )
        if found is None:
            raw_weights(method)  # raises with the explanation
        if not is_raw:
            raise ValueError(f"{found[0].name} takes RGB input; the raw path needs weights trained with stem='raw'")
        return "bayer", found
    if path == "auto" and is_raw:
        if method not in _DEEP_RAW:
            raise ValueError(f"{method} has no raw input stem")
        return "bayer", found
    return "rgb", None


# -- the packed-plane network ---------------------------------------------------------------
class _Depth:
    """Per pixel, the frame with the largest smoothed squared Laplacian (streamed)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.best = np.full(shape, -np.inf, np.float32)
        self.depth = np.zeros(shape, np.float32)
        self.z = 0

    def add(self, gray: np.ndarray) -> None:
        import cv2

        lap = cv2.Laplacian(np.ascontiguousarray(gray, np.float32), cv2.CV_32F, ksize=3)
        energy = cv2.GaussianBlur(lap * lap, (0, 0), _FOCUS_SIGMA, borderType=cv2.BORDER_REFLECT)
        better = energy > self.best
        self.best[better] = energy[better]
        self.depth[better] = self.z
        self.z += 1


def _fuse_packed(
    data: Any, weights: Path, cfg: dict[str, Any], *, device: str = "auto", tile: int = 256, precision: str = "auto"
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Stream registered packed frames ``(Z, h, w, 4)`` through a raw network, tile by
    tile; return linear camera RGB ``(2h, 2w, 3)`` and the depth map ``(2h, 2w)``."""
    import contextlib
    import shutil
    import tempfile

    import torch

    from .io.bayer import bayer_luminance
    from .models.base import resample_frames
    from .models.device import autocast_dtype, pick_device
    from .models.receptive import model_halo
    from .models.weights import load_model

    dev = pick_device(device)
    model = load_model(weights, dev)
    arch = cfg["architecture"]
    # model_halo counts mosaic pixels for the raw stem; tiles are cut on the packed grid
    halo = int(math.ceil(model_halo(arch, **cfg["kwargs"]) / 2))
    n, h, w, _ = (int(s) for s in data.shape)
    blocks = block_grid((h, w), max(int(tile), 16), halo, int(model.multiple))
    repeats = None if model.n_frames is None else np.bincount(resample_frames(n, model.n_frames), minlength=n)
    amp_dtype = autocast_dtype(dev, precision)
    amp = (lambda: torch.autocast(dev.type, dtype=amp_dtype)) if amp_dtype is not None else contextlib.nullcontext
    depth = _Depth((h, w))
    out = np.zeros((2 * h, 2 * w, 3), np.float32)
    spill = None
    total = n * (len(blocks) + (1 if len(blocks) > 1 else 0))
    step = 0
    try:
        if len(blocks) > 1:
            # every tile reads every frame: warp each frame once, to a memory-mapped file
            spill = Path(tempfile.mkdtemp(prefix="focusdeep-raw-"))
            frames = np.lib.format.open_memmap(spill / "packed.npy", mode="w+", dtype=np.float32, shape=(n, h, w, 4))
            for z in range(n):
                frames[z] = np.asarray(data[z], np.float32)
                depth.add(bayer_luminance(frames[z]))
                step += 1
                yield Progress(step, total, "prepare", "warping the raw frames")
        else:
            frames = data
        for block in blocks:
            ry0, ry1, rx0, rx1 = block.read
            with torch.inference_mode(), amp():
                stream = model.stream((1, 4, ry1 - ry0, rx1 - rx0))
                for z in range(n):
                    frame = np.asarray(frames[z, ry0:ry1, rx0:rx1], np.float32)
                    if spill is None:
                        depth.add(bayer_luminance(frame))
                    repeat = 1 if repeats is None else int(repeats[z])
                    if repeat:
                        t = torch.from_numpy(np.ascontiguousarray(frame)).to(dev).permute(2, 0, 1)[None]
                        stream.push(t, repeat=repeat)
                    step += 1
                    yield Progress(step, total, "fuse", f"fusing raw ({arch})")
                rgb = stream.finish().float()[0].permute(1, 2, 0).cpu().numpy()
            y0, y1, x0, x1 = block.core
            out[2 * y0 : 2 * y1, 2 * x0 : 2 * x1] = rgb[2 * (y0 - ry0) : 2 * (y1 - ry0), 2 * (x0 - rx0) : 2 * (x1 - rx0)]
    finally:
        if spill is not None:
            del frames
            shutil.rmtree(spill, ignore_errors=True)
    full_depth = np.repeat(np.repeat(depth.depth, 2, axis=0), 2, axis=1)
    return out, full_depth


# -- the driver -----------------------------------------------------------------------------
def _open(source: Any, output: str) -> Stack:
    from .io.raw import read_raw

    if isinstance(source, Stack):
        paths = list(source.paths)
        if source.metadata.get("reader") != "raw" or not paths:
            raise ValueError("not a camera raw stack: open it with napari_focusdeep.io.read_raw")
        if source.metadata.get("raw_output") == output and (output == "bayer" or source.metadata.get("gamma") == "srgb"):
            return source
        return read_raw(paths, output=output, order="name")  # paths are already in frame order
    return read_raw(source, output=output)


def fuse_raw_iter(
    source: str | os.PathLike | Sequence[str | os.PathLike] | Stack,
    *,
    method: str = "pyramid",
    path: str = "auto",
    register: bool = True,
    reference: str | int = "middle",
    motion: str = "affine",
    transforms: Any = None,
    register_on: str = "luminance",
    channel: int | str | None = None,
    block_size: int | None = None,
    **options: Any,
) -> Generator[Progress, None, RawFusionResult]:
    """Generator form of :func:`fuse_raw`, yielding :class:`Progress`."""
    from .training.unprocess import CameraParams, linear_to_srgb, process, srgb_to_linear

    if register_on not in ("luminance", "rgb"):
        raise ValueError(f"register_on must be 'luminance' or 'rgb', got {register_on!r}")
    which, found = _choose_path(path, method, options)
    if which == "rgb":
        stack = _open(source, "rgb")
        result = yield from fuse_iter(
            stack, method=method, register=register, reference=reference, motion=motion,
            transforms=transforms, channel=channel, block_size=block_size, **options,
        )  # fmt: skip
        srgb = to_float(result.image)
        linear = from_float(srgb_to_linear(srgb), np.uint16)
        return RawFusionResult(
            image=result.image, linear=linear, depth=result.depth, method=result.method, path="rgb",
            transforms=result.transforms, valid_region=result.valid_region, metadata=dict(stack.metadata),
        )  # fmt: skip

    from .io.bayer import apply_transforms_packed, iter_estimate_transforms_packed
    from .registration import iter_estimate_transforms

    stack = _open(source, "bayer")
    data = stack.data
    tf = transforms
    if register and tf is None and stack.n_frames > 1:
        if register_on == "rgb":
            rgb = _open(stack, "rgb")
            gen = iter_estimate_transforms(rgb.data, motion=motion, reference=reference)
        else:
            gen = iter_estimate_transforms_packed(data, motion=motion, reference=reference)
        try:
            while True:
                done, total = next(gen)
                yield Progress(done, total, "register", "registering")
        except StopIteration as stop:
            tf = stop.value
    if tf is not None:
        data = apply_transforms_packed(data, tf)
    weights, cfg = found
    opts = {k: options[k] for k in ("device", "tile", "precision") if options.get(k) is not None}
    if block_size:
        opts["tile"] = int(block_size) // 2  # block_size counts full-resolution pixels
    cam_linear, depth = yield from _fuse_packed(data, weights, cfg, **opts)
    camera = CameraParams.from_metadata(stack.metadata)
    lin = process(cam_linear, camera, gamma="linear")
    return RawFusionResult(
        image=from_float(linear_to_srgb(lin), np.uint16), linear=from_float(lin, np.uint16), depth=depth,
        method=method, path="bayer", transforms=tf, valid_region=getattr(tf, "valid_region", None),
        metadata=dict(stack.metadata),
    )  # fmt: skip


def fuse_raw(
    source: str | os.PathLike | Sequence[str | os.PathLike] | Stack,
    *,
    method: str = "pyramid",
    path: str = "auto",
    register: bool = True,
    reference: str | int = "middle",
    motion: str = "affine",
    transforms: Any = None,
    register_on: str = "luminance",
    channel: int | str | None = None,
    block_size: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> RawFusionResult:
    """Fuse a camera raw burst (a folder, a list of raw files, or a raw Stack).

    Parameters
    ----------
    source : path-like, sequence of path-like, or Stack
        Camera raw files (see :func:`napari_focusdeep.io.raw.read_raw`).
    method : str
        Any fusion method. Classical methods (and deep methods with RGB weights)
        fuse the demosaiced sRGB frames.
    path : {"auto", "rgb", "bayer"}
        ``"auto"``: the packed-Bayer network when ``method``'s weights take raw
        input, else the demosaiced frames. ``"bayer"`` insists on the network.
    register, reference, motion, transforms, channel, block_size
        As for :func:`~napari_focusdeep.fusion.fuse`; transforms are in
        full-resolution pixels on both paths.
    register_on : {"luminance", "rgb"}
        Bayer path: estimate the transforms on a half-size luminance of the packed
        planes (fast, no demosaicking) or on LibRaw's demosaiced frames.
    progress, cancel
        As for :func:`~napari_focusdeep.fusion.fuse`.
    **options
        Method options (``device``, ``weights``, ``tile``, ...).

    Returns
    -------
    RawFusionResult
    """
    gen = fuse_raw_iter(
        source, method=method, path=path, register=register, reference=reference, motion=motion,
        transforms=transforms, register_on=register_on, channel=channel, block_size=block_size, **options,
    )  # fmt: skip
    try:
        while True:
            p = next(gen)
            if cancel is not None and cancel.is_set():
                raise FusionCancelled("fusion cancelled")
            if progress is not None:
                progress(p)
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


def _srgb_icc() -> bytes | None:
    """An sRGB ICC profile (Pillow's LittleCMS), so photo software colour-manages the TIFF."""
    try:
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    except Exception:  # noqa: BLE001 - Pillow built without LittleCMS: untagged sRGB
        return None


def _write_rgb(path: Path, image: np.ndarray, *, srgb: bool, overwrite: bool) -> Path:
    """A TIFF as photo software expects it: one page, interleaved 16-bit RGB
    (``write_image`` stores 16-bit colour as ImageJ channel planes, which photo
    editors show as three gray pages), sRGB ICC profile on the sRGB image. Other
    extensions go through :func:`~napari_focusdeep.io.write_image`."""
    from .io import atomic_write, write_image

    if not path.name.lower().endswith((".tif", ".tiff")) or path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        return write_image(path, image, overwrite=overwrite)
    import tifffile

    description = (
        "all-in-focus image, sRGB (camera white balance and colour matrix applied), napari-focusdeep"
        if srgb
        else "all-in-focus image, linear light, sRGB primaries (D65), gamma 1.0, napari-focusdeep"
    )
    extratags = []
    icc = _srgb_icc() if srgb else None
    if icc is not None:
        extratags.append((34675, "B", len(icc), icc, True))  # InterColorProfile
    with atomic_write(path, overwrite=overwrite) as tmp:
        tifffile.imwrite(
            tmp, np.ascontiguousarray(image), photometric="rgb", planarconfig="contig",
            compression="zlib", description=description, metadata=None, extratags=extratags,
        )  # fmt: skip
    return path


def write_raw_result(
    result: RawFusionResult,
    path: str | os.PathLike,
    *,
    linear_path: str | os.PathLike | None = None,
    crop_valid: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Write the sRGB image (a 16-bit RGB TIFF with an sRGB ICC profile, or PNG etc. by
    extension) and optionally the linear one (16-bit RGB TIFF, linear sRGB);
    ``crop_valid`` crops both to the region every registered frame covers."""
    image, linear = result.image, result.linear
    if crop_valid and result.valid_region is not None:
        y0, y1, x0, x1 = result.valid_region
        image, linear = image[y0:y1, x0:x1], linear[y0:y1, x0:x1]
    if linear_path is not None and Path(linear_path).exists() and not overwrite:
        raise FileExistsError(f"'{linear_path}' already exists; pass overwrite=True to replace it")
    written = [_write_rgb(Path(path), image, srgb=True, overwrite=overwrite)]
    if linear_path is not None:
        written.append(_write_rgb(Path(linear_path), linear, srgb=False, overwrite=overwrite))
    return written
