"""Reading and writing focus stacks (no napari, no Qt).

``read_stack`` opens TIFF/OME-TIFF, folders or lists of JPEG/PNG/TIFF frames,
(with the ``formats`` extra) CZI/ND2/LIF and (with the ``raw`` extra) camera raw
files, lazily; ``read_raw`` also gives raw bursts as packed Bayer planes. ``write_image`` and
``write_stack`` save results atomically; ``atomic_write`` is the building block
other modules use for their own files (weights, checkpoints).
"""

from __future__ import annotations

from ._natural import natural_key, natural_sorted
from .raw import RAW_EXTENSIONS, list_raw, read_raw
from .readers import (
    BIOIO_EXTENSIONS,
    FRAME_EXTENSIONS,
    READERS,
    SUPPORTED_EXTENSIONS,
    TIFF_EXTENSIONS,
    MissingExtraError,
    UnsupportedFormatError,
    is_supported,
    list_frames,
    read_stack,
)
from .writers import WRITE_EXTENSIONS, atomic_write, write_image, write_stack

__all__ = [
    "read_stack",
    "read_raw",
    "list_raw",
    "RAW_EXTENSIONS",
    "is_supported",
    "list_frames",
    "write_image",
    "write_stack",
    "atomic_write",
    "natural_key",
    "natural_sorted",
    "SUPPORTED_EXTENSIONS",
    "TIFF_EXTENSIONS",
    "FRAME_EXTENSIONS",
    "BIOIO_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "READERS",
    "MissingExtraError",
    "UnsupportedFormatError",
]
