"""The colours the synthetic engine knows, and how pixels are matched to them.

Colours are matched in OpenCV's 8-bit HSV with tolerances, so shapes drawn without anti-aliasing
in a lossless image come back pixel-exact and JPEG or MP4 copies come back within a pixel at the
edges. The canonical RGB of each colour is in `COLOURS`; the matching bands are in `_RANGES`.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

from sam3_grpc.errors import InvalidArgument, Reason

# Canonical RGB of every colour the engine knows; draw with these and the masks are exact.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "purple": (128, 0, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
}
_ALIASES = {"grey": "gray"}

# Tolerances, in OpenCV's 8-bit HSV (H in [0, 180), S and V in [0, 256)). Chromatic colours need
# S >= 80 and V >= 90 and a hue in their band; white, gray and black need S < 60 (black: any S)
# and a value band. The classes are disjoint, so a pixel has at most one colour.
CHROMA_S_MIN = 80
CHROMA_V_MIN = 90
ACHROMATIC_S_MAX = 59
WHITE_V_MIN = 180
BLACK_V_MAX = 69
_HUE_BANDS: dict[str, tuple[tuple[int, int], ...]] = {
    "red": ((0, 7), (165, 179)),
    "orange": ((8, 22),),
    "yellow": ((23, 44),),
    "green": ((45, 74),),
    "cyan": ((75, 104),),
    "blue": ((105, 127),),
    "purple": ((128, 142),),
    "magenta": ((143, 164),),
}
# Inclusive (lower, upper) HSV bounds for cv2.inRange, one or two per colour.
_RANGES: dict[str, tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]] = {
    **{
        name: tuple(((lo, CHROMA_S_MIN, CHROMA_V_MIN), (hi, 255, 255)) for lo, hi in bands)
        for name, bands in _HUE_BANDS.items()
    },
    "white": (((0, 0, WHITE_V_MIN), (179, ACHROMATIC_S_MAX, 255)),),
    "gray": (((0, 0, BLACK_V_MAX + 1), (179, ACHROMATIC_S_MAX, WHITE_V_MIN - 1)),),
    "black": (((0, 0, 0), (179, 255, BLACK_V_MAX)),),
}
_RANGE_ARRAYS = {
    name: tuple((np.array(lo, np.uint8), np.array(hi, np.uint8)) for lo, hi in ranges)
    for name, ranges in _RANGES.items()
}


def colour_from_text(text: str) -> str:
    """The first known colour word of a phrase ("a Red car" → "red"); InvalidArgument if none."""
    for word in re.findall(r"[a-z]+", text.lower()):
        word = _ALIASES.get(word, word)
        if word in COLOURS:
            return word
    known = ", ".join([*COLOURS, *_ALIASES])
    raise InvalidArgument(
        f"the synthetic engine segments by colour; the text {text!r} names none of: {known}",
        reason=Reason.UNSUPPORTED_PROMPT,
        field="text",
    )


def colour_mask(hsv: np.ndarray, colour: str) -> np.ndarray:
    """uint8 mask (255 where the HSV pixel has `colour`) of an (H, W, 3) HSV array."""
    ranges = _RANGE_ARRAYS[colour]
    mask = cv2.inRange(hsv, *ranges[0])
    for lo, hi in ranges[1:]:
        mask = cv2.bitwise_or(mask, cv2.inRange(hsv, lo, hi))
    return mask


def dominant_colour(hsv: np.ndarray) -> str | None:
    """The known colour covering most pixels of an HSV array; None when none covers any."""
    if hsv.size == 0:
        return None
    counts = {name: cv2.countNonZero(colour_mask(hsv, name)) for name in COLOURS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else None
