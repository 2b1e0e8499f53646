"""Fusion methods backed by the networks: ``focusdeep``, ``focusdeep-any``, ``unet``.

Options (all methods)
---------------------
device : {"auto", "cpu", "cuda", "mps"}
    Where the network runs; ``"auto"`` takes CUDA, then MPS, then the CPU.
weights : str or path, optional
    A ``.safetensors`` file (its ``.json`` config beside it) or the name of
    installed weights; default: the installed weights for the method.
tile : int
    Core size of the tiles the image is fused in (pixels per side; each tile
    reads ``halo + ramp`` more on every side). Smaller tiles need less memory; on
    GPU out-of-memory the driver halves it and retries. ``block_size=`` is the
    same thing and wins when both are given.
ramp : int
    Half-width of the raised-cosine blend between tiles.
precision : {"auto", "float32", "bfloat16", "float16"}
    Autocast dtype on CUDA (``"auto"``: bfloat16 where supported, else float16).
noise : "auto" or float
    For networks built on the classical pyramid (``base="pyramid"``, the shipped
    ``focusdeep-any``): the noise level of that pyramid, as ``pyramid``'s option.
    ``"auto"`` measures it once per stack (per channel for stacks that are neither
    gray nor RGB), so tiles agree; other networks ignore it.

The option check (``halo``), which the driver runs before reading or registering
the stack, verifies the weights file (checksum and safetensors header), so a
damaged file is refused at once.

The halo is the network's receptive field (measured, see
:mod:`~napari_focusdeep.models.receptive`) plus the bounded reach of its
deformable offsets, so tiled fusion equals whole-image fusion up to float
rounding.

Channels: RGB stacks run as they are. A gray stack (one channel) runs through the
RGB network with the channel replicated, and the three outputs are averaged back
to one channel. Any other channel count (2, RGBA, multichannel fluorescence) runs
every channel separately as gray (batched), so each channel is fused on its own
focus.

Burst length: ``focusdeep-any`` streams every frame through the network with
memory independent of the number of frames. ``focusdeep`` and ``unet`` are built
for a fixed number of frames; a stack of another length is resampled to it
(evenly subsampled, or frames repeated; see
:func:`~napari_focusdeep.models.base.resample_frames`), and
:func:`resampling_note` says when that happens. They stream too: their
first fusion layer is a sum over frames, so no tile holds the whole burst.

The depth map is classical: per pixel, the frame with the largest smoothed
squared Laplacian of the selection image.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

if importlib.util.find_spec("torch") is None:  # the registry then lists only classical methods
    raise ImportError("torch is not installed; the deep fusion methods need it")

import numpy as np

from ..fusion.registry import Method, TileOutOfMemory, register_method

__all__ = ["DeepAccumulator", "OPTIONS", "clear_model_cache", "resampling_note", "trained_frames"]

OPTIONS: dict[str, Any] = {"device": "auto", "weights": None, "tile": 512, "ramp": 16, "precision": "auto", "noise": "auto"}

_FOCUS_SIGMA = 2.0
_FOCUS_RADIUS = 1 + int(np.ceil(3 * _FOCUS_SIGMA))  # Laplacian + Gaussian support
_MODEL_CACHE_SIZE = 2

_DESCRIPTIONS = {
    "focusdeep": "FocusDeep network (paper): PCD alignment to the previous frame, conv fusion, LRCN; fixed frame count",
    "focusdeep-any": "FocusDeep for any number of frames: streamed attention/max/mean fusion, constant memory",
    "unet": "UNet baseline (paper): frames stacked on channels; fixed frame count",
}


# -- weights and configs -------------------------------------------------------------
def _weights_path(arch: str, weights: Any) -> Path:
    from .weights import default_weights, resolve_weights

    return default_weights(arch) if weights in (None, "") else resolve_weights(weights)


@lru_cache(maxsize=16)
def _verified_config(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    from .weights import verify_weights

    # Verified here, in the option check the driver runs before it reads or
    # registers anything, so a damaged file fails at once rather than after the
    # registration pass (minutes on a large stack). Keyed on mtime and size: a
    # file replaced later is checked again, and loading re-checks the bytes.
    return verify_weights(path)


def _config_for(arch: str, weights: Any) -> tuple[Path, dict[str, Any]]:
    path = _weights_path(arch, weights)
    st = path.stat()
    cfg = _verified_config(str(path), st.st_mtime_ns, st.st_size)
    if cfg["architecture"] != arch:
        raise ValueError(
            f"{path.name} holds a {cfg['architecture']} network, not {arch}; use method={cfg['architecture']!r}"
        )
    if cfg.get("input", "rgb") != "rgb" or int(cfg["kwargs"].get("in_channels", 3)) != 3:
        raise ValueError(f"{path.name} takes {cfg.get('input')} input; fusing stacks needs RGB-input weights")
    return path, cfg


def trained_frames(method: str, weights: Any = None) -> int | None:
    """The number of frames ``method``'s network was built for, or None for any.

    Also checks the weights (see :func:`~napari_focusdeep.models.weights.verify_weights`).

    Parameters
    ----------
    method : str
        ``"focusdeep"``, ``"focusdeep-any"`` or ``"unet"``.
    weights : str or path, optional
        As the ``weights`` option; default: the installed weights.
    """
    _, cfg = _config_for(method, weights)
    n = cfg["kwargs"].get("n_frames")  # what BurstModel.n_frames reads
    return int(n) if n else None


def resampling_note(method: str, n_frames: int, weights: Any = None) -> str | None:
    """A sentence saying that a stack will be resampled, or None when it will not.

    Fixed-length networks (``focusdeep``, ``unet``) take exactly the number of
    frames they were trained on; :class:`DeepAccumulator` maps a stack of another
    length onto it with :func:`~napari_focusdeep.models.base.resample_frames`.
    Dropping or repeating frames changes the result, so the CLI and the widget
    say so.

    Parameters
    ----------
    method : str
        A deep method's name.
    n_frames : int
        Frames in the stack (per time point).
    weights : str or path, optional
        As the ``weights`` option.

    Examples
    --------
    >>> resampling_note("focusdeep", 23)  # doctest: +SKIP
    'network trained on 8 frames; resampling the 23-frame stack to 8'
    """
    n = trained_frames(method, weights)
    if n is None or int(n_frames) == n:
        return None
    note = f"network trained on {n} frames; resampling the {int(n_frames)}-frame stack to {n}"
    if int(n_frames) > n and _config_for(method, weights)[1]["kwargs"].get("base") == "pyramid":
        note += f" (its pyramid base still fuses all {int(n_frames)})"
    return note


def _halo(arch: str, **opts: Any) -> int:
    from .receptive import model_halo

    _, cfg = _config_for(arch, opts.get("weights"))
    return max(model_halo(arch, **cfg["kwargs"]), _FOCUS_RADIUS)


def _align(arch: str, **opts: Any) -> int:
    _, cfg = _config_for(arch, opts.get("weights"))
    kw = cfg["kwargs"]
    if arch == "unet":
        return 2 ** int(kw.get("depth", 4))
    from .focusdeep_any import grid_multiple

    return grid_multiple(kw.get("scale", 1), kw.get("base", "select"), kw.get("base_levels", 3))


def _prepare(arch: str, data: Any, channel: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Measure the stack's noise once for a network with a pyramid base (as ``pyramid`` does).

    Measured as the network's base sees the frames, whatever ``channel`` says: an RGB
    stack as luminance, a gray one as it is, any other channel count one channel at a
    time (each is fused as its own gray stack), giving one level per channel.
    """
    from ..fusion.pyramid import _check_noise, estimate_noise

    _, cfg = _config_for(arch, options.get("weights"))
    noise = options.get("noise", "auto")
    if isinstance(noise, (list, tuple)):  # per channel, as measured below (a rerun with the same options)
        noise = [_check_noise(float(n), 1.0)[0] for n in noise]
    else:
        noise = _check_noise(noise, 1.0)[0]
    if cfg["kwargs"].get("base") == "pyramid" and noise == "auto":
        c = int(data.shape[-1])
        if c in (1, 3):
            noise = round(estimate_noise(data, None), 7)
        else:
            noise = [round(estimate_noise(data, i), 7) for i in range(c)]
    options["noise"] = noise
    return options


def _stream_noise(model: Any, noise: Any) -> dict[str, Any]:
    """``stream()`` keywords: the stack's noise level, for a network with a pyramid base."""
    if model.config.get("base") != "pyramid" or isinstance(noise, str) or noise is None:
        return {}
    return {"noise": [float(n) for n in noise] if isinstance(noise, (list, tuple)) else float(noise)}


_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _get_model(path: Path, device: Any) -> Any:
    """Load once per (file, device): every tile of a run reuses the network."""
    from .weights import load_model

    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, str(device))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        model = load_model(path, device)
        _CACHE[key] = model
        while len(_CACHE) > _MODEL_CACHE_SIZE:
            _CACHE.popitem(last=False)
        return model


def clear_model_cache() -> None:
    """Forget loaded networks (frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    _release()


def _release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# -- the accumulator ----------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class DeepAccumulator:
    """Streams one tile's frames through a network (see the module docstring).

    Parameters
    ----------
    model : BurstModel
        A loaded network (eval mode) on ``device``.
    n_frames : int
        Frames the driver will add (resampled onto ``model.n_frames`` slots for
        fixed-length networks).
    shape : tuple
        The tile's ``(H, W, C)``.
    device : torch.device
    precision : str
        See :func:`~napari_focusdeep.models.device.autocast_dtype`.
    noise : float or "auto"
        The stack's noise level, for a network with a pyramid base (``"auto"``:
        measured on the tile's first frame).
    """

    def __init__(
        self, model: Any, n_frames: int, shape: tuple[int, int, int], device: Any, precision: str = "auto", noise: Any = "auto"
    ) -> None:
        from .base import resample_frames
        from .device import autocast_dtype

        h, w, c = (int(s) for s in shape)
        self.model, self.device, self.shape = model, device, (h, w, c)
        self.autocast = autocast_dtype(device, precision)
        self.batch = 1 if c in (1, 3) else c
        if model.n_frames:
            idx = resample_frames(n_frames, model.n_frames)
            self.repeats = np.bincount(idx, minlength=n_frames)
        else:
            self.repeats = None
        # a fixed-length network on the pyramid base: frames its slots skip still go into the base
        self.feed_skipped = model.config.get("base") == "pyramid"
        self.z = 0
        self.best = np.full((h, w), -np.inf, np.float32)
        self.depth = np.zeros((h, w), np.float32)
        with self._guard():
            self.stream = model.stream((self.batch, 3, h, w), **_stream_noise(model, noise))

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        import torch

        amp = (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        try:
            with torch.inference_mode(), amp:
                yield
        except Exception as exc:
            if not _is_oom(exc):
                raise
            h, w, _ = self.shape
            self.stream = None  # drop the tile's tensors before the driver retries
            raise TileOutOfMemory(f"out of memory fusing a {h}x{w} tile on {self.device}") from None

    def _tensor(self, frame: np.ndarray) -> Any:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)).to(self.device)
        t = t.permute(2, 0, 1)  # (C, H, W)
        h, w, c = self.shape
        if c == 3:
            return t[None]
        if c == 1:
            return t[None].expand(1, 3, h, w)
        return t[:, None].expand(c, 3, h, w)  # every channel as its own gray frame

    def _update_depth(self, focus: np.ndarray) -> None:
        import cv2

        lap = cv2.Laplacian(np.ascontiguousarray(focus, dtype=np.float32), cv2.CV_32F, ksize=3)
        energy = cv2.GaussianBlur(lap * lap, (0, 0), _FOCUS_SIGMA, borderType=cv2.BORDER_REFLECT)
        better = energy > self.best
        self.best[better] = energy[better]
        self.depth[better] = self.z

    def add(self, frame: np.ndarray, focus: np.ndarray) -> None:
        """Push the next frame ``(H, W, C)`` float32 (and its selection image)."""
        self._update_depth(focus)
        repeat = 1 if self.repeats is None else int(self.repeats[self.z])
        if repeat or self.feed_skipped:
            with self._guard():
                self.stream.push(self._tensor(frame), repeat=repeat)
        self.z += 1

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The fused tile ``(H, W, C)`` float32 and its depth map in frame indices."""
        with self._guard():
            out = self.stream.finish().float()  # (B, 3, H, W)
            self.stream = None
            c = self.shape[2]
            if c == 3:
                img = out[0].permute(1, 2, 0)
            elif c == 1:
                img = out[0].mean(dim=0)[..., None]
            else:
                img = out.mean(dim=1).permute(1, 2, 0)
            img = img.cpu().numpy().astype(np.float32, copy=False)
        return np.ascontiguousarray(img), self.depth


def _make(arch: str, n_frames: int, shape: tuple[int, int, int], **opts: Any) -> DeepAccumulator:
    from .device import pick_device

    path, _ = _config_for(arch, opts.get("weights"))
    device = pick_device(opts.get("device", "auto"))
    try:
        model = _get_model(path, device)
    except Exception as exc:
        if _is_oom(exc):
            _release()
            raise TileOutOfMemory(f"out of memory loading {path.name} on {device}") from None
        raise
    return DeepAccumulator(model, n_frames, shape, device, opts.get("precision", "auto"), opts.get("noise", "auto"))


def _register(arch: str) -> Method:
    from functools import partial

    return register_method(
        Method(
            name=arch,
            description=_DESCRIPTIONS[arch],
            make=partial(_make, arch),
            halo=partial(_halo, arch),
            align=partial(_align, arch),
            kind="deep",
            options=dict(OPTIONS),
            blend=True,
            default_block=int(OPTIONS["tile"]),
            release=_release,
            prepare=partial(_prepare, arch),
        )
    )


for _arch in ("focusdeep", "focusdeep-any", "unet"):
    _register(_arch)
