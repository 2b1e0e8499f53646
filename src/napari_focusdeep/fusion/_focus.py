"""Shared pieces of the classical methods: the focus measure and the depth map.

Everything here is *local*: every output pixel depends on input pixels within a
fixed radius, so block-wise fusion equals whole-image fusion once a block carries
:func:`depth_halo` pixels of context. Borders use ``BORDER_REFLECT_101``, the same
rule OpenCV's pyramid functions use, so a block whose edge is the image's edge sees
exactly what the whole image sees.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import cv2
import numpy as np

__all__ = [
    "FOCUS_SIGMA",
    "PRE_SIGMA",
    "focus_measure",
    "focus_halo",
    "DepthTracker",
    "depth_halo",
    "check_options",
    "CV_MAX_CHANNELS",
    "by_channels",
    "masked_copy",
]

#: Gaussian that smooths the squared Laplacian into a local energy (pixels).
FOCUS_SIGMA = 2.0
#: Gaussian applied before the Laplacian so that pixel noise does not look sharp.
PRE_SIGMA = 1.0
#: Median window that removes isolated outliers from the depth map.
DEPTH_MEDIAN = 5

_BORDER = cv2.BORDER_REFLECT_101
# Options the driver itself may leave in a method's option dict.
_DRIVER_KEYS = frozenset({"block_size", "tile", "ramp"})


def _radius(sigma: float) -> int:
    return int(math.ceil(3.0 * sigma)) if sigma > 0 else 0


def _gauss(image: np.ndarray, sigma: float) -> np.ndarray:
    # An explicit kernel size (3 sigma each side) so the support, and hence the halo,
    # is known exactly rather than left to OpenCV's dtype-dependent default.
    if sigma <= 0:
        return image
    k = 2 * _radius(sigma) + 1
    return cv2.GaussianBlur(image, (k, k), sigma, sigmaY=sigma, borderType=_BORDER)


def focus_measure(focus: np.ndarray, sigma: float = FOCUS_SIGMA, pre_sigma: float = PRE_SIGMA) -> np.ndarray:
    """Local focus energy: Gaussian-smoothed squared Laplacian of Gaussian.

    Parameters
    ----------
    focus : ndarray
        ``(H, W)`` float32 selection image.
    sigma : float
        Smoothing of the energy; larger trades spatial detail of the decision for
        robustness in weak texture.
    pre_sigma : float
        Smoothing before the Laplacian (noise robustness).

    Returns
    -------
    ndarray
        ``(H, W)`` float32, non-negative.
    """
    f = _gauss(np.ascontiguousarray(focus, dtype=np.float32), pre_sigma)
    lap = cv2.Laplacian(f, cv2.CV_32F, ksize=1, borderType=_BORDER)
    np.multiply(lap, lap, out=lap)
    return _gauss(lap, sigma)


def focus_halo(sigma: float = FOCUS_SIGMA, pre_sigma: float = PRE_SIGMA) -> int:
    """Support radius of :func:`focus_measure` in pixels."""
    return _radius(pre_sigma) + 1 + _radius(sigma)


def depth_halo(sigma: float = FOCUS_SIGMA, pre_sigma: float = PRE_SIGMA) -> int:
    """Context a block needs for its :class:`DepthTracker` map to equal the whole image's."""
    return focus_halo(sigma, pre_sigma) + DEPTH_MEDIAN // 2


class DepthTracker:
    """Running arg-max of a focus measure over frames, with sub-frame refinement.

    Keeps four ``(H, W)`` float32 planes whatever the number of frames: the best
    measure, its frame index, the measure of the frame before the best one and that
    of the frame after it. ``finish`` fits a parabola through those three samples
    (the classic depth-from-focus interpolation), which gives fractional frame
    indices, then takes a 5x5 median to remove isolated outliers (single pixels of
    noise winning the arg-max in flat areas).
    """

    def __init__(self, shape: tuple[int, int]):
        h, w = shape
        self.best = np.full((h, w), -1.0, np.float32)
        self.before = np.zeros((h, w), np.float32)
        self.after = np.zeros((h, w), np.float32)
        self.index = np.zeros((h, w), np.float32)
        self.prev: np.ndarray | None = None
        self.z = 0

    def add(self, fm: np.ndarray) -> None:
        """Take the focus measure ``(H, W)`` float32 of the next frame."""
        z = self.z
        if z > 0:
            # The frame right after the current best supplies its right neighbour. (A
            # one-byte mask, not a comparison with a constant float plane: that plane
            # would cost as much memory as the measure itself.)
            masked_copy(self.after, fm, np.equal(self.index, np.float32(z - 1)).view(np.uint8))
        better = cv2.compare(fm, self.best, cv2.CMP_GT)
        masked_copy(self.best, fm, better)
        np.putmask(self.index, better != 0, np.float32(z))
        if self.prev is not None:
            masked_copy(self.before, self.prev, better)
        self.prev = fm
        self.z = z + 1

    def finish(self) -> np.ndarray:
        """Depth in (fractional) frame indices, ``(H, W)`` float32."""
        n = self.z
        depth = self.index.copy()
        if n >= 3:
            b, l, r = self.best, self.before, self.after
            denom = l - 2.0 * b + r
            interior = (self.index > 0) & (self.index < n - 1) & (denom < 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                off = np.where(interior, 0.5 * (l - r) / np.where(interior, denom, -1.0), 0.0)
            depth += np.clip(off, -0.5, 0.5).astype(np.float32)
        if min(depth.shape) > 0:
            depth = cv2.medianBlur(np.ascontiguousarray(depth), DEPTH_MEDIAN)
        return depth


def masked_copy(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> None:
    """``dst[mask] = src[mask]`` in place, for a ``uint8`` mask ``(H, W)`` (0 or 255).

    ``cv2.copyTo`` is several times faster than ``np.copyto(..., where=)`` with a
    broadcast mask, which matters because every method does this once per level and
    frame. ``dst`` must be C-contiguous.
    """
    if dst.ndim == 3 and dst.shape[2] > CV_MAX_CHANNELS:
        np.copyto(dst, src, where=(mask != 0)[..., None])
        return
    out = cv2.copyTo(src, mask, dst)
    if out is not dst:  # OpenCV reallocated (it never should): keep the contract
        dst[...] = out.reshape(dst.shape)


def check_options(method: str, options: dict[str, Any], known: Iterable[str]) -> None:
    """Refuse misspelt options instead of silently ignoring them."""
    unknown = set(options) - set(known) - _DRIVER_KEYS
    if unknown:
        raise TypeError(
            f"method {method!r} got unknown option(s) {sorted(unknown)}; it takes {sorted(known)}"
        )


#: Most channels one OpenCV image may have (``CV_CN_MAX`` is 128 in OpenCV 5).
CV_MAX_CHANNELS = 128


def by_channels(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> np.ndarray:
    """Apply the OpenCV call ``fn`` to ``image`` ``(H, W, C)`` and return ``(H', W', C)``.

    OpenCV drops a trailing channel axis of length 1 and refuses more than
    :data:`CV_MAX_CHANNELS` channels; this splits wide images into groups and keeps
    the channel axis, so methods handle any channel count.
    """
    c = image.shape[2]
    if c <= CV_MAX_CHANNELS:
        out = fn(image)
        return out.reshape(out.shape[:2] + (c,))
    parts = [by_channels(fn, image[..., i : i + CV_MAX_CHANNELS]) for i in range(0, c, CV_MAX_CHANNELS)]
    return np.concatenate(parts, axis=-1)
