"""``pyramid``: Laplacian-pyramid fusion, the default method.

After Burt & Adelson (1983) and Burt & Kolczynski (1993), the scheme Zerene
Stacker's PMax and most focus-stacking software build on:

1. Each frame (all channels, plus its selection image ``focus`` as one extra
   channel) is decomposed into a Laplacian pyramid of ``levels`` detail levels and
   a coarse Gaussian base, with ``cv2.pyrDown``/``cv2.pyrUp``.
2. At every detail level and position the frame with the largest *activity* wins:
   activity is ``|coefficient|`` of the focus channel averaged over a
   ``window x window`` box at that level. Averaging over an area (rather than
   comparing single coefficients) is the consistency check that keeps neighbouring
   coefficients from coming from different frames at random (salt-and-pepper
   selection noise, ringing). The winning frame's coefficients are taken for all
   channels, so colours stay consistent.
3. The base level is the mean over frames (defocus preserves the mean, so the
   average is the least noisy estimate of the low frequencies).
4. The fused pyramid is collapsed with ``cv2.pyrUp``.

Streaming: per level only the best activity so far and the winning coefficients
are kept (about ``(C + 1) * 4/3`` planes), plus a running sum of the bases, so the
memory does not grow with the number of frames.

The depth map is the arg-max of a smoothed focus measure at full resolution
(:class:`napari_focusdeep.fusion._focus.DepthTracker`).

Options
-------
levels : int, default 6
    Detail levels. A constant, *not* derived from the image size, so that block-wise
    fusion (whose blocks differ in size) builds the same pyramid as the whole image.
    Images too small for them use fewer (an image whose longer side is ``n`` pixels
    gets at most ``ceil(log2(n))``); blocks always carry enough context that this
    never happens to a block of a larger image.
window : int, default 5
    Side of the activity box, in pixels of each level (odd; 1 = per-coefficient).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import cv2
import numpy as np

from ._focus import DepthTracker, by_channels, check_options, masked_copy, depth_halo, focus_measure
from .registry import Method, register_method

__all__ = ["PyramidFusion", "pyramid_levels", "pyramid_halo"]

DEFAULTS: dict[str, Any] = {"levels": 6, "window": 5}


def pyramid_levels(shape: tuple[int, int], levels: int) -> int:
    """Detail levels actually used on a ``shape`` image: ``levels`` unless the image
    is so small that it would shrink to a single pixel sooner."""
    longest = max(int(shape[0]), int(shape[1]), 1)
    return max(0, min(int(levels), int(math.ceil(math.log2(longest)))))


def _check(levels: int, window: int) -> tuple[int, int]:
    levels, window = int(levels), int(window)
    if levels < 0:
        raise ValueError(f"levels must be >= 0, got {levels}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    return levels, window


def pyramid_halo(levels: int = DEFAULTS["levels"], window: int = DEFAULTS["window"], **options: Any) -> int:
    """Context (pixels) a block needs for pyramid fusion to equal the whole image's.

    Exact supports, in full-resolution pixels (``r = window // 2``):
    a level-``k`` Gaussian sample depends on pixels up to ``2 (2**k - 1)`` away
    (one 5-tap ``pyrDown`` per finer level); a level-``k`` detail coefficient on up to
    ``6 * 2**k - 2`` (its ``pyrUp`` of level ``k + 1``); its activity on
    ``(6 + r) 2**k - 2``; collapsing adds ``2**(i)`` for each ``pyrUp`` from level ``i``
    down to 0, ``2**(k+1) - 2`` in all. The coarsest detail level dominates:
    ``(8 + r) 2**(L-1) - 4`` with ``L = levels`` (the base reaches ``4 * 2**L - 4``).
    One extra coarsest-level sample covers the block origin's rounding. The depth
    map has its own, smaller support. The halo is also > ``2**levels``, so a block
    cut out of a larger image never falls back to fewer levels (see
    :func:`pyramid_levels`).
    """
    check_options("pyramid", options, DEFAULTS)  # the driver validates options through here
    levels, window = _check(levels, window)
    r = window // 2
    reach = (8 + r) * 2 ** max(levels - 1, 0) + 2**levels
    return max(reach, depth_halo())


class PyramidFusion:
    """Streaming Laplacian-pyramid fusion of one block (see the module docstring)."""

    def __init__(
        self,
        n_frames: int,
        shape: tuple[int, int, int],
        *,
        levels: int = DEFAULTS["levels"],
        window: int = DEFAULTS["window"],
        **options: Any,
    ):
        check_options("pyramid", options, DEFAULTS)
        levels, window = _check(levels, window)
        h, w, c = (int(s) for s in shape)
        self.c = c
        self.levels = pyramid_levels((h, w), levels)
        self.window = window
        self.n = 0
        self.sizes = [(h, w)]
        for _ in range(self.levels):
            ph, pw = self.sizes[-1]
            self.sizes.append(((ph + 1) // 2, (pw + 1) // 2))
        self.best: list[np.ndarray] = []  # activity of the current winner, per level
        # winning coefficients (H_k, W_k, C + 1) per level; the focus channel rides along
        # because copying whole pixels with a mask is much faster than a channel subset
        self.coef: list[np.ndarray] = []
        self.base = np.zeros(self.sizes[-1] + (c,), np.float32)
        self.depth = DepthTracker((h, w))

    def _activity(self, detail: np.ndarray) -> np.ndarray:
        a = np.abs(detail)
        if self.window > 1:
            a = cv2.boxFilter(a, -1, (self.window, self.window), borderType=cv2.BORDER_REFLECT_101)
        return a

    def add(self, frame: np.ndarray, focus: np.ndarray) -> None:
        """Fold one frame ``(H, W, C)`` and its selection image ``(H, W)`` in."""
        c = self.c
        g = np.concatenate([frame, focus[..., None]], axis=-1).astype(np.float32, copy=False)
        first = self.n == 0
        for k in range(self.levels):
            down = by_channels(cv2.pyrDown, g)
            up = by_channels(partial(cv2.pyrUp, dstsize=(self.sizes[k][1], self.sizes[k][0])), down)
            detail = g - up
            act = self._activity(detail[..., c])
            if first:
                self.best.append(act)
                self.coef.append(detail)
            else:
                better = cv2.compare(act, self.best[k], cv2.CMP_GT)
                masked_copy(self.best[k], act, better)
                masked_copy(self.coef[k], detail, better)
            g = down
        self.base += g[..., :c]
        self.depth.add(focus_measure(focus))
        self.n += 1

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Collapse the fused pyramid: image ``(H, W, C)`` float32 and depth ``(H, W)``."""
        if self.n == 0:
            raise RuntimeError("no frames were added")
        out = self.base / np.float32(self.n)
        for k in range(self.levels - 1, -1, -1):
            hk, wk = self.sizes[k]
            out = by_channels(partial(cv2.pyrUp, dstsize=(wk, hk)), out)
            out += self.coef[k][..., : self.c]
        return np.ascontiguousarray(out, dtype=np.float32), self.depth.finish()


def _make(n_frames: int, shape: tuple[int, int, int], **options: Any) -> PyramidFusion:
    return PyramidFusion(n_frames, shape, **options)


def _align(levels: int = DEFAULTS["levels"], **_: Any) -> int:
    # Block origins on the coarsest level's grid, so blocks build the image's pyramid.
    return 2 ** int(levels)


register_method(
    Method(
        name="pyramid",
        description="Laplacian pyramid, area-based max selection (default; sharp, few halos)",
        make=_make,
        halo=pyramid_halo,
        align=_align,
        kind="classical",
        options=dict(DEFAULTS),
        default_block=4096,
    )
)
