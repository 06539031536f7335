"""SegmentImage through a real server with the synthetic engine: the right pixels come back."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from helpers import BLUE, GREEN, RED, blank, draw_disc, draw_rect, encode, iou, mask_of
from pycocotools import mask as coco_mask

from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as pb


def request(image_bytes: bytes, *prompts, **output) -> pb.SegmentImageRequest:
    return pb.SegmentImageRequest(
        image=common_pb2.Image(content=image_bytes),
        prompts=[
            p if isinstance(p, common_pb2.Prompt) else common_pb2.Prompt(text=p) for p in prompts
        ],
        output=common_pb2.OutputOptions(**output),
    )


@pytest.fixture(scope="module")
def scene():
    """A red rectangle, a smaller red square, and a blue disc on black."""
    image = blank(200, 150)
    big = draw_rect(image, 10, 20, 70, 80, RED)
    small = draw_rect(image, 150, 10, 170, 30, RED)
    disc = draw_disc(image, 120, 100, 25, BLUE)
    return image, {"big": big, "small": small, "disc": disc}


def test_rle_masks_equal_drawn_shapes_pixel_for_pixel(synthetic_server, scene):
    image, masks = scene
    reply = synthetic_server.segmentation.SegmentImage(request(encode(image), "red"))
    assert (reply.width, reply.height) == (200, 150)
    detections = reply.results[0].detections
    assert len(detections) == 2
    by_area = sorted(detections, key=lambda d: -d.area_pixels)
    np.testing.assert_array_equal(mask_of(by_area[0]), masks["big"])
    np.testing.assert_array_equal(mask_of(by_area[1]), masks["small"])
    big = by_area[0]
    assert big.area_pixels == 60 * 60
    assert (big.box.x_min, big.box.y_min, big.box.x_max, big.box.y_max) == (10, 20, 70, 80)
    assert big.mask.width == 200 and big.mask.height == 150
    assert 0.0 <= big.score <= 1.0


def test_rle_is_exactly_what_pycocotools_produces(synthetic_server, scene):
    image, masks = scene
    reply = synthetic_server.segmentation.SegmentImage(request(encode(image), "blue"))
    (detection,) = reply.results[0].detections
    expected = coco_mask.encode(np.asfortranarray(masks["disc"].astype(np.uint8)))
    assert detection.mask.rle_counts == expected["counts"].decode()
    assert detection.area_pixels == int(coco_mask.area(expected))


def test_png_masks_equal_drawn_shapes(synthetic_server, scene):
    image, masks = scene
    reply = synthetic_server.segmentation.SegmentImage(
        request(encode(image), "blue", mask_encoding=common_pb2.MASK_ENCODING_PNG)
    )
    (detection,) = reply.results[0].detections
    assert detection.mask.WhichOneof("data") == "png"
    np.testing.assert_array_equal(mask_of(detection), masks["disc"])


def test_mask_encoding_none_still_returns_boxes_and_areas(synthetic_server, scene):
    image, masks = scene
    reply = synthetic_server.segmentation.SegmentImage(
        request(encode(image), "blue", mask_encoding=common_pb2.MASK_ENCODING_NONE)
    )
    (detection,) = reply.results[0].detections
    assert not detection.HasField("mask")
    assert detection.area_pixels == masks["disc"].sum()


def test_several_prompts_in_one_request_share_one_encoding(synthetic_server, scene):
    image, masks = scene
    engine = synthetic_server.engine
    before = engine.calls["encode_image"]
    reply = synthetic_server.segmentation.SegmentImage(
        request(encode(image, ".jpg", quality=95), "red", "blue", "green")
    )
    assert engine.calls["encode_image"] == before + 1
    assert [r.prompt_index for r in reply.results] == [0, 1, 2]
    assert len(reply.results[0].detections) == 2
    (disc,) = reply.results[1].detections
    assert iou(mask_of(disc), masks["disc"]) >= 0.95  # JPEG smears edges
    assert len(reply.results[2].detections) == 0


def test_second_request_on_same_image_hits_the_cache(synthetic_server):
    image = blank(64, 48)
    draw_rect(image, 5, 5, 20, 20, GREEN)
    data = encode(image)
    engine = synthetic_server.engine
    first = synthetic_server.segmentation.SegmentImage(request(data, "green"))
    encodes = engine.calls["encode_image"]
    second = synthetic_server.segmentation.SegmentImage(request(data, "green"))
    assert not first.cache_hit and second.cache_hit
    assert engine.calls["encode_image"] == encodes
    assert second.results == first.results


def test_box_and_point_prompts_select_the_region_under_them(synthetic_server, scene):
    image, masks = scene
    box_prompt = common_pb2.Prompt(
        boxes=[common_pb2.LabeledBox(box=common_pb2.Box(x_min=148, y_min=8, x_max=172, y_max=32))]
    )
    point_prompt = common_pb2.Prompt(
        points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=120, y=100))]
    )
    reply = synthetic_server.segmentation.SegmentImage(
        request(encode(image), box_prompt, point_prompt)
    )
    (by_box,) = reply.results[0].detections
    (by_point,) = reply.results[1].detections
    np.testing.assert_array_equal(mask_of(by_box), masks["small"])
    np.testing.assert_array_equal(mask_of(by_point), masks["disc"])


def test_min_area_and_max_detections_filter(synthetic_server, scene):
    image, _ = scene
    data = encode(image)
    reply = synthetic_server.segmentation.SegmentImage(request(data, "red", min_area_pixels=401))
    assert [d.area_pixels for d in reply.results[0].detections] == [3600]
    reply = synthetic_server.segmentation.SegmentImage(request(data, "red", max_detections=1))
    assert len(reply.results[0].detections) == 1
    reply = synthetic_server.segmentation.SegmentImage(request(data, "red", score_threshold=1.0))
    assert len(reply.results[0].detections) == 2  # synthetic scores are exactly 1.0


def test_polygons_trace_the_mask(synthetic_server, scene):
    image, masks = scene
    reply = synthetic_server.segmentation.SegmentImage(
        request(encode(image), "blue", include_polygons=True, polygon_tolerance_pixels=0.0)
    )
    (detection,) = reply.results[0].detections
    assert len(detection.polygons) == 1
    points = np.array([[p.x, p.y] for p in detection.polygons[0].points], np.int32)
    filled = np.zeros(masks["disc"].shape, np.uint8)
    cv2.fillPoly(filled, [points], 1)
    assert iou(filled.astype(bool), masks["disc"]) >= 0.97
    coarse = synthetic_server.segmentation.SegmentImage(
        request(encode(image), "blue", include_polygons=True, polygon_tolerance_pixels=5.0)
    )
    assert len(coarse.results[0].detections[0].polygons[0].points) < len(points)
    plain = synthetic_server.segmentation.SegmentImage(request(encode(image), "blue"))
    assert len(plain.results[0].detections[0].polygons) == 0


def test_image_by_server_path_inside_media_root(synthetic_server, media_root, scene):
    image, masks = scene
    os.makedirs(os.path.join(media_root, "images"), exist_ok=True)
    with open(os.path.join(media_root, "images", "scene.png"), "wb") as handle:
        handle.write(encode(image))
    reply = synthetic_server.segmentation.SegmentImage(
        pb.SegmentImageRequest(
            image=common_pb2.Image(path="images/scene.png"),
            prompts=[common_pb2.Prompt(text="blue")],
        )
    )
    np.testing.assert_array_equal(mask_of(reply.results[0].detections[0]), masks["disc"])
