"""The asyncio Python client: the methods of Sam3Client, with the same signatures, as coroutines.

    from sam3_grpc.client.aio import AsyncSam3Client

    async with AsyncSam3Client("localhost:50051") as client:
        result = await client.segment_image("photo.jpg", "a dog")
        async with client.session(upload="clip.mp4") as session:
            await session.add_prompt(0, "a car")
            async for frame in session.propagate():
                ...

Same results, errors, deadlines and retry rules as the blocking client (both are thin I/O around
`_core`). Retry delays are awaited with asyncio.sleep unless the RetryPolicy was given a sleep
function of its own (which may be a coroutine function). Files are read in a worker thread, so
uploads never block the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from sam3_grpc.client import _core, _health
from sam3_grpc.client._core import DEFAULT, DEFAULT_TARGET, Call, MiB, OutputOptions
from sam3_grpc.client.errors import NotFoundError, Sam3Error, from_rpc_error
from sam3_grpc.client.retry import NO_RETRY, RetryPolicy
from sam3_grpc.client.types import (
    AddPromptResult,
    Prompt,
    PropagateFrame,
    SegmentResult,
    ServerPath,
    ServerStatus,
    Session,
    as_prompts,
)
from sam3_grpc.v1 import (
    common_pb2,
    segmentation_service_pb2_grpc,
    status_service_pb2_grpc,
    video_service_pb2,
    video_service_pb2_grpc,
)


class AsyncPropagateStream:
    """The frames of one Propagate call, as an async iterator of PropagateFrame. Leaving an
    `async with` block, `aclose()` or `cancel()` cancels the gRPC stream."""

    def __init__(self, call: Any, target: str, pinned_session: str | None = None) -> None:
        self._call = call
        self._target = target
        self._pinned = pinned_session  # the call carried this session's routing header
        self._closed = False
        self.frames_done = 0
        self.frames_total = 0

    def __aiter__(self) -> AsyncPropagateStream:
        return self

    async def __anext__(self) -> PropagateFrame:
        if self._closed:
            raise StopAsyncIteration
        try:
            response = await self._call.read()
        except asyncio.CancelledError:
            self.cancel()
            raise
        except grpc.RpcError as exc:
            if self._closed:
                raise StopAsyncIteration from None
            self._closed = True
            raise from_rpc_error(exc, self._target, pinned_session=self._pinned) from None
        if response is grpc.aio.EOF:  # type: ignore[attr-defined]  # missing from grpc's stubs
            self._closed = True
            raise StopAsyncIteration
        frame = _core.propagate_frame_from_proto(response)
        self.frames_done, self.frames_total = frame.frames_done, frame.frames_total
        return frame

    def cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._call.cancel()

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> AsyncPropagateStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()


class AsyncVideoSession(_core.SessionHandle):
    """A session bound to an AsyncSam3Client: the methods of VideoSession, as coroutines
    (propagate returns an AsyncPropagateStream)."""

    async def add_prompt(
        self,
        frame_index: int,
        prompt: str | Prompt,
        *,
        object_id: int | None = None,
        output: OutputOptions | None = None,
        timeout: Any = DEFAULT,
    ) -> AddPromptResult:
        return await self._client.add_prompt(
            self.session_id,
            frame_index,
            prompt,
            object_id=object_id,
            output=output,
            timeout=timeout,
        )

    async def remove_object(self, object_id: int, *, timeout: Any = DEFAULT) -> Session:
        self.info = await self._client.remove_object(self.session_id, object_id, timeout=timeout)
        return self.info

    async def reset(self, *, timeout: Any = DEFAULT) -> Session:
        self.info = await self._client.reset_session(self.session_id, timeout=timeout)
        return self.info

    def propagate(self, **options: Any) -> AsyncPropagateStream:
        """See AsyncSam3Client.propagate."""
        return self._client.propagate(self.session_id, **options)

    async def refresh(self, *, timeout: Any = DEFAULT) -> Session:
        self.info = await self._client.get_session(self.session_id, timeout=timeout)
        return self.info

    async def close(self, *, timeout: Any = DEFAULT) -> bool:
        self.closed = True
        return await self._client.close_session(self.session_id, timeout=timeout)


class AsyncSam3Client:
    """asyncio client of one server; the constructor takes Sam3Client's arguments (`channel`
    must then be a grpc.aio channel). Create it inside the event loop that uses it."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: Any = DEFAULT,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        max_message_bytes: int = 64 * MiB,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        if not isinstance(target, str):
            raise TypeError("AsyncSam3Client takes one target")
        self.target = target
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.routes = _core.Routes()
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._owns_channel = channel is None
        if channel is None:
            channel_options = _core.channel_options(max_message_bytes, options)
            if credentials is not None:
                channel = grpc.aio.secure_channel(target, credentials, channel_options)
            else:
                channel = grpc.aio.insecure_channel(target, channel_options)
        self._channel = channel
        request_class, response_class = _health.messages()
        self._stubs: dict[str, Any] = {
            "segmentation": segmentation_service_pb2_grpc.SegmentationServiceStub(channel),
            "video": video_service_pb2_grpc.VideoServiceStub(channel),
            "status": status_service_pb2_grpc.StatusServiceStub(channel),
            "health": _health.HealthStub(channel, request_class, response_class),
        }

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close(grace=None)

    async def __aenter__(self) -> AsyncSam3Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncSam3Client({self.target!r})"

    @staticmethod
    async def _sleep(policy: RetryPolicy, delay: float) -> None:
        if policy.sleep is time.sleep:
            await asyncio.sleep(delay)
            return
        result: Any = policy.sleep(delay)
        if inspect.isawaitable(result):
            await result

    async def _invoke(self, call: Call, timeout: Any, retry: RetryPolicy | None = None) -> Any:
        """See Sam3Client._invoke. Returns (result, initial metadata)."""
        limit = _core.timeout_for(call.method, timeout, self.timeout)
        policy = (retry or self.retry) if call.safe else None
        deadline = None if limit is None else time.monotonic() + limit
        method = getattr(self._stubs[call.stub], call.method)
        metadata = self.routes.metadata(self._metadata, call.session_id)
        pinned = call.session_id if self.routes.get(call.session_id) else None
        attempt = 1
        while True:
            try:
                rpc = method(call.request, timeout=_core.remaining(deadline), metadata=metadata)
                reply = await rpc
                return call.convert(reply, self.target), await rpc.initial_metadata()
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, self.target, pinned_session=pinned)
            delay = _core.retry_delay(policy, attempt, error, deadline)
            if delay is None:
                raise error
            assert policy is not None
            if policy.on_retry is not None:
                policy.on_retry(attempt, error, delay)
            await self._sleep(policy, delay)
            attempt += 1

    async def _result(self, call: Call, timeout: Any, retry: RetryPolicy | None = None) -> Any:
        return (await self._invoke(call, timeout, retry))[0]

    async def _session_result(self, call: Call, timeout: Any) -> Session:
        session, metadata = await self._invoke(call, timeout)
        route = self.routes.remember(session.session_id, metadata) or self.routes.get(
            session.session_id
        )
        return _core.with_route(session, route)

    # ----- images --------------------------------------------------------------------------
    async def segment_image(
        self,
        image: Any,
        prompts: str | Prompt | Sequence[str | Prompt],
        *,
        output: OutputOptions | None = None,
        timeout: Any = DEFAULT,
    ) -> SegmentResult:
        """See Sam3Client.segment_image; a path or an array is read or encoded in a worker
        thread."""
        message = (
            image
            if isinstance(image, common_pb2.Image)
            else await asyncio.to_thread(_core.image_to_proto, image)
        )
        call = _core.segment_image_call(message, as_prompts(prompts), output)
        return await self._result(call, timeout)

    # ----- video sessions ------------------------------------------------------------------
    async def start_session(
        self, video_path: str | ServerPath, *, timeout: Any = DEFAULT
    ) -> Session:
        """See Sam3Client.start_session."""
        return await self._session_result(_core.start_session_call(video_path), timeout)

    async def upload_video(
        self,
        path: str | os.PathLike,
        *,
        chunk_size: int = MiB,
        sha256: bool | str = True,
        progress: Callable[[int, int], None] | None = None,
        timeout: Any = DEFAULT,
    ) -> Session:
        """See Sam3Client.upload_video. Never retried."""
        path = os.fspath(path)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        size = os.stat(path).st_size
        if sha256 is True:
            digest = await asyncio.to_thread(_core.file_sha256, path)
        else:
            digest = (sha256 or "").lower()

        async def requests() -> AsyncIterator[video_service_pb2.UploadVideoRequest]:
            yield _core.upload_metadata(path, size, digest)
            sent = 0
            handle = await asyncio.to_thread(open, path, "rb")
            try:
                while sent < size:
                    chunk = await asyncio.to_thread(handle.read, min(chunk_size, size - sent))
                    if not chunk:
                        break
                    yield video_service_pb2.UploadVideoRequest(chunk=chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, size)
            finally:
                handle.close()

        try:
            rpc = self._stubs["video"].UploadVideo(
                requests(),
                timeout=_core.timeout_for("UploadVideo", timeout, DEFAULT),
                metadata=self._metadata,
            )
            reply = await rpc
            metadata = await rpc.initial_metadata()
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None
        session = _core.session_from_proto(reply.session, self.target)
        return _core.with_route(session, self.routes.remember(session.session_id, metadata))

    async def add_prompt(
        self,
        session_id: str,
        frame_index: int,
        prompt: str | Prompt,
        *,
        object_id: int | None = None,
        output: OutputOptions | None = None,
        timeout: Any = DEFAULT,
    ) -> AddPromptResult:
        """See Sam3Client.add_prompt."""
        call = _core.add_prompt_call(session_id, frame_index, prompt, object_id, output)
        return await self._result(call, timeout)

    async def remove_object(
        self, session_id: str, object_id: int, *, timeout: Any = DEFAULT
    ) -> Session:
        return await self._session_result(_core.remove_object_call(session_id, object_id), timeout)

    async def reset_session(self, session_id: str, *, timeout: Any = DEFAULT) -> Session:
        return await self._session_result(_core.reset_session_call(session_id), timeout)

    def propagate(
        self,
        session_id: str,
        *,
        direction: str = "forward",
        start_frame_index: int | None = None,
        max_frames: int = 0,
        output: OutputOptions | None = None,
        timeout: Any = DEFAULT,
    ) -> AsyncPropagateStream:
        """See Sam3Client.propagate; iterate with `async for`."""
        request = _core.propagate_request(
            session_id,
            direction=direction,
            start_frame_index=start_frame_index,
            max_frames=max_frames,
            output=output,
        )
        call = self._stubs["video"].Propagate(
            request,
            timeout=_core.timeout_for("Propagate", timeout, DEFAULT),
            metadata=self.routes.metadata(self._metadata, session_id),
        )
        pinned = session_id if self.routes.get(session_id) else None
        return AsyncPropagateStream(call, self.target, pinned)

    async def get_session(self, session_id: str, *, timeout: Any = DEFAULT) -> Session:
        return await self._session_result(_core.get_session_call(session_id), timeout)

    async def list_sessions(self, *, timeout: Any = DEFAULT) -> list[Session]:
        return await self._result(_core.list_sessions_call(), timeout)

    async def close_session(self, session_id: str, *, timeout: Any = DEFAULT) -> bool:
        closed = await self._result(_core.close_session_call(session_id), timeout)
        self.routes.forget(session_id)
        return closed

    @contextlib.asynccontextmanager
    async def session(
        self,
        video_path: str | ServerPath | None = None,
        *,
        upload: str | os.PathLike | None = None,
        **upload_options: Any,
    ) -> AsyncIterator[AsyncVideoSession]:
        """See Sam3Client.session: always closes the session, even when the body raises."""
        _core.check_session_source(video_path, upload, upload_options)
        if upload is not None:
            info = await self.upload_video(upload, **upload_options)
        else:
            assert video_path is not None
            info = await self.start_session(video_path)
        handle = AsyncVideoSession(self, info)
        failed = True
        try:
            yield handle
            failed = False
        finally:
            try:
                await self.close_session(handle.session_id)
            except Sam3Error:
                if not failed:
                    raise

    # ----- server state --------------------------------------------------------------------
    async def status(self, *, timeout: Any = DEFAULT) -> ServerStatus:
        return await self._result(_core.status_call(), timeout)

    async def health(
        self, service: str = "", *, timeout: Any = DEFAULT, retry: RetryPolicy | None = None
    ) -> str:
        """See Sam3Client.health."""
        try:
            return await self._result(_core.health_call(service), timeout, retry)
        except NotFoundError:
            return "SERVICE_UNKNOWN"

    async def wait_until_serving(
        self, timeout: float = 60.0, *, service: str = "", poll_interval: float = 0.5
    ) -> None:
        """See Sam3Client.wait_until_serving."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                last = await self.health(
                    service, timeout=_core.poll_timeout(deadline), retry=NO_RETRY
                )
                if last == "SERVING":
                    return
            except Sam3Error as exc:
                if not _core.keeps_waiting(exc):
                    raise
                last = exc.message
            if time.monotonic() + poll_interval >= deadline:
                raise _core.not_serving_error(self.target, timeout, last)
            await asyncio.sleep(poll_interval)
