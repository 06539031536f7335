"""The asyncio variant of the client: the methods of Sam3Client as coroutines.

    from sam3_grpc.client.aio import AsyncSam3Client

    async with AsyncSam3Client("localhost:50051") as client:
        result = await client.segment_image("photo.jpg", "a dog")
        async with client.session(upload="clip.mp4") as session:
            await session.add_prompt(0, "a car")
            async for frame in session.propagate():
                ...

Same results, errors and retry rules as the synchronous client. Retry delays are awaited with
asyncio.sleep unless the RetryPolicy was given a sleep function of its own (which may be a
coroutine function). Files are read in a worker thread, so uploads never block the loop.
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

from sam3_grpc.client import _convert, _health
from sam3_grpc.client.client import DEFAULT, DEFAULT_TARGET, MiB, VideoSession, file_sha256
from sam3_grpc.client.errors import NotFoundError, Sam3Error, from_rpc_error
from sam3_grpc.client.retry import RetryPolicy
from sam3_grpc.client.types import (
    AddPromptResult,
    Prompt,
    PropagateFrame,
    SegmentResult,
    ServerPath,
    ServerStatus,
    Session,
    as_prompt,
    as_prompts,
)
from sam3_grpc.v1 import (
    segmentation_service_pb2_grpc,
    status_service_pb2,
    status_service_pb2_grpc,
    video_service_pb2,
    video_service_pb2_grpc,
)


class AsyncPropagateStream:
    """The frames of one Propagate call, as an async iterator of PropagateFrame. Leaving an
    `async with` block, `aclose()` or `cancel()` cancels the gRPC stream."""

    def __init__(self, call: Any, target: str) -> None:
        self._call = call
        self._target = target
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
            raise from_rpc_error(exc, self._target) from None
        if response is grpc.aio.EOF:
            self._closed = True
            raise StopAsyncIteration
        frame = _convert.propagate_frame_from_proto(response)
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


class AsyncVideoSession(VideoSession):
    """A session bound to an AsyncSam3Client; its methods are coroutines (propagate returns
    an AsyncPropagateStream)."""

    async def add_prompt(
        self, frame_index: int, prompt: str | Prompt, **kwargs: Any
    ) -> AddPromptResult:
        return await self._client.add_prompt(self.session_id, frame_index, prompt, **kwargs)

    async def remove_object(self, object_id: int, **kwargs: Any) -> Session:
        self.info = await self._client.remove_object(self.session_id, object_id, **kwargs)
        return self.info

    async def reset(self, **kwargs: Any) -> Session:
        self.info = await self._client.reset_session(self.session_id, **kwargs)
        return self.info

    def propagate(self, **kwargs: Any) -> AsyncPropagateStream:
        return self._client.propagate(self.session_id, **kwargs)

    async def refresh(self, **kwargs: Any) -> Session:
        self.info = await self._client.get_session(self.session_id, **kwargs)
        return self.info

    async def close(self, **kwargs: Any) -> bool:
        self.closed = True
        return await self._client.close_session(self.session_id, **kwargs)


class AsyncSam3Client:
    """asyncio client of one server; the constructor takes Sam3Client's arguments. Create it
    inside the event loop that uses it."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        max_message_bytes: int = 64 * MiB,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if not isinstance(target, str):
            raise TypeError("AsyncSam3Client takes one target")
        self.target = target
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        channel_options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *options,
        ]
        if credentials is not None:
            channel = grpc.aio.secure_channel(target, credentials, channel_options)
        else:
            channel = grpc.aio.insecure_channel(target, channel_options)
        self._channel = channel
        self._segmentation = segmentation_service_pb2_grpc.SegmentationServiceStub(channel)
        self._video = video_service_pb2_grpc.VideoServiceStub(channel)
        self._status = status_service_pb2_grpc.StatusServiceStub(channel)
        request_class, response_class = _health.messages()
        self._health_check = channel.unary_unary(
            _health.CHECK_METHOD,
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncSam3Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncSam3Client({self.target!r})"

    async def _sleep(self, policy: RetryPolicy, delay: float) -> None:
        if policy.sleep is time.sleep:
            await asyncio.sleep(delay)
            return
        result = policy.sleep(delay)
        if inspect.isawaitable(result):
            await result

    async def _unary(self, method: Callable, request: Any, *, timeout: Any, safe: bool) -> Any:
        timeout = self.timeout if timeout is DEFAULT else timeout
        policy = self.retry if safe else None
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 1
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, self.target)
            if (
                policy is None
                or attempt >= policy.max_attempts
                or (error.code not in policy.retryable_codes)
            ):
                raise error
            delay = policy.delay(attempt, error.retry_after)
            if delay is None or (deadline is not None and time.monotonic() + delay >= deadline):
                raise error
            if policy.on_retry is not None:
                policy.on_retry(attempt, error, delay)
            await self._sleep(policy, delay)
            attempt += 1

    # ----- images --------------------------------------------------------------------------
    async def segment_image(
        self,
        image: Any,
        prompts: str | Prompt | Sequence[str | Prompt],
        *,
        timeout: Any = DEFAULT,
        **output: Any,
    ) -> SegmentResult:
        """See Sam3Client.segment_image; a path is read in a worker thread."""
        prompt_list = as_prompts(prompts)
        if not isinstance(image, ServerPath) and (
            isinstance(image, (str, os.PathLike))
            or hasattr(image, "shape")
            or type(image).__module__.startswith("PIL.")
        ):
            image = await asyncio.to_thread(_convert.image_to_proto, image)
        request = _convert.segment_request(image, prompt_list, **output)
        response = await self._unary(
            self._segmentation.SegmentImage, request, timeout=timeout, safe=True
        )
        return _convert.segment_result_from_proto(response, prompt_list)

    # ----- video sessions ------------------------------------------------------------------
    async def start_session(
        self, video_path: str | ServerPath, *, timeout: Any = DEFAULT
    ) -> Session:
        path = video_path.path if isinstance(video_path, ServerPath) else os.fspath(video_path)
        response = await self._unary(
            self._video.StartSession,
            video_service_pb2.StartSessionRequest(video_path=path),
            timeout=timeout,
            safe=False,
        )
        return _convert.session_from_proto(response.session, self.target)

    async def upload_video(
        self,
        path: str | os.PathLike,
        *,
        chunk_size: int = MiB,
        sha256: bool | str = True,
        progress: Callable[[int, int], None] | None = None,
        timeout: float | None = None,
    ) -> Session:
        """See Sam3Client.upload_video. Never retried."""
        path = os.fspath(path)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        size = os.stat(path).st_size
        if sha256 is True:
            digest = await asyncio.to_thread(file_sha256, path)
        else:
            digest = sha256.lower() if isinstance(sha256, str) else ""

        async def requests() -> AsyncIterator[video_service_pb2.UploadVideoRequest]:
            yield _convert.upload_metadata(path, size, digest)
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
            response = await self._video.UploadVideo(
                requests(), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None
        return _convert.session_from_proto(response.session, self.target)

    async def add_prompt(
        self,
        session_id: str,
        frame_index: int,
        prompt: str | Prompt,
        *,
        object_id: int | None = None,
        timeout: Any = DEFAULT,
        **output: Any,
    ) -> AddPromptResult:
        request = _convert.add_prompt_request(
            session_id, frame_index, as_prompt(prompt), object_id=object_id, **output
        )
        response = await self._unary(self._video.AddPrompt, request, timeout=timeout, safe=False)
        return _convert.add_prompt_result_from_proto(response)

    async def remove_object(
        self, session_id: str, object_id: int, *, timeout: Any = DEFAULT
    ) -> Session:
        response = await self._unary(
            self._video.RemoveObject,
            video_service_pb2.RemoveObjectRequest(session_id=session_id, object_id=object_id),
            timeout=timeout,
            safe=False,
        )
        return _convert.session_from_proto(response.session, self.target)

    async def reset_session(self, session_id: str, *, timeout: Any = DEFAULT) -> Session:
        response = await self._unary(
            self._video.ResetSession,
            video_service_pb2.ResetSessionRequest(session_id=session_id),
            timeout=timeout,
            safe=True,
        )
        return _convert.session_from_proto(response.session, self.target)

    def propagate(
        self, session_id: str, *, timeout: float | None = None, **options: Any
    ) -> AsyncPropagateStream:
        """See Sam3Client.propagate; iterate with `async for`."""
        request = _convert.propagate_request(session_id, **options)
        call = self._video.Propagate(request, timeout=timeout, metadata=self._metadata)
        return AsyncPropagateStream(call, self.target)

    async def get_session(self, session_id: str, *, timeout: Any = DEFAULT) -> Session:
        response = await self._unary(
            self._video.GetSession,
            video_service_pb2.GetSessionRequest(session_id=session_id),
            timeout=timeout,
            safe=True,
        )
        return _convert.session_from_proto(response.session, self.target)

    async def list_sessions(self, *, timeout: Any = DEFAULT) -> list[Session]:
        response = await self._unary(
            self._video.ListSessions,
            video_service_pb2.ListSessionsRequest(),
            timeout=timeout,
            safe=True,
        )
        return [_convert.session_from_proto(s, self.target) for s in response.sessions]

    async def close_session(self, session_id: str, *, timeout: Any = DEFAULT) -> bool:
        response = await self._unary(
            self._video.CloseSession,
            video_service_pb2.CloseSessionRequest(session_id=session_id),
            timeout=timeout,
            safe=True,
        )
        return response.closed

    @contextlib.asynccontextmanager
    async def session(
        self,
        video_path: str | ServerPath | None = None,
        *,
        upload: str | os.PathLike | None = None,
        **upload_options: Any,
    ) -> AsyncIterator[AsyncVideoSession]:
        """See Sam3Client.session: always closes the session, even when the body raises."""
        if (video_path is None) == (upload is None):
            raise ValueError(
                "give exactly one of video_path (a video on the server) or "
                "upload (a local file to upload)"
            )
        if upload is not None:
            info = await self.upload_video(upload, **upload_options)
        else:
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
        response = await self._unary(
            self._status.GetServerStatus,
            status_service_pb2.GetServerStatusRequest(),
            timeout=timeout,
            safe=True,
        )
        return _convert.status_from_proto(response, self.target)

    async def health(self, service: str = "", *, timeout: Any = DEFAULT) -> str:
        request_class, _ = _health.messages()
        try:
            response = await self._unary(
                self._health_check, request_class(service=service), timeout=timeout, safe=True
            )
        except NotFoundError:
            return "SERVICE_UNKNOWN"
        return _health.STATUS_NAMES.get(response.status, "UNKNOWN")
