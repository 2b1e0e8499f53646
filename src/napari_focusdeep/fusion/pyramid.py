"""``pyramid``: Laplacian-pyramid fusion, the default method.

After Burt & Adelson (1983) and Burt & Kolczynski (1993), the scheme Zerene
Stacker's PMax and most focus-stacking software build on, made noise-aware:

1. Each frame (all channels, plus its selection image ``focus`` as one extra
   channel) is decomposed into a Laplacian pyramid of ``levels`` detail levels and
   a coarse Gaussian base, with ``cv2.pyrDown``/``cv2.pyrUp``.
2. At every detail level and position each frame gets an *activity*: ``|coefficient|``
   of the focus channel averaged over a ``window x window`` box at that level.
   Averaging over an area (rather than comparing single coefficients) is the
   consistency check that keeps neighbouring coefficients from coming from different
   frames at random (salt-and-pepper selection noise, ringing).
3. The frames' coefficients are combined with softmax weights
   ``exp(activity**2 / (tau * s_k**2))``, where ``s_k`` is the noise's standard
   deviation at level ``k``. Where one frame's detail stands well above the noise it
   wins outright (classical max selection); where the frames differ by no more than
   the noise, no frame is truly sharper and they are averaged, which lowers the noise
   instead of picking its largest excursion. Hard max selection does the latter and
   is what makes classical stackers noisier than their inputs. The weights apply to
   all channels, so colours stay consistent.
4. The base level is the mean over frames (defocus preserves the mean, so the
   average is the least noisy estimate of the low frequencies).
5. The fused pyramid is collapsed with ``cv2.pyrUp``.

The noise level is measured once per stack (:func:`estimate_noise`, before any block
is fused, so block-wise fusion equals whole-image fusion). On the held-out synthetic
stacks of docs/peers.md this rule gains about 3 dB over max selection on noisy stacks
and loses nothing on clean ones.

Streaming: per level only the running softmax (maximum logit, weight sum and the
weighted coefficient sum, ``C + 2`` planes, as max selection needs), plus a running
sum of the bases, so the memory does not grow with the number of frames.

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
noise : "auto" or float, default "auto"
    Standard deviation of the noise in the selection image, in units of the
    normalised intensity (full scale = 1). ``"auto"`` measures it
    (:func:`estimate_noise`); ``0`` gives classical hard max selection.
tau : float, default 2.0
    Softness of the selection in units of the noise energy: larger averages more.
    Chosen on a development set of simulated stacks that is not the scored one
    (``python -m benchmarks.tune_pyramid``).
"""
from __future__ import annotations

import math
from functools import cache
from typing import Any

import cv2
import numpy as np

from ._focus import CV_MAX_CHANNELS, DepthTracker, check_options, depth_halo, focus_measure, masked_copy
from .registry import Method, register_method

__all__ = ["PyramidFusion", "pyramid_levels", "pyramid_halo", "estimate_noise", "noise_sigma", "level_noise_gains"]

DEFAULTS: dict[str, Any] = {"levels": 6, "window": 5, "noise": "auto", "tau": 2.0}


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


def pyramid_halo(
    levels: int = DEFAULTS["levels"], window: int = DEFAULTS["window"], noise: Any = "auto", tau: Any = 2.0, **options: Any
) -> int:
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
    _check_noise(noise, tau)
    r = window // 2
    reach = (8 + r) * 2 ** max(levels - 1, 0) + 2**levels
    return max(reach, depth_halo())


def _check_noise(noise: Any, tau: Any) -> tuple[float | str, float]:
    if isinstance(noise, str):
        if noise != "auto":
            raise ValueError(f"noise must be 'auto' or a number >= 0, got {noise!r}")
    else:
        noise = float(noise)
        if not math.isfinite(noise) or noise < 0:
            raise ValueError(f"noise must be 'auto' or a number >= 0, got {noise!r}")
    tau = float(tau)
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    return noise, tau


@cache
def level_noise_gains(levels: int) -> tuple[float, ...]:
    """Standard deviation of each Laplacian detail level for unit white noise.

    Measured once on a white-noise image (deterministic seed): level ``k``'s noise
    is the input's noise times ``gains[k]`` (about 0.94, 0.23, 0.10, then halving,
    which is how levels beyond the eighth are extrapolated).
    """
    measured = min(levels, 8)
    g = np.random.default_rng(0).standard_normal((2 ** (measured + 4),) * 2).astype(np.float32)
    gains: list[float] = []
    for _ in range(measured):
        down = cv2.pyrDown(g)
        detail = g - cv2.pyrUp(down, dstsize=(g.shape[1], g.shape[0]))
        m = detail.shape[0] // 8  # away from the reflected border
        gains.append(float(detail[m:-m, m:-m].std()))
        g = down
    while len(gains) < levels:
        gains.append(gains[-1] * 0.5)
    return tuple(gains)


def noise_sigma(image: np.ndarray) -> float:
    """Noise standard deviation of one 2-D image, by Donoho & Johnstone's rule.

    The median absolute finest diagonal (Haar) wavelet coefficient over 0.6745: the
    diagonal detail of a natural image is mostly noise, and the median ignores the
    edges that are not. ``skimage.restoration.estimate_sigma`` does the same with
    Daubechies wavelets, but importing it costs the command line about 2 s.
    """
    x = np.asarray(image, np.float32)
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    if h == 0 or w == 0:
        return 0.0
    x = x[:h, :w]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) * np.float32(0.5)
    return float(np.median(np.abs(hh))) / 0.6745


def estimate_noise(data: Any, channel: int | str | None = None, *, crop: int = 1024) -> float:
    """Noise level of a registered stack's selection image, for ``noise="auto"``.

    Parameters
    ----------
    data : array-like
        ``(Z, Y, X, C)`` frames, numpy or lazy dask (any dtype the driver reads).
    channel : int, str or None
        What focus is measured on (see :func:`~napari_focusdeep.fusion.core.selection_image`).
    crop : int
        Side of the central crop measured (bounds the cost on very large frames).

    Returns
    -------
    float
        The smallest of the first, middle and last frames' estimates (:func:`noise_sigma`).
        Defocused frames hold the least structure, so the smallest estimate is the
        least inflated by image detail.
    """
    from .core import selection_image, to_float

    n, h, w = (int(s) for s in data.shape[:3])
    y0, x0 = max((h - crop) // 2, 0), max((w - crop) // 2, 0)
    sigmas = []
    for z in sorted({0, n // 2, n - 1}):
        frame = to_float(np.asarray(data[z, y0 : y0 + crop, x0 : x0 + crop]))
        sigmas.append(noise_sigma(selection_image(frame, channel)))
    return min(sigmas)


def _prepare(data: Any, channel: int | str | None, options: dict[str, Any]) -> dict[str, Any]:
    if options.get("noise", DEFAULTS["noise"]) == "auto":
        options["noise"] = round(estimate_noise(data, channel), 7)
    return options


class PyramidFusion:
    """Streaming Laplacian-pyramid fusion of one block (see the module docstring)."""

    def __init__(
        self,
        n_frames: int,
        shape: tuple[int, int, int],
        *,
        levels: int = DEFAULTS["levels"],
        window: int = DEFAULTS["window"],
        noise: float | str = DEFAULTS["noise"],
        tau: float = DEFAULTS["tau"],
        track_depth: bool = True,
        **options: Any,
    ):
        check_options("pyramid", options, DEFAULTS)
        levels, window = _check(levels, window)
        noise, tau = _check_noise(noise, tau)
        h, w, c = (int(s) for s in shape)
        self.c = c
        self.levels = pyramid_levels((h, w), levels)
        self.window = window
        self.tau = tau
        # fuse() resolves "auto" for the whole stack first (see _prepare); a caller that
        # builds the accumulator itself gets the first frame's estimate instead
        self.noise = None if noise == "auto" else noise
        self.n = 0
        self.sizes = [(h, w)]
        for _ in range(self.levels):
            ph, pw = self.sizes[-1]
            self.sizes.append(((ph + 1) // 2, (pw + 1) // 2))
        # Images are kept as lists of 2-D planes, one per channel: per-pixel weights then
        # multiply contiguous planes, several times faster than broadcasting over an
        # interleaved channel axis, and any channel count works without grouping.
        # Per level, hard selection keeps the winner's activity (best) and coefficients
        # (coef); soft selection keeps the running softmax: largest logit so far (best),
        # weight sum (wsum) and weighted coefficient sums (coef).
        self.best: list[np.ndarray] = []
        self.coef: list[list[np.ndarray]] = []
        self.wsum: list[np.ndarray] = []
        self.base = [np.zeros(self.sizes[-1], np.float32) for _ in range(c)]
        # the depth map costs a fifth of the time and 5 full-size planes: only when asked
        self.depth = DepthTracker((h, w)) if track_depth else None

    def _activity(self, detail: np.ndarray) -> np.ndarray:
        a = np.abs(detail, out=detail)  # the focus detail is not needed after this
        if self.window > 1:
            a = cv2.boxFilter(a, -1, (self.window, self.window), borderType=cv2.BORDER_REFLECT_101)
        return a

    def _add_hard(self, k: int, detail: list[np.ndarray], act: np.ndarray) -> None:
        if len(self.best) == k:
            self.best.append(act)
            self.coef.append(detail)
            return
        better = cv2.compare(act, self.best[k], cv2.CMP_GT)
        masked_copy(self.best[k], act, better)
        for dst, src in zip(self.coef[k], detail):
            masked_copy(dst, src, better)

    def _add_soft(self, k: int, detail: list[np.ndarray], act: np.ndarray) -> None:
        # Online softmax (as in streaming attention): rescale the sums whenever the
        # running maximum logit rises, so no exp() ever overflows. Everything is done
        # in place in buffers this frame owns: at 12 MP a level-0 plane is 48 MB.
        logit = cv2.multiply(act, act, dst=act, scale=float(self.scale[k]))
        if len(self.best) == k:
            self.best.append(logit)
            self.wsum.append(np.ones_like(logit))
            self.coef.append(detail)
            return
        top = np.maximum(self.best[k], logit)
        rescale = cv2.exp(np.subtract(self.best[k], top, out=self.best[k]), dst=self.best[k])
        weight = cv2.exp(np.subtract(logit, top, out=logit), dst=logit)
        self.wsum[k] *= rescale
        self.wsum[k] += weight
        for acc, d in zip(self.coef[k], detail):
            acc *= rescale
            cv2.accumulateProduct(d, weight, acc)
        self.best[k] = top

    @property
    def hard(self) -> bool:
        return self.noise == 0

    def _set_noise(self, noise: float) -> None:
        self.noise = noise
        gains = level_noise_gains(max(self.levels, 1))
        # logit = activity**2 * scale[k]; the floor keeps a near-noiseless stack finite
        self.scale = [np.float32(1.0 / (self.tau * max(noise * gains[k], 1e-6) ** 2)) for k in range(self.levels)]

    def add(self, frame: np.ndarray, focus: np.ndarray) -> None:
        """Fold one frame ``(H, W, C)`` and its selection image ``(H, W)`` in."""
        focus = np.asarray(focus, np.float32)
        if self.n == 0:
            self._set_noise(noise_sigma(focus) if self.noise is None else self.noise)
        if self.depth is not None:
            self.depth.add(focus_measure(focus))
        frame = np.asarray(frame, np.float32)
        # level 0 copies one channel of the interleaved frame at a time (a generator),
        # so only one full-resolution plane copy exists at once
        planes: Any = (np.ascontiguousarray(frame[..., i]) for i in range(self.c))
        f = focus
        for k in range(self.levels):
            size = (self.sizes[k][1], self.sizes[k][0])
            down, detail = [], []
            for g in planes:
                down.append(cv2.pyrDown(g))
                detail.append(_detail(g, down[-1], size))
            fdown = cv2.pyrDown(f)
            fdetail = cv2.pyrUp(fdown, dstsize=size)
            act = self._activity(np.subtract(f, fdetail, out=fdetail))
            (self._add_hard if self.hard else self._add_soft)(k, detail, act)
            planes, f = down, fdown
        for b, g in zip(self.base, planes):  # with no detail levels, the frame is the base
            b += g
        self.n += 1

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Collapse the fused pyramid: image ``(H, W, C)`` float32 and depth ``(H, W)``.

        The accumulator's planes are released as the collapse uses them (the depth map
        first, the finest level last, channel by channel), so the peak memory of a large
        frame stays that of the streaming, not streaming plus a copy of the result.
        """
        if self.n == 0:
            raise RuntimeError("no frames were added")
        depth = self.depth.finish() if self.depth is not None else None
        self.depth = None
        self.best = []  # activities / running maxima: not needed to collapse
        inv_n = np.float32(1.0 / self.n)
        out = [b * inv_n for b in self.base]
        self.base = []
        if self.levels == 0:
            return merge_planes(out), depth
        result = None
        for k in range(self.levels - 1, -1, -1):
            hk, wk = self.sizes[k]
            coef = self.coef[k]
            self.coef[k] = []
            inv_w = None if self.hard else np.reciprocal(self.wsum[k])
            if not self.hard:
                self.wsum[k] = None
            if k == 0:
                result = np.empty((hk, wk, self.c), np.float32)
            for i in range(self.c):
                o = cv2.pyrUp(out[i], dstsize=(wk, hk))
                if inv_w is None:
                    o += coef[i]
                else:
                    cv2.accumulateProduct(coef[i], inv_w, o)
                coef[i] = None
                if result is None:
                    out[i] = o
                else:
                    out[i] = None
                    result[..., i] = o
                del o
            del coef, inv_w
        return result, depth


def _detail(fine: np.ndarray, coarse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``fine - pyrUp(coarse)``, computed in the buffer the upsampling allocated."""
    up = cv2.pyrUp(coarse, dstsize=size)
    return cv2.subtract(fine, up, dst=up)


def merge_planes(planes: list[np.ndarray]) -> np.ndarray:
    """``C`` planes ``(H, W)`` -> one ``(H, W, C)`` float32 image."""
    if len(planes) == 1:
        return np.ascontiguousarray(planes[0], dtype=np.float32)[..., None]
    if len(planes) <= CV_MAX_CHANNELS:
        return cv2.merge(planes)
    return np.stack(planes, axis=-1)


def _make(n_frames: int, shape: tuple[int, int, int], **options: Any) -> PyramidFusion:
    return PyramidFusion(n_frames, shape, **options)


def _align(levels: int = DEFAULTS["levels"], **_: Any) -> int:
    # Block origins on the coarsest level's grid, so blocks build the image's pyramid.
    return 2 ** int(levels)


register_method(
    Method(
        name="pyramid",
        description="Laplacian pyramid, noise-aware soft selection (default; sharp, few halos, averages noise)",
        make=_make,
        depth_optional=True,
        halo=pyramid_halo,
        align=_align,
        kind="classical",
        options=dict(DEFAULTS),
        default_block=4096,
        prepare=_prepare,
    )
)
