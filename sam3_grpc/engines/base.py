"""The contract every engine fulfils, checked against every engine by
tests/engines/test_engine_contract.py.

Threads. Every method is called from the executor thread that owns the engine's device, never
from the event loop and never from two threads at once, so engines need no locking of their
own; the one exception is the callable `frame_preparer()` returns, which CPU-pool threads call
to prepare frames ahead of the device (it must not touch the model). Engines never import
protobuf modules: they take and return the domain types of `sam3_grpc.domain`.

Inputs. The servicers validate every request before it reaches an engine (one layer, one rule:
`server/convert.py`): prompts are non-empty, coordinates finite, points inside the image or frame
([0, width) x [0, height)), boxes clipped to it with positive area, frame indices inside the
video, and `object_id` names a tracked object. Engines may rely on that.

Outputs.
- Masks are boolean arrays at the full size of the image or frame. Scores lie in [0, 1].
  `RawDetection.box` may be None: the server derives every box it returns from the mask
  (`media.masks.tight_box`), falling back to the engine's box only for an empty mask.
- Image detections: one list per prompt, best score first, with object ids 1, 2, ... in that
  order (unique within the prompt's result). Text and exemplar boxes are concept prompts
  (every matching object); points, alone or with one positive box, select one object (the
  engine's best mask for the click, whatever its score).
- Video: object ids are positive and stable for the life of a session. A prompt with points
  and no object_id creates one object; with object_id it refines that object. Text or exemplar
  boxes re-detect the concept (engines may restart the session's objects). object_id goes with
  points only.
- `propagate` yields exactly one FrameOutput per planned frame, the forward part first, each
  in its part's order; closing the generator early leaves the session usable, and a later
  propagation from any frame continues from the state reached (nothing already computed is
  lost, nothing is recomputed that need not be).

Errors (ServiceError subclasses with these reasons; anything else becomes INTERNAL):
- a prompt combination the engine cannot serve: InvalidArgument(UNSUPPORTED_PROMPT), the
  message naming what is supported;
- a frame index outside the video (defensive; the server checks first):
  InvalidArgument(FRAME_OUT_OF_RANGE); an unknown object id: InvalidArgument(UNKNOWN_OBJECT);
- more objects than the engine can track: ResourceExhausted(OBJECT_LIMIT);
- a frame that cannot be decoded: DataLoss(FRAME_UNREADABLE) (raised by the frame source);
- a closed session: FailedPrecondition.

Memory. `session_budget` bounds, before a session starts, what it can ever hold (frame window
plus per-object state at the engine's object limit), so the server admits sessions against its
memory budget instead of running out; `session_nbytes` reports what a session holds now.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from sam3_grpc.domain import (
    Direction,
    EngineInfo,
    FrameOutput,
    MemoryUsage,
    Prompt,
    RawDetection,
    SessionBudget,
    VideoInfo,
)
from sam3_grpc.media.frames import FrameWindow

ImageState = TypeVar("ImageState")
SessionState = TypeVar("SessionState")


class Engine(abc.ABC, Generic[ImageState, SessionState]):
    """A segmentation model bound to one device, serving images and video sessions.

    ImageState is what `encode_image` returns (cached by the server and passed back to
    `predict`); SessionState is one video session's state.
    """

    @property
    @abc.abstractmethod
    def max_objects(self) -> int:
        """The most objects one video session may track: a prompt that would pass it is refused
        with ResourceExhausted(OBJECT_LIMIT), and `session_budget` is computed at this limit."""

    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Name, kind, device and weights source."""

    # ----- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self) -> None:
        """Builds the model and loads its weights. May take minutes for the real model."""

    @abc.abstractmethod
    def warmup(self) -> None:
        """Runs one inference so the first user request pays no one-off costs."""

    def memory(self) -> MemoryUsage:
        """Memory of the device: torch's allocation on a GPU, the process RSS on a CPU."""
        import psutil

        return MemoryUsage(psutil.Process().memory_info().rss, psutil.virtual_memory().total)

    # ----- images ----------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_image(self, image: np.ndarray) -> ImageState:
        """Runs the image encoder on an RGB uint8 array of shape (H, W, 3).

        Returns a state that `predict` accepts any number of times; the server caches it.
        """

    @abc.abstractmethod
    def state_nbytes(self, state: ImageState) -> int:
        """Bytes of (device) memory an encoded-image state holds; bounds the embedding cache."""

    @abc.abstractmethod
    def predict(self, state: ImageState, prompts: Sequence[Prompt]) -> list[list[RawDetection]]:
        """Evaluates each prompt on an encoded image: one list of detections per prompt, best
        first, masks at the original image size. Scores are the engine's own; the server
        applies thresholds and limits afterwards."""

    # ----- video sessions --------------------------------------------------------------------
    @abc.abstractmethod
    def frame_preparer(self) -> Callable[[np.ndarray], Any]:
        """A thread-safe function from an RGB frame (H, W, 3) to what the engine wants to hold
        for it (e.g. resized and normalised); run on CPU-pool threads ahead of the device."""

    @abc.abstractmethod
    def session_budget(self, info: VideoInfo, window_frames: int) -> SessionBudget:
        """The most a session on such a video can hold (its frame window included)."""

    @abc.abstractmethod
    def start_session(self, frames: FrameWindow[Any]) -> SessionState:
        """A new session on a probed video; frames are read through the window on demand."""

    @abc.abstractmethod
    def add_prompt(
        self, state: SessionState, frame_index: int, prompt: Prompt, object_id: int | None
    ) -> tuple[FrameOutput, list[int]]:
        """Adds (or, with object_id, refines) objects on one frame. Returns every object on
        that frame and the ids the prompt created or refined."""

    @abc.abstractmethod
    def remove_object(self, state: SessionState, object_id: int) -> None:
        """Stops tracking one object."""

    @abc.abstractmethod
    def reset_session(self, state: SessionState) -> None:
        """Forgets every object and prompt; keeps the video."""

    @abc.abstractmethod
    def object_ids(self, state: SessionState) -> list[int]:
        """Ids of the objects tracked now, ascending."""

    @abc.abstractmethod
    def prompted_frames(self, state: SessionState) -> list[int]:
        """Frames that carry at least one prompt, ascending."""

    @abc.abstractmethod
    def propagate(
        self, state: SessionState, forward: Sequence[int], backward: Sequence[int]
    ) -> Iterator[FrameOutput]:
        """Tracks every object through the frames of `propagation_plan`: `forward` ascending
        and consecutive, `backward` descending and consecutive, either possibly empty. A
        generator the executor advances one frame per job (see the module docstring)."""

    @abc.abstractmethod
    def session_nbytes(self, state: SessionState) -> int:
        """Bytes of memory one session holds now; 0 when unknown."""

    @abc.abstractmethod
    def close_session(self, state: SessionState) -> None:
        """Frees everything the session holds."""


def propagation_plan(
    frame_count: int,
    direction: Direction,
    start: int,
    max_frames: int = 0,
) -> tuple[list[int], list[int]]:
    """The frames a propagation visits, as (forward part, backward part).

    Forward walks start, start+1, …; backward walks start, start-1, … (for BOTH the backward part
    skips the start frame, which the forward part already produced). max_frames > 0 caps each
    direction's part, counting the start frame.
    """
    if not 0 <= start < frame_count:
        raise ValueError(f"start frame {start} outside [0, {frame_count})")
    cap = max_frames if max_frames > 0 else frame_count
    forward: list[int] = []
    backward: list[int] = []
    if direction in (Direction.FORWARD, Direction.BOTH):
        forward = list(range(start, min(frame_count, start + cap)))
    if direction is Direction.BACKWARD:
        backward = list(range(start, max(-1, start - cap), -1))
    elif direction is Direction.BOTH:
        backward = list(range(start - 1, max(-1, start - cap), -1))
    return forward, backward
