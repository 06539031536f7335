"""Sessions belong to the principal that created them, and every listener obeys the bind rule
(issue 10, items 11 and 12)."""

from __future__ import annotations

import grpc
import pytest
from certs import make_certificates
from reliability_support import small_clip
from test_hostile_media import reason_of
from test_video import upload_requests

from sam3_grpc.config import Settings, validate
from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import common_pb2, video_service_pb2_grpc
from sam3_grpc.v1 import video_service_pb2 as pb


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def assert_isolated(video_of_owner, video_of_other, session_id: str, owner_md=(), other_md=()):
    """The other principal cannot see, drive or close the owner's session; the owner can."""
    assert [
        s.session_id
        for s in video_of_other.ListSessions(pb.ListSessionsRequest(), metadata=other_md).sessions
    ] == []
    calls = [
        lambda: video_of_other.GetSession(
            pb.GetSessionRequest(session_id=session_id), metadata=other_md, timeout=10
        ),
        lambda: video_of_other.AddPrompt(
            pb.AddPromptRequest(session_id=session_id, prompt=common_pb2.Prompt(text="red")),
            metadata=other_md,
            timeout=10,
        ),
        lambda: list(
            video_of_other.Propagate(
                pb.PropagateRequest(session_id=session_id), metadata=other_md, timeout=10
            )
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason_of(caught.value) == "SESSION_NOT_FOUND"
    closed = video_of_other.CloseSession(
        pb.CloseSessionRequest(session_id=session_id), metadata=other_md, timeout=10
    )
    assert not closed.closed
    listed = video_of_owner.ListSessions(pb.ListSessionsRequest(), metadata=owner_md).sessions
    assert [s.session_id for s in listed] == [session_id]
    assert video_of_owner.CloseSession(
        pb.CloseSessionRequest(session_id=session_id), metadata=owner_md, timeout=10
    ).closed


def test_token_principals_own_their_sessions(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice-token\nbob-token\n")
    server = start_server(SyntheticEngine(), auth_token_file=str(tokens))
    data = open(small_clip(tmp_path / "clip.avi", frames=4), "rb").read()  # noqa: SIM115
    session = server.video.UploadVideo(
        upload_requests(data), metadata=bearer("alice-token"), timeout=30
    ).session
    assert_isolated(
        server.video,
        server.video,
        session.session_id,
        owner_md=bearer("alice-token"),
        other_md=bearer("bob-token"),
    )


def test_certificate_principals_own_their_sessions(start_server, tmp_path):
    certs = make_certificates(tmp_path)
    server = start_server(
        SyntheticEngine(),
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        tls_client_ca=str(certs.ca),
    )

    def channel(cert, key) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            certs.ca.read_bytes(), key.read_bytes(), cert.read_bytes()
        )
        return grpc.secure_channel(f"localhost:{server.port}", credentials)

    data = open(small_clip(tmp_path / "clip.avi", frames=4), "rb").read()  # noqa: SIM115
    with (
        channel(certs.client_cert, certs.client_key) as mine,
        channel(certs.other_client_cert, certs.other_client_key) as theirs,
    ):
        owner = video_service_pb2_grpc.VideoServiceStub(mine)
        other = video_service_pb2_grpc.VideoServiceStub(theirs)
        session = owner.UploadVideo(upload_requests(data), timeout=30).session
        assert_isolated(owner, other, session.session_id)


def test_without_authentication_sessions_are_one_namespace(synthetic_server, tmp_path):
    data = open(small_clip(tmp_path / "clip.avi", frames=4), "rb").read()  # noqa: SIM115
    session = synthetic_server.video.UploadVideo(upload_requests(data), timeout=30).session
    with grpc.insecure_channel(synthetic_server.target) as another_connection:
        video = video_service_pb2_grpc.VideoServiceStub(another_connection)
        listed = {s.session_id for s in video.ListSessions(pb.ListSessionsRequest()).sessions}
        assert session.session_id in listed  # documented: one namespace without auth
        assert video.CloseSession(pb.CloseSessionRequest(session_id=session.session_id)).closed


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        ({"metrics_port": 0}, False),
        ({"metrics_port": 0, "metrics_host": "0.0.0.0"}, True),
        ({"metrics_port": 0, "metrics_host": "0.0.0.0", "metrics_public": True}, False),
        # A TLS + token gRPC port on 0.0.0.0 does not make the plain-HTTP metrics safe there.
        (
            {
                "host": "0.0.0.0",
                "tls_cert": "c",
                "tls_key": "k",
                "auth_token_file": "t",
                "metrics_port": 9090,
            },
            True,
        ),
        ({"host": "0.0.0.0", "insecure": True, "metrics_port": 9090}, True),
        (
            {
                "metrics_port": 9090,
                "metrics_host": "127.0.0.1",
                "host": "0.0.0.0",
                "insecure": True,
            },
            False,
        ),
    ],
)
def test_the_bind_rule_applies_to_the_metrics_listener(overrides, refused):
    settings = Settings(**overrides)
    if refused:
        with pytest.raises(ValueError, match="metrics"):
            validate(settings)
    else:
        validate(settings)
