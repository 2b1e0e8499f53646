"""Natural ("human") sort order for frame file names.

Cameras and acquisition software number frames without zero padding, so a plain
string sort would put ``frame_10`` before ``frame_2`` and scramble the Z order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["natural_key", "natural_sorted"]

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str | Path) -> tuple:
    """Sort key that compares runs of digits as numbers, the rest case-insensitively.

    Parameters
    ----------
    name : str or Path
        A file name or path; for a path only the final component is used.

    Returns
    -------
    tuple
        ``(parts, name)``: ``parts`` alternates text and ``(number, digits)``
        pairs; the full name breaks ties (``img01`` vs ``img1``) so the order
        is total and repeatable.

    Examples
    --------
    >>> sorted(["frame_10.png", "frame_2.png"], key=natural_key)
    ['frame_2.png', 'frame_10.png']
    """
    text = name.name if isinstance(name, Path) else str(name)
    parts: list = []
    for i, piece in enumerate(_DIGITS.split(text)):
        if i % 2:
            # (value, length): "01" and "1" are equal numbers; the length orders them stably
            parts.append((1, int(piece), len(piece)))
        elif piece:
            parts.append((0, piece.casefold(), 0))
    return tuple(parts), text


def natural_sorted(items: Iterable[str | Path]) -> list:
    """Return ``items`` sorted in natural order (see :func:`natural_key`)."""
    return sorted(items, key=natural_key)
