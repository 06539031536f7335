"""The client's pure core: everything both transports share, and no I/O.

`Sam3Client` (blocking) and `AsyncSam3Client` (asyncio) differ only in how they move bytes. What
a call sends, how its reply becomes a typed result, whether and when it is retried, its default
deadline and the routing header that pins a session to its replica behind a proxy are all
decided here, once:

- `Call`: one RPC ready to go (stub method name, request message, reply converter, whether it is
  safe to repeat, the session it concerns); built by the `*_call` functions.
- `retry_delay`: the retry decision for a failed attempt.
- `DEFAULT_TIMEOUTS`: per-method default deadlines that suit the model (see the README).
- `Routes`: the Envoy stateful-session header of each session this client opened.
- conversions between the typed values of `types.py` and the protobuf messages.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from sam3_grpc.client.errors import Sam3Error
from sam3_grpc.client.retry import RetryPolicy
from sam3_grpc.client.types import (
    AddPromptResult,
    Box,
    CacheStatus,
    Detection,
    FrameResult,
    Prompt,
    PromptResult,
    PropagateFrame,
    QueueStatus,
    SegmentResult,
    ServerPath,
    ServerStatus,
    Session,
    as_prompt,
    optional_cv2,
)
from sam3_grpc.v1 import (
    common_pb2,
    segmentation_service_pb2,
    status_service_pb2,
    video_service_pb2,
)

MiB = 1024 * 1024
DEFAULT_TARGET = "localhost:50051"
# The response header that Envoy's stateful session filter sets to name the replica that
# served a call; sent back on every later call about the session (deploy/envoy/envoy.yaml).
ROUTING_HEADER = "x-sam3-replica"


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()  # "the client's timeout, else the method's default"

# Default deadlines in seconds, per method, when neither the call nor the client sets one.
# Generous where a real model on a CPU is slow (a text prompt on a video frame can take
# minutes); none for the streams, which the server bounds itself (idle, rate and total limits
# on uploads; cancellation and flow control on propagation).
DEFAULT_TIMEOUTS: dict[str, float | None] = {
    "SegmentImage": 300.0,
    "StartSession": 120.0,
    "UploadVideo": None,
    "AddPrompt": 600.0,
    "RemoveObject": 120.0,
    "ResetSession": 120.0,
    "Propagate": None,
    "GetSession": 30.0,
    "ListSessions": 30.0,
    "CloseSession": 60.0,
    "GetServerStatus": 30.0,
    "Check": 30.0,
}


@dataclass(frozen=True)
class OutputOptions:
    """What to return for each detection, and which detections to keep.

    mask_encoding: "rle" (COCO compressed RLE, default), "png" or "none".
    include_polygons: add each mask's outline; polygon_tolerance_pixels simplifies it.
    score_threshold: drop detections scoring below it; None: the server's default (the model's
        confidence threshold for text and box concepts; none for clicks and for video).
    min_area_pixels: drop masks smaller than this. max_detections: keep at most this many per
        prompt or frame, best first (0: the server's limit).
    """

    mask_encoding: str = "rle"
    include_polygons: bool = False
    polygon_tolerance_pixels: float = 0.0
    score_threshold: float | None = None
    min_area_pixels: int = 0
    max_detections: int = 0

    def __post_init__(self) -> None:
        if self.mask_encoding.lower() not in MASK_ENCODINGS:
            raise ValueError(
                f"mask_encoding must be one of {sorted(MASK_ENCODINGS)}, got {self.mask_encoding!r}"
            )
        if self.score_threshold is not None and not 0 <= self.score_threshold <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.min_area_pixels < 0 or self.max_detections < 0:
            raise ValueError("min_area_pixels and max_detections cannot be negative")

    def to_proto(self) -> common_pb2.OutputOptions:
        options = common_pb2.OutputOptions(
            mask_encoding=MASK_ENCODINGS[self.mask_encoding.lower()],
            include_polygons=self.include_polygons,
            polygon_tolerance_pixels=self.polygon_tolerance_pixels,
            min_area_pixels=self.min_area_pixels,
            max_detections=self.max_detections,
        )
        if self.score_threshold is not None:
            options.score_threshold = self.score_threshold
        return options


MASK_ENCODINGS = {
    "rle": common_pb2.MASK_ENCODING_RLE,
    "png": common_pb2.MASK_ENCODING_PNG,
    "none": common_pb2.MASK_ENCODING_NONE,
}
DIRECTIONS = {
    "forward": video_service_pb2.PROPAGATION_DIRECTION_FORWARD,
    "backward": video_service_pb2.PROPAGATION_DIRECTION_BACKWARD,
    "both": video_service_pb2.PROPAGATION_DIRECTION_BOTH,
}
MODEL_KINDS = {
    status_service_pb2.MODEL_KIND_REAL: "real",
    status_service_pb2.MODEL_KIND_TINY: "tiny",
    status_service_pb2.MODEL_KIND_SYNTHETIC: "synthetic",
}


# ----- requests ------------------------------------------------------------------------------
def _box(values: Sequence[float], what: str) -> common_pb2.Box:
    if len(values) != 4:
        raise ValueError(f"{what} must be (x_min, y_min, x_max, y_max), got {values!r}")
    x_min, y_min, x_max, y_max = (float(v) for v in values)
    return common_pb2.Box(x_min=x_min, y_min=y_min, x_max=x_max, y_max=y_max)


def _point(values: Sequence[float], what: str) -> common_pb2.Point:
    if len(values) != 2:
        raise ValueError(f"{what} must be (x, y), got {values!r}")
    return common_pb2.Point(x=float(values[0]), y=float(values[1]))


def prompt_to_proto(prompt: Prompt) -> common_pb2.Prompt:
    message = common_pb2.Prompt(text=prompt.text)
    positive, negative = common_pb2.PROMPT_LABEL_POSITIVE, common_pb2.PROMPT_LABEL_NEGATIVE
    for boxes, label in ((prompt.boxes, positive), (prompt.negative_boxes, negative)):
        for box in boxes:
            message.boxes.add(box=_box(box, "a box"), label=label)
    for points, label in ((prompt.points, positive), (prompt.negative_points, negative)):
        for point in points:
            message.points.add(point=_point(point, "a point"), label=label)
    return message


def direction_to_proto(value: str) -> int:
    try:
        return DIRECTIONS[value.lower()]
    except KeyError:
        raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {value!r}") from None


def _encode_array(array: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) RGB or (H, W) grey uint8 array, with OpenCV else Pillow."""
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] not in (3, 4))
    ):
        raise ValueError(
            "a numpy image must be uint8 of shape (H, W, 3) RGB, (H, W, 4) RGBA or "
            f"(H, W) grey; got {array.dtype} {array.shape}"
        )
    cv2 = optional_cv2()
    if cv2 is not None:
        if array.ndim == 3:
            code = cv2.COLOR_RGB2BGR if array.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
            array = cv2.cvtColor(array, code)
        ok, buffer = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ValueError("OpenCV could not encode the image as PNG")
        return buffer.tobytes()
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "sending a numpy image needs opencv-python-headless or pillow "
            "(pip install 'sam3-grpc[client]'); or pass encoded bytes or a path"
        ) from exc
    return _encode_pil(Image.fromarray(array))


def _encode_pil(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def image_to_proto(image: Any) -> common_pb2.Image:
    """A path, encoded bytes, a numpy RGB array, a PIL image or a ServerPath → Image."""
    if isinstance(image, common_pb2.Image):
        return image
    if isinstance(image, ServerPath):
        return common_pb2.Image(path=image.path)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return common_pb2.Image(content=bytes(image))
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as handle:
            return common_pb2.Image(content=handle.read())
    if isinstance(image, np.ndarray):
        return common_pb2.Image(content=_encode_array(image))
    if type(image).__module__.startswith("PIL."):
        return common_pb2.Image(content=_encode_pil(image))
    raise TypeError(
        "image must be a path, encoded bytes, a numpy array, a PIL image or a "
        f"ServerPath, not {type(image).__name__}"
    )


def upload_metadata(path: str, size: int, sha256: str) -> video_service_pb2.UploadVideoRequest:
    return video_service_pb2.UploadVideoRequest(
        metadata=video_service_pb2.UploadVideoMetadata(
            filename=os.path.basename(path), size_bytes=size, sha256=sha256
        )
    )


def output_proto(output: OutputOptions | None) -> common_pb2.OutputOptions:
    return (output or OutputOptions()).to_proto()


def propagate_request(
    session_id: str,
    *,
    direction: str = "forward",
    start_frame_index: int | None = None,
    max_frames: int = 0,
    output: OutputOptions | None = None,
) -> video_service_pb2.PropagateRequest:
    if max_frames < 0:
        raise ValueError("max_frames cannot be negative")
    request = video_service_pb2.PropagateRequest(
        session_id=session_id,
        direction=direction_to_proto(direction),  # type: ignore[arg-type]  # an enum value
        max_frames=max_frames,
        output=output_proto(output),
    )
    if start_frame_index is not None:
        request.start_frame_index = start_frame_index
    return request


def check_session_source(video_path: Any, upload: Any, upload_options: dict[str, Any]) -> None:
    """The arguments of `session(...)`: exactly one source; upload options only with upload."""
    if (video_path is None) == (upload is None):
        raise ValueError(
            "give exactly one of video_path (a video on the server) or upload (a local file "
            "to upload)"
        )
    if upload is None and upload_options:
        raise TypeError(f"upload options without upload: {sorted(upload_options)}")


def server_path(video_path: str | os.PathLike | ServerPath) -> str:
    return video_path.path if isinstance(video_path, ServerPath) else os.fspath(video_path)


# ----- calls ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One unary RPC, ready to be sent by either client.

    stub: which stub serves it ("segmentation", "video", "status" or "health"); method: the
    stub's method name; convert(reply, target) gives the typed result; safe: whether a failure
    may be retried (the call changes nothing, or repeating it changes nothing more);
    session_id: the session it concerns (its routing header goes along).
    """

    stub: str
    method: str
    request: Any
    convert: Callable[[Any, str], Any]
    safe: bool
    session_id: str | None = None


def segment_image_call(
    image: common_pb2.Image, prompts: Sequence[Prompt], output: OutputOptions | None
) -> Call:
    request = segmentation_service_pb2.SegmentImageRequest(
        image=image, prompts=[prompt_to_proto(p) for p in prompts], output=output_proto(output)
    )
    return Call(
        "segmentation",
        "SegmentImage",
        request,
        lambda reply, _: segment_result_from_proto(reply, prompts),
        safe=True,
    )


def start_session_call(video_path: str | os.PathLike | ServerPath) -> Call:
    request = video_service_pb2.StartSessionRequest(video_path=server_path(video_path))
    return Call("video", "StartSession", request, _session_of, safe=False)


def add_prompt_call(
    session_id: str,
    frame_index: int,
    prompt: str | Prompt,
    object_id: int | None,
    output: OutputOptions | None,
) -> Call:
    request = video_service_pb2.AddPromptRequest(
        session_id=session_id,
        frame_index=frame_index,
        prompt=prompt_to_proto(as_prompt(prompt)),
        output=output_proto(output),
    )
    if object_id is not None:
        request.object_id = object_id
    return Call(
        "video",
        "AddPrompt",
        request,
        lambda reply, _: add_prompt_result_from_proto(reply),
        safe=False,
        session_id=session_id,
    )


def remove_object_call(session_id: str, object_id: int) -> Call:
    request = video_service_pb2.RemoveObjectRequest(session_id=session_id, object_id=object_id)
    return Call("video", "RemoveObject", request, _session_of, safe=False, session_id=session_id)


def reset_session_call(session_id: str) -> Call:
    request = video_service_pb2.ResetSessionRequest(session_id=session_id)
    return Call("video", "ResetSession", request, _session_of, safe=True, session_id=session_id)


def get_session_call(session_id: str) -> Call:
    request = video_service_pb2.GetSessionRequest(session_id=session_id)
    return Call("video", "GetSession", request, _session_of, safe=True, session_id=session_id)


def list_sessions_call() -> Call:
    return Call(
        "video",
        "ListSessions",
        video_service_pb2.ListSessionsRequest(),
        lambda reply, target: [session_from_proto(s, target) for s in reply.sessions],
        safe=True,
    )


def close_session_call(session_id: str) -> Call:
    request = video_service_pb2.CloseSessionRequest(session_id=session_id)
    return Call(
        "video",
        "CloseSession",
        request,
        lambda reply, _: bool(reply.closed),
        safe=True,
        session_id=session_id,
    )


def status_call() -> Call:
    return Call(
        "status",
        "GetServerStatus",
        status_service_pb2.GetServerStatusRequest(),
        status_from_proto,
        safe=True,
    )


def health_call(service: str) -> Call:
    from sam3_grpc.client import _health

    request_class, _ = _health.messages()
    return Call(
        "health",
        "Check",
        request_class(service=service),
        lambda reply, _: _health.STATUS_NAMES.get(reply.status, "UNKNOWN"),
        safe=True,
    )


def _session_of(reply: Any, target: str) -> Session:
    return session_from_proto(reply.session, target)


def timeout_for(call_method: str, given: Any, client_default: Any) -> float | None:
    """The deadline of a call: the call's own, else the client's, else the method's default."""
    if given is not DEFAULT:
        return given
    if client_default is not DEFAULT:
        return client_default
    return DEFAULT_TIMEOUTS.get(call_method, 30.0)


def retry_delay(
    policy: RetryPolicy | None, attempt: int, error: Sam3Error, deadline: float | None
) -> float | None:
    """Seconds to wait before retrying attempt number `attempt` that failed with `error`, or
    None to give up: not retryable, out of attempts, or the wait would pass the deadline."""
    if policy is None or attempt >= policy.max_attempts or error.code not in policy.retryable_codes:
        return None
    if error.reason == "REPLICA_LOST":  # retrying cannot bring the session back
        return None
    delay = policy.delay(attempt, error.retry_after)
    if delay is None or (deadline is not None and time.monotonic() + delay >= deadline):
        return None
    return delay


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def channel_options(
    max_message_bytes: int, extra: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *extra,
    ]


# ----- waiting for SERVING -------------------------------------------------------------------
def poll_timeout(deadline: float) -> float:
    """The deadline of one health check while waiting for SERVING."""
    return max(0.1, min(5.0, deadline - time.monotonic()))


def keeps_waiting(error: Sam3Error) -> bool:
    """Whether waiting for SERVING goes on after this failed check (not reachable yet)."""
    return error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def not_serving_error(target: str, timeout: float, last: str) -> Sam3Error:
    from sam3_grpc.client.errors import DeadlineExceededError

    return DeadlineExceededError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"{target} not SERVING after {timeout:g} s (last: {last})",
        target=target,
    )


class Routes:
    """The routing header value of each session, as a proxy's stateful session filter set it
    on the reply that created the session. Thread-safe."""

    def __init__(self) -> None:
        self._routes: dict[str, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def value_in(metadata: Any) -> str | None:
        for key, value in metadata or ():
            if key == ROUTING_HEADER:
                return value if isinstance(value, str) else value.decode("latin-1")
        return None

    def remember(self, session_id: str, metadata: Any) -> str | None:
        value = self.value_in(metadata)
        if value is not None:
            with self._lock:
                self._routes[session_id] = value
        return value

    def get(self, session_id: str | None) -> str | None:
        if session_id is None:
            return None
        with self._lock:
            return self._routes.get(session_id)

    def set(self, session_id: str, route: str) -> None:
        with self._lock:
            self._routes[session_id] = route

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._routes.pop(session_id, None)

    def metadata(
        self, base: tuple[tuple[str, str], ...], session_id: str | None
    ) -> tuple[tuple[str, str], ...]:
        route = self.get(session_id)
        return base if route is None else (*base, (ROUTING_HEADER, route))


def with_route(session: Session, route: str | None) -> Session:
    return dataclasses.replace(session, route=route) if route else session


def file_sha256(path: str | os.PathLike, chunk_size: int = MiB) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class SessionHandle:
    """What both clients' session handles share: the session's description and its id.
    `VideoSession` and `AsyncVideoSession` add the calls, blocking or as coroutines."""

    def __init__(self, client: Any, info: Session) -> None:
        self._client = client
        self.info = info
        self.closed = False

    @property
    def session_id(self) -> str:
        return self.info.session_id

    @property
    def frame_count(self) -> int:
        return self.info.frame_count

    @property
    def fps(self) -> float:
        return self.info.fps

    @property
    def width(self) -> int:
        return self.info.width

    @property
    def height(self) -> int:
        return self.info.height

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info!r})"


# ----- responses -----------------------------------------------------------------------------
def detection_from_proto(message: common_pb2.Detection) -> Detection:
    b = message.box
    mask = message.mask
    which = mask.WhichOneof("data") if message.HasField("mask") else None
    return Detection(
        object_id=message.object_id,
        score=message.score,
        box=Box(b.x_min, b.y_min, b.x_max, b.y_max),
        area=message.area_pixels,
        width=mask.width,
        height=mask.height,
        polygons=[
            np.array([(p.x, p.y) for p in polygon.points], np.float32).reshape(-1, 2)
            for polygon in message.polygons
        ],
        rle_counts=mask.rle_counts if which == "rle_counts" else None,
        png=mask.png if which == "png" else None,
    )


def _fill_sizes(detections: list[Detection], width: int, height: int) -> list[Detection]:
    for detection in detections:
        if not detection.width:
            detection.width, detection.height = width, height
    return detections


def segment_result_from_proto(response, prompts: Sequence[Prompt]) -> SegmentResult:
    results = []
    for result in response.results:
        index = result.prompt_index
        detections = _fill_sizes(
            [detection_from_proto(d) for d in result.detections], response.width, response.height
        )
        prompt = prompts[index] if index < len(prompts) else Prompt()
        results.append(PromptResult(index, prompt, detections))
    return SegmentResult(response.width, response.height, results, response.cache_hit)


def frame_from_proto(
    message: common_pb2.FrameResult, width: int = 0, height: int = 0
) -> FrameResult:
    return FrameResult(
        message.frame_index,
        _fill_sizes([detection_from_proto(d) for d in message.objects], width, height),
    )


def add_prompt_result_from_proto(response) -> AddPromptResult:
    frame = frame_from_proto(response.frame)
    return AddPromptResult(frame.frame_index, frame.objects, list(response.object_ids))


def propagate_frame_from_proto(response) -> PropagateFrame:
    frame = frame_from_proto(response.frame)
    return PropagateFrame(
        frame.frame_index, frame.objects, response.frames_done, response.frames_total
    )


def _time(message, has: bool) -> datetime.datetime | None:
    if not has:
        return None
    return message.ToDatetime(tzinfo=datetime.timezone.utc)


def session_from_proto(message: video_service_pb2.Session, target: str = "") -> Session:
    video = message.video
    return Session(
        session_id=message.session_id,
        frame_count=video.frame_count,
        fps=video.fps,
        width=video.width,
        height=video.height,
        uploaded=message.uploaded,
        object_ids=list(message.object_ids),
        create_time=_time(message.create_time, message.HasField("create_time")),
        last_use_time=_time(message.last_use_time, message.HasField("last_use_time")),
        expire_time=_time(message.expire_time, message.HasField("expire_time")),
        propagating=message.propagating,
        memory_bytes=message.memory_bytes,
        target=target,
    )


def status_from_proto(
    message: status_service_pb2.GetServerStatusResponse, target: str = ""
) -> ServerStatus:
    queue, cache, memory = message.queue, message.cache, message.memory
    return ServerStatus(
        model_name=message.model_name,
        model_kind=MODEL_KINDS.get(message.model_kind, "unspecified"),
        device=message.device,
        ready=message.ready,
        version=message.version,
        weights_source=message.weights_source,
        uptime_s=message.uptime.ToNanoseconds() / 1e9,
        load_s=message.load_duration.ToNanoseconds() / 1e9,
        warmup_s=message.warmup_duration.ToNanoseconds() / 1e9,
        active_sessions=message.active_sessions,
        session_memory_bytes=message.session_memory_bytes,
        memory_used_bytes=memory.used_bytes,
        memory_total_bytes=memory.total_bytes,
        queue=QueueStatus(
            queue.depth,
            queue.capacity,
            queue.running,
            queue.completed,
            queue.rejected,
            queue.dropped,
        ),
        cache=CacheStatus(cache.entries, cache.capacity, cache.hits, cache.misses, cache.bytes),
        target=target,
    )
