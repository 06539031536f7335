"""StatusService: a snapshot of model, queue, cache, sessions and memory."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.protobuf.duration_pb2 import Duration

from sam3_grpc import __version__
from sam3_grpc.domain import ModelKind
from sam3_grpc.server.runtime import Runtime
from sam3_grpc.v1 import status_service_pb2 as pb
from sam3_grpc.v1 import status_service_pb2_grpc as pb_grpc

MODEL_KINDS = {
    ModelKind.REAL: pb.MODEL_KIND_REAL,
    ModelKind.TINY: pb.MODEL_KIND_TINY,
    ModelKind.SYNTHETIC: pb.MODEL_KIND_SYNTHETIC,
}


def _duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


class StatusServicer(pb_grpc.StatusServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def GetServerStatus(
        self, request: pb.GetServerStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerStatusResponse:
        runtime = self.runtime
        info = runtime.engine.info
        stats = runtime.executor.stats()
        cache = runtime.cache
        # Reading memory may touch the driver; keep it off the event loop.
        memory = await asyncio.to_thread(runtime.engine.memory)  # not the CPU pool: it may be full
        sessions = runtime.sessions
        return pb.GetServerStatusResponse(
            model_name=info.name,
            model_kind=MODEL_KINDS[info.kind],
            device=info.device,
            ready=runtime.health.ready,
            queue=pb.QueueStatus(
                depth=stats.depth,
                capacity=stats.capacity,
                running=stats.running,
                completed=stats.completed,
                rejected=stats.rejected,
                dropped=stats.dropped,
            ),
            active_sessions=sessions.count() if sessions else 0,
            session_memory_bytes=sessions.memory_bytes() if sessions else 0,
            session_memory_budget=_budget(sessions.budget) if sessions else None,
            cpu=pb.CpuStatus(
                workers=runtime.cpu_pool.workers,
                backlog=runtime.cpu_pool.backlog,
                capacity=runtime.cpu_pool.capacity,
                completed=runtime.cpu_pool.completed,
                rejected=runtime.cpu_pool.rejected,
            ),
            memory=pb.DeviceMemory(used_bytes=memory.used_bytes, total_bytes=memory.total_bytes),
            uptime=_duration(time.time() - runtime.started_at),
            version=__version__,
            cache=pb.CacheStatus(
                entries=len(cache),
                capacity=cache.max_entries,
                hits=cache.hits,
                misses=cache.misses,
                bytes=cache.bytes,
            ),
            load_duration=_duration(runtime.load_s),
            warmup_duration=_duration(runtime.warmup_s),
            weights_source=info.weights_source,
        )


def _budget(budget) -> pb.SessionMemoryBudget:
    return pb.SessionMemoryBudget(
        host_budget_bytes=budget.host_limit or 0,
        host_reserved_bytes=budget.host_reserved,
        device_budget_bytes=budget.device_limit or 0,
        device_reserved_bytes=budget.device_reserved,
    )
