"""Training data: simulated focus bursts on the fly, and a lab's own stacks.

A lab's folders of stacks are read and registered by :func:`load_training_folder`
(:mod:`.folder`) and cut into crops, with noise injected on the fly, by
:class:`StackCrops`.

Every sample is a pair ``(burst, target)``: ``burst`` float32 ``(N, C, H, W)`` in
[0, 1] (registered frames with small residual misalignment, as after our global
registration), ``target`` float32 ``(C, H, W)``, the sharp image in the reference
frame's geometry.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import cv2
import numpy as np

from .folder import TrainingFolder, load_training_folder, make_pseudo_gt
from .simulate import (
    NOISE_PRESETS,
    SCENE_NAMES,
    NoiseLevel,
    add_noise,
    image_source,
    sample_noise,
    simulate_stack,
    synthetic_scene,
)

__all__ = [
    "SimConfig",
    "dim",
    "simulated_pair",
    "simulated_batches",
    "simulated_raw_pair",
    "StackCrops",
    "validation_set",
    "psnr",
    "TrainingFolder",
    "load_training_folder",
    "make_pseudo_gt",
]

# scikit-image's bundled photos used as real-texture sources beside procedural scenes
PHOTO_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "immunohistochemistry", "retina", "hubble_deep_field")
HELD_OUT_SOURCES = ("camera", "brick", "grass", "gravel", "cell")
#: More bundled scikit-image photos, added to the training mix on 2026-11-28 (natural grain:
#: the moon's craters, coins, a printed page); kept apart so PHOTO_SOURCES's users
#: (the fine-tuning benchmark) render the same stacks as before.
EXTRA_PHOTO_SOURCES = ("moon", "coins", "page")
#: Procedural scene kinds drawn for training (see :func:`~.simulate.synthetic_scene`).
SCENE_KINDS = ("mixed", "fractal", "cells", "fibres", "text", "leaves")


@dataclass
class SimConfig:
    """What the on-the-fly simulator draws from.

    ``frames`` is the (min, max) burst length; ``residual_breathing`` and
    ``residual_shake`` the misalignment left after global registration.
    ``gray_fraction`` of RGB bursts become gray (luminance in all three channels,
    noise included, as a gray stack reaches an RGB network) and ``uint8_fraction``
    are quantised to 8 bits, as most stacks on disk are. ``read_noise_scale`` above 1
    multiplies the read noise variance of each noisy burst by a log-uniform factor in
    ``[1, read_noise_scale]``, beyond Brooks et al.'s relation (a sensor at very high
    ISO, or a dim microscope), so the network meets heavier noise than the paper's range.
    A ``photo_fraction`` of bursts crop one of ``photos``; the others are procedural
    scenes of a kind drawn from ``scenes`` (:func:`~.simulate.synthetic_scene`).
    A ``dark_fraction`` of scenes are dimmed before the noise goes in, by an exposure
    log-uniform in ``[min_exposure, 1]`` in linear light: dim scenes (fluorescence,
    short exposures) are where noise, clipped at black and gamma-encoded, biases every
    frame the same way, so averaging frames cannot remove it and the network must learn to.
    """

    crop: int = 128
    frames: tuple[int, int] = (4, 16)
    max_blur: tuple[float, float] = (2.0, 10.0)
    psfs: tuple[str, ...] = ("disk", "gaussian", "ring")
    residual_breathing: float = 0.004
    residual_shake: float = 0.5
    noise: bool = True
    noise_free_fraction: float = 0.15
    photo_fraction: float = 0.5
    gray_fraction: float = 0.2
    uint8_fraction: float = 0.5
    read_noise_scale: float = 1.0
    dark_fraction: float = 0.25
    min_exposure: float = 0.05
    photos: tuple[str, ...] = PHOTO_SOURCES + EXTRA_PHOTO_SOURCES
    scenes: tuple[str, ...] = SCENE_KINDS
    channels: int = 3
    _photo_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.dark_fraction <= 1:
            raise ValueError(f"dark_fraction must be in [0, 1], got {self.dark_fraction!r}")
        if not 0 < self.min_exposure <= 1:
            raise ValueError(f"min_exposure must be in (0, 1], got {self.min_exposure!r}")
        unknown = [k for k in self.scenes if k not in SCENE_NAMES]
        if unknown:
            raise ValueError(f"unknown scene kind(s) {', '.join(map(repr, unknown))}; choose from {', '.join(SCENE_NAMES)}")
        if not self.scenes and not (self.photos and self.photo_fraction >= 1):
            raise ValueError("no scene kinds given: give some, or photos with photo_fraction 1")
        if not self.photos and self.photo_fraction > 0 and not self.scenes:
            raise ValueError("neither photos nor scene kinds to draw from")


def draw_noise(rng: np.random.Generator, cfg: SimConfig) -> NoiseLevel | None:
    """A simulated burst's noise: none for ``cfg.noise_free_fraction`` of bursts,
    otherwise a Brooks et al. level with the read noise scaled as ``cfg`` says."""
    if not cfg.noise or rng.random() < cfg.noise_free_fraction:
        return None
    noise = sample_noise(rng)
    if cfg.read_noise_scale > 1:
        noise = NoiseLevel(noise.shot, noise.read * float(np.exp(rng.uniform(0, np.log(cfg.read_noise_scale)))))
    return noise


def dim(sharp: np.ndarray, exposure: float, gamma: float = 2.2) -> np.ndarray:
    """A gamma-encoded image as if exposed ``exposure`` times as long: scaled in linear
    light, with the simulator's gamma (:func:`~.simulate.add_noise`)."""
    return sharp * np.float32(exposure ** (1 / gamma))


def _photo(name: str, cache: dict) -> np.ndarray:
    if name not in cache:
        img, _ = image_source(name)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        cache[name] = img[..., :3]
    return cache[name]


def simulated_pair(
    rng: np.random.Generator, cfg: SimConfig, n_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One simulated ``(burst (N, C, H, W), target (C, H, W))`` pair."""
    from .simulate import random_depth

    s = cfg.crop
    n = int(n_frames or rng.integers(cfg.frames[0], cfg.frames[1] + 1))
    if cfg.photos and rng.random() < cfg.photo_fraction:
        img = _photo(str(rng.choice(cfg.photos)), cfg._photo_cache)
        if min(img.shape[:2]) < s:  # a small picture (page is 191 high) is enlarged to fit the crop
            k = s / min(img.shape[:2])
            size = (max(s, int(np.ceil(img.shape[1] * k))), max(s, int(np.ceil(img.shape[0] * k))))
            img = np.clip(cv2.resize(img, size, interpolation=cv2.INTER_CUBIC), 0, 1)
        h, w = img.shape[:2]
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        sharp = img[y : y + s, x : x + s]
        if rng.random() < 0.5:
            sharp = sharp[:, ::-1]
        sharp = np.ascontiguousarray(sharp[..., : cfg.channels])
        depth = random_depth((s, s), seed=rng, steps=int(rng.integers(0, 4)))
    else:
        sharp, depth = synthetic_scene((s, s), channels=cfg.channels, kind=str(rng.choice(list(cfg.scenes))), seed=rng)
        if cfg.channels == 1:
            sharp = sharp[..., None]
    if cfg.dark_fraction and rng.random() < cfg.dark_fraction:
        sharp = dim(sharp, float(np.exp(rng.uniform(np.log(cfg.min_exposure), 0.0))))
    noise = draw_noise(rng, cfg)
    sim = simulate_stack(
        sharp,
        depth,
        n,
        psf=str(rng.choice(cfg.psfs)),
        max_blur=float(rng.uniform(*cfg.max_blur)),
        breathing=float(rng.uniform(-cfg.residual_breathing, cfg.residual_breathing)),
        shake=float(rng.uniform(0, cfg.residual_shake)),
        noise=noise,
        reference=int(rng.integers(0, n)),
        layers=int(rng.integers(6, 17)),
        seed=rng,
    )
    frames = sim.frames if sim.frames.ndim == 4 else sim.frames[..., None]
    sharp = np.atleast_3d(sim.sharp)
    # (no draw when a fraction is 0, so such a configuration keeps its random stream)
    if frames.shape[-1] == 3 and cfg.gray_fraction and rng.random() < cfg.gray_fraction:
        from ..fusion.core import selection_image  # the luminance fusion measures focus on

        frames = np.repeat(selection_image(frames)[..., None], 3, axis=-1)
        sharp = np.repeat(selection_image(sharp)[..., None], 3, axis=-1)
    if cfg.uint8_fraction and rng.random() < cfg.uint8_fraction:
        frames = np.rint(np.clip(frames, 0, 1) * 255) / 255
    return (
        np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32),
        np.ascontiguousarray(sharp.transpose(2, 0, 1), dtype=np.float32),
    )


def simulated_raw_pair(
    rng: np.random.Generator, cfg: SimConfig, n_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One simulated raw pair: ``(burst (N, 4, H/2, W/2), target (3, H, W))``.

    A noise-free sRGB bracket from :func:`simulated_pair` is unprocessed
    (:func:`~napari_focusdeep.training.unprocess.unprocess_burst`: inverse sRGB
    curve, inverse colour matrix and white balance of a random camera, RGGB
    mosaic packed into 4 planes) and gets shot + read noise in linear raw, a
    Brooks et al. level per burst, drawn independently per frame; a
    ``cfg.noise_free_fraction`` of bursts stays clean, as for RGB. The target is
    the sharp image in linear camera RGB (no white balance), which is what a raw
    network outputs and :func:`~napari_focusdeep.raw_fusion.fuse_raw` turns into
    sRGB with the file's white balance and colour matrix. ``cfg.crop`` must be even.
    """
    from .unprocess import random_camera, unprocess_burst

    if cfg.crop % 2 or cfg.channels != 3:
        raise ValueError(f"raw pairs need an even crop and 3 channels, got crop {cfg.crop}, channels {cfg.channels}")
    # shares the photo cache; a raw sensor is neither gray nor 8-bit
    clean = dataclasses.replace(cfg, noise=False, gray_fraction=0.0, uint8_fraction=0.0)
    frames, sharp = simulated_pair(rng, clean, n_frames)  # noise goes in after unprocessing, in linear raw
    camera = random_camera(rng)  # drawn before the noise: a clean and a noisy run share the burst
    noise = None
    if cfg.noise and rng.random() >= cfg.noise_free_fraction:
        noise = sample_noise(rng)
    raw = unprocess_burst(frames.transpose(0, 2, 3, 1), sharp.transpose(1, 2, 0), camera=camera, noise=noise, seed=rng)
    return (
        np.ascontiguousarray(raw.frames.transpose(0, 3, 1, 2), dtype=np.float32),
        np.ascontiguousarray(raw.target.transpose(2, 0, 1), dtype=np.float32),
    )


def simulated_batches(
    batch_size: int, cfg: SimConfig, *, seed: int = 0, fixed_frames: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches ``(B, N, C, H, W)``, ``(B, C, H, W)``; N is shared within a batch."""
    rng = np.random.default_rng(seed)
    while True:
        n = fixed_frames or int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
        pairs = [simulated_pair(rng, cfg, n) for _ in range(batch_size)]
        yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def validation_set(
    count: int, cfg: SimConfig, *, seed: int = 10_000, fixed_frames: int | None = None, raw: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Held-out pairs from seeds the training stream never uses (it uses ``seed`` < 10 000);
    ``raw=True``: :func:`simulated_raw_pair` pairs."""
    rng = np.random.default_rng(seed)
    pair = simulated_raw_pair if raw else simulated_pair
    return [pair(rng, cfg, fixed_frames) for _ in range(count)]


class StackCrops:
    """Crops from a lab's own registered stacks and their (pseudo) ground truths.

    Batch ``k`` depends only on ``(seed, k)`` (see :meth:`batch`), so a run that
    trains on these crops resumes exactly like one on simulated data.

    Parameters
    ----------
    stacks : sequence of ndarray
        Registered stacks ``(Z, H, W, C)`` or ``(Z, H, W)``, any dtype. Kept in
        their own dtype (a 16-bit stack takes half the memory of float32) and
        scaled to [0, 1] crop by crop.
    targets : sequence of ndarray
        The ground truth of each stack, ``(H, W[, C])``, in the reference frame's
        geometry: e.g. from :func:`make_pseudo_gt` (our ``pyramid`` fuse of a
        low-noise stack) or from Helicon/Zerene.
    crop : int
        Crop size (the paper uses 128).
    noise : bool, str or NoiseLevel
        Noise injected on the fly on top of the frames' own: ``True`` draws a
        Brooks et al. level per crop (and leaves 15 % of crops clean, as the
        simulated pre-training does), ``"low"``/``"medium"``/``"high"`` or a
        :class:`~napari_focusdeep.training.simulate.NoiseLevel` fixes it, ``False``
        injects none.
    channels : int or None
        Channels the network takes (3 for the shipped RGB weights): a gray stack
        is replicated to ``channels``, RGBA loses its alpha, and any other
        channel count is split into gray stacks, each replicated, as the deep
        fusion methods run them. ``None`` keeps the data's channels.
    frames : int or None
        Resample every burst to this many frames (fixed-length ``focusdeep`` and
        ``unet`` models; evenly spaced, first and last frame kept).
    augment : bool
        Random flips and transposes (the burst and its target alike).
    names : sequence of str, optional
        Stack names for messages.
    regions : sequence of (y0, y1, x0, x1), optional
        Where each stack's crops may come from (default: everywhere).
    """

    def __init__(
        self,
        stacks: Sequence[np.ndarray],
        targets: Sequence[np.ndarray],
        *,
        crop: int = 128,
        noise: object = True,
        channels: int | None = 3,
        frames: int | None = None,
        augment: bool = True,
        names: Sequence[str] | None = None,
        regions: Sequence[tuple[int, int, int, int]] | None = None,
    ) -> None:
        if len(stacks) != len(targets) or not len(stacks):
            raise ValueError("give one ground truth per stack, and at least one stack")
        names = list(names) if names is not None else [f"stack {i}" for i in range(len(stacks))]
        if len(names) != len(stacks) or (regions is not None and len(regions) != len(stacks)):
            raise ValueError("give one name and one region per stack")
        self.crop = int(crop)
        self.noise = noise
        self.frames = None if frames is None else int(frames)
        self.augment = bool(augment)
        self.channels = channels
        self.stacks: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.names: list[str] = []
        self.regions: list[tuple[int, int, int, int]] = []
        for i, (s, t, name) in enumerate(zip(stacks, targets, names)):
            s, t = np.asarray(s), np.asarray(t)
            s = s if s.ndim == 4 else s[..., None]
            t = t if t.ndim == 3 else t[..., None]
            if s.ndim != 4 or t.ndim != 3:
                raise ValueError(f"{name}: expected a stack (Z, H, W[, C]) and an image (H, W[, C])")
            if s.shape[1:3] != t.shape[:2]:
                raise ValueError(
                    f"{name}: frames of {s.shape[2]}x{s.shape[1]} do not match the "
                    f"{t.shape[1]}x{t.shape[0]} ground truth"
                )
            if t.shape[2] == 4 and s.shape[3] == 3:
                t = t[..., :3]  # an RGBA ground truth of an RGB stack: alpha carries no signal
            if s.shape[3] != t.shape[2]:
                raise ValueError(f"{name}: the stack has {s.shape[3]} channels, its ground truth {t.shape[2]}")
            h, w = t.shape[:2]
            region = tuple(int(v) for v in regions[i]) if regions is not None else (0, h, 0, w)
            y0, y1, x0, x1 = region
            if min(y1 - y0, x1 - x0) < self.crop:
                raise ValueError(
                    f"{name}: {x1 - x0}x{y1 - y0} pixels to crop from is less than the {self.crop}-pixel crop; "
                    "use a smaller crop"
                )
            for sc, tc in _split_channels(s, t, channels):
                self.stacks.append(sc)
                self.targets.append(tc)
                self.names.append(name)
                self.regions.append(region)  # type: ignore[arg-type]
        # a batch's crops share one stack (so they share the burst length); larger
        # regions hold more distinct crops and are drawn more often
        area = np.array([(r[1] - r[0] - self.crop + 1) * (r[3] - r[2] - self.crop + 1) for r in self.regions], float)
        self._weights = area / area.sum()

    def __len__(self) -> int:
        return len(self.stacks)

    def _sample(
        self, k: int, y: int, x: int, rng: np.random.Generator | None, noise: object, flips: tuple[bool, bool, bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        from ..fusion.core import to_float

        c = self.crop
        s, t = self.stacks[k], self.targets[k]
        if self.frames is not None:
            s = s[_resample(s.shape[0], self.frames)]
        b = to_float(s[:, y : y + c, x : x + c])
        g = to_float(t[y : y + c, x : x + c])
        level = _noise_level_for(noise, rng) if rng is not None else None
        if level is not None:
            b = add_noise(b, level, rng)
        if flips[0]:
            b, g = b[:, ::-1], g[::-1]
        if flips[1]:
            b, g = b[:, :, ::-1], g[:, ::-1]
        if flips[2]:
            b, g = b.transpose(0, 2, 1, 3), g.transpose(1, 0, 2)
        return (
            np.ascontiguousarray(b.transpose(0, 3, 1, 2), dtype=np.float32),
            np.ascontiguousarray(g.transpose(2, 0, 1), dtype=np.float32),
        )

    def batch(self, k: int, batch_size: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``k``: ``(B, N, C, H, W)`` bursts and ``(B, C, H, W)`` targets, from ``(seed, k)`` only."""
        rng = np.random.default_rng([int(seed), int(k), 1])
        i = int(rng.choice(len(self.stacks), p=self._weights))
        y0, y1, x0, x1 = self.regions[i]
        bursts, gts = [], []
        for _ in range(int(batch_size)):
            y = int(rng.integers(y0, y1 - self.crop + 1))
            x = int(rng.integers(x0, x1 - self.crop + 1))
            flips = tuple(bool(f) for f in rng.integers(0, 2, 3)) if self.augment else (False, False, False)
            b, g = self._sample(i, y, x, rng, self.noise, flips)  # type: ignore[arg-type]
            bursts.append(b)
            gts.append(g)
        return np.stack(bursts), np.stack(gts)

    def batches(self, batch_size: int, *, seed: int = 0, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless :meth:`batch` es from batch ``start`` on."""
        k = int(start)
        while True:
            yield self.batch(k, batch_size, seed=seed)
            k += 1

    def validation(self, count: int = 16, *, seed: int = 10_000) -> list[tuple[np.ndarray, np.ndarray]]:
        """Fixed validation pairs: crops on an even grid over every region, noise from ``seed``.

        Noise is drawn as for training (so the score covers denoising too) but from
        a fixed generator, so every validation sees the same pairs.
        """
        c = self.crop
        spots: list[tuple[int, int, int]] = []
        for k, (y0, y1, x0, x1) in enumerate(self.regions):
            ny, nx = -(-(y1 - y0) // c), -(-(x1 - x0) // c)  # ceil: the grid covers the region
            ys = np.linspace(y0, y1 - c, ny).astype(int)
            xs = np.linspace(x0, x1 - c, nx).astype(int)
            spots += [(k, int(y), int(x)) for y in ys for x in xs]
        if len(spots) > count:  # spread the pairs over all stacks and positions
            spots = [spots[i] for i in np.linspace(0, len(spots) - 1, count).round().astype(int)]
        out = []
        for j, (k, y, x) in enumerate(spots):
            rng = np.random.default_rng([int(seed), j])
            out.append(self._sample(k, y, x, rng, self.noise, (False, False, False)))
        return out

    def split(
        self, val_fraction: float = 0.2, *, count: int = 16, seed: int = 10_000
    ) -> tuple["StackCrops", list[tuple[np.ndarray, np.ndarray]], str]:
        """Hold data out for validation: whole stacks when there are several, else a strip.

        Returns
        -------
        train : StackCrops
            The crops to train on.
        val : list
            Validation pairs (see :meth:`validation`) from the held-out part.
        how : str
            One line saying what was held out (for the log).
        """
        keep = dict(crop=self.crop, noise=self.noise, channels=None, frames=self.frames, augment=self.augment)
        groups = list(dict.fromkeys(self.names))  # channels split from one stack stay together
        if len(groups) >= 2:
            n_val = min(len(groups) - 1, max(1, int(round(val_fraction * len(groups)))))
            held = set(groups[-n_val:])
            tr = [i for i, n in enumerate(self.names) if n not in held]
            va = [i for i, n in enumerate(self.names) if n in held]
            how = f"validation on {n_val} held-out stack{'s' if n_val > 1 else ''} ({', '.join(sorted(held))})"
        else:
            tr = va = list(range(len(self.stacks)))
            how = ""
        pick = lambda idx, regions: StackCrops(  # noqa: E731
            [self.stacks[i] for i in idx], [self.targets[i] for i in idx],
            names=[self.names[i] for i in idx], regions=regions, **keep,
        )
        if how:
            return pick(tr, [self.regions[i] for i in tr]), pick(va, [self.regions[i] for i in va]).validation(count, seed=seed), how
        # one stack: the right-hand (or bottom) strip validates, the rest trains
        c = self.crop
        tr_regions, va_regions = [], []
        for y0, y1, x0, x1 in self.regions:
            wv = max(c, int(round(val_fraction * (x1 - x0))))
            hv = max(c, int(round(val_fraction * (y1 - y0))))
            if x1 - x0 - wv >= c:
                tr_regions.append((y0, y1, x0, x1 - wv))
                va_regions.append((y0, y1, x1 - wv, x1))
            elif y1 - y0 - hv >= c:
                tr_regions.append((y0, y1 - hv, x0, x1))
                va_regions.append((y1 - hv, y1, x0, x1))
            else:
                tr_regions, va_regions = list(self.regions), list(self.regions)
                break
        if tr_regions == va_regions:
            how = "validation on crops of the training stack itself (too small to hold a strip out): optimistic"
        else:
            how = "validation on a held-out strip of the stack (right or bottom edge)"
        return pick(tr, tr_regions), pick(va, va_regions).validation(count, seed=seed), how


def _split_channels(s: np.ndarray, t: np.ndarray, channels: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    c = s.shape[3]
    if channels is None or c == channels:
        return [(s, t)]
    if c == 1:
        return [(np.repeat(s, channels, axis=3), np.repeat(t, channels, axis=2))]
    if c == 4 and channels == 3:
        return [(s[..., :3], t[..., :3])]
    # any other count: each channel is its own gray stack, as the deep fusion methods run them
    return [(np.repeat(s[..., i : i + 1], channels, axis=3), np.repeat(t[..., i : i + 1], channels, axis=2)) for i in range(c)]


def _resample(n_in: int, n: int) -> np.ndarray:
    # the same indices as models.base.resample_frames, without importing torch here
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    return np.rint(np.linspace(0, n_in - 1, n)).astype(np.int64)


def _noise_level_for(noise: object, rng: np.random.Generator) -> NoiseLevel | None:
    if noise is True:
        return None if rng.random() < SimConfig.noise_free_fraction else sample_noise(rng)
    if noise is None or noise is False:
        return None
    if isinstance(noise, NoiseLevel):
        return noise
    if isinstance(noise, str) and noise in NOISE_PRESETS:
        return NoiseLevel(*NOISE_PRESETS[noise])
    raise ValueError(f"noise must be True, False, a NoiseLevel or one of {', '.join(NOISE_PRESETS)}; got {noise!r}")


def psnr(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    """PSNR in dB of ``a`` against ``b`` (data in [0, 1]), ignoring ``border`` pixels."""
    if border:
        a = a[..., border:-border, border:-border]
        b = b[..., border:-border, border:-border]
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
