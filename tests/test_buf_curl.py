"""The `buf curl` recipes of clients/grpcurl.md against a real server, through reflection only.

Skipped only when buf is not installed (`npm ci` at the repository root puts it in
node_modules/.bin).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest
from google.rpc import error_details_pb2
from helpers import RED, blank, draw_rect, encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUF = os.path.join(ROOT, "node_modules", ".bin", "buf")


@pytest.fixture(scope="module")
def buf() -> str:
    if not os.access(BUF, os.X_OK):
        pytest.skip("buf is not installed: run `npm ci` at the repository root")
    return BUF


def buf_curl(buf: str, url: str, *args: str, stdin: str | None = None, grpc: bool = True):
    protocol = ["--protocol", "grpc"] if grpc else []
    return subprocess.run(
        [buf, "curl", *protocol, *args, url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def unpadded_b64decode(value: str) -> bytes:
    return base64.b64decode(value + "=" * (-len(value) % 4))


def test_buf_curl_segments_an_image(buf, synthetic_server, tmp_path):
    image = blank(120, 90)
    rect = draw_rect(image, 10, 20, 50, 60, RED)
    image_path = tmp_path / "photo.png"
    image_path.write_bytes(encode(image))
    # The recipe: the request on standard input, the image base64-encoded into it.
    content = base64.b64encode(image_path.read_bytes()).decode()
    request = (
        f'{{"image": {{"content": "{content}"}}, "prompts": [{{"text": "red"}}],'
        ' "output": {"mask_encoding": "MASK_ENCODING_RLE", "min_area_pixels": 50}}'
    )
    url = f"http://{synthetic_server.target}/sam3_grpc.v1.SegmentationService/SegmentImage"

    done = buf_curl(buf, url, "-d", "@-", stdin=request)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert (reply["width"], reply["height"]) == (120, 90)
    [result] = reply["results"]
    [detection] = result["detections"]
    assert detection["box"] == {"xMin": 10, "yMin": 20, "xMax": 50, "yMax": 60}
    assert detection["areaPixels"] == str(int(rect.sum()))  # int64: a JSON string
    assert detection["mask"]["rleCounts"]

    # What the recipe says about --protocol: buf's default (Connect) cannot reach this server.
    connect = buf_curl(buf, url, "-d", "@-", stdin=request, grpc=False)
    assert connect.returncode != 0
    assert "failed to find service" in connect.stderr


def test_buf_curl_shows_the_error_reason(buf, synthetic_server):
    url = f"http://{synthetic_server.target}/sam3_grpc.v1.VideoService/GetSession"
    done = buf_curl(buf, url, "-d", '{"session_id": "nope"}')
    assert done.returncode == 5 << 3  # NOT_FOUND, shifted as buf curl documents
    error = json.loads(done.stderr)  # buf curl prints a failed call's status on stderr
    assert error["code"] == "not_found"
    [detail] = error["details"]
    assert detail["type"] == "google.rpc.ErrorInfo"
    info = error_details_pb2.ErrorInfo.FromString(unpadded_b64decode(detail["value"]))
    assert (info.reason, info.domain) == ("SESSION_NOT_FOUND", "sam3_grpc")
    # The grpcurl.md shortcut: the reason is readable text inside the value.
    assert b"SESSION_NOT_FOUND" in unpadded_b64decode(detail["value"])
