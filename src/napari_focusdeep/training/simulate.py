"""Render realistic focus brackets from an all-in-focus image and a depth map.

The simulator is the ground truth behind every quality number in this project:
tests, sample data, benchmarks and pre-training all use it. What it models:

- layered defocus with occlusion: the scene is cut into depth layers, each layer
  (premultiplied by its mask) is blurred by its own PSF and composited back to
  front, so a blurred foreground spills over a sharp background as in a real lens;
- PSFs beyond Gaussians: ``"gaussian"``, ``"disk"`` (pillbox), ``"ring"``
  (a disc with a bright rim, as spherically aberrated lenses give) and ``"donut"``
  (an annulus: a mirror lens's centrally obstructed pupil; pre-training never
  uses it, so it is the unseen domain of the fine-tuning benchmark);
- focus breathing (magnification through the stack), camera shake (shift and
  rotation per frame) and exposure flicker;
- noise in linear light after Brooks et al., "Unprocessing images" (2019):
  heteroscedastic Gaussian with variance ``shot * x + read``, then gamma and
  quantisation to the output dtype.

Depth convention: ``depth`` in [0, 1]; frame ``i`` of ``N`` is focused at depth
``i / (N - 1)``, so a pixel's in-focus frame index is ``depth * (N - 1)``; larger
depth is farther from the camera. Geometry follows docs/CONTRACTS.md: ``matrices[i]``
maps reference-frame pixel coordinates to frame ``i`` pixel coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..registration import resolve_reference

__all__ = [
    "SimulatedStack",
    "NoiseLevel",
    "psf_kernel",
    "PSF_KINDS",
    "synthetic_scene",
    "random_depth",
    "simulate_stack",
    "sample_stack",
    "sample_noise",
    "add_noise",
    "image_source",
]

NOISE_PRESETS: dict[str, tuple[float, float]] = {
    # (shot, read) variances in linear light, spanning Brooks et al.'s range
    "low": (1e-4, 10 ** (2.18 * math.log10(1e-4) + 1.20)),
    "medium": (1.5e-3, 10 ** (2.18 * math.log10(1.5e-3) + 1.20)),
    "high": (1.2e-2, 10 ** (2.18 * math.log10(1.2e-2) + 1.20)),
}


@dataclass(frozen=True)
class NoiseLevel:
    """Shot and read noise variances in linear light (variance = shot * x + read)."""

    shot: float
    read: float


@dataclass
class SimulatedStack:
    """A rendered focus bracket with its ground truth.

    Attributes
    ----------
    frames : numpy.ndarray
        ``(N, H, W[, C])`` in the requested dtype.
    sharp : numpy.ndarray
        float32 ground truth ``(H, W[, C])`` in [0, 1], in the reference frame's geometry.
    depth : numpy.ndarray
        float32 ``(H, W)``: the frame index in which each pixel is in focus.
    matrices : numpy.ndarray
        ``(N, 3, 3)`` true transforms, reference coordinates to frame coordinates.
    reference : int
        Index of the frame whose geometry the ground truth is in.
    noise : NoiseLevel or None
        The noise that was added.
    """

    frames: np.ndarray
    sharp: np.ndarray
    depth: np.ndarray
    matrices: np.ndarray
    reference: int
    noise: NoiseLevel | None = None


# -- PSFs ------------------------------------------------------------------------------
#: Every PSF :func:`psf_kernel` draws.
PSF_KINDS = ("disk", "gaussian", "ring", "donut")
#: Diameter of a mirror lens's central obstruction relative to its aperture.
DONUT_OBSTRUCTION = 0.5


def psf_kernel(radius: float, kind: str = "disk") -> np.ndarray:
    """A normalised defocus PSF of blur radius ``radius`` pixels.

    ``"gaussian"`` uses sigma = radius / 2; ``"disk"`` is an anti-aliased pillbox;
    ``"ring"`` is a pillbox whose rim carries extra energy (over-corrected
    spherical aberration, the "soap bubble" bokeh); ``"donut"`` is an annulus whose
    hole is half its diameter, the defocus PSF of a catadioptric (mirror) lens
    with its central obstruction.
    """
    radius = float(radius)
    if radius < 0.5:
        k = np.zeros((1, 1), np.float32)
        k[0, 0] = 1
        return k
    if kind == "gaussian":
        sigma = radius / 2
        half = int(math.ceil(3 * sigma))
        ax = np.arange(-half, half + 1, dtype=np.float32)
        g = np.exp(-(ax**2) / (2 * sigma**2))
        k = np.outer(g, g)
        return (k / k.sum()).astype(np.float32)
    half = int(math.ceil(radius)) + 1
    # supersample 4x so small discs are round and their area is right
    ss = 4
    ax = (np.arange(-half * ss, (half + 1) * ss, dtype=np.float32) + 0.5) / ss - 0.5
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    rr = np.sqrt(xx**2 + yy**2)
    disk = (rr <= radius).astype(np.float32)
    if kind == "ring":
        disk *= 1.0 + 2.0 * np.clip((rr - 0.7 * radius) / (0.3 * radius), 0, 1)
    elif kind == "donut":
        disk *= (rr >= DONUT_OBSTRUCTION * radius).astype(np.float32)
    elif kind != "disk":
        raise ValueError(f"unknown PSF {kind!r}; choose one of {', '.join(PSF_KINDS)}")
    size = 2 * half + 1
    k = disk.reshape(size, ss, size, ss).mean(axis=(1, 3))
    if not k.sum() > 0:  # an annulus thinner than the supersampling: the disc is the best guess
        return psf_kernel(radius, "disk")
    return (k / k.sum()).astype(np.float32)


def _blur(image: np.ndarray, radius: float, kind: str) -> np.ndarray:
    if radius < 0.5:
        return image.copy()
    if kind == "gaussian":
        return cv2.GaussianBlur(image, (0, 0), radius / 2, borderType=cv2.BORDER_REFLECT)
    return cv2.filter2D(image, -1, psf_kernel(radius, kind), borderType=cv2.BORDER_REFLECT)


# -- scenes ----------------------------------------------------------------------------
def _fractal(shape: tuple[int, int], rng: np.random.Generator, beta: float = 1.8) -> np.ndarray:
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (beta / 2)
    spec[0, 0] = 0
    img = np.fft.irfft2(spec, s=(h, w))
    img -= img.min()
    return (img / max(img.max(), 1e-12)).astype(np.float32)


def _cells(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    img = np.zeros(shape, np.float32)
    n = max(4, int(h * w / 900))
    for _ in range(n):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(3, 14)), int(rng.integers(3, 14)))
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.3, 1)), -1, cv2.LINE_AA)
        cv2.ellipse(img, c, axes, 0, 0, 360, float(rng.uniform(0, 0.3)), 1, cv2.LINE_AA)
    return img


def _fibres(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    img = np.zeros(shape, np.float32)
    for _ in range(max(6, (h + w) // 12)):
        pts = np.cumsum(rng.normal(0, 6, size=(12, 2)), axis=0) + [rng.uniform(0, w), rng.uniform(0, h)]
        cv2.polylines(img, [pts.astype(np.int32)], False, float(rng.uniform(0.4, 1)), int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _text(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    img = np.zeros(shape, np.uint8)  # OpenCV 5 draws text on 8-bit images only
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    for _ in range(max(3, h * w // 3000)):
        s = "".join(rng.choice(list(letters), size=int(rng.integers(2, 7))))
        scale = float(rng.uniform(0.3, 1.2))
        org = (int(rng.integers(0, max(1, w - 20))), int(rng.integers(10, max(11, h))))
        cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, int(rng.integers(128, 256)), 1, cv2.LINE_AA)
    return img.astype(np.float32) / 255


def _dead_leaves(shape: tuple[int, int], channels: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dead leaves: occluding discs and ellipses with power-law radii, each a flat colour
    plus grain (one of three fractal noise fields of random roughness), ``(H, W, channels)`` in about [0, 1], and
    its depth map: each leaf nearer than those it covers, so the occlusion edges of the
    picture are the depth edges the simulator blurs across.

    The model reproduces natural images' scale invariance and occlusion edges, and
    denoisers trained on it alone come within about a dB of ones trained on photos
    (Achddou et al., "Synthetic images as a regularity prior for image restoration
    neural networks", 2021), so it widens the textures training sees without a dataset.
    """
    h, w = shape
    up = 2  # drawn at twice the size and reduced, for anti-aliased edges
    hh, ww = h * up, w * up
    grains = [_fractal((hh, ww), rng, beta=float(rng.uniform(0.2, 2.2))) - 0.5 for _ in range(3)]

    def colour() -> np.ndarray:  # a grey level with some colour: natural channels correlate
        return (rng.uniform(0, 1) + rng.normal(0, 0.15, channels)).astype(np.float32)

    img = np.empty((hh, ww, channels), np.float32)
    img[:] = colour() + float(rng.uniform(0, 0.6)) * grains[0][..., None]
    rmin, rmax = 1.0 * up, 0.6 * max(hh, ww)
    big = int(rng.integers(3, 9))  # a few large leaves first, so small ones rarely show the background
    count = big + int(rng.integers(150, 500))
    depth = np.ones((hh, ww), np.float32)
    # later leaves lie on top, so nearer (smaller depth), with random gaps between them
    leaf_depth = np.sort(rng.random(count))[::-1]
    for i in range(count):
        if i < big:
            r = float(rng.uniform(0.15, 0.6)) * max(hh, ww)
        else:  # radii with density ~ r^-3 between rmin and rmax (inverse transform sampling)
            u = rng.random()
            r = (rmin**-2 - u * (rmin**-2 - rmax**-2)) ** -0.5
        cx, cy = int(rng.integers(0, ww)), int(rng.integers(0, hh))
        # each leaf is drawn in its bounding box only: most are a few pixels across
        rad = int(round(r))
        y0, y1, x0, x1 = max(0, cy - rad), min(hh, cy + rad + 1), max(0, cx - rad), min(ww, cx + rad + 1)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        if rng.random() < 0.5:
            cv2.circle(mask, (cx - x0, cy - y0), rad, 1, -1)
        else:
            axes = (rad, max(1, int(round(r * rng.uniform(0.2, 1.0)))))
            cv2.ellipse(mask, (cx - x0, cy - y0), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        sel = mask.astype(bool)
        amp = float(rng.uniform(0, 0.6))
        box = (slice(y0, y1), slice(x0, x1))
        img[box][sel] = colour() + amp * grains[int(rng.integers(0, 3))][box][sel][:, None]
        depth[box][sel] = leaf_depth[i]
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, channels)
    depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
    depth = depth + 0.1 * _fractal(shape, rng, beta=4.0)  # leaves are not quite flat
    depth -= depth.min()
    return img, (depth / max(float(depth.max()), 1e-12)).astype(np.float32)


_TEXTURES = {"fractal": _fractal, "cells": _cells, "fibres": _fibres, "text": _text}
#: Scene kinds drawn as a whole rather than blended per channel ("mixed" leaves them out).
_SCENES = {"leaves": _dead_leaves}
#: Every ``kind`` :func:`synthetic_scene` draws.
SCENE_NAMES = ("mixed", *_TEXTURES, *_SCENES)


def synthetic_scene(
    shape: tuple[int, int],
    *,
    channels: int = 3,
    kind: str = "mixed",
    seed: int | np.random.Generator = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A procedural all-in-focus scene and its depth map.

    Parameters
    ----------
    shape : (H, W)
    channels : int
        1 for gray (returned as ``(H, W)``), 3 for RGB, or any count.
    kind : {"mixed", "fractal", "cells", "fibres", "text", "leaves"}
        Texture family; ``"mixed"`` blends the four textures; ``"leaves"`` is a
        dead-leaves scene (occluding discs with grain, its own depth map).
    seed : int or Generator

    Returns
    -------
    sharp : float32 ``(H, W)`` or ``(H, W, C)`` in [0, 1]
    depth : float32 ``(H, W)`` in [0, 1]
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    kinds = list(_TEXTURES) if kind == "mixed" else [kind]
    if any(k not in _TEXTURES and k not in _SCENES for k in kinds):
        raise ValueError(f"unknown scene kind {kind!r}; choose mixed or one of {sorted([*_TEXTURES, *_SCENES])}")
    depth = None
    if kind in _SCENES:
        img, depth = _SCENES[kind](shape, channels, rng)
    else:
        layers = []
        for c in range(channels):
            acc = np.zeros(shape, np.float32)
            for k in kinds:
                acc += _TEXTURES[k](shape, rng) * float(rng.uniform(0.5, 1.0))
            layers.append(acc)
        img = np.stack(layers, axis=-1)
    if channels >= 3 and kind not in _SCENES:
        # correlated colour channels, as in natural images
        mix = np.eye(channels, dtype=np.float32) * 0.5 + 0.5 / channels
        mix += rng.normal(0, 0.1, size=(channels, channels)).astype(np.float32)
        img = img @ mix.T
    lo, hi = np.percentile(img, [0.5, 99.5], axis=(0, 1))
    img = np.clip((img - lo) / np.maximum(hi - lo, 1e-6), 0, 1) * 0.9 + 0.05
    sharp = img[..., 0] if channels == 1 else img
    return sharp.astype(np.float32), random_depth(shape, seed=rng) if depth is None else depth


def random_depth(shape: tuple[int, int], *, seed: int | np.random.Generator = 0, steps: int = 3) -> np.ndarray:
    """A random depth map in [0, 1]: a smooth surface plus ``steps`` occluding objects."""
    rng = np.random.default_rng(seed)
    h, w = shape
    smooth = _fractal(shape, rng, beta=4.0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tilt = (xx / max(w - 1, 1)) * rng.uniform(-1, 1) + (yy / max(h - 1, 1)) * rng.uniform(-1, 1)
    depth = smooth + 0.5 * tilt
    for _ in range(steps):
        mask = np.zeros(shape, np.uint8)
        pts = np.stack([rng.uniform(0, w, 6), rng.uniform(0, h, 6)], axis=1).astype(np.int32)
        cv2.fillPoly(mask, [cv2.convexHull(pts)], 1)
        depth = np.where(mask > 0, rng.uniform(depth.min(), depth.max()), depth)
    depth -= depth.min()
    return (depth / max(depth.max(), 1e-12)).astype(np.float32)


def image_source(
    name_or_path: str | Path, *, shape: tuple[int, int] | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An all-in-focus image and a depth map from a real picture.

    ``name_or_path`` is a scikit-image sample name (``"astronaut"``, ``"coffee"``,
    ``"motorcycle"`` - whose real stereo disparity becomes the depth map - ...) or an
    image file. Other images get a random depth map. ``shape`` crops/resizes.
    """
    import skimage.data

    depth = None
    if str(name_or_path) == "motorcycle":
        left, _right, disp = skimage.data.stereo_motorcycle()
        img = left
        disp = np.nan_to_num(disp, nan=0.0, posinf=0.0, neginf=0.0)
        depth = 1.0 - (disp - disp.min()) / max(float(np.ptp(disp)), 1e-6)  # near = large disparity
    elif hasattr(skimage.data, str(name_or_path)) and not Path(str(name_or_path)).exists():
        img = getattr(skimage.data, str(name_or_path))()
    else:
        img = cv2.imread(str(name_or_path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot read image {name_or_path!s}")
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    info_max = np.iinfo(img.dtype).max if img.dtype.kind in "ui" else 1.0
    img = img.astype(np.float32) / info_max
    if shape is not None:
        img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
        if depth is not None:
            depth = cv2.resize(depth.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    if depth is None:
        depth = random_depth(img.shape[:2], seed=seed)
    return img, depth.astype(np.float32)


# -- noise -----------------------------------------------------------------------------
def sample_noise(rng: np.random.Generator) -> NoiseLevel:
    """Brooks et al.'s sampling: log shot ~ U[log 1e-4, log 0.012], log read =
    2.18 log shot + 1.20 + N(0, 0.26^2)."""
    log_shot = rng.uniform(math.log(1e-4), math.log(0.012))
    log_read = 2.18 * log_shot + 1.20 + rng.normal(0, 0.26)
    return NoiseLevel(math.exp(log_shot), math.exp(log_read))


def _noise_level(noise: object, rng: np.random.Generator) -> NoiseLevel | None:
    if noise is None or noise is False or noise == "none":
        return None
    if isinstance(noise, NoiseLevel):
        return noise
    if noise == "random":
        return sample_noise(rng)
    if isinstance(noise, str):
        if noise not in NOISE_PRESETS:
            raise ValueError(f"unknown noise {noise!r}; choose none, low, medium, high, random or a number")
        return NoiseLevel(*NOISE_PRESETS[noise])
    if isinstance(noise, (tuple, list)):
        return NoiseLevel(float(noise[0]), float(noise[1]))
    shot = float(noise)  # a shot level: read follows Brooks's relation
    return NoiseLevel(shot, math.exp(2.18 * math.log(shot) + 1.20))


def add_noise(
    image: np.ndarray, level: NoiseLevel, rng: np.random.Generator, *, gamma: float = 2.2
) -> np.ndarray:
    """Add shot/read noise in linear light to a gamma-encoded image in [0, 1]."""
    # cv2.pow is several times faster than numpy's ** on float32
    lin = cv2.pow(np.clip(image, 0, 1).astype(np.float32), gamma)
    std = np.sqrt(level.shot * lin + level.read)
    lin += rng.standard_normal(lin.shape, dtype=np.float32) * std
    return cv2.pow(np.clip(lin, 0, 1), 1 / gamma).reshape(image.shape)


# -- rendering -------------------------------------------------------------------------
def _matrices(
    n: int, ref: int, shape: tuple[int, int], breathing: float, shake: float, rotation: float, rng
) -> np.ndarray:
    h, w = shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    mats = np.repeat(np.eye(3)[None], n, axis=0)
    for i in range(n):
        if i == ref:
            continue
        m = 1.0 + breathing * (i - ref) / max(n - 1, 1)
        theta = math.radians(rng.normal(0, rotation)) if rotation else 0.0
        tx, ty = (rng.normal(0, shake, 2) if shake else (0.0, 0.0))
        c, s = math.cos(theta) * m, math.sin(theta) * m
        mats[i] = [[c, -s, cx - c * cx + s * cy + tx], [s, c, cy - s * cx - c * cy + ty], [0, 0, 1]]
    return mats


def _to_dtype(img: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        m = np.iinfo(dtype).max
        return np.clip(np.rint(img * m), 0, m).astype(dtype)
    return img.astype(dtype)


def simulate_stack(
    sharp: np.ndarray,
    depth: np.ndarray,
    n_frames: int,
    *,
    psf: str = "disk",
    max_blur: float = 6.0,
    breathing: float = 0.0,
    shake: float = 0.0,
    rotation: float = 0.0,
    flicker: float = 0.0,
    noise: object = None,
    reference: str | int = "middle",
    layers: int = 16,
    dtype: np.dtype | type = np.float32,
    seed: int | np.random.Generator = 0,
) -> SimulatedStack:
    """Render an ``n_frames`` focus bracket of ``sharp`` with depth map ``depth``.

    Parameters
    ----------
    sharp : ndarray
        All-in-focus image, float in [0, 1], ``(H, W)`` or ``(H, W, C)``.
    depth : ndarray
        ``(H, W)`` in [0, 1]; frame ``i`` focuses at ``i / (n_frames - 1)``.
    n_frames : int
    psf : {"disk", "gaussian", "ring", "donut"}
    max_blur : float
        Blur radius in pixels of a pixel one full stack depth out of focus.
    breathing : float
        Total relative magnification change from first to last frame (0.02 = 2 %).
    shake : float
        Standard deviation of the per-frame shift in pixels.
    rotation : float
        Standard deviation of the per-frame rotation in degrees.
    flicker : float
        Standard deviation of the per-frame exposure gain.
    noise : None, "low", "medium", "high", "random", float, (shot, read) or NoiseLevel
        Shot/read noise in linear light; a float is a shot level.
    reference : "first", "middle", "last" or int
        The frame whose geometry the ground truth shares (its matrix is the identity).
    layers : int
        Depth layers for occlusion-aware compositing.
    dtype : dtype
        Output frames' dtype (uint8/uint16 are quantised).
    seed : int or Generator

    Returns
    -------
    SimulatedStack
    """
    rng = np.random.default_rng(seed)
    n = int(n_frames)
    if n < 1:
        raise ValueError("n_frames must be at least 1")
    sharp = np.asarray(sharp, np.float32)
    gray = sharp.ndim == 2
    img = sharp[..., None] if gray else sharp
    h, w, c = img.shape
    depth = np.clip(np.asarray(depth, np.float32), 0, 1)
    if depth.shape != (h, w):
        raise ValueError(f"depth map {depth.shape} does not match the image {(h, w)}")
    ref = resolve_reference(reference, n)
    mats = _matrices(n, ref, (h, w), breathing, shake, rotation, rng)
    level = _noise_level(noise, rng)

    # Depth layers, far (large depth) to near; each layer is premultiplied by its mask.
    nl = max(1, min(int(layers), 64))
    edges = np.linspace(0, 1, nl + 1)
    label = np.clip(np.digitize(depth, edges[1:-1]), 0, nl - 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    present = [k for k in range(nl) if np.any(label == k)][::-1]
    premult, boxes = {}, {}
    for k in present:
        mask = (label == k).astype(np.float32)[..., None]
        premult[k] = np.concatenate([img * mask, mask], axis=-1)  # C+1 channels
        ys, xs = np.nonzero(mask[..., 0].any(axis=1))[0], np.nonzero(mask[..., 0].any(axis=0))[0]
        boxes[k] = (ys[0], ys[-1] + 1, xs[0], xs[-1] + 1)

    frames = []
    for i in range(n):
        focus = i / (n - 1) if n > 1 else 0.5
        colour = np.zeros((h, w, c), np.float32)
        alpha = np.zeros((h, w, 1), np.float32)
        for k in present:
            radius = max_blur * abs(centres[k] - focus)
            # blur only the layer's bounding box grown by the PSF's reach: layers are
            # mostly small, and outside that box the layer contributes nothing
            m = int(math.ceil(1.5 * radius)) + 2
            y0, y1, x0, x1 = boxes[k]
            y0, y1, x0, x1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
            b = _blur_channels(premult[k][y0:y1, x0:x1], radius, psf)
            a = b[..., -1:]
            keep = 1 - a
            col, alp = colour[y0:y1, x0:x1], alpha[y0:y1, x0:x1]  # views: update in place
            col *= keep
            col += b[..., :-1]
            alp *= keep
            alp += a
        frame = colour / np.maximum(alpha, 1e-6)
        if i != ref:
            flags = cv2.INTER_LINEAR
            frame = cv2.warpAffine(frame, mats[i][:2], (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)
            if frame.ndim == 2:
                frame = frame[..., None]
        if flicker:
            frame = frame * float(1 + rng.normal(0, flicker))
        if level is not None:
            frame = add_noise(frame, level, rng)
        frame = np.clip(frame, 0, 1)
        frames.append(_to_dtype(frame[..., 0] if gray else frame, dtype))
    return SimulatedStack(
        frames=np.stack(frames),
        sharp=sharp.copy(),
        depth=(depth * (n - 1)).astype(np.float32),
        matrices=mats,
        reference=ref,
        noise=level,
    )


def _blur_channels(image: np.ndarray, radius: float, kind: str) -> np.ndarray:
    # OpenCV filters at most 4 channels per call
    if image.shape[-1] <= 4:
        out = _blur(image, radius, kind)
        return out if out.ndim == 3 else out[..., None]
    parts = [_blur(image[..., i : i + 4], radius, kind) for i in range(0, image.shape[-1], 4)]
    return np.concatenate([p if p.ndim == 3 else p[..., None] for p in parts], axis=-1)


def sample_stack(
    shape: Sequence[int] = (384, 512),
    n_frames: int = 12,
    *,
    channels: int = 3,
    breathing: float = 0.02,
    noise: object = "low",
    dtype: np.dtype | type = np.uint8,
    seed: int = 0,
) -> SimulatedStack:
    """The built-in sample: a small synthetic RGB bracket with breathing and noise.

    Renders in well under a second; used by ``focusdeep demo``, napari's sample data
    and the tests.
    """
    sharp, depth = synthetic_scene(tuple(shape), channels=channels, seed=seed)
    return simulate_stack(
        sharp, depth, n_frames, breathing=breathing, noise=noise, dtype=dtype, seed=seed, max_blur=5.0, layers=12
    )
