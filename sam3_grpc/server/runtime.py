"""What the servicers share: settings, the device executor, the CPU pool, cache and health."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from sam3_grpc.config import Settings
from sam3_grpc.engines.base import Engine
from sam3_grpc.errors import Reason, Unavailable
from sam3_grpc.server.cache import EmbeddingCache
from sam3_grpc.server.cpu import CpuPool
from sam3_grpc.server.executor import DeviceExecutor
from sam3_grpc.server.health import HealthState

T = TypeVar("T")


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    executor: DeviceExecutor
    cache: EmbeddingCache
    health: HealthState
    cpu_pool: CpuPool
    started_at: float = field(default_factory=time.time)
    load_s: float = 0.0
    warmup_s: float = 0.0
    # The video session manager and the metrics (set by create_server); typed loosely to avoid
    # import cycles.
    sessions: Any = None
    metrics: Any = None

    def admit(self) -> None:
        """The door of every call that brings new model work: ready, and CPU workers free.
        (The device queue admits at its own door, executor.submit.)"""
        self.require_ready()
        self.cpu_pool.admit()

    def require_ready(self) -> None:
        if self.health.shutting_down:
            raise Unavailable(
                "the server is shutting down; retry on another replica",
                reason=Reason.SHUTTING_DOWN,
            )
        if not self.health.ready:
            raise Unavailable(
                "the model is still loading; retry in a few seconds, or wait for it with "
                "`sam3-grpc health --wait 300` (grpc.health.v1 turns SERVING when it is ready)",
                reason=Reason.MODEL_LOADING,
                retry_after_s=2.0,
            )

    async def on_cpu(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Runs CPU-side work (decode, mask encoding) on the CPU pool, off the device thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.cpu_pool, functools.partial(fn, *args, **kwargs))

    async def on_cpu_owned(self, fn: Callable[[], T]) -> T:
        """Like on_cpu, for work that returns something to close (an open video): when the
        caller goes away before it finishes, the result is closed once it exists."""
        future = self.cpu_pool.submit(fn)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_result)
            raise


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a time.monotonic() instant (None when the client set none)."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + remaining


def _close_result(future: concurrent.futures.Future) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
