"""Mask encodings and geometry: COCO RLE, PNG, tight boxes, areas and polygons.

Runs on the CPU worker threads, never on the device executor. pycocotools and OpenCV release the
GIL for the heavy loops.
"""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from sam3_grpc.types import Box


def encode_rle(mask: np.ndarray) -> str:
    """COCO compressed RLE counts (column-major), exactly as pycocotools produces them."""
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return rle["counts"].decode("ascii")


def decode_rle(counts: str, height: int, width: int) -> np.ndarray:
    return coco_mask.decode({"size": [height, width], "counts": counts.encode("ascii")}).astype(bool)


def encode_png(mask: np.ndarray) -> bytes:
    """8-bit single-channel PNG: 255 inside, 0 outside."""
    ok, buffer = cv2.imencode(".png", mask.astype(np.uint8) * 255,
                              [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError("not a PNG mask")
    return image > 127


def tight_box(mask: np.ndarray) -> Box | None:
    """The smallest box holding every mask pixel (exclusive max edges); None for an empty mask."""
    points = cv2.findNonZero(mask.astype(np.uint8, copy=False))
    if points is None:
        return None
    x, y, w, h = cv2.boundingRect(points)
    return Box(float(x), float(y), float(x + w), float(y + h))


def area(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def polygons(mask: np.ndarray, tolerance: float) -> list[np.ndarray]:
    """Outer contours of each connected part, simplified by Douglas-Peucker within `tolerance`
    pixels. Each polygon is an (N, 2) float array of x, y vertices."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    result = []
    for contour in contours:
        if tolerance > 0:
            contour = cv2.approxPolyDP(contour, tolerance, True)
        result.append(contour.reshape(-1, 2).astype(np.float32))
    return result
