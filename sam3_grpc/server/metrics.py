"""Prometheus metrics: request counts and latencies, and a scrape-time view of the runtime.

Each server owns its own registry (tests run several servers in one process). Gauges that
describe state (queue depth, sessions, cache, memory) are read when Prometheus scrapes, so they
are never stale and cost nothing between scrapes.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


class _RuntimeCollector(Collector):
    def __init__(self, runtime) -> None:
        self.runtime = runtime

    def collect(self):
        runtime = self.runtime
        stats = runtime.executor.stats()
        yield GaugeMetricFamily(
            "sam3_grpc_ready",
            "1 once the model is loaded and warm.",
            value=float(runtime.health.ready),
        )
        yield GaugeMetricFamily(
            "sam3_grpc_queue_depth", "Jobs waiting for the device.", value=stats.depth
        )
        yield GaugeMetricFamily(
            "sam3_grpc_queue_capacity", "Most jobs that may wait.", value=stats.capacity
        )
        yield GaugeMetricFamily(
            "sam3_grpc_jobs_running", "Device jobs running now.", value=stats.running
        )
        jobs = CounterMetricFamily("sam3_grpc_jobs", "Device jobs by outcome.", labels=["outcome"])
        jobs.add_metric(["completed"], stats.completed)
        jobs.add_metric(["rejected"], stats.rejected)
        jobs.add_metric(["dropped"], stats.dropped)
        yield jobs
        yield CounterMetricFamily(
            "sam3_grpc_executor_busy_seconds",
            "Seconds the device thread spent running jobs; its rate is the busy fraction.",
            value=runtime.executor.busy_seconds(),
        )
        cpu = runtime.cpu_pool
        yield GaugeMetricFamily(
            "sam3_grpc_cpu_backlog", "CPU jobs queued or running.", value=cpu.backlog
        )
        yield GaugeMetricFamily(
            "sam3_grpc_cpu_capacity",
            "Most CPU jobs before new requests are refused.",
            value=cpu.capacity,
        )
        yield CounterMetricFamily(
            "sam3_grpc_cpu_rejected",
            "Requests refused because the CPU workers were saturated.",
            value=cpu.rejected,
        )
        sessions = runtime.sessions
        yield GaugeMetricFamily(
            "sam3_grpc_sessions_active",
            "Open video sessions.",
            value=sessions.count() if sessions else 0,
        )
        yield GaugeMetricFamily(
            "sam3_grpc_session_memory_bytes",
            "Memory held by open sessions.",
            value=sessions.memory_bytes() if sessions else 0,
        )
        cache = runtime.cache
        lookups = CounterMetricFamily(
            "sam3_grpc_cache_lookups", "Embedding cache lookups by result.", labels=["result"]
        )
        lookups.add_metric(["hit"], cache.hits)
        lookups.add_metric(["miss"], cache.misses)
        yield lookups
        yield GaugeMetricFamily(
            "sam3_grpc_cache_entries", "Cached image encodings.", value=len(cache)
        )
        yield GaugeMetricFamily(
            "sam3_grpc_cache_bytes", "Bytes held by cached encodings.", value=cache.bytes
        )
        memory = runtime.engine.memory()
        yield GaugeMetricFamily(
            "sam3_grpc_device_memory_used_bytes",
            "Device memory in use (process RSS on a CPU).",
            value=memory.used_bytes,
        )
        yield GaugeMetricFamily(
            "sam3_grpc_device_memory_total_bytes", "Device memory.", value=memory.total_bytes
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sam3_grpc_requests",
            "Calls by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sam3_grpc_request_duration_seconds",
            "Call duration by method (streams: until the last message).",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "sam3_grpc_queue_wait_seconds",
            "Time device jobs waited in the queue.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "sam3_grpc_upload_bytes", "Video bytes received.", registry=self.registry
        )
        self._http: Any = None  # prometheus_client's WSGI server once serve() ran

    def attach(self, runtime) -> None:
        self.registry.register(_RuntimeCollector(runtime))
        runtime.executor.wait_observer = self.queue_wait.observe

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Starts the HTTP endpoint; returns its port (useful with port 0)."""
        http, _ = start_http_server(port, addr=host, registry=self.registry)
        self._http = http
        bound = int(http.server_port)
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
