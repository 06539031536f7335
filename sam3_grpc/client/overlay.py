"""Drawing detections over an image: mask tints, box outlines and labels (needs OpenCV).

The drawing is predictable, so tests can check it pixel by pixel:
- a mask is tinted strictly inside itself: every mask pixel is blended half-way towards the
  object's colour, chosen from a palette to differ clearly from the pixels under the mask;
- the box outline is one pixel wide and lies just outside the tight box (so never on the mask);
- the label sits in a filled rectangle directly above the outline (inside the top of the box
  when there is no room above), at most LABEL_HEIGHT rows tall, shifted left to stay in the image.
Nothing else is changed. Colours are in the channel order of the array drawn on (RGB or BGR:
pass `bgr=True` for OpenCV frames).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# Distinct, saturated RGB colours, visually far apart.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56),
    (50, 205, 50),
    (30, 144, 255),
    (255, 215, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 140, 0),
    (148, 0, 211),
    (0, 128, 128),
    (255, 105, 180),
    (128, 128, 0),
    (0, 0, 139),
)
ALPHA = 0.5
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.4
LABEL_PADDING = 2
LABEL_HEIGHT = 18  # rows a label takes, padding included
_MIN_CONTRAST = 96  # the tint colour differs from the mean masked pixel by this in some channel


@dataclass
class Item:
    """One thing to draw: a bool mask (H, W) or None, a box (x_min, y_min, x_max, y_max) with
    exclusive max edges, a label text, and a palette index."""

    mask: np.ndarray | None
    box: Sequence[float]
    label: str
    index: int


def colour_for(index: int, under: np.ndarray | None = None) -> tuple[int, int, int]:
    """Palette colour `index`, or the next one that contrasts with the mean pixel `under`."""
    for step in range(len(PALETTE)):
        colour = PALETTE[(index + step) % len(PALETTE)]
        if under is None or np.abs(np.asarray(colour, float) - under).max() >= _MIN_CONTRAST:
            return colour
    return PALETTE[index % len(PALETTE)]


def draw(image: np.ndarray, items: Sequence[Item], *, bgr: bool = False) -> np.ndarray:
    """A copy of `image` (H, W, 3 uint8) with every item drawn; see the module docstring."""
    out = image.copy()
    height, width = out.shape[:2]
    colours = []
    for item in items:  # tints first, so outlines and labels stay crisp on top
        mask = item.mask
        under = None
        if mask is not None and mask.any():
            under = image[mask].reshape(-1, 3).mean(0)
            if bgr:
                under = under[::-1]
        colour = colour_for(item.index, under)  # RGB
        colours.append(colour)
        if mask is not None and mask.any():
            tint = np.asarray(colour[::-1] if bgr else colour, np.float32)
            pixels = out[mask].astype(np.float32)
            out[mask] = np.clip(np.rint((1 - ALPHA) * pixels + ALPHA * tint), 0, 255).astype(
                np.uint8
            )
    for item, rgb in zip(items, colours, strict=True):
        x0, y0, x1, y1 = (round(v) for v in item.box)
        if x1 <= x0 or y1 <= y0:
            continue
        colour = rgb[::-1] if bgr else rgb
        # One pixel outside the tight box: columns x0-1 and x1, rows y0-1 and y1.
        cv2.rectangle(out, (x0 - 1, y0 - 1), (x1, y1), colour, 1, lineType=cv2.LINE_8)
        luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
        ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        _draw_label(out, item.label, x0 - 1, y0 - 1, colour, ink, width, height)
    return out


def _draw_label(
    out: np.ndarray, text: str, left: int, outline_top: int, colour, ink, width: int, height: int
) -> None:
    if not text:
        return
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, FONT_SCALE, 1)
    box_w = text_w + 2 * LABEL_PADDING
    box_h = min(LABEL_HEIGHT, text_h + baseline + 2 * LABEL_PADDING)
    if outline_top - box_h >= 0:
        top = outline_top - box_h  # just above the outline
    else:
        top = max(0, min(outline_top + 1, height - box_h))  # inside the top of the box
    left = max(0, min(left, width - box_w))
    cv2.rectangle(out, (left, top), (left + box_w - 1, top + box_h - 1), colour, -1)
    cv2.putText(
        out,
        text,
        (left + LABEL_PADDING, top + LABEL_PADDING + text_h),
        FONT,
        FONT_SCALE,
        ink,
        1,
        lineType=cv2.LINE_AA,
    )


# ----- files ---------------------------------------------------------------------------------
def write_image_overlay(data: bytes, result: Any, path: str) -> str:
    """Writes the overlay PNG; returns a note when it cannot (else "")."""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # as the server decodes it
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.shape[:2] != (result.height, result.width):
        return "OpenCV cannot decode the image as the server did; no overlay written"
    items: list[Item] = []
    for r in result.results:
        for d in r:
            items.append(
                Item(
                    d.mask if d.has_mask else None,
                    d.box,
                    f"{r.prompt.label} {d.score:.2f}",
                    len(items),
                )
            )
    drawn = draw(image, items, bgr=True)
    if not cv2.imwrite(path, drawn):
        raise OSError(f"cannot write {path}")
    return ""


def write_video_overlay(
    source: str, path: str, fps: float, labels: dict[int, str], frames: dict[int, list[dict]]
) -> int:
    """Re-reads the local video and writes every frame, drawn over where there are results
    (`frames`: frame index → the objects of the track command's JSON); returns the number of
    frames written (that of the input)."""
    from pycocotools import mask as coco_mask

    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise OSError(f"OpenCV cannot read {source} to draw the overlay video")
    fps = fps or capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    colour_index = {oid: i for i, oid in enumerate(sorted(labels))}
    written = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            if writer is None:
                height, width = image.shape[:2]
                writer = cv2.VideoWriter(
                    path, cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height)
                )
                if not writer.isOpened():
                    raise OSError(f"OpenCV cannot write {path} (mp4v codec)")
            items = []
            for obj in frames.get(written, ()):
                segmentation = obj["segmentation"]
                mask = None
                if tuple(segmentation["size"]) == image.shape[:2]:
                    mask = coco_mask.decode(
                        {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
                    ).astype(bool)
                x, y, w, h = obj["bbox"]
                oid = obj["object_id"]
                items.append(
                    Item(
                        mask,
                        (x, y, x + w, y + h),
                        f"{labels.get(oid, '')} #{oid}".strip(),
                        colour_index.get(oid, oid),
                    )
                )
            writer.write(draw(image, items, bgr=True) if items else image)
            written += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return written
