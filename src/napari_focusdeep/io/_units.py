"""Spatial units as written by OME, ImageJ and our own TIFF writer.

Files spell the same unit many ways (``micron``, ``um``, ``\\u00B5m``, Greek mu);
napari and :class:`~napari_focusdeep.stack.Stack` want one spelling, so every
reader and writer goes through :func:`normalize_unit`.
"""

from __future__ import annotations

__all__ = ["normalize_unit", "convert_length", "imagej_unit", "LENGTH_IN_METRES"]

MICRON = "\u00b5m"  # MICRO SIGN, the spelling OME uses and Stack documents

#: Size of one unit in metres, for converting Z to the unit of X and Y.
LENGTH_IN_METRES: dict[str, float] = {
    "pm": 1e-12,
    "\u00c5": 1e-10,  # angstrom
    "nm": 1e-9,
    MICRON: 1e-6,
    "mm": 1e-3,
    "cm": 1e-2,
    "dm": 1e-1,
    "m": 1.0,
    "km": 1e3,
    "in": 0.0254,
    "ft": 0.3048,
    "mi": 1609.344,
}

_ALIASES = {
    "micron": MICRON,
    "microns": MICRON,
    "micrometer": MICRON,
    "micrometre": MICRON,
    "micrometers": MICRON,
    "micrometres": MICRON,
    "um": MICRON,
    "\u03bcm": MICRON,  # Greek small letter mu
    "\\u00b5m": MICRON,  # ImageJ writes the escape sequence literally
    "nanometer": "nm",
    "nanometre": "nm",
    "nanometers": "nm",
    "millimeter": "mm",
    "millimetre": "mm",
    "millimeters": "mm",
    "centimeter": "cm",
    "centimetre": "cm",
    "meter": "m",
    "metre": "m",
    "meters": "m",
    "inch": "in",
    "inches": "in",
    "angstrom": "\u00c5",
    "\u212b": "\u00c5",  # ANGSTROM SIGN
}

# Units that mean "not calibrated": the scale they come with is not physical.
_NOT_A_UNIT = {"", "pixel", "pixels", "px", "none", "unknown"}


def normalize_unit(unit: object) -> str | None:
    """One spelling per unit (``"µm"``, ``"nm"``, ...); None when uncalibrated.

    Unknown units are returned stripped but otherwise unchanged rather than
    dropped, so that nothing a file says is lost.
    """
    if unit is None:
        return None
    text = str(unit).strip()
    low = text.lower()
    if low in _NOT_A_UNIT:
        return None
    if low in _ALIASES:
        return _ALIASES[low]
    if text in LENGTH_IN_METRES:
        return text
    if low in LENGTH_IN_METRES:
        return low
    return text


def convert_length(value: float, from_unit: str | None, to_unit: str | None) -> float | None:
    """Convert ``value`` between length units; None when either unit is unknown."""
    a, b = normalize_unit(from_unit), normalize_unit(to_unit)
    if a == b:
        return float(value)
    if a in LENGTH_IN_METRES and b in LENGTH_IN_METRES:
        return float(value) * LENGTH_IN_METRES[a] / LENGTH_IN_METRES[b]
    return None


def imagej_unit(unit: str | None) -> str | None:
    """The unit spelled the way ImageJ's description field expects (ASCII)."""
    norm = normalize_unit(unit)
    if norm is None:
        return None
    if norm == MICRON:
        return "micron"  # ImageJ maps "micron" (and "um") to its own micro sign
    if norm == "\u00c5":
        return "angstrom"
    if norm == "in":
        return "inch"
    return norm if norm.isascii() else norm.encode("ascii", "replace").decode()
