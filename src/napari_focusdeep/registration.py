"""Align the frames of a focus stack: ECC, each frame to the previous one, chained.

Focus breathing changes the magnification from frame to frame and a hand-held or
vibrating camera shakes, so frames must be aligned before they are fused. Adjacent
frames are focused at nearby depths and therefore look alike, while the first and
last frames of a deep stack may share almost no sharp detail; so, as in the paper,
every frame is registered to the *previous* one with OpenCV's ECC
(``cv2.findTransformECC``) and the pairwise transforms are chained to a reference
frame.

Conventions (see ``docs/CONTRACTS.md``): ``Transforms.matrices[i]`` is a 3x3 float64
matrix mapping REFERENCE-frame pixel coordinates ``(x, y, 1)`` to frame-``i`` pixel
coordinates (pixel centres at integers). Warping frame ``i`` into the reference
geometry is ``cv2.warpAffine(frame_i, M[i][:2], (W, H), flags=INTER_LINEAR |
WARP_INVERSE_MAP)``; ECC ``findTransformECC(template=prev, input=cur)`` returns
"template coords -> input coords", so chaining is ``M[i] = P_i @ M[i-1]``.

Speed: ECC runs coarse to fine on gray images downscaled to ``working_size`` pixels
(long side), then ``refine_size``; a 24 MP frame pair registers in about a second.
Memory: frames are read once each, in order; only the small gray images of the
previous and current frames are kept.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Sequence

import cv2
import dask.array as da
import numpy as np

from ._prefetch import prefetch

__all__ = [
    "INTERPOLATIONS",
    "MOTIONS",
    "STATUSES",
    "Transforms",
    "RegistrationWarning",
    "resolve_reference",
    "iter_estimate_transforms",
    "estimate_transforms",
    "apply_transforms",
    "warp_frame",
]

#: Motion models, from the most constrained to the most general.
MOTIONS = ("translation", "euclidean", "affine", "homography")

_CV_MOTION = {
    "translation": cv2.MOTION_TRANSLATION,
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
    "homography": cv2.MOTION_HOMOGRAPHY,
}

_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
#: Names :func:`warp_frame` and :func:`apply_transforms` accept for ``interpolation``.
INTERPOLATIONS: tuple[str, ...] = tuple(_INTERPOLATION)

_BORDER = {
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT101,
    "constant": cv2.BORDER_CONSTANT,
}

#: How a frame was tied to the reference, from best to worst.
STATUSES = ("reference", "ecc", "phase", "identity")
_RANK = {s: i for i, s in enumerate(STATUSES)}

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class RegistrationWarning(UserWarning):
    """A frame pair could not be registered with ECC; a fallback was used."""


# -- the result --------------------------------------------------------------------------
@dataclass
class Transforms:
    """Per-frame transforms of a stack, all relative to one reference frame.

    Attributes
    ----------
    matrices : numpy.ndarray
        ``(N, 3, 3)`` float64; ``matrices[i]`` maps reference pixel coordinates
        ``(x, y, 1)`` to frame-``i`` pixel coordinates. The reference's is identity.
    motion : str
        The model they were estimated with, one of :data:`MOTIONS`.
    reference : int
        Index of the reference frame.
    status : list of str
        Per frame, how reliably it is tied to the reference: ``"reference"``,
        ``"ecc"`` (every link of the chain between it and the reference was
        registered by ECC), ``"phase"`` (some link fell back to phase correlation,
        translation only) or ``"identity"`` (some link could not be registered at all
        and was assumed to be no motion). The worst link on the chain decides.
        Transforms made by hand default to ``"given"``.
    frame_shape : tuple of int
        ``(H, W)`` of the frames they were estimated on; applying them to frames of
        another size is refused. ``(0, 0)`` (unknown) skips that check, and then
        ``valid_region`` is empty.
    scores : list of float
        ``scores[i]`` is the ECC correlation coefficient of the pair that registered
        frame ``i`` to the frame before it (NaN for frame 0 and for pairs that were
        not registered by ECC). A diagnostic; values near 1 mean a confident match.
    """

    matrices: np.ndarray
    motion: str = "affine"
    reference: int = 0
    status: list[str] = field(default_factory=list)
    frame_shape: tuple[int, int] = (0, 0)
    scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        m = np.asarray(self.matrices, dtype=np.float64)
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3 or m.shape[1:] != (3, 3):
            raise ValueError(f"matrices must have shape (N, 3, 3), got {m.shape}")
        self.matrices = m
        n = len(m)
        if self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS}, got {self.motion!r}")
        self.reference = int(self.reference)
        if not 0 <= self.reference < n:
            raise ValueError(f"reference {self.reference} is not a frame index (0..{n - 1})")
        if not self.status:
            self.status = ["reference" if i == self.reference else "given" for i in range(n)]
        self.status = [str(s) for s in self.status]
        if len(self.status) != n:
            raise ValueError(f"{len(self.status)} status entries for {n} matrices")
        if not self.scores:
            self.scores = [math.nan] * n
        self.scores = [float(s) for s in self.scores]
        if len(self.scores) != n:
            raise ValueError(f"{len(self.scores)} scores for {n} matrices")
        self.frame_shape = (int(self.frame_shape[0]), int(self.frame_shape[1]))

    @classmethod
    def identity(
        cls, n_frames: int, frame_shape: tuple[int, int], *, reference: int = 0, motion: str = "affine"
    ) -> Transforms:
        """No motion: ``n_frames`` identity matrices."""
        return cls(
            np.repeat(np.eye(3)[None], int(n_frames), axis=0),
            motion=motion,
            reference=reference,
            frame_shape=tuple(frame_shape),
        )

    def __len__(self) -> int:
        return len(self.matrices)

    @property
    def n_frames(self) -> int:
        return len(self.matrices)

    # -- geometry ----------------------------------------------------------------------
    @property
    def valid_region(self) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the largest axis-aligned rectangle (in reference pixel
        coordinates, slice bounds ``[y0:y1, x0:x1]``) that every warped frame covers.

        Each frame's pixel-centre corners are mapped into reference coordinates; for
        each frame the rectangle is bounded by the innermost corner on each side
        (which is inside the quadrilateral for the small rotations and perspective
        changes of a focus stack, and is checked), and the rectangles are intersected.
        Pixels outside were filled by replicating the frames' edges.
        """
        h, w = self.frame_shape
        if h <= 0 or w <= 0:
            return (0, 0, 0, 0)
        corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64).T
        lo_x, hi_x, lo_y, hi_y = 0.0, w - 1.0, 0.0, h - 1.0
        for m in self.matrices:
            try:
                inv = np.linalg.inv(m)
            except np.linalg.LinAlgError:
                return (0, 0, 0, 0)
            q = inv @ corners
            if np.any(q[2] <= 0):  # the horizon of a wild homography crosses the frame
                return (0, 0, 0, 0)
            x, y = q[0] / q[2], q[1] / q[2]  # TL, TR, BR, BL
            x0, x1 = max(x[0], x[3]), min(x[1], x[2])
            y0, y1 = max(y[0], y[1]), min(y[2], y[3])
            x0, x1, y0, y1 = _shrink_into_quad(x, y, x0, x1, y0, y1)
            lo_x, hi_x = max(lo_x, x0), min(hi_x, x1)
            lo_y, hi_y = max(lo_y, y0), min(hi_y, y1)
        eps = 1e-6  # float noise must not drop a whole row or column
        y0i, x0i = int(math.ceil(lo_y - eps)), int(math.ceil(lo_x - eps))
        y1i, x1i = int(math.floor(hi_y + eps)) + 1, int(math.floor(hi_x + eps)) + 1
        y0i, x0i = min(max(y0i, 0), h), min(max(x0i, 0), w)
        y1i, x1i = min(max(y1i, y0i), h), min(max(x1i, x0i), w)
        return (y0i, y1i, x0i, x1i)

    def map_points(self, i: int, points: np.ndarray) -> np.ndarray:
        """Map ``(K, 2)`` reference pixel coordinates ``(x, y)`` into frame ``i``."""
        return _apply_h(self.matrices[i], points)

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "napari-focusdeep transforms",
            "version": 1,
            "convention": "matrices[i] maps reference pixel (x, y, 1) to frame-i pixel coordinates",
            "motion": self.motion,
            "reference": self.reference,
            "frame_shape": list(self.frame_shape),
            "status": list(self.status),
            "scores": [None if math.isnan(s) else s for s in self.scores],
            "matrices": self.matrices.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Transforms:
        if "matrices" not in d:
            raise ValueError("not a transforms document: no 'matrices'")
        return cls(
            matrices=np.asarray(d["matrices"], dtype=np.float64),
            motion=d.get("motion", "affine"),
            reference=int(d.get("reference", 0)),
            status=list(d.get("status") or []),
            frame_shape=tuple(d.get("frame_shape") or (0, 0)),
            scores=[math.nan if s is None else float(s) for s in (d.get("scores") or [])],
        )

    def to_json(self) -> str:
        """JSON text; float64 values round-trip exactly (``repr`` precision)."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, s: str) -> Transforms:
        return cls.from_dict(json.loads(s))

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON to ``path`` atomically (temporary file, then ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Transforms:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def _apply_h(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    q = np.c_[pts, np.ones(len(pts))] @ np.asarray(m, np.float64).T
    return q[:, :2] / q[:, 2:3]


def _shrink_into_quad(
    qx: np.ndarray, qy: np.ndarray, x0: float, x1: float, y0: float, y1: float
) -> tuple[float, float, float, float]:
    """Shrink the rectangle about its centre until its corners lie in the convex quad.

    The innermost-corner bounds already are inside for the near axis-aligned quads of
    a focus stack; this only guards against odd inputs (large rotations)."""
    if x1 < x0 or y1 < y0:
        return x0, x0 - 1, y0, y0 - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    area = (qx * np.roll(qy, -1) - np.roll(qx, -1) * qy).sum()
    sign = 1.0 if area >= 0 else -1.0
    for _ in range(60):
        rx = np.array([x0, x1, x1, x0])
        ry = np.array([y0, y0, y1, y1])
        inside = True
        for k in range(4):
            ax, ay, bx, by = qx[k], qy[k], qx[(k + 1) % 4], qy[(k + 1) % 4]
            cross = (bx - ax) * (ry - ay) - (by - ay) * (rx - ax)
            if np.any(sign * cross < -1e-9):
                inside = False
                break
        if inside:
            return x0, x1, y0, y1
        x0, x1 = cx + (x0 - cx) * 0.97, cx + (x1 - cx) * 0.97
        y0, y1 = cy + (y0 - cy) * 0.97, cy + (y1 - cy) * 0.97
    return cx, cx - 1, cy, cy - 1


# -- reference -------------------------------------------------------------------------
def resolve_reference(reference: str | int, n_frames: int) -> int:
    """Turn ``"first"``, ``"middle"``, ``"last"`` or an index (negative counts from the
    end) into a frame index. ``"middle"`` is ``(n_frames - 1) // 2`` (for an even
    count the earlier of the two middle frames, as the simulator's ground truth)."""
    n = int(n_frames)
    if n < 1:
        raise ValueError("the stack has no frames")
    if isinstance(reference, str):
        key = reference.strip().lower()
        if key == "first":
            return 0
        if key == "middle":
            return (n - 1) // 2
        if key == "last":
            return n - 1
        try:
            reference = int(key)
        except ValueError:
            raise ValueError(
                f"reference must be 'first', 'middle', 'last' or a frame index, got {reference!r}"
            ) from None
    idx = int(reference)
    if not -n <= idx < n:
        raise ValueError(f"reference frame {idx} does not exist; the stack has {n} frames")
    return idx % n


# -- estimation ---------------------------------------------------------------------------
@dataclass
class _Level:
    """One pyramid level: its integer reduction factor and the maps between its pixel
    coordinates and full-resolution ones."""

    factor: int
    S: np.ndarray  # level -> full coordinates (pixel centres)
    S_inv: np.ndarray


def _levels(shape: tuple[int, int], working_size: int | None, refine_size: int | None) -> list[_Level]:
    """Coarse-to-fine levels of about ``working_size`` then ``refine_size`` pixels on
    the long side, never larger than the frame; one full-size level for small frames.

    Reduction factors are integers, and the coarse one a multiple of the fine one:
    OpenCV's area resize then averages exact blocks (its fast path, and exact
    coordinates), and the coarse level is made from the fine one, not the frame."""
    long = max(shape)
    for s in (working_size, refine_size):
        if s is not None and int(s) < 16:
            raise ValueError("working_size and refine_size must be at least 16 pixels")
    fine = max(1, int(round(long / int(refine_size)))) if refine_size is not None else None
    coarse = max(1, int(round(long / int(working_size)))) if working_size is not None else None
    if fine is None and coarse is None:
        factors = [1]
    elif fine is None or coarse is None:
        factors = [fine or coarse]
    else:
        coarse = fine * max(1, int(round(coarse / fine)))
        factors = [coarse, fine] if coarse > fine else [fine]
    levels = []
    for f in factors:
        # Area averaging of f x f blocks: level pixel centre x_l sits at full
        # coordinate f * (x_l + 0.5) - 0.5. Getting this half-pixel offset right
        # matters: ignoring it biases every translation by (f - 1) / 2 pixels.
        S = np.array([[f, 0, (f - 1) / 2], [0, f, (f - 1) / 2], [0, 0, 1]], np.float64)
        levels.append(_Level(f, S, np.linalg.inv(S)))
    return levels


class _GrayMaker:
    """Frame -> gray float32 at the finest level. Luminance for RGB(A), the channel
    itself for one channel, the first principal component for other channel counts
    (its weights are fixed on the first frame so that every frame is projected
    alike), or a chosen channel."""

    def __init__(self, channel: int | str | None) -> None:
        self.channel = channel
        self.weights: np.ndarray | None = None

    def __call__(self, frame: np.ndarray, factor: int) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim == 2:
            frame = frame[..., None]
        c = frame.shape[-1]
        ch = self.channel
        if isinstance(ch, (int, np.integer)) and not isinstance(ch, bool):
            if not -c <= int(ch) < c:
                raise ValueError(f"channel {ch} does not exist; the frames have {c} channel(s)")
            frame = frame[..., int(ch) : int(ch) + 1 if int(ch) != -1 else None]
            c = 1
        elif ch not in (None, "luminance", "pca", "max"):
            raise ValueError(f"channel must be None, 'luminance', 'pca', 'max' or an index, got {ch!r}")
        small = _shrink_frame(frame, factor)
        if c == 1:
            return np.ascontiguousarray(small[..., 0])
        if ch == "max":  # sparse fluorescence channels
            return np.ascontiguousarray(small.max(axis=-1))
        if c in (3, 4) and ch != "pca":
            return np.ascontiguousarray(small[..., :3] @ _LUMA)
        if self.weights is None:
            x = small.reshape(-1, c).astype(np.float64)
            cov = np.cov(x, rowvar=False)
            vals, vecs = np.linalg.eigh(cov)
            wgt = vecs[:, -1]
            if wgt.sum() < 0:
                wgt = -wgt
            if not np.all(np.isfinite(wgt)) or vals[-1] <= 0:
                wgt = np.full(c, 1.0 / c)
            self.weights = wgt.astype(np.float32)
        return np.ascontiguousarray(small @ self.weights)


def _shrink_frame(frame: np.ndarray, factor: int) -> np.ndarray:
    """``(H, W, C)`` frame -> float32 ``(h, w, C)`` reduced by ``factor``, integer
    data scaled by its dtype's range to [0, 1] (ECC normalises anyway; one scale
    keeps the no-texture test meaningful).

    8- and 16-bit frames are shrunk in their own dtype, which is what OpenCV
    averages fastest and saves a float copy of the full frame (the rounding of the
    block means adds less than the frame's own quantisation)."""
    dtype = frame.dtype
    if dtype not in (np.uint8, np.uint16, np.float32, np.float64) or factor == 1:
        frame = frame.astype(np.float32, copy=False)
    small = _shrink(frame, factor).astype(np.float32, copy=False)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        small = (small - np.float32(info.min)) * np.float32(1.0 / (info.max - info.min))
    return small


def _shrink(img: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks (a partial block at the far edges)."""
    if factor == 1:
        return img
    if img.ndim == 3 and img.shape[-1] > 4:  # stay within what every OpenCV build resizes
        return np.concatenate([_shrink(img[..., k : k + 4], factor) for k in range(0, img.shape[-1], 4)], axis=-1)
    out = cv2.resize(img, None, fx=1.0 / factor, fy=1.0 / factor, interpolation=cv2.INTER_AREA)
    if img.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


@dataclass
class _Pyramid:
    images: list[np.ndarray]  # normalised float32, coarse to fine
    degenerate: bool


def _normalise(img: np.ndarray, feature: str) -> tuple[np.ndarray, bool]:
    img = img.astype(np.float32, copy=False)
    if feature == "gradient":
        gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
        img = cv2.magnitude(gx, gy)
    if not np.all(np.isfinite(img)):
        img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
    mean, std = cv2.meanStdDev(img)
    mean, std = float(mean[0, 0]), float(std[0, 0])
    scale = max(abs(mean), 1e-12)
    degenerate = std <= 1e-6 * scale or std < 1e-12
    out = (img - np.float32(mean)) * np.float32(1.0 / std if not degenerate else 0.0)
    return out, degenerate


def _pyramid(gray_fine: np.ndarray, levels: list[_Level], feature: str) -> _Pyramid:
    """Normalised images for every level from the finest level's gray image."""
    images = []
    degenerate = False
    fine = levels[-1].factor
    for lev in levels:
        g, deg = _normalise(_shrink(gray_fine, lev.factor // fine), feature)
        degenerate |= deg
        images.append(g)
    return _Pyramid(images, degenerate)


def _plausible(P: np.ndarray, shape: tuple[int, int], max_shift: float, max_scale: float) -> bool:
    """Reject results that ECC 'converged' to but no focus stack produces."""
    if not np.all(np.isfinite(P)):
        return False
    h, w = shape
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1], [(w - 1) / 2, (h - 1) / 2]], np.float64)
    q = np.c_[corners, np.ones(5)] @ P.T
    if np.any(q[:, 2] <= 0):
        return False
    moved = q[:, :2] / q[:, 2:3] - corners
    if np.abs(moved).max() > max_shift * max(h, w):
        return False
    sv = np.linalg.svd(P[:2, :2] / P[2, 2], compute_uv=False)
    return bool(sv.max() < 1 + max_scale and sv.min() > 1 / (1 + max_scale))


def _nearest_rigid(P: np.ndarray) -> np.ndarray:
    """``P`` with its linear part replaced by the nearest rotation.

    Rounded level sizes make the level <-> full scaling slightly anisotropic, so a
    rigid ECC result comes back with ~1e-5 of shear; the translation is kept."""
    out = P.copy()
    theta = math.atan2(P[1, 0] - P[0, 1], P[0, 0] + P[1, 1])
    c, s = math.cos(theta), math.sin(theta)
    out[:2, :2] = [[c, -s], [s, c]]
    out[2] = (0.0, 0.0, 1.0)
    return out


def _phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Translation of ``b`` relative to ``a`` (b(x + d) ~ a(x)) and the peak response."""
    h, w = a.shape
    win = cv2.createHanningWindow((w, h), cv2.CV_32F)
    # Copies: OpenCV 5.0's phaseCorrelate multiplies its inputs by the window in
    # place, which would corrupt the pyramids that ECC reuses for the next pair.
    (dx, dy), resp = cv2.phaseCorrelate(a.copy(), b.copy(), win)
    return float(dx), float(dy), float(resp)


def _ecc_level(
    tmpl: np.ndarray,
    img: np.ndarray,
    init: np.ndarray,
    motion: str,
    criteria: tuple,
    gauss: int,
) -> tuple[float, np.ndarray]:
    if motion == "homography":
        warp = init.astype(np.float32)
    else:
        warp = np.ascontiguousarray(init[:2].astype(np.float32))
    # OpenCV 5 insists on a float32 warp and positional inputMask/gaussFiltSize.
    rho, warp = cv2.findTransformECC(tmpl, img, warp, _CV_MOTION[motion], criteria, None, gauss)
    out = np.eye(3)
    out[: warp.shape[0]] = warp.astype(np.float64)
    return float(rho), out


def _register_pair(
    prev: _Pyramid,
    cur: _Pyramid,
    levels: list[_Level],
    frame_shape: tuple[int, int],
    *,
    motion: str,
    iterations: Sequence[int],
    eps: float,
    gauss: int,
    min_correlation: float,
    min_phase_response: float,
    max_shift: float,
    max_scale: float,
) -> tuple[np.ndarray, str, float, str]:
    """One frame pair: ``P`` (prev full-res coords -> cur full-res coords), status,
    ECC correlation and, on fallback, why."""
    if prev.degenerate or cur.degenerate:
        return np.eye(3), "identity", math.nan, "a frame has no texture (constant image)"
    # Initial translation from phase correlation at the coarse level: it is cheap and
    # brings shakes larger than ECC's basin of convergence within reach.
    # If that start fails (a spurious phase peak), ECC retries from no motion.
    inits = []
    dx, dy, resp = _phase_shift(prev.images[0], cur.images[0])
    if resp >= min_phase_response and math.hypot(dx, dy) > 0.5:
        T = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)
        inits.append(levels[0].S @ T @ levels[0].S_inv)
    inits.append(np.eye(3))
    reasons = []
    rho = math.nan
    for P in inits:
        try:
            for k, lev in enumerate(levels):
                crit = (
                    cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS,
                    int(iterations[min(k, len(iterations) - 1)]),
                    eps,
                )
                init = lev.S_inv @ P @ lev.S
                init /= init[2, 2]
                rho, W = _ecc_level(prev.images[k], cur.images[k], init, motion, crit, gauss)
                P = lev.S @ W @ lev.S_inv
                P /= P[2, 2]
        except cv2.error as exc:  # "iterations do not converge", "NaN encountered"...
            msg = str(exc).strip().splitlines()[-1].split("error:")[-1].strip()
            reasons.append(f"ECC did not converge ({msg})")
            continue
        if motion == "euclidean":
            P = _nearest_rigid(P)  # level scaling is not exactly isotropic
        if rho < min_correlation:
            reasons.append(f"ECC correlation {rho:.3f} is below {min_correlation}")
        elif not _plausible(P, frame_shape, max_shift, max_scale):
            reasons.append("ECC found an implausibly large motion")
        else:
            return P, "ecc", rho, ""
    reason = reasons[-1]
    # Fallback: translation from phase correlation at the finest level.
    dx, dy, resp = _phase_shift(prev.images[-1], cur.images[-1])
    if resp >= min_phase_response:
        T = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]], np.float64)
        P = levels[-1].S @ T @ levels[-1].S_inv
        if _plausible(P, frame_shape, max_shift, max_scale):
            return P, "phase", rho, reason
    return np.eye(3), "identity", rho, reason + "; phase correlation failed too"


def iter_estimate_transforms(
    data: Any,
    *,
    motion: str = "affine",
    reference: str | int = "middle",
    working_size: int | None = 500,
    refine_size: int | None = 1000,
    channel: int | str | None = None,
    feature: str = "intensity",
    iterations: int | Sequence[int] = (100, 30),
    eps: float = 1e-5,
    gauss_filt_size: int = 5,
    min_correlation: float = 0.2,
    min_phase_response: float = 0.03,
    max_shift: float = 0.25,
    max_scale: float = 0.25,
) -> Generator[tuple[int, int], None, Transforms]:
    """Estimate per-frame transforms to a reference frame, yielding progress.

    Use ``tf = yield from iter_estimate_transforms(...)`` inside a generator, or
    :func:`estimate_transforms`. Yields ``(done, total)`` after each frame.

    Parameters
    ----------
    data : array-like
        ``(Z, Y, X, C)`` or ``(Z, Y, X)`` frames, dask or numpy, any dtype. Each frame
        is read once, in order.
    motion : {"translation", "euclidean", "affine", "homography"}
        The model. Affine (default) covers focus breathing (magnification) and shake
        (shift, small rotation); homography adds perspective (tilting lens, a camera
        moving on a rail close to the subject).
    reference : {"first", "middle", "last"} or int
        The frame the others are aligned to; results are in its geometry.
        ``"middle"`` (default) halves the longest chain of pairwise transforms (and
        with it the accumulated error) and keeps the output geometry, magnification
        and field of view central to the stack, so the result is cropped least.
    working_size, refine_size : int or None
        About the long side, in pixels, of the coarse level ECC first runs on and of
        the level it then refines on (``None`` skips that level). The frame is
        reduced by integer factors (the nearest to these sizes; the coarse one a
        multiple of the fine one), so frames up to 1.5 times ``refine_size`` are
        refined at full size and frames up to 1.5 times ``working_size`` registered
        at full size only. Refining at about 1 MP rather than 4 MP nearly halves the
        command line's time on 3 MP frames (ECC was half of it) for an error of about
        0.05 px instead of 0.02 px (docs/peers.md), well below what resampling blurs.
    channel : None, "luminance", "pca", "max" or int
        What is registered: luminance for RGB(A) and the first principal component
        of the channels for other channel counts (``None`` or ``"luminance"``), the
        principal component whatever the count (``"pca"``), the per-pixel maximum
        (``"max"``), or one channel. Principal-component weights are fixed on the
        first frame, so every frame is projected alike.
    feature : {"intensity", "gradient"}
        Register the normalised gray image (default), or its gradient magnitude.
        On synthetic stacks with a defocus sweep the gradient magnitude was several
        times less accurate (0.1 to 0.5 px against 0.02 to 0.05 px): blur changes the
        width of gradient ridges asymmetrically where focus changes across an edge.
    iterations : int or sequence of int
        Maximum ECC iterations per level (coarse first; the last value repeats).
    eps : float
        ECC stops when the correlation improves by less than this.
    gauss_filt_size : int
        ECC's Gaussian prefilter kernel size (odd; 1 disables), applied at every
        level. A mild blur makes sharp and defocused neighbours look alike and
        suppresses noise; 5 measured best on synthetic defocus stacks (with noise,
        1 is several times worse, 9 to 15 slightly worse without noise).
    min_correlation : float
        ECC results with a lower correlation are treated as failures.
    min_phase_response : float
        Phase-correlation peaks below this are not trusted.
    max_shift, max_scale : float
        Pairwise results that move a corner by more than ``max_shift`` times the long
        side, or scale by more than ``1 + max_scale``, are treated as failures.

    Returns
    -------
    Transforms
        When ECC fails on a pair, phase correlation (translation only) and then
        identity are used instead, a :class:`RegistrationWarning` names the frames,
        and ``status`` records it. A frame with no texture at all (blank) is skipped
        as a template: the next frame is registered to the one before it.
    """
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    if feature not in ("intensity", "gradient"):
        raise ValueError(f"feature must be 'intensity' or 'gradient', got {feature!r}")
    if not isinstance(data, da.Array):
        data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise ValueError(f"expected (Z, Y, X[, C]) frames, got shape {tuple(data.shape)}")
    n = int(data.shape[0])
    ref = resolve_reference(reference, n)
    frame_shape = (int(data.shape[1]), int(data.shape[2]))
    iters = [int(iterations)] if np.isscalar(iterations) else [int(i) for i in iterations]
    gauss = int(gauss_filt_size)
    if gauss > 1 and gauss % 2 == 0:
        gauss += 1  # OpenCV wants an odd kernel
    gauss = max(gauss, 1)  # 1 is no blur; OpenCV refuses 0
    levels = _levels(frame_shape, working_size, refine_size)
    gray = _GrayMaker(channel)

    parent = [-1] * n
    links = [np.eye(3) for _ in range(n)]  # links[i]: parent coords -> frame i coords
    link_status = ["reference"] * n
    scores = [math.nan] * n
    prev: _Pyramid | None = None
    prev_index = -1

    def load(i: int) -> _Pyramid:
        frame = np.asarray(data[i])
        return _pyramid(gray(frame if frame.ndim == 3 else frame[..., None], levels[-1].factor), levels, feature)

    # the next frame is decoded and shrunk while ECC works on this one
    for i, cur in enumerate(prefetch(load, n)):
        if prev is not None:
            P, status, rho, reason = _register_pair(
                prev,
                cur,
                levels,
                frame_shape,
                motion=motion,
                iterations=iters,
                eps=float(eps),
                gauss=gauss,
                min_correlation=float(min_correlation),
                min_phase_response=float(min_phase_response),
                max_shift=float(max_shift),
                max_scale=float(max_scale),
            )
            parent[i], links[i], link_status[i] = prev_index, P, status
            scores[i] = rho if status == "ecc" else math.nan
            if status != "ecc":
                fallback = "phase correlation (translation only)" if status == "phase" else "no motion (identity)"
                warnings.warn(
                    f"registration of frame {i} to frame {prev_index} failed: {reason}; using {fallback}",
                    RegistrationWarning,
                    stacklevel=2,
                )
        # A blank frame is a useless template: keep the previous one so the next
        # frame is registered across the gap rather than to nothing.
        if prev is None or not (cur.degenerate and not prev.degenerate):
            prev, prev_index = cur, i
        else:
            del cur
        yield (i + 1, n)

    # Chain: M0[i] maps frame-0 coords to frame-i coords; then re-reference.
    M0 = np.empty((n, 3, 3))
    for i in range(n):
        M0[i] = np.eye(3) if parent[i] < 0 else links[i] @ M0[parent[i]]
    inv_ref = np.linalg.inv(M0[ref])
    mats = np.einsum("nij,jk->nik", M0, inv_ref)
    mats /= mats[:, 2:3, 2:3]
    if motion != "homography":
        mats[:, 2] = (0.0, 0.0, 1.0)
    mats[ref] = np.eye(3)

    status = []
    ref_path = _path_to_root(ref, parent)
    for i in range(n):
        if i == ref:
            status.append("reference")
            continue
        used = _path_to_root(i, parent) ^ ref_path  # the links between i and ref
        worst = max((link_status[j] for j in used), key=lambda s: _RANK.get(s, 0), default="ecc")
        status.append(worst)
    return Transforms(mats, motion=motion, reference=ref, status=status, frame_shape=frame_shape, scores=scores)


def _path_to_root(i: int, parent: list[int]) -> set[int]:
    nodes = set()
    while parent[i] >= 0:
        nodes.add(i)
        i = parent[i]
    return nodes


def estimate_transforms(data: Any, **kwargs: Any) -> Transforms:
    """Run :func:`iter_estimate_transforms` to the end and return its transforms."""
    gen = iter_estimate_transforms(data, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


# -- applying ---------------------------------------------------------------------------
_CV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def warp_frame(
    frame: np.ndarray,
    matrix: np.ndarray,
    *,
    interpolation: str = "linear",
    border: str = "replicate",
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Warp one frame into the reference geometry.

    Parameters
    ----------
    frame : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, any number of channels, any numeric dtype.
    matrix : array-like
        3x3 (or 2x3) matrix mapping reference coordinates to frame coordinates.
    interpolation : {"nearest", "linear", "cubic", "lanczos"}
        Cubic and Lanczos keep more fine detail than linear but overshoot next to
        edges; their result is clipped to the frame's own range, so a warp never
        invents a value that no pixel had (a negative intensity, say).
    border : {"replicate", "reflect", "constant"}
        How pixels that fall outside the frame are filled. Replicating the edge
        (default) keeps fusion from taking black borders for sharp detail.
    output_shape : (H, W), optional
        Size of the result; the frame's own by default.

    Returns
    -------
    numpy.ndarray
        Same shape (or ``output_shape``) and dtype; integer results are rounded and
        clipped to the dtype's range.
    """
    frame = np.asarray(frame)
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0, 0, 1]])
    if m.shape != (3, 3):
        raise ValueError(f"matrix must be 3x3 or 2x3, got {m.shape}")
    if frame.ndim not in (2, 3):
        raise ValueError(f"expected a (H, W) or (H, W, C) frame, got shape {frame.shape}")
    try:
        flag = _INTERPOLATION[interpolation]
        border_mode = _BORDER[border]
    except KeyError:
        raise ValueError(
            f"interpolation must be one of {tuple(_INTERPOLATION)} and border one of {tuple(_BORDER)}"
        ) from None
    h, w = frame.shape[:2] if output_shape is None else (int(output_shape[0]), int(output_shape[1]))
    dtype = frame.dtype
    if frame.shape[:2] == (h, w) and np.allclose(m, np.eye(3), rtol=0, atol=1e-12):
        return frame.copy()

    if dtype == np.bool_:
        work = frame.astype(np.uint8)
    elif dtype == np.float16:
        work = frame.astype(np.float32)
    elif dtype.type in _CV_DTYPES:
        work = frame
    else:  # int8, int32, (u)int64...: warp in float64, then round and clip back
        work = frame.astype(np.float64)

    perspective = not np.allclose(m[2], (0, 0, 1), rtol=0, atol=1e-15)

    def _warp(img: np.ndarray) -> np.ndarray:
        img = np.ascontiguousarray(img)
        if perspective:
            out = cv2.warpPerspective(img, m, (w, h), flags=flag | cv2.WARP_INVERSE_MAP, borderMode=border_mode)
        else:
            out = cv2.warpAffine(img, m[:2], (w, h), flags=flag | cv2.WARP_INVERSE_MAP, borderMode=border_mode)
        return out.reshape(h, w, -1)

    if work.ndim == 2:
        out = _warp(work)[..., 0]
    elif work.shape[-1] <= 4:
        out = _warp(work)
    else:  # OpenCV's remap handles at most 4 channels at once
        out = np.concatenate([_warp(work[..., k : k + 4]) for k in range(0, work.shape[-1], 4)], axis=-1)
    if flag in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4) and out.size:
        lo, hi = float(work.min()), float(work.max())
        if border_mode == cv2.BORDER_CONSTANT:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        np.clip(out, np.asarray(lo, out.dtype), np.asarray(hi, out.dtype), out=out)

    if out.dtype == dtype:
        return out
    if dtype == np.bool_:
        return out >= 1 if work.dtype == np.uint8 and flag == cv2.INTER_NEAREST else out >= 0.5
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    return out.astype(dtype)


def apply_transforms(
    data: Any,
    transforms: Transforms,
    *,
    interpolation: str = "linear",
    border: str = "replicate",
) -> da.Array:
    """Lazily warp every frame into the reference geometry.

    Parameters
    ----------
    data : array-like
        ``(Z, Y, X)`` or ``(Z, Y, X, C)`` (any number of channels, any dtype), dask or
        numpy. It may be another channel or stack than the transforms were estimated
        on, as long as the frames have the same count and size.
    transforms : Transforms
    interpolation, border : str
        See :func:`warp_frame`.

    Returns
    -------
    dask.array.Array
        Same shape and dtype, one chunk per frame.
    """
    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=-1)
    if arr.ndim not in (3, 4):
        raise ValueError(f"expected (Z, Y, X[, C]) frames, got shape {tuple(arr.shape)}")
    if not isinstance(transforms, Transforms):
        raise TypeError(f"transforms must be a Transforms, got {type(transforms).__name__}")
    n, h, w = (int(s) for s in arr.shape[:3])
    if transforms.frame_shape not in ((h, w), (0, 0)):
        raise ValueError(
            f"the transforms were estimated on {transforms.frame_shape[1]}x{transforms.frame_shape[0]} "
            f"(W x H) frames but these are {w}x{h}; they cannot be applied"
        )
    if n != transforms.n_frames:
        raise ValueError(f"the transforms are for {transforms.n_frames} frames but the stack has {n}")
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation must be one of {tuple(_INTERPOLATION)}, got {interpolation!r}")
    if border not in _BORDER:
        raise ValueError(f"border must be one of {tuple(_BORDER)}, got {border!r}")
    arr = arr.rechunk((1,) + tuple(int(s) for s in arr.shape[1:]))
    mats = transforms.matrices.copy()

    def _block(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        z = block_info[0]["array-location"][0][0]
        return warp_frame(block[0], mats[z], interpolation=interpolation, border=border)[None]

    return arr.map_blocks(_block, dtype=arr.dtype, meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))
