"""The method registry: every fusion method, classical or deep, is one entry here.

A method is a factory for a *frame accumulator*: an object that receives the
frames of one block one at a time (``add``) and then returns the fused block
(``finish``). The driver in :mod:`napari_focusdeep.fusion.core` owns reading,
registration, tiling, progress and cancellation, so a method only does maths.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

__all__ = [
    "FrameAccumulator",
    "Method",
    "TileOutOfMemory",
    "declares_halo",
    "register_method",
    "get_method",
    "list_methods",
]


class TileOutOfMemory(MemoryError):
    """Raised by an accumulator (``make``, ``add`` or ``finish``) that ran out of
    memory on its block; the driver retries the z-stack with half the block size."""


def _undeclared_halo(**_: Any) -> int:
    """``Method.halo``'s default: no context, but not declared by the method."""
    return 0


class FrameAccumulator(Protocol):
    """Receives one block's frames in Z order and fuses them."""

    def add(self, frame: np.ndarray, focus: np.ndarray) -> None:
        """Take frame ``(H, W, C)`` float32 and its selection image ``focus`` ``(H, W)``."""

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the fused block ``(H, W, C)`` float32 and depth ``(H, W)`` in frame indices."""


@dataclass(frozen=True)
class Method:
    """One fusion method.

    Parameters
    ----------
    name : str
        What users type (``--method NAME``).
    description : str
        One line for ``focusdeep methods`` and the widget.
    make : callable
        ``make(n_frames, shape, **options) -> FrameAccumulator`` where ``shape`` is
        the block's ``(H, W, C)``.
    halo : callable
        ``halo(**options) -> int``: pixels of context each block needs on every side
        so that block-wise fusion equals whole-image fusion. Declare it (``lambda **_: 0``
        for a per-pixel method): a method that does not is fused in blocks only when
        the caller asks for them, never by :func:`~napari_focusdeep.fusion.core.fuse`'s
        choice when memory is short, since its blocks could show seams.
    align : callable
        ``align(**options) -> int``: block origins are multiples of this (pyramids need
        blocks aligned to their coarsest level).
    kind : str
        ``"classical"`` or ``"deep"``.
    options : dict
        Default keyword options (documented in the method's module).
    blend : bool
        Blend overlapping tiles with a smooth window instead of cropping the halo
        (deep models, whose outputs differ slightly at tile borders).
    default_block : int
        Block size when neither ``block_size`` nor a ``block_size``/``tile``
        option is given.
    release : callable, optional
        ``release()`` is called after every z-stack (and before an out-of-memory
        retry) to free cached device memory.
    prepare : callable, optional
        ``prepare(data, channel, options) -> options`` is called once per z-stack,
        on the registered ``(Z, Y, X, C)`` frames (lazy), before any block is fused.
        It resolves options that depend on the whole stack (``pyramid``'s
        ``noise="auto"``), so that every block of a block-wise run uses the same
        values and block-wise fusion still equals whole-image fusion.
    depth_optional : bool
        ``make(..., track_depth=False)`` skips the depth map (``fuse(..., depth=False)``),
        saving its time and memory; ``finish`` then returns ``None`` for it.
    """

    name: str
    description: str
    make: Callable[..., FrameAccumulator]
    halo: Callable[..., int] = _undeclared_halo
    align: Callable[..., int] = lambda **_: 1
    kind: str = "classical"
    options: dict[str, Any] = field(default_factory=dict)
    blend: bool = False
    default_block: int = 4096
    release: Callable[[], None] | None = None
    prepare: Callable[[Any, Any, dict[str, Any]], dict[str, Any]] | None = None
    depth_optional: bool = False


_REGISTRY: dict[str, Method] = {}
_LOADED = False
_LOAD_LOCK = threading.Lock()  # napari workers and batch threads may ask at once


def declares_halo(method: Method) -> bool:
    """Whether ``method`` says how much context its blocks need (see :class:`Method`)."""
    return method.halo is not _undeclared_halo


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (a later entry with the same name replaces it)."""
    _REGISTRY[method.name] = method
    return method


def _load_builtin() -> None:
    # Imported on first use, not at package import, so napari start-up stays light.
    global _LOADED
    if _LOADED:
        return
    with _LOAD_LOCK:
        if _LOADED:
            return
        from . import laplacian, pyramid, wavelet  # noqa: F401  (each registers itself)

        try:
            from ..models import methods as _deep  # noqa: F401
        except ImportError:  # torch missing: classical methods still work
            pass
        # set only once everything is registered, so another thread never sees a
        # half-filled registry
        _LOADED = True


def get_method(name: str) -> Method:
    """Look a method up by name; ``ValueError`` names the known ones otherwise."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown method {name!r}; choose one of: {known}") from None


def list_methods() -> list[Method]:
    """All registered methods, classical first, then by name."""
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda m: (m.kind != "classical", m.name))
