"""Prometheus metrics move with load; one structured log line per call."""

from __future__ import annotations

import json
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import RED, blank, draw_rect, encode
from test_video import disc_clip, upload, write_video

from sam3_grpc.cli.serve_process import ServeProcess
from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as pb

SEGMENT = "/sam3_grpc.v1.SegmentationService/SegmentImage"


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def request(seed: int) -> pb.SegmentImageRequest:
    image = blank(40, 30)
    draw_rect(image, 5, 5, 15, 15, RED)
    image[0, 0] = (seed, 0, 0)
    return pb.SegmentImageRequest(
        image=common_pb2.Image(content=encode(image)), prompts=[common_pb2.Prompt(text="red")]
    )


def test_metrics_move_with_load(start_server, tmp_path):
    server = start_server(SyntheticEngine(), metrics_port=0, queue_size=5)
    port = server.server.metrics_port
    before = scrape(port)
    assert before["sam3_grpc_queue_capacity"] == 5
    assert before["sam3_grpc_ready"] == 1
    for seed in (1, 2, 1):
        server.segmentation.SegmentImage(request(seed), timeout=10)
    try:
        server.segmentation.SegmentImage(pb.SegmentImageRequest(), timeout=10)
    except grpc.RpcError:
        pass
    session = upload(server, write_video(tmp_path / "m.avi", disc_clip(frames=3)[0]))
    after = scrape(port)
    ok = f'sam3_grpc_requests_total{{code="OK",method="{SEGMENT}"}}'
    bad = f'sam3_grpc_requests_total{{code="INVALID_ARGUMENT",method="{SEGMENT}"}}'
    assert after[ok] - before.get(ok, 0) == 3
    assert after[bad] == 1
    assert after[f'sam3_grpc_request_duration_seconds_count{{method="{SEGMENT}"}}'] >= 4
    assert (
        after['sam3_grpc_cache_lookups_total{result="hit"}']
        - before['sam3_grpc_cache_lookups_total{result="hit"}']
        == 1
    )
    assert (
        after['sam3_grpc_cache_lookups_total{result="miss"}']
        - before['sam3_grpc_cache_lookups_total{result="miss"}']
        == 2
    )
    assert after["sam3_grpc_sessions_active"] == 1
    assert after["sam3_grpc_upload_bytes_total"] == session_size(tmp_path / "m.avi")
    assert (
        after['sam3_grpc_jobs_total{outcome="completed"}']
        > before['sam3_grpc_jobs_total{outcome="completed"}']
    )
    assert after["sam3_grpc_queue_wait_seconds_count"] >= 3
    assert after["sam3_grpc_executor_busy_seconds_total"] > 0
    assert after["sam3_grpc_device_memory_used_bytes"] > 0
    assert session.session_id


def session_size(path) -> int:
    return path.stat().st_size


def test_json_call_log_has_one_line_per_call():
    with ServeProcess(["--model", "synthetic", "--log-format", "json"]) as server:
        with grpc.insecure_channel(server.wait_ready(60).target) as channel:
            from sam3_grpc.v1 import segmentation_service_pb2_grpc as pb_grpc

            pb_grpc.SegmentationServiceStub(channel).SegmentImage(request(3), timeout=10)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert server.stop() == 0
    entries = [json.loads(line) for line in server.lines]  # every line is JSON
    calls = [entry for entry in entries if entry["logger"] == "sam3_grpc.calls"]
    (call,) = calls  # health checks log at DEBUG only
    assert call["method"] == SEGMENT and call["code"] == "OK"
    assert call["duration_ms"] > 0 and call["peer"].startswith("ipv4:127.0.0.1")
