"""grpc.health.v1: readiness, load shedding with hysteresis (per service), drain and shutdown;
reflection listing."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import grpc
import pytest
from conftest import launch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import Gate
from test_executor import segment_request, wait_until

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.server.app import SERVICE_NAMES

SEGMENTATION, VIDEO, STATUS = SERVICE_NAMES

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(server, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


class SlowLoadingEngine(SyntheticEngine):
    def __init__(self) -> None:
        super().__init__()
        self.may_load = threading.Event()

    def load(self) -> None:
        assert self.may_load.wait(60)
        super().load()


def test_health_lifecycle_from_loading_to_shutdown():
    engine = SlowLoadingEngine()
    server = launch(engine, wait_ready=False, queue_size=4)
    try:
        watch_channel = grpc.insecure_channel(server.target)
        watcher = health_pb2_grpc.HealthStub(watch_channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAMES[0])
        )
        seen: queue.Queue = queue.Queue()

        def follow() -> None:
            try:
                for reply in watcher:
                    seen.put(reply.status)
            except grpc.RpcError:
                pass  # the server went away

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        assert seen.get(timeout=10) == NOT_SERVING
        # Loading: not serving, and calls are refused with UNAVAILABLE.
        wait_until(lambda: check(server) == NOT_SERVING)
        with pytest.raises(grpc.RpcError) as refused:
            server.segmentation.SegmentImage(segment_request(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in refused.value.details()
        engine.may_load.set()
        wait_until(lambda: check(server) == SERVING)
        assert seen.get(timeout=10) == SERVING
        for name in SERVICE_NAMES:
            assert check(server, name) == SERVING

        # Load shedding: NOT_SERVING while the queue is full, SERVING once below half.
        gate = Gate(names=("encode_image",))
        engine.before_call = gate
        futures = [server.segmentation.SegmentImage.future(segment_request(1))]
        gate.wait_entered()
        futures += [
            server.segmentation.SegmentImage.future(segment_request(i)) for i in range(2, 6)
        ]
        wait_until(lambda: check(server) == NOT_SERVING)
        assert seen.get(timeout=10) == NOT_SERVING
        assert check(server, SEGMENTATION) == NOT_SERVING
        # Only new image work is shed: a session lives here, so its calls must keep coming.
        assert check(server, VIDEO) == SERVING
        assert check(server, STATUS) == SERVING
        gate.release()
        for future in futures:
            future.result(timeout=30)
        wait_until(lambda: check(server) == SERVING)
        assert seen.get(timeout=10) == SERVING
    finally:
        engine.may_load.set()
        server.stop()
    # Shutdown: the watcher saw NOT_SERVING before the stream ended.
    follower.join(10)
    watch_channel.close()
    statuses = []
    while not seen.empty():
        statuses.append(seen.get())
    assert statuses[-1:] == [NOT_SERVING]


def test_unknown_service_is_not_found(synthetic_server):
    stub = health_pb2_grpc.HealthStub(synthetic_server.channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_every_service(synthetic_server):
    stub = reflection_pb2_grpc.ServerReflectionStub(synthetic_server.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert (
        set(SERVICE_NAMES) | {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        <= names
    )


def test_a_load_longer_than_the_job_timeout_is_not_a_wedged_engine():
    engine = SlowLoadingEngine()
    server = launch(engine, wait_ready=False, job_timeout_s=0.2)
    try:
        threading.Timer(1.0, engine.may_load.set).start()  # load takes 5x the job timeout
        seen_wedged = False
        while check(server) != SERVING:
            seen_wedged |= server.server.executor.wedged
            time.sleep(0.01)
        assert not seen_wedged
        assert server.segmentation.SegmentImage(segment_request(), timeout=10).results
    finally:
        engine.may_load.set()
        server.stop()


def test_drain_delay_turns_every_service_not_serving_while_calls_are_still_served():
    engine = SyntheticEngine()
    server = launch(engine, drain_delay_s=30.0)
    try:
        for name in ("", *SERVICE_NAMES):
            assert check(server, name) == SERVING
        stopping = asyncio.run_coroutine_threadsafe(server.server.stop(1.0), server.loop)
        wait_until(lambda: check(server) == NOT_SERVING)
        for name in SERVICE_NAMES:
            assert check(server, name) == NOT_SERVING
        # Draining: a balancer is taking this replica out, but a call that still arrives is
        # served rather than refused.
        assert server.segmentation.SegmentImage(segment_request(3), timeout=10).results
        assert not stopping.done()
        server.server.cut_drain()  # what a second SIGTERM does
        stopping.result(30)
        with pytest.raises(grpc.RpcError) as refused:
            server.segmentation.SegmentImage(segment_request(4), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
