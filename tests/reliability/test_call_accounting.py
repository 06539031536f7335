"""Every call is accounted for with the status its client saw (issue 10, items 15, 17 and 19):
cancelled uploads count as CANCELLED, calls past the per-connection limit are refused with a
status clients handle (and counted), and a shutdown with health watchers logs no error."""

from __future__ import annotations

import random
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability_support import small_clip, wait_for
from test_hostile_media import reason_of

from sam3_grpc.cli.serve_process import ServeProcess
from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import common_pb2, status_service_pb2, status_service_pb2_grpc
from sam3_grpc.v1 import segmentation_service_pb2 as seg_pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as seg_grpc
from sam3_grpc.v1 import video_service_pb2 as pb

UPLOAD = "/sam3_grpc.v1.VideoService/UploadVideo"


def counted(server, method: str, code: str) -> float:
    return (
        server.server.metrics.registry.get_sample_value(
            "sam3_grpc_requests_total", {"method": method, "code": code}
        )
        or 0.0
    )


# ----- item 15: cancelled uploads are CANCELLED ------------------------------------------------
def test_cancelled_uploads_are_counted_as_cancelled(start_server, tmp_path):
    server = start_server(SyntheticEngine(), upload_dir=str(tmp_path / "uploads"))
    data = open(small_clip(tmp_path / "clip.avi", frames=6), "rb").read()  # noqa: SIM115
    rng = random.Random(15)

    def requests(cut: int):
        yield pb.UploadVideoRequest(
            metadata=pb.UploadVideoMetadata(filename="c.avi", size_bytes=len(data))
        )
        for offset in range(0, len(data), 1024):
            if offset >= cut:
                time.sleep(5)  # the client cancels meanwhile
            yield pb.UploadVideoRequest(chunk=data[offset : offset + 1024])

    calls = []
    for _ in range(30):
        call = server.video.UploadVideo.future(requests(rng.randrange(len(data))), timeout=30)
        time.sleep(rng.uniform(0.0, 0.05))
        call.cancel()
        calls.append(call)
    # (A call cancelled before it reached the server is no call of the server's.)
    wait_for(
        lambda: (
            server.server.sessions.uploads_in_progress == 0
            and sum(counted(server, UPLOAD, c) for c in ("CANCELLED", "OK", "UNKNOWN")) >= 20
        ),
        what="the uploads accounted for",
    )
    time.sleep(0.5)
    assert counted(server, UPLOAD, "UNKNOWN") == 0
    assert counted(server, UPLOAD, "CANCELLED") >= 10


# ----- item 17: many calls on one connection ---------------------------------------------------
def test_calls_past_the_per_connection_limit_are_refused_and_counted(start_server):
    engine = SyntheticEngine(latency_ms=300)  # each image call holds the device a while
    server = start_server(engine, max_calls_per_connection=8, queue_size=256)
    image = common_pb2.Image(content=_tiny_png())
    request = seg_pb.SegmentImageRequest(image=image, prompts=[common_pb2.Prompt(text="red")])
    with grpc.insecure_channel(server.target) as channel:
        stub = seg_grpc.SegmentationServiceStub(channel)
        calls = [stub.SegmentImage.future(request, timeout=60) for _ in range(20)]
        outcomes = []
        for call in calls:
            try:
                call.result()
                outcomes.append("OK")
            except grpc.RpcError as error:
                outcomes.append((error.code(), reason_of(error)))
    refused = [o for o in outcomes if o != "OK"]
    assert outcomes.count("OK") >= 8
    assert refused and set(refused) == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CALLS")}
    method = "/sam3_grpc.v1.SegmentationService/SegmentImage"
    wait_for(
        lambda: counted(server, method, "RESOURCE_EXHAUSTED") == len(refused),
        what="refusals counted",
    )
    # Probes are never refused, and a second connection has its own allowance.
    with grpc.insecure_channel(server.target) as other:
        status = status_service_pb2_grpc.StatusServiceStub(other).GetServerStatus(
            status_service_pb2.GetServerStatusRequest(), timeout=10
        )
        assert status.ready


def _tiny_png() -> bytes:
    from helpers import RED, blank, draw_rect, encode

    image = blank(16, 16)
    draw_rect(image, 2, 2, 6, 6, RED)
    return encode(image)


# ----- item 19: shutting down with health watchers ---------------------------------------------
def test_a_shutdown_with_live_health_watchers_logs_no_error():
    endings: list[str] = []
    with ServeProcess(["--model", "synthetic", "--grace", "1"]) as server:
        channel = grpc.insecure_channel(server.wait_ready(30).target)
        stub = health_pb2_grpc.HealthStub(channel)

        def watch(service: str) -> None:
            stream = stub.Watch(health_pb2.HealthCheckRequest(service=service))
            try:
                for _ in stream:
                    pass
                endings.append("ended")
            except grpc.RpcError as error:
                endings.append(error.code().name)

        watchers = [
            threading.Thread(target=watch, args=(name,), daemon=True)
            for name in ("", "sam3_grpc.v1.VideoService", "sam3_grpc.v1.SegmentationService")
        ]
        for watcher in watchers:
            watcher.start()
        time.sleep(0.5)
        code = server.stop(timeout=30)
    for watcher in watchers:
        watcher.join(10)
    channel.close()
    log = server.log()
    assert code == 0, log
    assert len(endings) == 3
    assert " ERROR " not in log and "Traceback" not in log, log
