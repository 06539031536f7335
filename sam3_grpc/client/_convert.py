"""Client-side conversion between the typed results of `types.py` and the protobuf messages."""

from __future__ import annotations

import datetime
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

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
)
from sam3_grpc.v1 import common_pb2, status_service_pb2, video_service_pb2

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


def output_options(
    mask_encoding: str = "rle",
    include_polygons: bool = False,
    polygon_tolerance: float = 0.0,
    score_threshold: float | None = None,
    min_area: int = 0,
    max_detections: int = 0,
) -> common_pb2.OutputOptions:
    try:
        encoding = MASK_ENCODINGS[mask_encoding.lower()]
    except KeyError:
        raise ValueError(
            f"mask_encoding must be one of {sorted(MASK_ENCODINGS)}, got {mask_encoding!r}"
        ) from None
    options = common_pb2.OutputOptions(
        mask_encoding=encoding,
        include_polygons=include_polygons,
        polygon_tolerance=polygon_tolerance,
        min_area=min_area,
        max_detections=max_detections,
    )
    if score_threshold is not None:
        options.score_threshold = score_threshold
    return options


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
    try:
        import cv2
    except ImportError:
        cv2 = None
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


def segment_request(
    image: Any,
    prompts: Sequence[Prompt],
    *,
    mask_encoding: str = "rle",
    include_polygons: bool = False,
    polygon_tolerance: float = 0.0,
    score_threshold: float | None = None,
    min_area: int = 0,
    max_detections: int = 0,
):
    from sam3_grpc.v1 import segmentation_service_pb2

    return segmentation_service_pb2.SegmentImageRequest(
        image=image if isinstance(image, common_pb2.Image) else image_to_proto(image),
        prompts=[prompt_to_proto(p) for p in prompts],
        output=output_options(
            mask_encoding,
            include_polygons,
            polygon_tolerance,
            score_threshold,
            min_area,
            max_detections,
        ),
    )


def add_prompt_request(
    session_id: str,
    frame_index: int,
    prompt: Prompt,
    *,
    object_id: int | None = None,
    **output: Any,
):
    request = video_service_pb2.AddPromptRequest(
        session_id=session_id,
        frame_index=frame_index,
        prompt=prompt_to_proto(prompt),
        output=output_options(**output),
    )
    if object_id is not None:
        request.object_id = object_id
    return request


def propagate_request(
    session_id: str,
    *,
    direction: str = "forward",
    start_frame_index: int | None = None,
    max_frames: int = 0,
    **output: Any,
):
    request = video_service_pb2.PropagateRequest(
        session_id=session_id,
        direction=direction_to_proto(direction),
        max_frames=max_frames,
        output=output_options(**output),
    )
    if start_frame_index is not None:
        request.start_frame_index = start_frame_index
    return request


def upload_metadata(path: str, size: int, sha256: str):
    return video_service_pb2.UploadVideoRequest(
        metadata=video_service_pb2.UploadVideoMetadata(
            filename=os.path.basename(path), size_bytes=size, sha256=sha256
        )
    )


# ----- responses -----------------------------------------------------------------------------
def detection_from_proto(message: common_pb2.Detection) -> Detection:
    b = message.box
    mask = message.mask
    which = mask.WhichOneof("data") if message.HasField("mask") else None
    return Detection(
        object_id=message.object_id,
        score=message.score,
        box=Box(b.x_min, b.y_min, b.x_max, b.y_max),
        area=message.area,
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
