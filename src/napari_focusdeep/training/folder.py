"""A lab's own training data: folders of stacks with (pseudo) ground truth.

Layout (``DIR`` is what ``focusdeep train --data DIR`` gets)::

    DIR/
      specimen-a/                 one sub-folder per stack: frames ...
        frame_000.png ...
        ground_truth.tif          ... and its ground truth: ground_truth.*, gt.* or *_gt.*
      specimen-b/
        stack.tif                 ... or one multi-frame file
        specimen-b_gt.png
      specimen-c.tif              a multi-frame file at the top level,
      specimen-c_gt.tif           its ground truth beside it

A folder that itself holds a ``ground_truth.*`` / ``gt.*`` file, or only
single-frame images, is one stack. Files named ``depth.*`` or ``*_depth.*`` (as
``focusdeep simulate`` writes) are not frames. The ground truth may come from
any tool (Helicon Focus, Zerene Stacker) or from :func:`make_pseudo_gt`, our
``pyramid`` fuse of a low-noise stack, the paper's recipe; it must be in the
geometry of the stack's reference frame (the middle one unless told otherwise),
at the frames' size.

Every stack is registered with :mod:`napari_focusdeep.registration` (estimate +
apply) so frames and ground truth share one geometry, then cut to the region
every warped frame covers.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["TrainingFolder", "load_training_folder", "make_pseudo_gt", "find_ground_truth", "PSEUDO_GT_METHODS"]

#: Fusion methods that may make a pseudo ground truth.
PSEUDO_GT_METHODS = ("pyramid", "laplacian", "wavelet")

_PLAIN_GT = re.compile(r"^(ground[_-]?truth|gt)$", re.IGNORECASE)


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def _is_image(p: Path) -> bool:
    from ..io import SUPPORTED_EXTENSIONS

    return p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(SUPPORTED_EXTENSIONS)


def _is_gt(p: Path) -> bool:
    from ..io._frames import GROUND_TRUTH_NAME

    return bool(GROUND_TRUTH_NAME.search(_stem(p)))


def _is_depth(p: Path) -> bool:
    from ..io._frames import DEPTH_NAME

    return bool(DEPTH_NAME.search(_stem(p)))


def find_ground_truth(folder: str | os.PathLike) -> Path | None:
    """The ground-truth image in ``folder`` (``ground_truth.*``, ``gt.*`` or ``*_gt.*``), if any.

    Raises
    ------
    ValueError
        When several files qualify (the message names them).
    """
    folder = Path(folder)
    found = sorted(p for p in folder.iterdir() if _is_image(p) and _is_gt(p))
    if len(found) > 1:
        raise ValueError(f"{folder}: several ground-truth images ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _partner_gt(path: Path) -> Path | None:
    """``NAME_gt.*`` beside a stack file or folder ``NAME``."""
    stem = _stem(path) if path.is_file() else path.name
    found = sorted(
        p for p in path.parent.iterdir()
        if _is_image(p) and _is_gt(p) and re.sub(r"[_-](gt|ground[_-]?truth)$", "", _stem(p), flags=re.IGNORECASE) == stem
    )
    if len(found) > 1:
        raise ValueError(f"{path.parent}: several ground truths for {stem} ({', '.join(p.name for p in found)})")
    return found[0] if found else None


@dataclass
class _Source:
    name: str
    frames: list[Path]
    gt: Path | None


def _frames_in(folder: Path) -> list[Path]:
    from ..io import natural_sorted

    return natural_sorted([p for p in folder.iterdir() if _is_image(p) and not _is_gt(p) and not _is_depth(p)])


def _discover(folder: Path) -> list[_Source]:
    from ..io import read_stack

    plain = [p for p in folder.iterdir() if _is_image(p) and _PLAIN_GT.match(_stem(p))]
    if plain:  # ground_truth.* or gt.* (not NAME_gt.*): the folder itself is one stack
        return [_Source(folder.name, _frames_in(folder), find_ground_truth(folder))]
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = _frames_in(folder)
    if files and not subdirs and all(read_stack(p).n_frames == 1 for p in files):
        return [_Source(folder.name, files, None)]  # a plain folder of frames
    sources = []
    for d in subdirs:
        frames = _frames_in(d)
        if not frames:
            continue  # not a stack (e.g. a run folder); say nothing rather than fail
        sources.append(_Source(d.name, frames, find_ground_truth(d) or _partner_gt(d)))
    for f in files:
        sources.append(_Source(_stem(f), [f], _partner_gt(f)))
    return sources


@dataclass
class TrainingFolder:
    """Registered stacks and their ground truths, ready for :class:`~.data.StackCrops`.

    Attributes
    ----------
    stacks : list of ndarray
        ``(Z, H, W[, C])`` registered frames in their own dtype, cut to the region
        every warped frame covers.
    targets : list of ndarray
        ``(H, W[, C])`` ground truths, cut alike.
    names : list of str
    pseudo : list of bool
        Whether each target was made by :func:`make_pseudo_gt` here.
    sources : list of str
        Where each stack came from, and its ground truth (for the weights' record).
    """

    stacks: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    pseudo: list[bool] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stacks)

    def crops(self, **kwargs: Any) -> Any:
        """A :class:`~.data.StackCrops` over these stacks (keywords go to it)."""
        from .data import StackCrops

        return StackCrops(self.stacks, self.targets, names=self.names, **kwargs)

    def describe(self) -> str:
        n_pseudo = sum(self.pseudo)
        made = f", {n_pseudo} with a pseudo ground truth made here" if n_pseudo else ""
        return f"{len(self)} stack{'s' if len(self) != 1 else ''} ({', '.join(self.names)}){made}"


def make_pseudo_gt(
    stack: Any, *, method: str = "pyramid", register: bool = False, reference: str | int = "middle"
) -> np.ndarray:
    """A pseudo ground truth: a classical fuse of a (low-noise) stack, as the paper does.

    Parameters
    ----------
    stack : ndarray, dask array or Stack
        ``(Z, H, W[, C])`` frames, already registered (as :func:`load_training_folder`
        gives them) unless ``register`` is set.
    method : {"pyramid", "laplacian", "wavelet"}
        The fusion method; ``pyramid`` is the default and the best of ours.
    register : bool
        Register the frames first (for a raw stack).
    reference : {"first", "middle", "last"} or int
        The geometry of the result when registering.

    Returns
    -------
    ndarray
        float32 ``(H, W[, C])`` in [0, 1].
    """
    from ..fusion import fuse
    from ..fusion.core import to_float

    if method not in PSEUDO_GT_METHODS:
        raise ValueError(f"a pseudo ground truth is made with one of {', '.join(PSEUDO_GT_METHODS)}, not {method!r}")
    result = fuse(stack, method=method, register=register, reference=reference)
    return to_float(np.asarray(result.image)).astype(np.float32, copy=False)


def _read_gt(path: Path) -> np.ndarray:
    from ..io import read_stack

    s = read_stack(path)
    if s.n_frames != 1 or s.axes.startswith("T"):
        raise ValueError(f"{path}: a ground truth is one image, this file holds {s.n_frames} frames")
    return np.asarray(s.data[0].compute())


def load_training_folder(
    folder: str | os.PathLike,
    *,
    pseudo_gt: str | None = None,
    reference: str | int = "middle",
    register: bool = True,
    motion: str = "affine",
    log: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> TrainingFolder:
    """Read, register and pair a lab's stacks with their ground truths.

    Parameters
    ----------
    folder : path
        See the module documentation for the layout.
    pseudo_gt : {None, "pyramid", "laplacian", "wavelet"}
        Make a pseudo ground truth with this method for every stack that has
        none (``None``: such a stack is an error).
    reference : {"first", "middle", "last"} or int
        The frame whose geometry the ground truths are in (registration aligns
        the others to it).
    register : bool
        Register the stacks (turn off only for stacks already aligned).
    motion : {"translation", "euclidean", "affine", "homography"}
        Registration model.
    log : callable, optional
        Receives one line per stack.
    cancel : threading.Event, optional
        Checked between stacks; when set, loading stops with ``InterruptedError``.

    Returns
    -------
    TrainingFolder

    Raises
    ------
    FileNotFoundError, ValueError
        A missing folder, no stacks, a stack without ground truth (and no
        ``pseudo_gt``), or a ground truth whose size or channels do not match.
    """
    from ..fusion.core import to_float
    from ..io import read_stack
    from ..registration import apply_transforms, estimate_transforms

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no such training folder: '{folder}'")
    if pseudo_gt is not None and pseudo_gt not in PSEUDO_GT_METHODS:
        raise ValueError(f"pseudo_gt must be None or one of {', '.join(PSEUDO_GT_METHODS)}, not {pseudo_gt!r}")
    say = log or (lambda s: None)
    sources = _discover(folder)
    if not sources:
        raise ValueError(
            f"{folder}: no stacks found; give one sub-folder per stack (frames or one multi-frame file) "
            "with ground_truth.*, gt.* or *_gt.* beside the frames"
        )
    missing = [s.name for s in sources if s.gt is None]
    if missing and pseudo_gt is None:
        raise ValueError(
            f"{len(missing)} stack(s) have no ground truth ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
            "add ground_truth.* beside the frames, or make pseudo ground truths with --pseudo-gt pyramid"
        )
    out = TrainingFolder()
    for src in sources:
        if cancel is not None and cancel.is_set():
            raise InterruptedError("loading the training data was cancelled")
        stack = read_stack(src.frames if len(src.frames) > 1 else src.frames[0])
        if stack.axes.startswith("T"):
            raise ValueError(f"{src.name}: a time series; give one focus stack per folder")
        if stack.n_frames < 2:
            raise ValueError(f"{src.name}: a stack needs at least 2 frames, it has {stack.n_frames}")
        data = stack.data
        if register:
            tf = estimate_transforms(data, motion=motion, reference=reference)
            frames = np.asarray(apply_transforms(data, tf).compute())
            y0, y1, x0, x1 = tf.valid_region
        else:
            frames = np.asarray(data.compute())
            y0, y1, x0, x1 = 0, frames.shape[1], 0, frames.shape[2]
        if src.gt is not None:
            gt = _read_gt(src.gt)
            if gt.shape[:2] != frames.shape[1:3]:
                raise ValueError(
                    f"{src.name}: the ground truth {src.gt.name} is {gt.shape[1]}x{gt.shape[0]}, the frames "
                    f"{frames.shape[2]}x{frames.shape[1]}; it must be in the reference frame's geometry and size"
                )
            how = f"ground truth {src.gt.name}"
        else:
            gt = make_pseudo_gt(frames, method=str(pseudo_gt))
            how = f"pseudo ground truth by {pseudo_gt}"
        frames = np.ascontiguousarray(frames[:, y0:y1, x0:x1])
        gt = np.ascontiguousarray(gt[y0:y1, x0:x1])
        if gt.dtype.kind == "f":
            gt = to_float(gt)
        out.stacks.append(frames)
        out.targets.append(gt)
        out.names.append(src.name)
        out.pseudo.append(src.gt is None)
        out.sources.append(f"{src.name}: {len(src.frames)} file(s), {how}")
        say(f"{src.name}: {stack.n_frames} frames of {x1 - x0}x{y1 - y0} after registration, {how}")
    return out
