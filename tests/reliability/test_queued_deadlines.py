"""A deadline that passes while the work waits in the queue: DEADLINE_EXCEEDED, never run."""

from __future__ import annotations

import threading

import grpc
import pytest
from helpers import Gate
from reliability_support import TaggingEngine, small_clip, wait_for, wait_idle
from test_executor import queue_status, segment_request
from test_video import add_text, propagate, upload

from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import video_service_pb2 as pb


def test_segment_and_add_prompt_expiring_in_the_queue_never_run(start_server, tmp_path):
    engine = TaggingEngine()
    server = start_server(engine)
    session = upload(server, small_clip(tmp_path / "clip.avi"))
    sid = session.session_id
    add_prompts = engine.calls["add_prompt"]
    dropped = queue_status(server).dropped
    gate = Gate(names=("encode_image",))
    engine.before_call = gate
    try:
        running = server.segmentation.SegmentImage.future(segment_request(1), timeout=60)
        gate.wait_entered()
        doomed_segment = server.segmentation.SegmentImage.future(segment_request(2), timeout=1.0)
        wait_for(lambda: queue_status(server).depth == 1, what="image job queued")
        doomed_prompt = server.video.AddPrompt.future(
            pb.AddPromptRequest(
                session_id=sid, frame_index=0, prompt=common_pb2.Prompt(text="red")
            ),
            timeout=1.0,
        )
        wait_for(lambda: queue_status(server).depth == 2, what="prompt job queued")
        for doomed in (doomed_segment, doomed_prompt):
            with pytest.raises(grpc.RpcError) as caught:
                doomed.result(timeout=30)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The client's clock runs a little ahead of the server's: release the engine only once
        # the server has seen both calls end too.
        wait_for(
            lambda: all(job.abandoned for job in list(server.server.executor._queue)),
            what="server saw the deadlines",
        )
    finally:
        gate.release()
    running.result(timeout=30)
    wait_for(lambda: queue_status(server).dropped == dropped + 2, what="both jobs dropped")
    assert 2 not in engine.encoded
    assert engine.calls["add_prompt"] == add_prompts
    # The session is untouched and usable.
    assert list(add_text(server, sid).object_ids) == [1]


def test_propagate_step_that_would_start_after_the_deadline_never_runs(start_server, tmp_path):
    engine = TaggingEngine()
    server = start_server(engine)
    session = upload(server, small_clip(tmp_path / "clip.avi", frames=20))
    sid = session.session_id
    add_text(server, sid)
    dropped = queue_status(server).dropped
    step_three = threading.Event()
    release_step = threading.Event()
    release_encode = threading.Event()

    def hook(name: str) -> None:
        if name == "propagate_step" and engine.calls["propagate_step"] == 3:
            step_three.set()
            assert release_step.wait(30)
        elif name == "encode_image":
            assert release_encode.wait(30)

    engine.before_call = hook
    frames: list[int] = []
    outcome: list[grpc.RpcError] = []

    def read() -> None:
        try:
            for reply in server.video.Propagate(pb.PropagateRequest(session_id=sid), timeout=2.0):
                frames.append(reply.frame.frame_index)
        except grpc.RpcError as error:
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert step_three.wait(10)
        # While step 3 runs, an image job queues up; step 4 will queue behind it and wait there
        # (the image job is held) until the stream's deadline has passed.
        blocker = server.segmentation.SegmentImage.future(segment_request(9), timeout=60)
        wait_for(lambda: queue_status(server).depth == 1, what="image job queued")
        release_step.set()
        reader.join(20)
        assert not reader.is_alive()
        # The client's deadline fires a little before the server's: release the image job only
        # once the server has torn the stream down too.
        wait_idle(server, [sid])
    finally:
        release_step.set()
        release_encode.set()
    assert [e.code() for e in outcome] == [grpc.StatusCode.DEADLINE_EXCEEDED]
    assert frames == [0, 1, 2]
    assert blocker.result(timeout=30).results
    wait_for(lambda: queue_status(server).dropped == dropped + 1, what="step 4 dropped")
    assert engine.calls["propagate_step"] == 3  # step 4 was dropped, never run
    engine.before_call = None
    assert [r.frame.frame_index for r in propagate(server, sid, max_frames=5)] == [0, 1, 2, 3, 4]
