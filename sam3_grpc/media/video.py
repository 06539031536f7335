"""Probing videos before a session starts: container, frame count, fps and size.

Only headers (and the first and last frames, to prove they decode) are read, so a file that
declares huge frames or millions of frames is rejected before anything large is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

from sam3_grpc.domain import VideoInfo, VideoSource
from sam3_grpc.errors import InvalidArgument, Reason

FRAME_EXTENSIONS = (".jpg", ".jpeg")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".flv")


def list_frame_files(folder: Path) -> list[Path]:
    """JPEG frames of a folder, in file-name order (name them 00000.jpg, 00001.jpg, …)."""
    with os.scandir(folder) as entries:
        names = sorted(
            e.name for e in entries if e.is_file() and e.name.lower().endswith(FRAME_EXTENSIONS)
        )
    return [folder / name for name in names]


def _check_limits(info: VideoInfo, max_frames: int, max_pixels: int) -> None:
    if info.frame_count > max_frames:
        raise _invalid_video(
            f"video has {info.frame_count} frames; this server accepts at most {max_frames}: "
            "cut it into shorter clips"
        )
    if info.width * info.height > max_pixels:
        raise _invalid_video(
            f"video frames are {info.width}x{info.height}; this server accepts at most "
            f"{max_pixels} pixels per frame: downscale the video"
        )


def _probe_folder(folder: Path, max_frames: int, max_pixels: int) -> VideoSource:
    from PIL import Image, UnidentifiedImageError

    frames = list_frame_files(folder)
    if not frames:
        raise _invalid_video(
            "the directory holds no JPEG frames: give a video file or a folder of .jpg frames"
        )
    try:
        with Image.open(frames[0]) as first:  # header only
            width, height = first.size
    except (OSError, UnidentifiedImageError) as exc:
        raise _invalid_video("the first frame of the folder is not a readable JPEG") from exc
    info = VideoInfo(frame_count=len(frames), fps=0.0, width=width, height=height)
    _check_limits(info, max_frames, max_pixels)
    return VideoSource(path=str(folder), info=info, is_frame_folder=True)


def _probe_file(path: Path, max_frames: int, max_pixels: int) -> VideoSource:
    import cv2

    # CAP_FFMPEG only: the default backend list would treat '%d' in a name as an image sequence.
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise _invalid_video(
                "the file is not a readable video (supported: MP4, AVI, MOV, MKV, WEBM with "
                "codecs OpenCV's FFmpeg can decode); it may be truncated or corrupt"
            )
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if width <= 0 or height <= 0:
            raise _invalid_video("the video declares no frame size; it may be corrupt")
        if declared > 0:
            _check_limits(VideoInfo(declared, fps, width, height), max_frames, max_pixels)
        elif width * height > max_pixels:
            _check_limits(VideoInfo(0, fps, width, height), max_frames, max_pixels)
        ok, frame = capture.read()
        if not ok or frame is None:
            raise _invalid_video(
                "the video's first frame cannot be decoded; the file may be "
                "truncated or use an unsupported codec"
            )
        frame_count = declared
        if declared <= 0 or not _frame_decodes(capture, declared - 1):
            # The container's count is missing or wrong (a truncated file): count for real.
            frame_count = _count_frames(capture, max_frames)
        info = VideoInfo(
            frame_count=frame_count, fps=fps if fps < 1000 else 0.0, width=width, height=height
        )
        _check_limits(info, max_frames, max_pixels)
        return VideoSource(path=str(path), info=info, is_frame_folder=False)
    finally:
        capture.release()


def _frame_decodes(capture, index: int) -> bool:
    import cv2

    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    return bool(ok) and frame is not None


def _count_frames(capture, max_frames: int) -> int:
    import cv2

    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    count = 0
    while capture.grab():
        count += 1
        if count > max_frames:
            break
    if count == 0:
        raise _invalid_video("the video has no decodable frames")
    return count


def probe_video(path: Path, *, max_frames: int, max_pixels: int) -> VideoSource:
    """Describes a video file or a folder of JPEG frames, enforcing the server's limits."""
    if path.is_dir():
        return _probe_folder(path, max_frames, max_pixels)
    return _probe_file(path, max_frames, max_pixels)


def _invalid_video(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_VIDEO)
