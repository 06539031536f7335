"""The device executor: one thread that owns every engine call for one device.

Servicers run on the asyncio event loop and never touch the model; they `submit` a job (a
function of the engine) and await its result. The queue is bounded: a full queue rejects at once
with RESOURCE_EXHAUSTED and a RetryInfo hint. Before a job runs the thread checks its caller is
still waiting: a job whose caller cancelled, or whose deadline passed while it was queued, is
dropped without touching the engine. An exception fails only its own job.

Long work (video propagation) is split into one job per frame by the caller, so other requests are
served between frames and several propagations share the device round-robin through the FIFO.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sam3_grpc.engines.base import Engine
from sam3_grpc.errors import (
    ConfigurationError,
    DeadlineExceeded,
    Reason,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    is_out_of_memory,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
DepthListener = Callable[[int, int], None]


@dataclass
class ExecutorStats:
    depth: int
    capacity: int
    running: int
    completed: int
    rejected: int
    dropped: int


class _Job:
    __slots__ = (
        "abandoned",
        "cpu_pool",
        "deadline",
        "enqueued_at",
        "finish",
        "fn",
        "future",
        "label",
        "loop",
    )

    def __init__(self, fn, label, deadline, loop, future) -> None:
        # Optional CPU-side stage after the device work, and the pool it runs on.
        self.finish: Callable[[Any], Any] | None = None
        self.cpu_pool: concurrent.futures.Executor | None = None
        self.fn = fn
        self.label = label
        self.deadline = deadline  # time.monotonic() value, or None
        self.loop = loop  # None for internal jobs resolved through a concurrent future
        self.future = future
        self.abandoned = False  # set on the event loop when the caller stops waiting
        self.enqueued_at = time.monotonic()


class DeviceExecutor:
    """Runs engine jobs one at a time on a dedicated thread."""

    def __init__(self, engine: Engine, *, capacity: int, name: str = "device") -> None:
        self.engine = engine
        self.capacity = capacity
        self.name = name
        self._queue: collections.deque[_Job] = collections.deque()
        # Internal jobs (start-up, closing sessions and generators) run first, in FIFO order,
        # and never count against the capacity.
        self._internal: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._running = 0
        # Slots claimed by pipelines whose CPU stage is still preparing their device job.
        self._reserved = 0
        self._completed = 0
        self._rejected = 0
        self._dropped = 0
        # Exponential moving average of job run time: the RetryInfo hint for a full queue.
        self._mean_run_s = 0.05
        self._listeners: list[tuple[asyncio.AbstractEventLoop, DepthListener]] = []
        self._busy_s = 0.0
        self._job_started_at: float | None = None
        self._wedged = False
        # Called (on the executor thread) with each job's seconds in the queue.
        self.wait_observer: Callable[[float], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"executor-{name}", daemon=True)

    # ----- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stops once the running job and the queued internal jobs (closing sessions) are done;
        queued user jobs fail with UNAVAILABLE."""
        with self._cv:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for job in pending:
            self._resolve(
                job,
                exc=Unavailable(
                    "the server is shutting down; retry on another replica or after it restarts",
                    reason=Reason.SHUTTING_DOWN,
                ),
            )
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def add_depth_listener(self, listener: DepthListener) -> None:
        """Calls listener(depth, capacity) on the current event loop whenever the depth changes."""
        self._listeners.append((asyncio.get_running_loop(), listener))

    # ----- submitting ------------------------------------------------------------------------
    async def submit(
        self,
        fn: Callable[..., T],
        *,
        deadline: float | None = None,
        label: str = "job",
        prepare: Callable[[], Any] | None = None,
        finish: Callable[[Any], Any] | None = None,
        cpu_pool: concurrent.futures.Executor | None = None,
    ) -> Any:
        """Queues fn(engine) and waits for its result.

        deadline is a time.monotonic() instant after which the job must not start. Cancelling the
        awaiting task abandons the job: if it has not started it never will.

        With `prepare` and/or `finish` (run on `cpu_pool`), the call is a pipeline: prepare() on
        the CPU pool, then fn(engine, prepared) on the device thread, then finish(result) on the
        CPU pool. Each stage hands straight to the next without a round trip through the event
        loop, which saves two thread wake-ups per request. A pipeline claims its place in the
        queue before any CPU work: a full queue refuses it at once, for nothing.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        job = _Job(fn, label, deadline, loop, future)
        job.finish = finish
        job.cpu_pool = cpu_pool
        if prepare is None:
            self._enqueue(job)
        else:
            if cpu_pool is None:
                raise ValueError("a prepare stage needs a cpu_pool to run on")
            self._admit(reserve=True)
            try:
                cpu_pool.submit(self._prepare_then_enqueue, job, prepare)
            except BaseException:
                self._unreserve()
                raise
        try:
            return await future
        finally:
            # Reached on cancellation too: the worker skips abandoned jobs it has not started.
            job.abandoned = True

    def _check_locked(self) -> None:
        """Refuses new work while stopping, wedged or full (queued + reserved)."""
        if self._stopping:
            raise Unavailable(
                "the server is shutting down; retry on another replica",
                reason=Reason.SHUTTING_DOWN,
            )
        if self._wedged:
            raise Unavailable(self._wedged_message_locked(), reason=Reason.ENGINE_WEDGED)
        if len(self._queue) + self._reserved >= self.capacity:
            self._rejected += 1
            retry_after = self._retry_after_locked()
            raise ResourceExhausted(
                f"the server's queue is full ({self.capacity} jobs waiting for the device); "
                f"retry in about {retry_after:.1f} s or use another replica",
                reason=Reason.QUEUE_FULL,
                metadata={"capacity": self.capacity},
                retry_after_s=retry_after,
            )

    def _admit(self, *, reserve: bool) -> None:
        with self._cv:
            self._check_locked()
            if reserve:
                self._reserved += 1
                depth = len(self._queue) + self._reserved
        if reserve:
            self._notify_depth(depth)

    def _unreserve(self) -> None:
        with self._cv:
            self._reserved -= 1
            depth = len(self._queue) + self._reserved
        self._notify_depth(depth)

    def _enqueue(self, job: _Job, *, reserved: bool = False) -> None:
        with self._cv:
            if reserved:
                self._reserved -= 1
                if self._stopping or self._wedged:
                    self._check_locked()
            else:
                self._check_locked()
            job.enqueued_at = time.monotonic()
            self._queue.append(job)
            depth = len(self._queue) + self._reserved
            self._cv.notify()
        self._notify_depth(depth)

    def _prepare_then_enqueue(self, job: _Job, prepare: Callable[[], Any]) -> None:
        """On a CPU-pool thread, in a slot reserved by submit()."""
        if job.abandoned:  # the caller left while this waited for a CPU worker
            self._unreserve()
            return
        try:
            prepared = prepare()
            job.fn = functools.partial(job.fn, prepared=prepared)
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller
            self._unreserve()
            self._resolve(job, exc=exc)
            return
        try:
            self._enqueue(job, reserved=True)
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller
            self._resolve(job, exc=exc)

    def _finish_then_resolve(self, job: _Job, result: Any) -> None:
        """On a CPU-pool thread."""
        assert job.finish is not None
        if job.abandoned:  # nobody will read the encoded result
            return
        try:
            self._resolve(job, result=job.finish(result))
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller
            self._resolve(job, exc=exc)

    def run_soon(
        self, fn: Callable[[Engine], T], *, label: str = "cleanup"
    ) -> concurrent.futures.Future:
        """Queues internal work (closing a session, finishing a generator) that must run even
        when the queue is full and cannot be abandoned; returns a concurrent future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        job = _Job(fn, label, None, None, future)
        with self._cv:
            if self._stopping:
                future.set_exception(
                    Unavailable("the server is shutting down", reason=Reason.SHUTTING_DOWN)
                )
                return future
            self._internal.append(job)
            self._cv.notify()
        return future

    # ----- watchdog --------------------------------------------------------------------------
    def running_for(self) -> float | None:
        """Seconds the current job has been running (None when idle)."""
        started = self._job_started_at
        return None if started is None else time.monotonic() - started

    @property
    def wedged(self) -> bool:
        return self._wedged

    def mark_wedged(self) -> None:
        """The running job overran the job timeout: fail the queue and refuse new work until it
        returns (if it ever does; an orchestrator should restart the process)."""
        with self._cv:
            if self._wedged or self._job_started_at is None:
                return
            self._wedged = True
            pending = list(self._queue)
            self._queue.clear()
            message = self._wedged_message_locked()
        logger.error(
            "device job has run for %.0f s: engine wedged, refusing work", self.running_for() or 0
        )
        for job in pending:
            self._resolve(job, exc=Unavailable(message, reason=Reason.ENGINE_WEDGED))
        self._notify_depth(0)

    def _wedged_message_locked(self) -> str:
        return (
            "the model is stuck on a job that overran the server's --job-timeout; this "
            "replica is unhealthy: retry on another replica"
        )

    def busy_seconds(self) -> float:
        running = self.running_for() or 0.0
        return self._busy_s + running

    # ----- introspection ---------------------------------------------------------------------
    def stats(self) -> ExecutorStats:
        with self._cv:
            return ExecutorStats(
                depth=len(self._queue) + self._reserved,
                capacity=self.capacity,
                running=self._running,
                completed=self._completed,
                rejected=self._rejected,
                dropped=self._dropped,
            )

    # ----- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._internal and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._internal:
                    return
                job = self._internal.popleft() if self._internal else self._queue.popleft()
                depth = len(self._queue) + self._reserved
                skip_reason = self._skip_reason(job)
                if skip_reason is None:
                    self._running = 1
                    self._job_started_at = time.monotonic()
                else:
                    self._dropped += 1
            self._notify_depth(depth)
            if skip_reason == "deadline":
                self._resolve(
                    job,
                    exc=DeadlineExceeded(
                        "the deadline passed while the request waited in the server's queue; it was "
                        "not run (allow a longer deadline or retry when the server is less busy)",
                        reason=Reason.DEADLINE_IN_QUEUE,
                    ),
                )
                continue
            if skip_reason == "abandoned":
                logger.debug("dropped %s: caller went away before it ran", job.label)
                continue
            started = self._job_started_at or time.monotonic()
            if self.wait_observer is not None and job.loop is not None:
                self.wait_observer(started - job.enqueued_at)
            result: Any = None
            error: BaseException | None = None
            try:
                result = job.fn(self.engine)
            except ServiceError as exc:
                error = exc
            except BaseException as exc:
                if is_out_of_memory(exc):
                    logger.warning("%s ran out of device memory: %s", job.label, exc)
                    self._free_cached_memory()
                    error = ResourceExhausted(
                        "the device ran out of memory for this request; retry later, with a "
                        "smaller image or video, or on another replica",
                        reason=Reason.DEVICE_OUT_OF_MEMORY,
                        retry_after_s=1.0,
                    )
                else:
                    # A caller's failure is logged where it becomes INTERNAL (interceptors.py);
                    # internal jobs have no such caller, so their failures are logged here.
                    if job.loop is None and not isinstance(exc, ConfigurationError):
                        logger.exception("%s failed", job.label)
                    error = exc
            elapsed = time.monotonic() - started
            with self._cv:
                self._running = 0
                self._job_started_at = None
                self._busy_s += elapsed
                self._completed += 1
                self._mean_run_s = 0.9 * self._mean_run_s + 0.1 * elapsed
                if self._wedged:
                    logger.warning(
                        "the overrunning job finished after %.0f s; accepting work again", elapsed
                    )
                    self._wedged = False
            if error is None and job.finish is not None and not job.abandoned:
                assert job.cpu_pool is not None  # submit() pairs a finish stage with its pool
                try:
                    job.cpu_pool.submit(self._finish_then_resolve, job, result)
                    continue
                except RuntimeError as exc:  # the pool is shut down
                    error = Unavailable(
                        "the server is shutting down; retry on another replica",
                        reason=Reason.SHUTTING_DOWN,
                    )
                    logger.debug("finish stage not scheduled: %s", exc)
            self._resolve(job, result=result, exc=error)

    def _skip_reason(self, job: _Job) -> str | None:
        if job.abandoned:
            return "abandoned"
        if job.deadline is not None and time.monotonic() >= job.deadline:
            return "deadline"
        return None

    def _retry_after_locked(self) -> float:
        return max(0.1, min(30.0, self._mean_run_s * (len(self._queue) + 1)))

    @staticmethod
    def _free_cached_memory() -> None:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort after an OOM
            pass

    def _resolve(self, job: _Job, *, result: Any = None, exc: BaseException | None = None) -> None:
        if job.loop is None:
            try:
                if exc is None:
                    job.future.set_result(result)
                else:
                    job.future.set_exception(exc)
            except concurrent.futures.InvalidStateError:
                # Whoever awaited it was cancelled, and asyncio.wrap_future cancels the future
                # too; the job itself ran. Raising here would kill the device thread.
                pass
            return

        def settle() -> None:
            if job.future.done():  # the caller cancelled meanwhile
                return
            if exc is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(exc)

        try:
            job.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _notify_depth(self, depth: int) -> None:
        for loop, listener in self._listeners:
            try:
                loop.call_soon_threadsafe(listener, depth, self.capacity)
            except RuntimeError:
                pass
