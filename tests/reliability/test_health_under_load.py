"""Health keeps answering (within 1 s) while the device and every stream are busy."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import grpc
from helpers import Gate
from reliability_support import SERVING, health, small_clip, wait_for
from test_executor import queue_status, segment_request
from test_video import add_text, upload, upload_requests

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.server.app import SERVICE_NAMES
from sam3_grpc.v1 import status_service_pb2
from sam3_grpc.v1 import video_service_pb2 as pb
from sam3_grpc.v1.video_service_pb2_grpc import VideoServiceStub

STREAMS = 6


def _poll(channel, rounds: int = 10) -> list[int]:
    statuses = []
    for i in range(rounds):
        # The 1 s deadline is the liveness bound: a late answer fails the call.
        statuses.append(health(channel, SERVICE_NAMES[i % len(SERVICE_NAMES)], timeout=1.0))
        time.sleep(0.03)
    return statuses


def test_health_answers_while_every_worker_is_busy(start_server, tmp_path):
    engine = SyntheticEngine(latency_ms=5)
    server = start_server(
        engine, max_sessions=STREAMS + 2, stream_buffer_frames=2, max_concurrent_uploads=1
    )
    clip = small_clip(tmp_path / "long.avi", frames=60)
    with open(clip, "rb") as handle:
        clip_bytes = handle.read()
    sessions = [upload(server, clip).session_id for _ in range(STREAMS)]
    for sid in sessions:
        add_text(server, sid)
    probe_channel = grpc.insecure_channel(server.target)
    gate = Gate(names=("propagate_step", "encode_image"))
    engine.before_call = gate
    # Readers that take a frame every 50 ms: propagation is paced by backpressure.
    channels = [grpc.insecure_channel(server.target) for _ in sessions]
    streams = [
        VideoServiceStub(channel).Propagate(pb.PropagateRequest(session_id=sid), timeout=60)
        for channel, sid in zip(channels, sessions, strict=True)
    ]
    read = [0] * STREAMS
    stop = threading.Event()

    def slow_reader(index: int) -> None:
        try:
            for _ in streams[index]:
                read[index] += 1
                if stop.wait(0.05):
                    return
        except grpc.RpcError:
            pass

    stalled_sent = threading.Event()

    def stalled_upload():
        messages = upload_requests(clip_bytes)
        yield next(messages)
        yield next(messages)
        stalled_sent.set()
        stop.wait(30)

    pool = concurrent.futures.ThreadPoolExecutor(STREAMS + 2, thread_name_prefix="busy")
    try:
        readers = [pool.submit(slow_reader, i) for i in range(STREAMS)]
        stalled = server.video.UploadVideo.future(stalled_upload(), timeout=60)
        images = [
            server.segmentation.SegmentImage.future(segment_request(i), timeout=60)
            for i in range(4)
        ]
        # Phase 1: the device is held; every stream and the upload slot are taken.
        gate.wait_entered()
        assert stalled_sent.wait(10)
        wait_for(
            lambda: queue_status(server).depth >= STREAMS - 1 + len(images),
            what="work queued behind the held device",
        )
        assert _poll(probe_channel) == [SERVING] * 10
        status = server.status.GetServerStatus(
            status_service_pb2.GetServerStatusRequest(), timeout=1.0
        )
        assert status.queue.running == 1 and status.active_sessions == STREAMS
        # Phase 2: released, six propagations run paced by slow readers while images queue.
        gate.release()
        wait_for(lambda: min(read) >= 2, what="every stream moving")
        assert _poll(probe_channel) == [SERVING] * 10
        assert all(f.result(timeout=30).results for f in images)
    finally:
        gate.release()
        stop.set()
        for stream in streams:
            stream.cancel()
        pool.shutdown(wait=True)
        for channel in channels:
            channel.close()
    assert all(r.exception() is None for r in readers)
    assert stalled.cancelled() or stalled.exception() is not None
    assert health(probe_channel) == SERVING
    probe_channel.close()
