"""Several sam3-grpc servers behind one client.

Image calls are spread round-robin over the endpoints (one channel each); when an endpoint answers
UNAVAILABLE or RESOURCE_EXHAUSTED the next one is tried at once, and only after every endpoint
failed does the pool wait (the smallest RetryInfo hint, else backoff) before another round.
A video session lives on the server that created it, so the pool remembers which endpoint owns
each session id and sends every call about it there.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from sam3_grpc.client import _core
from sam3_grpc.client._core import DEFAULT, MiB, OutputOptions
from sam3_grpc.client.client import PropagateStream, Sam3Client, _SessionContext
from sam3_grpc.client.errors import NotFoundError, Sam3Error
from sam3_grpc.client.retry import NO_RETRY, RetryPolicy
from sam3_grpc.client.types import (
    AddPromptResult,
    Prompt,
    SegmentResult,
    ServerPath,
    ServerStatus,
    Session,
    as_prompts,
)


class Sam3Pool(_SessionContext):
    """A client of several servers; takes the keyword arguments of Sam3Client (applied to every
    endpoint) and offers the same methods."""

    def __init__(
        self, targets: Sequence[str], *, retry: RetryPolicy | None = None, **client_options: Any
    ) -> None:
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not targets:
            raise ValueError("give at least one target")
        self.retry = retry if retry is not None else RetryPolicy()
        # The pool does the retrying (failing over first), so the endpoint clients do not.
        self.clients = [Sam3Client(t, retry=NO_RETRY, **client_options) for t in targets]
        self._by_target = {c.target: c for c in self.clients}
        self._order = itertools.cycle(range(len(self.clients)))
        self._owners: dict[str, Sam3Client] = {}
        self._lock = threading.Lock()

    @property
    def targets(self) -> list[str]:
        return [c.target for c in self.clients]

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> Sam3Pool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sam3Pool({self.targets!r})"

    # ----- dispatch ------------------------------------------------------------------------
    def _rotation(self) -> list[Sam3Client]:
        with self._lock:
            start = next(self._order)
        return self.clients[start:] + self.clients[:start]

    def _spread(self, call, fail_over=None):
        """Runs call(client) on the next endpoint, failing over on retryable errors (or those
        fail_over(error) accepts); after a whole round failed, waits per the retry policy and
        starts another round."""
        policy = self.retry
        if fail_over is None:

            def fail_over(error: Sam3Error) -> bool:
                return error.code in policy.retryable_codes

        round_number = 1
        while True:
            errors: list[Sam3Error] = []
            for client in self._rotation():
                try:
                    return call(client)
                except Sam3Error as exc:
                    if not fail_over(exc):
                        raise
                    errors.append(exc)
            hints = [e.retry_after for e in errors if e.retry_after is not None]
            delay = policy.delay(round_number, min(hints) if hints else None)
            if round_number >= policy.max_attempts or delay is None:
                raise errors[-1]
            if policy.on_retry is not None:
                policy.on_retry(round_number, errors[-1], delay)
            policy.sleep(delay)
            round_number += 1

    def _remember(self, session: Session) -> Session:
        with self._lock:
            self._owners[session.session_id] = self._by_target[session.target]
        return session

    def _owner(self, session_id: str) -> Sam3Client:
        with self._lock:
            client = self._owners.get(session_id)
        if client is not None:
            return client
        for client in self.clients:  # a session this pool did not open: ask every endpoint
            try:
                self._remember(client.get_session(session_id))
                return client
            except NotFoundError:
                continue
            except Sam3Error as exc:
                if exc.code != grpc.StatusCode.UNAVAILABLE:
                    raise
        raise NotFoundError(
            grpc.StatusCode.NOT_FOUND, f"session {session_id} is not open on any of {self.targets}"
        )

    def owner_of(self, session_id: str) -> str:
        """The target that owns a session."""
        return self._owner(session_id).target

    # ----- images --------------------------------------------------------------------------
    def segment_image(
        self,
        image: Any,
        prompts: str | Prompt | Sequence[str | Prompt],
        *,
        output: OutputOptions | None = None,
        timeout: Any = DEFAULT,
    ) -> SegmentResult:
        """Like Sam3Client.segment_image, on the next endpoint in turn."""
        message = _core.image_to_proto(image)  # read or encode once
        prompt_list = as_prompts(prompts)
        return self._spread(
            lambda c: c.segment_image(message, prompt_list, output=output, timeout=timeout)
        )

    # ----- video sessions ------------------------------------------------------------------
    def start_session(self, video_path: str | ServerPath, *, timeout: Any = DEFAULT) -> Session:
        """Opens a session on the next endpoint; moves on when one has no room
        (RESOURCE_EXHAUSTED) or cannot be reached, since no session was created there."""

        def nothing_created(error: Sam3Error) -> bool:
            return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED or error.connection_failed

        return self._remember(
            self._spread(lambda c: c.start_session(video_path, timeout=timeout), nothing_created)
        )

    def upload_video(
        self,
        path: str | os.PathLike,
        *,
        chunk_size: int = MiB,
        sha256: bool | str = True,
        progress: Callable[[int, int], None] | None = None,
        timeout: Any = DEFAULT,
    ) -> Session:
        """Uploads to the next endpoint in turn. Never replayed on another endpoint."""
        client = self._rotation()[0]
        session = client.upload_video(
            path, chunk_size=chunk_size, sha256=sha256, progress=progress, timeout=timeout
        )
        return self._remember(session)

    def add_prompt(
        self, session_id: str, frame_index: int, prompt: str | Prompt, **options: Any
    ) -> AddPromptResult:
        return self._owner(session_id).add_prompt(session_id, frame_index, prompt, **options)

    def remove_object(self, session_id: str, object_id: int, **options: Any) -> Session:
        return self._owner(session_id).remove_object(session_id, object_id, **options)

    def reset_session(self, session_id: str, **options: Any) -> Session:
        return self._owner(session_id).reset_session(session_id, **options)

    def propagate(self, session_id: str, **options: Any) -> PropagateStream:
        return self._owner(session_id).propagate(session_id, **options)

    def get_session(self, session_id: str, **options: Any) -> Session:
        return self._owner(session_id).get_session(session_id, **options)

    def close_session(self, session_id: str, *, timeout: Any = DEFAULT) -> bool:
        try:
            client = self._owner(session_id)
        except NotFoundError:
            return False
        closed = client.close_session(session_id, timeout=timeout)
        with self._lock:
            self._owners.pop(session_id, None)
        return closed

    def list_sessions(self, *, timeout: Any = DEFAULT) -> list[Session]:
        """Every open session of every endpoint (each Session names its target)."""
        sessions = []
        for client in self.clients:
            for session in client.list_sessions(timeout=timeout):
                sessions.append(self._remember(session))
        return sessions

    # ----- server state --------------------------------------------------------------------
    def status(self, *, timeout: Any = DEFAULT) -> list[ServerStatus]:
        """The status of every endpoint."""
        return [client.status(timeout=timeout) for client in self.clients]

    def health(self, service: str = "", *, timeout: Any = DEFAULT) -> dict[str, str]:
        """target → health status; an unreachable endpoint reports "UNREACHABLE"."""
        result = {}
        for client in self.clients:
            try:
                result[client.target] = client.health(service, timeout=timeout)
            except Sam3Error as exc:
                if not exc.connection_failed:
                    raise
                result[client.target] = "UNREACHABLE"
        return result
