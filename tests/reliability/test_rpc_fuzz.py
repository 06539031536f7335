"""Generated requests for every RPC: only documented status codes, never UNKNOWN or INTERNAL.

Requests mix the valid with the hostile: random bytes as images and videos, PNG headers declaring
huge canvases, truncated and bit-flipped files, NaN/inf/huge coordinates, unknown enum values,
unknown session ids, random frame indices, out-of-order upload streams and stalled uploads. One
server (synthetic engine, a media root with a small valid video, a frame folder and an image)
serves the whole module, and must keep answering health checks after every example.

CI runs a fixed, derandomised budget per RPC. Run longer, with fresh randomness, with e.g.
    SAM3_GRPC_FUZZ_EXAMPLES=2000 pytest tests/reliability/test_rpc_fuzz.py
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import time

import grpc
import pytest
from helpers import RED, blank, draw_rect, encode, write_frame_folder
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reliability_support import SERVING, health, small_clip
from test_bad_input import png_declaring

from sam3_grpc.v1 import common_pb2, status_service_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as seg_pb
from sam3_grpc.v1 import video_service_pb2 as pb

EXAMPLES = int(os.environ.get("SAM3_GRPC_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="SAM3_GRPC_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
C = grpc.StatusCode
DOCUMENTED = frozenset(
    {
        C.OK,
        C.INVALID_ARGUMENT,
        C.NOT_FOUND,
        C.FAILED_PRECONDITION,
        C.RESOURCE_EXHAUSTED,
        C.OUT_OF_RANGE,
    }
)
UPLOAD_CODES = DOCUMENTED | {C.DATA_LOSS}
STALLED_UPLOAD_CODES = UPLOAD_CODES | {C.DEADLINE_EXCEEDED}
IDLE_TIMEOUT_S = 0.3
CALL_TIMEOUT_S = 30.0

IMAGE = blank(64, 48)
draw_rect(IMAGE, 8, 8, 24, 24, RED)
PNG = encode(IMAGE)
JPEG = encode(IMAGE, ".jpg", quality=90)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    from conftest import launch

    from sam3_grpc.engines.synthetic import SyntheticEngine

    root = tmp_path_factory.mktemp("fuzz-media")
    clip = small_clip(root / "clip.avi", frames=8)
    from helpers import disc_clip

    write_frame_folder(root / "frames", disc_clip(frames=4, width=64, height=48, radius=8)[0])
    (root / "img.png").write_bytes(PNG)
    (root / "garbage.avi").write_bytes(os.urandom(2048))
    (root / "empty").mkdir()
    server = launch(
        SyntheticEngine(),
        media_roots=(str(root),),
        upload_idle_timeout_s=IDLE_TIMEOUT_S,
        max_upload_bytes=1 << 20,
        max_sessions=8,
        upload_dir=str(tmp_path_factory.mktemp("fuzz-uploads")),
    )
    server.clip_bytes = pathlib.Path(clip).read_bytes()
    yield server
    server.stop()


def outcome(call) -> tuple[grpc.StatusCode, str]:
    try:
        result = call()
        return C.OK, result
    except grpc.RpcError as error:
        return error.code(), error.details() or ""


def check(server, call, allowed=DOCUMENTED):
    code, detail = outcome(call)
    event(code.name)  # see the mix with --hypothesis-show-statistics
    assert code in allowed, f"{code.name}: {detail}"
    if code != C.OK:
        assert "Traceback" not in detail and 'File "' not in detail, detail
        # No reply names a server path: the upload directory, the media root, /tmp, /proc...
        assert not re.search(r"(?<![\w.:/])/(?:[\w.@%+~-]+/)+", detail), detail
    # The server keeps answering.
    assert health(server.channel, timeout=5.0) == SERVING
    return code, detail


def close_quietly(server, session_id: str) -> None:
    server.video.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=10)


# ----- strategies ----------------------------------------------------------------------------
# Each strategy mixes plausible values (so requests reach the engine and the renderers) with
# hostile ones (so validation is exercised). The clip and the image are 64x48.
def often(plausible, hostile):
    """Plausible values about four times in five."""
    return st.sampled_from([0, 0, 0, 0, 1]).flatmap(lambda i: (plausible, hostile)[i])


coordinates = often(
    st.floats(min_value=0, max_value=47.5, width=32),
    st.one_of(
        st.floats(width=32),  # NaN, ±inf, subnormals, ±3.4e38
        st.floats(min_value=-2, max_value=70, width=32),
        st.sampled_from([-0.0, 63.999, 64.0, 48.0, 1e30, -1e30]),
    ),
)
labels = often(st.integers(0, 2), st.integers(-2, 5))  # 3.. are unknown PromptLabel values
plain_boxes = st.tuples(
    st.floats(0, 40, width=32),
    st.floats(0, 30, width=32),
    st.floats(1, 24, width=32),
    st.floats(1, 18, width=32),
).map(lambda b: common_pb2.Box(x_min=b[0], y_min=b[1], x_max=b[0] + b[2], y_max=b[1] + b[3]))
boxes = st.builds(
    common_pb2.LabeledBox,
    box=often(
        plain_boxes,
        st.one_of(
            st.none(),
            st.builds(
                common_pb2.Box,
                x_min=coordinates,
                y_min=coordinates,
                x_max=coordinates,
                y_max=coordinates,
            ),
        ),
    ),
    label=labels,
)
points = st.builds(
    common_pb2.LabeledPoint,
    point=often(
        st.builds(common_pb2.Point, x=st.floats(0, 63.5, width=32), y=st.floats(0, 47.5, width=32)),
        st.one_of(st.none(), st.builds(common_pb2.Point, x=coordinates, y=coordinates)),
    ),
    label=labels,
)
texts = often(
    st.sampled_from(["red", "a red car", "RED", "blue", "black"]),
    st.one_of(
        st.sampled_from(["", "   ", "dog"]),
        st.text(max_size=40),
        st.text(min_size=250, max_size=300),
    ),
)
prompts = often(
    st.builds(
        common_pb2.Prompt,
        text=texts,
        boxes=st.lists(boxes, max_size=2),
        points=st.lists(points, max_size=2),
    ),
    st.one_of(
        st.builds(
            common_pb2.Prompt,
            text=texts,
            boxes=st.lists(boxes, max_size=3),
            points=st.lists(points, max_size=3),
        ),
        st.integers(60, 70).map(
            lambda n: common_pb2.Prompt(
                points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=1, y=1))] * n
            )
        ),
    ),
)
outputs = st.one_of(
    st.none(),
    st.builds(
        common_pb2.OutputOptions,
        mask_encoding=st.integers(0, 3),
        include_polygons=st.booleans(),
        polygon_tolerance_pixels=st.floats(0, 100, width=32),
        score_threshold=st.one_of(st.none(), st.floats(0, 1, width=32)),
        min_area_pixels=st.integers(0, 500),
        max_detections=st.integers(0, 100),
    ),
    st.builds(
        common_pb2.OutputOptions,
        mask_encoding=st.integers(-1, 6),
        include_polygons=st.booleans(),
        polygon_tolerance_pixels=st.one_of(st.floats(width=32), st.floats(0, 100, width=32)),
        score_threshold=st.one_of(st.none(), st.floats(width=32)),
        min_area_pixels=st.integers(-(2**31), 2**31 - 1),
        max_detections=st.one_of(st.integers(-5, 120), st.integers(-(2**31), 2**31 - 1)),
    ),
)


def _flip(data: bytes, index: int, value: int) -> bytes:
    index %= len(data)
    return data[:index] + bytes([value]) + data[index + 1 :]


image_bytes = often(
    st.sampled_from([PNG, JPEG]),
    st.one_of(
        st.binary(max_size=2048),
        st.builds(png_declaring, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
        st.integers(0, len(PNG)).map(lambda n: PNG[:n]),
        st.builds(_flip, st.sampled_from([PNG, JPEG]), st.integers(0, 10**6), st.integers(0, 255)),
    ),
)
media_paths = st.one_of(
    st.sampled_from(
        [
            "img.png",
            "clip.avi",
            "frames",
            "garbage.avi",
            "empty",
            "nope.png",
            "../etc/passwd",
            "/etc/passwd",
            "",
            ".",
            "..",
            "a\x00b",
            "img.png/..",
        ]
    ),
    st.text(max_size=60),
)
images = often(
    st.builds(common_pb2.Image, content=image_bytes),
    st.one_of(
        st.none(), st.just(common_pb2.Image()), st.builds(common_pb2.Image, path=media_paths)
    ),
)
session_ids = often(st.none(), st.text(max_size=40))  # None: the example's real session
frame_indices = often(st.integers(0, 9), st.integers(-(2**31), 2**31 - 1))
object_ids = often(st.integers(0, 3), st.integers(-(2**31), 2**31 - 1))


# ----- one test per RPC ----------------------------------------------------------------------
@FUZZ
@given(
    image=images,
    prompt_list=often(
        st.lists(prompts, min_size=1, max_size=3),
        st.one_of(st.just([]), st.just([common_pb2.Prompt(text="red")] * 17)),
    ),
    output=outputs,
)
def test_segment_image(fuzz, image, prompt_list, output):
    request = seg_pb.SegmentImageRequest(image=image, prompts=prompt_list, output=output)
    check(fuzz, lambda: fuzz.segmentation.SegmentImage(request, timeout=CALL_TIMEOUT_S))


@FUZZ
@given(
    path=often(
        st.sampled_from(["clip.avi", "frames", "/clip.avi", "frames/../clip.avi"]), media_paths
    )
)
def test_start_session(fuzz, path):
    code, reply = check(
        fuzz,
        lambda: fuzz.video.StartSession(
            pb.StartSessionRequest(video_path=path), timeout=CALL_TIMEOUT_S
        ),
    )
    if code == C.OK:
        close_quietly(fuzz, reply.session.session_id)


def _valid_upload(data: bytes, chunk: int, with_sha: bool, filename: str):
    digest = hashlib.sha256(data).hexdigest() if with_sha else ""
    messages = [
        pb.UploadVideoRequest(
            metadata=pb.UploadVideoMetadata(filename=filename, size_bytes=len(data), sha256=digest)
        )
    ]
    messages += [
        pb.UploadVideoRequest(chunk=data[i : i + chunk]) for i in range(0, len(data), chunk)
    ]
    return messages


upload_messages = st.one_of(
    st.builds(
        pb.UploadVideoRequest,
        metadata=st.builds(
            pb.UploadVideoMetadata,
            filename=st.one_of(
                st.sampled_from(["clip.avi", "x.mp4", "", "../../x.avi", "a.exe", ".avi", "v.MKV"]),
                st.text(max_size=30),
            ),
            size_bytes=st.one_of(st.integers(-5, 5000), st.integers(-(2**63), 2**63 - 1)),
            sha256=st.one_of(
                st.just(""),
                st.text(max_size=70),
                st.binary(min_size=32, max_size=32).map(bytes.hex),
            ),
        ),
    ),
    st.builds(pb.UploadVideoRequest, chunk=st.binary(max_size=4096)),
    st.just(pb.UploadVideoRequest()),
)


@st.composite
def upload_streams(draw, clip_bytes: bytes):
    kind = draw(st.sampled_from(["random", "valid", "mutated", "truncated"]))
    if kind == "random":
        messages = draw(st.lists(upload_messages, max_size=6))
    else:
        data = clip_bytes
        if kind == "mutated":
            for _ in range(draw(st.integers(1, 4))):
                data = _flip(data, draw(st.integers(0, 10**6)), draw(st.integers(0, 255)))
        if kind == "truncated":
            data = data[: draw(st.integers(1, len(data)))]
        messages = _valid_upload(
            data,
            draw(st.sampled_from([512, 4096, 65536])),
            draw(st.booleans()),
            draw(st.sampled_from(["clip.avi", "clip.mp4", "clip"])),
        )
        if draw(st.booleans()):  # tamper with the stream itself
            messages = (
                draw(st.permutations(messages))
                if draw(st.booleans())
                else messages[: draw(st.integers(0, len(messages)))]
            )
    stall_at = draw(
        st.one_of(st.none(), st.none(), st.none(), st.none(), st.integers(0, max(0, len(messages))))
    )
    return messages, stall_at


@FUZZ
@given(data=st.data())
def test_upload_video(fuzz, data):
    messages, stall_at = data.draw(upload_streams(fuzz.clip_bytes))

    def stream():
        for index, message in enumerate(messages):
            if index == stall_at:
                time.sleep(IDLE_TIMEOUT_S * 2)  # the server gives up first
            yield message
        if stall_at is not None and stall_at >= len(messages):
            time.sleep(IDLE_TIMEOUT_S * 2)

    allowed = STALLED_UPLOAD_CODES if stall_at is not None else UPLOAD_CODES
    code, reply = check(
        fuzz, lambda: fuzz.video.UploadVideo(stream(), timeout=CALL_TIMEOUT_S), allowed
    )
    if code == C.OK:
        close_quietly(fuzz, reply.session.session_id)
    # Nothing of a refused upload stays on disk.
    sessions = fuzz.server.sessions
    on_disk = [p for p in sessions.upload_dir.iterdir() if p.name.startswith("upload-")]
    kept = {str(s.upload_path) for s in sessions.list("") if s.upload_path is not None}
    assert {str(p) for p in on_disk} <= kept


class RealSession:
    """A fresh session on the media root's clip for one example (optionally prompted)."""

    def __init__(self, server, prompted: bool) -> None:
        self.server = server
        self.id = server.video.StartSession(
            pb.StartSessionRequest(video_path="clip.avi"), timeout=CALL_TIMEOUT_S
        ).session.session_id
        if prompted:
            server.video.AddPrompt(
                pb.AddPromptRequest(session_id=self.id, prompt=common_pb2.Prompt(text="red")),
                timeout=CALL_TIMEOUT_S,
            )

    def pick(self, drawn: str | None) -> str:
        return self.id if drawn is None else drawn

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        close_quietly(self.server, self.id)


@FUZZ
@given(
    sid=session_ids,
    prompted=st.booleans(),
    frame=frame_indices,
    prompt=often(prompts, st.none()),
    object_id=often(st.none(), object_ids),
    output=outputs,
)
def test_add_prompt(fuzz, sid, prompted, frame, prompt, object_id, output):
    with RealSession(fuzz, prompted) as session:
        request = pb.AddPromptRequest(
            session_id=session.pick(sid),
            frame_index=frame,
            prompt=prompt,
            object_id=object_id,
            output=output,
        )
        check(fuzz, lambda: fuzz.video.AddPrompt(request, timeout=CALL_TIMEOUT_S))


@FUZZ
@given(sid=session_ids, prompted=often(st.just(True), st.just(False)), object_id=object_ids)
def test_remove_object(fuzz, sid, prompted, object_id):
    with RealSession(fuzz, prompted) as session:
        check(
            fuzz,
            lambda: fuzz.video.RemoveObject(
                pb.RemoveObjectRequest(session_id=session.pick(sid), object_id=object_id),
                timeout=CALL_TIMEOUT_S,
            ),
        )


@FUZZ
@given(sid=session_ids, prompted=st.booleans())
def test_reset_get_and_close_session(fuzz, sid, prompted):
    with RealSession(fuzz, prompted) as session:
        target = session.pick(sid)
        check(
            fuzz,
            lambda: fuzz.video.ResetSession(
                pb.ResetSessionRequest(session_id=target), timeout=CALL_TIMEOUT_S
            ),
        )
        check(
            fuzz,
            lambda: fuzz.video.GetSession(
                pb.GetSessionRequest(session_id=target), timeout=CALL_TIMEOUT_S
            ),
        )
        code, reply = check(
            fuzz,
            lambda: fuzz.video.CloseSession(
                pb.CloseSessionRequest(session_id=target), timeout=CALL_TIMEOUT_S
            ),
        )
        assert code == C.OK and reply.closed == (sid is None)


@FUZZ
@given(
    sid=session_ids,
    prompted=often(st.just(True), st.just(False)),
    direction=often(st.integers(0, 3), st.integers(-1, 6)),
    start=st.one_of(st.none(), frame_indices),
    max_frames=frame_indices,
    output=outputs,
)
def test_propagate(fuzz, sid, prompted, direction, start, max_frames, output):
    with RealSession(fuzz, prompted) as session:
        request = pb.PropagateRequest(
            session_id=session.pick(sid),
            direction=direction,
            start_frame_index=start,
            max_frames=max_frames,
            output=output,
        )
        code, replies = check(
            fuzz, lambda: list(fuzz.video.Propagate(request, timeout=CALL_TIMEOUT_S))
        )
        if code == C.OK:
            assert replies and all(r.frames_total == len(replies) for r in replies)


def _identity(data: bytes) -> bytes:
    return data


wire_messages = st.one_of(  # valid wire data of other messages: unknown fields to the callee
    st.builds(common_pb2.Prompt, text=texts, points=st.lists(points, max_size=2)),
    st.builds(pb.PropagateRequest, session_id=st.text(max_size=10), max_frames=frame_indices),
    st.just(pb.ListSessionsRequest()),
).map(lambda m: m.SerializeToString())


@FUZZ
@given(raw=wire_messages)
def test_list_sessions_and_server_status(fuzz, raw):
    for method in (
        "/sam3_grpc.v1.VideoService/ListSessions",
        "/sam3_grpc.v1.StatusService/GetServerStatus",
    ):
        call = fuzz.channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        code, _ = check(fuzz, lambda call=call: call(raw, timeout=CALL_TIMEOUT_S))
        assert code == C.OK
    status = fuzz.status.GetServerStatus(
        status_service_pb2.GetServerStatusRequest(), timeout=CALL_TIMEOUT_S
    )
    assert status.ready and status.active_sessions <= 8


ALL_UNARY_METHODS = (
    "/sam3_grpc.v1.SegmentationService/SegmentImage",
    "/sam3_grpc.v1.VideoService/StartSession",
    "/sam3_grpc.v1.VideoService/AddPrompt",
    "/sam3_grpc.v1.VideoService/RemoveObject",
    "/sam3_grpc.v1.VideoService/ResetSession",
    "/sam3_grpc.v1.VideoService/GetSession",
    "/sam3_grpc.v1.VideoService/ListSessions",
    "/sam3_grpc.v1.VideoService/CloseSession",
    "/sam3_grpc.v1.StatusService/GetServerStatus",
)


@FUZZ
@given(
    raw=st.one_of(
        st.binary(min_size=1, max_size=64),
        st.sampled_from([b"\xff", b"\x0a\x05abc", b"\x12\x80\x80\x80\x80\x10"]),
    )
)
def test_corrupt_request_bytes_are_invalid_argument(fuzz, raw):
    """Bytes that are not a valid protobuf message at all (a broken client) are the caller's
    fault: INVALID_ARGUMENT, like any other malformed request — not UNKNOWN with the name of a
    Python exception class."""
    for method in ALL_UNARY_METHODS:
        call = fuzz.channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        check(fuzz, lambda call=call: call(raw, timeout=CALL_TIMEOUT_S))
    propagate = fuzz.channel.unary_stream(
        "/sam3_grpc.v1.VideoService/Propagate",
        request_serializer=_identity,
        response_deserializer=_identity,
    )
    check(fuzz, lambda: list(propagate(raw, timeout=CALL_TIMEOUT_S)))
    upload = fuzz.channel.stream_unary(
        "/sam3_grpc.v1.VideoService/UploadVideo",
        request_serializer=_identity,
        response_deserializer=_identity,
    )
    check(fuzz, lambda: upload(iter([raw]), timeout=CALL_TIMEOUT_S), UPLOAD_CODES)
    # Valid metadata first, then a corrupt message in place of a chunk.
    metadata = pb.UploadVideoRequest(
        metadata=pb.UploadVideoMetadata(filename="x.avi", size_bytes=100)
    ).SerializeToString()
    check(fuzz, lambda: upload(iter([metadata, raw]), timeout=CALL_TIMEOUT_S), UPLOAD_CODES)
