"""Small typed results and prompts of the Python client.

Everything here needs only numpy (and pycocotools to decode RLE masks). Masks are decoded lazily:
a Detection keeps the encoded mask it received and decodes it on first access to `.mask`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam3_grpc.domain import Box

# ----- prompts and inputs ----------------------------------------------------------------------
BoxLike = Sequence[float]  # (x_min, y_min, x_max, y_max)
PointLike = Sequence[float]  # (x, y)


@dataclass(frozen=True)
class Prompt:
    """One prompt: a noun phrase, exemplar boxes, clicks, or a mix.

    boxes are (x_min, y_min, x_max, y_max) and points (x, y), in pixels from the top-left corner.
    The negative_* lists mark regions to exclude.
    """

    text: str = ""
    boxes: Sequence[BoxLike] = ()
    points: Sequence[PointLike] = ()
    negative_boxes: Sequence[BoxLike] = ()
    negative_points: Sequence[PointLike] = ()

    @property
    def label(self) -> str:
        """A short human name: the text, else a description of the geometry."""
        if self.text:
            return self.text

        def numbers(values: Sequence[float]) -> str:
            return ",".join(f"{float(v):g}" for v in values)

        geometry = [
            *(f"box {numbers(b)}" for b in self.boxes),
            *(f"point {numbers(p)}" for p in self.points),
            *(f"not box {numbers(b)}" for b in self.negative_boxes),
            *(f"not point {numbers(p)}" for p in self.negative_points),
        ]
        if len(geometry) > 2:
            return f"{geometry[0]} + {len(geometry) - 1} more"
        return " + ".join(geometry) or "empty prompt"


def as_prompt(value: Any) -> Prompt:
    if isinstance(value, Prompt):
        return value
    if isinstance(value, str):
        return Prompt(text=value)
    raise TypeError(f"a prompt is a str or a sam3_grpc.client.Prompt, not {type(value).__name__}")


def as_prompts(value: Any) -> list[Prompt]:
    """A str, a Prompt, or a list of them → a non-empty list of Prompts."""
    if isinstance(value, (str, Prompt)):
        return [as_prompt(value)]
    prompts = [as_prompt(item) for item in value]
    if not prompts:
        raise ValueError("give at least one prompt")
    return prompts


@dataclass(frozen=True)
class ServerPath:
    """An image or video on the server, relative to one of its media roots."""

    path: str

    def __str__(self) -> str:
        return self.path


# ----- results ---------------------------------------------------------------------------------
@dataclass
class Detection:
    """One segmented object. `.mask` decodes the received mask on first use (bool, H x W)."""

    object_id: int
    score: float
    box: Box
    area: int
    width: int = 0  # mask (= image) width
    height: int = 0  # mask (= image) height
    polygons: list[np.ndarray] = field(default_factory=list)  # each (N, 2) float32 x, y
    rle_counts: str | None = None  # COCO compressed RLE counts, when the mask came as RLE
    png: bytes | None = None  # 8-bit PNG, when the mask came as PNG
    _mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def has_mask(self) -> bool:
        return self.rle_counts is not None or self.png is not None or self._mask is not None

    @property
    def mask(self) -> np.ndarray:
        """The mask as a bool array of shape (height, width). Raises ValueError when the
        request asked for mask_encoding="none"."""
        if self._mask is None:
            if self.rle_counts is not None:
                from pycocotools import mask as coco_mask

                decoded = coco_mask.decode(
                    {"size": [self.height, self.width], "counts": self.rle_counts.encode("ascii")}
                )
                self._mask = decoded.astype(bool)
            elif self.png is not None:
                self._mask = decode_png_mask(self.png)
            else:
                raise ValueError("this detection has no mask (mask_encoding was 'none')")
        return self._mask

    @property
    def rle(self) -> dict[str, Any]:
        """COCO RLE: {"size": [height, width], "counts": str}."""
        counts = self.rle_counts
        if counts is None:
            from pycocotools import mask as coco_mask

            encoded = coco_mask.encode(np.asfortranarray(self.mask, dtype=np.uint8))
            counts = encoded["counts"].decode("ascii")
        return {"size": [self.height, self.width], "counts": counts}

    def to_coco(
        self, *, image_id: int = 1, category_id: int = 1, annotation_id: int | None = None
    ) -> dict[str, Any]:
        """A COCO results/annotation dict: RLE segmentation, [x, y, w, h] bbox, area, score."""
        annotation: dict[str, Any] = {
            "image_id": image_id,
            "category_id": category_id,
            "bbox": self.box.to_xywh(),
            "area": int(self.area),
            "score": float(self.score),
            "iscrowd": 0,
            "object_id": self.object_id,
        }
        if annotation_id is not None:
            annotation["id"] = annotation_id
        if self.has_mask:
            annotation["segmentation"] = self.rle
        elif self.polygons:
            annotation["segmentation"] = [
                p.reshape(-1).astype(float).tolist() for p in self.polygons
            ]
        return annotation


def optional_cv2() -> Any:
    """OpenCV when installed (the `client` extra), else None: callers fall back to Pillow."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def decode_png_mask(data: bytes) -> np.ndarray:
    """Decodes an 8-bit PNG mask with OpenCV, else Pillow (both imported lazily)."""
    cv2 = optional_cv2()
    if cv2 is not None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError("the server sent a mask that is not a PNG")
        return image > 127
    try:
        import io

        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "decoding PNG masks needs opencv-python-headless or pillow "
            "(pip install 'sam3-grpc[client]'), or ask for mask_encoding='rle'"
        ) from exc
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")) > 127


@dataclass
class PromptResult:
    """The detections of one prompt of a SegmentImage call, highest score first."""

    prompt_index: int
    prompt: Prompt
    detections: list[Detection]

    def __iter__(self):
        return iter(self.detections)

    def __len__(self) -> int:
        return len(self.detections)

    def __getitem__(self, index: int) -> Detection:
        return self.detections[index]


@dataclass
class SegmentResult:
    """The answer to segment_image: one PromptResult per prompt, in request order."""

    width: int
    height: int
    results: list[PromptResult]
    cache_hit: bool = False

    @property
    def detections(self) -> list[Detection]:
        """Every detection of every prompt."""
        return [d for result in self.results for d in result.detections]

    def __getitem__(self, prompt_index: int) -> PromptResult:
        return self.results[prompt_index]

    def __len__(self) -> int:
        return len(self.results)

    def to_coco(
        self,
        *,
        image_id: int = 1,
        category_ids: Sequence[int] | None = None,
        first_annotation_id: int = 1,
    ) -> list[dict[str, Any]]:
        """COCO annotations of every detection; prompt i gets category_ids[i] (default i + 1)."""
        annotations = []
        next_id = first_annotation_id
        for result in self.results:
            category = (
                category_ids[result.prompt_index]
                if category_ids is not None
                else result.prompt_index + 1
            )
            for detection in result.detections:
                annotations.append(
                    detection.to_coco(
                        image_id=image_id, category_id=category, annotation_id=next_id
                    )
                )
                next_id += 1
        return annotations

    def to_coco_dataset(self, *, file_name: str = "", image_id: int = 1) -> dict[str, Any]:
        """A complete COCO dict: images, annotations, and one category per prompt."""
        return {
            "images": [
                {"id": image_id, "file_name": file_name, "width": self.width, "height": self.height}
            ],
            "annotations": self.to_coco(image_id=image_id),
            "categories": [
                {"id": r.prompt_index + 1, "name": r.prompt.label} for r in self.results
            ],
        }


@dataclass
class FrameResult:
    """Every tracked object on one video frame."""

    frame_index: int
    objects: list[Detection]

    def __iter__(self):
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def by_object_id(self) -> dict[int, Detection]:
        return {d.object_id: d for d in self.objects}


@dataclass
class AddPromptResult(FrameResult):
    """The prompted frame after add_prompt, and the object ids the prompt created or refined."""

    object_ids: list[int] = field(default_factory=list)


@dataclass
class PropagateFrame(FrameResult):
    """One frame streamed by propagate; frames_done counts this one, out of frames_total."""

    frames_done: int = 0
    frames_total: int = 0


@dataclass
class Session:
    """A video session as the server describes it. `target` is the server that owns it."""

    session_id: str
    frame_count: int
    fps: float
    width: int
    height: int
    uploaded: bool = False
    object_ids: list[int] = field(default_factory=list)
    create_time: datetime.datetime | None = None
    last_use_time: datetime.datetime | None = None
    expire_time: datetime.datetime | None = None
    propagating: bool = False
    memory_bytes: int = 0
    target: str = ""
    # Behind Envoy, the routing header value that pins the session to its replica (the client
    # sends it on every call about the session); None on a direct connection.
    route: str | None = None


@dataclass
class QueueStatus:
    depth: int
    capacity: int
    running: int
    completed: int
    rejected: int
    dropped: int


@dataclass
class CacheStatus:
    entries: int
    capacity: int
    hits: int
    misses: int
    bytes: int


@dataclass
class ServerStatus:
    """The server's model, queue, cache, session and memory state. Durations in seconds."""

    model_name: str
    model_kind: str  # "real", "tiny", "synthetic" or "unspecified"
    device: str
    ready: bool
    version: str
    weights_source: str
    uptime_s: float
    load_s: float
    warmup_s: float
    active_sessions: int
    session_memory_bytes: int
    memory_used_bytes: int
    memory_total_bytes: int
    queue: QueueStatus
    cache: CacheStatus
    target: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def local_path(value: Any) -> str | None:
    """The filesystem path of a str/PathLike (not ServerPath), else None."""
    if isinstance(value, ServerPath):
        return None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return None
