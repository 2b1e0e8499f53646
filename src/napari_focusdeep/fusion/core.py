"""``fuse``: the one entry point every face (napari, CLI, benchmarks) calls.

The driver streams frames: for each block of the image (the whole image unless it
is very large) it reads the frames one by one, normalises them to float32, hands
them to the method's accumulator and yields progress, so memory is a few frames'
worth whatever the number of frames, and a consumer can cancel at every frame.
"""
from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generator

import dask.array as da
import numpy as np

from .._prefetch import prefetch
from ..stack import Stack
from ._spill import FrameSpill, SpillSpaceError
from .registry import Method, TileOutOfMemory, declares_halo, get_method

__all__ = [
    "FusionResult",
    "Progress",
    "FusionCancelled",
    "fuse",
    "fuse_iter",
    "to_float",
    "from_float",
    "selection_image",
    "block_grid",
    "memory_block_size",
]


class FusionCancelled(RuntimeError):
    """Raised by :func:`fuse` when its ``cancel`` event is set."""


@dataclass(frozen=True)
class Progress:
    """One step of a long run: ``done`` of ``total`` steps in ``stage``."""

    done: int
    total: int
    stage: str
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class FusionResult:
    """What :func:`fuse` returns.

    Attributes
    ----------
    image : numpy.ndarray
        The all-in-focus image, ``(Y, X[, C])`` (``(T, Y, X[, C])`` for time series),
        in the input dtype.
    depth : numpy.ndarray or None
        float32 depth map ``(Y, X)``: the sharpest frame per pixel, multiplied by the
        z-step when it is known (see ``depth_unit``); ``None`` with ``depth=False``.
    depth_unit : str
        ``"frame"`` or the stack's spatial unit.
    method : str
        The method that made it.
    transforms : object or None
        The registration transforms (:class:`napari_focusdeep.registration.Transforms`)
        when registration ran; for time series, those of the last time point.
    valid_region : tuple or None
        ``(y0, y1, x0, x1)`` covered by every registered frame; crop to it to drop
        the borders that warping filled in.
    scale : dict
        Physical pixel size of the result (``"Y"``, ``"X"``), copied from the stack.
    registered : dask.array.Array or None
        The registered stack (lazy), when asked for with ``return_registered=True``.
    """

    image: np.ndarray
    depth: np.ndarray | None
    depth_unit: str = "frame"
    method: str = "pyramid"
    transforms: Any = None
    valid_region: tuple[int, int, int, int] | None = None
    scale: dict[str, float] = field(default_factory=dict)
    unit: str | None = None
    registered: da.Array | None = None
    info: dict[str, Any] = field(default_factory=dict)


# -- dtype handling --------------------------------------------------------------------
def to_float(frame: np.ndarray) -> np.ndarray:
    """Scale integer data to float32 in [0, 1] by its dtype's range; floats pass through."""
    frame = np.asarray(frame)
    if frame.dtype.kind in "ui":
        info = np.iinfo(frame.dtype)
        out = frame.astype(np.float32)
        if info.min < 0:
            out -= info.min
        out *= 1.0 / (info.max - info.min)
        return out
    if frame.dtype == np.bool_:
        return frame.astype(np.float32)
    return frame.astype(np.float32, copy=False)


def from_float(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`to_float`: clip and round back into an integer dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        # float32 holds every 8- and 16-bit level exactly; wider integers need float64
        work = np.float32 if dtype.itemsize <= 2 else np.float64
        flat_in = np.ascontiguousarray(image).reshape(-1)
        out = np.empty(image.shape, dtype)
        flat_out = out.reshape(-1)
        # a chunk at a time, so a 12 MP result needs no full-size float copy of itself
        for i in range(0, flat_in.size, _CHUNK):
            scaled = np.multiply(flat_in[i : i + _CHUNK], work(info.max - info.min), dtype=work)
            if info.min:
                scaled += work(info.min)
            np.rint(scaled, out=scaled)
            np.clip(scaled, info.min, info.max, out=scaled)
            flat_out[i : i + _CHUNK] = scaled
        return out
    if dtype == np.bool_:
        return image >= 0.5
    return image.astype(dtype, copy=False)


#: Elements per chunk in :func:`from_float` (4 MB of float32).
_CHUNK = 1 << 20
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def selection_image(frame: np.ndarray, channel: int | str | None = None) -> np.ndarray:
    """The gray image focus is measured on.

    ``frame`` is ``(H, W, C)`` float32. ``channel=None`` or ``"luminance"`` takes
    Rec. 601 luminance for RGB(A) and the channel mean for other channel counts;
    ``"max"`` the per-pixel maximum (fluorescence with sparse channels); an integer
    selects one channel.
    """
    c = frame.shape[-1]
    if channel is None or channel == "luminance":
        if c == 1:
            return frame[..., 0]
        if c in (3, 4):
            return frame[..., :3] @ _LUMA
        return frame.mean(axis=-1)
    if channel == "max":
        return frame.max(axis=-1)
    idx = int(channel)
    if not -c <= idx < c:
        raise ValueError(f"channel {idx} does not exist; the stack has {c} channel(s)")
    return frame[..., idx]


# -- blocks ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """A core region ``[y0, y1) x [x0, x1)`` and the larger region read around it."""

    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]


def block_grid(
    shape: tuple[int, int], block: int, halo: int, align: int = 1, ramp: int = 0
) -> list[Block]:
    """Tile ``shape`` into cores of about ``block`` pixels with ``halo + ramp`` context.

    Core origins are multiples of ``align`` and the context is rounded up to one,
    so multi-scale methods see the same pixel grid in a block as in the whole image.
    """
    h, w = shape
    align = max(1, int(align))
    ctx = int(math.ceil((halo + ramp) / align) * align)
    step = max(align, (int(block) // align) * align)
    blocks = []
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            y1, x1 = min(h, y0 + step), min(w, x0 + step)
            read = (max(0, y0 - ctx), min(h, y1 + ctx), max(0, x0 - ctx), min(w, x1 + ctx))
            blocks.append(Block((y0, y1, x0, x1), read))
    return blocks


def _ramp(n: int, lo: int, hi: int, start: int, stop: int, ramp: int) -> np.ndarray:
    """1-D weights over read region [start, stop): 1 on the core [lo, hi), raised-cosine
    ramps of width ``2*ramp`` centred on interior core edges, 0 beyond."""
    pos = np.arange(start, stop, dtype=np.float64) + 0.5
    w = np.ones(stop - start)
    if ramp <= 0:
        return ((pos >= lo) & (pos < hi)).astype(np.float32)
    if lo > 0:
        t = np.clip((pos - (lo - ramp)) / (2 * ramp), 0, 1)
        w *= np.sin(0.5 * np.pi * t) ** 2
    if hi < n:
        t = np.clip((pos - (hi - ramp)) / (2 * ramp), 0, 1)
        w *= np.cos(0.5 * np.pi * t) ** 2
    return w.astype(np.float32)


# -- the driver -----------------------------------------------------------------------
def fuse_iter(
    stack: Stack | np.ndarray | da.Array,
    *,
    method: str = "pyramid",
    register: bool = True,
    reference: str | int = "middle",
    motion: str = "affine",
    transforms: Any = None,
    interpolation: str = "cubic",
    channel: int | str | None = None,
    block_size: int | None = None,
    return_registered: bool = False,
    depth: bool = True,
    **options: Any,
) -> Generator[Progress, None, FusionResult]:
    """Fuse a stack, yielding :class:`Progress` after every frame; returns the result.

    Use ``result = yield from fuse_iter(...)`` inside another generator (the napari
    worker does), or call :func:`fuse`. Closing the generator cancels the run and
    removes any temporary files. Parameters are those of :func:`fuse`.
    """
    if not isinstance(stack, Stack):
        stack = Stack.from_array(stack)
    stack = _refuse_non_finite(stack)
    meth = get_method(method)
    opts = {**meth.options, **options}
    if stack.n_frames < 1:
        raise ValueError("the stack has no frames")
    # Validate the options before registering: a deep method finds its weights here,
    # so a missing weights file fails at once rather than after minutes of ECC.
    meth.halo(**opts)
    from ..registration import INTERPOLATIONS

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    n_t = stack.n_timepoints
    want_depth = bool(depth)
    images, depths = [], []
    result_transforms = None
    registered = None
    info: dict[str, Any] = {}
    for t in range(n_t):
        zstack = stack.timepoint(t)
        data = zstack.data
        if zstack.has_channels is False:
            data = data[..., None]
        if register and transforms is None and zstack.n_frames > 1 and min(zstack.frame_shape) < _MIN_REGISTER:
            import warnings

            from ..registration import RegistrationWarning

            # OpenCV's phase correlation asserts on a 1-pixel side, and no motion can be
            # measured on a few pixels anyway
            h, w = zstack.frame_shape
            warnings.warn(f"frames of {w}x{h} pixels are too small to register; fusing them as they are",
                          RegistrationWarning, stacklevel=2)
            register = False
        if register and transforms is None and zstack.n_frames > 1:
            from ..registration import iter_estimate_transforms

            gen = iter_estimate_transforms(data, motion=motion, reference=reference)
            tf = yield from _relay(gen, "register", f"registering (time point {t + 1}/{n_t})" if n_t > 1 else "registering")
        else:
            tf = transforms
        if tf is not None:
            from ..registration import apply_transforms

            data = apply_transforms(data, tf, interpolation=interpolation)
        result_transforms = tf
        image, depth, info = yield from _fuse_zstack(data, meth, opts, channel, block_size, want_depth)
        images.append(from_float(image if zstack.has_channels else image[..., 0], stack.dtype))
        depths.append(depth)
        if return_registered:
            registered = data if zstack.has_channels else data[..., 0]
    image = images[0] if n_t == 1 else np.stack(images)
    depth_unit = "frame"
    depth = None
    if want_depth:
        depth = depths[0] if n_t == 1 else np.stack(depths)
        if stack.z_step:
            depth = depth * np.float32(stack.z_step)
            depth_unit = stack.unit or "physical"
        depth = depth.astype(np.float32, copy=False)
    return FusionResult(
        image=image,
        depth=depth,
        depth_unit=depth_unit,
        method=meth.name,
        transforms=result_transforms,
        valid_region=getattr(result_transforms, "valid_region", None),
        scale={k: v for k, v in stack.scale.items() if k in "YX"},
        unit=stack.unit,
        registered=registered,
        info=info,
    )


def _refuse_non_finite(stack: Stack) -> Stack:
    """Make reading a frame that holds NaN or infinity raise a ``ValueError`` naming it.

    The check rides on the lazy data, so registration and fusion both read
    through it at no extra pass over the stack: a NaN would otherwise spread
    through every pyramid level into a blotch of NaN in the result, or make
    registration fail. Only float stacks can hold such values.
    """
    if stack.dtype.kind not in "fc":
        return stack
    z_axis = stack.axes.index("Z")
    timed = stack.axes.startswith("T")
    files = stack.paths if len(stack.paths) == stack.n_frames else ()
    name = stack.name

    def check(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        finite = np.isfinite(block)
        if finite.all():
            return block
        loc = block_info[0]["array-location"] if block_info else [(0, 0)] * block.ndim
        bad_z = np.moveaxis(~finite, z_axis, 0).reshape(block.shape[z_axis], -1).any(axis=1)
        offset = int(np.argmax(bad_z))
        z = loc[z_axis][0] + offset
        frame = np.take(block, offset, axis=z_axis)
        count = int(np.count_nonzero(~np.isfinite(frame)))
        where = f"frame {z}" + (f" of time point {loc[0][0]}" if timed else "")
        source = f" ('{Path(files[z]).name}')" if files and not timed else ""
        kinds = " or ".join(k for k, bad in (("NaN", np.isnan(frame).any()), ("infinite", np.isinf(frame).any())) if bad)
        raise ValueError(
            f"{where}{source} of '{name}' holds {count} {kinds} value{'s' if count != 1 else ''}; "
            "fusion would spread them into the result: replace them first (e.g. numpy.nan_to_num)"
        )

    data = stack.data.map_blocks(check, dtype=stack.dtype, meta=np.empty((0,) * stack.data.ndim, stack.dtype))
    return replace(stack, data=data)


def _relay(gen: Generator, stage: str, message: str) -> Generator[Progress, None, Any]:
    """Turn a sub-generator's ``(done, total)`` yields into :class:`Progress`."""
    try:
        while True:
            done, total = next(gen)
            yield Progress(done, total, stage, message)
    except StopIteration as stop:
        return stop.value


_MIN_BLOCK = 16
#: Frames with a side shorter than this are fused without registration.
_MIN_REGISTER = 8


#: Peak bytes per pixel and per (channel + 2) of whole-image classical fusion: 100 per
#: RGB pixel, 8.4 float32 RGB frames (the running pyramid, the depth map's arg-max, the
#: current frame and its pyramid, the frame read ahead), measured by
#: ``python -m benchmarks.memory`` (docs/peers.md, "Memory against frames and frame size").
_WHOLE_IMAGE_BYTES = 20
#: Block side chosen when whole-image fusion would not fit: a working set of about
#: 300 MB whatever the frame size (the pyramid's 384-pixel halo makes smaller blocks slow).
_MEMORY_BLOCK = 1024


def memory_block_size(frame_shape: tuple[int, int, int], available: int | None = None) -> int | None:
    """Block side for classical fusion of ``(Y, X, C)`` frames, or ``None`` for the whole image.

    Whole-image fusion is the fastest, but its working memory grows with the frame
    (about 8 float32 frames). When that would take more than half of the memory
    available now, fuse in blocks instead: the working memory is then a constant
    (one block's) plus the result, and the frames wait in a scratch file on disk.
    """
    h, w, c = (int(s) for s in frame_shape)
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    need = h * w * (c + 2) * _WHOLE_IMAGE_BYTES
    if need <= available // 2 or max(h, w) <= _MEMORY_BLOCK:
        return None
    return _MEMORY_BLOCK


def _fuse_zstack(
    data: da.Array,
    meth: Method,
    opts: dict[str, Any],
    channel: int | str | None,
    block_size: int | None,
    want_depth: bool = True,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray | None, dict]]:
    n, h, w, c = (int(s) for s in data.shape)
    halo = int(meth.halo(**opts))
    align = int(meth.align(**opts))
    ramp = int(opts.get("ramp", 0)) if meth.blend else 0
    # ``tile`` is the deep methods' name for the block size.
    block = block_size or opts.get("block_size") or opts.get("tile")
    # blocks by our choice only for methods that say what context a block needs
    auto = memory_block_size((h, w, c)) if not block and meth.kind == "classical" and declares_halo(meth) else None
    block = int(block or auto or meth.default_block)
    if meth.prepare is not None:
        opts = meth.prepare(data, channel, dict(opts))
    spill = None
    try:
        while True:
            blocks = block_grid((h, w), block, halo, align, ramp)
            if len(blocks) > 1 and spill is None:
                # Reading a block of a lazily decoded (JPEG, compressed TIFF) or warped frame
                # redoes the whole frame's work for every block; write each frame once to a
                # scratch file so blocks read only their own pixels.
                try:
                    spill = FrameSpill((n, h, w, c), data.dtype)
                except SpillSpaceError as exc:
                    if auto is None:
                        raise
                    # blocks were our idea, not the caller's: try the whole image after all
                    warnings.warn(f"{exc}; fusing the whole image at once, which may run out of memory",
                                  ResourceWarning, stacklevel=3)
                    auto, block = None, max(h, w, meth.default_block)
                    continue
                yield from _spill(data, spill)
            read = spill.read if spill is not None else _reader(data)
            try:
                image, depth = yield from _fuse_blocks(read, (n, h, w, c), blocks, meth, opts, channel, ramp, want_depth)
                resolved = {k: opts[k] for k in meth.options if k in opts}  # e.g. the noise level "auto" found
                return image, depth, {"blocks": len(blocks), "halo": halo, "block_size": block, "options": resolved}
            except TileOutOfMemory as exc:
                reason = str(exc)
            # Out of memory on a block (a GPU, usually): free what the method cached and
            # start this z-stack again with blocks of half the size.
            if meth.release is not None:
                meth.release()
            smaller = max(align, (block // 2 // align) * align)
            if smaller >= block or smaller < _MIN_BLOCK:
                raise TileOutOfMemory(f"{reason}, even with {block}-pixel blocks; free GPU memory or use device='cpu'")
            yield Progress(0, n * len(block_grid((h, w), smaller, halo, align, ramp)), "fuse",
                           f"out of memory with {block}-pixel tiles; retrying with {smaller}-pixel tiles")
            block = smaller
    finally:
        if meth.release is not None:
            meth.release()
        if spill is not None:
            spill.close()


def _reader(data: Any) -> Callable[[int, int, int, int, int], np.ndarray]:
    def read(z: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(data[z, y0:y1, x0:x1])

    return read


def _fuse_blocks(
    read: Callable[[int, int, int, int, int], np.ndarray],
    shape: tuple[int, int, int, int],
    blocks: list[Block],
    meth: Method,
    opts: dict[str, Any],
    channel: int | str | None,
    ramp: int,
    want_depth: bool = True,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray | None]]:
    n, h, w, c = shape
    total = n * len(blocks)
    if not want_depth and meth.depth_optional:
        opts = {**opts, "track_depth": False}
    # the output planes are allocated when the first block is done, not while its
    # accumulator streams (at 12 MP RGB they are 190 MB)
    image = depth = weight = None
    lo, hi = np.float32(np.inf), np.float32(-np.inf)
    step = 0
    for block in blocks:
        ry0, ry1, rx0, rx1 = block.read
        acc = meth.make(n, (ry1 - ry0, rx1 - rx0, c), **opts)

        def load(z: int, ry0: int = ry0, ry1: int = ry1, rx0: int = rx0, rx1: int = rx1) -> np.ndarray:
            return read(z, ry0, ry1, rx0, rx1)

        # The next frame is read (decoded, warped) while this one is fused; it waits in
        # its own dtype (a quarter of float32 for 8-bit frames).
        for raw in prefetch(load, n):
            frame = to_float(raw)
            del raw
            lo, hi = min(lo, frame.min()), max(hi, frame.max())
            acc.add(frame, selection_image(frame, channel))
            step += 1
            yield Progress(step, total, "fuse", f"fusing ({meth.name})")
        out, dep = acc.finish()
        del acc
        if not want_depth:
            dep = None
        y0, y1, x0, x1 = block.core
        if len(blocks) == 1 and not ramp:
            image, depth = out, dep  # one block is the whole image: no copy
            continue
        if image is None:
            image = np.zeros((h, w, c), np.float32)
            depth = np.zeros((h, w), np.float32) if want_depth else None
            weight = np.zeros((h, w), np.float32) if ramp else None
        if weight is None:
            sy, sx = slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0)
            image[y0:y1, x0:x1] = out[sy, sx]
            if depth is not None:
                depth[y0:y1, x0:x1] = dep[sy, sx]
        else:
            wy = _ramp(h, y0, y1, ry0, ry1, ramp)
            wx = _ramp(w, x0, x1, rx0, rx1, ramp)
            wgt = wy[:, None] * wx[None, :]
            image[ry0:ry1, rx0:rx1] += out * wgt[..., None]
            if depth is not None:
                depth[ry0:ry1, rx0:rx1] += dep * wgt
            weight[ry0:ry1, rx0:rx1] += wgt
    if image is None:  # no blocks at all (an empty frame)
        image = np.zeros((h, w, c), np.float32)
        depth = np.zeros((h, w), np.float32) if want_depth else None
    if weight is not None:
        image /= np.maximum(weight, 1e-12)[..., None]
        if depth is not None:
            depth /= np.maximum(weight, 1e-12)
    if meth.kind == "classical":
        # Multi-scale selection (pyramid, wavelet) overshoots next to strong edges; a value
        # no frame holds (a negative fluorescence intensity, a float above the sensor's
        # maximum) is an artefact, so the result stays within the range of the input.
        # The range is global, so block-wise fusion still equals whole-image fusion.
        # Deep models are left alone: what they output is what they were trained to.
        np.clip(image, lo, hi, out=image)
    return image, depth


def _spill(data: da.Array, spill: FrameSpill) -> Generator[Progress, None, None]:
    n = int(data.shape[0])
    # decode and warp the next frame while this one is written
    for z, frame in enumerate(prefetch(lambda i: np.asarray(data[i]), n)):
        spill.write(z, frame)
        del frame
        yield Progress(z + 1, n, "prepare", "caching frames for block-wise fusion")


def fuse(
    stack: Stack | np.ndarray | da.Array,
    *,
    method: str = "pyramid",
    register: bool = True,
    reference: str | int = "middle",
    motion: str = "affine",
    transforms: Any = None,
    interpolation: str = "cubic",
    channel: int | str | None = None,
    block_size: int | None = None,
    return_registered: bool = False,
    depth: bool = True,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    **options: Any,
) -> FusionResult:
    """Fuse a focus stack into one all-in-focus image.

    Parameters
    ----------
    stack : Stack or array
        ``(Z, Y, X[, C])`` frames (a plain array's axes are inferred), or a
        :class:`~napari_focusdeep.stack.Stack`, which may carry a T axis.
    method : str
        A name from :func:`~napari_focusdeep.fusion.registry.list_methods`:
        ``"pyramid"`` (default), ``"laplacian"``, ``"wavelet"`` or a deep model.
    register : bool
        Align the frames first (ECC, each frame to the previous, chained).
    reference : {"first", "middle", "last"} or int
        Frame the others are aligned to; the result is in its geometry.
    motion : {"translation", "euclidean", "affine", "homography"}
        Registration model.
    transforms : Transforms, optional
        Apply these (e.g. estimated on another channel) instead of estimating.
    interpolation : {"cubic", "linear", "lanczos", "nearest"}
        How registered frames are resampled. Bilinear resampling blurs a frame
        shifted by half a pixel to about half its finest detail; cubic keeps it
        (+1.5 dB on clean synthetic stacks, docs/peers.md), at a little more time.
    channel : int, "luminance", "max" or None
        What focus is measured on; the selection applies to all channels.
    block_size : int, optional
        Fuse in blocks of about this many pixels per side (with overlap) to bound
        memory on very large frames. The result equals whole-image fusion.
    return_registered : bool
        Also return the registered stack (lazy).
    depth : bool
        Also make the depth map. Without it the classical methods skip its focus
        measure and arg-max: about a fifth less time and five fewer full-size planes
        for ``pyramid``.
    progress : callable, optional
        Called with a :class:`Progress` after every frame.
    cancel : threading.Event, optional
        When set, the run stops at the next frame with :class:`FusionCancelled`.
    **options
        Method options (see each method's documentation).

    Returns
    -------
    FusionResult
        With the classical methods the image lies within the range of the
        input values (multi-scale methods would otherwise overshoot next to
        strong edges).

    Raises
    ------
    ValueError
        When a float frame holds NaN or infinity (the message names the frame),
        a method or option is unknown, or the stack has no frames.
    FusionCancelled
        When ``cancel`` is set.
    """
    gen = fuse_iter(
        stack,
        method=method,
        register=register,
        reference=reference,
        motion=motion,
        transforms=transforms,
        interpolation=interpolation,
        channel=channel,
        block_size=block_size,
        return_registered=return_registered,
        depth=depth,
        **options,
    )
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
