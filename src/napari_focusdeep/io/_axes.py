"""Map the axis letters a file reports onto the few layouts a :class:`Stack` allows.

Files describe their dimensions with letters (tifffile: ``ZCYX``, ``ZYXS``,
``QYX`` ...; bioio: always ``TCZYX``). A focus stack only needs to know which
axis is Z, which (if any) is time and which is colour, so everything is mapped
to ``ZYX``, ``ZYXC``, ``TZYX`` or ``TZYXC``. Where a file does not say which axis
is the focus axis we refuse with a message rather than guess.
"""

from __future__ import annotations

import dask.array as da

__all__ = ["to_stack_axes", "check_axes_override"]

_CHANNEL = "CS"  # tifffile: C = channel planes, S = samples per pixel (RGB)
_GENERIC = "QI"  # tifffile: Q = unknown, I = generic image sequence (plain multi-page)
_KNOWN = "TZYX" + _CHANNEL + _GENERIC


def check_axes_override(axes: str, ndim: int, what: str) -> str:
    """Validate an ``axes=`` string given by the user for data with ``ndim`` dimensions."""
    text = str(axes).upper()
    bad = sorted(set(text) - set("TZCYXS"))
    if bad:
        raise ValueError(f"axes={axes!r} uses unknown letters {bad}; use T, Z, C, Y and X")
    if len(set(text)) != len(text):
        raise ValueError(f"axes={axes!r} repeats a letter")
    if len(text) != ndim:
        raise ValueError(
            f"axes={axes!r} has {len(text)} letters but {what} has {ndim} dimensions "
            "(not counting those of length 1)"
        )
    return text


def to_stack_axes(
    data: da.Array, src_axes: str, what: str, *, override: str | None = None
) -> tuple[da.Array, str]:
    """Reorder ``data`` (axes ``src_axes``) into one of the :class:`Stack` layouts.

    Parameters
    ----------
    data : dask.array.Array
        The pixel data as the file stores it.
    src_axes : str
        One letter per dimension of ``data`` (tifffile or bioio letters).
    what : str
        How to name the source in error messages, e.g. ``"'stack.tif'"``.
    override : str, optional
        The user's ``axes=``: one letter (T, Z, C, Y, X) per dimension left
        after dropping singleton ones, replacing what the file says.

    Returns
    -------
    data, axes : dask.array.Array, str
        The reordered data, one frame per chunk, and its axes (``ZYX``,
        ``ZYXC``, ``TZYX`` or ``TZYXC``). Singleton axes are dropped; a
        single image gets a Z axis of length 1.

    Raises
    ------
    ValueError
        When the letters do not say which axis is Z (unknown letters, a
        generic axis next to a Z axis, both C and S, or time without Z).
    """
    src = src_axes.upper()
    if len(src) != data.ndim:
        raise ValueError(f"{what}: axes {src_axes!r} do not match shape {data.shape}")
    # tifffile names every axis it cannot identify Q, so "QQSYX" is an ordinary
    # 5-D file without metadata: refused below with a hint, not as malformed.
    if any(src.count(a) > 1 for a in src if a not in _GENERIC):
        raise ValueError(f"{what} has repeated axis letters {src_axes!r}")
    shape_text = "x".join(str(n) for n in data.shape)
    hint = "; pass axes= to say which axis is which, e.g. axes='ZYX' or 'ZYXC'"

    # Singleton axes carry no information whatever their letter (bioio always
    # reports T and C, tifffile keeps some): drop them, except the image plane.
    keep = [i for i, (a, n) in enumerate(zip(src, data.shape, strict=True)) if n != 1 or a in "YX"]
    if len(keep) != data.ndim:
        data = data[tuple(slice(None) if i in keep else 0 for i in range(data.ndim))]
        src = "".join(src[i] for i in keep)
    if override is not None:
        src = check_axes_override(override, data.ndim, what)

    if "Y" not in src or "X" not in src:
        raise ValueError(f"{what} has axes {src!r} without both Y and X{hint}")
    unknown = [a for a in src if a not in _KNOWN]
    if unknown:
        raise ValueError(
            f"{what} has axes {src!r} (shape {shape_text}); cannot tell whether "
            f"{', '.join(repr(a) for a in unknown)} is the focus (Z) axis{hint}"
        )
    channels = [a for a in src if a in _CHANNEL]
    if len(channels) > 1:
        sizes = ", ".join(f"{a}={data.shape[src.index(a)]}" for a in channels)
        guess = src.translate(str.maketrans({"C": "Z", "S": "C"}))
        suggestion = (
            f" (e.g. axes={guess!r} if the planes are the focus series)" if "Z" not in src else ""
        )
        raise ValueError(
            f"{what} has both channel planes and colour samples ({sizes}); "
            f"cannot tell which one is Z; pass axes= to say which axis is which{suggestion}"
        )
    generic = [a for a in src if a in _GENERIC]
    if generic and ("Z" in src or len(generic) > 1):
        raise ValueError(
            f"{what} has axes {src!r} (shape {shape_text}); cannot tell which is "
            f"the focus (Z) axis{hint}"
        )
    mapped = src.translate(str.maketrans({"S": "C", "Q": "Z", "I": "Z"}))
    if "T" in mapped and "Z" not in mapped:
        n_t = data.shape[mapped.index("T")]
        raise ValueError(
            f"{what} is a time series of {n_t} single images with no Z axis; if those "
            "images are a focus series, open it with axes= naming the time axis Z "
            f"(axes={mapped.replace('T', 'Z')!r})"
        )

    target = "".join(a for a in "TZYXC" if a in mapped)
    order = [mapped.index(a) for a in target]
    if order != list(range(len(order))):
        data = data.transpose(order)
    if "Z" not in target:
        data = data[None]  # one image: a stack of one frame
        target = "Z" + target
    chunks = tuple(1 if a in "TZ" else -1 for a in target)
    return data.rechunk(chunks), target
