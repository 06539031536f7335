"""Assembling and running the server: create_server() for tests, serve() for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sam3_grpc.config import Settings
from sam3_grpc.domain import ModelKind
from sam3_grpc.engines.base import Engine
from sam3_grpc.server.budget import MemoryBudget, default_host_budget
from sam3_grpc.server.cache import EmbeddingCache
from sam3_grpc.server.cpu import CpuPool
from sam3_grpc.server.executor import DeviceExecutor
from sam3_grpc.server.health import HealthState
from sam3_grpc.server.interceptors import (
    AuthInterceptor,
    ConnectionLimitInterceptor,
    ErrorMappingInterceptor,
    ObservingInterceptor,
    load_tokens,
)
from sam3_grpc.server.metrics import Metrics
from sam3_grpc.server.runtime import Runtime
from sam3_grpc.server.segmentation import SegmentationServicer
from sam3_grpc.server.sessions import SessionManager
from sam3_grpc.server.status import StatusServicer
from sam3_grpc.server.video import VideoServicer
from sam3_grpc.v1 import (
    segmentation_service_pb2,
    segmentation_service_pb2_grpc,
    status_service_pb2,
    status_service_pb2_grpc,
    video_service_pb2,
    video_service_pb2_grpc,
)

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    segmentation_service_pb2.DESCRIPTOR.services_by_name["SegmentationService"].full_name,
    video_service_pb2.DESCRIPTOR.services_by_name["VideoService"].full_name,
    status_service_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
)
SEGMENTATION_SERVICE, VIDEO_SERVICE, STATUS_SERVICE = SERVICE_NAMES
HEALTH_SERVICE_NAME = "grpc.health.v1.Health"


class Sam3Server:
    """A bound, not yet started server. `start()` serves at once (health NOT_SERVING), loads and
    warms up the engine on its executor thread, then turns health SERVING."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.executor = DeviceExecutor(engine, capacity=settings.queue_size)
        self.runtime = Runtime(
            settings=settings,
            engine=engine,
            executor=self.executor,
            cache=EmbeddingCache(
                max_entries=settings.cache_size, max_bytes=settings.cache_max_bytes
            ),
            # Only new image work is shed; session calls keep reaching this replica.
            health=HealthState(SERVICE_NAMES, shed_by=(SEGMENTATION_SERVICE,)),
            cpu_pool=CpuPool(
                settings.cpu_workers, settings.cpu_queue_size, settings.cpu_max_wait_s
            ),
        )
        self.sessions = SessionManager(self.runtime)
        self.runtime.sessions = self.sessions
        self.metrics = Metrics()
        self.runtime.metrics = self.metrics
        self.metrics.attach(self.runtime)
        interceptors: list[grpc.aio.ServerInterceptor] = [
            ObservingInterceptor(self.metrics),
            ConnectionLimitInterceptor(settings.max_calls_per_connection),
        ]
        if settings.auth_token_file:
            interceptors.append(
                AuthInterceptor(
                    load_tokens(settings.auth_token_file), exempt_probes=settings.auth_exempt_probes
                )
            )
        interceptors.append(ErrorMappingInterceptor())
        self.server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
        segmentation_service_pb2_grpc.add_SegmentationServiceServicer_to_server(
            SegmentationServicer(self.runtime), self.server
        )
        video_service_pb2_grpc.add_VideoServiceServicer_to_server(
            VideoServicer(self.runtime, self.sessions), self.server
        )
        status_service_pb2_grpc.add_StatusServiceServicer_to_server(
            StatusServicer(self.runtime), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.runtime.health.servicer, self.server)
        if settings.reflection:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), self.server
            )
        address = f"{settings.host}:{settings.port}"
        try:
            if settings.tls_cert:
                self.port = self.server.add_secure_port(address, server_credentials(settings))
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc raises this (no cause given) when nothing could be bound
            self.port = 0
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        self.metrics_port: int | None = None
        self._watchdog: asyncio.Task | None = None
        self._stopped = False
        self._drain_cut = asyncio.Event()

    async def start(self) -> None:
        runtime = self.runtime
        await runtime.health.publish()  # NOT_SERVING until the model is ready
        await self.server.start()
        if self.settings.metrics_port is not None:
            self.metrics_port = self.metrics.serve(
                self.settings.metrics_host or self.settings.host, self.settings.metrics_port
            )
        self.executor.start()
        self.executor.add_depth_listener(runtime.health.on_queue_depth)
        await self.sessions.start()
        engine = runtime.engine
        # The video decoder's libraries load while the model does, not in the first session.
        decoder = asyncio.ensure_future(runtime.on_cpu(importlib.import_module, "av"))
        started = time.monotonic()
        await asyncio.wrap_future(self.executor.run_soon(lambda e: e.load(), label="load"))
        runtime.load_s = time.monotonic() - started
        started = time.monotonic()
        await asyncio.wrap_future(self.executor.run_soon(lambda e: e.warmup(), label="warmup"))
        runtime.warmup_s = time.monotonic() - started
        self.sessions.budget = await runtime.on_cpu(memory_budget, self.settings, engine)
        await decoder
        info = engine.info
        logger.info(
            "model %s (%s) on %s ready: load %.1f s, warm-up %.1f s, weights: %s",
            info.name,
            info.kind.value,
            info.device,
            runtime.load_s,
            runtime.warmup_s,
            info.weights_source,
        )
        if info.kind is not ModelKind.REAL:
            logger.warning(
                "model %s is not a trained SAM 3: its masks are not meaningful "
                "segmentations of real scenes",
                info.name,
            )
        await runtime.health.set_ready()
        if self.settings.port_file:
            write_port_file(self.settings.port_file, self)
        # Watched from here on: loading a large checkpoint may rightly take longer than a job.
        self._watchdog = asyncio.get_running_loop().create_task(self._watch_executor())

    async def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """Health NOT_SERVING; keep serving for `drain` seconds (--drain-delay) so balancers
        stop sending calls first; then refuse new calls, let running ones finish within grace
        seconds, close every session and delete uploads, then stop the executor."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.grace_s if grace is None else grace
        drain = self.settings.drain_delay_s if drain is None else drain
        if self.settings.port_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.port_file)
        if drain > 0 and self.runtime.health.accepting:
            await self.runtime.health.drain()
            logger.info("draining: health NOT_SERVING, calls still served for %.1f s", drain)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drain_cut.wait(), drain)
        await self.runtime.health.shutdown()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.server.stop(grace)
        await self.sessions.close_all()
        self.executor.stop(timeout=grace)
        self.runtime.cpu_pool.shutdown(wait=False, cancel_futures=True)
        self.metrics.stop()
        # Calls gRPC cancelled at the end of the grace period (health watchers) end here, in
        # the loop, instead of being torn down with it, which gRPC logs as unhandled errors.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=1.0)

    def cut_drain(self) -> None:
        """Ends a drain delay in progress at once (a second SIGTERM/SIGINT)."""
        self._drain_cut.set()

    async def _watch_executor(self) -> None:
        """Marks the engine wedged (health NOT_SERVING, queue failed) when a job overruns
        --job-timeout, and healthy again if that job ever returns; turns image health
        NOT_SERVING while the CPU pool is saturated."""
        limit = self.settings.job_timeout_s
        health = self.runtime.health
        cpu = self.runtime.cpu_pool
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            running = self.executor.running_for()
            if running is not None and running > limit and not self.executor.wedged:
                self.executor.mark_wedged()
            if health.wedged != self.executor.wedged:
                health.wedged = self.executor.wedged
                await health.publish()
            await health.on_cpu(cpu.saturated, cpu.caught_up)


def memory_budget(settings: Settings, engine: Engine) -> MemoryBudget:
    """The sessions' budget: the flags, else half the host's memory and 80 % of the device
    memory the loaded model left free (no device budget on a CPU: all memory is host memory)."""
    import psutil

    host = settings.memory_budget or default_host_budget(psutil.virtual_memory().total)
    device = settings.device_memory_budget
    if device is None and engine.info.device.startswith("cuda"):
        memory = engine.memory()
        device = int(0.8 * max(0, memory.total_bytes - memory.used_bytes))
    return MemoryBudget(host, device)


def write_port_file(path: str, server: Sam3Server) -> None:
    """Atomically (write, then rename in the same directory): a launcher polling for the file
    never reads a partial one."""
    content = {
        "port": server.port,
        "host": server.settings.host,
        "pid": os.getpid(),
        "metrics_port": server.metrics_port,
    }
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".port-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Message limits and HTTP/2 limits, set explicitly rather than left to grpc's defaults."""
    return [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.min_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    def read(path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()

    if not (settings.tls_cert and settings.tls_key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    root = read(settings.tls_client_ca) if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read(settings.tls_key), read(settings.tls_cert))],
        root_certificates=root,
        require_client_auth=root is not None,
    )


def create_server(settings: Settings, engine: Engine) -> tuple[Sam3Server, int]:
    """Builds and binds a server (port 0 picks a free one); call `await server.start()`."""
    server = Sam3Server(settings, engine)
    return server, server.port


async def serve(settings: Settings, *, stop_requested: Callable[[], bool] | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully. `stop_requested` tells whether
    such a signal already came during start-up, before this function could handle it."""
    import cv2

    from sam3_grpc.engines import create_engine

    # The CPU pool and the device thread already run OpenCV work in parallel; OpenCV's own
    # thread pool inside each of them would oversubscribe the cores (see BENCHMARKS.md).
    cv2.setNumThreads(settings.opencv_threads)
    server, port = create_server(settings, create_engine(settings))
    logger.info("sam3-grpc listening on %s:%d (model %s)", settings.host, port, settings.model)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if stop_requested is not None and stop_requested():
        stop.set()
    try:
        starting = asyncio.ensure_future(server.start())
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()  # a load failure surfaces here
            await stopping
        else:
            starting.cancel()
        # A second signal cuts the drain delay short.
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.cut_drain)
        logger.info(
            "shutting down (drain %.1f s, grace %.1f s)", settings.drain_delay_s, settings.grace_s
        )
    finally:
        await server.stop()
    logger.info("stopped")
