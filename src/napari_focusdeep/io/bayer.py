"""Bayer mosaics: CFA normalisation, packing into four half-resolution planes, and
warping packed planes with full-resolution transforms without losing Bayer phase.

Conventions
-----------
A *packed* frame is ``(H/2, W/2, 4)`` with the planes in :data:`PLANES` order,
``R, G1, G2, B`` (``G1`` shares rows with red, ``G2`` with blue), i.e. the 2x2 cell
``R G1 / G2 B`` of an RGGB mosaic. Plane ``k`` holds the mosaic samples at
``(2v + dy_k, 2u + dx_k)`` where ``(dy_k, dx_k) = PLANE_OFFSETS[k]``.

A sensor whose pattern is not RGGB (BGGR, GRBG, GBRG, or any of them after the
image is rotated for display) is normalised by cropping the first row and/or
column so that the mosaic starts on a red pixel (Bayer pattern unification by
cropping, Liu et al. 2019); the crop is at most one pixel on each side and is
also applied to the demosaiced image so the two stay pixel-aligned.

Transforms follow ``docs/CONTRACTS.md``: a 3x3 ``M`` maps reference full-resolution
pixel coordinates ``(x, y, 1)`` to frame coordinates. Plane ``k``'s pixel ``(u, v)``
sits at full-resolution ``S_k (u, v, 1)`` with ``S_k = [[2, 0, dx_k], [0, 2, dy_k],
[0, 0, 1]]``, so the same motion on plane ``k`` is ``S_k^-1 M S_k``. For a pure
translation that is the translation halved on every plane (the paper's procedure);
for scale or rotation the planes' translations differ by ``(L - I) d_k / 2``, which
keeps every colour sample where it belongs.

Only numpy is imported at module level; OpenCV comes in with the warping functions.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "PLANES",
    "PLANE_OFFSETS",
    "BLOCK_CENTRE",
    "pattern_string",
    "rggb_origin",
    "apply_flip",
    "pack",
    "unpack",
    "mosaic",
    "plane_matrices",
    "half_to_full",
    "full_to_half",
    "bayer_luminance",
    "warp_packed",
    "apply_transforms_packed",
    "estimate_transforms_packed",
    "iter_estimate_transforms_packed",
]

#: Plane order of a packed frame.
PLANES = ("R", "G1", "G2", "B")
#: ``(dy, dx)`` of each plane's samples inside the 2x2 RGGB cell.
PLANE_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))
#: Full-resolution position of a packed pixel's 2x2 block centre: ``x = 2 u + 0.5``.
BLOCK_CENTRE = 0.5


# -- CFA ---------------------------------------------------------------------------------
def pattern_string(pattern: Any, color_desc: bytes | str) -> str:
    """The 2x2 CFA as letters in row order, e.g. ``"RGGB"``, from LibRaw's
    ``raw_pattern`` (colour indices) and ``color_desc`` (e.g. ``b"RGBG"``)."""
    desc = color_desc.decode("ascii", "replace") if isinstance(color_desc, bytes) else str(color_desc)
    pat = np.asarray(pattern)
    if pat.shape != (2, 2):
        return "x".join(map(str, pat.shape))  # e.g. "6x6" for X-Trans
    try:
        return "".join(desc[int(i)] for i in pat.ravel())
    except IndexError:
        return "?" * 4


def rggb_origin(pattern: Any, color_desc: bytes | str) -> tuple[int, int]:
    """``(oy, ox)``: where the red pixel of the 2x2 CFA is, i.e. how many rows and
    columns to crop so that the mosaic reads R G / G B.

    Raises
    ------
    ValueError
        For sensors that are not 2x2 Bayer (Fujifilm X-Trans, Foveon, CYGM, ...).
    """
    letters = pattern_string(pattern, color_desc)
    if len(letters) != 4 or sorted(letters) != ["B", "G", "G", "R"]:
        raise ValueError(
            f"the sensor's colour filter array is {letters!r}, not a 2x2 Bayer (RGGB, BGGR, "
            "GRBG, GBRG); only the demosaiced RGB stack is available for it"
        )
    r = letters.index("R")
    oy, ox = divmod(r, 2)
    if letters[(1 - oy) * 2 + (1 - ox)] != "B":  # R and B must be diagonal
        raise ValueError(f"the colour filter array {letters!r} is not a Bayer pattern")
    return oy, ox


def apply_flip(array: np.ndarray, flip: int) -> np.ndarray:
    """Orient a sensor-oriented array for display the way LibRaw does (``sizes.flip``:
    bit 2 flips rows, bit 1 flips columns, bit 4 then transposes; 3 is 180 degrees,
    5 and 6 are the two 90-degree rotations). Works on ``(H, W[, ...])``."""
    flip = int(flip)
    if flip & 2:
        array = array[::-1]
    if flip & 1:
        array = array[:, ::-1]
    if flip & 4:
        array = array.swapaxes(0, 1)
    return array


def pack(mosaic_rggb: np.ndarray) -> np.ndarray:
    """``(H, W)`` RGGB mosaic (red at the top-left, even size) -> ``(H/2, W/2, 4)``."""
    m = np.asarray(mosaic_rggb)
    if m.ndim != 2:
        raise ValueError(f"expected a (H, W) mosaic, got shape {m.shape}")
    h, w = m.shape
    if h % 2 or w % 2:
        raise ValueError(f"a mosaic to pack needs an even size, got {w}x{h}")
    return np.stack([m[dy::2, dx::2] for dy, dx in PLANE_OFFSETS], axis=-1)


def unpack(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack`: ``(h, w, 4)`` -> ``(2h, 2w)`` RGGB mosaic."""
    p = np.asarray(packed)
    if p.ndim != 3 or p.shape[-1] != 4:
        raise ValueError(f"expected packed planes (h, w, 4), got shape {p.shape}")
    h, w = p.shape[:2]
    out = np.empty((2 * h, 2 * w), p.dtype)
    for k, (dy, dx) in enumerate(PLANE_OFFSETS):
        out[dy::2, dx::2] = p[..., k]
    return out


def mosaic(rgb: np.ndarray, *, packed: bool = True) -> np.ndarray:
    """Sample an RGB image ``(H, W, 3)`` (even size) through an RGGB filter array:
    ``(H/2, W/2, 4)`` packed planes, or the ``(H, W)`` mosaic with ``packed=False``."""
    img = np.asarray(rgb)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
    h, w = img.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"mosaicking needs an even image size, got {w}x{h}")
    channel = (0, 1, 1, 2)
    planes = np.stack([img[dy::2, dx::2, c] for (dy, dx), c in zip(PLANE_OFFSETS, channel)], axis=-1)
    return planes if packed else unpack(planes)


# -- geometry ----------------------------------------------------------------------------
def _plane_scale(dy: float, dx: float) -> np.ndarray:
    return np.array([[2.0, 0.0, dx], [0.0, 2.0, dy], [0.0, 0.0, 1.0]])


def plane_matrices(matrix: Any) -> np.ndarray:
    """The four per-plane matrices ``S_k^-1 M S_k`` (``(4, 3, 3)``) of one
    full-resolution transform ``M`` (see the module docstring)."""
    m = np.asarray(matrix, np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    if m.shape != (3, 3):
        raise ValueError(f"matrix must be 3x3 or 2x3, got {m.shape}")
    out = np.empty((4, 3, 3))
    for k, (dy, dx) in enumerate(PLANE_OFFSETS):
        s = _plane_scale(dy, dx)
        p = np.linalg.inv(s) @ m @ s
        out[k] = p / p[2, 2]
    return out


_CENTRE = _plane_scale(BLOCK_CENTRE, BLOCK_CENTRE)
_CENTRE_INV = np.linalg.inv(_CENTRE)


def half_to_full(matrices: Any) -> np.ndarray:
    """Matrices estimated on half-size images whose pixel ``(u, v)`` is a 2x2 block
    centred at full-resolution ``(2u + 0.5, 2v + 0.5)`` -> full-resolution matrices."""
    m = np.asarray(matrices, np.float64)
    out = _CENTRE @ m @ _CENTRE_INV
    return out / out[..., 2:3, 2:3]


def full_to_half(matrices: Any) -> np.ndarray:
    """Inverse of :func:`half_to_full`."""
    m = np.asarray(matrices, np.float64)
    out = _CENTRE_INV @ m @ _CENTRE
    return out / out[..., 2:3, 2:3]


def bayer_luminance(packed: np.ndarray) -> np.ndarray:
    """A quick half-resolution gray image of packed planes, float32 ``(h, w)``:
    Rec. 601 weights on R, mean G, B of each 2x2 block. Its pixel ``(u, v)`` is
    centred at full-resolution ``(2u + 0.5, 2v + 0.5)`` (see :func:`half_to_full`)."""
    p = np.asarray(packed, np.float32)
    return 0.299 * p[..., 0] + 0.2935 * (p[..., 1] + p[..., 2]) + 0.114 * p[..., 3]


def warp_packed(
    packed: np.ndarray, matrix: Any, *, interpolation: str = "linear", border: str = "replicate"
) -> np.ndarray:
    """Warp one packed frame ``(h, w, 4)`` into the reference geometry, given the
    full-resolution transform ``matrix`` (reference -> frame), plane by plane with
    :func:`plane_matrices`. Same shape and dtype."""
    from ..registration import warp_frame

    p = np.asarray(packed)
    if p.ndim != 3 or p.shape[-1] != 4:
        raise ValueError(f"expected packed planes (h, w, 4), got shape {p.shape}")
    mats = plane_matrices(matrix)
    out = np.empty_like(p)
    for k in range(4):
        out[..., k] = warp_frame(p[..., k], mats[k], interpolation=interpolation, border=border)
    return out


def apply_transforms_packed(
    data: Any, transforms: Any, *, interpolation: str = "linear", border: str = "replicate"
) -> Any:
    """Lazily warp a packed stack ``(Z, h, w, 4)`` with full-resolution transforms.

    Parameters
    ----------
    data : array-like
        Packed planes, dask or numpy, one chunk per frame after rechunking.
    transforms : Transforms
        Estimated on the full-resolution (demosaiced) frames of size ``(2h, 2w)``,
        or by :func:`estimate_transforms_packed`.

    Returns
    -------
    dask.array.Array
        Same shape and dtype, one chunk per frame.
    """
    import dask.array as da

    from ..registration import Transforms

    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=-1)
    if arr.ndim != 4 or arr.shape[-1] != 4:
        raise ValueError(f"expected a packed stack (Z, h, w, 4), got shape {tuple(arr.shape)}")
    if not isinstance(transforms, Transforms):
        raise TypeError(f"transforms must be a Transforms, got {type(transforms).__name__}")
    n, h, w = (int(s) for s in arr.shape[:3])
    fh, fw = transforms.frame_shape
    if (fh, fw) != (0, 0) and (fh // 2, fw // 2) != (h, w):
        raise ValueError(
            f"the transforms were estimated on {fw}x{fh} frames; packed planes of {w}x{h} "
            f"need {2 * w}x{2 * h} frames"
        )
    if n != transforms.n_frames:
        raise ValueError(f"the transforms are for {transforms.n_frames} frames but the stack has {n}")
    arr = arr.rechunk((1, h, w, 4))
    mats = transforms.matrices.copy()

    def _block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        z = block_info[0]["array-location"][0][0]
        return warp_packed(block[0], mats[z], interpolation=interpolation, border=border)[None]

    return arr.map_blocks(_block, dtype=arr.dtype, meta=np.empty((0, 0, 0, 0), dtype=arr.dtype))


def estimate_transforms_packed(data: Any, **kwargs: Any) -> Any:
    """Register a packed stack on its quick half-size luminance (no demosaicking) and
    return full-resolution :class:`~napari_focusdeep.registration.Transforms`
    (frame shape ``(2h, 2w)``). ``kwargs`` go to
    :func:`~napari_focusdeep.registration.estimate_transforms`."""
    gen = iter_estimate_transforms_packed(data, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def iter_estimate_transforms_packed(data: Any, **kwargs: Any) -> Any:
    """Generator form of :func:`estimate_transforms_packed` yielding ``(done, total)``."""
    import dask.array as da

    from ..registration import Transforms, iter_estimate_transforms

    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=-1)
    if arr.ndim != 4 or arr.shape[-1] != 4:
        raise ValueError(f"expected a packed stack (Z, h, w, 4), got shape {tuple(arr.shape)}")
    n, h, w = (int(s) for s in arr.shape[:3])
    arr = arr.rechunk((1, h, w, 4))
    gray = arr.map_blocks(
        lambda b: bayer_luminance(b)[..., None], dtype=np.float32, chunks=arr.chunks[:3] + ((1,),)
    )
    half = yield from iter_estimate_transforms(gray, **kwargs)
    return Transforms(
        half_to_full(half.matrices),
        motion=half.motion,
        reference=half.reference,
        status=half.status,
        frame_shape=(2 * h, 2 * w),
        scores=half.scores,
    )
