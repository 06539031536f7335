"""The CPU pool: threads for everything that is neither the model nor the event loop (image
decoding, mask encoding, video probes and frame decoding, upload writes).

Its backlog is bounded the way the device queue is. A new request is admitted only while the
backlog (jobs queued or running) is under `capacity`: otherwise it is refused at once with
RESOURCE_EXHAUSTED (reason CPU_BUSY) and a RetryInfo, before any work is done for it, and health
turns NOT_SERVING for image calls (see health.py) until the backlog drains below half. Work that
belongs to a request already admitted (the next chunk of an upload, the masks of a frame being
streamed) is never refused: refusing it would waste what was already done.

Every job's cost is bounded by the input limits (bytes, pixels, JPEG scans, frames, key-frame
distance), and work for a caller who has left is skipped before it starts.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from sam3_grpc.errors import Reason, ResourceExhausted

BacklogListener = Callable[[int, int], None]


class CpuPool(concurrent.futures.Executor):
    def __init__(self, workers: int, capacity: int) -> None:
        self.workers = workers
        self.capacity = max(capacity, workers)
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

    @property
    def saturated(self) -> bool:
        return self._backlog >= self.capacity

    def admit(self) -> None:
        """Refuses a new request while the backlog is full (before any work is done for it)."""
        with self._lock:
            if self._backlog < self.capacity:
                return
            self.rejected += 1
            retry_after = max(0.1, min(30.0, self._mean_s * self._backlog / self.workers))
        raise ResourceExhausted(
            f"the server's CPU workers are saturated ({self._backlog} jobs for {self.workers} "
            f"workers); retry in about {retry_after:.1f} s or use another replica",
            reason=Reason.CPU_BUSY,
            metadata={"capacity": self.capacity},
            retry_after_s=retry_after,
        )

    # ----- the Executor interface (used by run_in_executor too) --------------------------------
    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        with self._lock:
            self._backlog += 1
            backlog = self._backlog
        self._notify(backlog)
        try:
            return self._pool.submit(self._run, fn, args, kwargs)
        except BaseException:
            self._done(0.0)
            raise

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        import time

        started = time.monotonic()
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
