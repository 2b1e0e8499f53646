"""A scratch copy of a stack for block-wise fusion, read back one region at a time.

Block-wise fusion reads every frame once per block. Reading a block of a lazily decoded
(JPEG, compressed TIFF) or warped frame redoes the whole frame's work, so each frame is
decoded and warped once and written to a scratch file.

The file is written and read with plain reads and writes, not a memory map: mapped
pages count towards the process's resident memory for as long as they stay mapped (a
mapped 7 GB stack grows the process by up to 7 GB), whereas pages read with ``read``
live in the kernel's page cache, which it gives back when memory is short.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np

__all__ = ["FrameSpill", "SpillSpaceError"]


class SpillSpaceError(OSError):
    """The scratch folder has too little free space for the copy of the stack."""


class FrameSpill:
    """``(Z, Y, X, C)`` frames in an anonymous scratch file.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X, C)``.
    dtype : numpy dtype
        Frames are stored as they are (8-bit frames take a quarter of float32).
    directory : str or Path, optional
        Where the file goes; the system's temporary folder (``TMPDIR``) by default.

    Raises
    ------
    SpillSpaceError
        When ``directory`` has less free space than the stack needs.

    Notes
    -----
    On POSIX the file is unlinked as soon as it is created, so even a killed process
    leaves no copy of the stack behind; elsewhere :meth:`close` removes it.
    """

    def __init__(self, shape: tuple[int, int, int, int], dtype: np.dtype, directory: str | Path | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        n, h, w, c = self.shape
        self._row_bytes = w * c * self.dtype.itemsize
        self._frame_bytes = h * self._row_bytes
        folder = Path(directory) if directory is not None else Path(tempfile.gettempdir())
        need = n * self._frame_bytes
        free = shutil.disk_usage(folder).free
        if need > free:
            raise SpillSpaceError(
                f"block-wise fusion keeps a copy of the registered stack on disk ({need / 1e9:.1f} GB) but "
                f"{folder} has {free / 1e9:.1f} GB free; set TMPDIR to a folder with more space"
            )
        fd, name = tempfile.mkstemp(prefix="focusdeep-", suffix=".frames", dir=folder)
        self.path = Path(name)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        try:
            self.path.unlink()
        except OSError:  # Windows keeps an open file; close() removes it
            pass

    def write(self, z: int, frame: np.ndarray) -> None:
        """Store frame ``z``, a ``(Y, X, C)`` array of the spill's dtype."""
        frame = np.ascontiguousarray(frame, dtype=self.dtype)
        if frame.shape != self.shape[1:]:
            raise ValueError(f"frame of shape {frame.shape} does not fit a spill of frames {self.shape[1:]}")
        view = memoryview(frame).cast("B")
        self._file.seek(z * self._frame_bytes)
        while view:  # raw writes may be short
            view = view[self._file.write(view):]

    def read(self, z: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Region ``[y0, y1) x [x0, x1)`` of frame ``z``, a new ``(Y, X, C)`` array."""
        _, h, w, c = self.shape
        out = np.empty((y1 - y0, x1 - x0, c), self.dtype)
        base = z * self._frame_bytes + y0 * self._row_bytes
        if x0 == 0 and x1 == w:  # whole rows are contiguous in the file
            self._read_into(out, base)
        else:
            skip = x0 * c * self.dtype.itemsize
            for i in range(y1 - y0):
                self._read_into(out[i], base + i * self._row_bytes + skip)
        return out

    def _read_into(self, array: np.ndarray, offset: int) -> None:
        view = memoryview(array).cast("B")
        self._file.seek(offset)
        while view:
            got = self._file.readinto(view)
            if not got:
                raise EOFError("the scratch copy of the stack is shorter than expected")
            view = view[got:]

    def close(self) -> None:
        """Close and remove the file."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> FrameSpill:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
