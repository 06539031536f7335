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

Colours and their matching rules are in `colours.py`, region geometry in `regions.py`, one
tracking step in `tracking.py`. Nothing here imports torch.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from sam3_grpc.domain import (
    EngineInfo,
    FrameOutput,
    ModelKind,
    Prompt,
    RawDetection,
    SessionBudget,
    VideoInfo,
)
from sam3_grpc.engines.base import Engine
from sam3_grpc.engines.synthetic.colours import (
    COLOURS,
    colour_from_text,
    colour_mask,
    dominant_colour,
)
from sam3_grpc.engines.synthetic.regions import (
    POINT_SEARCH_RADIUS,
    Components,
    Patch,
    Ref,
    box_pixels,
    point_pixel,
    window,
)
from sam3_grpc.engines.synthetic.tracking import Tracker
from sam3_grpc.errors import FailedPrecondition, InvalidArgument, Reason, ResourceExhausted
from sam3_grpc.media.frames import FrameWindow

# Most objects one session tracks by default (like SAM 3's max_num_objects).
MAX_OBJECTS = 64
SUPPORTED_VIDEO_PROMPTS = (
    "supported: text (every region of a colour), boxes, points; object_id with points"
)


@dataclass
class EncodedImage:
    """What `SyntheticEngine.encode_image` returns: the image in HSV."""

    hsv: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.hsv.nbytes


@dataclass
class ObjectTrack:
    """One object of a session: its colour and, per prompted frame, its prompt and seed mask."""

    colour: str | None  # None only while it has selected nothing
    prompts: dict[int, Prompt] = field(default_factory=dict)
    seeds: dict[int, Patch | None] = field(default_factory=dict)  # None: selected nothing

    def nearest_seed(self, frame_index: int) -> int:
        # Ties go to the earlier frame, so the object is tracked forwards.
        return min(self.seeds, key=lambda f: (abs(f - frame_index), f))


@dataclass(frozen=True)
class Walk:
    """Where the last propagation got to: the objects on its last frame, for a later
    propagation that continues it (same prompts, same direction, the next frame)."""

    version: int
    step: int  # +1 forward, -1 backward
    frame_index: int
    refs: dict[int, Ref]

    def continues(self, version: int, step: int, frame_index: int) -> bool:
        return (
            version == self.version
            and step == self.step
            and frame_index in (self.frame_index, self.frame_index + step)
        )


class SyntheticSession:
    """The state of one video session: its frames and the objects with their prompts."""

    def __init__(self, frames: FrameWindow[np.ndarray]) -> None:
        self.frames = frames
        self.objects: dict[int, ObjectTrack] = {}
        self.next_id = 1
        self.version = 0  # changes with every prompt change
        self.walk: Walk | None = None
        self.closed = False

    def changed(self) -> None:
        self.version += 1
        self.walk = None


class SyntheticEngine(Engine[EncodedImage, SyntheticSession]):
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

    @property
    def max_objects(self) -> int:
        return self._object_limit

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        device: str = "cpu",
        min_area: int = 1,
        max_objects: int | None = None,
    ) -> None:
        self.latency_ms = latency_ms
        self._object_limit = max_objects or MAX_OBJECTS
        self.min_area = max(1, int(min_area))
        self.calls: collections.Counter[str] = collections.Counter()
        self.tracker = Tracker(self.min_area)
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
        hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)
        self._sleep()
        return EncodedImage(hsv)

    def state_nbytes(self, state: EncodedImage) -> int:
        return state.nbytes

    def predict(self, state: EncodedImage, prompts: Sequence[Prompt]) -> list[list[RawDetection]]:
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
        base: Patch | None = None,
    ) -> tuple[str | None, list[Patch]]:
        """Evaluates a prompt on a whole HSV image: (its colour, the selected regions).

        `single` merges the selection into one patch; otherwise each region is its own patch,
        largest first. Without text or positive prompts, the regions of `colour` overlapping
        `base` are the starting selection (a refinement with only negative clicks).
        """
        height, width = hsv.shape[:2]
        boxes = [(b.positive, r) for b in prompt.boxes if (r := box_pixels(b, width, height))]
        points = [(p.positive, point_pixel(p, width, height)) for p in prompt.points]
        positive_points = [xy for positive, xy in points if positive]
        positive_boxes = [r for positive, r in boxes if positive]
        if prompt.text:
            colour = colour_from_text(prompt.text)
        elif positive_points:
            x, y = positive_points[0]
            colour = dominant_colour(window(hsv, x, y, 0)) or dominant_colour(
                window(hsv, x, y, POINT_SEARCH_RADIUS)
            )
        elif positive_boxes:
            colour = self._box_colour(hsv, *positive_boxes[0])
        elif base is None:
            colour = None
        if colour is None:
            return None, []

        comps = Components(colour_mask(hsv, colour), self.min_area)
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
            comps = Components(mask, self.min_area)
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
    def frame_preparer(self) -> Callable[[np.ndarray], np.ndarray]:
        # Frames are kept as decoded (RGB); only the regions tracking looks at become HSV.
        return _as_is

    def session_budget(self, info: VideoInfo, window_frames: int) -> SessionBudget:
        # The window of RGB frames, and per object a seed and a tracked mask (at most a frame
        # each). All on the host: the engine has no device of its own.
        pixels = info.width * info.height
        return SessionBudget(
            host_bytes=window_frames * 3 * pixels + 2 * self._object_limit * pixels
        )

    def start_session(self, frames: FrameWindow[np.ndarray]) -> SyntheticSession:
        self._enter("start_session")
        return SyntheticSession(frames)

    def add_prompt(
        self, state: SyntheticSession, frame_index: int, prompt: Prompt, object_id: int | None
    ) -> tuple[FrameOutput, list[int]]:
        self._enter("add_prompt")
        session = self._open(state)
        self._check_frame(session, frame_index)
        if object_id is not None:
            if object_id not in session.objects:
                raise _unknown_object(object_id)
            if prompt.text or not prompt.points:
                raise InvalidArgument(
                    f"object_id refines an object with points; {SUPPORTED_VIDEO_PROMPTS}",
                    reason=Reason.UNSUPPORTED_PROMPT,
                    field="object_id",
                )
        hsv = cv2.cvtColor(session.frames.get(frame_index), cv2.COLOR_RGB2HSV)

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
            seeds: list[Patch | None] = list(selected)
            if not prompt.text and not seeds:
                seeds = [None]  # a click on nothing still makes an (empty) object
            if len(session.objects) + len(seeds) > self._object_limit:
                raise ResourceExhausted(
                    f"the session would track more than {self._object_limit} objects; remove some "
                    "(RemoveObject) or reset the session",
                    reason=Reason.OBJECT_LIMIT,
                    metadata={"limit": self._object_limit},
                )
            affected = []
            for patch in seeds:
                object_id = session.next_id
                session.next_id += 1
                track = ObjectTrack(colour)
                track.prompts[frame_index] = prompt
                track.seeds[frame_index] = patch
                session.objects[object_id] = track
                affected.append(object_id)
        session.changed()
        self._sleep()
        refs = self._track_to(session, frame_index, list(session.objects))
        return self._output(session, frame_index, refs), affected

    def remove_object(self, state: SyntheticSession, object_id: int) -> None:
        self.calls["remove_object"] += 1
        session = self._open(state)
        if object_id not in session.objects:
            raise _unknown_object(object_id)
        del session.objects[object_id]
        session.changed()

    def reset_session(self, state: SyntheticSession) -> None:
        self.calls["reset_session"] += 1
        session = self._open(state)
        session.objects.clear()
        session.next_id = 1
        session.changed()

    def object_ids(self, state: SyntheticSession) -> list[int]:
        return sorted(self._open(state).objects)

    def prompted_frames(self, state: SyntheticSession) -> list[int]:
        session = self._open(state)
        return sorted({f for track in session.objects.values() for f in track.seeds})

    def propagate(
        self, state: SyntheticSession, forward: Sequence[int], backward: Sequence[int]
    ) -> Iterator[FrameOutput]:
        self.calls["propagate"] += 1
        session = self._open(state)
        for frame_index in (*forward, *backward):
            self._check_frame(session, frame_index)
        return self._propagate(session, list(forward), list(backward))

    def _propagate(
        self, session: SyntheticSession, forward: list[int], backward: list[int]
    ) -> Iterator[FrameOutput]:
        """Each part walks frame to frame. Its first frame continues the last walk when that
        walk (same prompts, same direction) ended just before it, so a propagation resumed
        after a cancel recomputes nothing; otherwise it is tracked from the nearest seeds."""
        start_refs: dict[int, Ref] | None = None
        for part, step_sign in ((forward, 1), (backward, -1)):
            refs: dict[int, Ref] = {}
            for step, frame_index in enumerate(part):
                self._enter("propagate_step")
                self._open(session)
                ids = list(session.objects)
                if step > 0:
                    refs = self._advance(session, refs, frame_index, ids)
                elif part is backward and forward and frame_index == forward[0] - 1:
                    refs = self._advance(session, start_refs or {}, frame_index, ids)
                elif (walk := session.walk) is not None and walk.continues(
                    session.version, step_sign, frame_index
                ):
                    refs = (
                        walk.refs
                        if frame_index == walk.frame_index
                        else self._advance(session, walk.refs, frame_index, ids)
                    )
                else:
                    refs = self._track_to(session, frame_index, ids)
                if part is forward and step == 0:
                    start_refs = refs
                session.walk = Walk(session.version, step_sign, frame_index, refs)
                self._sleep()
                yield self._output(session, frame_index, refs)

    def session_nbytes(self, state: SyntheticSession) -> int:
        session = state
        seeds = sum(p.mask.nbytes for t in session.objects.values() for p in t.seeds.values() if p)
        return seeds + (0 if session.closed else session.frames.nbytes)

    def close_session(self, state: SyntheticSession) -> None:
        self.calls["close_session"] += 1
        session = state
        session.closed = True
        session.objects.clear()
        session.walk = None
        session.frames.close()

    # ----- tracking --------------------------------------------------------------------------
    @staticmethod
    def _open(state: SyntheticSession) -> SyntheticSession:
        if not isinstance(state, SyntheticSession):
            raise TypeError(f"not a synthetic session: {type(state).__name__}")
        if state.closed:
            raise FailedPrecondition("the session is closed")
        return state

    @staticmethod
    def _check_frame(session: SyntheticSession, frame_index: int) -> None:
        count = session.frames.info.frame_count
        if not 0 <= frame_index < count:
            raise InvalidArgument(
                f"frame {frame_index} outside [0, {count})", reason=Reason.FRAME_OUT_OF_RANGE
            )

    def _output(
        self, session: SyntheticSession, frame_index: int, refs: dict[int, Ref]
    ) -> FrameOutput:
        info = session.frames.info
        objects = [
            ref.patch.detection(info.height, info.width, oid)
            for oid, ref in sorted(refs.items())
            if ref.visible and oid in session.objects
        ]
        return FrameOutput(frame_index, objects)

    def _track_to(self, session: SyntheticSession, target: int, ids: list[int]) -> dict[int, Ref]:
        """Every object of `ids` on frame `target`, tracked from its nearest seed."""
        before: list[tuple[int, int]] = []  # (seed frame, object id), seed at or before target
        after: list[tuple[int, int]] = []
        for oid in ids:
            track = session.objects[oid]
            if track.seeds:
                seed = track.nearest_seed(target)
                (before if seed <= target else after).append((seed, oid))
        refs: dict[int, Ref] = {}
        for group, step in ((before, 1), (after, -1)):
            if not group:
                continue
            group_ids = [oid for _, oid in group]
            frame_index = min(group)[0] if step == 1 else max(group)[0]
            cur: dict[int, Ref] = {}
            while True:
                cur = self._advance(session, cur, frame_index, group_ids)
                if frame_index == target:
                    break
                frame_index += step
            refs.update(cur)
        return refs

    def _advance(
        self, session: SyntheticSession, refs: dict[int, Ref], frame_index: int, ids: list[int]
    ) -> dict[int, Ref]:
        """Moves `refs` from the neighbouring frame to `frame_index`, then applies its seeds."""
        objects = session.objects
        refs = {oid: ref for oid, ref in refs.items() if oid in objects}
        seeded = {oid for oid in ids if frame_index in objects[oid].seeds}
        # Only an object that has selected something (and so has a colour) can have a ref.
        colours = {oid: c for oid in refs if (c := objects[oid].colour) is not None}
        moving = {oid: ref for oid, ref in refs.items() if oid not in seeded and oid in colours}
        if moving:
            self.calls["track_frame"] += 1
            refs = self.tracker.track(session.frames.get(frame_index), moving, colours)
        else:
            refs = {}
        for oid in seeded:
            seed = objects[oid].seeds[frame_index]
            if seed is not None:
                refs[oid] = Ref(seed)
        return refs


def _as_is(frame: np.ndarray) -> np.ndarray:
    return frame


def _unknown_object(object_id: int) -> InvalidArgument:
    return InvalidArgument(
        f"no object {object_id} in this session", reason=Reason.UNKNOWN_OBJECT, field="object_id"
    )
