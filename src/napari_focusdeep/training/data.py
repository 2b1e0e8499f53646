"""Training data: simulated focus bursts on the fly, and a lab's own stacks.

Every sample is a pair ``(burst, target)``: ``burst`` float32 ``(N, C, H, W)`` in
[0, 1] (registered frames with small residual misalignment, as after our global
registration), ``target`` float32 ``(C, H, W)``, the sharp image in the reference
frame's geometry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .simulate import add_noise, image_source, sample_noise, simulate_stack, synthetic_scene

__all__ = ["SimConfig", "simulated_pair", "simulated_batches", "StackCrops", "validation_set", "psnr"]

# scikit-image's bundled photos used as real-texture sources beside procedural scenes
PHOTO_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "immunohistochemistry", "retina", "hubble_deep_field")
HELD_OUT_SOURCES = ("camera", "brick", "grass", "gravel", "cell")


@dataclass
class SimConfig:
    """What the on-the-fly simulator draws from.

    ``frames`` is the (min, max) burst length; ``residual_breathing`` and
    ``residual_shake`` the misalignment left after global registration.
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
    photos: tuple[str, ...] = PHOTO_SOURCES
    channels: int = 3
    _photo_cache: dict = field(default_factory=dict, repr=False)


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
        h, w = img.shape[:2]
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        sharp = img[y : y + s, x : x + s]
        if rng.random() < 0.5:
            sharp = sharp[:, ::-1]
        sharp = np.ascontiguousarray(sharp[..., : cfg.channels])
        depth = random_depth((s, s), seed=rng, steps=int(rng.integers(0, 4)))
    else:
        sharp, depth = synthetic_scene((s, s), channels=cfg.channels, kind=str(rng.choice(["mixed", "fractal", "cells", "fibres", "text"])), seed=rng)
        if cfg.channels == 1:
            sharp = sharp[..., None]
    noise = None
    if cfg.noise and rng.random() >= cfg.noise_free_fraction:
        noise = sample_noise(rng)
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
    return (
        np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32),
        np.ascontiguousarray(np.atleast_3d(sim.sharp).transpose(2, 0, 1), dtype=np.float32),
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
    count: int, cfg: SimConfig, *, seed: int = 10_000, fixed_frames: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Held-out pairs from seeds the training stream never uses (it uses ``seed`` < 10 000)."""
    rng = np.random.default_rng(seed)
    return [simulated_pair(rng, cfg, fixed_frames) for _ in range(count)]


class StackCrops:
    """Crops from a lab's own registered stacks and their pseudo ground truths.

    Parameters
    ----------
    stacks : sequence of ndarray
        Registered stacks ``(Z, H, W, C)`` (or ``(Z, H, W)``), any dtype.
    targets : sequence of ndarray
        The pseudo ground truth of each stack, ``(H, W[, C])``, e.g. from our
        ``pyramid`` fuse of a low-noise stack or from Helicon/Zerene.
    crop : int
        Crop size (the paper uses 128).
    noise : bool
        Inject shot/read noise on the fly (the frames' own noise stays).
    """

    def __init__(
        self, stacks: Sequence[np.ndarray], targets: Sequence[np.ndarray], *, crop: int = 128, noise: bool = True
    ) -> None:
        from ..fusion.core import to_float

        if len(stacks) != len(targets) or not stacks:
            raise ValueError("give one pseudo ground truth per stack, and at least one stack")
        self.stacks, self.targets = [], []
        for s, t in zip(stacks, targets):
            s = to_float(np.asarray(s))
            t = to_float(np.asarray(t))
            s = s if s.ndim == 4 else s[..., None]
            t = t if t.ndim == 3 else t[..., None]
            if s.shape[1:] != t.shape:
                raise ValueError(f"a stack of frames {s.shape[1:]} does not match its ground truth {t.shape}")
            if min(t.shape[:2]) < crop:
                raise ValueError(f"frames of {t.shape[1]}x{t.shape[0]} are smaller than the {crop}-pixel crop")
            self.stacks.append(s)
            self.targets.append(t)
        self.crop = crop
        self.noise = noise

    def batches(self, batch_size: int, *, seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(seed)
        while True:
            bursts, gts = [], []
            k = int(rng.integers(0, len(self.stacks)))
            for _ in range(batch_size):
                s, t = self.stacks[k], self.targets[k]
                y = int(rng.integers(0, t.shape[0] - self.crop + 1))
                x = int(rng.integers(0, t.shape[1] - self.crop + 1))
                b = s[:, y : y + self.crop, x : x + self.crop]
                if self.noise:
                    b = add_noise(b, sample_noise(rng), rng)
                bursts.append(b.transpose(0, 3, 1, 2))
                gts.append(t[y : y + self.crop, x : x + self.crop].transpose(2, 0, 1))
            yield np.stack(bursts).astype(np.float32), np.stack(gts).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    """PSNR in dB of ``a`` against ``b`` (data in [0, 1]), ignoring ``border`` pixels."""
    if border:
        a = a[..., border:-border, border:-border]
        b = b[..., border:-border, border:-border]
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
