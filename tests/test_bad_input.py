"""Every malformed request gets its precise status code and a message naming the problem."""

from __future__ import annotations

import io
import math
import os
import struct
import zlib

import grpc
import pytest
from helpers import RED, blank, draw_rect, encode

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares a huge canvas (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


IMAGE = blank(100, 80)
draw_rect(IMAGE, 10, 10, 30, 30, RED)
GOOD = encode(IMAGE)


def box(x0, y0, x1, y1, label=common_pb2.PROMPT_LABEL_POSITIVE):
    return common_pb2.Prompt(
        boxes=[
            common_pb2.LabeledBox(
                box=common_pb2.Box(x_min=x0, y_min=y0, x_max=x1, y_max=y1), label=label
            )
        ]
    )


def point(x, y):
    return common_pb2.Prompt(points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=x, y=y))])


TEXT = common_pb2.Prompt(text="red")

CASES = {
    "no prompts": (
        pb.SegmentImageRequest(image=common_pb2.Image(content=GOOD)),
        INVALID,
        "at least one prompt",
    ),
    "too many prompts": (
        pb.SegmentImageRequest(image=common_pb2.Image(content=GOOD), prompts=[TEXT] * 17),
        INVALID,
        "at most 16",
    ),
    "empty prompt": (
        pb.SegmentImageRequest(image=common_pb2.Image(content=GOOD), prompts=[common_pb2.Prompt()]),
        INVALID,
        "prompts[0] is empty",
    ),
    "whitespace text": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD), prompts=[common_pb2.Prompt(text="   ")]
        ),
        INVALID,
        "is empty",
    ),
    "text too long": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD), prompts=[common_pb2.Prompt(text="r" * 300)]
        ),
        INVALID,
        "at most 256",
    ),
    "NaN box": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD), prompts=[box(math.nan, 0, 10, 10)]
        ),
        INVALID,
        "finite",
    ),
    "infinite point": (
        pb.SegmentImageRequest(image=common_pb2.Image(content=GOOD), prompts=[point(math.inf, 3)]),
        INVALID,
        "finite",
    ),
    "inverted box": (
        pb.SegmentImageRequest(image=common_pb2.Image(content=GOOD), prompts=[box(20, 20, 10, 30)]),
        INVALID,
        "inverted",
    ),
    "box outside image": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD), prompts=[box(200, 200, 300, 300)]
        ),
        INVALID,
        "outside the 100x80 image",
    ),
    "point outside image": (
        pb.SegmentImageRequest(image=common_pb2.Image(content=GOOD), prompts=[point(100, 5)]),
        INVALID,
        "outside the 100x80 image",
    ),
    "missing image": (pb.SegmentImageRequest(prompts=[TEXT]), INVALID, "image is missing"),
    "empty bytes": (
        pb.SegmentImageRequest(image=common_pb2.Image(content=b""), prompts=[TEXT]),
        INVALID,
        "empty",
    ),
    "garbage bytes": (
        pb.SegmentImageRequest(image=common_pb2.Image(content=b"\x00garbage" * 50), prompts=[TEXT]),
        INVALID,
        "not a readable",
    ),
    "truncated png": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD[: len(GOOD) // 2]), prompts=[TEXT]
        ),
        INVALID,
        "truncated or corrupt",
    ),
    "decompression bomb": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=png_declaring(30000, 30000)), prompts=[TEXT]
        ),
        INVALID,
        "limit of 50000000 pixels",
    ),
    "bomb under Pillow's own limit": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=png_declaring(9000, 9000)), prompts=[TEXT]
        ),
        INVALID,
        "9000x9000",
    ),
    "GIF not accepted": (None, INVALID, "not supported"),
    "score threshold above 1": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD),
            prompts=[TEXT],
            output=common_pb2.OutputOptions(score_threshold=1.5),
        ),
        INVALID,
        "score_threshold",
    ),
    "negative polygon tolerance": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD),
            prompts=[TEXT],
            output=common_pb2.OutputOptions(polygon_tolerance_pixels=-1),
        ),
        INVALID,
        "polygon_tolerance_pixels",
    ),
    "too many detections": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD),
            prompts=[TEXT],
            output=common_pb2.OutputOptions(max_detections=1000),
        ),
        INVALID,
        "at most 100",
    ),
    "unknown mask encoding": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD),
            prompts=[TEXT],
            output=common_pb2.OutputOptions(mask_encoding=42),
        ),
        INVALID,
        "mask_encoding",
    ),
    "unknown colour (engine)": (
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=GOOD), prompts=[common_pb2.Prompt(text="a dog")]
        ),
        INVALID,
        "red",
    ),
    "path outside media root": (
        pb.SegmentImageRequest(image=common_pb2.Image(path="../../etc/passwd"), prompts=[TEXT]),
        grpc.StatusCode.NOT_FOUND,
        "media roots",
    ),
    "missing path": (
        pb.SegmentImageRequest(image=common_pb2.Image(path="nope.png"), prompts=[TEXT]),
        grpc.StatusCode.NOT_FOUND,
        "media roots",
    ),
}


def gif_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_request_gets_precise_code(synthetic_server, name):
    request, code, fragment = CASES[name]
    if request is None:
        request = pb.SegmentImageRequest(
            image=common_pb2.Image(content=gif_bytes()), prompts=[TEXT]
        )
    with pytest.raises(grpc.RpcError) as caught:
        synthetic_server.segmentation.SegmentImage(request, timeout=30)
    assert caught.value.code() == code, caught.value.details()
    assert fragment in caught.value.details()
    assert "Traceback" not in caught.value.details()


def test_missing_and_outside_paths_are_indistinguishable(synthetic_server, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(GOOD)
    replies = []
    for path in (str(secret), "does-not-exist.png", "../" * 10 + str(secret)):
        with pytest.raises(grpc.RpcError) as caught:
            synthetic_server.segmentation.SegmentImage(
                pb.SegmentImageRequest(image=common_pb2.Image(path=path), prompts=[TEXT])
            )
        replies.append((caught.value.code(), caught.value.details()))
        assert str(tmp_path) not in caught.value.details()
    assert len(set(replies)) == 1


def test_symlink_escaping_the_media_root_is_refused(synthetic_server, media_root, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(GOOD)
    link = os.path.join(media_root, "escape.png")
    os.symlink(outside, link)
    with pytest.raises(grpc.RpcError) as caught:
        synthetic_server.segmentation.SegmentImage(
            pb.SegmentImageRequest(image=common_pb2.Image(path="escape.png"), prompts=[TEXT])
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_paths_are_refused_without_media_roots(start_server):
    server = start_server(SyntheticEngine())
    with pytest.raises(grpc.RpcError) as caught:
        server.segmentation.SegmentImage(
            pb.SegmentImageRequest(image=common_pb2.Image(path="a.png"), prompts=[TEXT])
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--media-root" in caught.value.details()


def test_image_and_message_size_limits(start_server):
    server = start_server(
        SyntheticEngine(),
        max_image_bytes=1000,
        max_receive_message_bytes=64 * 1024,
        max_image_pixels=5000,
    )
    big = encode(blank(40, 40) + 1, ".bmp")  # 4,854 bytes
    with pytest.raises(grpc.RpcError) as caught:
        server.segmentation.SegmentImage(
            pb.SegmentImageRequest(image=common_pb2.Image(content=big), prompts=[TEXT])
        )
    assert caught.value.code() == INVALID and "at most 1000 bytes" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        server.segmentation.SegmentImage(
            pb.SegmentImageRequest(image=common_pb2.Image(content=b"x" * 100_000), prompts=[TEXT])
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as caught:
        server.segmentation.SegmentImage(
            pb.SegmentImageRequest(
                image=common_pb2.Image(content=encode(blank(100, 80))), prompts=[TEXT]
            )
        )
    assert caught.value.code() == INVALID and "at most 5000 pixels" in caught.value.details()
