"""Montage figures: the same crops from every tool's result, side by side.

Tools anchor their output to different frames (first, middle, last) and some crop or
grow the canvas, so every result is first registered onto the reference tool's result
with an affine ECC fit; only then are "the same crops" the same scene content.

Also home of :func:`read_image` and :func:`register_to`, which the quality scoring
in ``compare.py`` shares, so figures and numbers see the images the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

__all__ = ["read_image", "to_gray", "register_to", "pick_crops", "make_montage"]


def read_image(path: str | Path) -> np.ndarray:
    """Read any tool's output as float32 in [0, 1], RGB order, alpha dropped.

    Integers are scaled by their dtype's range; float outputs (rawhdr writes float32
    TIFF) pass through.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        img = tifffile.imread(str(path))
        if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] not in (3, 4):
            img = np.moveaxis(img, 0, -1)  # planar (C, Y, X) TIFF
    else:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise OSError(f"cannot read {path}")
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]  # RGBA (enfuse writes its mask as alpha)
    if img.ndim == 3 and img.shape[-1] in (1, 2):
        img = img[..., 0]  # gray, or gray + alpha
    if img.dtype.kind in "ui":
        return img.astype(np.float32) / np.float32(np.iinfo(img.dtype).max)
    return np.nan_to_num(img.astype(np.float32))


def to_gray(img: np.ndarray) -> np.ndarray:
    """Luminance (Rec. 601) of an RGB image; gray images pass through."""
    if img.ndim == 2:
        return img.astype(np.float32, copy=False)
    return cv2.cvtColor(np.ascontiguousarray(img[..., :3], np.float32), cv2.COLOR_RGB2GRAY)


def register_to(
    image: np.ndarray, target: np.ndarray, *, max_side: int = 1024, iterations: int = 200
) -> tuple[np.ndarray, float, np.ndarray]:
    """Warp ``image`` onto ``target``'s geometry with an affine ECC fit.

    Sizes may differ (a tool that crops or grows its canvas): the fit starts from the
    centres matched and absorbs the rest. Large images are fitted at most ``max_side``
    pixels wide and the warp is scaled back, then applied at full resolution with cubic
    interpolation (it blurs less than linear, so the scoring penalises a tool that
    anchors to another frame as little as possible).

    Returns
    -------
    warped : ndarray
        ``image`` resampled to ``target.shape[:2]``.
    cc : float
        ECC correlation of the fit (nan when the fit failed and centres were matched).
    warp : ndarray
        ``(2, 3)`` map from target to image pixel coordinates.
    """
    H, W = target.shape[:2]
    h, w = image.shape[:2]
    s = min(1.0, max_side / max(H, W, h, w))
    t_small = to_gray(target)
    i_small = to_gray(image)
    if s < 1.0:
        t_small = cv2.resize(t_small, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        i_small = cv2.resize(i_small, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    warp = np.array([[1, 0, (w - W) / 2 * s], [0, 1, (h - H) / 2 * s]], np.float32)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, 1e-6)
    try:
        cc, warp = cv2.findTransformECC(t_small, i_small, warp, cv2.MOTION_AFFINE, criteria, None, 5)
    except cv2.error:
        cc = float("nan")
        warp = np.array([[1, 0, (w - W) / 2 * s], [0, 1, (h - H) / 2 * s]], np.float32)
    warp = warp.astype(np.float64)
    warp[:, 2] /= s  # the translation scales with the image; the linear part does not
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    src = np.ascontiguousarray(image, np.float32)
    warped = cv2.warpAffine(src, warp, (W, H), flags=flags, borderMode=cv2.BORDER_REFLECT)
    return np.clip(warped, 0, 1), float(cc), warp


def pick_crops(
    images: Sequence[np.ndarray], reference: np.ndarray, *, n: int = 3, size: int = 192, border: float = 0.08
) -> list[tuple[int, int, int, int]]:
    """Crop boxes ``(y, x, h, w)``: where the tools disagree most, and the most detailed spot.

    The first ``n - 1`` boxes maximise the local spread between the registered results
    (where a reader should look), the last maximises the reference's local detail.
    Boxes do not overlap and stay ``border`` (a fraction) away from the edges that
    warping fills in.
    """
    H, W = reference.shape[:2]
    size = int(min(size, H // 2, W // 2))
    grays = np.stack([to_gray(im) for im in images])
    spread = grays.std(axis=0)
    detail = np.abs(cv2.Laplacian(to_gray(reference), cv2.CV_32F, ksize=3))
    boxes: list[tuple[int, int, int, int]] = []
    taken = np.zeros((H, W), bool)
    m = int(border * min(H, W))
    for k in range(n):
        score = spread if k < n - 1 and len(images) > 1 else detail
        local = cv2.boxFilter(score, -1, (size, size), normalize=True, borderType=cv2.BORDER_CONSTANT)
        valid = np.zeros((H, W), bool)
        half = size // 2
        valid[m + half : H - m - half, m + half : W - m - half] = True
        # a centre is free when its box does not touch a taken box: dilate the taken mask
        if taken.any():
            grown = cv2.dilate(taken.astype(np.uint8), np.ones((size + 1, size + 1), np.uint8)) > 0
            valid &= ~grown
        if not valid.any():
            break
        cy, cx = np.unravel_index(np.argmax(np.where(valid, local, -np.inf)), local.shape)
        y, x = int(cy) - half, int(cx) - half
        boxes.append((y, x, size, size))
        taken[y : y + size, x : x + size] = True
    return boxes


def _rgb8(img: np.ndarray) -> np.ndarray:
    img = np.clip(img, 0, 1)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return (img * 255 + 0.5).astype(np.uint8)


def make_montage(
    images: Mapping[str, np.ndarray],
    reference: str,
    out_path: str | Path,
    *,
    title: str = "",
    n_crops: int = 3,
    crop: int = 192,
    cell: int = 224,
) -> list[tuple[int, int, int, int]]:
    """Write a PNG: a thumbnail with numbered boxes, then one row of crops per tool.

    Parameters
    ----------
    images : mapping of label -> float image in [0, 1]
        Every tool's result (any size); the one under ``reference`` sets the geometry.
    reference : str
        Key of ``images`` the others are registered onto.
    out_path : path
        The PNG to write.
    title : str
        Drawn above the thumbnail.
    n_crops, crop, cell : int
        Number of crops, their size in reference pixels, their size in the figure.

    Returns
    -------
    list of (y, x, h, w)
        The crop boxes, in reference pixels.
    """
    ref = images[reference]
    aligned: dict[str, np.ndarray] = {}
    for name, img in images.items():
        aligned[name] = ref if name == reference else register_to(img, ref)[0]
    if ref.ndim == 3:  # a gray result beside RGB ones is shown as gray RGB
        aligned = {k: (np.repeat(v[..., None], 3, -1) if v.ndim == 2 else v) for k, v in aligned.items()}
    boxes = pick_crops(list(aligned.values()), ref, n=n_crops, size=crop)
    label_w, pad = 260, 6
    grid_w = label_w + len(boxes) * (cell + pad)
    H, W = ref.shape[:2]
    thumb_w = min(grid_w - 2 * pad, 640)  # a small overview keeps the PNG small
    thumb_h = int(round(H * thumb_w / W))
    thumb = cv2.resize(_rgb8(ref), (thumb_w, thumb_h), interpolation=cv2.INTER_AREA)
    f = thumb_w / W
    for i, (y, x, h, w) in enumerate(boxes):
        p0 = (int(x * f), int(y * f))
        p1 = (int((x + w) * f), int((y + h) * f))
        cv2.rectangle(thumb, p0, p1, (255, 40, 40), 2)
        cv2.putText(thumb, str(i + 1), (p0[0] + 4, p0[1] + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 40, 40), 2)
    header = 34 if title else 0
    rows_h = len(aligned) * (cell + pad) + 26
    canvas = np.full((header + thumb_h + 2 * pad + rows_h, grid_w, 3), 255, np.uint8)
    if title:
        cv2.putText(canvas, title, (pad, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.65, (0, 0, 0), 1, cv2.LINE_AA)
    canvas[header + pad : header + pad + thumb_h, pad : pad + thumb_w] = thumb
    y0 = header + thumb_h + 2 * pad
    for j in range(len(boxes)):
        cv2.putText(canvas, f"crop {j + 1}", (label_w + j * (cell + pad) + 4, y0 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    y0 += 26
    for r, (name, img) in enumerate(aligned.items()):
        top = y0 + r * (cell + pad)
        for line, text in enumerate(_wrap(name, 24)):
            cv2.putText(canvas, text, (pad, top + 24 + 22 * line), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        for j, (y, x, h, w) in enumerate(boxes):
            tile = _rgb8(img[y : y + h, x : x + w])
            # small crops are enlarged with nearest neighbour so pixels stay visible
            interp = cv2.INTER_NEAREST if h < cell else cv2.INTER_AREA
            tile = cv2.resize(tile, (cell, cell), interpolation=interp)
            left = label_w + j * (cell + pad)
            canvas[top : top + cell, left : left + cell] = tile
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {out_path}")
    return boxes


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines
