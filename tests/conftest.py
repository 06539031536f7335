"""Shared fixtures: real servers on 127.0.0.1 with a free port, driven from synchronous tests.

Each server runs its asyncio loop on a background thread, so tests use plain synchronous grpc
channels and stubs exactly as a client would, and can still reach into the in-process engine to
count calls or hold steps.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from sam3_grpc.config import Settings
from sam3_grpc.engines.base import Engine
from sam3_grpc.server.app import Sam3Server, create_server
from sam3_grpc.v1 import (
    segmentation_service_pb2_grpc,
    status_service_pb2_grpc,
    video_service_pb2_grpc,
)

# OpenMP's default wait policy makes torch's worker threads spin between parallel regions. On a
# shared 2-core machine, when other processes hold a core, the spinning thread takes the time the
# other worker needs and sam3's many small ops ran 2-15x slower; sleeping threads cost ~35% on an
# idle machine (BENCHMARKS.md, "SAM 3, tiny preset on this CPU"). Tests must not time out on a
# busy CI machine. libgomp reads it when torch loads (none of the imports above loads torch);
# server subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """`-m "not sam3"` (make test-fast) promises that Meta's sam3 never runs: a test that imports
    it without the `sam3` marker fails the run."""
    if "not sam3" in (session.config.option.markexpr or "") and "sam3" in sys.modules:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(
                "Meta's sam3 was imported although sam3 tests were deselected: mark the test "
                "that imports it with @pytest.mark.sam3",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@dataclass
class RunningServer:
    server: Sam3Server
    port: int
    engine: Engine
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    channel: grpc.Channel

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def segmentation(self) -> segmentation_service_pb2_grpc.SegmentationServiceStub:
        return segmentation_service_pb2_grpc.SegmentationServiceStub(self.channel)

    @property
    def video(self) -> video_service_pb2_grpc.VideoServiceStub:
        return video_service_pb2_grpc.VideoServiceStub(self.channel)

    @property
    def status(self) -> status_service_pb2_grpc.StatusServiceStub:
        return status_service_pb2_grpc.StatusServiceStub(self.channel)

    def run(self, coroutine, timeout: float = 60.0):
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        if not self.loop.is_running():
            return
        self.channel.close()
        self.run(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def launch(engine: Engine, *, wait_ready: bool = True, **overrides) -> RunningServer:
    settings = Settings(host="127.0.0.1", port=0, **overrides)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()

    async def build():
        return create_server(settings, engine)

    server, port = asyncio.run_coroutine_threadsafe(build(), loop).result(30)
    starting = asyncio.run_coroutine_threadsafe(server.start(), loop)
    if wait_ready:
        starting.result(300)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    return RunningServer(server, port, engine, loop, thread, channel)


@pytest.fixture
def start_server() -> Iterator[Callable[..., RunningServer]]:
    """Factory fixture: start_server(engine, **settings_overrides) -> RunningServer; every
    server it started is stopped at the end of the test."""
    started: list[RunningServer] = []

    def factory(engine: Engine, **overrides) -> RunningServer:
        running = launch(engine, **overrides)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def synthetic_server(media_root) -> Iterator[RunningServer]:
    """One synthetic-engine server per test module, with a media root."""
    from sam3_grpc.engines.synthetic import SyntheticEngine

    running = launch(SyntheticEngine(), media_roots=(media_root,))
    yield running
    running.stop()
