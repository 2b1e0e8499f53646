"""Turn sRGB images into camera raw and back, after Brooks et al., "Unprocessing
Images for Learned Raw Denoising" (CVPR 2019).

``unprocess`` inverts a simple camera pipeline, step by step:

1. sRGB gamma -> linear light (the exact sRGB curve; Brooks used a 2.2 power);
2. linear sRGB -> camera RGB with the inverse of a colour correction matrix (a random
   convex combination of four real cameras' XYZ->camera matrices, rows normalised so
   that white stays white, as in Brooks et al.);
3. white balance undone: divided by random red/blue gains and an exposure gain, with
   Brooks's highlight-preserving inverse so that saturated pixels stay saturated;
4. mosaicked through an RGGB colour filter array, packed into four half-resolution
   planes (``R, G1, G2, B``, see :mod:`napari_focusdeep.io.bayer`);
5. shot and read noise added in linear light, variance ``shot * x + read``, the same
   :class:`~napari_focusdeep.training.simulate.NoiseLevel` semantics (and sampler,
   :func:`~napari_focusdeep.training.simulate.sample_noise`) as the RGB simulator,
   but without its gamma: raw data *is* linear.

``process`` is the matching forward pipeline for outputs: white balance, colour
matrix, sRGB gamma. Brooks's inverse tone curve is left out: the RGB simulator
renders linear-looking synthetic scenes, and the issue asks for gamma, matrix and
white balance only.

The exposure gain is folded into :attr:`CameraParams.wb`, so that
``process(unprocess(x)) == x`` (up to clipping and the highlight roll-off); real
files' white balance (``camera_wb`` in a raw stack's metadata) is normalised to
green = 1 instead, as LibRaw applies it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = [
    "XYZ_TO_CAM",
    "SRGB_TO_XYZ",
    "CameraParams",
    "RawBurst",
    "random_camera",
    "srgb_to_linear",
    "linear_to_srgb",
    "unprocess",
    "process",
    "add_raw_noise",
    "unprocess_burst",
]

#: XYZ -> camera matrices of four cameras (Brooks et al.'s set).
XYZ_TO_CAM = np.array(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.613, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.838, -0.263, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.097, 0.1581, 0.5181]],
    ]
)

#: Linear sRGB (D65) -> CIE XYZ.
SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)

_INFLECTION = 0.9  # Brooks: gains roll off to 1 above this gray level


@dataclass(frozen=True)
class CameraParams:
    """A camera's colour pipeline.

    Attributes
    ----------
    cam_to_rgb : numpy.ndarray
        ``(3, 3)``: white-balanced camera RGB -> linear sRGB (LibRaw's ``rgb_cam``).
    wb : numpy.ndarray
        ``(3,)`` gains applied to camera R, G, B before ``cam_to_rgb``.
    """

    cam_to_rgb: np.ndarray
    wb: np.ndarray = field(default_factory=lambda: np.ones(3))

    def __post_init__(self) -> None:
        ccm = np.asarray(self.cam_to_rgb, np.float64)
        wb = np.asarray(self.wb, np.float64).ravel()
        if ccm.shape != (3, 3):
            raise ValueError(f"cam_to_rgb must be 3x3, got {ccm.shape}")
        if wb.shape != (3,) or np.any(~np.isfinite(wb)) or np.any(wb <= 0):
            raise ValueError(f"wb must be three positive gains, got {wb.tolist()}")
        object.__setattr__(self, "cam_to_rgb", ccm)
        object.__setattr__(self, "wb", wb)

    @property
    def rgb_to_cam(self) -> np.ndarray:
        """Linear sRGB -> white-balanced camera RGB."""
        return np.linalg.inv(self.cam_to_rgb)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> CameraParams:
        """From a raw :class:`~napari_focusdeep.stack.Stack`'s metadata
        (``camera_wb`` and ``cam_to_srgb``, see :func:`napari_focusdeep.io.raw.read_raw`)."""
        try:
            return cls(np.asarray(metadata["cam_to_srgb"]), np.asarray(metadata["camera_wb"]))
        except KeyError as exc:
            raise ValueError(f"the metadata has no {exc.args[0]!r}: not a camera raw stack") from None

    def to_dict(self) -> dict[str, Any]:
        return {"cam_to_rgb": self.cam_to_rgb.tolist(), "wb": self.wb.tolist()}


def random_camera(rng: np.random.Generator | int | None = None) -> CameraParams:
    """Brooks et al.'s random camera: a random convex combination of
    :data:`XYZ_TO_CAM` (rows of sRGB->camera normalised to sum 1), exposure gain
    ``1 / N(0.8, 0.1)``, red gain ``U(1.9, 2.4)``, blue gain ``U(1.5, 1.9)``."""
    rng = np.random.default_rng(rng)
    weights = rng.uniform(1e-3, 1.0, len(XYZ_TO_CAM))
    xyz_to_cam = np.tensordot(weights / weights.sum(), XYZ_TO_CAM, axes=1)
    rgb_to_cam = xyz_to_cam @ SRGB_TO_XYZ
    rgb_to_cam /= rgb_to_cam.sum(axis=-1, keepdims=True)
    rgb_gain = 1.0 / max(rng.normal(0.8, 0.1), 0.4)  # the floor guards a 4-sigma draw
    red, blue = rng.uniform(1.9, 2.4), rng.uniform(1.5, 1.9)
    return CameraParams(np.linalg.inv(rgb_to_cam), rgb_gain * np.array([red, 1.0, blue]))


# -- sRGB curve ------------------------------------------------------------------------
def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding, float32; input clipped to [0, 1]."""
    x = np.clip(np.asarray(x, np.float32), 0, 1)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 encoding, float32; input clipped to [0, 1]."""
    x = np.clip(np.asarray(x, np.float32), 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


# -- the two directions ------------------------------------------------------------------
def _check_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, np.float32)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
    return img


def unprocess(
    image: np.ndarray,
    camera: CameraParams,
    *,
    mosaic: bool = True,
    safe_highlights: bool = True,
) -> np.ndarray:
    """sRGB ``(H, W, 3)`` in [0, 1] -> linear camera raw in [0, 1].

    Parameters
    ----------
    image : numpy.ndarray
        sRGB-encoded, float in [0, 1].
    camera : CameraParams
        Whose colour matrix and white balance to invert (:func:`random_camera`).
    mosaic : bool
        Return packed RGGB planes ``(H/2, W/2, 4)`` (default; the size must be even),
        or the un-mosaicked camera RGB ``(H, W, 3)`` (the raw model's target).
    safe_highlights : bool
        Brooks's highlight-preserving inverse white balance: near white (gray > 0.9)
        the gains roll off to 1, so clipped highlights stay clipped instead of
        turning into coloured, unclipped raw values.

    Returns
    -------
    numpy.ndarray
        float32, clipped to [0, 1].
    """
    from ..io.bayer import mosaic as to_mosaic

    lin = srgb_to_linear(_check_rgb(image))
    cam = lin @ camera.rgb_to_cam.T.astype(np.float32)
    gains = (1.0 / camera.wb).astype(np.float32)
    if safe_highlights:
        gray = cam.mean(axis=-1, keepdims=True)
        mask = (np.maximum(gray - _INFLECTION, 0.0) / (1.0 - _INFLECTION)) ** 2
        gains = np.maximum(mask + (1.0 - mask) * gains, gains)
    cam = np.clip(cam * gains, 0.0, 1.0).astype(np.float32)
    return to_mosaic(cam) if mosaic else cam


def process(image: np.ndarray, camera: CameraParams, *, gamma: str = "srgb") -> np.ndarray:
    """Linear camera RGB ``(H, W, 3)`` -> display RGB: white balance, colour matrix,
    then the sRGB curve (``gamma="srgb"``) or none (``gamma="linear"``: linear sRGB).
    Values are clipped to [0, 1] after white balance and after the matrix, as a
    camera does; float32 out."""
    if gamma not in ("srgb", "linear"):
        raise ValueError(f"gamma must be 'srgb' or 'linear', got {gamma!r}")
    img = _check_rgb(image)
    x = np.clip(img * camera.wb.astype(np.float32), 0.0, 1.0)
    x = np.clip(x @ camera.cam_to_rgb.T.astype(np.float32), 0.0, 1.0)
    return linear_to_srgb(x) if gamma == "srgb" else x.astype(np.float32)


def add_raw_noise(raw: np.ndarray, level: Any, rng: np.random.Generator) -> np.ndarray:
    """Shot + read noise on linear raw data (any shape), variance ``shot * x + read``;
    ``level`` is a :class:`~napari_focusdeep.training.simulate.NoiseLevel`. Clipped to
    [0, 1] as a sensor's black and white levels do."""
    from .simulate import add_noise

    return add_noise(np.asarray(raw, np.float32), level, rng, gamma=1.0)


# -- bursts -------------------------------------------------------------------------------
@dataclass
class RawBurst:
    """A simulated raw focus bracket.

    Attributes
    ----------
    frames : numpy.ndarray
        ``(N, H/2, W/2, 4)`` float32 packed RGGB planes, noisy (the network's input).
    target : numpy.ndarray
        ``(H, W, 3)`` float32 linear camera RGB of the all-in-focus ground truth (what
        a raw network outputs); ``process(target, camera)`` is the sRGB image.
    camera : CameraParams
    noise : NoiseLevel or None
    """

    frames: np.ndarray
    target: np.ndarray
    camera: CameraParams
    noise: Any = None


def unprocess_burst(
    frames: np.ndarray,
    sharp: np.ndarray,
    *,
    camera: CameraParams | None = None,
    noise: object = "random",
    seed: int | np.random.Generator = 0,
) -> RawBurst:
    """Unprocess an sRGB focus bracket (e.g. ``simulate_stack(..., noise=None).frames``
    and ``.sharp``) into a noisy raw burst and its linear ground truth.

    Every frame shares one camera (colour matrix, white balance), as a real burst
    does; the noise is drawn independently per frame, in linear raw.

    Parameters
    ----------
    frames : numpy.ndarray
        ``(N, H, W, 3)`` sRGB frames, float in [0, 1] or uint8/uint16 (even H, W).
    sharp : numpy.ndarray
        ``(H, W, 3)`` sRGB ground truth in the reference geometry.
    camera : CameraParams, optional
        Default: :func:`random_camera`.
    noise : None, "low", "medium", "high", "random", float, (shot, read) or NoiseLevel
        As for :func:`~napari_focusdeep.training.simulate.simulate_stack`.
    seed : int or numpy.random.Generator
    """
    from ..fusion.core import to_float
    from .simulate import _noise_level

    rng = np.random.default_rng(seed)
    cam = camera if camera is not None else random_camera(rng)
    level = _noise_level(noise, rng)
    stack = np.asarray(frames)
    if stack.ndim != 4 or stack.shape[-1] != 3:
        raise ValueError(f"expected RGB frames (N, H, W, 3), got shape {stack.shape}")
    packed = []
    for frame in stack:
        raw = unprocess(to_float(frame), cam)
        packed.append(add_raw_noise(raw, level, rng) if level is not None else raw)
    target = unprocess(to_float(np.asarray(sharp)), cam, mosaic=False)
    return RawBurst(np.stack(packed).astype(np.float32), target, cam, level)
