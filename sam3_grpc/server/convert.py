"""Protobuf ⇄ domain conversion, with the validation of every client-supplied value.

This is the one layer that validates requests: engines receive domain values that already obey
the rules below, so the rules exist once. A malformed request costs nothing on the device and
gets INVALID_ARGUMENT naming the offending field (a google.rpc.BadRequest field violation).

Coordinate rules: points lie in [0, width) x [0, height); boxes must have positive extent, are
clipped to the image, and must keep some area inside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from sam3_grpc.config import Settings
from sam3_grpc.domain import Box, Direction, LabeledBox, LabeledPoint, Prompt, RawDetection
from sam3_grpc.errors import InvalidArgument, Reason, ResourceExhausted
from sam3_grpc.media import masks
from sam3_grpc.v1 import common_pb2, video_service_pb2

if TYPE_CHECKING:
    from sam3_grpc.server.sessions import Session

MASK_ENCODINGS: dict[int, str] = {
    common_pb2.MASK_ENCODING_UNSPECIFIED: "rle",
    common_pb2.MASK_ENCODING_RLE: "rle",
    common_pb2.MASK_ENCODING_PNG: "png",
    common_pb2.MASK_ENCODING_NONE: "none",
}
DIRECTIONS: dict[int, Direction] = {
    video_service_pb2.PROPAGATION_DIRECTION_UNSPECIFIED: Direction.FORWARD,
    video_service_pb2.PROPAGATION_DIRECTION_FORWARD: Direction.FORWARD,
    video_service_pb2.PROPAGATION_DIRECTION_BACKWARD: Direction.BACKWARD,
    video_service_pb2.PROPAGATION_DIRECTION_BOTH: Direction.BOTH,
}
MAX_POLYGON_TOLERANCE = 100.0


@dataclass(frozen=True)
class OutputSpec:
    """What to return per detection, and which detections to keep.

    `score_threshold` is the caller's explicit threshold (None when unset). Unset, concept
    prompts (text, exemplar boxes) use `concept_threshold`, the engine's own confidence
    threshold, and clicks keep their best mask whatever its predicted quality: a user who clicks
    expects a mask.
    """

    mask_encoding: str = "rle"
    include_polygons: bool = False
    polygon_tolerance_pixels: float = 0.0
    score_threshold: float | None = None
    concept_threshold: float = 0.5
    min_area_pixels: int = 0
    max_detections: int = 100

    def threshold_for(self, prompt: Prompt | None) -> float:
        """The score below which a detection of `prompt` is dropped (None: a video frame)."""
        if self.score_threshold is not None:
            return self.score_threshold
        if prompt is None or prompt.is_click():
            return 0.0
        return self.concept_threshold


def invalid(message: str, field: str, reason: Reason = Reason.INVALID_REQUEST) -> InvalidArgument:
    return InvalidArgument(message, field=field, reason=reason)


# ----- requests → domain ---------------------------------------------------------------------
def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise invalid(f"{what} is {value}; coordinates must be finite numbers", what)
    return float(value)


def _positive(label: int, what: str) -> bool:
    if label == common_pb2.PROMPT_LABEL_NEGATIVE:
        return False
    if label in (common_pb2.PROMPT_LABEL_POSITIVE, common_pb2.PROMPT_LABEL_UNSPECIFIED):
        return True
    raise invalid(f"{what}.label has unknown value {label}", f"{what}.label")


def non_negative(value: int, what: str) -> int:
    if value < 0:
        raise invalid(f"{what} is {value}; it cannot be negative", what)
    return value


def prompt_from_proto(message: common_pb2.Prompt, settings: Settings, where: str) -> Prompt:
    """Checks the parts of a prompt that do not depend on the image size."""
    text = message.text.strip()
    if len(text) > settings.max_text_chars:
        raise invalid(
            f"{where}.text has {len(text)} characters; at most {settings.max_text_chars} allowed",
            f"{where}.text",
        )
    geometry = len(message.boxes) + len(message.points)
    if geometry > settings.max_geometry_per_prompt:
        raise invalid(
            f"{where} has {geometry} boxes and points; at most "
            f"{settings.max_geometry_per_prompt} allowed",
            where,
        )
    boxes = []
    for i, labeled in enumerate(message.boxes):
        what = f"{where}.boxes[{i}]"
        if not labeled.HasField("box"):
            raise invalid(f"{what}.box is missing", f"{what}.box")
        b = labeled.box
        box = Box(
            _finite(b.x_min, f"{what}.box.x_min"),
            _finite(b.y_min, f"{what}.box.y_min"),
            _finite(b.x_max, f"{what}.box.x_max"),
            _finite(b.y_max, f"{what}.box.y_max"),
        )
        if box.x_max <= box.x_min or box.y_max <= box.y_min:
            raise invalid(
                f"{what}.box is empty or inverted ({box.x_min:g}, {box.y_min:g}, "
                f"{box.x_max:g}, {box.y_max:g}): x_max must exceed x_min and y_max must exceed "
                "y_min (x_max and y_max are exclusive: one pixel at (3, 4) is 3, 4, 4, 5)",
                f"{what}.box",
            )
        boxes.append(LabeledBox(box, _positive(labeled.label, what)))
    points = []
    for i, clicked in enumerate(message.points):
        what = f"{where}.points[{i}]"
        if not clicked.HasField("point"):
            raise invalid(f"{what}.point is missing", f"{what}.point")
        points.append(
            LabeledPoint(
                _finite(clicked.point.x, f"{what}.point.x"),
                _finite(clicked.point.y, f"{what}.point.y"),
                _positive(clicked.label, what),
            )
        )
    prompt = Prompt(text=text, boxes=tuple(boxes), points=tuple(points))
    if prompt.is_empty():
        raise invalid(f"{where} is empty: give text, boxes or points", where)
    return prompt


def prompts_from_proto(messages: Sequence[common_pb2.Prompt], settings: Settings) -> list[Prompt]:
    if not messages:
        raise invalid("prompts is empty: give at least one prompt", "prompts")
    if len(messages) > settings.max_prompts:
        raise invalid(
            f"{len(messages)} prompts given; this server accepts at most {settings.max_prompts} "
            "per request: split them over several requests",
            "prompts",
        )
    return [prompt_from_proto(m, settings, f"prompts[{i}]") for i, m in enumerate(messages)]


def fit_prompt_to_image(prompt: Prompt, width: int, height: int, where: str) -> Prompt:
    """Checks points lie inside the image and clips boxes to it (a box wholly outside fails)."""
    for i, point in enumerate(prompt.points):
        if not (0 <= point.x < width and 0 <= point.y < height):
            raise invalid(
                f"{where}.points[{i}] ({point.x:g}, {point.y:g}) lies outside the "
                f"{width}x{height} image; points are pixels from the top-left corner, x in "
                f"[0, {width}) and y in [0, {height})",
                f"{where}.points[{i}].point",
            )
    boxes = []
    for i, labeled in enumerate(prompt.boxes):
        b = labeled.box
        clipped = Box(
            max(0.0, b.x_min),
            max(0.0, b.y_min),
            min(float(width), b.x_max),
            min(float(height), b.y_max),
        )
        if clipped.x_max <= clipped.x_min or clipped.y_max <= clipped.y_min:
            raise invalid(
                f"{where}.boxes[{i}] ({b.x_min:g}, {b.y_min:g}, {b.x_max:g}, {b.y_max:g}) lies "
                f"outside the {width}x{height} image",
                f"{where}.boxes[{i}].box",
            )
        boxes.append(LabeledBox(clipped, labeled.positive))
    return Prompt(text=prompt.text, boxes=tuple(boxes), points=prompt.points)


def output_from_proto(
    message: common_pb2.OutputOptions, settings: Settings, concept_threshold: float
) -> OutputSpec:
    if message.mask_encoding not in MASK_ENCODINGS:
        raise invalid(
            f"output.mask_encoding has unknown value {message.mask_encoding}",
            "output.mask_encoding",
        )
    tolerance = message.polygon_tolerance_pixels
    if not (math.isfinite(tolerance) and 0 <= tolerance <= MAX_POLYGON_TOLERANCE):
        raise invalid(
            f"output.polygon_tolerance_pixels is {tolerance}; it must be in "
            f"[0, {MAX_POLYGON_TOLERANCE:g}]",
            "output.polygon_tolerance_pixels",
        )
    threshold = None
    if message.HasField("score_threshold"):
        threshold = message.score_threshold
        if not (math.isfinite(threshold) and 0 <= threshold <= 1):
            raise invalid(
                f"output.score_threshold is {threshold}; it must be in [0, 1]",
                "output.score_threshold",
            )
    min_area = non_negative(message.min_area_pixels, "output.min_area_pixels")
    max_detections = non_negative(message.max_detections, "output.max_detections")
    max_detections = max_detections or settings.max_detections
    if max_detections > settings.max_detections:
        raise invalid(
            f"output.max_detections is {max_detections}; this server returns at most "
            f"{settings.max_detections}",
            "output.max_detections",
        )
    return OutputSpec(
        mask_encoding=MASK_ENCODINGS[message.mask_encoding],
        include_polygons=message.include_polygons,
        polygon_tolerance_pixels=float(tolerance),
        score_threshold=threshold,
        concept_threshold=concept_threshold,
        min_area_pixels=min_area,
        max_detections=max_detections,
    )


def direction_from_proto(value: int) -> Direction:
    if value not in DIRECTIONS:
        raise invalid(f"direction has unknown value {value}", "direction")
    return DIRECTIONS[value]


# ----- domain → responses --------------------------------------------------------------------
def box_to_proto(box: Box) -> common_pb2.Box:
    return common_pb2.Box(x_min=box.x_min, y_min=box.y_min, x_max=box.x_max, y_max=box.y_max)


def detection_to_proto(
    raw: RawDetection, spec: OutputSpec, box: Box | None, mask_area: int
) -> common_pb2.Detection:
    """`box` is the mask's tight box (None for an empty mask: the engine's box is used)."""
    mask = raw.mask
    height, width = mask.shape
    detection = common_pb2.Detection(
        object_id=raw.object_id,
        score=float(np.clip(raw.score, 0.0, 1.0)),
        box=box_to_proto(box or raw.box or Box(0.0, 0.0, 0.0, 0.0)),
        area_pixels=mask_area,
    )
    if spec.mask_encoding == "rle":
        detection.mask.CopyFrom(
            common_pb2.Mask(width=width, height=height, rle_counts=masks.encode_rle(mask, box))
        )
    elif spec.mask_encoding == "png":
        detection.mask.CopyFrom(
            common_pb2.Mask(width=width, height=height, png=masks.encode_png(mask))
        )
    if spec.include_polygons:
        for polygon in masks.polygons(mask, spec.polygon_tolerance_pixels):
            detection.polygons.add().points.extend(
                common_pb2.Point(x=float(x), y=float(y)) for x, y in polygon
            )
    return detection


def render_detections(
    raw: Sequence[RawDetection], spec: OutputSpec, prompt: Prompt | None = None
) -> list[common_pb2.Detection]:
    """Filters by score and area, keeps the best max_detections, and encodes each one.
    `prompt` is the image prompt the detections answer (None for a video frame)."""
    threshold = spec.threshold_for(prompt)
    kept: list[tuple[RawDetection, Box | None, int]] = []
    for detection in raw:
        if detection.score < threshold:
            continue
        box = masks.tight_box(detection.mask)
        mask_area = masks.area(detection.mask, box) if box else 0
        if mask_area < spec.min_area_pixels:
            continue
        kept.append((detection, box, mask_area))
    kept.sort(key=lambda item: -item[0].score)
    return [detection_to_proto(d, spec, box, a) for d, box, a in kept[: spec.max_detections]]


def frame_to_proto(frame, spec: OutputSpec) -> common_pb2.FrameResult:
    return common_pb2.FrameResult(
        frame_index=frame.frame_index, objects=render_detections(frame.objects, spec)
    )


def check_reply_size(reply: Any, limit: int) -> Any:
    """Refuses a reply larger than the server sends (--max-send-message-bytes) with a status
    that says what to change, rather than letting gRPC fail it after all the work."""
    size = reply.ByteSize()
    if size > limit:
        raise ResourceExhausted(
            f"the reply would be {size} bytes, over this server's limit of {limit} bytes "
            "(--max-send-message-bytes): ask for fewer detections (output.max_detections), "
            "RLE masks instead of PNG, or no masks (MASK_ENCODING_NONE)",
            reason=Reason.RESPONSE_TOO_LARGE,
            metadata={"limit": limit, "size": size},
        )
    return reply


def timestamp(epoch_seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(epoch_seconds * 1e9))
    return stamp


def video_info_to_proto(info) -> video_service_pb2.VideoInfo:
    return video_service_pb2.VideoInfo(
        frame_count=info.frame_count, fps=info.fps, width=info.width, height=info.height
    )


def session_to_proto(session: Session, expire_time: float) -> video_service_pb2.Session:
    return video_service_pb2.Session(
        session_id=session.session_id,
        video=video_info_to_proto(session.info),
        uploaded=session.uploaded,
        object_ids=session.object_ids,
        create_time=timestamp(session.created_at),
        last_use_time=timestamp(session.last_used_at),
        expire_time=timestamp(expire_time),
        propagating=session.propagating,
        memory_bytes=session.memory_bytes,
    )
