"""Memory admission (issue 9): past --memory-budget a new session is refused with
RESOURCE_EXHAUSTED naming the budget; the server stays up, open sessions keep working, and
closing one makes room. GetServerStatus reports the budget and its use."""

from __future__ import annotations

import grpc
import pytest
from helpers import disc_clip, write_video
from reliability_support import reason_of
from test_video import add_text, propagate, upload_requests

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.server.budget import default_host_budget
from sam3_grpc.v1 import status_service_pb2
from sam3_grpc.v1 import video_service_pb2 as pb


def test_sessions_past_the_memory_budget_are_refused_and_the_rest_unaffected(
    start_server, tmp_path
):
    images, _ = disc_clip(frames=12, width=64, height=48, radius=8)
    path = write_video(tmp_path / "clip.avi", images)
    data = (tmp_path / "clip.avi").read_bytes()
    engine = SyntheticEngine()
    need = engine.session_budget(_probe(path), window_frames=16).host_bytes
    assert need > 0
    server = start_server(engine, memory_budget=2 * need + need // 2, frame_window=16)

    def start() -> pb.Session:
        return server.video.UploadVideo(upload_requests(data), timeout=30).session

    first, second = start(), start()
    status = server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest())
    budget = status.session_memory_budget
    assert budget.host_budget_bytes == 2 * need + need // 2
    assert budget.host_reserved_bytes == 2 * need

    with pytest.raises(grpc.RpcError) as refused:
        start()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(refused.value) == "MEMORY_BUDGET"
    assert "--memory-budget" in refused.value.details()
    # Nothing was left behind by the refusal: no session, no reservation.
    listed = server.video.ListSessions(pb.ListSessionsRequest(), timeout=10).sessions
    assert {s.session_id for s in listed} == {first.session_id, second.session_id}
    status = server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest())
    assert status.session_memory_budget.host_reserved_bytes == 2 * need

    # The open sessions are unaffected.
    add_text(server, first.session_id)
    assert len(propagate(server, first.session_id)) == 12

    # Closing one makes room for a new one.
    server.video.CloseSession(pb.CloseSessionRequest(session_id=second.session_id), timeout=10)
    third = start()
    add_text(server, third.session_id)
    replies = propagate(server, third.session_id)
    assert [r.frame.frame_index for r in replies] == list(range(12))


def _probe(path):
    from sam3_grpc.media.frames import FrameLimits, open_frames

    source = open_frames(str(path), FrameLimits(max_frames=100, max_pixels=10**6))
    try:
        return source.info
    finally:
        source.close()


def test_the_default_host_budget_is_half_the_machine():
    assert default_host_budget(24 << 30) == 12 << 30
