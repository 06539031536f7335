"""The CPU pool: threads for everything that is neither the model nor the event loop (image
decoding, mask encoding, video probes and frame decoding, upload writes).

Its backlog is bounded the way the device queue is. A new request is admitted only while the
backlog (jobs queued or running) is under `capacity` and the oldest queued job has waited less
than `max_wait_s` (the workers keep up): otherwise it is refused at once with RESOURCE_EXHAUSTED
(reason CPU_BUSY) and a RetryInfo, before any work is done for it, and health turns NOT_SERVING
for image calls (see health.py) until the pool catches up. Work that belongs to a request
already admitted (the next chunk of an upload, the masks of a frame being streamed) is never
refused: refusing it would waste what was already done.

Every job's cost is bounded by the input limits (bytes, pixels, JPEG scans, frames, key-frame
distance), and work for a caller who has left is skipped before it starts.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from sam3_grpc.errors import Reason, ResourceExhausted

BacklogListener = Callable[[int, int], None]


class CpuPool(concurrent.futures.Executor):
    def __init__(self, workers: int, capacity: int, max_wait_s: float = 5.0) -> None:
        self.workers = workers
        self.capacity = max(capacity, workers)
        self.max_wait_s = max_wait_s
        self._waiting: collections.OrderedDict[int, float] = collections.OrderedDict()
        self._ids = itertools.count()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="cpu")
        self._lock = threading.Lock()
        self._backlog = 0
        self.completed = 0
        self.rejected = 0
        self._mean_s = 0.01  # moving average of a job's duration: the RetryInfo hint
        self.listeners: list[BacklogListener] = []

    # ----- admission ---------------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        return self._backlog

    def oldest_wait(self) -> float:
        """Seconds the longest-waiting queued job has waited (0 when none waits)."""
        with self._lock:
            if not self._waiting:
                return 0.0
            return time.monotonic() - next(iter(self._waiting.values()))

    @property
    def saturated(self) -> bool:
        return self._backlog >= self.capacity or self.oldest_wait() > self.max_wait_s

    @property
    def caught_up(self) -> bool:
        """Well clear of saturation (half the backlog, half the wait): health recovers."""
        return self._backlog < self.capacity / 2 and self.oldest_wait() < self.max_wait_s / 2

    def admit(self) -> None:
        """Refuses a new request while the pool is saturated (before any work is done for it)."""
        if not self.saturated:
            return
        with self._lock:
            self.rejected += 1
            retry_after = max(0.1, min(30.0, self._mean_s * self._backlog / self.workers))
        raise ResourceExhausted(
            f"the server's CPU workers are saturated ({self._backlog} jobs for {self.workers} "
            f"workers, the oldest waiting {self.oldest_wait():.1f} s); retry in about "
            f"{retry_after:.1f} s or use another replica",
            reason=Reason.CPU_BUSY,
            metadata={"capacity": self.capacity},
            retry_after_s=retry_after,
        )

    # ----- the Executor interface (used by run_in_executor too) --------------------------------
    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        job = next(self._ids)
        with self._lock:
            self._backlog += 1
            self._waiting[job] = time.monotonic()
            backlog = self._backlog
        self._notify(backlog)
        try:
            future = self._pool.submit(self._run, job, fn, args, kwargs)
        except BaseException:
            self._never_ran(job)
            raise
        # A job cancelled before it started (its caller left) never runs _run: count it out.
        future.add_done_callback(lambda f: self._never_ran(job) if f.cancelled() else None)
        return future

    def _never_ran(self, job: int) -> None:
        with self._lock:
            self._waiting.pop(job, None)
        self._done(0.0)

    def _run(self, job: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        started = time.monotonic()
        with self._lock:
            self._waiting.pop(job, None)
        try:
            return fn(*args, **kwargs)
        finally:
            self._done(time.monotonic() - started)

    def _done(self, seconds: float) -> None:
        with self._lock:
            self._backlog -= 1
            self.completed += 1
            self._mean_s = 0.9 * self._mean_s + 0.1 * seconds
            backlog = self._backlog
        self._notify(backlog)

    def _notify(self, backlog: int) -> None:
        for listener in self.listeners:
            listener(backlog, self.capacity)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
