"""``laplacian``: per-pixel selection by a local focus measure (depth-map style).

The focus measure of each frame is the Gaussian-smoothed squared Laplacian of its
selection image (:func:`napari_focusdeep.fusion._focus.focus_measure`), a local
contrast energy that peaks in the frame where a pixel is in focus.

Why soft selection. The textbook depth-map method (Zerene's DMap, Helicon's
method B) picks the arg-max frame per pixel, smooths the resulting depth map and
then takes each output pixel from the frame the *smoothed* map names. That needs a
second pass over the frames, and this driver streams each frame exactly once.
Instead, each frame contributes with weight ``measure ** power``, normalised by
the running sum of weights (Helicon's method A-like weighted average):

- with a large ``power`` the weights are close to a hard arg-max of a *smoothed*
  measure, so in textured areas the output is the sharpest frame, as DMap gives;
- where two frames are about equally sharp (a pixel between two focal planes) the
  result blends them instead of switching abruptly, which hides the seams that a
  hard arg-max leaves along depth steps;
- in flat, textureless areas all measures are about equal and the result is the
  average of the frames, which is the least noisy choice there, where a hard
  arg-max would pick frames at random from noise.

The weights are kept in the log domain with a running maximum (a streaming
log-sum-exp), so large powers neither overflow nor underflow float32. State: the
weighted sum ``(H, W, C)``, the weight sum and the running maximum ``(H, W)``, and
the depth tracker's four planes, whatever the number of frames.

``power=inf`` gives the hard arg-max (each pixel from exactly one frame).

Options
-------
power : float, default 12
    Sharpness of the selection (0 averages all frames, ``inf`` is a hard arg-max).
sigma : float, default 1.5
    Gaussian smoothing (pixels) of the focus energy: the spatial scale of the
    selection. Larger is more robust in weak texture and blurs depth edges.
"""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ._focus import DepthTracker, check_options, depth_halo, focus_measure, masked_copy
from .registry import Method, register_method

__all__ = ["LaplacianFusion"]

DEFAULTS: dict[str, Any] = {"power": 12.0, "sigma": 1.5}
# Added to the energy before the logarithm: keeps log finite on perfectly flat data.
_EPS = np.float32(1e-12)


def _check(power: float, sigma: float) -> tuple[float, float]:
    power, sigma = float(power), float(sigma)
    if not power >= 0:
        raise ValueError(f"power must be >= 0, got {power}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    return power, sigma


class LaplacianFusion:
    """Streaming focus-measure-weighted selection (see the module docstring)."""

    def __init__(
        self,
        n_frames: int,
        shape: tuple[int, int, int],
        *,
        power: float = DEFAULTS["power"],
        sigma: float = DEFAULTS["sigma"],
        track_depth: bool = True,
        **options: Any,
    ):
        check_options("laplacian", options, DEFAULTS)
        power, sigma = _check(power, sigma)
        h, w, c = (int(s) for s in shape)
        self.power, self.sigma = power, sigma
        self.hard = math.isinf(power)
        self.acc = np.zeros((h, w, c), np.float32)
        self.wsum = np.zeros((h, w), np.float32)
        self.top = np.full((h, w), -np.inf, np.float32)  # running max of log-weights
        self.depth = DepthTracker((h, w)) if track_depth else None
        self.n = 0

    def add(self, frame: np.ndarray, focus: np.ndarray) -> None:
        """Fold one frame ``(H, W, C)`` and its selection image ``(H, W)`` in."""
        fm = focus_measure(focus, self.sigma)
        if self.depth is not None:
            self.depth.add(fm)
        self.n += 1
        if self.hard:
            better = cv2.compare(fm, self.top, cv2.CMP_GT)
            masked_copy(self.top, fm, better)
            masked_copy(self.acc, np.ascontiguousarray(frame, dtype=np.float32), better)
            return
        lw = np.log(fm + _EPS)
        lw *= np.float32(self.power)
        new_top = np.maximum(self.top, lw)
        old = np.exp(self.top - new_top)  # rescales what was summed so far (exp(-inf) = 0)
        cur = np.exp(lw - new_top)
        self.acc *= old[..., None]
        self.acc += frame * cur[..., None]
        self.wsum *= old
        self.wsum += cur
        self.top = new_top

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """The fused image ``(H, W, C)`` float32 and depth ``(H, W)`` (``None`` untracked)."""
        if self.n == 0:
            raise RuntimeError("no frames were added")
        if self.hard:
            out = self.acc
        else:
            # wsum >= 1 wherever a frame was added: the top frame has weight exp(0).
            out = self.acc / self.wsum[..., None]
        return np.ascontiguousarray(out, dtype=np.float32), self.depth.finish() if self.depth is not None else None


def _make(n_frames: int, shape: tuple[int, int, int], **options: Any) -> LaplacianFusion:
    return LaplacianFusion(n_frames, shape, **options)


def _halo(power: float = DEFAULTS["power"], sigma: float = DEFAULTS["sigma"], **options: Any) -> int:
    # The driver validates options through here before any work starts.
    check_options("laplacian", options, DEFAULTS)
    _check(power, sigma)
    return depth_halo(float(sigma))


register_method(
    Method(
        name="laplacian",
        description="Per-pixel selection by local Laplacian energy (depth-map style, soft weights)",
        make=_make,
        depth_optional=True,
        halo=_halo,
        align=lambda **_: 1,
        kind="classical",
        options=dict(DEFAULTS),
        default_block=4096,
    )
)
