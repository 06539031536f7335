"""Regions of one colour and their geometry: connected components, masks kept as their tight
bounding box, and the search windows the tracker looks in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sam3_grpc.domain import Box, LabeledBox, LabeledPoint, RawDetection

_AREA = cv2.CC_STAT_AREA
_LEFT = cv2.CC_STAT_LEFT
_TOP = cv2.CC_STAT_TOP
_WIDTH = cv2.CC_STAT_WIDTH
_HEIGHT = cv2.CC_STAT_HEIGHT

# A clicked pixel with no colour (a smeared edge) takes the colour found around it, this far out.
POINT_SEARCH_RADIUS = 3


class Patch:
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


class Components:
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
        r = POINT_SEARCH_RADIUS
        window = self.labels[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
        counts = np.bincount(window.ravel(), minlength=self.n) * self.valid
        return int(counts.argmax()) if counts.max() > 0 else 0

    def patch(self, ids: Sequence[int] | np.ndarray) -> Patch:
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
        return Patch(int(top) + self.y0, int(left) + self.x0, mask)

    def ordered(self, ids: np.ndarray) -> list[int]:
        """Component ids by area descending, then top, then left."""
        s = self._stats
        assert s is not None
        return sorted((int(i) for i in ids), key=lambda i: (-s[i, _AREA], s[i, _TOP], s[i, _LEFT]))


@dataclass(frozen=True)
class Ref:
    """An object's mask on the last processed frame, or where it was last seen (visible=False)."""

    patch: Patch
    visible: bool = True


@dataclass
class Roi:
    y0: int
    y1: int
    x0: int
    x1: int
    members: list[int]

    def intersects(self, other: Roi) -> bool:
        return (
            self.y0 < other.y1 and other.y0 < self.y1 and self.x0 < other.x1 and other.x0 < self.x1
        )


def box_pixels(box: LabeledBox, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) pixel range of a box clipped to the image; None when empty."""
    b = box.box
    x0 = min(max(int(np.floor(b.x_min)), 0), width)
    x1 = min(max(int(np.ceil(b.x_max)), 0), width)
    y0 = min(max(int(np.floor(b.y_min)), 0), height)
    y1 = min(max(int(np.ceil(b.y_max)), 0), height)
    return (y0, y1, x0, x1) if x1 > x0 and y1 > y0 else None


def point_pixel(point: LabeledPoint, width: int, height: int) -> tuple[int, int]:
    x = min(max(int(np.floor(point.x)), 0), width - 1)
    y = min(max(int(np.floor(point.y)), 0), height - 1)
    return x, y


def window(hsv: np.ndarray, x: int, y: int, r: int) -> np.ndarray:
    return hsv[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]


def margin(h: int, w: int) -> int:
    """How far around an object to look for it on the next frame. Smaller is faster; an object
    moving further still overlaps the search region's edge (which then grows) or is found by the
    whole-frame search for lost objects."""
    return 8 + max(h, w) // 4


def expand(patch: Patch, height: int, width: int) -> Roi:
    """The region searched for an object on the next frame: its box plus a margin."""
    h, w = patch.mask.shape
    m = margin(h, w)
    return Roi(
        max(0, patch.y0 - m),
        min(height, patch.y1 + m),
        max(0, patch.x0 - m),
        min(width, patch.x1 + m),
        [],
    )


def merge(rois: list[Roi]) -> list[Roi]:
    """Merges intersecting regions (with their members) until none intersect."""
    rois = list(rois)
    merged = True
    while merged:
        merged = False
        for i in range(len(rois)):
            for j in range(i + 1, len(rois)):
                a, b = rois[i], rois[j]
                if a.intersects(b):
                    rois[i] = Roi(
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


def assign(comps: Components, objects: list[tuple[int, Patch]]) -> dict[int, list[int]]:
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
        for oid, label in nearest(comps, comps.valid & ~owned, missing).items():
            picks[oid] = [label]
    return picks


def nearest(
    comps: Components, free: np.ndarray, objects: list[tuple[int, Patch]]
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


def grow(roi: Roi, patches: list[Patch], height: int, width: int) -> Roi | None:
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
    m = margin(y1 - y0, x1 - x0)
    return Roi(
        min(roi.y0, max(0, y0 - m)),
        max(roi.y1, min(height, y1 + m)),
        min(roi.x0, max(0, x0 - m)),
        max(roi.x1, min(width, x1 + m)),
        roi.members,
    )
