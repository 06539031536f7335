"""Tokens, TLS, mutual TLS and safe binding defaults."""

from __future__ import annotations

import grpc
import pytest
from certs import make_certificates
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import RED, blank, draw_rect, encode

from sam3_grpc.config import Settings, validate
from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as pb_grpc
from sam3_grpc.v1 import video_service_pb2 as video_pb

IMAGE = blank(40, 30)
draw_rect(IMAGE, 5, 5, 15, 15, RED)
REQUEST = pb.SegmentImageRequest(
    image=common_pb2.Image(content=encode(IMAGE)), prompts=[common_pb2.Prompt(text="red")]
)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# team tokens\nalpha-secret-1\n\n beta-secret-2 \n")
    return str(path)


def call_with(server, metadata):
    return server.segmentation.SegmentImage(REQUEST, metadata=metadata, timeout=10)


def test_tokens_are_required_and_checked(start_server, token_file):
    engine = SyntheticEngine()
    server = start_server(engine, auth_token_file=token_file)
    encodes = engine.calls["encode_image"]
    for metadata in (
        (),
        (("authorization", "Bearer wrong"),),
        (("authorization", "alpha-secret-1"),),
        (("authorization", "Bearer "),),
        (("authorization", "Basic alpha-secret-1"),),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call_with(server, metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in caught.value.details()
    assert engine.calls["encode_image"] == encodes  # nothing reached the device
    for token in ("alpha-secret-1", "beta-secret-2"):
        assert call_with(server, (("authorization", f"Bearer {token}"),)).results
    # Probes stay open: Kubernetes sends no token.
    health = health_pb2_grpc.HealthStub(server.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_rejected_upload_writes_nothing(start_server, token_file):
    server = start_server(SyntheticEngine(), auth_token_file=token_file)
    sent = []

    def requests():
        sent.append("metadata")
        yield video_pb.UploadVideoRequest(
            metadata=video_pb.UploadVideoMetadata(filename="a.mp4", size_bytes=10)
        )
        sent.append("chunk")
        yield video_pb.UploadVideoRequest(chunk=b"0123456789")

    with pytest.raises(grpc.RpcError) as caught:
        server.video.UploadVideo(requests(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    directory = server.server.sessions.upload_dir
    assert [p.name for p in directory.iterdir() if p.name.startswith("sam3grpc-upload")] == []


def test_probes_can_require_tokens_too(start_server, token_file):
    server = start_server(SyntheticEngine(), auth_token_file=token_file, auth_exempt_probes=False)
    health = health_pb2_grpc.HealthStub(server.channel)
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = health.Check(
        health_pb2.HealthCheckRequest(),
        timeout=5,
        metadata=(("authorization", "Bearer alpha-secret-1"),),
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_and_plaintext_clients(start_server, certificates):
    server = start_server(
        SyntheticEngine(),
        tls_cert=str(certificates.server_cert),
        tls_key=str(certificates.server_key),
    )
    credentials = grpc.ssl_channel_credentials(certificates.ca.read_bytes())
    with grpc.secure_channel(server.target, credentials) as channel:
        assert pb_grpc.SegmentationServiceStub(channel).SegmentImage(REQUEST, timeout=10).results
    with pytest.raises(grpc.RpcError) as caught:
        call_with(server, ())  # the fixture's channel is plaintext
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(start_server, certificates):
    server = start_server(
        SyntheticEngine(),
        tls_cert=str(certificates.server_cert),
        tls_key=str(certificates.server_key),
        tls_client_ca=str(certificates.ca),
    )
    anonymous = grpc.ssl_channel_credentials(certificates.ca.read_bytes())
    with grpc.secure_channel(server.target, anonymous) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.SegmentationServiceStub(channel).SegmentImage(REQUEST, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    identified = grpc.ssl_channel_credentials(
        certificates.ca.read_bytes(),
        certificates.client_key.read_bytes(),
        certificates.client_cert.read_bytes(),
    )
    with grpc.secure_channel(server.target, identified) as channel:
        assert pb_grpc.SegmentationServiceStub(channel).SegmentImage(REQUEST, timeout=10).results


@pytest.mark.parametrize(
    ("host", "extra", "ok"),
    [
        ("127.0.0.1", {}, True),
        ("::1", {}, True),
        ("localhost", {}, True),
        ("0.0.0.0", {}, False),
        ("10.1.2.3", {}, False),
        ("0.0.0.0", {"insecure": True}, True),
        ("0.0.0.0", {"auth_token_file": "/etc/tokens"}, True),
        ("0.0.0.0", {"tls_cert": "c.pem", "tls_key": "k.pem"}, True),
    ],
)
def test_non_loopback_binding_needs_tls_tokens_or_insecure(host, extra, ok):
    settings = Settings(host=host, **extra)
    if ok:
        validate(settings)
    else:
        with pytest.raises(ValueError, match="--insecure"):
            validate(settings)


def test_tls_flags_go_together():
    with pytest.raises(ValueError, match="go together"):
        validate(Settings(tls_cert="c.pem"))
    with pytest.raises(ValueError, match="needs --tls-cert"):
        validate(Settings(tls_client_ca="ca.pem"))
