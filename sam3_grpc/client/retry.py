"""Retrying safe calls on UNAVAILABLE and RESOURCE_EXHAUSTED.

Only calls that are safe to repeat are retried (segment_image, get_session, list_sessions,
close_session, reset_session, status, health). Calls that create or change state
(start_session, upload_video, add_prompt, remove_object, propagate) never are: their errors
reach the caller at once. The delay before a retry is the server's google.rpc.RetryInfo hint when
it sent one, otherwise exponential backoff with jitter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """How safe calls are retried.

    max_attempts counts the first try (1 disables retries). Without a server hint the n-th retry
    waits initial_backoff * multiplier**(n-1), capped at max_backoff, with ±jitter (a fraction)
    randomisation. A server hint is honoured as is, up to max_retry_after; a longer hint fails
    at once. `sleep` and `on_retry(attempt, error, delay)` are hooks (tests inject a recorder).
    """

    max_attempts: int = 3
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_retry_after: float = 60.0
    retryable_codes: frozenset = RETRYABLE_CODES
    # May return an awaitable: the asyncio client awaits it.
    sleep: Callable[[float], Any] = field(default=time.sleep, compare=False, repr=False)
    on_retry: Callable[[int, Exception, float], None] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def delay(self, retry_number: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number `retry_number` (1-based); None: do not retry."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        backoff = min(
            self.max_backoff, self.initial_backoff * self.multiplier ** (retry_number - 1)
        )
        return max(0.0, backoff * (1 + random.uniform(-self.jitter, self.jitter)))


NO_RETRY = RetryPolicy(max_attempts=1)
