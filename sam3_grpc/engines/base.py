"""The interface every engine implements.

Every method is called from the executor thread that owns the engine's device, never from the
event loop and never from two threads at once, so engines need no locking of their own. Engines
never import protobuf modules: they take and return the domain types of `sam3_grpc.domain`.

Raise `sam3_grpc.errors.InvalidArgument` (or another `ServiceError`) for a request the engine
cannot serve; any other exception becomes INTERNAL for that one call.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from sam3_grpc.domain import (
    Direction,
    EngineInfo,
    FrameOutput,
    MemoryUsage,
    Prompt,
    RawDetection,
    VideoSource,
)


class Engine(abc.ABC):
    """A segmentation model bound to one device."""

    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Name, kind, device and weights source."""

    # ----- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self) -> None:
        """Builds the model and loads its weights. May take minutes for the real model."""

    def warmup(self) -> None:
        """Runs one inference so the first user request pays no one-off costs."""
        image = np.zeros((64, 64, 3), np.uint8)
        self.predict(self.encode_image(image), [Prompt(text="object")])

    def memory(self) -> MemoryUsage:
        """Memory of the device: torch's allocation on a GPU, the process RSS on a CPU."""
        import psutil

        return MemoryUsage(psutil.Process().memory_info().rss, psutil.virtual_memory().total)

    # ----- images ----------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_image(self, image: np.ndarray) -> Any:
        """Runs the image encoder on an RGB uint8 array of shape (H, W, 3).

        Returns an opaque state that `predict` accepts any number of times; the server caches it.
        """

    def state_nbytes(self, state: Any) -> int:
        """Bytes of (device) memory an encoded-image state holds; bounds the embedding cache."""
        return 0

    @abc.abstractmethod
    def predict(self, state: Any, prompts: Sequence[Prompt]) -> list[list[RawDetection]]:
        """Evaluates each prompt on an encoded image.

        Returns one list per prompt, of detections with masks at the original image size.
        Scores are the engine's own; the server applies thresholds and limits afterwards.
        """

    # ----- video sessions --------------------------------------------------------------------
    def start_session(self, source: VideoSource) -> Any:
        """Loads a probed video and returns the engine's state for a new session."""
        raise NotImplementedError(f"{self.info.name} does not support video")

    def add_prompt(
        self, state: Any, frame_index: int, prompt: Prompt, object_id: int | None
    ) -> tuple[FrameOutput, list[int]]:
        """Adds (or, with object_id, refines) objects on one frame.

        Returns every object on that frame and the ids the prompt created or refined.
        """
        raise NotImplementedError

    def remove_object(self, state: Any, object_id: int) -> None:
        """Stops tracking one object. Raises InvalidArgument for an unknown id."""
        raise NotImplementedError

    def reset_session(self, state: Any) -> None:
        """Forgets every object and prompt; keeps the video loaded."""
        raise NotImplementedError

    def object_ids(self, state: Any) -> list[int]:
        """Ids of the objects tracked now, ascending."""
        raise NotImplementedError

    def prompted_frames(self, state: Any) -> list[int]:
        """Frames that carry at least one prompt, ascending."""
        raise NotImplementedError

    def propagate(
        self, state: Any, forward: Sequence[int], backward: Sequence[int]
    ) -> Iterator[FrameOutput]:
        """Tracks every object through the frames of `propagation_plan`.

        `forward` is ascending and consecutive, `backward` descending and consecutive; either may
        be empty. A generator: the executor advances it one frame per job, so other work runs
        between frames. It yields exactly one output per planned frame, forward part first, each
        in its part's order. Closing it early (a cancelled stream) must leave the session usable.
        """
        raise NotImplementedError

    def session_nbytes(self, state: Any) -> int:
        """Bytes of (device) memory one session holds; 0 when unknown."""
        return 0

    def close_session(self, state: Any) -> None:
        """Frees everything the session holds on the device."""
        raise NotImplementedError


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
