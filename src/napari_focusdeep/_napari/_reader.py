"""napari reader: open a focus stack (file, folder of frames, or several frames) lazily.

napari calls :func:`get_reader` for every path that matches the manifest's patterns;
it must answer fast and only say yes to what :func:`napari_focusdeep.io.read_stack`
can read, so it asks the cheap :func:`napari_focusdeep.io.is_supported`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]
PathOrPaths = Union[PathLike, Sequence[PathLike]]

__all__ = ["get_reader", "read_focus_stack"]


def _as_list(path: PathOrPaths) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        return [os.fspath(path)]
    return [os.fspath(p) for p in path]


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[tuple[Any, dict, str]]] | None:
    """Return :func:`read_focus_stack` if FocusDeep can read ``path``, else None.

    ``path`` is a file, a folder, or a list of files (napari's "Open Files as Stack",
    or several files dropped with Shift held), which become one stack.
    """
    paths = _as_list(path)
    if not paths:
        return None
    from .. import io as fd_io

    try:
        if not all(fd_io.is_supported(p) for p in paths):
            return None
    except Exception:  # a reader plugin must never raise while napari asks around
        return None
    return read_focus_stack


def read_focus_stack(path: PathOrPaths) -> list[tuple[Any, dict, str]]:
    """Read ``path`` as one lazy stack and return it as napari layer data.

    The pixels stay on disk (a dask array) until napari shows a frame or Fuse
    reads it. Axes, pixel size, unit and source paths go to
    ``layer.metadata["focusdeep"]`` so fusion recovers the z-step and unit.
    """
    from ..io import read_stack
    from ._layers import stack_to_layer_data

    paths = _as_list(path)
    stack = read_stack(paths[0] if len(paths) == 1 else paths)
    return [stack_to_layer_data(stack)]
