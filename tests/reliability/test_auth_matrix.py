"""Bearer tokens on every call shape, and no work at all for a refused call.

(tests/test_security.py covers the basics of tokens and TLS; this module is the call-shape matrix
and the "nothing happens before authentication" property.)
"""

from __future__ import annotations

import datetime
import ipaddress
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from reliability_support import SERVING, small_clip
from test_executor import segment_request
from test_video import upload_files, upload_requests

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import common_pb2, segmentation_service_pb2_grpc, status_service_pb2
from sam3_grpc.v1 import video_service_pb2 as pb

TOKENS = ("s3cr3t-token-one", "second-token")
RIGHT = [("authorization", f"Bearer {TOKENS[0]}")]
ACCEPTED = {
    "first token": RIGHT,
    "second token": [("authorization", f"Bearer {TOKENS[1]}")],
    "lower-case scheme": [("authorization", f"bearer {TOKENS[0]}")],
}
REFUSED = {
    "missing": [],
    "wrong token": [("authorization", "Bearer not-a-token")],
    "token without scheme": [("authorization", TOKENS[0])],
    "basic scheme": [("authorization", f"Basic {TOKENS[0]}")],
    "empty bearer": [("authorization", "Bearer ")],
    "prefix of a token": [("authorization", f"Bearer {TOKENS[0][:-1]}")],
    "token plus suffix": [("authorization", f"Bearer {TOKENS[0]}x")],
    "comment line of the file": [("authorization", "Bearer # ops tokens")],
    "token in another header": [("x-api-key", TOKENS[0])],
}
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def guarded(start_server, tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# ops tokens\n{TOKENS[0]}\n\n{TOKENS[1]}\n")
    engine = SyntheticEngine()
    server = start_server(
        engine, auth_token_file=str(token_file), upload_dir=str(tmp_path / "uploads")
    )
    clip = small_clip(tmp_path / "clip.avi", frames=6)
    with open(clip, "rb") as handle:
        data = handle.read()
    sid = server.video.UploadVideo(
        upload_requests(data), metadata=RIGHT, timeout=30
    ).session.session_id
    server.video.AddPrompt(
        pb.AddPromptRequest(session_id=sid, prompt=common_pb2.Prompt(text="red")),
        metadata=RIGHT,
        timeout=30,
    )
    return server, engine, sid, data


def _snapshot(server, engine, sid):
    """Everything a call could have changed: engine calls, executor counters, upload files and
    the session (read with ListSessions, which does not touch last_use_time)."""
    (session,) = server.video.ListSessions(
        pb.ListSessionsRequest(), metadata=RIGHT, timeout=10
    ).sessions
    assert session.session_id == sid
    stats = server.server.executor.stats()
    return (
        dict(engine.calls),
        stats.completed,
        stats.dropped,
        upload_files(server),
        session.last_use_time.ToNanoseconds(),
        list(session.object_ids),
    )


def _held_upload(data: bytes, release: threading.Event, sent: list):
    """Metadata and one chunk, then the client keeps the stream open until released."""
    messages = upload_requests(data)
    for _ in range(2):
        sent.append(1)
        yield next(messages)
    release.wait(10)


@pytest.mark.parametrize("credentials", sorted(REFUSED))
def test_refused_on_every_call_shape_and_nothing_happens(guarded, credentials):
    server, engine, sid, data = guarded
    metadata = REFUSED[credentials]
    before = _snapshot(server, engine, sid)
    release = threading.Event()
    sent: list = []
    calls = {
        "unary SegmentImage": lambda: server.segmentation.SegmentImage(
            segment_request(1), metadata=metadata, timeout=10
        ),
        # The refusal arrives while the client still holds its upload stream open: the server
        # did not wait for (or store) a single byte.
        "client-stream UploadVideo": lambda: server.video.UploadVideo(
            _held_upload(data, release, sent), metadata=metadata, timeout=10
        ),
        "server-stream Propagate": lambda: list(
            server.video.Propagate(
                pb.PropagateRequest(session_id=sid), metadata=metadata, timeout=10
            )
        ),
        "AddPrompt": lambda: server.video.AddPrompt(
            pb.AddPromptRequest(
                session_id=sid, frame_index=1, prompt=common_pb2.Prompt(text="red")
            ),
            metadata=metadata,
            timeout=10,
        ),
        "RemoveObject": lambda: server.video.RemoveObject(
            pb.RemoveObjectRequest(session_id=sid, object_id=1), metadata=metadata, timeout=10
        ),
        "ResetSession": lambda: server.video.ResetSession(
            pb.ResetSessionRequest(session_id=sid), metadata=metadata, timeout=10
        ),
        "GetSession": lambda: server.video.GetSession(
            pb.GetSessionRequest(session_id=sid), metadata=metadata, timeout=10
        ),
        "CloseSession": lambda: server.video.CloseSession(
            pb.CloseSessionRequest(session_id=sid), metadata=metadata, timeout=10
        ),
        "StartSession": lambda: server.video.StartSession(
            pb.StartSessionRequest(video_path="clip.avi"), metadata=metadata, timeout=10
        ),
        "ListSessions": lambda: server.video.ListSessions(
            pb.ListSessionsRequest(), metadata=metadata, timeout=10
        ),
        "GetServerStatus": lambda: server.status.GetServerStatus(
            status_service_pb2.GetServerStatusRequest(), metadata=metadata, timeout=10
        ),
    }
    try:
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as caught:
                call()
            error = caught.value
            assert error.code() == UNAUTHENTICATED, (name, error.code(), error.details())
            assert "authorization: Bearer" in error.details()
            assert TOKENS[0] not in error.details() and TOKENS[1] not in error.details()
        assert not release.is_set() and sent  # the upload was refused mid-stream
    finally:
        release.set()
    assert _snapshot(server, engine, sid) == before


@pytest.mark.parametrize("credentials", sorted(ACCEPTED))
def test_accepted_on_every_call_shape(guarded, credentials):
    server, _engine, _sid, data = guarded
    metadata = ACCEPTED[credentials]
    assert server.segmentation.SegmentImage(
        segment_request(2), metadata=metadata, timeout=30
    ).results
    reply = server.video.UploadVideo(upload_requests(data), metadata=metadata, timeout=30)
    assert reply.received_bytes == len(data)
    own = reply.session.session_id  # sessions belong to the token that opened them
    server.video.AddPrompt(
        pb.AddPromptRequest(session_id=own, prompt=common_pb2.Prompt(text="red")),
        metadata=metadata,
        timeout=30,
    )
    frames = list(
        server.video.Propagate(pb.PropagateRequest(session_id=own), metadata=metadata, timeout=30)
    )
    assert len(frames) == 6
    assert server.video.CloseSession(
        pb.CloseSessionRequest(session_id=own), metadata=metadata, timeout=10
    ).closed


def test_probes_need_no_token(guarded):
    server, *_ = guarded
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=5)
    assert next(watch).status == SERVING
    watch.cancel()
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "sam3_grpc.v1.SegmentationService" in names


# ----- TLS -----------------------------------------------------------------------------------
def _certificates(directory):
    """A self-signed CA and a server certificate for 127.0.0.1/localhost signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("reliability test CA"))
        .issuer_name(name("reliability test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_tls_server_refuses_plaintext_and_checks_tokens_over_tls(start_server, tmp_path):
    paths = _certificates(tmp_path)
    token_file = tmp_path / "tokens"
    token_file.write_text(TOKENS[0] + "\n")
    engine = SyntheticEngine()
    server = start_server(
        engine,
        tls_cert=str(paths["cert"]),
        tls_key=str(paths["key"]),
        auth_token_file=str(token_file),
    )
    encodes = engine.calls["encode_image"]
    # Plaintext against TLS: the handshake fails, no call gets through.
    with grpc.insecure_channel(server.target) as plain:
        with pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as caught:
            segmentation_service_pb2_grpc.SegmentationServiceStub(plain).SegmentImage(
                segment_request(1), metadata=RIGHT, timeout=3
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    credentials = grpc.ssl_channel_credentials(root_certificates=paths["ca"].read_bytes())
    with grpc.secure_channel(server.target, credentials) as secure:
        stub = segmentation_service_pb2_grpc.SegmentationServiceStub(secure)
        assert (
            health_pb2_grpc.HealthStub(secure)
            .Check(health_pb2.HealthCheckRequest(), timeout=10)
            .status
            == SERVING
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.SegmentImage(segment_request(2), timeout=10)
        assert caught.value.code() == UNAUTHENTICATED
        assert engine.calls["encode_image"] == encodes
        assert stub.SegmentImage(segment_request(3), metadata=RIGHT, timeout=30).results
    assert engine.calls["encode_image"] == encodes + 1
