"""Uploads that trickle, fill the disk, race the file's creation, or share a directory with
another server (issue 10, items 3, 5, 13 and 18)."""

from __future__ import annotations

import os
import resource
import threading
import time
from pathlib import Path

import grpc
import pytest
from reliability_support import small_clip, wait_for
from test_hostile_media import reason_of
from test_video import upload_requests

from sam3_grpc.cli.serve_process import ServeProcess
from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import video_service_pb2 as pb
from sam3_grpc.v1 import video_service_pb2_grpc


def upload_files(directory: Path) -> list[Path]:
    """Upload files of every server instance under an --upload-dir."""
    return sorted(directory.glob("sam3-grpc-*/upload-*"))


# ----- item 3: slowloris -----------------------------------------------------------------------
def test_a_trickling_upload_is_cut_off_by_the_minimum_rate(start_server, tmp_path):
    server = start_server(
        SyntheticEngine(),
        upload_idle_timeout_s=1.0,
        upload_min_rate=2048,
        upload_dir=str(tmp_path / "uploads"),
    )

    def trickle():  # never idle for a whole second, but far below 2 KiB/s
        yield pb.UploadVideoRequest(
            metadata=pb.UploadVideoMetadata(filename="x.avi", size_bytes=10_000)
        )
        for _ in range(40):
            time.sleep(0.3)
            yield pb.UploadVideoRequest(chunk=b"x")

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        server.video.UploadVideo(trickle(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert reason_of(caught.value) == "UPLOAD_STALLED"
    assert "bytes/s" in caught.value.details()
    assert time.monotonic() - started < 10  # cut off after ~1 s, not after 40 chunks
    wait_for(lambda: upload_files(tmp_path / "uploads") == [], what="upload file removed")


def test_uploads_in_flight_hold_no_session_slot(start_server, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    small_clip(media / "clip.avi", frames=4)
    server = start_server(
        SyntheticEngine(),
        max_sessions=1,
        max_concurrent_uploads=1,
        media_roots=(str(media),),
        upload_dir=str(tmp_path / "uploads"),
    )
    release = threading.Event()

    def held():
        yield pb.UploadVideoRequest(
            metadata=pb.UploadVideoMetadata(filename="x.avi", size_bytes=100)
        )
        release.wait(20)
        yield pb.UploadVideoRequest(chunk=b"x" * 100)

    pending = server.video.UploadVideo.future(held(), timeout=30)
    wait_for(lambda: server.server.sessions.uploads_in_progress == 1, what="upload under way")
    # The upload in flight takes no session slot: a session still opens.
    session = server.video.StartSession(pb.StartSessionRequest(video_path="clip.avi"), timeout=10)
    # A second upload is refused by the upload limit, which the message and reason name.
    with pytest.raises(grpc.RpcError) as caught:
        server.video.UploadVideo(upload_requests(b"abc"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(caught.value) == "UPLOAD_LIMIT"
    assert "--max-concurrent-uploads" in caught.value.details()
    release.set()
    # The first upload completes but the one session slot is taken now: refused by that limit.
    with pytest.raises(grpc.RpcError) as caught:
        pending.result()
    assert reason_of(caught.value) in ("SESSION_LIMIT", "INVALID_VIDEO")
    server.video.CloseSession(pb.CloseSessionRequest(session_id=session.session.session_id))


# ----- item 18: a cancel while the upload's file is being created ------------------------------
def test_a_cancel_while_the_file_is_created_leaves_no_file(start_server, tmp_path, monkeypatch):
    import sam3_grpc.server.uploads as uploads

    server = start_server(SyntheticEngine(), upload_dir=str(tmp_path / "uploads"))
    entered, proceed = threading.Event(), threading.Event()

    def slow_open(path, mode):  # the file is created only after the caller has left
        entered.set()
        assert proceed.wait(20)
        return open(path, mode)

    monkeypatch.setattr(uploads, "open", slow_open, raising=False)
    call = server.video.UploadVideo.future(upload_requests(b"0123456789"), timeout=30)
    assert entered.wait(10)
    call.cancel()
    time.sleep(0.2)  # let the handler see the cancellation first
    proceed.set()
    wait_for(
        lambda: upload_files(tmp_path / "uploads") == [],
        what="the file created after the cancel removed",
    )


# ----- item 13: the disk is full ---------------------------------------------------------------
def test_a_full_disk_is_resource_exhausted_and_leaves_nothing(tmp_path):
    """A server process limited to writing 64 KiB per file (RLIMIT_FSIZE): a write past it fails
    exactly as on a full disk (EFBIG; ENOSPC and EDQUOT are handled alike)."""
    upload_dir = tmp_path / "uploads"
    with ServeProcess(
        ["--model", "synthetic", "--upload-dir", str(upload_dir), "--log-level", "WARNING"]
    ) as server:
        server.wait_ready(30)
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of killing.
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
        with grpc.insecure_channel(server.target) as channel:
            video = video_service_pb2_grpc.VideoServiceStub(channel)
            data = os.urandom(512 << 10)
            with pytest.raises(grpc.RpcError) as caught:
                video.UploadVideo(upload_requests(data, chunk=32 << 10), timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert reason_of(caught.value) == "DISK_FULL"
            assert upload_files(upload_dir) == []
        assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log()


# ----- item 5: several servers sharing one --upload-dir ----------------------------------------
def test_servers_sharing_an_upload_dir_never_touch_each_other(start_server, tmp_path):
    shared = tmp_path / "shared"
    clip = Path(small_clip(tmp_path / "clip.avi", frames=4)).read_bytes()
    first = start_server(SyntheticEngine(), upload_dir=str(shared))
    session = first.video.UploadVideo(upload_requests(clip), timeout=30).session
    mine = upload_files(shared)
    assert len(mine) == 1
    # An upload of the first server is under way while a second server starts and stops.
    release = threading.Event()

    def held():
        requests = upload_requests(clip)
        yield next(requests)
        yield next(requests)
        release.wait(20)
        yield from requests

    pending = first.video.UploadVideo.future(held(), timeout=30)
    wait_for(lambda: len(upload_files(shared)) == 2, what="second upload under way")
    second = start_server(SyntheticEngine(), upload_dir=str(shared))
    other = second.video.UploadVideo(upload_requests(clip), timeout=30).session
    assert len(upload_files(shared)) == 3
    second.stop()
    assert len(upload_files(shared)) == 2  # only the second server's own file went
    release.set()
    finished = pending.result()
    assert finished.received_bytes == len(clip)
    assert other.session_id != session.session_id
    first.stop()
    assert upload_files(shared) == []
    assert list(shared.glob("sam3-grpc-*")) == []


def test_the_uploads_of_a_killed_server_are_removed_by_the_next(tmp_path):
    shared = tmp_path / "shared"
    with ServeProcess(["--model", "synthetic", "--upload-dir", str(shared)]) as server:
        server.wait_ready(30)
        (instance,) = shared.glob("sam3-grpc-*")
        (instance / "upload-leftover.mp4").write_bytes(b"x")
        server.kill()  # no clean shutdown: the lock dies with the process
    assert instance.exists()
    from conftest import launch

    survivor = launch(SyntheticEngine(), upload_dir=str(shared))
    try:
        assert not instance.exists()
        assert len(list(shared.glob("sam3-grpc-*"))) == 1  # the survivor's own
    finally:
        survivor.stop()
