"""Drives an AsyncSam3Client through the blocking interface of Sam3Client, so one scenario suite
runs against both clients.

The asyncio client lives on an event loop of its own thread (grpc.aio channels belong to the
loop that made them). Every coroutine the bridged object returns is run there to completion;
an async iterator (a propagation stream) becomes a blocking iterator whose `cancel()`/`close()`
and `with` block cancel the stream; an async context manager (`session(...)`) becomes a blocking
one; session handles are bridged the same way. Nothing else is translated, so the scenario sees
exactly what the asyncio client returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from typing import Any


class Loop:
    """An event loop on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = 120.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class BridgedStream:
    def __init__(self, stream: Any, loop: Loop) -> None:
        self._stream = stream
        self._loop = loop

    def __iter__(self) -> BridgedStream:
        return self

    def __next__(self) -> Any:
        async def next_frame():
            try:
                return await self._stream.__anext__()
            except StopAsyncIteration:
                return StopIteration

        frame = self._loop.run(next_frame())
        if frame is StopIteration:
            raise StopIteration
        return frame

    def cancel(self) -> None:
        self._stream.cancel()

    close = cancel

    def __enter__(self) -> BridgedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Bridged:
    """The blocking face of an asyncio object (a client or a session handle)."""

    def __init__(self, target: Any, loop: Loop) -> None:
        self._target = target
        self._loop = loop

    def _wrap(self, value: Any) -> Any:
        if hasattr(value, "__anext__"):
            return BridgedStream(value, self._loop)
        if hasattr(value, "_client") and hasattr(value, "session_id"):  # a session handle
            return Bridged(value, self._loop)
        return value

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        async def on_the_loop(*args: Any, **kwargs: Any) -> Any:
            # Even a plain method runs here: it may start a grpc.aio call, which belongs to
            # the loop it was made on.
            result = attribute(*args, **kwargs)
            return await result if inspect.iscoroutine(result) else result

        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._loop.run(on_the_loop(*args, **kwargs))
            if hasattr(result, "__aenter__") and not hasattr(result, "__anext__"):
                return self._context(result)
            return self._wrap(result)

        return call

    @contextlib.contextmanager
    def _context(self, manager: Any):
        value = self._loop.run(manager.__aenter__())
        try:
            yield self._wrap(value)
        except BaseException as exc:
            if not self._loop.run(manager.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self._loop.run(manager.__aexit__(None, None, None))

    def __enter__(self) -> Bridged:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def async_client(loop: Loop, target: str, **options: Any) -> Bridged:
    """An AsyncSam3Client made on `loop`, behind the blocking interface."""
    from sam3_grpc.client import AsyncSam3Client

    async def make() -> Any:
        return AsyncSam3Client(target, **options)

    return Bridged(loop.run(make()), loop)
