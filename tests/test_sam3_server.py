"""The real sam3 code path through a real server, with the tiny random-weight preset.

The tiny preset's masks are meaningless, so these tests check that results are well formed
(sizes, ranges, decodability, frame bookkeeping), not where the masks land: the synthetic
engine's tests do that.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
from helpers import BLUE, RED, blank, disc_clip, draw_disc, draw_rect, encode, mask_of, write_video
from test_video import upload_requests

from sam3_grpc.v1 import common_pb2, status_service_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as pb
from sam3_grpc.v1 import video_service_pb2 as video_pb

pytestmark = pytest.mark.sam3


@pytest.fixture(scope="module")
def tiny_server():
    from conftest import launch

    from sam3_grpc.engines.sam3 import Sam3Engine

    class CountingEngine(Sam3Engine):
        """Counts image-encoder runs so the test can see cache hits skip them."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.calls = collections.Counter()

        def encode_image(self, image):
            self.calls["encode_image"] += 1
            return super().encode_image(image)

    server = launch(CountingEngine(preset="sam3-tiny", device="cpu"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def photo():
    image = blank(320, 240)
    image[:] = (90, 120, 60)
    draw_rect(image, 30, 40, 130, 160, RED)
    draw_disc(image, 230, 130, 50, BLUE)
    return image


def assert_well_formed(detection, width, height):
    assert 0.0 <= detection.score <= 1.0
    assert (detection.mask.width, detection.mask.height) == (width, height)
    mask = mask_of(detection)
    assert mask.shape == (height, width)
    assert detection.area_pixels == mask.sum()
    box = detection.box
    assert 0 <= box.x_min <= box.x_max <= width and 0 <= box.y_min <= box.y_max <= height
    if detection.area_pixels:
        ys, xs = np.nonzero(mask)
        assert (box.x_min, box.y_min, box.x_max, box.y_max) == (
            xs.min(),
            ys.min(),
            xs.max() + 1,
            ys.max() + 1,
        )


def test_status_reports_the_tiny_preset(tiny_server):
    status = tiny_server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest())
    assert status.model_name == "sam3-tiny"
    assert status.model_kind == status_service_pb2.MODEL_KIND_TINY
    assert status.device == "cpu" and status.ready
    assert "random" in status.weights_source and "meaningless" in status.weights_source
    assert status.load_duration.ToNanoseconds() > 0
    assert status.warmup_duration.ToNanoseconds() > 0


def test_segment_image_several_prompts_well_formed(tiny_server, photo):
    prompts = [
        common_pb2.Prompt(text="a red square"),
        common_pb2.Prompt(
            boxes=[
                common_pb2.LabeledBox(box=common_pb2.Box(x_min=30, y_min=40, x_max=130, y_max=160))
            ]
        ),
        common_pb2.Prompt(
            text="a disc",
            boxes=[
                common_pb2.LabeledBox(box=common_pb2.Box(x_min=180, y_min=80, x_max=280, y_max=180))
            ],
        ),
        common_pb2.Prompt(points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=80, y=100))]),
    ]
    reply = tiny_server.segmentation.SegmentImage(
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=encode(photo, ".jpg", quality=90)),
            prompts=prompts,
            output=common_pb2.OutputOptions(score_threshold=0.0, include_polygons=True),
        ),
        timeout=120,
    )
    assert (reply.width, reply.height) == (320, 240)
    assert [r.prompt_index for r in reply.results] == [0, 1, 2, 3]
    total = 0
    for result in reply.results:
        scores = [d.score for d in result.detections]
        assert scores == sorted(scores, reverse=True)
        for detection in result.detections:
            assert_well_formed(detection, 320, 240)
            total += 1
    assert total > 0, "with threshold 0 the tiny model must return some candidates"
    # A click yields one object.
    assert len(reply.results[3].detections) == 1


def test_png_masks_and_unsupported_combination(tiny_server, photo):
    reply = tiny_server.segmentation.SegmentImage(
        pb.SegmentImageRequest(
            image=common_pb2.Image(content=encode(photo)),
            prompts=[
                common_pb2.Prompt(
                    points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=230, y=130))]
                )
            ],
            output=common_pb2.OutputOptions(
                mask_encoding=common_pb2.MASK_ENCODING_PNG, score_threshold=0.0
            ),
        ),
        timeout=120,
    )
    (detection,) = reply.results[0].detections
    assert detection.mask.WhichOneof("data") == "png"
    assert_well_formed(detection, 320, 240)
    with pytest.raises(grpc.RpcError) as caught:
        tiny_server.segmentation.SegmentImage(
            pb.SegmentImageRequest(
                image=common_pb2.Image(content=encode(photo)),
                prompts=[
                    common_pb2.Prompt(
                        text="a disc",
                        points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=230, y=130))],
                    )
                ],
            ),
            timeout=120,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "supported" in caught.value.details()


def test_second_request_on_the_same_image_skips_the_encoder(tiny_server):
    image = blank(200, 150)
    draw_rect(image, 20, 20, 90, 90, RED)
    data = encode(image)
    engine = tiny_server.engine

    def segment(text):
        return tiny_server.segmentation.SegmentImage(
            pb.SegmentImageRequest(
                image=common_pb2.Image(content=data), prompts=[common_pb2.Prompt(text=text)]
            ),
            timeout=120,
        )

    before = engine.calls["encode_image"]
    first = segment("a square")
    second = segment("a red thing")
    assert not first.cache_hit and second.cache_hit
    assert engine.calls["encode_image"] == before + 1
    status = tiny_server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest())
    assert status.cache.hits >= 1 and status.cache.bytes > 0


def test_video_upload_prompt_propagate_close(tiny_server, tmp_path):
    images, _ = disc_clip(frames=5, width=160, height=120)
    with open(write_video(tmp_path / "clip.avi", images), "rb") as handle:
        data = handle.read()
    video = tiny_server.video
    session = video.UploadVideo(upload_requests(data), timeout=120).session
    assert session.video.frame_count == 5
    prompted = video.AddPrompt(
        video_pb.AddPromptRequest(
            session_id=session.session_id,
            frame_index=0,
            prompt=common_pb2.Prompt(
                points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=22, y=60))]
            ),
        ),
        timeout=120,
    )
    assert prompted.frame.frame_index == 0 and len(prompted.object_ids) == 1
    for direction, start, order in (
        (video_pb.PROPAGATION_DIRECTION_FORWARD, 0, [0, 1, 2, 3, 4]),
        (video_pb.PROPAGATION_DIRECTION_BACKWARD, 4, [4, 3, 2, 1, 0]),
        (video_pb.PROPAGATION_DIRECTION_BOTH, 2, [2, 3, 4, 1, 0]),
    ):
        replies = list(
            video.Propagate(
                video_pb.PropagateRequest(
                    session_id=session.session_id, direction=direction, start_frame_index=start
                ),
                timeout=300,
            )
        )
        assert [r.frame.frame_index for r in replies] == order
        assert [r.frames_done for r in replies] == list(range(1, 6))
        for reply in replies:
            for obj in reply.frame.objects:
                assert_well_formed(obj, 160, 120)
    got = video.GetSession(video_pb.GetSessionRequest(session_id=session.session_id)).session
    assert got.memory_bytes > 0
    status = tiny_server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest())
    assert status.active_sessions == 1 and status.session_memory_bytes == got.memory_bytes
    assert video.CloseSession(video_pb.CloseSessionRequest(session_id=session.session_id)).closed
    status = tiny_server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest())
    assert status.active_sessions == 0 and status.session_memory_bytes == 0


def test_missing_checkpoint_stops_the_server_with_the_fix(tmp_path):
    env = dict(
        os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", SAM3_GRPC_CHECKPOINT=""
    )
    env.pop("SAM3_GRPC_CHECKPOINT")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam3_grpc.cli",
            "serve",
            "--model",
            "sam3",
            "--device",
            "cpu",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode != 0
    assert "facebook/sam3" in result.stderr and "--checkpoint" in result.stderr
    assert "sam3-tiny" in result.stderr
    assert "Traceback" not in result.stderr
