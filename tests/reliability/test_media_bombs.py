"""Small files that declare huge images or videos are refused from their headers.

Every bomb is refused with INVALID_ARGUMENT before the engine sees it, through every way in (image
bytes, image path, video upload, video path), uploads leave no file behind, and the process's
resident memory stays bounded while all of that happens.
"""

from __future__ import annotations

import os
import struct
import threading

import grpc
import psutil
import pytest
from helpers import RED, blank, disc_clip, draw_rect, encode, write_video
from test_bad_input import png_declaring
from test_video import upload_files, upload_requests

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as seg_pb
from sam3_grpc.v1 import video_service_pb2 as pb

MiB = 1 << 20
RSS_GROWTH_LIMIT = 200 * MiB
RSS_PEAK_LIMIT = 300 * MiB


# ----- crafted files -------------------------------------------------------------------------
def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(blank(8, 8), ".bmp"))
    struct.pack_into("<ii", data, 18, width, height)  # BITMAPINFOHEADER biWidth, biHeight
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(blank(16, 16), ".jpg", quality=90))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _avi(codec: str) -> bytes:
    images, _ = disc_clip(frames=5, width=64, height=48, radius=8)
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = write_video(os.path.join(scratch, "v.avi"), images, fourcc=codec)
        with open(path, "rb") as handle:
            return handle.read()


def avi_declaring(
    *,
    width: int | None = None,
    height: int | None = None,
    frames: int | None = None,
    codec: str = "FFV1",
    patch_jpeg: bool = False,
) -> bytes:
    """A valid tiny AVI whose headers are rewritten: frame size in 'avih' (dwWidth, dwHeight),
    'strh' (rcFrame) and 'strf' (biWidth, biHeight), and/or the frame count in 'avih'
    (dwTotalFrames) and 'strh' (dwLength). With patch_jpeg, every MJPEG frame's SOF too."""
    data = bytearray(_avi(codec))
    avih = data.find(b"avih") + 8
    strh = data.find(b"strh") + 8
    strf = data.find(b"strf") + 8
    if frames is not None:
        struct.pack_into("<I", data, avih + 16, frames)
        struct.pack_into("<I", data, strh + 32, frames)
    if width is not None:
        struct.pack_into("<II", data, avih + 32, width, height)
        struct.pack_into("<hhhh", data, strh + 48, 0, 0, min(width, 32767), min(height, 32767))
        struct.pack_into("<ii", data, strf + 4, width, height)
    if patch_jpeg:
        at = 0
        while (at := data.find(b"\xff\xc0", at)) >= 0:
            struct.pack_into(">HH", data, at + 5, height, width)
            at += 2
    return bytes(data)


def mp4_bytes() -> bytes:
    images, _ = disc_clip(frames=6, width=64, height=48, radius=8)
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = write_video(os.path.join(scratch, "v.mp4"), images, fourcc="mp4v")
        with open(path, "rb") as handle:
            return handle.read()


IMAGE_BOMBS = {
    "png 30000x30000": (png_declaring(30000, 30000), "pixels"),
    "png 2^31-1 square": (png_declaring(2**31 - 1, 2**31 - 1), ""),
    "png 9000x9000 (under Pillow's own limit)": (png_declaring(9000, 9000), "9000x9000"),
    "bmp 30000x30000": (bmp_declaring(30000, 30000), ""),
    "bmp negative height 30000": (bmp_declaring(30000, -30000), ""),
    "jpeg 65000x65000": (jpeg_declaring(65000, 65000), ""),
    "jpeg 10000x6000": (jpeg_declaring(10000, 6000), "10000x6000"),
    "png truncated in IHDR": (png_declaring(64, 64)[:20], ""),
    "png header only": (b"\x89PNG\r\n\x1a\n", ""),
}
VIDEO_BOMBS = {
    "ffv1 16000x16000 in the headers": (avi_declaring(width=16000, height=16000), "pixels"),
    "ffv1 8000x8000 in the headers": (avi_declaring(width=8000, height=8000), "pixels"),
    "mjpeg 8000x8000 in headers and frames": (
        avi_declaring(width=8000, height=8000, codec="MJPG", patch_jpeg=True),
        "pixels",
    ),
    "mjpeg 30000x30000 in headers and frames": (
        avi_declaring(width=30000, height=30000, codec="MJPG", patch_jpeg=True),
        "",
    ),
    "avi cut inside the RIFF header": (_avi("FFV1")[:100], ""),
    "avi cut after 1 KiB": (_avi("FFV1")[:1024], ""),
    "mp4 without its index (second half missing)": (mp4_bytes()[: len(mp4_bytes()) // 2], ""),
    "random bytes named .avi": (os.urandom(4096), ""),
}


@pytest.fixture(scope="module")
def bombed(tmp_path_factory):
    from conftest import launch

    root = tmp_path_factory.mktemp("bombs")
    for index, (data, _) in enumerate(IMAGE_BOMBS.values()):
        (root / f"image{index}.png").write_bytes(data)
    for index, (data, _) in enumerate(VIDEO_BOMBS.values()):
        (root / f"video{index}.avi").write_bytes(data)
    engine = SyntheticEngine()
    server = launch(engine, media_roots=(str(root),))
    yield server, engine
    server.stop()


class PeakRss:
    """Samples this process's resident memory (the server runs in it) in the background."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.end = self.process.memory_info().rss


def _refused(call, fragment: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert fragment in error.details(), error.details()


def test_every_bomb_is_refused_before_the_engine_with_bounded_memory(bombed):
    server, engine = bombed
    engine_calls = dict(engine.calls)
    with PeakRss() as rss:
        for _ in range(3):  # repeated: memory must not ratchet up either
            for index, (data, fragment) in enumerate(IMAGE_BOMBS.values()):
                for image in (
                    common_pb2.Image(content=data),
                    common_pb2.Image(path=f"image{index}.png"),
                ):
                    _refused(
                        lambda image=image: server.segmentation.SegmentImage(
                            seg_pb.SegmentImageRequest(
                                image=image, prompts=[common_pb2.Prompt(text="red")]
                            ),
                            timeout=30,
                        ),
                        fragment,
                    )
            for index, (name, (data, fragment)) in enumerate(VIDEO_BOMBS.items()):
                _refused(
                    lambda data=data: server.video.UploadVideo(
                        upload_requests(data, filename="bomb.avi"), timeout=30
                    ),
                    fragment,
                )
                assert upload_files(server) == [], name
                _refused(
                    lambda index=index: server.video.StartSession(
                        pb.StartSessionRequest(video_path=f"video{index}.avi"), timeout=30
                    ),
                    fragment,
                )
    assert dict(engine.calls) == engine_calls  # the engine never saw any of them
    assert server.video.ListSessions(pb.ListSessionsRequest()).sessions == []
    assert rss.end - rss.start < RSS_GROWTH_LIMIT, (rss.start >> 20, rss.end >> 20)
    assert rss.peak - rss.start < RSS_PEAK_LIMIT, (rss.start >> 20, rss.peak >> 20)
    # And the server still serves real work.
    image = blank(32, 32)
    draw_rect(image, 2, 2, 9, 9, RED)
    reply = server.segmentation.SegmentImage(
        seg_pb.SegmentImageRequest(
            image=common_pb2.Image(content=encode(image)), prompts=[common_pb2.Prompt(text="red")]
        ),
        timeout=30,
    )
    assert len(reply.results[0].detections) == 1


@pytest.mark.parametrize(
    "data",
    [avi_declaring(frames=5_000_000), avi_declaring(frames=2**32 - 1, codec="MJPG")],
    ids=["ffv1 declaring 5 million frames", "mjpeg declaring 2^32-1 frames"],
)
def test_a_declared_frame_count_is_never_trusted(synthetic_server, data):
    """The frames are counted from the stream, not read from the header: a header claiming
    millions of frames neither refuses a 5-frame video nor makes the server expect more."""
    from test_video import upload_requests

    reply = synthetic_server.video.UploadVideo(upload_requests(data, filename="v.avi"), timeout=30)
    assert reply.session.video.frame_count == 5  # what the file holds
    synthetic_server.video.CloseSession(
        pb.CloseSessionRequest(session_id=reply.session.session_id), timeout=10
    )
