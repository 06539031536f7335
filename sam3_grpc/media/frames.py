"""Videos as lazy, frame-accurate sources of frames; the one place that reads video.

`open_frames` is the probe: it opens a container file or a folder of frame images inside the
server's limits, and returns a `FrameSource` whose `read(k)` decodes frame k on demand. Nothing
is decoded ahead of need, so opening a video costs the same whatever its length.

Containers (MP4, MOV, MKV, WEBM, AVI, FLV) are read with PyAV (FFmpeg). Opening one demuxes it
once without decoding: the packets give the exact frame count (a header that under-declares its
frames cannot smuggle more past --max-frames: demuxing stops there), every frame's timestamp and
which frames are key frames. Frame k is then found exactly: a sequential read decodes the next
frame; any other read seeks to the last key frame at or before k and decodes forward to k's
timestamp, so random access costs at most one group of pictures (limited by --max-gop-frames).
The decoder refuses any frame larger than the probed size (FFmpeg's max_pixels), so a stream
whose frames are secretly larger than its header says is never decoded at full size.

Folders hold one image per frame (JPEG, PNG, ...), ordered as sam3 orders them: by the number
in the name when every name is "<number>.<ext>", else by name. Each frame file is opened through
the folder's descriptor and checked like any media file (regular file, inside a media root; see
`paths.py`), and its header must give the probed size before it is decoded.

`FrameWindow` keeps a bounded number of recently read (and, for an engine, prepared) frames, so
a propagation walking forward or backward decodes each frame about once, and `prefetch` lets the
server decode the next frames on its CPU pool while the device works on the current one.
"""

from __future__ import annotations

import abc
import bisect
import collections
import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from sam3_grpc.domain import VideoInfo
from sam3_grpc.errors import DataLoss, FailedPrecondition, InvalidArgument, Reason, ServiceError
from sam3_grpc.media.images import ImageLimits, decode_image, image_size
from sam3_grpc.media.paths import MediaHandle, open_trusted

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".flv")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tiff", ".webp")  # as sam3's io_utils
SUPPORTED = "MP4, MOV, MKV, WEBM, AVI or FLV (codecs FFmpeg decodes), or a folder of images"

T = TypeVar("T")

# passed(index, pixels): a frame decoded on the way to the one asked for; pixels() converts it to
# RGB, and is only worth calling for a frame the caller keeps.
Passed = Callable[[int, Callable[[], np.ndarray]], None]


@dataclass(frozen=True)
class FrameLimits:
    """What a video may cost: frames, pixels per frame, frames between key frames, and the
    bytes of one frame image in a folder."""

    max_frames: int
    max_pixels: int
    max_gop_frames: int = 600
    max_frame_file_bytes: int = 64 << 20


def invalid_video(message: str, **metadata: object) -> InvalidArgument:
    return InvalidArgument(message, reason=Reason.INVALID_VIDEO, metadata=metadata)


def unreadable_frame(index: int, why: str) -> DataLoss:
    return DataLoss(
        f"frame {index} of the video cannot be decoded ({why}); the frames before it can be "
        "tracked: propagate with max_frames, or repair the file",
        reason=Reason.FRAME_UNREADABLE,
        metadata={"frame_index": index},
    )


def _decoder_pixel_limit(pixels: int) -> int:
    """FFmpeg's max_pixels for frames of `pixels`: decoders count aligned, padded buffers
    (several times the frame for tiny frames), hence the margin; exact sizes are checked
    after decoding."""
    side = int(pixels**0.5)
    return min(2**31 - 1, max(2 * pixels, (side + 256) ** 2))


def _check_size(width: int, height: int, limits: FrameLimits) -> None:
    if width <= 0 or height <= 0:
        raise invalid_video(
            "the video's frame size cannot be read without decoding frames larger than this "
            f"server accepts ({limits.max_pixels} pixels per frame); it may also be corrupt",
            limit=limits.max_pixels,
        )
    if width * height > limits.max_pixels:
        raise invalid_video(
            f"video frames are {width}x{height}; this server accepts at most "
            f"{limits.max_pixels} pixels per frame: downscale the video",
            limit=limits.max_pixels,
        )


def _too_many_frames(limits: FrameLimits) -> InvalidArgument:
    return invalid_video(
        f"the video has more than {limits.max_frames} frames, this server's limit: cut it into "
        "shorter clips",
        limit=limits.max_frames,
    )


class FrameSource(abc.ABC):
    """A probed video: its description and frame-accurate, thread-safe random access."""

    info: VideoInfo

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one read at a time; close waits for the read in flight
        self._closed = False
        self.decoded = 0  # frames decoded so far (tests and benchmarks count them)

    @property
    def frame_count(self) -> int:
        return self.info.frame_count

    def read(self, index: int, passed: Passed | None = None) -> Any:
        """Frame `index` as an RGB uint8 array (H, W, 3). Frames decoded on the way to it (after
        a seek) are offered to `passed` (see `Passed`), so a caller walking backwards can keep
        them. DataLoss when the frame cannot be decoded."""
        if not 0 <= index < self.info.frame_count:
            raise InvalidArgument(
                f"frame {index} is outside the video's {self.info.frame_count} frames",
                reason=Reason.FRAME_OUT_OF_RANGE,
            )
        with self._lock:
            if self._closed:
                raise FailedPrecondition(
                    "the session's video is closed", reason=Reason.SESSION_NOT_FOUND
                )
            return self._read(index, passed)

    @abc.abstractmethod
    def _read(self, index: int, passed: Passed | None) -> np.ndarray:
        """Called under the lock."""

    def close(self) -> None:
        """Releases the file(s), once no read is in flight (a decoder must never lose its
        stream mid-frame); idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    @abc.abstractmethod
    def _release(self) -> None:
        """Called once, under the lock."""


class ContainerFrames(FrameSource):
    """A video file, read with PyAV (see the module docstring)."""

    def __init__(self, handle: MediaHandle, limits: FrameLimits) -> None:
        super().__init__()
        import av

        self._handle: MediaHandle | None = handle
        try:
            # FFmpeg decodes a frame or two while probing the streams: even then it may not
            # decode one much larger than the server accepts.
            self._container = av.open(
                handle.proc_path,
                metadata_errors="ignore",
                options={"max_pixels": str(_decoder_pixel_limit(limits.max_pixels))},
            )
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise invalid_video(
                f"the file is not a readable video (supported: {SUPPORTED}); it may be "
                "truncated or corrupt"
            ) from exc
        try:
            self._open_stream(limits)
        except BaseException:
            self.close()
            raise

    def _open_stream(self, limits: FrameLimits) -> None:
        if not self._container.streams.video:
            raise invalid_video("the file holds no video stream")
        stream = self._container.streams.video[0]
        self._stream = stream
        context = stream.codec_context
        width, height = int(context.width or 0), int(context.height or 0)
        _check_size(width, height, limits)
        # One decoding thread: the server decodes many streams at once on its CPU pool. And no
        # frame much larger than the probed size is ever decoded (FFmpeg's max_pixels; decoders
        # count aligned, padded sizes, hence the margin; read() refuses any other size).
        context.thread_count = 1
        context.options = {"max_pixels": str(_decoder_pixel_limit(width * height))}
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()
        timestamps, keys = self._index(limits)
        if not timestamps:
            raise invalid_video("the video has no frames")
        self._pts = sorted(timestamps)
        if len(set(self._pts)) != len(self._pts):
            raise invalid_video("the video's frames have duplicate timestamps; re-encode it")
        order = {pts: i for i, pts in enumerate(self._pts)}
        self._key_indices = sorted(order[pts] for pts in keys)
        if not self._key_indices or self._key_indices[0] != 0:
            self._key_indices.insert(0, 0)
        gaps = np.diff([*self._key_indices, len(self._pts)])
        if gaps.max() > limits.max_gop_frames:
            raise invalid_video(
                f"the video has {int(gaps.max())} frames between key frames; this server seeks "
                f"by key frame and accepts at most {limits.max_gop_frames}: re-encode it with "
                f"key frames more often (e.g. ffmpeg -g 250)",
                limit=limits.max_gop_frames,
            )
        rate = stream.average_rate or stream.guessed_rate or 0
        fps = float(rate) if rate else 0.0
        self.info = VideoInfo(len(self._pts), fps if 0 < fps < 1000 else 0.0, width, height)
        self._decoded: Iterator[Any] | None = None
        self._pending: Any = None  # a frame decoded while positioning, not consumed yet
        self._valid_from = 0  # frames before the key frame sought may lack their references
        self._next = -1  # the index the current decoder yields next (-1: none)
        try:
            self._read(0, None)  # prove the first frame decodes
        except DataLoss as exc:
            raise invalid_video(
                f"the video's first frame cannot be decoded; the file may be truncated or use an "
                f"unsupported codec (supported: {SUPPORTED})"
            ) from exc
        self._trim_undecodable_tail()

    def _trim_undecodable_tail(self) -> None:
        """A file cut short mid-frame keeps the frames that decode: the last group of pictures
        is decoded once (at most --max-gop-frames frames, whatever the video's length) and the
        frame count ends at its last good frame."""
        last = len(self._pts) - 1
        decoded = -1

        def seen(position: int, pixels: Callable[[], np.ndarray]) -> None:
            nonlocal decoded
            decoded = max(decoded, position)

        try:
            self._read(last, seen)
            return
        except DataLoss:
            pass
        if decoded < self._key_before(last):  # not even the last key frame decodes
            decoded = self._key_before(last) - 1
        self._pts = self._pts[: decoded + 1]
        self._key_indices = [k for k in self._key_indices if k <= decoded]
        self._next = -1
        self.info = dataclasses.replace(self.info, frame_count=len(self._pts))
        logger.debug("the video's last decodable frame is %d", decoded)

    def _index(self, limits: FrameLimits) -> tuple[list[int], list[int]]:
        """Timestamps of every frame and of the key frames, by demuxing (no decoding)."""
        import av

        timestamps: list[int] = []
        keys: list[int] = []
        self._key_dts: dict[int, int] = {}  # a key frame's pts -> its decoding timestamp
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:
                    continue  # end-of-stream marker
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    raise invalid_video("the video's frames carry no timestamps; re-encode it")
                timestamps.append(pts)
                if packet.is_keyframe:
                    keys.append(pts)
                    self._key_dts[pts] = packet.dts if packet.dts is not None else pts
                if len(timestamps) > limits.max_frames:
                    raise _too_many_frames(limits)
        except av.FFmpegError:
            # A file truncated mid-stream: the packets before the damage still count.
            logger.debug("demuxing stopped early at a damaged packet", exc_info=True)
        return timestamps, keys

    @property
    def key_frames(self) -> list[int]:
        """Indices of the key frames (random access decodes from the one before a frame)."""
        return list(self._key_indices)

    def _key_before(self, index: int) -> int:
        return self._key_indices[bisect.bisect_right(self._key_indices, index) - 1]

    def _seek(self, timestamp: int) -> Iterator[Any]:
        import av

        try:
            self._container.seek(timestamp, stream=self._stream, backward=True)
        except av.FFmpegError as exc:
            raise unreadable_frame(self._pts.index(timestamp), "seeking failed") from exc
        # Frames the decoder still holds from before the seek (reordering delay) must not come
        # out after it.
        self._stream.codec_context.flush_buffers()
        self._decoded = decoded = self._container.decode(self._stream)
        return decoded

    def _restart_at(self, index: int) -> None:
        """Positions the decoder at or before the key frame of `index`. Demuxers seek by
        presentation or by decoding timestamps; a seek that overshoots is retried on the key
        frame's decoding timestamp, then from the start of the stream."""
        import av

        key = self._key_before(index)
        key_pts = self._pts[key]
        for timestamp in (key_pts, self._key_dts.get(key_pts, key_pts), self._pts[0]):
            try:
                first = next(self._seek(timestamp), None)
            except av.FFmpegError:
                continue
            if first is not None:
                self.decoded += 1
            if first is not None and first.pts is not None and first.pts <= key_pts:
                self._pending = first
                self._valid_from = key
                return
        raise unreadable_frame(index, "seeking to its key frame failed")

    def _next_frame(self) -> Any:
        """The decoder's next frame (first the one _restart_at looked at), or None at the end."""
        if self._pending is not None:  # already counted by _restart_at
            frame, self._pending = self._pending, None
            return frame
        if self._decoded is None:
            return None
        frame = next(self._decoded, None)
        if frame is not None:
            self.decoded += 1
        return frame

    def _read(self, index: int, passed: Passed | None) -> np.ndarray:
        import av

        # Decode on from where the decoder is when that is no longer than from a key frame.
        if (
            self._decoded is None
            or not 0 <= self._next <= index
            or self._key_before(index) > self._next
        ):
            self._restart_at(index)
        target = self._pts[index]
        try:
            while (frame := self._next_frame()) is not None:
                if frame.width != self.info.width or frame.height != self.info.height:
                    self._next = -1
                    raise unreadable_frame(
                        index,
                        f"the stream changes to {frame.width}x{frame.height} frames, not the "
                        f"video's {self.info.width}x{self.info.height}",
                    )
                pts = frame.pts
                if pts is None or pts > target:
                    break
                position = bisect.bisect_left(self._pts, pts)
                self._next = position + 1
                if pts == target:
                    return self._rgb(frame)
                if passed is not None and position >= self._valid_from:
                    passed(position, functools.partial(self._rgb, frame))
        except av.FFmpegError as exc:
            self._next = -1
            raise unreadable_frame(index, "the decoder failed") from exc
        self._next = -1
        raise unreadable_frame(index, "it is missing from the stream")

    def _rgb(self, frame: Any) -> np.ndarray:
        """RGB pixels of a decoded frame, converted as OpenCV's FFmpeg reader converts them
        (bicubic swscale; sam3's own MP4 loader reads through OpenCV), with one converter kept
        for the whole video (a new one per frame costs more than the conversion)."""
        converted = self._reformatter.reformat(frame, format="rgb24", interpolation="BICUBIC")
        return converted.to_ndarray()

    def _release(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            del self._container
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _frame_order(names: Iterable[str]) -> list[str]:
    """sam3's order: by the number in "<number>.<ext>" names, else lexicographic."""
    names = list(names)
    try:
        return sorted(names, key=lambda n: int(os.path.splitext(n)[0]))
    except ValueError:
        return sorted(names)


class FolderFrames(FrameSource):
    """A folder of frame images inside a media root (see the module docstring)."""

    def __init__(self, folder: MediaHandle, limits: FrameLimits) -> None:
        super().__init__()
        self._folder = folder
        self._limits = limits
        try:
            with os.scandir(folder.fd) as entries:
                names = [
                    e.name
                    for e in entries
                    if os.path.splitext(e.name)[1].lower() in FRAME_EXTENSIONS
                ]
            if len(names) > limits.max_frames:
                raise _too_many_frames(limits)
            if not names:
                raise invalid_video(
                    "the folder holds no frame images (.jpg, .jpeg, .png, .bmp, .tiff, .webp)"
                )
            self._names = _frame_order(names)
            with folder.open_child(self._names[0]) as first:
                size = image_size(first.read(limits.max_frame_file_bytes))
            if size is None:
                raise invalid_video("the first frame of the folder is not a readable image")
            _check_size(*size, limits)
            self.info = VideoInfo(len(self._names), 0.0, size[0], size[1])
        except BaseException:
            folder.close()
            raise

    def _read(self, index: int, passed: Passed | None) -> np.ndarray:
        limits = ImageLimits(
            max_bytes=self._limits.max_frame_file_bytes,
            max_pixels=self.info.width * self.info.height,
        )
        with self._folder.open_child(self._names[index]) as file:
            data = file.read(limits.max_bytes)
        try:
            frame = decode_image(data, limits, field=f"frame {index}")
        except InvalidArgument as exc:
            raise unreadable_frame(index, exc.message) from exc
        if frame.shape[:2] != (self.info.height, self.info.width):
            raise unreadable_frame(
                index,
                f"it is {frame.shape[1]}x{frame.shape[0]}, not the video's "
                f"{self.info.width}x{self.info.height}",
            )
        return frame

    def _release(self) -> None:
        self._folder.close()


def open_frames(handle: MediaHandle | str, limits: FrameLimits) -> FrameSource:
    """Probes a video within the limits: an opened media file or folder, or the path of a file
    or folder the server chose itself (an upload, a test clip). Takes ownership of the handle."""
    if isinstance(handle, str):
        handle = open_trusted(handle)
    if handle.is_dir:
        return FolderFrames(handle, limits)
    return ContainerFrames(handle, limits)


def open_window(
    path: str,
    prepare: Callable[[np.ndarray], T],
    *,
    capacity: int = 16,
    limits: FrameLimits = FrameLimits(max_frames=1_000_000, max_pixels=1 << 30),
) -> FrameWindow[T]:
    """A window on a local video or folder, for in-process use (tests, benchmarks)."""
    return FrameWindow(open_frames(path, limits), prepare, capacity)


class FrameWindow(Generic[T]):
    """Frames of a source, prepared by `prepare` (e.g. resized and normalised for a model), with
    at most `capacity` of them kept.

    `get(k)` returns frame k prepared, reading it if needed; `prefetch(indices)` reads ahead
    (meant for a CPU-pool thread, while the device works). Walking backwards, the frames decoded
    on the way to k (after a seek to the previous key frame) are kept too, so each is decoded
    about once. Thread-safe: the source serialises reads; the cache has its own lock.
    """

    def __init__(
        self,
        source: FrameSource,
        prepare: Callable[[np.ndarray], T],
        capacity: int,
        nbytes: Callable[[T], int] = lambda item: int(getattr(item, "nbytes", 0)),
    ) -> None:
        self.source = source
        self.info = source.info
        self.capacity = max(2, capacity)
        self._prepare = prepare
        self._nbytes = nbytes
        self._cache: collections.OrderedDict[int, T] = collections.OrderedDict()
        self._lock = threading.Lock()  # guards the cache
        self._reading = threading.Lock()  # one reader at a time: no frame is decoded twice
        self.decoded = 0  # frames decoded, for tests and benchmarks
        self.closed = False

    def __len__(self) -> int:
        return self.info.frame_count

    def _remember(self, index: int, item: T) -> None:
        with self._lock:
            self._cache[index] = item
            self._cache.move_to_end(index)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)

    def cached(self, index: int) -> T | None:
        with self._lock:
            item = self._cache.get(index)
            if item is not None:
                self._cache.move_to_end(index)
            return item

    def get(self, index: int) -> T:
        item = self.cached(index)
        if item is not None:
            return item
        with self._reading:
            item = self.cached(index)  # read meanwhile by another thread (a prefetch)
            if item is not None:
                return item
            return self._read(index)

    def _read(self, index: int) -> T:
        if self.closed:
            raise FailedPrecondition("the video is closed", reason=Reason.SESSION_NOT_FOUND)
        start = index
        keep_from = index - self.capacity + 1  # frames just before k, for a backward walk

        def passed(position: int, pixels: Callable[[], np.ndarray]) -> None:
            self.decoded += 1
            if keep_from <= position < start:
                self._remember(position, self._prepare(pixels()))

        frame = self.source.read(index, passed)
        self.decoded += 1
        item = self._prepare(frame)
        self._remember(index, item)
        return item

    def prefetch(self, indices: Iterable[int]) -> None:
        """Reads and prepares the given frames that are not cached yet, in order. Stops at a
        frame that cannot be read: the caller that needs it gets the error then."""
        for index in indices:
            if self.closed:
                return
            if self.cached(index) is None:
                try:
                    self.get(index)
                except ServiceError:
                    return

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(self._nbytes(item) for item in self._cache.values())

    def close(self) -> None:
        self.closed = True
        with self._lock:
            self._cache.clear()
        self.source.close()
