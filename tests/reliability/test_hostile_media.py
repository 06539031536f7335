"""Hostile media under a media root, and videos that lie about themselves (issue 10, items 2 and
6-10, 14): operators mount shared storage, so whoever can write there is treated as hostile.

Each test drives a real server through its public API, except where the property is a count of
decoded frames, which is read from the frame source in-process.
"""

from __future__ import annotations

import os
import struct
import threading
import time

import grpc
import numpy as np
import pytest
from helpers import BLUE, RED, blank, disc_clip, draw_rect, encode, write_frame_folder, write_video
from reliability_support import SERVING, health, reason_of

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.errors import FailedPrecondition, InvalidArgument
from sam3_grpc.media.frames import FrameLimits, open_frames, open_window
from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as seg_pb
from sam3_grpc.v1 import video_service_pb2 as pb

PATH_PATTERN = r"(?<![\w.:/])/(?:[\w.@%+~-]+/)+"


def start_on(server, path: str) -> pb.Session:
    return server.video.StartSession(pb.StartSessionRequest(video_path=path), timeout=30).session


def prompt_red(server, session_id: str) -> None:
    server.video.AddPrompt(
        pb.AddPromptRequest(session_id=session_id, prompt=common_pb2.Prompt(text="red")),
        timeout=30,
    )


def propagate(server, session_id: str, **fields) -> list[pb.PropagateResponse]:
    request = pb.PropagateRequest(session_id=session_id, **fields)
    return list(server.video.Propagate(request, timeout=30))


def still_serves(server) -> None:
    """Health answers and a normal request succeeds: nothing is stuck."""
    assert health(server.channel, timeout=5.0) == SERVING
    image = blank(32, 32)
    draw_rect(image, 2, 2, 9, 9, RED)
    reply = server.segmentation.SegmentImage(
        seg_pb.SegmentImageRequest(
            image=common_pb2.Image(content=encode(image)), prompts=[common_pb2.Prompt(text="red")]
        ),
        timeout=10,
    )
    assert len(reply.results[0].detections) == 1


@pytest.fixture
def root(tmp_path):
    directory = tmp_path / "media"
    directory.mkdir()
    return directory


@pytest.fixture
def server(start_server, root):
    return start_server(SyntheticEngine(), media_roots=(str(root),))


def red_frames(count: int, width: int = 64, height: int = 48):
    images, _ = disc_clip(frames=count, width=width, height=height, radius=8, step=2)
    return images


# ----- item 6: a FIFO among the frames ---------------------------------------------------------
def test_a_fifo_among_frames_is_refused_without_blocking(server, root):
    folder = root / "fifo"
    write_frame_folder(folder, red_frames(4))
    os.unlink(folder / "00001.jpg")
    os.mkfifo(folder / "00001.jpg")  # opening it blocking would wait for a writer forever
    session = start_on(server, "fifo")
    assert session.video.frame_count == 4
    prompt_red(server, session.session_id)
    with pytest.raises(grpc.RpcError) as caught:
        propagate(server, session.session_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(caught.value) == "MEDIA_NOT_FOUND"
    still_serves(server)
    # A FIFO named like a video is not a video either.
    os.mkfifo(root / "clip.mp4")
    with pytest.raises(grpc.RpcError) as caught:
        start_on(server, "clip.mp4")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    still_serves(server)


# ----- item 7: a symlink out of the root -------------------------------------------------------
def test_a_symlink_out_of_the_root_is_never_followed(server, root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = blank(64, 48)
    secret[:] = BLUE  # all blue: if it is ever read, a "blue" prompt finds it
    (outside / "secret.jpg").write_bytes(encode(secret, ".jpg"))
    folder = root / "linked"
    write_frame_folder(folder, red_frames(3))
    os.unlink(folder / "00001.jpg")
    os.symlink(outside / "secret.jpg", folder / "00001.jpg")
    session = start_on(server, "linked")
    server.video.AddPrompt(
        pb.AddPromptRequest(session_id=session.session_id, prompt=common_pb2.Prompt(text="red")),
        timeout=30,
    )
    with pytest.raises(grpc.RpcError) as caught:
        server.video.AddPrompt(
            pb.AddPromptRequest(
                session_id=session.session_id,
                frame_index=1,
                prompt=common_pb2.Prompt(text="blue"),
            ),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # A linked image or folder is refused the same way.
    os.symlink(outside / "secret.jpg", root / "secret.jpg")
    os.symlink(outside, root / "outside")
    for path in ("secret.jpg", "outside/secret.jpg"):
        with pytest.raises(grpc.RpcError) as caught:
            server.segmentation.SegmentImage(
                seg_pb.SegmentImageRequest(
                    image=common_pb2.Image(path=path), prompts=[common_pb2.Prompt(text="blue")]
                ),
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, path


# ----- item 8: swapping a directory for a symlink while the server opens files ----------------
def test_swapping_a_directory_for_a_symlink_never_reads_outside(server, root, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    blue = blank(40, 30)
    blue[:] = BLUE
    (outside / "img.png").write_bytes(encode(blue))
    inside = blank(40, 30)
    draw_rect(inside, 5, 5, 20, 20, RED)
    real = root / "real"
    real.mkdir()
    (real / "img.png").write_bytes(encode(inside))
    stop = threading.Event()

    def swap() -> None:  # "dir" flips between the real directory and a link to outside
        link = root / "link"
        os.symlink(outside, link)
        while not stop.is_set():
            os.rename(real, root / "dir")
            os.rename(root / "dir", real)
            os.rename(link, root / "dir")
            os.rename(root / "dir", link)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    outcomes: dict[str, int] = {}
    try:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            try:
                reply = server.segmentation.SegmentImage(
                    seg_pb.SegmentImageRequest(
                        image=common_pb2.Image(path="dir/img.png"),
                        prompts=[common_pb2.Prompt(text="blue"), common_pb2.Prompt(text="red")],
                    ),
                    timeout=10,
                )
                # The outside image is all blue: reading it would find a blue detection.
                assert not reply.results[0].detections, "a file outside the root was read"
                assert len(reply.results[1].detections) == 1
                outcomes["inside"] = outcomes.get("inside", 0) + 1
            except grpc.RpcError as error:
                code = error.code()
                outcomes[code.name] = outcomes.get(code.name, 0) + 1
    finally:
        stop.set()
        swapper.join(5)
    assert set(outcomes) <= {"inside", "NOT_FOUND"}, outcomes  # found inside, or refused
    assert sum(outcomes.values()) > 20, outcomes


# ----- item 9: a later frame larger than the first ---------------------------------------------
def test_a_later_frame_of_another_size_is_refused_from_its_header(server, root):
    folder = root / "sizes"
    write_frame_folder(folder, red_frames(3))
    huge = np.zeros((3000, 3000, 3), np.uint8)  # 9 Mpx, under --max-video-pixels, not 64x48
    (folder / "00001.jpg").write_bytes(encode(huge, ".jpg"))
    session = start_on(server, "sizes")
    assert (session.video.width, session.video.height) == (64, 48)
    prompt_red(server, session.session_id)
    frames: list[int] = []
    stream = server.video.Propagate(pb.PropagateRequest(session_id=session.session_id), timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        frames.extend(reply.frame.frame_index for reply in stream)
    assert frames == [0]
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert reason_of(caught.value) == "FRAME_UNREADABLE"
    assert "64x48" in caught.value.details() or "pixels" in caught.value.details()
    still_serves(server)


# ----- item 14: a frame file that disappears ---------------------------------------------------
def test_a_frame_file_that_disappears_is_not_found(server, root):
    folder = root / "vanishing"
    write_frame_folder(folder, red_frames(4))
    session = start_on(server, "vanishing")
    prompt_red(server, session.session_id)
    os.unlink(folder / "00002.jpg")
    with pytest.raises(grpc.RpcError) as caught:
        propagate(server, session.session_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(caught.value) == "MEDIA_NOT_FOUND"


# ----- item 2: the probe never decodes the video -----------------------------------------------
def secretly_large_mjpeg(directory) -> bytes:
    """An MJPEG AVI whose headers say 64x48 while every frame is 2000x2000."""
    images = [np.full((2000, 2000, 3), 40 * i, np.uint8) for i in range(3)]
    path = write_video(directory / "big.avi", images, fourcc="MJPG")
    data = bytearray(open(path, "rb").read())  # noqa: SIM115 - read at once
    avih, strh, strf = (data.find(tag) + 8 for tag in (b"avih", b"strh", b"strf"))
    struct.pack_into("<II", data, avih + 32, 64, 48)
    struct.pack_into("<hhhh", data, strh + 48, 0, 0, 64, 48)
    struct.pack_into("<ii", data, strf + 4, 64, 48)
    return bytes(data)


def test_frames_larger_than_the_header_are_never_decoded(start_server, root, tmp_path):
    """The headers say 64x48; the frames are 2000x2000, over this server's pixel limit: the
    decoder refuses to decode them at all (FFmpeg's max_pixels), so the limit holds."""
    server = start_server(SyntheticEngine(), media_roots=(str(root),), max_video_pixels=200_000)
    (root / "big.avi").write_bytes(secretly_large_mjpeg(tmp_path))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        start_on(server, "big.avi")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "INVALID_VIDEO"
    assert time.monotonic() - started < 30  # bounded; a liveness bound, not a benchmark
    still_serves(server)


def test_the_probe_decodes_at_most_the_first_frame_and_the_last_group(tmp_path):
    """3,000 intra frames whose last frame is damaged: the old probe decoded all of them to
    count; now the count comes from the packets and only the last group is decoded."""
    images = [blank(32, 24) for _ in range(3000)]
    for i, image in enumerate(images):
        image[:, :, 0] = i % 256
    path = write_video(tmp_path / "long.avi", images)  # FFV1: every frame is a key frame
    data = open(path, "rb").read()  # noqa: SIM115 - read at once
    # Cut inside the last frame (just before the index at the end of the file).
    (tmp_path / "cut.avi").write_bytes(data[: data.rfind(b"idx1") - 20])
    limits = FrameLimits(max_frames=5000, max_pixels=10**6)
    source = open_frames(str(tmp_path / "cut.avi"), limits)
    try:
        count = source.info.frame_count
        assert 2980 <= count < 3000  # the damaged tail is dropped
        last_group = 3000 - source.key_frames[-1]
        assert last_group <= 32
        # The first frame, and the last group of pictures once: not 3,000 frames.
        assert source.decoded <= 1 + last_group + 1
    finally:
        source.close()
    # Past --max-frames the probe stops demuxing and refuses; nothing is decoded.
    with pytest.raises(InvalidArgument, match="more than 100 frames"):
        open_frames(str(tmp_path / "cut.avi"), FrameLimits(max_frames=100, max_pixels=10**6))


def test_closing_a_window_while_it_decodes_waits_for_the_frame(tmp_path):
    """A session closed (or expired) while a prefetch thread decodes: the decoder must not lose
    its stream mid-frame (PyAV crashed the process here); the reader gets a clean error."""
    images = [blank(64, 48) for _ in range(120)]
    path = write_video(tmp_path / "clip.avi", images)
    for _ in range(20):
        window = open_window(path, lambda frame: frame, capacity=4)
        errors: list[BaseException] = []

        def read_all(window=window, errors=errors):
            try:
                for index in range(len(window)):
                    window.get(index)
            except FailedPrecondition as error:
                errors.append(error)

        reader = threading.Thread(target=read_all)
        reader.start()
        time.sleep(0.002)
        window.close()
        reader.join(timeout=30)
        assert not reader.is_alive()
        assert not errors or "closed" in str(errors[0])
    with pytest.raises(FailedPrecondition, match="closed"):
        window.get(0)


# ----- item 10: no server path in any reply ----------------------------------------------------
def test_frame_errors_name_no_server_path(server, root):
    import re

    folder = root / "broken"
    write_frame_folder(folder, red_frames(3))
    (folder / "00001.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    session = start_on(server, "broken")
    prompt_red(server, session.session_id)
    with pytest.raises(grpc.RpcError) as caught:
        propagate(server, session.session_id)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    details = caught.value.details()
    assert str(root) not in details and not re.search(PATH_PATTERN, details), details


def test_redaction_of_paths_in_messages():
    from sam3_grpc.server.interceptors import redact_paths

    assert redact_paths("cannot decode /tmp/x/upload-1.mp4 at 3") == (
        "cannot decode <server path> at 3"
    )
    assert redact_paths("[Errno 2] No such file: '/srv/media/a.jpg'") == (
        "[Errno 2] No such file: '<server path>'"
    )
    assert redact_paths("x_max/y_max are exclusive; 1/4 of the frame") == (
        "x_max/y_max are exclusive; 1/4 of the frame"
    )
