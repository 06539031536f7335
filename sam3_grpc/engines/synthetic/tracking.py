"""One tracking step of the synthetic engine: regions of each object's colour are matched to
the object's mask on the neighbouring frame."""

from __future__ import annotations

import collections
from collections.abc import Callable

import cv2
import numpy as np

from sam3_grpc.engines.synthetic.colours import colour_mask
from sam3_grpc.engines.synthetic.regions import (
    Components,
    Patch,
    Ref,
    Roi,
    assign,
    expand,
    grow,
    merge,
    nearest,
)


class Tracker:
    """Moves objects from one frame to the next. Regions smaller than `min_area` are ignored."""

    def __init__(self, min_area: int) -> None:
        self.min_area = min_area

    def track(
        self, frame: np.ndarray, refs: dict[int, Ref], colours: dict[int, str]
    ) -> dict[int, Ref]:
        """One tracking step on an RGB frame: each object takes the regions of its colour that
        overlap its previous mask (each region going to the object overlapping it most), else
        the nearest free region; with none left it is hidden until a region turns up again.

        Only a margin around each object is segmented; the margin grows when a region reaches
        its edge, so results equal those of segmenting the whole frame.
        """
        height, width = frame.shape[:2]
        by_colour: dict[str, list[int]] = collections.defaultdict(list)
        for oid in refs:
            by_colour[colours[oid]].append(oid)
        rois = {oid: expand(refs[oid].patch, height, width) for oid in refs}
        roi_area = sum((r.y1 - r.y0) * (r.x1 - r.x0) for r in rois.values())
        whole_hsv = None
        if roi_area * 3 >= height * width:
            whole_hsv = cv2.cvtColor(frame, cv2.COLOR_RGB2HSV)

        def hsv_of(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            if whole_hsv is not None:
                return whole_hsv[y0:y1, x0:x1]
            return cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_RGB2HSV)

        out: dict[int, Ref] = {}
        for colour, oids in by_colour.items():
            clusters = merge(
                [Roi(rois[o].y0, rois[o].y1, rois[o].x0, rois[o].x1, [o]) for o in oids]
            )
            while True:
                found: dict[int, Patch] = {}
                lost: list[int] = []
                grown = None
                for roi in clusters:
                    comps = Components(
                        colour_mask(hsv_of(roi.y0, roi.y1, roi.x0, roi.x1), colour),
                        self.min_area,
                        roi.y0,
                        roi.x0,
                        stats=False,
                    )
                    picks = assign(comps, [(oid, refs[oid].patch) for oid in roi.members])
                    patches = {oid: comps.patch(ids) for oid, ids in picks.items() if ids}
                    bigger = grow(roi, list(patches.values()), height, width)
                    if bigger is not None:
                        grown = (roi, bigger)
                        break
                    found.update(patches)
                    lost.extend(oid for oid in roi.members if oid not in patches)
                if grown is None:
                    break
                clusters = merge([c for c in clusters if c is not grown[0]] + [grown[1]])
            if lost:
                found.update(self._find_lost(hsv_of, colour, lost, refs, found, height, width))
            for oid in oids:
                patch = found.get(oid)
                out[oid] = Ref(patch) if patch is not None else Ref(refs[oid].patch, False)
        return out

    def _find_lost(
        self,
        hsv_of: Callable[..., np.ndarray],
        colour: str,
        lost: list[int],
        refs: dict[int, Ref],
        found: dict[int, Patch],
        height: int,
        width: int,
    ) -> dict[int, Patch]:
        """Gives objects with nothing near them the nearest free region of the whole frame."""
        comps = Components(colour_mask(hsv_of(0, height, 0, width), colour), self.min_area)
        free = comps.valid.copy()
        for patch in found.values():
            crop = comps.labels[patch.y0 : patch.y1, patch.x0 : patch.x1]
            free &= ~comps.touching(crop[patch.mask])
        picks = nearest(comps, free, [(oid, refs[oid].patch) for oid in lost])
        return {oid: comps.patch([label]) for oid, label in picks.items()}
