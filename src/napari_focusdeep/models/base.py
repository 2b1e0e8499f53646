"""What every fusion network here shares: its config and the streaming interface.

Every model maps a burst ``(B, N, C, H, W)`` float in [0, 1] to an image
``(B, C_out, H', W')`` with ``forward`` (training), and can also take the burst
one frame at a time (inference), so memory does not grow with the number of
frames::

    stream = model.start((B, C, H, W))   # or model.start(...); model.push(...)
    for frame in frames:                 # (B, C, H, W) tensors, in Z order
        stream.push(frame)
    image = stream.finish()

Fixed-length models (FocusDeep, UNet) take exactly ``n_frames`` pushes
(``push(frame, repeat=k)`` counts ``k`` times); :func:`resample_frames` maps
another burst length onto ``n_frames`` slots.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor, nn

__all__ = ["BurstModel", "Stream", "resample_frames"]


def resample_frames(n_in: int, n: int) -> np.ndarray:
    """Indices of the ``n_in`` input frames that fill a model's ``n`` frame slots.

    Evenly spaced and in order, first and last frame always included: a longer
    burst is subsampled, a shorter one has its frames repeated (every input frame
    is then used at least once).

    Examples
    --------
    >>> resample_frames(5, 3).tolist()
    [0, 2, 4]
    >>> resample_frames(2, 4).tolist()
    [0, 0, 1, 1]
    """
    n_in, n = int(n_in), int(n)
    if n_in < 1 or n < 1:
        raise ValueError(f"need at least one frame and one slot, got n_in={n_in}, n={n}")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    return np.rint(np.linspace(0, n_in - 1, n)).astype(np.int64)


class Stream:
    """One burst being fused frame by frame; made by :meth:`BurstModel.start`."""

    def push(self, frame: Tensor, repeat: int = 1) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class BurstModel(nn.Module):
    """Base class: ``architecture`` name, constructor ``config`` and streaming.

    Subclasses set ``architecture``, store their constructor keyword arguments in
    ``self.config`` (what :mod:`~napari_focusdeep.models.weights` saves beside the
    weights) and implement ``forward``, ``stream`` and ``offset_reach``.
    """

    architecture: str = ""
    #: Block origins must be multiples of this many input pixels (strided levels).
    multiple: int = 1

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}
        self._stream: Stream | None = None

    @property
    def n_frames(self) -> int | None:
        """Frames the model takes, or None for any number."""
        return self.config.get("n_frames")

    @property
    def in_channels(self) -> int:
        return int(self.config.get("in_channels", 3))

    @property
    def out_channels(self) -> int:
        return int(self.config.get("out_channels", 3))

    def offset_reach(self) -> float:
        """Extra receptive-field reach (input pixels) from learned deformations."""
        return 0.0

    def stream(self, shape: tuple[int, int, int, int]) -> Stream:  # pragma: no cover - interface
        raise NotImplementedError

    # Convenience: one implicit stream per model (the fusion methods use stream()).
    def start(self, shape: tuple[int, int, int, int], **kwargs: Any) -> Stream:
        """Begin fusing a burst of frames of ``shape = (B, C, H, W)`` (``kwargs``: see ``stream``)."""
        self._stream = self.stream(tuple(int(s) for s in shape), **kwargs)
        return self._stream

    def push(self, frame: Tensor, repeat: int = 1) -> None:
        """Add the next frame (``repeat`` times for fixed-length models)."""
        if self._stream is None:
            raise RuntimeError("call start(shape) before push()")
        self._stream.push(frame, repeat)

    def finish(self) -> Tensor:
        """The fused image of the frames pushed since :meth:`start`."""
        if self._stream is None:
            raise RuntimeError("call start(shape) before finish()")
        stream, self._stream = self._stream, None
        return stream.finish()

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


def check_frame(frame: Tensor, shape: tuple[int, int, int, int]) -> None:
    """Refuse a frame whose shape differs from the one the stream was started with."""
    if tuple(frame.shape) != tuple(shape):
        raise ValueError(f"frame has shape {tuple(frame.shape)}, the stream was started with {tuple(shape)}")
