"""Readiness and load shedding through the standard grpc.health.v1 service, per service name.

Two kinds of service name, so a balancer can treat new image work and pinned session calls apart:

- "" (the whole server) and the services that put new work on the queue without a session
  (`shed_by`: SegmentationService) are SERVING only while the server is ready, not draining, not
  wedged, its queue is not full and its CPU workers keep up. While the executor queue is full
  or the CPU pool is saturated (see cpu.py) they go NOT_SERVING so balancers send new image
  calls elsewhere, and return to SERVING once the queue has drained below half and the CPU pool
  has caught up (hysteresis avoids flapping).
- Every other service (VideoService, StatusService) stays SERVING while the server only sheds:
  a video session lives on this replica, so its calls must keep reaching it (a balancer that
  pins sessions checks these names).

Everything is NOT_SERVING until the engine is loaded and warmed up, while the engine is wedged,
while draining before a shutdown (calls are still served then, so a balancer can take the replica
out of rotation before it refuses anything) and, for good, on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence

from grpc_health.v1 import health_pb2

# `aio` is bound under a version check mypy cannot follow.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthState:
    def __init__(self, service_names: Sequence[str], *, shed_by: Collection[str] = ()) -> None:
        self.servicer = health_aio.HealthServicer()
        self._names = ("", *service_names)
        self._shed_by = {"", *shed_by}
        self.ready = False
        self.queue_full = False
        self.cpu_saturated = False
        self.draining = False
        self.shutting_down = False
        self.wedged = False
        self._published: dict[str, int] = {}
        self._lock = asyncio.Lock()

    @property
    def shedding(self) -> bool:
        """New image work is being refused: the device queue is full or the CPU pool is."""
        return self.queue_full or self.cpu_saturated

    @property
    def accepting(self) -> bool:
        """Ready for calls at all (sessions included), whatever the queue depth."""
        return self.ready and not self.draining and not self.shutting_down and not self.wedged

    @property
    def serving(self) -> bool:
        """The whole server ("") is SERVING: accepting, and the queue has room."""
        return self.accepting and not self.shedding

    def status_of(self, name: str) -> int:
        if not self.accepting or (self.shedding and name in self._shed_by):
            return NOT_SERVING
        return SERVING

    async def publish(self) -> None:
        async with self._lock:
            statuses = {name: self.status_of(name) for name in self._names}
            if statuses == self._published:
                return
            for name, status in statuses.items():
                if self._published.get(name) != status:
                    await self.servicer.set(name, status)
            self._published = statuses
            logger.info("health: %s", self._describe(statuses))

    def _describe(self, statuses: dict[str, int]) -> str:
        # "SERVING" or "NOT_SERVING" when every name agrees (what operators and scripts grep
        # for), else the names still SERVING.
        overall = health_pb2.HealthCheckResponse.ServingStatus.Name(statuses[""])
        still = [name for name, status in statuses.items() if status == SERVING]
        if statuses[""] == SERVING or not still:
            return overall
        why = "queue full" if self.queue_full else "CPU workers saturated"
        return f"{overall} ({why}: shedding new image calls; still SERVING: {', '.join(still)})"

    async def set_ready(self) -> None:
        self.ready = True
        await self.publish()

    async def drain(self) -> None:
        """NOT_SERVING everywhere while calls are still served (before a shutdown)."""
        self.draining = True
        await self.publish()

    async def shutdown(self) -> None:
        self.shutting_down = True
        await self.publish()

    def on_queue_depth(self, depth: int, capacity: int) -> None:
        """Executor depth listener (runs on the event loop)."""
        if not self.queue_full and depth >= capacity:
            self.queue_full = True
        elif self.queue_full and depth < capacity / 2:
            self.queue_full = False
        else:
            return
        asyncio.get_running_loop().create_task(self.publish())

    async def on_cpu(self, saturated: bool, caught_up: bool) -> None:
        """CPU pool watcher (the server's watchdog, every second): NOT_SERVING for image calls
        once saturated, SERVING again only once it has caught up."""
        if not self.cpu_saturated and saturated:
            self.cpu_saturated = True
        elif self.cpu_saturated and caught_up:
            self.cpu_saturated = False
        else:
            return
        await self.publish()
