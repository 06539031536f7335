"""Readiness and load shedding through the standard grpc.health.v1 service.

Every service (and "", the whole server) is NOT_SERVING until the engine is loaded and warmed up.
While the executor queue is full they go NOT_SERVING so balancers send traffic elsewhere, and
return to SERVING once the queue has drained below half (hysteresis avoids flapping). On shutdown
everything goes NOT_SERVING for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2

# `aio` is bound under a version check mypy cannot follow.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthState:
    def __init__(self, service_names: Sequence[str]) -> None:
        self.servicer = health_aio.HealthServicer()
        self._names = ("", *service_names)
        self.ready = False
        self.shedding = False
        self.shutting_down = False
        self.wedged = False
        self._published: int | None = None
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return self.ready and not self.shedding and not self.shutting_down and not self.wedged

    async def publish(self) -> None:
        async with self._lock:
            status = SERVING if self.serving else NOT_SERVING
            if status == self._published:
                return
            for name in self._names:
                await self.servicer.set(name, status)
            self._published = status
            logger.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    async def set_ready(self) -> None:
        self.ready = True
        await self.publish()

    async def shutdown(self) -> None:
        self.shutting_down = True
        await self.publish()

    def on_queue_depth(self, depth: int, capacity: int) -> None:
        """Executor depth listener (runs on the event loop)."""
        if not self.shedding and depth >= capacity:
            self.shedding = True
        elif self.shedding and depth < capacity / 2:
            self.shedding = False
        else:
            return
        asyncio.get_running_loop().create_task(self.publish())
