"""VideoService end to end with the synthetic engine: masks land on the right pixels of the
right frame, sessions behave, propagation streams frame by frame and can be cancelled."""

from __future__ import annotations

import hashlib
import itertools
import os
import pathlib
import threading
import time

import grpc
import numpy as np
import pytest
from helpers import (
    BLUE,
    RED,
    Gate,
    blank,
    disc_clip,
    draw_disc,
    encode,
    iou,
    mask_of,
    write_frame_folder,
    write_video,
)

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import common_pb2, segmentation_service_pb2
from sam3_grpc.v1 import video_service_pb2 as pb

FORWARD = pb.PROPAGATION_DIRECTION_FORWARD
BACKWARD = pb.PROPAGATION_DIRECTION_BACKWARD
BOTH = pb.PROPAGATION_DIRECTION_BOTH
CHUNK = 4096


def upload_requests(data: bytes, *, filename="clip.avi", size=None, sha256=None, chunk=CHUNK):
    yield pb.UploadVideoRequest(
        metadata=pb.UploadVideoMetadata(
            filename=filename,
            size_bytes=len(data) if size is None else size,
            sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        )
    )
    for offset in range(0, len(data), chunk):
        yield pb.UploadVideoRequest(chunk=data[offset : offset + chunk])


def upload(server, path, **kwargs) -> pb.Session:
    with open(path, "rb") as handle:
        data = handle.read()
    reply = server.video.UploadVideo(
        upload_requests(data, filename=os.path.basename(path), **kwargs), timeout=60
    )
    assert reply.received_bytes == len(data)
    return reply.session


def add_text(server, session_id, text="red", frame=0, **output):
    return server.video.AddPrompt(
        pb.AddPromptRequest(
            session_id=session_id,
            frame_index=frame,
            prompt=common_pb2.Prompt(text=text),
            output=common_pb2.OutputOptions(**output),
        ),
        timeout=30,
    )


def propagate(server, session_id, **fields):
    return list(
        server.video.Propagate(pb.PropagateRequest(session_id=session_id, **fields), timeout=60)
    )


def upload_files(server) -> list[str]:
    directory = server.server.sessions.upload_dir
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("upload-"))


@pytest.fixture(scope="module")
def clip():
    return disc_clip(frames=12)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory, clip):
    return write_video(tmp_path_factory.mktemp("clips") / "disc.avi", clip[0])


@pytest.fixture
def session(synthetic_server, clip_file):
    session = upload(synthetic_server, clip_file)
    yield session
    synthetic_server.video.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))


def assert_frames_match(replies, masks, expected_order):
    assert [r.frame.frame_index for r in replies] == expected_order
    assert [r.frames_done for r in replies] == list(range(1, len(expected_order) + 1))
    assert {r.frames_total for r in replies} == {len(expected_order)}
    for reply in replies:
        (obj,) = reply.frame.objects
        assert iou(mask_of(obj), masks[reply.frame.frame_index]) >= 0.99


def test_upload_prompt_and_propagate_forward(synthetic_server, session, clip):
    _, masks = clip
    assert session.video.frame_count == 12 and session.uploaded
    assert (session.video.width, session.video.height) == (160, 120)
    prompted = add_text(synthetic_server, session.session_id)
    (obj,) = prompted.frame.objects
    assert list(prompted.object_ids) == [obj.object_id]
    np.testing.assert_array_equal(mask_of(obj), masks[0])
    replies = propagate(synthetic_server, session.session_id, direction=FORWARD)
    assert_frames_match(replies, masks, list(range(12)))
    ids = {r.frame.objects[0].object_id for r in replies}
    assert ids == {obj.object_id}


def test_propagate_backward_and_both(synthetic_server, session, clip):
    _, masks = clip
    add_text(synthetic_server, session.session_id, frame=11)
    assert_frames_match(
        propagate(synthetic_server, session.session_id, direction=BACKWARD),
        masks,
        list(range(11, -1, -1)),
    )
    replies = propagate(synthetic_server, session.session_id, direction=BOTH, start_frame_index=5)
    assert_frames_match(replies, masks, [5, 6, 7, 8, 9, 10, 11, 4, 3, 2, 1, 0])


def test_max_frames_and_start_frame(synthetic_server, session, clip):
    _, masks = clip
    add_text(synthetic_server, session.session_id, frame=2)
    replies = propagate(synthetic_server, session.session_id, max_frames=4)
    assert_frames_match(replies, masks, [2, 3, 4, 5])
    replies = propagate(
        synthetic_server, session.session_id, direction=BACKWARD, start_frame_index=6, max_frames=3
    )
    assert_frames_match(replies, masks, [6, 5, 4])


def test_start_session_from_media_root_frame_folder(synthetic_server, media_root, clip):
    images, masks = clip
    write_frame_folder(os.path.join(media_root, "clips", "disc"), images)
    reply = synthetic_server.video.StartSession(pb.StartSessionRequest(video_path="clips/disc"))
    session = reply.session
    assert session.video.frame_count == 12 and not session.uploaded
    try:
        add_text(synthetic_server, session.session_id, mask_encoding=common_pb2.MASK_ENCODING_PNG)
        replies = propagate(
            synthetic_server,
            session.session_id,
            output=common_pb2.OutputOptions(mask_encoding=common_pb2.MASK_ENCODING_PNG),
        )
        assert [r.frame.frame_index for r in replies] == list(range(12))
        for reply in replies:
            assert iou(mask_of(reply.frame.objects[0]), masks[reply.frame.frame_index]) >= 0.97
    finally:
        synthetic_server.video.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))
    # The media file itself is never deleted.
    assert os.path.isdir(os.path.join(media_root, "clips", "disc"))


def test_refine_remove_and_reset(synthetic_server, tmp_path):
    images, masks = [], []
    for i in range(6):
        image = blank(160, 120)
        red = draw_disc(image, 30 + 5 * i, 40, 12, RED)
        blue = draw_disc(image, 120 - 5 * i, 85, 12, BLUE)
        images.append(image)
        masks.append((red, blue))
    session = upload(synthetic_server, write_video(tmp_path / "two.avi", images))
    sid = session.session_id
    video = synthetic_server.video
    red_id = add_text(synthetic_server, sid, "red").object_ids[0]
    click = common_pb2.Prompt(points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=110, y=85))])
    blue_reply = video.AddPrompt(pb.AddPromptRequest(session_id=sid, frame_index=2, prompt=click))
    (blue_id,) = blue_reply.object_ids
    assert blue_id != red_id
    assert sorted(
        video.GetSession(pb.GetSessionRequest(session_id=sid)).session.object_ids
    ) == sorted([red_id, blue_id])
    # Refine the red object with a click on the blue disc: it now follows the blue disc.
    refine = common_pb2.Prompt(
        points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=120, y=85))]
    )
    refined = video.AddPrompt(
        pb.AddPromptRequest(session_id=sid, frame_index=0, prompt=refine, object_id=red_id)
    )
    assert list(refined.object_ids) == [red_id]
    after_remove = video.RemoveObject(pb.RemoveObjectRequest(session_id=sid, object_id=red_id))
    assert list(after_remove.session.object_ids) == [blue_id]
    replies = propagate(synthetic_server, sid, start_frame_index=0)
    for reply in replies:
        (obj,) = reply.frame.objects
        assert obj.object_id == blue_id
        assert iou(mask_of(obj), masks[reply.frame.frame_index][1]) >= 0.99
    reset = video.ResetSession(pb.ResetSessionRequest(session_id=sid))
    assert list(reset.session.object_ids) == []
    with pytest.raises(grpc.RpcError) as caught:
        propagate(synthetic_server, sid)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert video.CloseSession(pb.CloseSessionRequest(session_id=sid)).closed


def test_session_errors(synthetic_server, session):
    video = synthetic_server.video
    sid = session.session_id
    cases = [
        (
            lambda: propagate(synthetic_server, sid),
            grpc.StatusCode.FAILED_PRECONDITION,
            "AddPrompt",
        ),
        (
            lambda: add_text(synthetic_server, sid, frame=12),
            grpc.StatusCode.INVALID_ARGUMENT,
            "outside the video",
        ),
        (
            lambda: video.AddPrompt(
                pb.AddPromptRequest(session_id=sid, prompt=common_pb2.Prompt())
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty",
        ),
        (
            lambda: video.AddPrompt(pb.AddPromptRequest(session_id=sid)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt is missing",
        ),
        (
            lambda: video.AddPrompt(
                pb.AddPromptRequest(
                    session_id=sid, prompt=common_pb2.Prompt(text="red"), object_id=99
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not tracked",
        ),
        (
            lambda: video.RemoveObject(pb.RemoveObjectRequest(session_id=sid, object_id=99)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not tracked",
        ),
        (
            lambda: video.GetSession(pb.GetSessionRequest(session_id="nope")),
            grpc.StatusCode.NOT_FOUND,
            "no session",
        ),
        (lambda: add_text(synthetic_server, "nope"), grpc.StatusCode.NOT_FOUND, "no session"),
        (
            lambda: propagate(synthetic_server, sid, start_frame_index=40),
            grpc.StatusCode.FAILED_PRECONDITION,
            "AddPrompt",
        ),
    ]
    for call, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == code, caught.value.details()
        assert fragment in caught.value.details()
    add_text(synthetic_server, sid)
    with pytest.raises(grpc.RpcError) as caught:
        propagate(synthetic_server, sid, start_frame_index=40)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not video.CloseSession(pb.CloseSessionRequest(session_id="nope")).closed


def test_list_get_and_close_twice(synthetic_server, clip_file):
    video = synthetic_server.video
    first = upload(synthetic_server, clip_file)
    second = upload(synthetic_server, clip_file)
    listed = video.ListSessions(pb.ListSessionsRequest()).sessions
    assert [s.session_id for s in listed][-2:] == [first.session_id, second.session_id]
    got = video.GetSession(pb.GetSessionRequest(session_id=first.session_id)).session
    assert got.expire_time.ToSeconds() > got.last_use_time.ToSeconds()
    before = upload_files(synthetic_server)
    assert video.CloseSession(pb.CloseSessionRequest(session_id=first.session_id)).closed
    assert not video.CloseSession(pb.CloseSessionRequest(session_id=first.session_id)).closed
    assert len(upload_files(synthetic_server)) == len(before) - 1
    video.CloseSession(pb.CloseSessionRequest(session_id=second.session_id))


def test_segment_image_is_served_between_propagation_frames(start_server, tmp_path):
    engine = SyntheticEngine(latency_ms=10)  # every frame step takes device time
    server = start_server(engine)
    log: list[str] = []
    engine.before_call = log.append
    images, _ = disc_clip(frames=40, step=2)
    session = upload(server, write_video(tmp_path / "long.avi", images))
    add_text(server, session.session_id)
    stream = server.video.Propagate(pb.PropagateRequest(session_id=session.session_id))
    first = next(stream)
    assert first.frames_total == 40
    image = blank(64, 48)
    draw_disc(image, 20, 20, 8, RED)
    reply = server.segmentation.SegmentImage(segment_request_for(image), timeout=30)
    assert reply.results[0].detections
    assert len(list(stream)) == 39
    steps = [i for i, name in enumerate(log) if name == "propagate_step"]
    encode_at = log.index("encode_image", steps[0])
    # The image job ran after a few frame steps (those already buffered ahead of the reader),
    # long before the propagation finished.
    assert sum(1 for i in steps if i < encode_at) <= 8
    assert sum(1 for i in steps if i > encode_at) >= 30


def segment_request_for(image) -> segmentation_service_pb2.SegmentImageRequest:
    return segmentation_service_pb2.SegmentImageRequest(
        image=common_pb2.Image(content=encode(image)), prompts=[common_pb2.Prompt(text="red")]
    )


def test_cancel_mid_stream_stops_computation_and_keeps_session(start_server, tmp_path):
    engine = SyntheticEngine(latency_ms=5)
    server = start_server(engine)
    images, masks = disc_clip(frames=60, step=2)
    session = upload(server, write_video(tmp_path / "cancel.avi", images))
    add_text(server, session.session_id)
    stream = server.video.Propagate(pb.PropagateRequest(session_id=session.session_id))
    for _ in range(3):
        next(stream)
    stream.cancel()
    deadline = time.monotonic() + 10
    while server.video.GetSession(
        pb.GetSessionRequest(session_id=session.session_id)
    ).session.propagating:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    steps = engine.calls["propagate_step"]
    time.sleep(0.3)  # were it still running, 5 ms steps would add dozens of frames here
    assert engine.calls["propagate_step"] == steps < 60
    replies = propagate(server, session.session_id, max_frames=5)
    assert [r.frame.frame_index for r in replies] == [0, 1, 2, 3, 4]
    assert iou(mask_of(replies[-1].frame.objects[0]), masks[4]) >= 0.99


def test_second_concurrent_propagate_is_refused(start_server, tmp_path):
    engine = SyntheticEngine()
    server = start_server(engine)
    images, _ = disc_clip(frames=10)
    session = upload(server, write_video(tmp_path / "c.avi", images))
    add_text(server, session.session_id)
    gate = Gate(names=("propagate_step",))
    engine.before_call = gate
    stream = server.video.Propagate(pb.PropagateRequest(session_id=session.session_id))
    first = threading.Thread(target=lambda: next(stream), daemon=True)
    first.start()
    gate.wait_entered()
    with pytest.raises(grpc.RpcError) as caught:
        propagate(server, session.session_id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as caught:
        add_text(server, session.session_id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "propagating" in caught.value.details()
    gate.release()
    first.join(10)
    assert len(list(stream)) == 9


def test_slow_reader_pauses_propagation(start_server, tmp_path):
    engine = SyntheticEngine()
    server = start_server(engine, stream_buffer_frames=2)
    images, _ = disc_clip(frames=300, width=320, height=240, step=0)
    session = upload(server, write_video(tmp_path / "bp.avi", images))
    add_text(server, session.session_id)
    # A client whose HTTP/2 window stays small, so unread messages hold the server back.
    channel = grpc.insecure_channel(
        server.target,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)],
    )
    from sam3_grpc.v1 import video_service_pb2_grpc

    stream = video_service_pb2_grpc.VideoServiceStub(channel).Propagate(
        pb.PropagateRequest(
            session_id=session.session_id,
            output=common_pb2.OutputOptions(
                mask_encoding=common_pb2.MASK_ENCODING_PNG, include_polygons=True
            ),
        )
    )
    next(stream)
    previous = -1
    while engine.calls["propagate_step"] != previous:  # wait for the producer to stall
        previous = engine.calls["propagate_step"]
        time.sleep(0.3)
    assert previous < 300, "the server computed every frame although nobody read them"
    assert len(list(stream)) == 299
    channel.close()


def test_upload_limits_and_integrity(start_server, clip_file):
    with open(clip_file, "rb") as handle:
        data = handle.read()
    limit = len(data) // 2
    part = data[: limit - 1000]
    server = start_server(SyntheticEngine(), max_upload_bytes=limit)
    cases = [
        (upload_requests(data), grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {limit}"),
        (
            upload_requests(data[:limit], size=limit - 2000, chunk=512),
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than the declared",
        ),
        (upload_requests(part, sha256="0" * 64), grpc.StatusCode.DATA_LOSS, "SHA-256"),
        (
            upload_requests(part, size=len(part) + 10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "incomplete",
        ),
        (
            iter([pb.UploadVideoRequest(chunk=b"abc")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "first UploadVideo message",
        ),
        (upload_requests(data[:100], size=0), grpc.StatusCode.INVALID_ARGUMENT, "size_bytes"),
        (upload_requests(part, sha256="xyz"), grpc.StatusCode.INVALID_ARGUMENT, "hex"),
        (
            upload_requests(b"\x00not a video" * 100),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a readable video",
        ),
    ]
    for requests, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as caught:
            server.video.UploadVideo(requests, timeout=30)
        assert caught.value.code() == code, caught.value.details()
        assert fragment in caught.value.details(), caught.value.details()
        assert upload_files(server) == []


def test_truncated_videos(synthetic_server, clip, tmp_path):
    images, _ = clip
    mp4 = pathlib.Path(write_video(tmp_path / "t.mp4", images, fourcc="mp4v")).read_bytes()
    with pytest.raises(grpc.RpcError) as caught:
        synthetic_server.video.UploadVideo(upload_requests(mp4[: len(mp4) // 2]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "truncated" in caught.value.details()
    # An AVI cut short still plays up to the cut: the session gets the frames that decode.
    avi = pathlib.Path(write_video(tmp_path / "t.avi", images)).read_bytes()
    reply = synthetic_server.video.UploadVideo(
        upload_requests(avi[: len(avi) * 2 // 3]), timeout=30
    )
    assert 0 < reply.session.video.frame_count < 12
    add_text(synthetic_server, reply.session.session_id)
    frames = propagate(synthetic_server, reply.session.session_id)
    assert len(frames) == reply.session.video.frame_count
    synthetic_server.video.CloseSession(pb.CloseSessionRequest(session_id=reply.session.session_id))


def test_metadata_past_the_limit_is_refused_before_any_byte(start_server):
    server = start_server(SyntheticEngine(), max_upload_bytes=1000)
    with pytest.raises(grpc.RpcError) as caught:
        server.video.UploadVideo(
            iter(
                [
                    pb.UploadVideoRequest(
                        metadata=pb.UploadVideoMetadata(filename="big.mp4", size_bytes=10**12)
                    )
                ]
            ),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cancelled_and_stalled_uploads_leave_nothing(start_server, clip_file):
    server = start_server(SyntheticEngine(), upload_idle_timeout_s=0.5)
    with open(clip_file, "rb") as handle:
        data = handle.read()
    release = threading.Event()

    def stalled():
        requests = upload_requests(data)
        yield next(requests)
        yield next(requests)
        release.wait(20)

    with pytest.raises(grpc.RpcError) as caught:
        server.video.UploadVideo(stalled(), timeout=30)
    release.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no upload data" in caught.value.details()
    assert upload_files(server) == []

    sent = threading.Event()

    def cancelled():
        requests = upload_requests(data)
        yield next(requests)
        yield next(requests)
        sent.set()
        release.wait(20)

    release.clear()
    future = server.video.UploadVideo.future(cancelled(), timeout=30)
    assert sent.wait(10)
    deadline = time.monotonic() + 10
    while not upload_files(server):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    future.cancel()
    release.set()
    while upload_files(server):
        assert time.monotonic() < deadline, "the cancelled upload's file was left behind"
        time.sleep(0.01)


def test_media_root_path_traversal_table(start_server, tmp_path, clip):
    root = tmp_path / "videos"
    sibling = tmp_path / "videos_evil"
    root.mkdir()
    sibling.mkdir()
    write_video(root / "ok.avi", clip[0][:3])
    write_video(sibling / "evil.avi", clip[0][:3])
    write_video(tmp_path / "outside.avi", clip[0][:3])
    os.symlink(tmp_path / "outside.avi", root / "link.avi")
    os.mkfifo(root / "fifo.avi")
    (root / "empty_dir").mkdir()
    server = start_server(SyntheticEngine(), media_roots=(str(root),))
    video = server.video
    assert (
        video.StartSession(pb.StartSessionRequest(video_path="ok.avi")).session.video.frame_count
        == 3
    )
    refused = [
        "../outside.avi",
        str(tmp_path / "outside.avi"),
        "../videos_evil/evil.avi",
        str(sibling / "evil.avi"),
        "link.avi",
        "fifo.avi",
        "missing.avi",
        "/dev/zero",
        "",
        "ok.avi/../../outside.avi",
    ]
    replies = set()
    for path in refused:
        with pytest.raises(grpc.RpcError) as caught:
            video.StartSession(pb.StartSessionRequest(video_path=path), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, path
        assert str(tmp_path) not in caught.value.details()
        replies.add(caught.value.details())
    assert len(replies) == 1  # outside and missing look the same
    with pytest.raises(grpc.RpcError) as caught:
        video.StartSession(pb.StartSessionRequest(video_path="empty_dir"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no frame images" in caught.value.details()


def test_start_session_without_media_root(start_server):
    server = start_server(SyntheticEngine())
    with pytest.raises(grpc.RpcError) as caught:
        server.video.StartSession(pb.StartSessionRequest(video_path="a.mp4"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--media-root" in caught.value.details()


def test_video_limits_from_the_probe(start_server, tmp_path, clip):
    root = tmp_path / "media"
    root.mkdir()
    write_video(root / "clip.avi", clip[0])
    server = start_server(SyntheticEngine(), media_roots=(str(root),), max_frames=5)
    with pytest.raises(grpc.RpcError) as caught:
        server.video.StartSession(pb.StartSessionRequest(video_path="clip.avi"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 5 frames" in caught.value.details()
    server = start_server(SyntheticEngine(), media_roots=(str(root),), max_video_pixels=10_000)
    with pytest.raises(grpc.RpcError) as caught:
        server.video.StartSession(pb.StartSessionRequest(video_path="clip.avi"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "160x120" in caught.value.details()


def test_session_cap_and_idle_expiry(start_server, clip_file):
    server = start_server(SyntheticEngine(), max_sessions=2, session_ttl_s=0.4)
    first = upload(server, clip_file)
    upload(server, clip_file)
    with pytest.raises(grpc.RpcError) as caught:
        upload(server, clip_file)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 video sessions" in caught.value.details()
    deadline = time.monotonic() + 10
    while server.video.ListSessions(pb.ListSessionsRequest()).sessions:
        assert time.monotonic() < deadline, "idle sessions never expired"
        time.sleep(0.05)
    assert upload_files(server) == []
    with pytest.raises(grpc.RpcError) as caught:
        add_text(server, first.session_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_shutdown_closes_sessions_and_removes_uploads(start_server, clip_file):
    engine = SyntheticEngine()
    server = start_server(engine)
    upload(server, clip_file)
    upload(server, clip_file)
    directory = server.server.sessions.upload_dir
    assert len(upload_files(server)) == 2
    server.stop()
    assert not directory.exists()
    assert engine.calls["close_session"] == 2


class StepRecordingEngine(SyntheticEngine):
    """Records, per propagation step, which session's state it advanced."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.step_owners: list[int] = []

    def propagate(self, state, forward, backward):
        for frame in super().propagate(state, forward, backward):
            self.step_owners.append(id(state))
            yield frame


def test_concurrent_propagations_share_the_device_round_robin(start_server, tmp_path):
    engine = StepRecordingEngine(latency_ms=3)
    server = start_server(engine, stream_buffer_frames=2)
    path = write_video(tmp_path / "rr.avi", disc_clip(frames=40, step=2)[0])
    sessions = [upload(server, path) for _ in range(2)]
    for session in sessions:
        add_text(server, session.session_id)
    streams = [
        server.video.Propagate(pb.PropagateRequest(session_id=s.session_id)) for s in sessions
    ]
    counts = []
    threads = [
        threading.Thread(target=lambda s=s: counts.append(sum(1 for _ in s))) for s in streams
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert counts == [40, 40]
    owners = engine.step_owners
    assert len(owners) == 80 and len(set(owners)) == 2
    # While both streams run (up to the last step of the one that finishes first), neither gets
    # more than a couple of steps in a row: the FIFO queue alternates between the two producers.
    second_start = min(owners.index(o) for o in set(owners) if o != owners[0])
    first_end = max(i for i, o in enumerate(owners) if o != owners[-1])
    both_running = owners[second_start : first_end + 1]
    runs, current = [], 1
    for previous, owner in itertools.pairwise(both_running):
        if owner == previous:
            current += 1
        else:
            runs.append(current)
            current = 1
    runs.append(current)
    assert len(both_running) >= 60 and max(runs) <= 3, runs


def test_concurrent_upload_limit(start_server, clip_file):
    server = start_server(SyntheticEngine(), max_concurrent_uploads=1)
    release = threading.Event()
    started = threading.Event()
    with open(clip_file, "rb") as handle:
        data = handle.read()

    def slow():
        requests = upload_requests(data)
        yield next(requests)
        started.set()
        release.wait(20)
        yield from requests

    first = server.video.UploadVideo.future(slow(), timeout=60)
    assert started.wait(10)
    deadline = time.monotonic() + 10
    while server.server.sessions.uploads_in_progress == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(grpc.RpcError) as caught:
        server.video.UploadVideo(upload_requests(data), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "uploads are already in progress" in caught.value.details()
    release.set()
    assert first.result(timeout=60).session.video.frame_count == 12


class SlowStartEngine(SyntheticEngine):
    """Creates a session's state, then waits: the caller can leave in between."""

    def __init__(self) -> None:
        super().__init__()
        self.created = threading.Event()
        self.proceed = threading.Event()

    def start_session(self, source):
        state = super().start_session(source)
        self.created.set()
        assert self.proceed.wait(30)
        return state


def test_session_started_for_a_caller_who_left_is_freed(start_server, clip_file):
    engine = SlowStartEngine()
    server = start_server(engine)
    with open(clip_file, "rb") as handle:
        data = handle.read()
    future = server.video.UploadVideo.future(upload_requests(data), timeout=60)
    assert engine.created.wait(10)  # the state exists; the job has not returned yet
    future.cancel()
    deadline = time.monotonic() + 10
    while upload_files(server):  # the handler saw the cancellation and removed the upload
        assert time.monotonic() < deadline
        time.sleep(0.01)
    engine.proceed.set()
    while engine.calls["close_session"] < 1:  # the state nobody owns any more is freed
        assert time.monotonic() < deadline, "the orphaned session state was never closed"
        time.sleep(0.01)
    assert server.video.ListSessions(pb.ListSessionsRequest()).sessions == []


@pytest.mark.parametrize(
    ("extension", "fourcc", "min_iou"),
    [
        (".mp4", "mp4v", 0.9),
        (".mov", "mp4v", 0.9),
        (".mkv", "FFV1", 0.99),
        (".webm", "VP80", 0.85),
        (".avi", "MJPG", 0.85),
        (".flv", "FLV1", 0.85),
    ],
)
def test_every_documented_container_is_accepted(
    synthetic_server, tmp_path, clip, extension, fourcc, min_iou
):
    images, masks = clip
    session = upload(
        synthetic_server, write_video(tmp_path / f"clip{extension}", images, fourcc=fourcc)
    )
    try:
        assert session.video.frame_count == 12
        add_text(synthetic_server, session.session_id)
        replies = propagate(synthetic_server, session.session_id)
        assert [r.frame.frame_index for r in replies] == list(range(12))
        for reply in replies:
            assert iou(mask_of(reply.frame.objects[0]), masks[reply.frame.frame_index]) >= min_iou
    finally:
        synthetic_server.video.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))
