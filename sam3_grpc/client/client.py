"""The blocking Python client of one sam3-grpc server: the I/O around `_core`."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from sam3_grpc.client import _core, _health
from sam3_grpc.client._core import DEFAULT, DEFAULT_TARGET, Call, MiB, OutputOptions
from sam3_grpc.client.errors import DeadlineExceededError, NotFoundError, Sam3Error, from_rpc_error
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
    segmentation_service_pb2_grpc,
    status_service_pb2_grpc,
    video_service_pb2,
    video_service_pb2_grpc,
)


class PropagateStream:
    """The frames of one Propagate call, as an iterator of PropagateFrame.

    Breaking out of a for loop over it (or calling close()/cancel(), or leaving a with block)
    cancels the gRPC stream: the server stops after the frame in flight and the session stays
    usable. frames_done/frames_total follow the last frame received.
    """

    def __init__(self, call: Any, target: str, pinned_session: str | None = None) -> None:
        self._call = call
        self._target = target
        self._pinned = pinned_session  # the call carried this session's routing header
        self._closed = False
        self.frames_done = 0
        self.frames_total = 0

    def __iter__(self) -> PropagateStream:
        return self

    def __next__(self) -> PropagateFrame:
        if self._closed:
            raise StopIteration
        try:
            response = next(self._call)
        except StopIteration:
            self._closed = True
            raise
        except grpc.RpcError as exc:
            if self._closed:  # we cancelled it ourselves
                raise StopIteration from None
            self._closed = True
            raise from_rpc_error(exc, self._target, pinned_session=self._pinned) from None
        frame = _core.propagate_frame_from_proto(response)
        self.frames_done, self.frames_total = frame.frames_done, frame.frames_total
        return frame

    def cancel(self) -> None:
        """Cancels the stream (no-op once it has finished)."""
        if not self._closed:
            self._closed = True
            self._call.cancel()

    close = cancel

    def __enter__(self) -> PropagateStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def __del__(self) -> None:  # a generator-style stream dropped half-way still cancels
        try:
            self.cancel()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass


class VideoSession(_core.SessionHandle):
    """A video session bound to the client (or pool) that opened it; every method forwards to
    the client with this session's id. `info` is the last Session description received."""

    def add_prompt(
        self,
        frame_index: int,
        prompt: str | Prompt,
        *,
        object_id: int | None = None,
        output: OutputOptions | None = None,
        timeout: Any = DEFAULT,
    ) -> AddPromptResult:
        return self._client.add_prompt(
            self.session_id,
            frame_index,
            prompt,
            object_id=object_id,
            output=output,
            timeout=timeout,
        )

    def remove_object(self, object_id: int, *, timeout: Any = DEFAULT) -> Session:
        self.info = self._client.remove_object(self.session_id, object_id, timeout=timeout)
        return self.info

    def reset(self, *, timeout: Any = DEFAULT) -> Session:
        self.info = self._client.reset_session(self.session_id, timeout=timeout)
        return self.info

    def propagate(self, **options: Any) -> PropagateStream:
        """See Sam3Client.propagate."""
        return self._client.propagate(self.session_id, **options)

    def refresh(self, *, timeout: Any = DEFAULT) -> Session:
        self.info = self._client.get_session(self.session_id, timeout=timeout)
        return self.info

    def close(self, *, timeout: Any = DEFAULT) -> bool:
        """Closes the session on the server; True when it was still open."""
        self.closed = True
        return self._client.close_session(self.session_id, timeout=timeout)


class _SessionContext:
    """The `session(...)` context manager shared by Sam3Client and Sam3Pool."""

    def start_session(self, video_path: str | ServerPath, *, timeout: Any = DEFAULT) -> Session:
        raise NotImplementedError

    def upload_video(
        self,
        path: str | os.PathLike,
        *,
        chunk_size: int = MiB,
        sha256: bool | str = True,
        progress: Callable[[int, int], None] | None = None,
        timeout: Any = DEFAULT,
    ) -> Session:
        raise NotImplementedError

    def close_session(self, session_id: str, *, timeout: Any = DEFAULT) -> bool:
        raise NotImplementedError

    @contextlib.contextmanager
    def session(
        self,
        video_path: str | ServerPath | None = None,
        *,
        upload: str | os.PathLike | None = None,
        **upload_options: Any,
    ) -> Iterator[VideoSession]:
        """Opens a session and always closes it, even when the body raises.

        `video_path` names a video on the server (StartSession); `upload` a local file to
        upload first (UploadVideo; upload_options go to upload_video, e.g. progress=...).
        """
        _core.check_session_source(video_path, upload, upload_options)
        if upload is not None:
            info = self.upload_video(upload, **upload_options)
        else:
            assert video_path is not None
            info = self.start_session(video_path)
        handle = VideoSession(self, info)
        failed = True
        try:
            yield handle
            failed = False
        finally:
            try:
                self.close_session(handle.session_id)
            except Sam3Error:
                if not failed:  # do not hide the body's own exception behind a close error
                    raise


class Sam3Client(_SessionContext):
    """A client of one sam3-grpc server.

    target: "host:port". timeout: seconds allowed per unary call, retries included; by default
    each method has its own deadline (`DEFAULT_TIMEOUTS`: generous for model calls, none for
    the upload and propagation streams), None removes them. credentials:
    grpc.ssl_channel_credentials(...) for TLS. token: sent as "authorization: Bearer <token>"
    on every call. retry: how safe calls are retried (see RetryPolicy). channel: an existing
    grpc.Channel to use (then target only names it in errors, and close() leaves it open).
    Behind Envoy, the session routing header is kept and sent automatically.
    Thread-safe; use as a context manager or call close().
    """

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
        channel: grpc.Channel | None = None,
    ) -> None:
        if not isinstance(target, str):
            raise TypeError("Sam3Client takes one target; use Sam3Pool for several endpoints")
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
                channel = grpc.secure_channel(target, credentials, channel_options)
            else:
                channel = grpc.insecure_channel(target, channel_options)
        self._channel = channel
        request_class, response_class = _health.messages()
        self._stubs: dict[str, Any] = {
            "segmentation": segmentation_service_pb2_grpc.SegmentationServiceStub(channel),
            "video": video_service_pb2_grpc.VideoServiceStub(channel),
            "status": status_service_pb2_grpc.StatusServiceStub(channel),
            "health": _health.HealthStub(channel, request_class, response_class),
        }
        self._closed = False
        self._lock = threading.Lock()

    # ----- plumbing ------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Sam3Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sam3Client({self.target!r})"

    def _invoke(self, call: Call, timeout: Any, retry: RetryPolicy | None = None) -> Any:
        """Sends a unary call; safe calls are retried per the retry policy within the call's
        overall deadline. Returns (result, initial metadata)."""
        limit = _core.timeout_for(call.method, timeout, self.timeout)
        policy = (retry or self.retry) if call.safe else None
        deadline = None if limit is None else time.monotonic() + limit
        method = getattr(self._stubs[call.stub], call.method)
        metadata = self.routes.metadata(self._metadata, call.session_id)
        pinned = call.session_id if self.routes.get(call.session_id) else None
        attempt = 1
        while True:
            try:
                reply, rpc = method.with_call(
                    call.request, timeout=_core.remaining(deadline), metadata=metadata
                )
                return call.convert(reply, self.target), rpc.initial_metadata()
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, self.target, pinned_session=pinned)
            delay = _core.retry_delay(policy, attempt, error, deadline)
            if delay is None:
                raise error
            if policy is not None and policy.on_retry is not None:
                policy.on_retry(attempt, error, delay)
            assert policy is not None
            policy.sleep(delay)
            attempt += 1

    def _result(self, call: Call, timeout: Any, retry: RetryPolicy | None = None) -> Any:
        return self._invoke(call, timeout, retry)[0]

    def _session_result(self, call: Call, timeout: Any) -> Session:
        """A call answered by a Session: its route is remembered (a new session's) or kept."""
        session, metadata = self._invoke(call, timeout)
        route = self.routes.remember(session.session_id, metadata) or self.routes.get(
            session.session_id
        )
        return _core.with_route(session, route)

    # ----- images --------------------------------------------------------------------------
    def segment_image(
        self,
        image: Any,
        prompts: str | Prompt | Sequence[str | Prompt],
        *,
        output: OutputOptions | None = None,
        timeout: Any = DEFAULT,
    ) -> SegmentResult:
        """Segments one image with one or more prompts.

        image: a local path (its bytes are sent), encoded bytes (JPEG/PNG/...), an RGB uint8
        numpy array (H, W, 3), a PIL image, or ServerPath("rel/path.jpg") for a file inside the
        server's media root. prompts: a str (text), a Prompt, or a list of them.
        """
        call = _core.segment_image_call(_core.image_to_proto(image), as_prompts(prompts), output)
        return self._result(call, timeout)

    # ----- video sessions ------------------------------------------------------------------
    def start_session(self, video_path: str | ServerPath, *, timeout: Any = DEFAULT) -> Session:
        """Opens a session on a video already on the server (inside its media root)."""
        return self._session_result(_core.start_session_call(video_path), timeout)

    def upload_video(
        self,
        path: str | os.PathLike,
        *,
        chunk_size: int = MiB,
        sha256: bool | str = True,
        progress: Callable[[int, int], None] | None = None,
        timeout: Any = DEFAULT,
    ) -> Session:
        """Streams a local video file to the server and opens a session on it.

        The file is read chunk by chunk, never whole. sha256=True hashes it first (one extra
        read) so the server can verify it; pass a hex digest to skip that read, or False.
        progress(sent_bytes, total_bytes) is called after each chunk is handed to gRPC.
        Never retried: a failed upload raises.
        """
        path = os.fspath(path)
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        size = os.stat(path).st_size  # FileNotFoundError for a bad path, before any call
        digest = _core.file_sha256(path) if sha256 is True else (sha256 or "").lower()

        def requests() -> Iterator[video_service_pb2.UploadVideoRequest]:
            yield _core.upload_metadata(path, size, digest)
            sent = 0
            with open(path, "rb") as handle:
                while sent < size:
                    chunk = handle.read(min(chunk_size, size - sent))
                    if not chunk:
                        break
                    yield video_service_pb2.UploadVideoRequest(chunk=chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, size)

        limit = _core.timeout_for("UploadVideo", timeout, DEFAULT)
        try:
            reply, rpc = self._stubs["video"].UploadVideo.with_call(
                requests(), timeout=limit, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None
        session = _core.session_from_proto(reply.session, self.target)
        return _core.with_route(
            session, self.routes.remember(session.session_id, rpc.initial_metadata())
        )

    def add_prompt(
        self,
        session_id: str,
        frame_index: int,
        prompt: str | Prompt,
        *,
        object_id: int | None = None,
        output: OutputOptions | None = None,
        timeout: Any = DEFAULT,
    ) -> AddPromptResult:
        """Adds a prompt on one frame: new object(s), or with object_id a refinement.
        Returns every object on that frame and the ids this prompt created or refined."""
        call = _core.add_prompt_call(session_id, frame_index, prompt, object_id, output)
        return self._result(call, timeout)

    def remove_object(self, session_id: str, object_id: int, *, timeout: Any = DEFAULT) -> Session:
        return self._session_result(_core.remove_object_call(session_id, object_id), timeout)

    def reset_session(self, session_id: str, *, timeout: Any = DEFAULT) -> Session:
        return self._session_result(_core.reset_session_call(session_id), timeout)

    def propagate(
        self,
        session_id: str,
        *,
        direction: str = "forward",
        start_frame_index: int | None = None,
        max_frames: int = 0,
        output: OutputOptions | None = None,
        timeout: Any = DEFAULT,
    ) -> PropagateStream:
        """Tracks every object through the video; iterate the result for one PropagateFrame
        per processed frame. direction: "forward", "backward" or "both". Breaking out of the
        loop (or close()) cancels the stream; the session stays usable."""
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
        return PropagateStream(call, self.target, pinned)

    def get_session(self, session_id: str, *, timeout: Any = DEFAULT) -> Session:
        return self._session_result(_core.get_session_call(session_id), timeout)

    def list_sessions(self, *, timeout: Any = DEFAULT) -> list[Session]:
        return self._result(_core.list_sessions_call(), timeout)

    def close_session(self, session_id: str, *, timeout: Any = DEFAULT) -> bool:
        """Closes a session; False when it was already closed (closing twice is fine)."""
        closed = self._result(_core.close_session_call(session_id), timeout)
        self.routes.forget(session_id)
        return closed

    # ----- server state --------------------------------------------------------------------
    def status(self, *, timeout: Any = DEFAULT) -> ServerStatus:
        return self._result(_core.status_call(), timeout)

    def health(
        self, service: str = "", *, timeout: Any = DEFAULT, retry: RetryPolicy | None = None
    ) -> str:
        """Standard grpc.health.v1 check: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or
        "UNKNOWN". service "" is the whole server; a service the server does not know is
        "SERVICE_UNKNOWN"."""
        try:
            return self._result(_core.health_call(service), timeout, retry)
        except NotFoundError:  # grpc.health.v1: an unknown service fails with NOT_FOUND
            return "SERVICE_UNKNOWN"

    def wait_until_serving(
        self, timeout: float = 60.0, *, service: str = "", poll_interval: float = 0.5
    ) -> None:
        """Blocks until health reports SERVING (e.g. while the model loads); raises
        DeadlineExceededError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                last = self.health(service, timeout=_core.poll_timeout(deadline), retry=NO_RETRY)
                if last == "SERVING":
                    return
            except Sam3Error as exc:
                if not _core.keeps_waiting(exc):
                    raise
                last = exc.message
            if time.monotonic() + poll_interval >= deadline:
                raise _core.not_serving_error(self.target, timeout, last)
            time.sleep(poll_interval)


__all__ = [
    "DEFAULT",
    "DeadlineExceededError",
    "PropagateStream",
    "Sam3Client",
    "VideoSession",
]
