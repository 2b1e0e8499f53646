"""``wavelet``: wavelet-domain fusion after Forster et al. (2004).

Forster, Van De Ville, Berent, Sage & Unser, "Complex wavelets for extended
depth-of-field: a new method for the fusion of multichannel microscopy images",
*Microscopy Research and Technique* 65 (2004). Their scheme: transform every
frame, keep per detail coefficient the frame with the largest magnitude, enforce
consistency of that choice between neighbouring coefficients and between the
sub-bands of one position, average the low-pass residual, transform back. They use
complex Daubechies wavelets because a decimated real DWT is shift-variant: the
energy of an edge jumps between coefficients as it moves by one pixel, so max
selection flickers and rings.

This implementation keeps the scheme and gets the shift invariance another way:

- **Undecimated (stationary, "a trous") separable 2-D wavelet transform** with the
  symmetric biorthogonal CDF 9/7 filters (PyWavelets' ``bior4.4``), dilated by
  ``2**(j-1)`` at level ``j`` and applied with ``cv2.filter2D``. Nothing is
  decimated, so the transform is exactly shift-invariant (no ``align`` needed for
  block-wise fusion) and free of the DWT's aliasing. Because all four filters are
  symmetric and of odd length, filtering a mirror-extended signal gives a
  mirror-symmetric result, so mirror borders (``BORDER_REFLECT_101``) at every level
  keep perfect reconstruction exact up to the image edge, and any image size works
  (``pywt.swt2`` would need sizes divisible by ``2**levels`` and is periodic).
- **Selection with consistency checks**: per level and position one decision for
  all three orientation sub-bands (LH, HL, HH) and all channels, taken on the
  focus channel's activity ``|LH| + |HL| + |HH|`` averaged over a ``window`` box
  (area-based selection, Li et al. 1995). Forster et al. apply a majority filter to
  the finished decision map instead; that needs every frame's coefficients at the
  end, so it cannot stream, whereas the box average decides as frames arrive.
- The approximation (low-pass residual) is the running mean over frames.

State per level: the best activity and the winning three sub-bands, ``3 (C + 1) + 1``
planes at full resolution since nothing is decimated (the focus channel's
coefficients ride along because masked copies of whole pixels are fastest), plus
the summed approximation and the depth tracker: constant in the number of frames,
but about 20 RGB frames' worth at the default 5 levels (a peak of about 40 while a
frame is transformed). The default block is therefore smaller than the pyramid's,
to bound memory on huge frames.

Options
-------
levels : int, default 5
    Decomposition levels. The approximation left after ``levels`` is averaged, so
    too few levels average away mid frequencies; the halo grows as ``2**levels``.
wavelet : str, default "bior4.4"
    A symmetric biorthogonal PyWavelets wavelet: ``bior2.2`` (5/3), ``bior2.4``,
    ``bior4.4`` (CDF 9/7), ``bior6.8``.
window : int, default 3
    Side of the activity box in pixels (odd; 1 = per-coefficient max-abs).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from ._focus import (
    CV_MAX_CHANNELS,
    DepthTracker,
    by_channels,
    check_options,
    depth_halo,
    focus_measure,
    masked_copy,
)
from .registry import Method, register_method

__all__ = ["WaveletFusion", "wavelet_filters", "wavelet_halo", "swt_forward", "swt_inverse"]

DEFAULTS: dict[str, Any] = {"levels": 5, "wavelet": "bior4.4", "window": 3}
_BORDER = cv2.BORDER_REFLECT_101


@lru_cache(maxsize=None)
def wavelet_filters(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zero-phase analysis (lo, hi) and synthesis (lo, hi) filters of wavelet ``name``.

    PyWavelets stores the biorthogonal filters zero-padded to a common even length
    and with the high-pass shifted by one sample (needed by the decimated transform).
    Undecimated, each filter can be centred on itself; the synthesis filters are
    scaled by 1/2 so that ``A_lo S_lo + A_hi S_hi = 1`` (perfect reconstruction),
    which is checked here.
    """
    import pywt

    try:
        w = pywt.Wavelet(name)
    except ValueError:
        raise ValueError(f"unknown wavelet {name!r}") from None
    out = []
    for i, f in enumerate((w.dec_lo, w.dec_hi, w.rec_lo, w.rec_hi)):
        f = np.asarray(f, np.float64)
        nz = np.flatnonzero(np.abs(f) > 1e-12)
        f = f[nz[0] : nz[-1] + 1] if nz.size else f
        if f.size % 2 == 0 or not np.allclose(f, f[::-1]):
            raise ValueError(
                f"wavelet {name!r} is not symmetric with odd-length filters; "
                "use bior2.2, bior2.4, bior4.4 or bior6.8"
            )
        out.append(f * (0.5 if i >= 2 else 1.0))
    om = np.linspace(0, np.pi, 129)

    def resp(f: np.ndarray) -> np.ndarray:
        k = np.arange(f.size) - f.size // 2
        return np.cos(om[:, None] * k[None, :]) @ f

    pr = resp(out[0]) * resp(out[2]) + resp(out[1]) * resp(out[3])
    if not np.allclose(pr, 1.0, atol=1e-6):
        raise ValueError(f"wavelet {name!r} does not reconstruct perfectly undecimated")
    return tuple(f.astype(np.float32) for f in out)  # type: ignore[return-value]


@lru_cache(maxsize=64)
def _dilated(name: str, which: int, d: int) -> np.ndarray:
    f = wavelet_filters(name)[which]
    k = np.zeros((f.size - 1) * d + 1, np.float32)
    k[::d] = f
    return k


# Up to this dilation the zero-stuffed kernel is cheap enough to apply directly.
_DIRECT_MAX_D = 2


def _kernel(k: np.ndarray, axis: int) -> np.ndarray:
    # A 1-D kernel as a column (filters along y) or a row (along x). filter2D with a
    # 1-D kernel runs one pass, where sepFilter2D would add an identity pass.
    return k.reshape(-1, 1) if axis == 0 else k.reshape(1, -1)


def _filter(a: np.ndarray, name: str, which: int, d: int, axis: int) -> np.ndarray:
    """Filter ``a`` ``(H, W, C)`` along ``axis`` (0 = y, 1 = x) with filter ``which``
    of ``name`` dilated by ``d``, mirror borders (``BORDER_REFLECT_101``).

    A dilated kernel is mostly zeros; rather than paying for them, the mirrored
    signal is padded explicitly and reshaped so that samples ``d`` apart become
    neighbours (the ``d`` polyphase components side by side), and the undilated
    kernel is applied. The result is identical to filtering with the zero-stuffed
    kernel, at the cost of a 9-tap filter whatever the level.
    """
    if a.ndim == 3 and a.shape[2] > CV_MAX_CHANNELS:
        return by_channels(lambda part: _filter(part, name, which, d, axis), a)
    h, w = a.shape[:2]
    n = h if axis == 0 else w
    if d <= _DIRECT_MAX_D or n == 1:
        k = _dilated(name, which, d)
        return cv2.filter2D(a, cv2.CV_32F, _kernel(k, axis), borderType=_BORDER).reshape(a.shape)
    k = wavelet_filters(name)[which]
    c = int(np.prod(a.shape[2:], dtype=np.int64)) if a.ndim > 2 else 1
    pad = (k.size // 2) * d
    extra = (-(n + 2 * pad)) % d  # make the padded length a multiple of d
    if axis == 0:
        p = cv2.copyMakeBorder(a, pad, pad + extra, 0, 0, _BORDER)
        hp = p.shape[0]
        out = cv2.filter2D(p.reshape(hp // d, d * w * c), cv2.CV_32F, _kernel(k, 0), borderType=_BORDER)
        return out.reshape((hp,) + a.shape[1:])[pad : pad + h]
    if d * c > CV_MAX_CHANNELS:
        # too many interleaved channels for one OpenCV image: filter the transpose along y
        t = np.ascontiguousarray(np.swapaxes(a, 0, 1))
        return np.ascontiguousarray(np.swapaxes(_filter(t, name, which, d, 0), 0, 1))
    p = cv2.copyMakeBorder(a, 0, 0, pad, pad + extra, _BORDER)
    wp = p.shape[1]
    out = cv2.filter2D(p.reshape(h, wp // d, d * c), cv2.CV_32F, _kernel(k, 1), borderType=_BORDER)
    return np.ascontiguousarray(out.reshape((h, wp) + a.shape[2:])[:, pad : pad + w])


def _analyse(a: np.ndarray, name: str, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One undecimated level: (LL, LH, HL, HH) of ``a`` with filters dilated by ``d``.

    The first letter is the filter along x, the second along y.
    """
    lx, hx = _filter(a, name, 0, d, 1), _filter(a, name, 1, d, 1)
    ll, lh = _filter(lx, name, 0, d, 0), _filter(lx, name, 1, d, 0)
    del lx
    hl, hh = _filter(hx, name, 0, d, 0), _filter(hx, name, 1, d, 0)
    return ll, lh, hl, hh


def _synthesise(ll: np.ndarray, lh: np.ndarray, hl: np.ndarray, hh: np.ndarray, name: str, d: int) -> np.ndarray:
    lx = _filter(ll, name, 2, d, 0) + _filter(lh, name, 3, d, 0)
    hx = _filter(hl, name, 2, d, 0) + _filter(hh, name, 3, d, 0)
    return _filter(lx, name, 2, d, 1) + _filter(hx, name, 3, d, 1)


def swt_forward(image: np.ndarray, levels: int, name: str = "bior4.4") -> tuple[np.ndarray, list]:
    """Undecimated transform of ``image`` ``(H, W[, C])``: ``(approximation, [(LH, HL, HH), ...])``
    finest level first."""
    a = np.ascontiguousarray(image, dtype=np.float32)
    details = []
    for j in range(levels):
        a, lh, hl, hh = _analyse(a, name, 2**j)
        details.append((lh, hl, hh))
    return a, details


def swt_inverse(approx: np.ndarray, details: list, name: str = "bior4.4") -> np.ndarray:
    """Inverse of :func:`swt_forward`."""
    a = approx
    for j in range(len(details) - 1, -1, -1):
        a = _synthesise(a, *details[j], name, 2**j)
    return a


def _check(levels: int, window: int) -> tuple[int, int]:
    levels, window = int(levels), int(window)
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    return levels, window


def wavelet_halo(
    levels: int = DEFAULTS["levels"],
    wavelet: str = DEFAULTS["wavelet"],
    window: int = DEFAULTS["window"],
    **options: Any,
) -> int:
    """Context (pixels) a block needs for wavelet fusion to equal the whole image's.

    Analysis at level ``j`` reaches ``r_a * 2**(j-1)`` pixels (``r_a`` the analysis
    filters' radius), so level-``L`` coefficients depend on ``r_a (2**L - 1)`` pixels
    around them; the activity box adds ``window // 2``; synthesis adds ``r_s (2**L - 1)``.
    Nothing is decimated, so no alignment is needed.
    """
    check_options("wavelet", options, DEFAULTS)  # the driver validates options through here
    levels, window = _check(levels, window)
    f = wavelet_filters(str(wavelet))
    ra = max(f[0].size, f[1].size) // 2
    rs = max(f[2].size, f[3].size) // 2
    span = (ra + rs) * (2**levels - 1) + window // 2
    return max(span, depth_halo()) + 1


class WaveletFusion:
    """Streaming undecimated-wavelet fusion of one block (see the module docstring)."""

    def __init__(
        self,
        n_frames: int,
        shape: tuple[int, int, int],
        *,
        levels: int = DEFAULTS["levels"],
        wavelet: str = DEFAULTS["wavelet"],
        window: int = DEFAULTS["window"],
        track_depth: bool = True,
        **options: Any,
    ):
        check_options("wavelet", options, DEFAULTS)
        levels, window = _check(levels, window)
        wavelet_filters(str(wavelet))  # validate early
        h, w, c = (int(s) for s in shape)
        self.c, self.levels, self.name, self.window = c, levels, str(wavelet), window
        self.best: list[np.ndarray] = []
        self.coef: list[list[np.ndarray]] = []
        self.approx = np.zeros((h, w, c), np.float32)
        self.depth = DepthTracker((h, w)) if track_depth else None
        self.n = 0

    def add(self, frame: np.ndarray, focus: np.ndarray) -> None:
        """Fold one frame ``(H, W, C)`` and its selection image ``(H, W)`` in."""
        c = self.c
        a = np.concatenate([frame, focus[..., None]], axis=-1).astype(np.float32, copy=False)
        first = self.n == 0
        for j in range(self.levels):
            a, lh, hl, hh = _analyse(a, self.name, 2**j)
            act = np.abs(lh[..., c]) + np.abs(hl[..., c]) + np.abs(hh[..., c])
            if self.window > 1:
                act = cv2.boxFilter(act, -1, (self.window, self.window), borderType=_BORDER)
            if first:
                self.best.append(act)
                self.coef.append([b.copy() for b in (lh, hl, hh)])
            else:
                better = cv2.compare(act, self.best[j], cv2.CMP_GT)
                masked_copy(self.best[j], act, better)
                for dst, src in zip(self.coef[j], (lh, hl, hh)):
                    masked_copy(dst, src, better)
            del lh, hl, hh
        self.approx += a[..., :c]
        if self.depth is not None:
            self.depth.add(focus_measure(focus))
        self.n += 1

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Transform the fused coefficients back: image ``(H, W, C)`` float32 and depth."""
        if self.n == 0:
            raise RuntimeError("no frames were added")
        c = self.c
        details = [tuple(b[..., :c] for b in bands) for bands in self.coef]
        out = swt_inverse(self.approx / np.float32(self.n), details, self.name)
        return np.ascontiguousarray(out, dtype=np.float32), self.depth.finish() if self.depth is not None else None


def _make(n_frames: int, shape: tuple[int, int, int], **options: Any) -> WaveletFusion:
    return WaveletFusion(n_frames, shape, **options)


register_method(
    Method(
        name="wavelet",
        description="Undecimated wavelet, max-abs area selection (Forster et al. 2004)",
        make=_make,
        depth_optional=True,
        halo=wavelet_halo,
        align=lambda **_: 1,
        kind="classical",
        options=dict(DEFAULTS),
        default_block=1024,
    )
)
