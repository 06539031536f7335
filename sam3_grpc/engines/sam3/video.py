"""Video sessions driven directly on `Sam3VideoInferenceWithInstanceInteractivity`.

`Sam3VideoPredictor` is not used: it moves the model to CUDA unconditionally and keeps every
session in a class-level dict. This module calls the same model methods it dispatches to
(`add_prompt`, `remove_object`, `reset_state`, `propagate_in_video`), with these choices:

Frames. Read on demand through the session's frame window (`media/frames.py`): the server
decodes and prepares them on its CPU pool ahead of the device, only `--frame-window` of them
are ever held (float16 at the model resolution, ~6.1 MB a frame at 1008 px, on the host) and
each moves to the device when the detector needs it (a 6 MB copy next to ~0.1 s of compute per
frame on a GPU; sam3's own comment on `offload_video_to_cpu` calls the overhead very small).
sam3 0.1.4's loaders are not used: `init_state` decodes every frame up front and copies the
whole batch to the device even with `offload_video_to_cpu=True`, and the OpenCV MP4 loader
materialises the video as float32 and skips the /255 scaling (facebookresearch/sam3#493).
`FramePreparer` prepares every frame exactly as sam3's image-folder loader does.

Prompts (sam3 semantics):
- text, or one exemplar box, or both: a semantic prompt; sam3 restarts the session (every object
  is re-detected) and returns the prompted frame's detections;
- points (with or without object_id): clicks on one object, through the tracker; a new id when
  object_id is omitted; clicks replace that object's earlier clicks on that frame. sam3 asserts
  that a cached output exists for the clicked frame (and, in the partial propagation that
  follows, for every frame); a frame never processed has no objects, so an empty entry is seeded.

Propagation. Each part (forward, then backward) runs as sam3 `propagate_in_video` runs; sam3's
reverse propagation skips its start frame, so a backward run [s, ..., e] starts sam3 at s + 1.
sam3 picks from its action history between detector + tracker ("full"), the tracker for objects
clicked since the last propagation ("partial") and replaying cached outputs ("fetch"). Its
heuristic assumes complete forward-then-backward propagations: after a capped or cancelled one it
replays frames that were never computed, and clicks made before the first propagation would
propagate only the clicked objects. So here:
- nothing propagated since the last semantic prompt: detector + tracker over the whole part
  (`Sam3VideoInference.propagate_in_video`, recorded in the history as sam3 records it);
- clicks since the last propagation: sam3's partial propagation;
- otherwise: cached frames are replayed, and detector + tracker compute each run of frames
  without a cached output, from its first frame (so every computation continues from a frame
  sam3 already computed, or from no memory at all: what the bounded state keeps).

Hot start. sam3 withholds outputs for `hotstart_delay` frames (15 in Meta's configuration, 4 in
the tiny preset) so it can retract objects that turn out to be spurious, then releases them
oldest first, and everything at the end of the range. sam3's generator already does this
buffering; it is passed through unchanged. So one step of the propagation generator may compute up
to 15 frames before its first output (and the last step none); the outputs still come exactly
once per planned frame, in order, which `_run` checks. A propagation closed early leaves frames
sam3 computed but withheld; sam3 cached them unfiltered (VI:401), so they are filtered then as sam3
filters a frame it releases (objects hot start removed, suppressed ones), and replayed as such.

Memory. With `bounded=True` (the default) a session's state does not grow with the video's
length (`state.SessionBounds`: compact results, tracker memories pruned to what sam3 can still
read); `bounded=False` keeps everything sam3 keeps, the reference the bounded state is tested
against. `VideoRunner.nbytes` counts every tensor a session holds, host frames included, plus
the compact containers, so the figure bounds what closing the session frees;
`state.StateFootprint` bounds it before the session starts. `close` drops every reference, collects, empties the CUDA
cache and trims the C heap (glibc keeps freed pages otherwise, and RSS would not fall).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np
import torch

from sam3_grpc.domain import FrameOutput, Prompt, RawDetection
from sam3_grpc.engines.sam3.state import (
    COMPACT_CONTAINERS,
    PER_FRAME_LISTS,
    PER_FRAME_SLOT_BYTES,
    CompactFrameOutputs,
    LazyFindInputs,
    SessionBounds,
)
from sam3_grpc.errors import FailedPrecondition, InvalidArgument, Reason, ResourceExhausted
from sam3_grpc.media.frames import FrameWindow

logger = logging.getLogger(__name__)

SUPPORTED_VIDEO_PROMPTS = (
    "text; one exemplar box; text + one box; points (clicks on one object, optional object_id)"
)


# ----- frames -----------------------------------------------------------------------------
class FramePreparer:
    """Turns a decoded RGB frame into the tensor sam3's image-folder loader would make of it,
    bit for bit: PIL resize to size x size, `to_tensor` ([0, 1], float32), stored as float16,
    then `-= mean` and `/= std` in float16 (`sam3/model/io_utils.py`,
    `load_video_frames_from_image_folder`). Whatever the container: sam3 0.1.4's own MP4
    loader skips the /255 scaling (facebookresearch/sam3#493), so it is never used.
    Thread-safe; runs on the server's CPU pool."""

    def __init__(self, size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float16)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float16)[:, None, None]

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        import torchvision.transforms.functional as TF
        from PIL import Image

        image = TF.resize(Image.fromarray(rgb), size=[self.size, self.size])
        tensor = TF.to_tensor(image).to(torch.float16)
        tensor -= self.mean
        tensor /= self.std
        return tensor

    def frame_bytes(self) -> int:
        return 3 * self.size * self.size * 2  # float16


class WindowFrames:
    """The session's frames, indexable like sam3's `img_batch`, read through the frame window.

    Not a Tensor on purpose: sam3's `copy_data_to_device` leaves such objects where they are, and
    `Sam3Image._get_img_feats` accepts "a list (or other indexable types) of tensors", moving
    one frame at a time to the device. Only the window's frames are in memory.
    """

    def __init__(self, window: FrameWindow[torch.Tensor]) -> None:
        self.window = window

    def __len__(self) -> int:
        return len(self.window)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.window.get(int(index))


# ----- memory accounting --------------------------------------------------------------------
def tensor_nbytes(obj: Any, exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """Bytes of the distinct tensor storages reachable from `obj` (dicts, sequences, dataclasses,
    plain objects), not descending into modules; storages whose data pointer is in `exclude`
    (model-owned caches) are not counted. The bounded state's compact containers hold no
    tensors and are not walked (`SessionBounds.nbytes` counts them)."""
    seen_objects: set[int] = set()
    seen_storages: set[int] = set(exclude)
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, (str, bytes, int, float, bool, np.ndarray)):
            continue
        if id(item) in seen_objects or isinstance(item, COMPACT_CONTAINERS):
            continue
        seen_objects.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in seen_storages:
                seen_storages.add(ptr)
                total += storage.nbytes()
        elif isinstance(item, torch.nn.Module):
            continue
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, WindowFrames):
            total += item.window.nbytes
        elif is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name, None) for f in fields(item))
        elif hasattr(item, "__dict__") and type(item).__module__.startswith("sam3"):
            stack.extend(vars(item).values())
    return total


def release_host_memory() -> None:
    """Returns freed heap pages to the OS (glibc), so process RSS reflects a closed session."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ----- object ids ---------------------------------------------------------------------------
# sam3 numbers a session's objects from 0; the API from 1 (0 is protobuf's "unset"). The
# mapping is applied here, at the edge of the engine, and nowhere else.
def from_sam3_id(sam3_id: int) -> int:
    return sam3_id + 1


def to_sam3_id(object_id: int) -> int:
    return object_id - 1


def unknown_object(object_id: int) -> InvalidArgument:
    return InvalidArgument(
        f"no object {object_id} in this session; GetSession lists the tracked objects",
        reason=Reason.UNKNOWN_OBJECT,
        metadata={"object_id": object_id},
    )


# ----- sessions -----------------------------------------------------------------------------
@dataclass
class VideoSession:
    state: dict
    frames: WindowFrames
    height: int
    width: int
    # None: sam3 keeps everything (the reference the bounded state is tested against).
    bounds: SessionBounds | None = None
    # Frame of the current semantic (text / box) prompt, and frames clicked per object.
    semantic_frame: int | None = None
    click_frames: dict[int, set[int]] = field(default_factory=dict)
    propagating: bool = False
    closed: bool = False

    @property
    def num_frames(self) -> int:
        return int(self.state["num_frames"])


def frame_runs(frames: Sequence[int], held: Any) -> Iterator[tuple[list[int], bool]]:
    """Splits consecutive frames into maximal runs of frames in `held` or not."""
    run: list[int] = []
    held_run = False
    for index in frames:
        inside = index in held
        if run and inside != held_run:
            yield run, held_run
            run = []
        run.append(index)
        held_run = inside
    if run:
        yield run, held_run


class VideoRunner:
    """The video half of the engine; `context()` supplies the device/autocast context of a step.

    bounded: sessions keep their state bounded (`state.SessionBounds`); False keeps everything
    sam3 keeps (the reference for tests and benchmarks).
    """

    def __init__(
        self,
        model: Any,
        context: Callable[[], contextlib.AbstractContextManager],
        *,
        bounded: bool = True,
    ) -> None:
        self.model = model
        self.context = context
        self.bounded = bounded
        self.resolution = int(model.image_size)

    # ----- lifecycle -----------------------------------------------------------------------
    def start(self, window: FrameWindow[torch.Tensor]) -> VideoSession:
        frames = WindowFrames(window)
        info = window.info
        bounds = SessionBounds(self.model, len(frames)) if self.bounded else None
        with self.context():
            state = self._init_state(frames, info.height, info.width, bounds)
        return VideoSession(
            state=state, frames=frames, height=info.height, width=info.width, bounds=bounds
        )

    def _init_state(
        self, frames: WindowFrames, height: int, width: int, bounds: SessionBounds | None
    ) -> dict:
        """What `Sam3VideoInference.init_state` builds, around frames that are already loaded."""
        state: dict[str, Any] = {
            "image_size": self.resolution,
            "num_frames": len(frames),
            "orig_height": height,
            "orig_width": width,
            "constants": {},
        }
        if bounds is None:
            self.model._construct_initial_input_batch(state, frames)
            state["cached_frame_outputs"] = {}
        else:
            self._construct_lazy_input_batch(state, frames)
            state["cached_frame_outputs"] = bounds.cached_outputs()
        state["tracker_inference_states"] = []
        state["tracker_metadata"] = {}
        state["feature_cache"] = {}
        state["action_history"] = []
        state["is_image_only"] = False
        return state

    def _construct_lazy_input_batch(self, state: dict, frames: WindowFrames) -> None:
        """sam3's input batch (VI:115-162) with the per-frame inputs made when read: sam3 builds
        the first frame's, every other frame's is the same with its own image id."""
        num_frames = len(frames)
        self.model._construct_initial_input_batch(state, [None])
        batch = state["input_batch"]
        batch.img_batch = frames
        batch.find_inputs = LazyFindInputs(batch.find_inputs[0], num_frames, self.model.device)
        batch.find_targets = [None] * num_frames
        batch.find_metadatas = [None] * num_frames
        for key in PER_FRAME_LISTS:
            state[key] = [0 if key == "per_frame_cur_step" else None] * num_frames

    def close(self, session: VideoSession) -> None:
        session.closed = True
        outputs = session.state.get("cached_frame_outputs")
        if isinstance(outputs, CompactFrameOutputs):
            outputs.close()
        session.state.clear()
        session.frames.window.close()
        session.click_frames.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        release_host_memory()

    def nbytes(self, session: VideoSession, exclude: frozenset[int]) -> int:
        state = session.state
        if session.bounds is None:
            return tensor_nbytes([state, session.frames], exclude)
        # Without walking the per-frame lists: their slots are counted, their one prompted
        # entry walked.
        roots: list[Any] = [session.frames]
        roots.extend(v for k, v in state.items() if k not in PER_FRAME_LISTS and k != "input_batch")
        batch = state.get("input_batch")
        if batch is not None:
            roots.extend([batch.find_text_batch, batch.find_inputs, batch.raw_images])
        if session.semantic_frame is not None:
            roots.extend(state[k][session.semantic_frame] for k in PER_FRAME_LISTS if k in state)
        return (
            tensor_nbytes(roots, exclude)
            + session.bounds.nbytes(state)
            + PER_FRAME_SLOT_BYTES * session.num_frames
        )

    def _tidy(self, session: VideoSession) -> None:
        """After a prompt, a removal or a whole propagation: compacts and prunes."""
        if session.bounds is not None and not session.closed:
            with self.context():
                session.bounds.tidy(session.state, between_calls=True)

    # ----- prompts ---------------------------------------------------------------------------
    def _check_usable(self, session: VideoSession) -> None:
        if session.closed:
            raise FailedPrecondition("the session is closed")
        if session.propagating:
            raise FailedPrecondition("a propagation is in progress on this session")

    def _check_frame(self, session: VideoSession, frame_index: int) -> None:
        if not 0 <= frame_index < session.num_frames:
            raise InvalidArgument(
                f"frame {frame_index} outside the video's {session.num_frames} frames",
                reason=Reason.FRAME_OUT_OF_RANGE,
            )

    def add_prompt(
        self, session: VideoSession, frame_index: int, prompt: Prompt, object_id: int | None
    ) -> tuple[FrameOutput, list[int]]:
        self._check_usable(session)
        self._check_frame(session, frame_index)
        if prompt.is_empty():
            raise InvalidArgument(f"empty prompt; supported: {SUPPORTED_VIDEO_PROMPTS}")
        if prompt.points:
            try:
                return self._add_clicks(session, frame_index, prompt, object_id)
            finally:
                self._tidy(session)
        if object_id is not None:
            raise InvalidArgument(
                "object_id applies to point prompts: text and box prompts re-detect every object",
                reason=Reason.UNSUPPORTED_PROMPT,
            )
        if len(prompt.boxes) > 1:
            raise InvalidArgument(
                "a video prompt takes at most one exemplar box (sam3 0.1.4); "
                f"supported: {SUPPORTED_VIDEO_PROMPTS}",
                reason=Reason.UNSUPPORTED_PROMPT,
            )
        boxes_xywh = box_labels = None
        if prompt.boxes:
            box = prompt.boxes[0].box  # clipped to the frame, with an area, by the server
            w, h = session.width, session.height
            boxes_xywh = [[box.x_min / w, box.y_min / h, box.width / w, box.height / h]]
            box_labels = [1 if prompt.boxes[0].positive else 0]
        try:
            with self.context():
                _, out = self.model.add_prompt(
                    session.state,
                    frame_idx=frame_index,
                    text_str=prompt.text or None,
                    boxes_xywh=boxes_xywh,
                    box_labels=box_labels,
                )
        finally:
            self._tidy(session)
        # sam3 restarted the session: one semantic prompt, no clicks.
        session.semantic_frame = frame_index
        session.click_frames.clear()
        if session.bounds is not None:
            session.bounds.focus = frame_index
        output = self.frame_output(frame_index, out)
        return output, [d.object_id for d in output.objects]

    def _add_clicks(
        self, session: VideoSession, frame_index: int, prompt: Prompt, object_id: int | None
    ) -> tuple[FrameOutput, list[int]]:
        if prompt.text or prompt.boxes:
            raise InvalidArgument(
                "points cannot be combined with text or boxes; "
                f"supported: {SUPPORTED_VIDEO_PROMPTS}",
                reason=Reason.UNSUPPORTED_PROMPT,
            )
        w, h = session.width, session.height  # points are inside the frame (the server checks)
        metadata = session.state["tracker_metadata"]
        known = [int(i) for i in metadata.get("obj_ids_all_gpu", [])]
        if object_id is None:
            sam3_id = max([int(metadata.get("max_obj_id", -1)), *known]) + 1
            if len(known) >= self.model.max_num_objects:
                raise self._object_limit()
        else:
            sam3_id = to_sam3_id(object_id)
            if sam3_id not in known:
                raise unknown_object(object_id)
        points = [[p.x / w, p.y / h] for p in prompt.points]
        labels = [1 if p.positive else 0 for p in prompt.points]
        session.state["cached_frame_outputs"].setdefault(frame_index, {})
        if session.bounds is not None:
            session.bounds.focus = frame_index
        with self.context():
            result = self.model.add_prompt(
                session.state,
                frame_idx=frame_index,
                points=points,
                point_labels=labels,
                obj_id=sam3_id,
            )
        if len(result) != 2:  # sam3's (frame, ids, masks, masks) "object limit reached" reply
            raise self._object_limit()
        out = result[1]
        object_id = from_sam3_id(sam3_id)
        session.click_frames.setdefault(object_id, set()).add(frame_index)
        return self.frame_output(frame_index, out), [object_id]

    def _object_limit(self) -> ResourceExhausted:
        limit = int(self.model.max_num_objects)
        return ResourceExhausted(
            f"the session already tracks the maximum of {limit} objects; remove one first",
            reason=Reason.OBJECT_LIMIT,
            metadata={"limit": limit},
        )

    def remove_object(self, session: VideoSession, object_id: int) -> None:
        self._check_usable(session)
        if object_id not in self.object_ids(session):
            raise unknown_object(object_id)
        try:
            with self.context():
                self.model.remove_object(session.state, to_sam3_id(object_id), is_user_action=True)
        finally:
            self._tidy(session)
        session.click_frames.pop(object_id, None)

    def reset(self, session: VideoSession) -> None:
        self._check_usable(session)
        with self.context():
            self.model.reset_state(session.state)
        session.semantic_frame = None
        session.click_frames.clear()

    def object_ids(self, session: VideoSession) -> list[int]:
        if session.closed:
            return []
        metadata = session.state.get("tracker_metadata") or {}
        return sorted(from_sam3_id(int(i)) for i in metadata.get("obj_ids_all_gpu", []))

    def prompted_frames(self, session: VideoSession) -> list[int]:
        frames = set().union(*session.click_frames.values()) if session.click_frames else set()
        if session.semantic_frame is not None:
            frames.add(session.semantic_frame)
        return sorted(frames)

    # ----- propagation -----------------------------------------------------------------------
    def propagate(
        self, session: VideoSession, forward: Sequence[int], backward: Sequence[int]
    ) -> Iterator[FrameOutput]:
        """Validates now (errors surface at the call, not at the first step), then returns the
        generator."""
        self._check_usable(session)
        forward, backward = list(forward), list(backward)
        for part, step in ((forward, 1), (backward, -1)):
            if any(b - a != step for a, b in itertools.pairwise(part)):
                raise InvalidArgument("propagation parts must be consecutive frames")
            for index in part[:1] + part[-1:]:
                self._check_frame(session, index)
        if session.semantic_frame is None and not session.click_frames:
            raise FailedPrecondition("add a prompt before propagating")
        return self._propagate(session, forward, backward)

    def _propagate(
        self, session: VideoSession, forward: list[int], backward: list[int]
    ) -> Iterator[FrameOutput]:
        if session.propagating or session.closed:
            raise FailedPrecondition("a propagation is in progress on this session")
        session.propagating = True
        try:
            if forward:
                yield from self._propagate_part(session, forward, False, then=backward)
            if backward and session.bounds is not None:
                # The forward part's last frames in the feature caches: never read again.
                with self.context():
                    session.bounds.drop_leftovers(session.state)
            if backward:
                yield from self._propagate_part(session, backward, True, then=[])
        finally:
            session.propagating = False
            if session.bounds is not None:
                session.bounds.clear_plan()
            self._tidy(session)

    def _propagate_part(
        self, session: VideoSession, frames: list[int], reverse: bool, then: list[int]
    ) -> Iterator[FrameOutput]:
        from sam3.model.sam3_video_inference import Sam3VideoInference

        state = session.state
        kind, obj_ids = self.model.parse_action_history_for_propagation(state)
        propagated = any("propagation" in a["type"] for a in state["action_history"])
        if propagated and kind == "propagation_partial":
            # Clicks since the last propagation: sam3 re-tracks just those objects and merges
            # them into the cached outputs of the others (it asserts one exists per frame).
            for index in frames:
                state["cached_frame_outputs"].setdefault(index, {})
            if session.bounds is not None:
                tracked = self.model._get_tracker_inference_states_by_obj_ids(state, obj_ids)
                session.bounds.plan_partial(frames, reverse, tracked)
                session.bounds.plan_partial(then, True, tracked)
            yield from self._run(
                session, frames, reverse, self.model.propagate_in_video, partial=True
            )
            return
        # Replay what this prompt state already computed; detect + track each run of frames
        # that was not. The first propagation after a prompt computes everything (as sam3's
        # own first, "full" propagation does), clicked objects included.
        cached = state["cached_frame_outputs"] if propagated else {}
        detect_and_track = Sam3VideoInference.propagate_in_video.__get__(self.model)
        for run, held in frame_runs(frames, cached):
            if held:
                for index in run:
                    with self.context():
                        out = self._replay(state, index)
                    yield self.frame_output(index, out)
            else:
                self.model.add_action_history(state, "propagation_full", frame_idx=run[0])
                yield from self._run(session, run, reverse, detect_and_track)

    def _replay(self, state: dict, index: int) -> dict:
        """A cached frame's output, post-processed as sam3's "propagation_fetch" does."""
        metadata = state["tracker_metadata"]
        out = {
            "obj_id_to_mask": state["cached_frame_outputs"].get(index, {}),
            "obj_id_to_score": metadata.get("obj_id_to_score", {}),
            "obj_id_to_tracker_score": metadata.get("obj_id_to_tracker_score_frame_wise", {}).get(
                index, {}
            ),
        }
        suppressed = None
        if "rank0_metadata" in metadata:
            suppressed = metadata["rank0_metadata"]["suppressed_obj_ids"][index]
        return self.model._postprocess_output(state, out, suppressed_obj_ids=suppressed)

    def _run(
        self,
        session: VideoSession,
        frames: list[int],
        reverse: bool,
        propagate_fn,
        partial: bool = False,
    ) -> Iterator[FrameOutput]:
        """One sam3 propagation over `frames`, stepped under the context, checked against them."""
        if reverse:  # sam3's reverse propagation starts after its start frame
            start, count = frames[0] + 1, len(frames)
        else:
            start, count = frames[0], len(frames) - 1
        with self.context():
            inner = propagate_fn(
                session.state,
                start_frame_idx=start,
                max_frame_num_to_track=count,
                reverse=reverse,
            )
        expected = iter(frames)
        done = 0
        try:
            while True:
                with self.context():
                    try:
                        index, out = next(inner)
                    except StopIteration:
                        break
                    want = next(expected, None)
                    if index != want:
                        raise RuntimeError(f"sam3 yielded frame {index}, expected {want}")
                    done += 1
                    self._after_step(session, frames, index, reverse, partial)
                yield self.frame_output(index, out)
        finally:
            with self.context():
                inner.close()
                if not partial:
                    self._release_withheld(session.state, frames[done:])
        missing = next(expected, None)
        if missing is not None:
            raise RuntimeError(f"sam3 stopped before frame {missing}")

    def _after_step(
        self, session: VideoSession, frames: list[int], index: int, reverse: bool, partial: bool
    ) -> None:
        bounds = session.bounds
        if bounds is None:
            return
        if partial:  # one frame computed per step (no hot start)
            cursor: int | None = index
            bounds.advance_plan(index, reverse)
        else:  # with hot start, sam3 computed ahead of what it yielded: to the end of the run
            run = session.state["cached_frame_outputs"].run_containing(frames[0])
            if run is None:
                cursor = None
            elif reverse:
                cursor = max(run[0], frames[-1])
            else:
                cursor = min(run[1], frames[-1])
        bounds.tidy(session.state, cursor=cursor, reverse=reverse)

    def _release_withheld(self, state: dict, rest: list[int]) -> None:
        """Frames sam3 computed but had not yet released when the run was closed early: cached
        unfiltered at compute time (VI:401), they are filtered now as sam3 filters a frame it
        releases (VI:345-352): suppressed objects and those hot start removed by now."""
        metadata = state.get("tracker_metadata") or {}
        rank0 = metadata.get("rank0_metadata")
        cache = state.get("cached_frame_outputs")
        if not rank0 or cache is None:
            return
        for index in rest:
            if index in cache:
                self.model._cache_frame_outputs(
                    state,
                    index,
                    cache[index],
                    suppressed_obj_ids=rank0["suppressed_obj_ids"][index],
                    removed_obj_ids=rank0["removed_obj_ids"],
                )

    # ----- outputs ---------------------------------------------------------------------------
    @staticmethod
    def frame_output(frame_index: int, out: dict | None) -> FrameOutput:
        objects = []
        if out is not None:
            for obj_id, prob, mask in zip(
                out["out_obj_ids"], out["out_probs"], out["out_binary_masks"], strict=False
            ):
                objects.append(
                    RawDetection(
                        mask=np.asarray(mask, dtype=bool),
                        score=float(min(1.0, max(0.0, float(prob)))),
                        object_id=from_sam3_id(int(obj_id)),
                    )
                )
        return FrameOutput(frame_index=int(frame_index), objects=objects)
