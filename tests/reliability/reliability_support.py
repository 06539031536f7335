"""Shared pieces of the reliability suite.

Deliberately not a `conftest.py`: the suite has no `__init__.py`, and a second top-level module
named `conftest` would shadow `tests/conftest.py` for `from conftest import launch`. The fixtures
of `tests/conftest.py` (`start_server`, `synthetic_server`, `media_root`) apply here as well.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import disc_clip, write_video

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import video_service_pb2 as video_pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(channel: grpc.Channel, service: str = "", timeout: float = 1.0) -> int:
    """One health Check; the timeout doubles as the liveness bound ("answers within 1 s")."""
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        .status
    )


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.01, what: str = "condition"):
    """Polls until predicate() is truthy; returns its value. Bounded in time."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < end, f"{what} never became true within {timeout} s"
        time.sleep(interval)


def small_clip(path, frames: int = 16, width: int = 64, height: int = 48) -> str:
    """A lossless AVI of a red disc moving right (the synthetic engine tracks it exactly)."""
    images, _ = disc_clip(
        frames=frames,
        width=width,
        height=height,
        radius=8,
        step=max(1, (width - 24) // max(1, frames)),
    )
    return write_video(path, images)


def session_of(server, session_id: str) -> video_pb.Session:
    return server.video.GetSession(
        video_pb.GetSessionRequest(session_id=session_id), timeout=10
    ).session


def wait_idle(server, session_ids, timeout: float = 20.0) -> None:
    """Until no session of session_ids is propagating (a cancelled stream has torn down)."""
    wait_for(
        lambda: not any(session_of(server, s).propagating for s in session_ids),
        timeout=timeout,
        interval=0.02,
        what="sessions idle",
    )


def resources() -> tuple[int, int]:
    """(threads, open file descriptors) of this process, where the test servers run too."""
    gc.collect()
    process = psutil.Process()
    return process.num_threads(), process.num_fds()


class TaggingEngine(SyntheticEngine):
    """The synthetic engine, recording which request ran.

    SegmentImage requests are told apart by the pixel `test_executor.segment_request(seed)` sets
    in the bottom-right corner: (seed % 256, seed // 256 % 256, 7). Propagation steps are
    recorded per session state (look the state up with `server.server.sessions.get(id, "").state`),
    together with whether the server still counted the session as propagating when the step
    started: a step of a stream whose call has already been torn down is a step nobody waits for
    (an "orphan"). One orphan per cancelled stream can be a benign race — the job was dequeued
    just before the cancellation reached it — so tests bound orphans by the number of streams.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self.encoded: list[int | None] = []
        self.steps: Counter[int] = Counter()
        self.orphan_steps: list[int] = []
        self.session_of_state: dict[int, object] = {}  # id(state) -> server Session

    @staticmethod
    def tag_of(image) -> int | None:
        b = image[-1, -1]
        return int(b[0]) + 256 * int(b[1]) if int(b[2]) == 7 else None

    def encode_image(self, image):
        with self._lock:
            self.encoded.append(self.tag_of(image))
        return super().encode_image(image)

    def propagate(self, state, forward, backward):
        inner = super().propagate(state, forward, backward)
        key = id(state)

        def recorded():
            # The code before each next(inner) runs at the start of that step's device job.
            while True:
                server_session = self.session_of_state.get(key)
                orphan = server_session is not None and not server_session.propagating
                try:
                    frame = next(inner)
                except StopIteration:
                    return
                with self._lock:
                    self.steps[key] += 1
                    if orphan:
                        self.orphan_steps.append(key)
                yield frame

        return recorded()


def reason_of(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call ("" when the status carries none)."""
    from grpc_status import rpc_status

    from sam3_grpc.client.errors import from_rpc_error

    if rpc_status.from_call(error) is None:
        return ""
    return from_rpc_error(error).reason or ""
