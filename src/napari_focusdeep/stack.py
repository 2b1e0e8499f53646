"""The small container a focus stack travels in through the pipeline.

A :class:`Stack` wraps a lazy dask array together with its axis order, physical
pixel size and where it came from. Nothing here reads pixels until asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["Stack", "infer_axes"]

_VALID_AXES = ("ZYX", "ZYXC", "TZYX", "TZYXC")


def infer_axes(shape: tuple[int, ...]) -> str:
    """Guess the axis order of a plain array the way napari users expect.

    ``(Z, Y, X)`` for 3-D; for 4-D a last axis of 3 or 4 is taken as RGB(A)
    channels, ``(Z, Y, X, C)``. Anything else is ambiguous and refused: a 4-D
    array whose last axis is not a colour axis, or 5-D data, needs ``axes``.
    """
    if len(shape) == 3:
        return "ZYX"
    if len(shape) == 4 and shape[-1] in (3, 4):
        return "ZYXC"
    raise ValueError(
        f"cannot tell the axes of an array of shape {tuple(shape)}; "
        "pass axes= (one of " + ", ".join(_VALID_AXES) + ")"
    )


class _Frames:
    """A numpy array as dask sees it: sliced on demand, never copied whole.

    ``dask.array.from_array`` copies any array with a ``copy`` method (to guard
    against later mutation), which for a memory-mapped stack means reading all
    of it into memory; this wrapper has no such method.
    """

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._array[key])


def _lazy_frames(array: np.ndarray, axes: str) -> da.Array:
    # one frame per chunk, so that streaming code touches one frame at a time
    chunks = tuple(1 if a in "TZ" else -1 for a in axes) if len(axes) == array.ndim else -1
    return da.from_array(
        _Frames(array),
        chunks=chunks,
        name=False,  # a random name: hashing would read the whole array
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
        asarray=False,
        fancy=False,
    )


@dataclass(frozen=True)
class Stack:
    """A focus stack: frames along Z, optionally channels last and time first.

    Parameters
    ----------
    data : dask.array.Array
        Pixel data, axes as in ``axes``. Converted to dask if a numpy array is given.
    axes : str
        One of ``"ZYX"``, ``"ZYXC"``, ``"TZYX"``, ``"TZYXC"``.
    scale : dict
        Physical size of one step along ``"Z"``, ``"Y"``, ``"X"`` (and ``"T"``)
        where known; missing axes mean unknown (napari shows them as 1).
    unit : str or None
        Unit of the spatial scale, e.g. ``"µm"``.
    name : str
        Shown as the napari layer name and used to name outputs.
    paths : tuple of Path
        Files the stack was read from, in frame order.
    metadata : dict
        Anything else a reader found (e.g. OME metadata, channel names).
    """

    data: da.Array
    axes: str = "ZYX"
    scale: dict[str, float] = field(default_factory=dict)
    unit: str | None = None
    name: str = "stack"
    paths: tuple[Path, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.data, da.Array):
            object.__setattr__(self, "data", da.asarray(self.data))
        if self.axes not in _VALID_AXES:
            raise ValueError(f"axes must be one of {_VALID_AXES}, got {self.axes!r}")
        if self.data.ndim != len(self.axes):
            raise ValueError(
                f"data has {self.data.ndim} dimensions but axes {self.axes!r} has {len(self.axes)}"
            )

    @classmethod
    def from_array(cls, array: Any, *, axes: str | None = None, **kwargs: Any) -> Stack:
        """Wrap a numpy or dask array; ``axes`` is inferred for 3-D and RGB 4-D data.

        A numpy array (a memory-mapped one included) is wrapped without copying,
        one frame per chunk, so that fusing a stack read with
        ``numpy.load(..., mmap_mode="r")`` reads one frame at a time; do not
        modify the array while it is being fused.
        """
        if isinstance(array, da.Array):
            arr = array
            if axes is None:
                axes = infer_axes(arr.shape)
        else:
            array = np.asanyarray(array)
            if axes is None:
                axes = infer_axes(array.shape)
            arr = _lazy_frames(array, axes)
        return cls(data=arr, axes=axes, **kwargs)

    # -- shape helpers -------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return int(self.data.shape[self.axes.index("Z")])

    @property
    def n_timepoints(self) -> int:
        return int(self.data.shape[0]) if self.axes.startswith("T") else 1

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.data.shape[self.axes.index("Y")]), int(self.data.shape[self.axes.index("X")])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[-1]) if self.axes.endswith("C") else 1

    @property
    def has_channels(self) -> bool:
        return self.axes.endswith("C")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def z_step(self) -> float | None:
        return self.scale.get("Z")

    def timepoint(self, t: int) -> Stack:
        """The (Z, Y, X[, C]) stack at time index ``t`` (the stack itself when it has no T)."""
        if not self.axes.startswith("T"):
            if t != 0:
                raise IndexError(f"stack has no time axis; asked for time point {t}")
            return self
        return replace(self, data=self.data[t], axes=self.axes[1:])

    def frame(self, z: int) -> np.ndarray:
        """Read one frame, ``(Y, X[, C])``, into memory (only valid without a T axis)."""
        if self.axes.startswith("T"):
            raise ValueError("select a time point first: stack.timepoint(t).frame(z)")
        return np.asarray(self.data[z].compute())

    def layer_scale(self) -> tuple[float, ...]:
        """napari ``scale`` for the non-channel axes (1 where unknown)."""
        return tuple(float(self.scale.get(a, 1.0)) for a in self.axes if a != "C")

    def describe(self) -> dict[str, Any]:
        """A plain summary for ``focusdeep info`` and logs."""
        return {
            "name": self.name,
            "axes": self.axes,
            "shape": tuple(int(s) for s in self.data.shape),
            "frames": self.n_frames,
            "timepoints": self.n_timepoints,
            "size": f"{self.frame_shape[1]}x{self.frame_shape[0]}",
            "channels": self.n_channels,
            "dtype": str(self.dtype),
            "scale": dict(self.scale),
            "unit": self.unit,
        }
