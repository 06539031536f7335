"""The device executor through a real server: bounded queue, deadlines, cancellation, faults."""

from __future__ import annotations

import math
import time

import grpc
import pytest
from helpers import RED, Gate, blank, draw_rect, encode, retry_info

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import common_pb2, status_service_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as pb

IMAGE = blank(64, 48)
draw_rect(IMAGE, 4, 4, 20, 20, RED)


def segment_request(seed: int = 0) -> pb.SegmentImageRequest:
    image = IMAGE.copy()
    image[-1, -1] = (seed % 256, seed // 256 % 256, 7)  # a distinct image: no cache hits
    return pb.SegmentImageRequest(
        image=common_pb2.Image(content=encode(image)), prompts=[common_pb2.Prompt(text="red")]
    )


def queue_status(server) -> status_service_pb2.QueueStatus:
    return server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest()).queue


def wait_until(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition never became true"
        time.sleep(0.01)


@pytest.fixture
def held_server(start_server):
    """A server with queue capacity 2 whose engine holds every encode until released."""
    engine = SyntheticEngine()
    server = start_server(engine, queue_size=2)
    gate = Gate(names=("encode_image",))
    engine.before_call = gate
    yield server, engine, gate
    gate.release()


def test_full_queue_is_rejected_at_once_with_retry_info(held_server):
    server, engine, gate = held_server
    stub = server.segmentation
    running = stub.SegmentImage.future(segment_request(1))
    gate.wait_entered()
    queued = [stub.SegmentImage.future(segment_request(i)) for i in (2, 3)]
    wait_until(lambda: queue_status(server).depth == 2)
    with pytest.raises(grpc.RpcError) as caught:
        stub.SegmentImage(segment_request(4), timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in error.details()
    info = retry_info(error)
    assert info is not None and info.retry_delay.ToNanoseconds() > 0
    # The same delay for what cannot read RetryInfo: gRPC's pushback trailer in ms, and
    # `retry-after` in whole seconds rounded up (read by Envoy's rate-limited retry back-off).
    trailers = dict(error.trailing_metadata())
    delay_ms = info.retry_delay.ToNanoseconds() / 1e6
    assert abs(int(trailers["grpc-retry-pushback-ms"]) - delay_ms) <= 1
    assert int(trailers["retry-after"]) == max(1, math.ceil(delay_ms / 1000))
    gate.release()
    for future in [running, *queued]:
        assert len(future.result(timeout=30).results[0].detections) == 1
    status = queue_status(server)
    assert status.rejected == 1
    assert engine.calls["encode_image"] == 1 + 3  # warm-up + the three accepted requests


def test_request_whose_deadline_passes_in_the_queue_never_runs(held_server):
    server, engine, gate = held_server
    stub = server.segmentation
    running = stub.SegmentImage.future(segment_request(1))
    gate.wait_entered()
    doomed = stub.SegmentImage.future(segment_request(2), timeout=0.5)
    with pytest.raises(grpc.RpcError) as caught:
        doomed.result(timeout=30)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    encodes_before_release = engine.calls["encode_image"]
    gate.release()
    running.result(timeout=30)
    wait_until(lambda: queue_status(server).dropped == 1)
    # The expired job was dropped: only the running one reached the engine.
    assert engine.calls["encode_image"] == encodes_before_release
    assert queue_status(server).depth == 0


def test_cancelled_request_never_runs(held_server):
    server, engine, gate = held_server
    stub = server.segmentation
    running = stub.SegmentImage.future(segment_request(1))
    gate.wait_entered()
    victim = stub.SegmentImage.future(segment_request(2))
    wait_until(lambda: queue_status(server).depth == 1)
    assert victim.cancel()
    # The cancellation reaches the server asynchronously; wait until its job is marked.
    executor = server.server.executor
    wait_until(lambda: all(job.abandoned for job in list(executor._queue)))
    encodes = engine.calls["encode_image"]
    gate.release()
    running.result(timeout=30)
    wait_until(lambda: queue_status(server).dropped == 1)
    assert engine.calls["encode_image"] == encodes
    # The server stays healthy and serves the next request.
    assert stub.SegmentImage(segment_request(3), timeout=30).results


def test_cancelling_a_wait_on_internal_work_keeps_the_device_thread(held_server, tmp_path):
    """A CloseSession whose caller gives up while the close waits behind a running job: the
    close still runs, and the device thread survives to serve the next request."""
    from helpers import disc_clip, write_video

    from sam3_grpc.client import Sam3Client
    from sam3_grpc.client.errors import DeadlineExceededError

    server, _engine, gate = held_server
    images, _ = disc_clip(frames=4)
    with Sam3Client(server.target) as client:
        session = client.upload_video(write_video(tmp_path / "clip.avi", images))
        running = server.segmentation.SegmentImage.future(segment_request(1))
        gate.wait_entered()
        with pytest.raises(DeadlineExceededError):
            client.close_session(session.session_id, timeout=0.5)
        gate.release()
        assert running.result(timeout=30).results
        assert client.list_sessions() == []
        assert server.segmentation.SegmentImage(segment_request(2), timeout=10).results


def test_engine_exception_fails_only_that_call(start_server):
    engine = SyntheticEngine()
    server = start_server(engine)
    failures = {"predict": 1}

    def explode_once(name: str) -> None:
        if failures.get(name):
            failures[name] -= 1
            raise RuntimeError("simulated engine fault /secret/path.py line 42")

    engine.before_call = explode_once
    with pytest.raises(grpc.RpcError) as caught:
        server.segmentation.SegmentImage(segment_request(1), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "error id" in caught.value.details()
    assert "secret" not in caught.value.details()  # nothing internal leaks
    reply = server.segmentation.SegmentImage(segment_request(2), timeout=30)
    assert len(reply.results[0].detections) == 1


def test_out_of_memory_becomes_resource_exhausted(start_server):
    engine = SyntheticEngine()
    server = start_server(engine)

    class OutOfMemoryError(RuntimeError):  # the name torch.cuda.OutOfMemoryError has
        pass

    def oom(name: str) -> None:
        if name == "encode_image":
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    engine.before_call = oom
    with pytest.raises(grpc.RpcError) as caught:
        server.segmentation.SegmentImage(segment_request(1), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_info(caught.value) is not None
    engine.before_call = None
    assert server.segmentation.SegmentImage(segment_request(2), timeout=30).results


def test_status_counters_move_with_load(start_server):
    engine = SyntheticEngine()
    server = start_server(engine, queue_size=4)
    before = server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest())
    assert before.ready and before.model_kind == status_service_pb2.MODEL_KIND_SYNTHETIC
    assert before.queue.capacity == 4
    gate = Gate(names=("encode_image",))
    engine.before_call = gate
    futures = [server.segmentation.SegmentImage.future(segment_request(i)) for i in range(3)]
    gate.wait_entered()
    wait_until(lambda: queue_status(server).depth == 2)
    busy = queue_status(server)
    assert busy.running == 1
    gate.release()
    for future in futures:
        future.result(timeout=30)
    after = server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest())
    assert after.queue.completed == before.queue.completed + 3
    assert after.queue.depth == 0 and after.queue.running == 0
    assert after.cache.misses == before.cache.misses + 3
    assert after.uptime.ToNanoseconds() > before.uptime.ToNanoseconds()
    assert after.memory.used_bytes > 0 and after.memory.total_bytes >= after.memory.used_bytes
