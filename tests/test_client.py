"""The Python clients (sam3_grpc.client) against real servers with the synthetic engine.

One scenario suite runs against both clients: every test taking the `client` or `connect`
fixture runs once with `Sam3Client` and once with `AsyncSam3Client` (driven through
tests/client_bridge.py). Masks are compared with the drawn shapes pixel for pixel (PNG images,
lossless FFV1 videos). Retries are checked by counting attempts and recording the requested
delays through the retry policy's sleep hook, never by measuring time.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from client_bridge import Loop, async_client
from fake_replica import FakeReplica
from helpers import BLUE, RED, Gate, blank, disc_clip, draw_disc, draw_rect, encode, write_video
from pycocotools import mask as coco_mask

from sam3_grpc.client import (
    NO_RETRY,
    AsyncSam3Client,
    DataLossError,
    Detection,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OutputOptions,
    Prompt,
    ReplicaLostError,
    ResourceExhaustedError,
    RetryPolicy,
    Sam3Client,
    Sam3Error,
    Sam3Pool,
    SegmentResult,
    ServerPath,
    UnavailableError,
    VideoSession,
)
from sam3_grpc.client.aio import AsyncVideoSession
from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import segmentation_service_pb2, status_service_pb2


def wait_until(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.01)


# ----- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene():
    """An RGB image with a red rectangle and a blue disc, and their exact masks."""
    image = blank(200, 150)
    rect = draw_rect(image, 12, 20, 70, 64, RED)
    disc = draw_disc(image, 140, 95, 28, BLUE)
    return image, rect, disc


@pytest.fixture(scope="module")
def scene_png(scene, media_root):
    path = os.path.join(media_root, "scene.png")
    with open(path, "wb") as handle:
        handle.write(encode(scene[0]))
    return path


@pytest.fixture(scope="module")
def clip(media_root):
    """A lossless 12-frame video of a red disc moving right, in the server's media root."""
    images, masks = disc_clip(frames=12)
    path = write_video(os.path.join(media_root, "disc.avi"), images)
    return path, masks


@pytest.fixture(scope="module")
def bridge_loop():
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture(params=["sync", "async"])
def connect(request, bridge_loop):
    """connect(target, **options): a Sam3Client, or an AsyncSam3Client behind the blocking
    bridge; each test using it runs with both."""
    opened = []

    def factory(target: str, **options):
        if request.param == "sync":
            made = Sam3Client(target, **options)
        else:
            made = async_client(bridge_loop, target, **options)
        opened.append(made)
        return made

    yield factory
    for made in opened:
        made.close()


@pytest.fixture
def client(synthetic_server, connect):
    with connect(synthetic_server.target, timeout=30) as client:
        yield client


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


# ----- images ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["path", "pathlike", "bytes", "numpy", "pil", "server_path"])
def test_segment_image_every_input_kind(client, scene, scene_png, kind):
    image, rect, disc = scene
    source = {
        "path": scene_png,
        "pathlike": __import__("pathlib").Path(scene_png),
        "bytes": encode(image),
        "numpy": image,
        "pil": __import__("PIL.Image", fromlist=["Image"]).fromarray(image),
        "server_path": ServerPath("scene.png"),
    }[kind]
    result = client.segment_image(source, ["red", "blue"])
    assert isinstance(result, SegmentResult)
    assert (result.width, result.height) == (200, 150)
    [red], [blue] = result.results[0].detections, result[1].detections
    assert np.array_equal(red.mask, rect) and np.array_equal(blue.mask, disc)
    assert red.box == box_of(rect) and blue.box == box_of(disc)
    assert (red.area, blue.area) == (rect.sum(), disc.sum())
    assert 0 <= red.score <= 1
    assert [r.prompt.text for r in result.results] == ["red", "blue"]
    assert len(result.detections) == 2


def test_prompt_kinds_and_order(client, scene):
    image, rect, disc = scene
    prompts = [
        Prompt(points=[(140, 95)]),
        Prompt(boxes=[(10, 18, 72, 66)]),
        "red",
        Prompt(text="blue", negative_points=[(140, 95)]),
    ]
    result = client.segment_image(image, prompts)
    assert [r.prompt_index for r in result.results] == [0, 1, 2, 3]
    assert np.array_equal(result[0][0].mask, disc)
    assert np.array_equal(result[1][0].mask, rect)
    assert np.array_equal(result[2][0].mask, rect)
    assert len(result[3]) == 0  # the only blue region was excluded
    assert result[0].prompt.label == "point 140,95"
    # A single prompt may be given bare.
    assert np.array_equal(client.segment_image(image, "red")[0][0].mask, rect)


def test_cache_hit_on_same_image(client, scene):
    data = encode(scene[0])
    client.segment_image(data, "red")
    assert client.segment_image(data, "blue").cache_hit


def test_png_masks_polygons_and_no_masks(client, scene):
    image, rect, disc = scene
    png = client.segment_image(image, ["red", "blue"], output=OutputOptions(mask_encoding="png"))
    assert png[0][0].png is not None and png[0][0].rle_counts is None
    assert np.array_equal(png[0][0].mask, rect) and np.array_equal(png[1][0].mask, disc)
    # The COCO RLE is derived from the PNG mask when needed.
    assert np.array_equal(
        coco_mask.decode(
            {"size": png[0][0].rle["size"], "counts": png[0][0].rle["counts"].encode()}
        ),
        rect,
    )

    none = client.segment_image(
        image, "red", output=OutputOptions(mask_encoding="none", include_polygons=True)
    )
    detection = none[0][0]
    assert not detection.has_mask and detection.area == rect.sum()
    with pytest.raises(ValueError, match="no mask"):
        _ = detection.mask
    [polygon] = detection.polygons
    assert polygon.shape[1] == 2
    assert polygon.min(0).tolist() == [12, 20] and polygon.max(0).tolist() == [69, 63]
    assert "segmentation" in detection.to_coco()  # polygons stand in for the mask


def test_output_filters(client):
    image = blank(120, 80)
    big = draw_rect(image, 5, 5, 45, 45, RED)
    draw_rect(image, 80, 10, 84, 14, RED)  # 16 pixels
    assert len(client.segment_image(image, "red")[0]) == 2
    [only] = client.segment_image(image, "red", output=OutputOptions(min_area_pixels=17))[0]
    assert np.array_equal(only.mask, big)
    assert len(client.segment_image(image, "red", output=OutputOptions(max_detections=1))[0]) == 1
    assert (
        len(client.segment_image(image, "red", output=OutputOptions(score_threshold=1.0))[0]) == 2
    )


def test_to_coco_round_trips_through_pycocotools(client, scene):
    image, rect, disc = scene
    result = client.segment_image(image, ["red", "blue"])
    dataset = result.to_coco_dataset(file_name="scene.png", image_id=7)
    assert dataset["images"] == [{"id": 7, "file_name": "scene.png", "width": 200, "height": 150}]
    assert dataset["categories"] == [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    by_category = {a["category_id"]: a for a in dataset["annotations"]}
    for category, expected in ((1, rect), (2, disc)):
        annotation = by_category[category]
        assert annotation["image_id"] == 7 and annotation["iscrowd"] == 0
        segmentation = annotation["segmentation"]
        assert segmentation["size"] == [150, 200]
        decoded = coco_mask.decode(
            {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
        )
        assert np.array_equal(decoded.astype(bool), expected)
        x0, y0, x1, y1 = box_of(expected)
        assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert annotation["area"] == expected.sum()
        assert float(
            coco_mask.area(
                {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
            )
        ) == (expected.sum())
    assert sorted(a["id"] for a in dataset["annotations"]) == [1, 2]


# ----- errors ------------------------------------------------------------------------------------
def test_errors_are_typed_with_code_and_message(client, scene):
    with pytest.raises(InvalidArgumentError) as caught:
        client.segment_image(scene[0], "a dog")
    error = caught.value
    assert isinstance(error, Sam3Error) and isinstance(error, ValueError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "colour" in error.message and error.from_server and error.retry_after is None
    assert error.target == client.target
    assert error.reason == "UNSUPPORTED_PROMPT"  # the synthetic engine knows colours only
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InvalidArgumentError and copy.message == error.message
    assert copy.reason == error.reason

    with pytest.raises(NotFoundError) as caught:
        client.get_session("no-such-session")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "SESSION_NOT_FOUND"
    with pytest.raises(NotFoundError) as caught:
        client.segment_image(ServerPath("../outside.png"), "red")
    assert caught.value.reason == "MEDIA_NOT_FOUND"
    # A bad field is named, machine-readably.
    with pytest.raises(InvalidArgumentError) as caught:
        client.segment_image(scene[0], Prompt(points=[(500, 5)]))
    assert caught.value.field_violations[0][0] == "prompts[0].points[0].point"


def test_local_validation_happens_before_any_call(client):
    with pytest.raises(ValueError, match="x_min, y_min, x_max, y_max"):
        client.segment_image(b"x", Prompt(boxes=[(1, 2, 3)]))
    with pytest.raises(ValueError, match="mask_encoding"):
        client.segment_image(b"x", "red", output=OutputOptions(mask_encoding="jpeg"))
    with pytest.raises(TypeError):
        client.segment_image(12345, "red")
    with pytest.raises(ValueError, match="at least one prompt"):
        client.segment_image(b"x", [])
    with pytest.raises(FileNotFoundError):
        client.upload_video("/no/such/video.mp4")


def test_a_client_takes_one_target():
    with pytest.raises(TypeError, match="Sam3Pool"):
        Sam3Client(["a:1", "b:2"])


def test_unreachable_server_is_unavailable_and_retried(connect):
    delays = []
    policy = RetryPolicy(max_attempts=3, sleep=delays.append)
    with connect("127.0.0.1:1", retry=policy, timeout=10) as client:
        with pytest.raises(UnavailableError) as caught:
            client.status()
    assert caught.value.connection_failed and not caught.value.from_server
    assert len(delays) == 2  # three attempts, backoff between them
    assert 0.2 * 0.8 <= delays[0] <= 0.2 * 1.2 and 0.4 * 0.8 <= delays[1] <= 0.4 * 1.2


# ----- status and health -------------------------------------------------------------------------
def test_status_and_health(client):
    status = client.status()
    assert status.model_kind == "synthetic" and status.ready and status.target == client.target
    assert status.queue.capacity > 0 and status.version
    assert status.to_dict()["queue"]["capacity"] == status.queue.capacity
    assert client.health() == "SERVING"
    assert client.health("sam3_grpc.v1.VideoService") == "SERVING"
    assert client.health("no.such.Service") == "SERVICE_UNKNOWN"
    client.wait_until_serving(5)


# ----- video -------------------------------------------------------------------------------------
def test_upload_video_streams_with_progress_and_checksum(client, clip):
    path, masks = clip
    size = os.path.getsize(path)
    seen = []
    session = client.upload_video(
        path, chunk_size=4096, progress=lambda sent, total: seen.append((sent, total))
    )
    try:
        assert session.uploaded and session.frame_count == len(masks)
        assert (session.width, session.height) == (160, 120) and session.fps == 10
        assert session.create_time is not None and session.target == client.target
        assert seen[-1] == (size, size) and len(seen) == -(-size // 4096)
        assert [s for s, _ in seen] == sorted(s for s, _ in seen)
    finally:
        assert client.close_session(session.session_id)
    assert not client.close_session(session.session_id)  # closing twice is fine


def test_upload_with_wrong_checksum_is_data_loss(client, clip):
    with pytest.raises(DataLossError):
        client.upload_video(clip[0], sha256=hashlib.sha256(b"other").hexdigest())
    assert client.list_sessions() == []


def test_session_lifecycle(client, clip):
    _path, masks = clip
    session = client.start_session(ServerPath("disc.avi"))
    assert not session.uploaded and session.frame_count == 12
    sid = session.session_id
    try:
        assert [s.session_id for s in client.list_sessions()] == [sid]
        added = client.add_prompt(sid, 0, "red")
        assert added.frame_index == 0 and added.object_ids == [1]
        [obj] = added.objects
        assert np.array_equal(obj.mask, masks[0])

        point = client.add_prompt(sid, 5, Prompt(points=[box_center(masks[5])]))
        assert point.object_ids == [2]
        refined = client.add_prompt(sid, 5, Prompt(points=[box_center(masks[5])]), object_id=2)
        assert refined.object_ids == [2]
        assert client.get_session(sid).object_ids == [1, 2]
        assert client.remove_object(sid, 2).object_ids == [1]
        assert client.reset_session(sid).object_ids == []
        with pytest.raises(FailedPreconditionError):
            list(client.propagate(sid))  # no prompts any more
    finally:
        assert client.close_session(sid)
    assert client.list_sessions() == []


def box_center(mask):
    x0, y0, x1, y1 = box_of(mask)
    return ((x0 + x1) / 2, (y0 + y1) / 2)


@pytest.mark.parametrize(
    ("direction", "start", "expected"),
    [
        ("forward", None, list(range(12))),
        ("backward", 11, list(range(11, -1, -1))),
        ("both", 6, [*range(6, 12), *range(5, -1, -1)]),
    ],
)
def test_propagate_streams_every_frame(client, clip, direction, start, expected):
    _path, masks = clip
    with client.session(ServerPath("disc.avi")) as session:
        session.add_prompt(start or 0, "red")
        frames = list(session.propagate(direction=direction, start_frame_index=start))
    assert [f.frame_index for f in frames] == expected
    assert [f.frames_done for f in frames] == list(range(1, 13))
    assert {f.frames_total for f in frames} == {12}
    for frame in frames:
        [obj] = frame.objects
        assert obj.object_id == 1
        assert np.array_equal(obj.mask, masks[frame.frame_index]), frame.frame_index
    assert client.list_sessions() == []


def test_propagate_max_frames_and_png(client, clip):
    with client.session(upload=clip[0]) as session:
        session.add_prompt(0, "red")
        frames = list(session.propagate(max_frames=4, output=OutputOptions(mask_encoding="png")))
    assert [f.frame_index for f in frames] == [0, 1, 2, 3]
    assert np.array_equal(frames[3].objects[0].mask, clip[1][3])


def test_session_context_closes_on_error(client, clip):
    def fail_inside_a_session() -> None:
        with client.session(upload=clip[0], chunk_size=8192) as session:
            session.add_prompt(0, "red")
            assert len(client.list_sessions()) == 1
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside_a_session()
    assert client.list_sessions() == []
    # A server error inside the body propagates too, and the session is still closed.
    with pytest.raises(InvalidArgumentError), client.session(ServerPath("disc.avi")) as session:
        session.add_prompt(0, "a dog")
    assert client.list_sessions() == []
    with pytest.raises(ValueError, match="exactly one"), client.session():
        pass


class StepPermits:
    """An engine hook letting only as many propagate steps run as permits were given."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.unlimited = threading.Event()

    def __call__(self, name: str) -> None:
        if name != "propagate_step":
            return
        while not self.unlimited.is_set():
            if self.permits.acquire(timeout=0.02):
                return


def test_leaving_propagate_cancels_the_stream(synthetic_server, client, clip):
    engine = synthetic_server.engine
    hook = StepPermits()
    with client.session(ServerPath("disc.avi")) as session:
        session.add_prompt(0, "red")
        engine.before_call = hook
        try:
            before = engine.calls["propagate_step"]
            hook.permits.release(3)
            received = []
            with session.propagate() as stream:
                for frame in stream:
                    received.append(frame.frame_index)
                    if len(received) == 2:
                        break  # leaving the with block cancels the stream
            assert received == [0, 1]
            wait_until(lambda: not session.refresh().propagating)
        finally:
            hook.unlimited.set()
            engine.before_call = None
        # Let the step that was waiting for a permit finish, then nothing more may run.
        wait_until(lambda: client.status().queue.running == 0 and client.status().queue.depth == 0)
        after_cancel = engine.calls["propagate_step"] - before
        assert 2 <= after_cancel <= 4 < session.frame_count
        assert session.refresh().object_ids == [1]
        assert engine.calls["propagate_step"] - before == after_cancel  # it stopped

        # The session is still usable: a full propagation runs.
        stream = session.propagate()
        assert [f.frame_index for f in stream] == list(range(12))
        # Explicit cancel of a finished stream is harmless; a closed stream ends iteration.
        stream.cancel()
        assert list(stream) == []


def test_propagate_stream_cancel_method(client, clip):
    with client.session(ServerPath("disc.avi")) as session:
        session.add_prompt(0, "red")
        with session.propagate() as stream:
            first = next(stream)
            assert first.frame_index == 0 and stream.frames_total == 12
        assert list(stream) == []  # closed by the with block
        wait_until(lambda: not session.refresh().propagating)


# ----- retries -----------------------------------------------------------------------------------
def segment_raw(server, image: np.ndarray):
    stub = server.segmentation
    from sam3_grpc.v1 import common_pb2

    return stub.SegmentImage(
        segmentation_service_pb2.SegmentImageRequest(
            image=common_pb2.Image(content=encode(image)), prompts=[common_pb2.Prompt(text="red")]
        ),
        timeout=60,
    )


def queue_state(server):
    return server.status.GetServerStatus(
        status_service_pb2.GetServerStatusRequest(), timeout=10
    ).queue


def test_retries_honour_retry_info_when_the_queue_is_full(
    start_server, media_root, clip, scene, connect
):
    engine = SyntheticEngine()
    server = start_server(engine, queue_size=1, media_roots=(media_root,))
    with connect(server.target) as client:
        session = client.start_session(ServerPath("disc.avi"))
    gate = Gate(names=("predict",))
    engine.before_call = gate
    pool = futures.ThreadPoolExecutor(2)
    try:
        # One request runs (held inside the engine), one waits: the queue (capacity 1) is full.
        running = pool.submit(segment_raw, server, blank(40, 30))
        gate.wait_entered()
        waiting = pool.submit(segment_raw, server, blank(41, 30))
        wait_until(lambda: queue_state(server).depth == 1)

        # Every attempt is rejected: the client tries max_attempts times, sleeping the hint.
        sleeps, retries = [], []
        policy = RetryPolicy(
            max_attempts=3,
            sleep=sleeps.append,
            on_retry=lambda n, error, delay: retries.append((n, error, delay)),
        )
        with connect(server.target, retry=policy) as client:
            with pytest.raises(ResourceExhaustedError) as caught:
                client.segment_image(scene[0], "red")
        assert caught.value.retry_after is not None and caught.value.retry_after > 0
        assert caught.value.reason == "QUEUE_FULL" and caught.value.metadata["capacity"] == "1"
        assert [n for n, _, _ in retries] == [1, 2]
        assert all(isinstance(e, ResourceExhaustedError) for _, e, _ in retries)
        assert sleeps == [e.retry_after for _, e, _ in retries]  # the server's hint, as is
        assert all(d > 0 for d in sleeps)

        # A call that is not safe to repeat is never retried.
        sleeps.clear()
        with connect(server.target, retry=policy) as client:
            with pytest.raises(ResourceExhaustedError):
                client.add_prompt(session.session_id, 0, "red")
        assert sleeps == []

        # The second sleep frees the server, so the third attempt succeeds.
        sleeps.clear()

        def sleep_then_release(delay: float) -> None:
            sleeps.append(delay)
            if len(sleeps) == 2:
                gate.release()
                running.result(30)
                waiting.result(30)
                wait_until(lambda: queue_state(server).depth == 0)

        policy = RetryPolicy(max_attempts=5, sleep=sleep_then_release)
        with connect(server.target, retry=policy) as client:
            result = client.segment_image(scene[0], "red")
        assert np.array_equal(result[0][0].mask, scene[1])
        assert len(sleeps) == 2  # three attempts in all
        assert engine.calls["predict"] >= 3
    finally:
        gate.release()
        pool.shutdown(wait=True)


def test_no_retry_on_client_errors(client, scene, connect):
    sleeps = []
    with connect(client.target, retry=RetryPolicy(sleep=sleeps.append)) as retrying:
        with pytest.raises(InvalidArgumentError):
            retrying.segment_image(scene[0], "a dog")
    assert sleeps == []


def test_retry_policy_backoff_and_limits():
    policy = RetryPolicy(
        initial_backoff=1.0, multiplier=2.0, max_backoff=3.0, jitter=0.0, max_retry_after=10.0
    )
    assert [policy.delay(n, None) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, 0.25) == 0.25  # the server's hint wins
    assert policy.delay(1, 11.0) is None  # a hint longer than allowed: give up
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# ----- token, TLS-less metadata, and a fake flaky server -----------------------------------------
class FakeStatusServer:
    """A tiny grpc server answering GetServerStatus: records metadata, fails on demand;
    with server_credentials it serves TLS."""

    def __init__(
        self,
        failures: list[tuple[grpc.StatusCode, str]] = (),
        server_credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.failures = list(failures)
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
        handler = grpc.unary_unary_rpc_method_handler(
            self._status,
            request_deserializer=status_service_pb2.GetServerStatusRequest.FromString,
            response_serializer=status_service_pb2.GetServerStatusResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "sam3_grpc.v1.StatusService", {"GetServerStatus": handler}
                )
            ]
        )
        if server_credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", server_credentials)
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _status(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        if self.failures:
            code, message = self.failures.pop(0)
            context.abort(code, message)
        return status_service_pb2.GetServerStatusResponse(model_name="fake", ready=True)


def test_token_is_sent_as_bearer_metadata_and_unavailable_is_retried(connect):
    fake = FakeStatusServer([(grpc.StatusCode.UNAVAILABLE, "warming up")])
    try:
        sleeps = []
        with connect(fake.target, token="s3cret", retry=RetryPolicy(sleep=sleeps.append)) as client:
            status = client.status()
        assert status.model_name == "fake"
        assert len(fake.metadata) == 2 and len(sleeps) == 1
        assert all(m["authorization"] == "Bearer s3cret" for m in fake.metadata)
        with connect(fake.target) as client:
            client.status()
        assert "authorization" not in fake.metadata[-1]
    finally:
        fake.server.stop(None)


def test_tls_and_token_against_a_real_server(start_server, scene, tmp_path, connect):
    from certs import make_certificates

    from sam3_grpc.client import UnauthenticatedError

    certs = make_certificates(tmp_path)
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    server = start_server(
        SyntheticEngine(),
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        auth_token_file=str(tokens),
    )
    credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes())
    with connect(server.target, credentials=credentials, token="s3cret") as client:
        assert np.array_equal(client.segment_image(scene[0], "red")[0][0].mask, scene[1])
    with connect(server.target, credentials=credentials, token="wrong") as client:
        with pytest.raises(UnauthenticatedError) as caught:
            client.segment_image(scene[0], "red")
    assert "Bearer" in caught.value.message and caught.value.reason == "TOKEN_INVALID"


def test_plain_status_errors_without_rich_details(connect):
    fake = FakeStatusServer([(grpc.StatusCode.UNAUTHENTICATED, "bad token")])
    try:
        with connect(fake.target, retry=NO_RETRY) as client:
            with pytest.raises(Sam3Error) as caught:
                client.status()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert caught.value.message == "bad token" and not caught.value.from_server
        assert caught.value.reason is None
    finally:
        fake.server.stop(None)


# ----- several endpoints -------------------------------------------------------------------------
def test_pool_spreads_images_and_keeps_sessions_on_their_server(
    start_server, media_root, clip, scene
):
    engines = [SyntheticEngine(), SyntheticEngine()]
    servers = [start_server(e, media_roots=(media_root,)) for e in engines]
    targets = [s.target for s in servers]
    with Sam3Pool(targets) as pool:
        for _ in range(4):
            result = pool.segment_image(scene[0], ["red", "blue"])
            assert np.array_equal(result[1][0].mask, scene[2])
        assert [e.calls["predict"] for e in engines] == [1 + 2, 1 + 2]  # warm-up + 2 each

        first = pool.start_session(ServerPath("disc.avi"))
        second = pool.start_session(ServerPath("disc.avi"))
        assert {first.target, second.target} == set(targets)
        for session in (first, second):
            before = [e.calls["add_prompt"] for e in engines]
            pool.add_prompt(session.session_id, 0, "red")
            owner = targets.index(session.target)
            assert [e.calls["add_prompt"] - b for e, b in zip(engines, before, strict=True)] == [
                int(i == owner) for i in range(2)
            ]
            assert len(list(pool.propagate(session.session_id, max_frames=3))) == 3
        assert {s.session_id for s in pool.list_sessions()} == {first.session_id, second.session_id}
        # A pool that did not open the session finds its owner.
        with Sam3Pool(list(reversed(targets))) as other:
            assert other.owner_of(second.session_id) == second.target
            assert other.get_session(second.session_id).object_ids == [1]
        assert pool.close_session(first.session_id) and pool.close_session(second.session_id)
        assert pool.list_sessions() == []
        with pytest.raises(NotFoundError):
            pool.add_prompt("no-such-session", 0, "red")
        with pool.session(upload=clip[0]) as session:
            assert session.session_id in {s.session_id for s in pool.list_sessions()}
        assert pool.list_sessions() == []
        assert set(pool.health().values()) == {"SERVING"}
        assert [s.target for s in pool.status()] == targets


def test_pool_fails_over_past_an_unreachable_endpoint(synthetic_server, scene):
    sleeps = []
    with Sam3Pool(
        ["127.0.0.1:1", synthetic_server.target], retry=RetryPolicy(sleep=sleeps.append)
    ) as pool:
        for _ in range(3):
            assert np.array_equal(pool.segment_image(scene[0], "red")[0][0].mask, scene[1])
        assert sleeps == []  # failing over needs no wait
        assert pool.health() == {"127.0.0.1:1": "UNREACHABLE", synthetic_server.target: "SERVING"}
    with Sam3Pool("127.0.0.1:1", retry=RetryPolicy(max_attempts=2, sleep=sleeps.append)) as dead:
        with pytest.raises(UnavailableError):
            dead.segment_image(scene[0], "red")
    assert len(sleeps) == 1


def test_detection_mask_is_decoded_lazily_once():
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    counts = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    detection = Detection(1, 0.9, (2, 1, 4, 3), 4, width=5, height=4, rle_counts=counts)
    assert detection._mask is None
    assert np.array_equal(detection.mask, mask)
    assert detection.mask is detection.mask


def test_numpy_and_pil_images_encode_losslessly(client):
    from PIL import Image

    image = blank(64, 48)
    rect = draw_rect(image, 3, 4, 30, 20, RED)
    for source in (image, Image.fromarray(image), io.BytesIO(encode(image)).getvalue()):
        assert np.array_equal(client.segment_image(source, "red")[0][0].mask, rect)


# ----- asyncio specifics -----------------------------------------------------------------------
def test_async_client_retries_with_an_async_sleep():
    import asyncio

    from sam3_grpc.client import AsyncSam3Client

    fake = FakeStatusServer([(grpc.StatusCode.UNAVAILABLE, "warming up")] * 2)
    delays = []

    async def sleep(delay):
        delays.append(delay)

    async def scenario():
        async with AsyncSam3Client(
            fake.target, token="t", retry=RetryPolicy(sleep=sleep)
        ) as client:
            return await client.status()

    try:
        assert asyncio.run(scenario()).model_name == "fake"
        assert len(delays) == 2 and len(fake.metadata) == 3
        assert fake.metadata[-1]["authorization"] == "Bearer t"
    finally:
        fake.server.stop(None)


def test_both_clients_offer_the_same_methods_with_the_same_signatures():
    import inspect

    def public(cls) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in inspect.getmembers(cls, callable)
            if not name.startswith("_")
        }

    for sync_class, async_class in (
        (Sam3Client, AsyncSam3Client),
        (VideoSession, AsyncVideoSession),
    ):
        sync_methods, async_methods = public(sync_class), public(async_class)
        assert sync_methods.keys() == async_methods.keys()
        for name, signature in sync_methods.items():  # same parameters; returns differ in kind
            assert signature.parameters == async_methods[name].parameters, name


# ----- the routing header of a session behind Envoy ------------------------------------------
def test_the_routing_header_follows_a_session(connect):
    replica = FakeReplica()
    try:
        with connect(f"127.0.0.1:{replica.port}", retry=NO_RETRY) as client:
            with client.session(ServerPath("clip.mp4")) as session:
                assert session.info.route == "route-of-s1"
                session.add_prompt(0, "red")
                assert list(session.propagate()) == []
        calls = {c["method"]: c["route"] for c in replica.calls}
        assert calls["StartSession"] is None
        for method in ("AddPrompt", "Propagate", "CloseSession"):
            assert calls[method] == "route-of-s1", method
    finally:
        replica.stop()


def test_a_lost_replica_is_named_and_never_retried(connect):
    """Envoy says the pinned replica is gone (UNAVAILABLE local reply, or a stream reset): the
    client raises ReplicaLostError, not a retryable UNAVAILABLE; the same reply on a call that
    is not pinned, or a proxy that cannot be reached, stays a plain UnavailableError."""
    replica = FakeReplica()
    try:
        with connect(f"127.0.0.1:{replica.port}") as client:
            session = client.start_session(ServerPath("lost.mp4"))
            assert session.route == "route-of-lost"
            with pytest.raises(ReplicaLostError) as lost:
                client.get_session("lost")
            assert lost.value.code == grpc.StatusCode.UNAVAILABLE
            assert lost.value.reason == "REPLICA_LOST"
            assert "'lost'" in lost.value.message and "start a new session" in lost.value.message
            with pytest.raises(ReplicaLostError, match="RST_STREAM"):
                list(client.propagate("lost"))
        gets = [c for c in replica.calls if c["method"] == "GetSession"]
        assert len(gets) == 1  # GetSession is safe, but a lost replica is not retried
    finally:
        replica.stop()
    with connect("127.0.0.1:1", retry=NO_RETRY) as unreachable:
        unreachable.routes.set("lost", "route-of-lost")  # pinned, but the proxy is down
        with pytest.raises(UnavailableError) as caught:
            unreachable.get_session("lost", timeout=5)
        assert not isinstance(caught.value, ReplicaLostError)
        assert caught.value.connection_failed
