"""The one frame source (media/frames.py): frame-accurate random access in every container the
server accepts, decoding bounded by the key-frame spacing, and no trust in headers.

Clips are written with PyAV (H.264, VP9, MPEG-4 Part 2, FFV1, MJPEG) with a key frame every few
frames, so every read that is not sequential really seeks. Each frame carries its index (a bar
whose brightness and a square whose position change with it), so a frame read at the wrong
position is caught even when the decoder is deterministic."""

from __future__ import annotations

import struct

import av
import numpy as np
import pytest
from helpers import write_frame_folder

from sam3_grpc.errors import InvalidArgument
from sam3_grpc.media import frames as frames_module
from sam3_grpc.media.frames import FrameLimits, FrameWindow, open_frames

LIMITS = FrameLimits(max_frames=10_000, max_pixels=10**6)
WIDTH, HEIGHT = 96, 64


def frame_image(index: int) -> np.ndarray:
    """A frame that says which it is, robust to lossy coding."""
    rng = np.random.default_rng(index)
    image = (rng.random((HEIGHT, WIDTH, 3)) * 40 + 60).astype(np.uint8)
    image[:, :8] = (index * 37) % 200 + 30  # a bar whose brightness encodes the index
    x = 10 + (index * 3) % (WIDTH - 30)
    y = 8 + (index * 5) % (HEIGHT - 24)
    image[y : y + 16, x : x + 16] = (230, 40, 40)
    return image


def write_clip(path, codec: str, count: int, gop: int, **options) -> str:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p" if codec != "mjpeg" else "yuvj420p"
        stream.gop_size = gop
        stream.options = {k: str(v) for k, v in options.items()}
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(frame_image(index), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


# (extension, codec, encoder options): B-frames in H.264 make decode order differ from display
# order; VP9 has hidden alt-ref frames; MJPEG is all key frames.
CONTAINERS = {
    "mp4 (H.264, B-frames)": (".mp4", "libx264", {"bf": 2, "preset": "ultrafast"}),
    "mkv (MPEG-4 Part 2)": (".mkv", "mpeg4", {}),
    "webm (VP9)": (".webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": 8}),
    "avi (MJPEG)": (".avi", "mjpeg", {}),
    "avi (FFV1)": (".avi", "ffv1", {}),
}
COUNT, GOP = 40, 8


@pytest.fixture(scope="module", params=[*CONTAINERS, "folder (JPEG)"])
def clip(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("clips")
    if request.param == "folder (JPEG)":
        return write_frame_folder(directory / "frames", [frame_image(i) for i in range(COUNT)])
    extension, codec, options = CONTAINERS[request.param]
    return write_clip(directory / f"clip{extension}", codec, COUNT, GOP, **options)


def nearest_source_frame(frame: np.ndarray) -> int:
    errors = [np.mean((frame.astype(float) - frame_image(i)) ** 2) for i in range(COUNT)]
    return int(np.argmin(errors))


def test_seeking_to_frame_k_gives_frame_k_as_a_sequential_read_does(clip):
    sequential = open_frames(clip, LIMITS)
    try:
        assert sequential.info.frame_count == COUNT
        assert (sequential.info.width, sequential.info.height) == (WIDTH, HEIGHT)
        in_order = [sequential.read(i) for i in range(COUNT)]
    finally:
        sequential.close()
    # Each of them is the frame written at that position.
    assert [nearest_source_frame(f) for f in in_order] == list(range(COUNT))
    # Fresh sources, read at k directly (a seek), in an order that jumps back and forth.
    for k in (COUNT - 1, 0, 17, GOP, GOP - 1, 2 * GOP + 3, 1, COUNT - 2):
        source = open_frames(clip, LIMITS)
        try:
            assert np.array_equal(source.read(k), in_order[k]), k
        finally:
            source.close()
    # One source jumping around: each read equal to the sequential one.
    source = open_frames(clip, LIMITS)
    try:
        for k in (30, 3, 39, 12, 11, 25, 0, 24, 39, 8):
            assert np.array_equal(source.read(k), in_order[k]), k
    finally:
        source.close()


@pytest.mark.parametrize("container", ["mp4 (H.264, B-frames)", "webm (VP9)"])
def test_random_access_decodes_one_group_of_pictures_not_the_whole_video(container, tmp_path):
    """A prompt on a late frame of a long video: the decoder seeks to the key frame before it
    and decodes forward, never from the start."""
    extension, codec, options = CONTAINERS[container]
    gop = 25
    path = write_clip(tmp_path / f"long{extension}", codec, 600, gop, **options)
    source = open_frames(path, LIMITS)
    try:
        after_probe = source.decoded
        frame = source.read(590)
        assert nearest_frame_in(frame, range(560, 600)) == 590
        # The frames from the key frame before 590 (a few more for reordering delay).
        assert source.decoded - after_probe <= gop + 4
    finally:
        source.close()


def nearest_frame_in(frame: np.ndarray, candidates) -> int:
    return min(candidates, key=lambda i: np.mean((frame.astype(float) - frame_image(i)) ** 2))


def test_a_backward_walk_through_a_window_decodes_each_frame_about_once(tmp_path):
    extension, codec, options = CONTAINERS["mp4 (H.264, B-frames)"]
    path = write_clip(tmp_path / f"clip{extension}", codec, 64, 8, **options)
    window = FrameWindow(open_frames(path, LIMITS), lambda frame: frame, capacity=16)
    try:
        probe = window.source.decoded
        walked = [window.get(k) for k in range(63, -1, -1)]
        assert [nearest_frame_in(f, range(64)) for f in walked] == list(range(63, -1, -1))
        # Backward, each seek decodes its group forward and the window keeps what it passed:
        # about one decode per frame, not a group per frame (64 * 8 / 2 on average).
        assert window.source.decoded - probe <= 64 + 2 * 8
    finally:
        window.close()


def avi_holding_3000_frames_declaring(declared: int, tmp_path) -> str:
    """An FFV1 AVI of 3,000 tiny frames whose headers claim `declared` frames ('avih'
    dwTotalFrames and 'strh' dwLength)."""
    with av.open(str(tmp_path / "real.avi"), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for index in range(3000):
            image = np.full((24, 32, 3), index % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray((tmp_path / "real.avi").read_bytes())
    avih = data.find(b"avih") + 8
    strh = data.find(b"strh") + 8
    struct.pack_into("<I", data, avih + 16, declared)
    struct.pack_into("<I", data, strh + 32, declared)
    (tmp_path / "lying.avi").write_bytes(bytes(data))
    return str(tmp_path / "lying.avi")


def test_a_header_that_under_declares_its_frames_is_not_trusted(tmp_path, monkeypatch):
    path = avi_holding_3000_frames_declaring(5, tmp_path)
    probe_says = av.open(path)
    try:
        assert probe_says.streams.video[0].frames == 5  # the lie, as FFmpeg reports it
    finally:
        probe_says.close()
    decoded = []
    real_next_frame = frames_module.ContainerFrames._next_frame

    def counting(self):
        frame = real_next_frame(self)
        if frame is not None:
            decoded.append(frame.pts)
        return frame

    monkeypatch.setattr(frames_module.ContainerFrames, "_next_frame", counting)
    # Past --max-frames: refused while demuxing, before a single frame is decoded.
    with pytest.raises(InvalidArgument, match="more than 100 frames"):
        open_frames(path, FrameLimits(max_frames=100, max_pixels=10**6))
    assert decoded == []
    # Within the limit: the frames are counted from the stream, and opening decodes only the
    # first frame and the last group of pictures, not 3,000 frames.
    source = open_frames(path, FrameLimits(max_frames=5000, max_pixels=10**6))
    try:
        assert source.info.frame_count == 3000
        last_group = 3000 - source.key_frames[-1]
        assert last_group <= 50 and len(decoded) <= 1 + last_group
        assert source.read(2999)[0, 0, 0] == pytest.approx(2999 % 256, abs=3)
    finally:
        source.close()


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_pixels_are_those_of_sams_own_video_loader(container, tmp_path):
    """sam3's MP4 loader reads with OpenCV (cv2.VideoCapture, BGR to RGB): the frame source
    gives the very same pixels, so frames reach the model as in Meta's pipeline."""
    import cv2

    extension, codec, options = CONTAINERS[container]
    path = write_clip(tmp_path / f"clip{extension}", codec, COUNT, GOP, **options)
    capture = cv2.VideoCapture(path)
    theirs = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        theirs.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    source = open_frames(path, LIMITS)
    try:
        assert source.info.frame_count == len(theirs) == COUNT
        for index in (*range(COUNT), 5, 31, 0):  # sequentially, then by seeking
            assert np.array_equal(source.read(index), theirs[index]), index
    finally:
        source.close()
