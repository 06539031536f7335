"""The engine-facing domain: what servicers, the executor and the engines exchange.

Engines speak only these types (never protobuf), so they can be driven in-process by benchmarks
and tests exactly as the server drives them. Needs only numpy: the client shares `Box` from
here (its own user-facing prompts and results live in `sam3_grpc.client.types`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class Box(NamedTuple):
    """Pixel box, origin at the top-left corner; x_max and y_max are exclusive edges."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    def to_xywh(self) -> list[float]:
        """COCO bbox: [x, y, width, height]."""
        return [float(self.x_min), float(self.y_min), float(self.width), float(self.height)]


@dataclass(frozen=True)
class LabeledBox:
    box: Box
    positive: bool = True


@dataclass(frozen=True)
class LabeledPoint:
    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Prompt:
    """A text phrase, box exemplars, clicks, or a mix of them."""

    text: str = ""
    boxes: tuple[LabeledBox, ...] = ()
    points: tuple[LabeledPoint, ...] = ()

    def is_empty(self) -> bool:
        return not self.text and not self.boxes and not self.points

    def is_click(self) -> bool:
        """Clicks (points, alone or with a box) select one object; text and exemplar boxes
        alone are concept prompts that find every matching object."""
        return bool(self.points)


@dataclass
class RawDetection:
    """One object as an engine returns it: a full-size boolean mask and a score.

    `box` may be left None; the server then derives the tight box from the mask.
    """

    mask: np.ndarray  # bool, shape (height, width)
    score: float
    object_id: int = 0
    box: Box | None = None


@dataclass
class FrameOutput:
    """Every tracked object on one video frame."""

    frame_index: int
    objects: list[RawDetection] = field(default_factory=list)


class Direction(enum.Enum):
    FORWARD = "forward"
    BACKWARD = "backward"
    BOTH = "both"


@dataclass(frozen=True)
class VideoInfo:
    frame_count: int
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class SessionBudget:
    """The most memory one video session can hold: on the host (frames and host-side state)
    and on the device (model state; 0 when the device is the CPU, where all is host memory)."""

    host_bytes: int
    device_bytes: int = 0


class ModelKind(enum.Enum):
    REAL = "real"
    TINY = "tiny"
    SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class EngineInfo:
    name: str
    kind: ModelKind
    device: str
    weights_source: str
    # Detections scoring below this are dropped unless the request sets its own threshold.
    default_score_threshold: float = 0.5


@dataclass(frozen=True)
class MemoryUsage:
    used_bytes: int
    total_bytes: int
