"""Scale-out acceptance: three synthetic replicas behind a real Envoy, all on loopback.

Each cluster is `sam3-grpc cluster` as an operator runs it (replica processes, Envoy generated
from deploy/envoy/envoy.yaml). Counts come from the replicas' own Prometheus counters and
ListSessions, and from Envoy's admin stats. Sessions are driven by the Python client, which
keeps each session's routing header itself; a few tests use raw stubs carrying the header
(`ReplicaPin`) to show the protocol any client must follow.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
from collections import Counter

import grpc
import pytest
from scale_out_support import (
    NOT_SERVING,
    SERVING,
    ClusterProcess,
    ReplicaPin,
    clip_bytes,
    needs_envoy,
    upload_via,
    wait_for,
)
from test_executor import segment_request

from sam3_grpc.client import NotFoundError, ReplicaLostError, Sam3Client
from sam3_grpc.v1 import common_pb2, segmentation_service_pb2_grpc
from sam3_grpc.v1 import video_service_pb2 as pb

pytestmark = [pytest.mark.envoy, needs_envoy]

SEGMENTATION = "sam3_grpc.v1.SegmentationService"
VIDEO = "sam3_grpc.v1.VideoService"
VIDEO_METHOD = "/sam3_grpc.v1.VideoService/"
SESSION_LOST = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> pathlib.Path:
    """A media root shared by the replicas (as a shared volume would be), for StartSession."""
    root = tmp_path_factory.mktemp("media")
    clip_bytes(root / "clip.avi", frames=12)
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, media):
    running = ClusterProcess(
        tmp_path_factory.mktemp("cluster"),
        3,
        "--synthetic-latency-ms",
        "10",
        "--media-root",
        str(media),
        drain_delay=1,
    ).wait_ready()
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
def new_cluster(tmp_path):
    """A cluster of one's own, for tests that overload, restart or kill replicas."""
    started: list[ClusterProcess] = []

    def start(*serve_args: str, **flags) -> ClusterProcess:
        running = ClusterProcess(tmp_path / f"c{len(started)}", 3, *serve_args, **flags)
        started.append(running)
        return running.wait_ready()

    yield start
    for running in started:
        assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    return clip_bytes(tmp_path_factory.mktemp("clips") / "clip.avi", frames=12)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> bytes:
    return clip_bytes(tmp_path_factory.mktemp("clips") / "long.avi", frames=300)


def prompt(session_id: str, text: str = "red") -> pb.AddPromptRequest:
    return pb.AddPromptRequest(session_id=session_id, prompt=common_pb2.Prompt(text=text))


class ImageLoad:
    """Threads sending SegmentImage (distinct images: no cache hits) until stopped, bounded in
    count, recording every outcome. With `pause_when_full`, a RESOURCE_EXHAUSTED is expected
    (the load is meant to fill a queue): counted, then retried after that pause."""

    def __init__(
        self,
        stub,
        threads: int = 3,
        max_calls: int = 3000,
        first_seed: int = 0,
        pause_when_full: float | None = None,
        pause: float = 0.005,
    ) -> None:
        self.stub = stub
        self.ok = 0
        self.full = 0
        self.errors: list[tuple[grpc.StatusCode, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._max = max_calls
        self._seed = first_seed
        self._pause = pause_when_full
        self._between = pause  # leaves the 2 cores some room for the replicas and Envoy
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> ImageLoad:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._sent >= self._max:
                    return
                self._sent += 1
                seed = self._seed + self._sent
            try:
                self.stub.SegmentImage(segment_request(seed), timeout=20)
                with self._lock:
                    self.ok += 1
                self._stop.wait(self._between)
            except grpc.RpcError as error:
                full = error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                with self._lock:
                    if full and self._pause is not None:
                        self.full += 1
                    else:
                        self.errors.append((error.code(), error.details()))
                if full and self._pause is not None:
                    self._stop.wait(self._pause)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


# ----- balancing ----------------------------------------------------------------------------
def test_image_calls_are_spread_over_the_replicas(cluster):
    before = {port: cluster.served(port) for port in cluster.ports}
    with ImageLoad(cluster.segmentation, threads=6, max_calls=300) as load:
        wait_for(lambda: load.ok + len(load.errors) >= 300, 50, "300 calls answered")
    assert load.errors == [] and load.ok == 300
    share = {port: (cluster.served(port) - before[port]) / 300 for port in cluster.ports}
    assert sum(share.values()) == pytest.approx(1.0)  # each call served exactly once
    assert all(0.20 <= s <= 0.47 for s in share.values()), share


def test_every_call_of_a_session_reaches_its_replica(cluster, clip, tmp_path):
    """Ten sessions driven through Envoy by the Python client, which keeps each session's
    routing header itself: upload, prompt, propagate, get, close."""
    methods = ("AddPrompt", "Propagate", "GetSession", "CloseSession")
    before = {
        port: {m: cluster.served(port, VIDEO_METHOD + m) for m in methods} for port in cluster.ports
    }
    retries_before = cluster.retries("sam3_video")
    (tmp_path / "clip.avi").write_bytes(clip)
    sessions: dict[str, int] = {}  # session id -> the port of its replica
    with Sam3Client(f"127.0.0.1:{cluster.info['port']}") as client:
        for _ in range(10):
            session = client.upload_video(tmp_path / "clip.avi")
            assert session.route is not None
            sessions[session.session_id] = ReplicaPin(session.route).port
            assert client.add_prompt(session.session_id, 0, "red").object_ids == [1]
            assert len(list(client.propagate(session.session_id))) == 12
            assert client.get_session(session.session_id).route == session.route
        # Each replica holds exactly the sessions whose header names it.
        by_port = Counter(sessions.values())
        assert len(by_port) >= 2, by_port  # new sessions are balanced, not all on one replica
        for port in cluster.ports:
            assert cluster.sessions_on(port) == {s for s, p in sessions.items() if p == port}
        for session_id in sessions:
            assert client.close_session(session_id)
    # Every call was served once, by the replica of its session: no retry, no NOT_FOUND.
    for port in cluster.ports:
        for method in methods:
            served = cluster.served(port, VIDEO_METHOD + method) - before[port][method]
            assert served == by_port[port], (port, method)
            assert cluster.served(port, VIDEO_METHOD + method, "NOT_FOUND") == 0
        assert cluster.sessions_on(port) == set()
    assert cluster.retries("sam3_video") == retries_before


def test_sessions_started_from_a_server_path_are_pinned_too(cluster):
    """StartSession (a file on the replicas' shared media root) is pinned like an upload; raw
    stubs here, to show the protocol any client must follow."""
    video = cluster.video
    started = {}
    for _ in range(4):
        reply, call = video.StartSession.with_call(
            pb.StartSessionRequest(video_path="clip.avi"), timeout=30
        )
        started[reply.session.session_id] = ReplicaPin.of(call)
    for session_id, pin in started.items():
        assert session_id in cluster.sessions_on(pin.port)
        video.AddPrompt(prompt(session_id), metadata=pin.metadata, timeout=10)
        frames = video.Propagate(
            pb.PropagateRequest(session_id=session_id), metadata=pin.metadata, timeout=30
        )
        assert len(list(frames)) == 12
        video.CloseSession(
            pb.CloseSessionRequest(session_id=session_id), metadata=pin.metadata, timeout=10
        )
    assert all(cluster.sessions_on(port) == set() for port in cluster.ports)


def test_a_stale_routing_header_fails_fast_and_never_reaches_another_replica(cluster, clip):
    session_id, pin = upload_via(cluster.video, clip)
    gone = ReplicaPin("MTI3LjAuMC4xOjE=")  # base64 "127.0.0.1:1": no such replica
    with pytest.raises(grpc.RpcError) as caught:
        cluster.video.GetSession(
            pb.GetSessionRequest(session_id=session_id), metadata=gone.metadata, timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "session cannot move" in caught.value.details()
    # Image calls ignore the header (never pinned).
    assert cluster.segmentation.SegmentImage(
        segment_request(7), metadata=gone.metadata, timeout=10
    ).results
    cluster.video.CloseSession(
        pb.CloseSessionRequest(session_id=session_id), metadata=pin.metadata, timeout=10
    )


# ----- load shedding ------------------------------------------------------------------------
def test_a_shedding_replica_gets_no_image_calls_but_keeps_its_sessions(new_cluster, clip):
    # Long device steps (150 ms per image) and a short queue (3), so a few clients fill it.
    cluster = new_cluster("--queue-size", "3", "--synthetic-latency-ms", "150", drain_delay=1)
    video = cluster.video
    session_id, pin = upload_via(video, clip)
    video.AddPrompt(prompt(session_id), metadata=pin.metadata, timeout=10)
    busy = pin.port
    others = [port for port in cluster.ports if port != busy]
    served_before = {port: cluster.served(port) for port in cluster.ports}

    # Other clients, connected to the busy replica directly, keep its queue full: 8 callers
    # for 1 running + 3 waiting; a refused one waits 50 ms and tries again.
    direct = cluster.direct(busy)
    flood = ImageLoad(
        segmentation_service_pb2_grpc.SegmentationServiceStub(direct),
        threads=8,
        first_seed=10_000,
        pause_when_full=0.05,
    )
    with flood:
        wait_for(lambda: cluster.health(busy, SEGMENTATION) == NOT_SERVING, 20, "shedding")
        assert cluster.health(busy, VIDEO) == SERVING
        wait_for(lambda: not cluster.in_rotation("sam3_image", busy), 10, "out of rotation")
        assert cluster.in_rotation("sam3_video", busy)

        before = {port: cluster.served(port) for port in others}
        for seed in range(20):
            assert cluster.segmentation.SegmentImage(segment_request(seed), timeout=20).results
        still_shedding = cluster.health(busy, SEGMENTATION) == NOT_SERVING
        assert still_shedding, "the flood ended too early for this test to mean anything"
        assert sum(cluster.served(p) - before[p] for p in others) == 20

        # Its session is still served by it: found there, and a prompt reaches it (accepted,
        # or refused by that replica's own full queue; never UNAVAILABLE from Envoy, never
        # NOT_FOUND from another replica).
        got = video.GetSession(
            pb.GetSessionRequest(session_id=session_id), metadata=pin.metadata, timeout=10
        )
        assert got.session.session_id == session_id
        listed = video.ListSessions(pb.ListSessionsRequest(), metadata=pin.metadata, timeout=10)
        assert {s.session_id for s in listed.sessions} == {session_id}
        error = failure_of(
            lambda: video.AddPrompt(prompt(session_id), metadata=pin.metadata, timeout=10)
        )
        if error is not None:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert "queue is full" in error.details()
    direct.close()
    assert flood.errors == [] and flood.full > 0, flood.errors[:3]
    # Every image call the busy replica served came from the flood, none through Envoy.
    assert cluster.served(busy) - served_before[busy] == flood.ok

    wait_for(lambda: cluster.in_rotation("sam3_image", busy), 20, "back in rotation")
    video.AddPrompt(prompt(session_id), metadata=pin.metadata, timeout=10)
    frames = video.Propagate(
        pb.PropagateRequest(session_id=session_id), metadata=pin.metadata, timeout=60
    )
    assert len(list(frames)) == 12
    assert cluster.served(busy, VIDEO_METHOD + "Propagate") == 1
    assert cluster.retries("sam3_video") == 0


def failure_of(call) -> grpc.RpcError | None:
    """The error a call ended with, or None if it succeeded."""
    try:
        call()
    except grpc.RpcError as error:
        return error
    return None


# ----- restarts and crashes -----------------------------------------------------------------
def test_rolling_restart_under_load_loses_no_image_call(new_cluster, clip):
    # The launcher's default drain delay (3 s): longer than Envoy's health-check interval plus
    # timeout, so Envoy stops sending before the replica stops accepting.
    cluster = new_cluster("--grace", "2", "--synthetic-latency-ms", "5")
    video = cluster.video
    session_id, pin = upload_via(video, clip)
    video.AddPrompt(prompt(session_id), metadata=pin.metadata, timeout=10)
    restarted = pin.port
    old_pid = cluster.replica(restarted)["pid"]
    outcomes: list[grpc.StatusCode] = []  # while it drains, its session is still served
    with ImageLoad(cluster.segmentation, threads=3, max_calls=20_000) as load:
        wait_for(lambda: cluster.served(restarted) > 0, 20, "load reaching every replica")
        os.kill(old_pid, signal.SIGTERM)  # what Kubernetes or an operator sends
        # Its session ends with a clear code, never a hang (each call has a 5 s deadline):
        # UNAVAILABLE while it drains or is down, NOT_FOUND from its new process.
        while (
            error := failure_of(
                lambda: video.GetSession(
                    pb.GetSessionRequest(session_id=session_id), metadata=pin.metadata, timeout=5
                )
            )
        ) is None:
            outcomes.append(grpc.StatusCode.OK)
        assert error.code() in SESSION_LOST, (error.code(), error.details())
        # The launcher starts it again on the same port; Envoy's health checks bring it back
        # and it serves image calls again.
        wait_for(lambda: cluster.replica(restarted)["restarts"] == 1, 30, "restarted")
        wait_for(lambda: cluster.replica(restarted)["ready"], 30, "restarted replica ready")
        wait_for(lambda: cluster.served(restarted) > 0, 30, "restarted replica serving")
    # Sessions go through their own Envoy cluster, health-checked on its own: it may put the
    # replica back in rotation a check later than the image cluster did.
    wait_for(lambda: cluster.in_rotation("sam3_video", restarted), 30, "back in video rotation")
    assert load.errors == [], load.errors[:5]
    assert load.ok > 0
    with pytest.raises(grpc.RpcError) as caught:
        video.GetSession(
            pb.GetSessionRequest(session_id=session_id), metadata=pin.metadata, timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"port {restarted}) exited with code 0" in cluster.log()


def test_a_killed_replica_fails_its_sessions_fast_and_nothing_else(
    new_cluster, clip, long_clip, tmp_path
):
    cluster = new_cluster("--synthetic-latency-ms", "40", drain_delay=1)
    video = cluster.video
    sessions = [upload_via(video, clip) for _ in range(6)]
    (tmp_path / "long.avi").write_bytes(long_clip)
    client = Sam3Client(f"127.0.0.1:{cluster.info['port']}")
    victim = client.upload_video(tmp_path / "long.avi")
    victim_port = ReplicaPin(victim.route).port
    client.add_prompt(victim.session_id, 0, "red")
    frames = 0

    def read_and_kill() -> None:
        nonlocal frames
        for _ in client.propagate(victim.session_id, timeout=60):
            frames += 1
            if frames == 3:
                os.kill(cluster.replica(victim_port)["pid"], signal.SIGKILL)

    with ImageLoad(cluster.segmentation, threads=2, max_calls=20_000) as load:
        # A stream in flight is cut at once: Envoy resets it (gRPC reports the reset as
        # INTERNAL "RST_STREAM") or answers UNAVAILABLE; the client says what it means.
        with pytest.raises(ReplicaLostError) as lost:
            read_and_kill()
        assert lost.value.reason == "REPLICA_LOST"
        assert "start a new session" in lost.value.message
        assert frames < 300
        # Later calls about it fail within their deadline with a clear error, through the
        # restart (replica lost while it is down, NOT_FOUND from the new process); none is
        # retried (a session cannot come back).
        seen = set()
        while NotFoundError not in seen:
            with pytest.raises((ReplicaLostError, NotFoundError)) as caught:
                client.get_session(victim.session_id, timeout=5)
            seen.add(type(caught.value))
        # Sessions on the other replicas never noticed.
        for session_id, pin in sessions:
            if pin.port != victim_port:
                got = video.GetSession(
                    pb.GetSessionRequest(session_id=session_id), metadata=pin.metadata, timeout=5
                )
                assert got.session.session_id == session_id
    client.close()
    # Image calls in flight on the killed replica, or sent to it before Envoy's health check
    # noticed, were retried on another replica.
    assert load.errors == [], load.errors[:5]
    assert "was killed by SIGKILL" in cluster.log()


def test_sighup_restarts_every_replica_in_turn_without_a_failed_call(new_cluster):
    cluster = new_cluster("--grace", "2", "--synthetic-latency-ms", "5", drain_delay=2)
    old_pids = {r["port"]: r["pid"] for r in cluster.info["replicas"]}
    with ImageLoad(cluster.segmentation, threads=3, max_calls=20_000) as load:
        wait_for(lambda: all(cluster.served(p) > 0 for p in cluster.ports), 20, "load everywhere")
        cluster.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "rolling restart done" in cluster.log(), 50, "the rolling restart")
        wait_for(lambda: all(cluster.served(p) > 0 for p in cluster.ports), 20, "all rejoined")
    assert load.errors == [], load.errors[:5]
    replicas = cluster.refresh()["replicas"]
    assert all(r["restarts"] == 1 and r["pid"] != old_pids[r["port"]] for r in replicas)


# ----- the launcher -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--", "--port", "6000"], "--port is set per replica"),
        (["--", "--metrics-port", "9100"], "cannot share --metrics-port"),
        (["--", "--queue-size", "0"], "--queue-size must be positive"),
    ],
)
def test_cluster_rejects_flags_that_would_collide(flags, message):
    result = subprocess.run(
        [sys.executable, "-m", "sam3_grpc.cli", "cluster", "--replicas", "2", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
