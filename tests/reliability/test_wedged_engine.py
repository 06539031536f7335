"""A device job overrunning --job-timeout: the replica reports unhealthy, fails fast, recovers."""

from __future__ import annotations

import grpc
import pytest
from helpers import Gate
from reliability_support import NOT_SERVING, SERVING, TaggingEngine, health, small_clip, wait_for
from test_executor import queue_status, segment_request
from test_video import add_text, propagate, upload, upload_files, upload_requests

from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import video_service_pb2 as pb

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def test_wedged_engine_fails_fast_and_recovers(start_server, tmp_path):
    engine = TaggingEngine()
    server = start_server(engine, job_timeout_s=0.5)
    clip = small_clip(tmp_path / "clip.avi", frames=8)
    with open(clip, "rb") as handle:
        clip_bytes = handle.read()
    sid = upload(server, clip).session_id
    add_text(server, sid)
    files = upload_files(server)
    stub = server.segmentation
    gate = Gate(names=("encode_image",))
    engine.before_call = gate
    try:
        stuck = stub.SegmentImage.future(segment_request(1), timeout=60)
        gate.wait_entered()
        queued = [stub.SegmentImage.future(segment_request(i), timeout=60) for i in (2, 3)]
        queued.append(
            server.video.AddPrompt.future(
                pb.AddPromptRequest(
                    session_id=sid, frame_index=1, prompt=common_pb2.Prompt(text="red")
                ),
                timeout=60,
            )
        )
        # The watchdog notices the overrun: health turns NOT_SERVING ...
        wait_for(lambda: health(server.channel) == NOT_SERVING, what="health NOT_SERVING")
        # ... the queued calls fail with UNAVAILABLE instead of hanging ...
        for future in queued:
            with pytest.raises(grpc.RpcError) as caught:
                future.result(timeout=10)
            assert caught.value.code() == UNAVAILABLE
            assert "job-timeout" in caught.value.details()
        # ... and new calls of every kind are refused at once, touching nothing.
        new_calls = [
            lambda: stub.SegmentImage(segment_request(4), timeout=10),
            lambda: add_text(server, sid),
            lambda: propagate(server, sid),
            lambda: server.video.UploadVideo(upload_requests(clip_bytes), timeout=10),
        ]
        for call in new_calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == UNAVAILABLE, caught.value.details()
        assert upload_files(server) == files  # the refused upload left no file
        status = queue_status(server)
        assert (status.depth, status.running) == (0, 1)
    finally:
        gate.release()
    # The overrunning job returns: its own call succeeds and the replica recovers.
    assert stuck.result(timeout=30).results
    wait_for(lambda: health(server.channel) == SERVING, what="health back to SERVING")
    assert [t for t in engine.encoded if t is not None] == [1]  # no refused call ever ran
    assert stub.SegmentImage(segment_request(5), timeout=30).results
    assert list(add_text(server, sid, frame=1).object_ids)
    assert len(propagate(server, sid)) == 8
