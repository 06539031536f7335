"""Test helpers: drawing images with known masks, encoding them, decoding replies."""

from __future__ import annotations

import threading

import cv2
import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sam3_grpc.media.masks import decode_png, decode_rle
from sam3_grpc.v1 import common_pb2

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)


def blank(width: int = 160, height: int = 120) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def draw_rect(image: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour) -> np.ndarray:
    """Fills pixels x0..x1-1, y0..y1-1 and returns that mask."""
    image[y0:y1, x0:x1] = colour
    mask = np.zeros(image.shape[:2], bool)
    mask[y0:y1, x0:x1] = True
    return mask


def draw_disc(image: np.ndarray, cx: int, cy: int, r: int, colour) -> np.ndarray:
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.circle(mask, (cx, cy), r, 1, -1, lineType=cv2.LINE_8)
    image[mask.astype(bool)] = colour
    return mask.astype(bool)


def encode(image: np.ndarray, ext: str = ".png", **params) -> bytes:
    """Encodes an RGB image (OpenCV wants BGR)."""
    flags = [cv2.IMWRITE_JPEG_QUALITY, params["quality"]] if "quality" in params else []
    ok, buffer = cv2.imencode(ext, np.ascontiguousarray(image[:, :, ::-1]), flags)
    assert ok
    return buffer.tobytes()


def mask_of(detection: common_pb2.Detection) -> np.ndarray:
    mask = detection.mask
    if mask.WhichOneof("data") == "rle_counts":
        return decode_rle(mask.rle_counts, mask.height, mask.width)
    return decode_png(mask.png)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def retry_info(error: grpc.RpcError) -> error_details_pb2.RetryInfo | None:
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    return None


class Gate:
    """An engine `before_call` hook that holds chosen calls until released."""

    def __init__(
        self, names=("encode_image", "predict", "add_prompt", "propagate_step", "start_session")
    ) -> None:
        self.names = set(names)
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)
        self.seen: list[str] = []

    def __call__(self, name: str) -> None:
        self.seen.append(name)
        if name in self.names:
            self.entered.release()
            assert self.open.wait(60), "gate never released"

    def wait_entered(self, timeout: float = 30.0) -> None:
        assert self.entered.acquire(timeout=timeout), "engine was never entered"

    def release(self) -> None:
        self.open.set()


def disc_clip(
    frames: int = 12,
    width: int = 160,
    height: int = 120,
    radius: int = 18,
    colour=RED,
    step: int = 6,
):
    """RGB frames of a disc moving right by `step` pixels a frame, and each frame's mask."""
    images, masks = [], []
    for i in range(frames):
        image = blank(width, height)
        masks.append(draw_disc(image, radius + 4 + step * i, height // 2, radius, colour))
        images.append(image)
    return images, masks


def write_video(path, images, fourcc: str = "FFV1", fps: float = 10.0) -> str:
    """Writes RGB frames with OpenCV (FFV1 in .avi is lossless; mp4v in .mp4 is lossy)."""
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened()
    for image in images:
        writer.write(np.ascontiguousarray(image[:, :, ::-1]))
    writer.release()
    return str(path)


def write_frame_folder(folder, images, quality: int = 95) -> str:
    import os

    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as handle:
            handle.write(encode(image, ".jpg", quality=quality))
    return str(folder)
