"""A non-neural engine that segments by colour, for end-to-end tests and load tests.

Like Triton's identity models it exercises everything around the model — the servicers, the
executor, the caches, mask encoding — with answers a test can predict to the pixel:

- A text prompt names a colour ("red", "a red car"): every 8-connected region of that colour is
  one detection, largest first.
- A positive point picks the region of the colour under it; a positive box picks the regions of
  the box's colour that overlap it, merged into one object. The box's colour is the commonest
  among regions lying wholly inside it (so a loose box around a disc picks the disc, not the
  background), else among all its pixels. With several positives, the first point (else the
  first box) sets the colour. Text with boxes or points keeps only the regions they touch.
  Negative points and boxes drop the regions they touch.
- In a video, each object keeps its colour and follows the region of that colour that overlaps
  its mask on the previous frame most (or, failing that, the nearest free one), starting from
  the seed mask of its nearest prompted frame. Without any region of its colour left it is
  hidden, and comes back when one appears.

Colours are matched in HSV with tolerances, so shapes drawn without anti-aliasing in a lossless
image come back pixel-exact and JPEG or MP4 copies come back within a pixel at the edges. The
canonical RGB of each colour is in `COLOURS`; the matching bands are in `_RANGES`. This module
does not import torch.
"""

from __future__ import annotations

import collections
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from sam3_grpc.domain import (
    Box,
    EngineInfo,
    FrameOutput,
    LabeledBox,
    LabeledPoint,
    ModelKind,
    Prompt,
    RawDetection,
    VideoSource,
)
from sam3_grpc.engines.base import Engine
from sam3_grpc.errors import DataLoss, FailedPrecondition, InvalidArgument

# Canonical RGB of every colour the engine knows; draw with these and the masks are exact.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 255, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "purple": (128, 0, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "black": (0, 0, 0),
}
_ALIASES = {"grey": "gray"}

# Tolerances, in OpenCV's 8-bit HSV (H in [0, 180), S and V in [0, 256)). Chromatic colours need
# S >= 80 and V >= 90 and a hue in their band; white, gray and black need S < 60 (black: any S)
# and a value band. The classes are disjoint, so a pixel has at most one colour.
CHROMA_S_MIN = 80
CHROMA_V_MIN = 90
ACHROMATIC_S_MAX = 59
WHITE_V_MIN = 180
BLACK_V_MAX = 69
_HUE_BANDS: dict[str, tuple[tuple[int, int], ...]] = {
    "red": ((0, 7), (165, 179)),
    "orange": ((8, 22),),
    "yellow": ((23, 44),),
    "green": ((45, 74),),
    "cyan": ((75, 104),),
    "blue": ((105, 127),),
    "purple": ((128, 142),),
    "magenta": ((143, 164),),
}
# Inclusive (lower, upper) HSV bounds for cv2.inRange, one or two per colour.
_RANGES: dict[str, tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]] = {
    **{
        name: tuple(((lo, CHROMA_S_MIN, CHROMA_V_MIN), (hi, 255, 255)) for lo, hi in bands)
        for name, bands in _HUE_BANDS.items()
    },
    "white": (((0, 0, WHITE_V_MIN), (179, ACHROMATIC_S_MAX, 255)),),
    "gray": (((0, 0, BLACK_V_MAX + 1), (179, ACHROMATIC_S_MAX, WHITE_V_MIN - 1)),),
    "black": (((0, 0, 0), (179, 255, BLACK_V_MAX)),),
}
_RANGE_ARRAYS = {
    name: tuple((np.array(lo, np.uint8), np.array(hi, np.uint8)) for lo, hi in ranges)
    for name, ranges in _RANGES.items()
}

_AREA = cv2.CC_STAT_AREA
_LEFT = cv2.CC_STAT_LEFT
_TOP = cv2.CC_STAT_TOP
_WIDTH = cv2.CC_STAT_WIDTH
_HEIGHT = cv2.CC_STAT_HEIGHT

# A clicked pixel with no colour (a smeared edge) takes the colour found around it, this far out.
_POINT_SEARCH_RADIUS = 3
# Decoded frames kept per session, and frames decoded per backward seek in a container.
_FRAME_CACHE_FRAMES = 16
_FRAME_CACHE_BYTES = 256 << 20
_BACKWARD_CHUNK = 8
# Frames skipped with grab() rather than a seek when reading ahead in a container.
_MAX_GRAB_AHEAD = 32


def colour_from_text(text: str) -> str:
    """The first known colour word of a phrase ("a Red car" → "red"); InvalidArgument if none."""
    for word in re.findall(r"[a-z]+", text.lower()):
        word = _ALIASES.get(word, word)
        if word in COLOURS:
            return word
    known = ", ".join([*COLOURS, *_ALIASES])
    raise InvalidArgument(
        f"the synthetic engine segments by colour; the text {text!r} names none of: {known}"
    )


def colour_mask(hsv: np.ndarray, colour: str) -> np.ndarray:
    """uint8 mask (255 where the HSV pixel has `colour`) of an (H, W, 3) HSV array."""
    ranges = _RANGE_ARRAYS[colour]
    mask = cv2.inRange(hsv, *ranges[0])
    for lo, hi in ranges[1:]:
        mask = cv2.bitwise_or(mask, cv2.inRange(hsv, lo, hi))
    return mask


def _dominant_colour(hsv: np.ndarray) -> str | None:
    """The known colour covering most pixels of an HSV array; None when none covers any."""
    if hsv.size == 0:
        return None
    counts = {name: cv2.countNonZero(colour_mask(hsv, name)) for name in COLOURS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else None


class _Patch:
    """A mask stored as its tight bounding box: `mask` covers rows y0.. and columns x0..."""

    __slots__ = ("_centroid", "mask", "x0", "y0")

    def __init__(self, y0: int, x0: int, mask: np.ndarray) -> None:
        self.y0, self.x0, self.mask = y0, x0, mask  # mask: bool, tight
        self._centroid: tuple[float, float] | None = None

    @property
    def y1(self) -> int:
        return self.y0 + self.mask.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.mask.shape[1]

    @property
    def centroid(self) -> tuple[float, float]:
        """(x, y) in frame coordinates; computed on first use (only lost objects need it)."""
        if self._centroid is None:
            ys, xs = np.nonzero(self.mask)
            self._centroid = (self.x0 + float(xs.mean()), self.y0 + float(ys.mean()))
        return self._centroid

    def box(self) -> Box:
        return Box(float(self.x0), float(self.y0), float(self.x1), float(self.y1))

    def full(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), bool)
        out[self.y0 : self.y1, self.x0 : self.x1] = self.mask
        return out

    def detection(self, height: int, width: int, object_id: int) -> RawDetection:
        return RawDetection(self.full(height, width), 1.0, object_id, self.box())


class _Components:
    """Connected components of one colour mask, in the coordinates of a region of interest.

    cv2.connectedComponentsWithStats costs several times more than the labelling alone on the
    small regions tracking looks at, so with `stats=False` the statistics are derived from the
    labels only when needed.
    """

    def __init__(
        self, mask: np.ndarray, min_area: int, y0: int = 0, x0: int = 0, *, stats: bool = True
    ) -> None:
        self.y0, self.x0 = y0, x0
        self._stats: np.ndarray | None = None
        self._centroids: np.ndarray | None = None
        if stats:
            self.n, self.labels, self._stats, self._centroids = cv2.connectedComponentsWithStats(
                mask, connectivity=8, ltype=cv2.CV_32S
            )
        else:
            self.n, self.labels = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
        if min_area > 1:
            self.valid = self.areas >= min_area
        else:
            self.valid = np.ones(self.n, bool)
        self.valid[0] = False

    @property
    def areas(self) -> np.ndarray:
        if self._stats is not None:
            return self._stats[:, _AREA]
        return np.bincount(self.labels.ravel(), minlength=self.n)

    @property
    def centroids(self) -> np.ndarray:
        """(x, y) per component, in region coordinates."""
        if self._centroids is None:
            flat = self.labels.ravel()
            ys, xs = np.divmod(np.arange(flat.size), self.labels.shape[1])
            area = np.maximum(np.bincount(flat, minlength=self.n), 1)
            self._centroids = np.stack(
                [np.bincount(flat, xs, self.n) / area, np.bincount(flat, ys, self.n) / area], 1
            )
        return self._centroids

    def touching(self, labels: np.ndarray) -> np.ndarray:
        """Bool per component: whether it occurs in `labels` (a crop of self.labels)."""
        found = np.bincount(labels.ravel(), minlength=self.n) > 0
        return found & self.valid

    def label_near(self, x: int, y: int) -> int:
        """The component at pixel (x, y), else the commonest one within a few pixels, else 0."""
        label = int(self.labels[y, x])
        if self.valid[label]:
            return label
        r = _POINT_SEARCH_RADIUS
        window = self.labels[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
        counts = np.bincount(window.ravel(), minlength=self.n) * self.valid
        return int(counts.argmax()) if counts.max() > 0 else 0

    def patch(self, ids: Sequence[int] | np.ndarray) -> _Patch:
        """The union of components `ids` (non-empty), in frame coordinates."""
        ids = np.asarray(ids, np.intp)
        if self._stats is not None:
            stats = self._stats[ids]
            top, left = int(stats[:, _TOP].min()), int(stats[:, _LEFT].min())
            bottom = int((stats[:, _TOP] + stats[:, _HEIGHT]).max())
            right = int((stats[:, _LEFT] + stats[:, _WIDTH]).max())
            crop = self.labels[top:bottom, left:right]
        else:
            crop, top, left = self.labels, 0, 0
        if len(ids) == 1:
            mask = crop == ids[0]
        else:
            lut = np.zeros(self.n, bool)
            lut[ids] = True
            mask = lut[crop]
        if self._stats is None:
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            mask = mask[top:bottom, left:right]
        return _Patch(int(top) + self.y0, int(left) + self.x0, mask)

    def ordered(self, ids: np.ndarray) -> list[int]:
        """Component ids by area descending, then top, then left."""
        s = self._stats
        assert s is not None
        return sorted((int(i) for i in ids), key=lambda i: (-s[i, _AREA], s[i, _TOP], s[i, _LEFT]))


@dataclass(frozen=True)
class _Ref:
    """An object's mask on the last processed frame, or where it was last seen (visible=False)."""

    patch: _Patch
    visible: bool = True


@dataclass
class _Roi:
    y0: int
    y1: int
    x0: int
    x1: int
    members: list[int]

    def intersects(self, other: _Roi) -> bool:
        return (
            self.y0 < other.y1 and other.y0 < self.y1 and self.x0 < other.x1 and other.x0 < self.x1
        )


@dataclass
class EncodedImage:
    """What `SyntheticEngine.encode_image` returns: the image in HSV."""

    hsv: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.hsv.nbytes


class _FrameReader:
    """Decodes frames on demand, keeping a small LRU of decoded (BGR) frames.

    A container stays open: reading the next frame decodes sequentially, a short jump ahead
    grabs, anything else seeks with CAP_PROP_POS_FRAMES. Reading backwards seeks to a chunk of
    frames before the wanted one and decodes the chunk into the cache, so a backward walk costs
    about as much as a forward one.
    """

    def __init__(self, source: VideoSource) -> None:
        self.path = source.path
        self.frame_count = source.info.frame_count
        self._files: list[str] | None = None
        self._capture: cv2.VideoCapture | None = None
        self._position = 0  # index of the frame the capture decodes next
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cache_frames = _FRAME_CACHE_FRAMES
        if source.is_frame_folder or os.path.isdir(self.path):
            names = [n for n in os.listdir(self.path) if n.lower().endswith((".jpg", ".jpeg"))]
            if not names:
                raise InvalidArgument(f"no .jpg or .jpeg frames in {self.path}")
            # Natural order: "2.jpg" before "10.jpg"; zero-padded names sort as plain text does.
            names.sort(key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
            self._files = [os.path.join(self.path, n) for n in names]
            self.frame_count = min(self.frame_count or len(names), len(names))
        else:
            self._capture = cv2.VideoCapture(self.path)
            if not self._capture.isOpened():
                raise InvalidArgument(f"cannot open video {self.path}")
            if self.frame_count <= 0:
                self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        first = self.read(0)
        self.height, self.width = first.shape[:2]
        self._cache_frames = max(2, min(_FRAME_CACHE_FRAMES, _FRAME_CACHE_BYTES // first.nbytes))

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self._cache.values())

    def read(self, index: int) -> np.ndarray:
        frame = self._cache.get(index)
        if frame is not None:
            self._cache.move_to_end(index)
            return frame
        if self._files is not None:
            frame = cv2.imread(self._files[index], cv2.IMREAD_COLOR)
            if frame is None:
                raise DataLoss(f"cannot decode frame {index} ({self._files[index]})")
            self._remember(index, frame)
            return frame
        if index < self._position:  # going back: decode a chunk ending at `index`
            first = max(0, index - _BACKWARD_CHUNK + 1)
            self._seek(first)
            for i in range(first, index):
                self._remember(i, self._decode(i))
        elif index - self._position > _MAX_GRAB_AHEAD:
            self._seek(index)
        else:
            while self._position < index:
                if not self._opened().grab():
                    raise DataLoss(f"cannot decode frame {self._position} of {self.path}")
                self._position += 1
        frame = self._decode(index)
        self._remember(index, frame)
        return frame

    def _seek(self, index: int) -> None:
        self._opened().set(cv2.CAP_PROP_POS_FRAMES, index)
        self._position = index

    def _opened(self) -> cv2.VideoCapture:
        if self._capture is None:
            raise FailedPrecondition("the video is closed")
        return self._capture

    def _decode(self, index: int) -> np.ndarray:
        ok, frame = self._opened().read()
        if not ok or frame is None:
            raise DataLoss(f"cannot decode frame {index} of {self.path}")
        self._position = index + 1
        return frame

    def _remember(self, index: int, frame: np.ndarray) -> None:
        self._cache[index] = frame
        self._cache.move_to_end(index)
        while len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self._cache.clear()
        if self._capture is not None:
            self._capture.release()
            self._capture = None


@dataclass
class ObjectTrack:
    """One object of a session: its colour and, per prompted frame, its prompt and seed mask."""

    colour: str | None  # None only while it has selected nothing
    prompts: dict[int, Prompt] = field(default_factory=dict)
    seeds: dict[int, _Patch | None] = field(default_factory=dict)  # None: selected nothing

    def nearest_seed(self, frame_index: int) -> int:
        # Ties go to the earlier frame, so the object is tracked forwards.
        return min(self.seeds, key=lambda f: (abs(f - frame_index), f))


class SyntheticSession:
    """The state of one video session: the frame reader and the objects with their prompts."""

    def __init__(self, source: VideoSource, reader: _FrameReader) -> None:
        self.source = source
        self.reader = reader
        self.objects: dict[int, ObjectTrack] = {}
        self.next_id = 1
        self.closed = False


class SyntheticEngine(Engine):
    """Segments by colour with OpenCV; see the module docstring for the rules.

    `latency_ms` models a real model's device time: the engine sleeps that long once per
    `encode_image`, once per `add_prompt` and once per propagated frame. `device` is only
    reported in `info`; the work always runs on the CPU. Regions smaller than `min_area` pixels
    are ignored (the default 1 keeps every region; raise it for noisy footage).

    For tests: `calls` counts calls per method name ("encode_image", "predict", "start_session",
    "add_prompt", "propagate", "propagate_step" per yielded frame, "track_frame" per frame
    tracked including catch-up, ...), and `before_call`, when set, is called with the name at the
    start of encode_image, predict, start_session, add_prompt and every propagate_step — block
    on an Event in it to hold the engine, or raise to inject a fault.
    """

    def __init__(self, *, latency_ms: float = 0.0, device: str = "cpu", min_area: int = 1) -> None:
        self.latency_ms = latency_ms
        self.min_area = max(1, int(min_area))
        self.calls: collections.Counter[str] = collections.Counter()
        self.before_call: Callable[[str], None] | None = None
        self._info = EngineInfo(
            name="synthetic",
            kind=ModelKind.SYNTHETIC,
            device=device,
            weights_source="none",
            default_score_threshold=0.5,
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if self.before_call is not None:
            self.before_call(name)

    def _sleep(self) -> None:
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000.0)

    # ----- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        self.calls["load"] += 1

    def warmup(self) -> None:
        self.calls["warmup"] += 1
        self.predict(self.encode_image(np.zeros((64, 64, 3), np.uint8)), [Prompt(text="red")])

    # ----- images ----------------------------------------------------------------------------
    def encode_image(self, image: np.ndarray) -> EncodedImage:
        self._enter("encode_image")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidArgument(f"expected an RGB uint8 (H, W, 3) image, got {image.shape}")
        hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
        self._sleep()
        return EncodedImage(hsv)

    def state_nbytes(self, state: Any) -> int:
        return state.nbytes

    def predict(self, state: Any, prompts: Sequence[Prompt]) -> list[list[RawDetection]]:
        self._enter("predict")
        height, width = state.hsv.shape[:2]
        results = []
        for prompt in prompts:
            _, patches = self._select(state.hsv, prompt, single=not prompt.text)
            results.append([p.detection(height, width, i) for i, p in enumerate(patches, 1)])
        return results

    def _select(
        self,
        hsv: np.ndarray,
        prompt: Prompt,
        *,
        single: bool,
        colour: str | None = None,
        base: _Patch | None = None,
    ) -> tuple[str | None, list[_Patch]]:
        """Evaluates a prompt on a whole HSV image: (its colour, the selected regions).

        `single` merges the selection into one patch; otherwise each region is its own patch,
        largest first. Without text or positive prompts, the regions of `colour` overlapping
        `base` are the starting selection (a refinement with only negative clicks).
        """
        height, width = hsv.shape[:2]
        boxes = [(b.positive, r) for b in prompt.boxes if (r := _box_pixels(b, width, height))]
        points = [(p.positive, _point_pixel(p, width, height)) for p in prompt.points]
        positive_points = [xy for positive, xy in points if positive]
        positive_boxes = [r for positive, r in boxes if positive]
        if prompt.text:
            colour = colour_from_text(prompt.text)
        elif positive_points:
            x, y = positive_points[0]
            colour = _dominant_colour(_window(hsv, x, y, 0)) or _dominant_colour(
                _window(hsv, x, y, _POINT_SEARCH_RADIUS)
            )
        elif positive_boxes:
            colour = self._box_colour(hsv, *positive_boxes[0])
        elif base is None:
            colour = None
        if colour is None:
            return None, []

        comps = _Components(colour_mask(hsv, colour), self.min_area)
        if positive_points or positive_boxes:
            selected = np.zeros(comps.n, bool)
            for y0, y1, x0, x1 in positive_boxes:
                selected |= comps.touching(comps.labels[y0:y1, x0:x1])
            for x, y in positive_points:
                selected[comps.label_near(x, y)] = True
        elif prompt.text:
            selected = comps.valid.copy()
        elif base is not None:
            selected = comps.touching(comps.labels[base.y0 : base.y1, base.x0 : base.x1][base.mask])
        else:
            selected = np.zeros(comps.n, bool)
        for positive, (y0, y1, x0, x1) in boxes:
            if not positive:
                selected &= ~comps.touching(comps.labels[y0:y1, x0:x1])
        for positive, (x, y) in points:
            if not positive:
                selected[comps.labels[y, x]] = False
        selected[0] = False
        ids = np.flatnonzero(selected & comps.valid)
        if len(ids) == 0:
            return colour, []
        if single:
            return colour, [comps.patch(ids)]
        return colour, [comps.patch([i]) for i in comps.ordered(ids)]

    def _box_colour(self, hsv: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> str | None:
        """The colour a box frames: the commonest among regions lying wholly inside it, or, when
        no region does, the commonest among its pixels. So a loose box around a disc picks the
        disc, not the background around it."""
        height, width = hsv.shape[:2]
        # Segment a one-pixel ring around the box too: a region leaving the box crosses it.
        cy0, cy1, cx0, cx1 = max(0, y0 - 1), min(height, y1 + 1), max(0, x0 - 1), min(width, x1 + 1)
        crop = hsv[cy0:cy1, cx0:cx1]
        enclosed: dict[str, int] = {}
        total: dict[str, int] = {}
        for name in COLOURS:
            mask = colour_mask(crop, name)
            total[name] = cv2.countNonZero(mask[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0])
            if not total[name]:
                continue
            comps = _Components(mask, self.min_area)
            ring = [comps.labels[0, :]] if cy0 < y0 else []
            ring += [comps.labels[-1, :]] if cy1 > y1 else []
            ring += [comps.labels[:, 0]] if cx0 < x0 else []
            ring += [comps.labels[:, -1]] if cx1 > x1 else []
            inside = comps.valid.copy()
            for edge in ring:
                inside[edge] = False
            enclosed[name] = int(comps.areas[inside].sum())
        for counts in (enclosed, total):
            best = max(counts, key=counts.__getitem__, default=None)
            if best is not None and counts[best] > 0:
                return best
        return None

    # ----- video sessions --------------------------------------------------------------------
    def start_session(self, source: VideoSource) -> SyntheticSession:
        self._enter("start_session")
        return SyntheticSession(source, _FrameReader(source))

    def add_prompt(
        self, state: Any, frame_index: int, prompt: Prompt, object_id: int | None
    ) -> tuple[FrameOutput, list[int]]:
        self._enter("add_prompt")
        session = self._open(state)
        self._check_frame(session, frame_index)
        if prompt.is_empty():
            raise InvalidArgument("the prompt is empty")
        if object_id is not None and object_id not in session.objects:
            raise InvalidArgument(f"no object {object_id} in this session")
        hsv = cv2.cvtColor(session.reader.read(frame_index), cv2.COLOR_BGR2HSV)

        if object_id is not None:
            # Refine: the object's prompts on this frame accumulate; a prompt with only negative
            # clicks starts from the object's current mask on this frame.
            track = session.objects[object_id]
            old = track.prompts.get(frame_index)
            if old is not None:
                prompt = Prompt(
                    text=prompt.text or old.text,
                    boxes=old.boxes + prompt.boxes,
                    points=old.points + prompt.points,
                )
            base = self._track_to(session, frame_index, [object_id]).get(object_id)
            colour, patches = self._select(
                hsv,
                prompt,
                single=True,
                colour=track.colour,
                base=base.patch if base and base.visible else None,
            )
            track.colour = colour or track.colour
            track.prompts[frame_index] = prompt
            track.seeds[frame_index] = patches[0] if patches else None
            affected = [object_id]
        else:
            colour, selected = self._select(hsv, prompt, single=not prompt.text)
            seeds: list[_Patch | None] = list(selected)
            if not prompt.text and not seeds:
                seeds = [None]  # a click on nothing still makes an (empty) object
            affected = []
            for patch in seeds:
                object_id = session.next_id
                session.next_id += 1
                track = ObjectTrack(colour)
                track.prompts[frame_index] = prompt
                track.seeds[frame_index] = patch
                session.objects[object_id] = track
                affected.append(object_id)
        self._sleep()
        refs = self._track_to(session, frame_index, list(session.objects))
        return self._output(session, frame_index, refs), affected

    def remove_object(self, state: Any, object_id: int) -> None:
        self.calls["remove_object"] += 1
        session = self._open(state)
        if object_id not in session.objects:
            raise InvalidArgument(f"no object {object_id} in this session")
        del session.objects[object_id]

    def reset_session(self, state: Any) -> None:
        self.calls["reset_session"] += 1
        session = self._open(state)
        session.objects.clear()
        session.next_id = 1

    def object_ids(self, state: Any) -> list[int]:
        return sorted(self._open(state).objects)

    def prompted_frames(self, state: Any) -> list[int]:
        session = self._open(state)
        return sorted({f for track in session.objects.values() for f in track.seeds})

    def propagate(
        self, state: Any, forward: Sequence[int], backward: Sequence[int]
    ) -> Iterator[FrameOutput]:
        self.calls["propagate"] += 1
        session = self._open(state)
        for frame_index in (*forward, *backward):
            self._check_frame(session, frame_index)
        return self._propagate(session, list(forward), list(backward))

    def _propagate(
        self, session: SyntheticSession, forward: list[int], backward: list[int]
    ) -> Iterator[FrameOutput]:
        # Tracking state lives only in this generator, so closing it early changes nothing.
        start_refs: dict[int, _Ref] | None = None
        for part in (forward, backward):
            refs: dict[int, _Ref] = {}
            for step, frame_index in enumerate(part):
                self._enter("propagate_step")
                self._open(session)
                ids = list(session.objects)
                if step > 0:
                    refs = self._advance(session, refs, frame_index, ids)
                elif part is backward and forward and frame_index == forward[0] - 1:
                    refs = self._advance(session, start_refs or {}, frame_index, ids)
                else:
                    refs = self._track_to(session, frame_index, ids)
                if part is forward and step == 0:
                    start_refs = refs
                self._sleep()
                yield self._output(session, frame_index, refs)

    def session_nbytes(self, state: Any) -> int:
        session: SyntheticSession = state
        seeds = sum(p.mask.nbytes for t in session.objects.values() for p in t.seeds.values() if p)
        return seeds + (0 if session.closed else session.reader.nbytes)

    def close_session(self, state: Any) -> None:
        self.calls["close_session"] += 1
        session: SyntheticSession = state
        session.closed = True
        session.objects.clear()
        session.reader.close()

    # ----- tracking --------------------------------------------------------------------------
    @staticmethod
    def _open(state: Any) -> SyntheticSession:
        if not isinstance(state, SyntheticSession):
            raise TypeError(f"not a synthetic session: {type(state).__name__}")
        if state.closed:
            raise FailedPrecondition("the session is closed")
        return state

    @staticmethod
    def _check_frame(session: SyntheticSession, frame_index: int) -> None:
        if not 0 <= frame_index < session.reader.frame_count:
            raise InvalidArgument(f"frame {frame_index} outside [0, {session.reader.frame_count})")

    def _output(
        self, session: SyntheticSession, frame_index: int, refs: dict[int, _Ref]
    ) -> FrameOutput:
        h, w = session.reader.height, session.reader.width
        objects = [
            ref.patch.detection(h, w, oid)
            for oid, ref in sorted(refs.items())
            if ref.visible and oid in session.objects
        ]
        return FrameOutput(frame_index, objects)

    def _track_to(self, session: SyntheticSession, target: int, ids: list[int]) -> dict[int, _Ref]:
        """Every object of `ids` on frame `target`, tracked from its nearest seed."""
        before: list[tuple[int, int]] = []  # (seed frame, object id), seed at or before target
        after: list[tuple[int, int]] = []
        for oid in ids:
            track = session.objects[oid]
            if track.seeds:
                seed = track.nearest_seed(target)
                (before if seed <= target else after).append((seed, oid))
        refs: dict[int, _Ref] = {}
        for group, step in ((before, 1), (after, -1)):
            if not group:
                continue
            group_ids = [oid for _, oid in group]
            frame_index = min(group)[0] if step == 1 else max(group)[0]
            cur: dict[int, _Ref] = {}
            while True:
                cur = self._advance(session, cur, frame_index, group_ids)
                if frame_index == target:
                    break
                frame_index += step
            refs.update(cur)
        return refs

    def _advance(
        self, session: SyntheticSession, refs: dict[int, _Ref], frame_index: int, ids: list[int]
    ) -> dict[int, _Ref]:
        """Moves `refs` from the neighbouring frame to `frame_index`, then applies its seeds."""
        objects = session.objects
        refs = {oid: ref for oid, ref in refs.items() if oid in objects}
        seeded = {oid for oid in ids if frame_index in objects[oid].seeds}
        # Only an object that has selected something (and so has a colour) can have a ref.
        colours = {oid: c for oid in refs if (c := objects[oid].colour) is not None}
        moving = {oid: ref for oid, ref in refs.items() if oid not in seeded and oid in colours}
        if moving:
            self.calls["track_frame"] += 1
            frame = session.reader.read(frame_index)
            refs = self._track(frame, moving, colours)
        else:
            refs = {}
        for oid in seeded:
            seed = objects[oid].seeds[frame_index]
            if seed is not None:
                refs[oid] = _Ref(seed)
        return refs

    def _track(
        self, frame: np.ndarray, refs: dict[int, _Ref], colours: dict[int, str]
    ) -> dict[int, _Ref]:
        """One tracking step on a BGR frame: each object takes the regions of its colour that
        overlap its previous mask (each region going to the object overlapping it most), else
        the nearest free region; with none left it is hidden until a region turns up again.

        Only a margin around each object is segmented; the margin grows when a region reaches
        its edge, so results equal those of segmenting the whole frame.
        """
        height, width = frame.shape[:2]
        by_colour: dict[str, list[int]] = collections.defaultdict(list)
        for oid in refs:
            by_colour[colours[oid]].append(oid)
        rois = {oid: _expand(refs[oid].patch, height, width) for oid in refs}
        roi_area = sum((r.y1 - r.y0) * (r.x1 - r.x0) for r in rois.values())
        whole_hsv = None
        if roi_area * 3 >= height * width:
            whole_hsv = cv2.cvtColor(frame, cv2.COLOR_BGR2HSV)

        def hsv_of(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            if whole_hsv is not None:
                return whole_hsv[y0:y1, x0:x1]
            return cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2HSV)

        out: dict[int, _Ref] = {}
        for colour, oids in by_colour.items():
            clusters = _merge(
                [_Roi(rois[o].y0, rois[o].y1, rois[o].x0, rois[o].x1, [o]) for o in oids]
            )
            while True:
                found: dict[int, _Patch] = {}
                lost: list[int] = []
                grown = None
                for roi in clusters:
                    comps = _Components(
                        colour_mask(hsv_of(roi.y0, roi.y1, roi.x0, roi.x1), colour),
                        self.min_area,
                        roi.y0,
                        roi.x0,
                        stats=False,
                    )
                    picks = _assign(comps, [(oid, refs[oid].patch) for oid in roi.members])
                    patches = {oid: comps.patch(ids) for oid, ids in picks.items() if ids}
                    bigger = _grow(roi, list(patches.values()), height, width)
                    if bigger is not None:
                        grown = (roi, bigger)
                        break
                    found.update(patches)
                    lost.extend(oid for oid in roi.members if oid not in patches)
                if grown is None:
                    break
                clusters = _merge([c for c in clusters if c is not grown[0]] + [grown[1]])
            if lost:
                found.update(self._find_lost(hsv_of, colour, lost, refs, found, height, width))
            for oid in oids:
                patch = found.get(oid)
                out[oid] = _Ref(patch) if patch is not None else _Ref(refs[oid].patch, False)
        return out

    def _find_lost(
        self,
        hsv_of: Callable[..., np.ndarray],
        colour: str,
        lost: list[int],
        refs: dict[int, _Ref],
        found: dict[int, _Patch],
        height: int,
        width: int,
    ) -> dict[int, _Patch]:
        """Gives objects with nothing near them the nearest free region of the whole frame."""
        comps = _Components(colour_mask(hsv_of(0, height, 0, width), colour), self.min_area)
        free = comps.valid.copy()
        for patch in found.values():
            crop = comps.labels[patch.y0 : patch.y1, patch.x0 : patch.x1]
            free &= ~comps.touching(crop[patch.mask])
        picks = _nearest(comps, free, [(oid, refs[oid].patch) for oid in lost])
        return {oid: comps.patch([label]) for oid, label in picks.items()}


# ----- helpers -------------------------------------------------------------------------------
def _box_pixels(box: LabeledBox, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) pixel range of a box clipped to the image; None when empty."""
    b = box.box
    x0 = min(max(int(np.floor(b.x_min)), 0), width)
    x1 = min(max(int(np.ceil(b.x_max)), 0), width)
    y0 = min(max(int(np.floor(b.y_min)), 0), height)
    y1 = min(max(int(np.ceil(b.y_max)), 0), height)
    return (y0, y1, x0, x1) if x1 > x0 and y1 > y0 else None


def _point_pixel(point: LabeledPoint, width: int, height: int) -> tuple[int, int]:
    x = min(max(int(np.floor(point.x)), 0), width - 1)
    y = min(max(int(np.floor(point.y)), 0), height - 1)
    return x, y


def _window(hsv: np.ndarray, x: int, y: int, r: int) -> np.ndarray:
    return hsv[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]


def _margin(h: int, w: int) -> int:
    """How far around an object to look for it on the next frame. Smaller is faster; an object
    moving further still overlaps the search region's edge (which then grows) or is found by the
    whole-frame search for lost objects."""
    return 8 + max(h, w) // 4


def _expand(patch: _Patch, height: int, width: int) -> _Roi:
    """The region searched for an object on the next frame: its box plus a margin."""
    h, w = patch.mask.shape
    m = _margin(h, w)
    return _Roi(
        max(0, patch.y0 - m),
        min(height, patch.y1 + m),
        max(0, patch.x0 - m),
        min(width, patch.x1 + m),
        [],
    )


def _merge(rois: list[_Roi]) -> list[_Roi]:
    """Merges intersecting regions (with their members) until none intersect."""
    rois = list(rois)
    merged = True
    while merged:
        merged = False
        for i in range(len(rois)):
            for j in range(i + 1, len(rois)):
                a, b = rois[i], rois[j]
                if a.intersects(b):
                    rois[i] = _Roi(
                        min(a.y0, b.y0),
                        max(a.y1, b.y1),
                        min(a.x0, b.x0),
                        max(a.x1, b.x1),
                        a.members + b.members,
                    )
                    del rois[j]
                    merged = True
                    break
            if merged:
                break
    return rois


def _assign(comps: _Components, objects: list[tuple[int, _Patch]]) -> dict[int, list[int]]:
    """Regions per object: by largest overlap with the previous mask, else nearest free one."""
    picks: dict[int, list[int]] = {oid: [] for oid, _ in objects}
    if comps.n <= 1 or not comps.valid.any():
        return picks
    overlap = np.zeros((len(objects), comps.n), np.int64)
    for i, (_, p) in enumerate(objects):
        crop = comps.labels[p.y0 - comps.y0 : p.y1 - comps.y0, p.x0 - comps.x0 : p.x1 - comps.x0]
        overlap[i] = np.bincount(crop[p.mask], minlength=comps.n)
    overlap[:, ~comps.valid] = 0
    owner = overlap.argmax(0)
    owned = overlap.max(0) > 0
    for label in np.flatnonzero(owned):
        picks[objects[owner[label]][0]].append(int(label))
    missing = [(oid, p) for oid, p in objects if not picks[oid]]
    if missing:
        for oid, label in _nearest(comps, comps.valid & ~owned, missing).items():
            picks[oid] = [label]
    return picks


def _nearest(
    comps: _Components, free: np.ndarray, objects: list[tuple[int, _Patch]]
) -> dict[int, int]:
    """Greedily pairs objects with free regions, closest centroids first."""
    labels = np.flatnonzero(free)
    if len(labels) == 0:
        return {}
    pairs: list[tuple[float, int, int]] = []
    for oid, p in objects:
        cx, cy = p.centroid
        centroids = comps.centroids
        d = np.hypot(centroids[labels, 0] + comps.x0 - cx, centroids[labels, 1] + comps.y0 - cy)
        pairs.extend((float(dist), oid, int(label)) for dist, label in zip(d, labels, strict=True))
    pairs.sort()
    picks: dict[int, int] = {}
    taken: set[int] = set()
    for _, oid, label in pairs:
        if oid not in picks and label not in taken:
            picks[oid] = label
            taken.add(label)
    return picks


def _grow(roi: _Roi, patches: list[_Patch], height: int, width: int) -> _Roi | None:
    """A larger region when a picked region reaches an edge of `roi` inside the frame."""
    cut = [
        p
        for p in patches
        if (p.x0 == roi.x0 > 0)
        or (p.y0 == roi.y0 > 0)
        or (p.x1 == roi.x1 < width)
        or (p.y1 == roi.y1 < height)
    ]
    if not cut:
        return None
    y0, y1 = min(p.y0 for p in cut), max(p.y1 for p in cut)
    x0, x1 = min(p.x0 for p in cut), max(p.x1 for p in cut)
    m = _margin(y1 - y0, x1 - x0)
    return _Roi(
        min(roi.y0, max(0, y0 - m)),
        max(roi.y1, min(height, y1 + m)),
        min(roi.x0, max(0, x0 - m)),
        max(roi.x1, min(width, x1 + m)),
        roi.members,
    )
