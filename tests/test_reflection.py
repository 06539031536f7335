"""Server reflection serves everything grpcurl needs (grpcurl is not installed here).

grpcurl lists services, fetches the file descriptors of each through reflection, resolves every
method's input and output types, builds the request from JSON and calls the method generically.
These tests do exactly that with a descriptor pool fed only by reflection: no generated stubs
and no .proto files are used to build or decode the messages.
"""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from helpers import BLUE, RED, blank, draw_disc, draw_rect, encode

EXPECTED_SERVICES = {
    "sam3_grpc.v1.SegmentationService",
    "sam3_grpc.v1.VideoService",
    "sam3_grpc.v1.StatusService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture(scope="module")
def reflected(synthetic_server):
    channel = grpc.insecure_channel(synthetic_server.target)
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)  # a fresh pool: nothing generated in it
    yield channel, database, pool
    channel.close()


def test_reflection_lists_every_service(reflected):
    _, database, _ = reflected
    assert set(database.get_services()) >= EXPECTED_SERVICES


@pytest.mark.parametrize("service_name", sorted(EXPECTED_SERVICES))
def test_every_method_and_message_type_resolves(reflected, service_name):
    _, _, pool = reflected
    service = pool.FindServiceByName(service_name)
    assert service.methods, service_name
    for method in service.methods:
        for message in (method.input_type, method.output_type):
            resolved = pool.FindMessageTypeByName(message.full_name)
            # A class can be built, so every nested field type was resolved as well.
            instance = message_factory.GetMessageClass(resolved)()
            assert instance.DESCRIPTOR.full_name == message.full_name
            for field in resolved.fields:
                if field.message_type is not None:
                    pool.FindMessageTypeByName(field.message_type.full_name)
                if field.enum_type is not None:
                    pool.FindEnumTypeByName(field.enum_type.full_name)


def test_video_service_methods_are_described(reflected):
    _, _, pool = reflected
    video = pool.FindServiceByName("sam3_grpc.v1.VideoService")
    methods = {m.name: m for m in video.methods}
    assert {"StartSession", "UploadVideo", "AddPrompt", "Propagate", "CloseSession"} <= set(methods)
    assert methods["UploadVideo"].client_streaming and not methods["UploadVideo"].server_streaming
    assert methods["Propagate"].server_streaming and not methods["Propagate"].client_streaming
    session = pool.FindMessageTypeByName("sam3_grpc.v1.Session")
    assert session.fields_by_name["create_time"].message_type.full_name == (
        "google.protobuf.Timestamp"
    )


def _generic_call(channel, pool, method_path: str, request_json: str) -> dict:
    """What `grpcurl -d '<json>' host:port <method_path>` does."""
    service_name, method_name = method_path.rsplit("/", 1)
    method = pool.FindServiceByName(service_name).methods_by_name[method_name]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = json_format.Parse(request_json, request_class())
    call = channel.unary_unary(
        f"/{service_name}/{method_name}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    response = call(request, timeout=10)
    return json_format.MessageToDict(response, preserving_proto_field_name=True)


def test_segment_image_like_grpcurl(reflected):
    channel, _, pool = reflected
    image = blank(160, 120)
    rect = draw_rect(image, 10, 20, 50, 60, RED)
    draw_disc(image, 110, 70, 20, BLUE)
    # The JSON grpcurl reads from `-d @`: bytes fields are base64.
    request_json = json.dumps(
        {
            "image": {"content": base64.b64encode(encode(image)).decode("ascii")},
            "prompts": [{"text": "red"}, {"text": "blue"}],
            "output": {"mask_encoding": "MASK_ENCODING_RLE"},
        }
    )
    reply = _generic_call(
        channel, pool, "sam3_grpc.v1.SegmentationService/SegmentImage", request_json
    )
    assert (reply["width"], reply["height"]) == (160, 120)
    red, blue = reply["results"]
    [detection] = red["detections"]
    assert detection["box"] == {"x_min": 10.0, "y_min": 20.0, "x_max": 50.0, "y_max": 60.0}
    assert int(detection["area_pixels"]) == int(rect.sum())  # int64 comes as a JSON string
    assert detection["mask"]["rle_counts"]
    assert blue["prompt_index"] == 1 and len(blue["detections"]) == 1


def test_status_and_health_like_grpcurl(reflected):
    channel, _, pool = reflected
    status = _generic_call(channel, pool, "sam3_grpc.v1.StatusService/GetServerStatus", "{}")
    assert status["model_kind"] == "MODEL_KIND_SYNTHETIC" and status["ready"] is True
    assert status["uptime"].endswith("s")  # Duration as grpcurl prints it, e.g. "1.5s"
    health = _generic_call(channel, pool, "grpc.health.v1.Health/Check", '{"service": ""}')
    assert health == {"status": "SERVING"}
