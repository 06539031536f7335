"""Engine faults injected mid-call fail only that call; sessions and the server carry on."""

from __future__ import annotations

import grpc
import pytest
from helpers import retry_info
from reliability_support import small_clip, wait_idle
from test_executor import segment_request
from test_video import add_text, propagate, upload, upload_files

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import video_service_pb2 as pb


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError: the executor recognises it by name."""


def fail_on(name: str, nth: int, exc: BaseException):
    """A before_call hook raising exc at the nth call named `name` (once)."""
    seen = {"count": 0}

    def hook(called: str) -> None:
        if called == name:
            seen["count"] += 1
            if seen["count"] == nth:
                raise exc

    return hook


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    from conftest import launch

    engine = SyntheticEngine()
    server = launch(engine)
    clip = small_clip(tmp_path_factory.mktemp("faults") / "clip.avi", frames=12)
    yield server, engine, clip
    server.stop()


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (RuntimeError("simulated device fault in /secret/model.py"), grpc.StatusCode.INTERNAL),
        (
            OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    ],
)
def test_fault_on_the_fifth_propagate_step(faulty, fault, code):
    server, engine, clip = faulty
    sid = upload(server, clip).session_id
    add_text(server, sid)
    steps = engine.calls["propagate_step"]
    engine.before_call = fail_on("propagate_step", 5, fault)
    frames = []
    stream = server.video.Propagate(pb.PropagateRequest(session_id=sid), timeout=30)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            frames.extend(reply.frame.frame_index for reply in stream)
    finally:
        engine.before_call = None
    error = caught.value
    assert error.code() == code, error.details()
    assert frames == [0, 1, 2, 3]  # every frame before the fault arrived, in order
    assert "secret" not in error.details()
    if code == grpc.StatusCode.INTERNAL:
        assert "error id" in error.details()
    else:
        assert retry_info(error) is not None
    assert engine.calls["propagate_step"] == steps + 5  # nothing ran past the fault
    # The session stays usable: prompt again and propagate through the whole video.
    wait_idle(server, [sid])
    add_text(server, sid, frame=2)
    replies = propagate(server, sid, start_frame_index=0)
    assert [r.frame.frame_index for r in replies] == list(range(12))
    # The next, unrelated call works too.
    assert server.segmentation.SegmentImage(segment_request(7), timeout=30).results
    assert server.video.CloseSession(pb.CloseSessionRequest(session_id=sid)).closed


def test_fault_in_add_prompt_keeps_the_session(faulty):
    server, engine, clip = faulty
    sid = upload(server, clip).session_id
    engine.before_call = fail_on("add_prompt", 1, RuntimeError("boom"))
    try:
        with pytest.raises(grpc.RpcError) as caught:
            add_text(server, sid)
    finally:
        engine.before_call = None
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert list(add_text(server, sid).object_ids) == [1]
    assert len(propagate(server, sid, max_frames=3)) == 3
    server.video.CloseSession(pb.CloseSessionRequest(session_id=sid))


def test_fault_opening_an_uploaded_session_leaves_nothing(faulty):
    server, engine, clip = faulty
    sessions = len(server.video.ListSessions(pb.ListSessionsRequest()).sessions)
    engine.before_call = fail_on("start_session", 1, OutOfMemoryError("out of memory"))
    try:
        with pytest.raises(grpc.RpcError) as caught:
            upload(server, clip)
    finally:
        engine.before_call = None
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert upload_files(server) == []
    assert len(server.video.ListSessions(pb.ListSessionsRequest()).sessions) == sessions
    sid = upload(server, clip).session_id  # the slot was given back
    server.video.CloseSession(pb.CloseSessionRequest(session_id=sid))
