"""The synchronous Python client of one sam3-grpc server."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from sam3_grpc.client import _convert, _health
from sam3_grpc.client.errors import Sam3Error, from_rpc_error
from sam3_grpc.client.retry import RetryPolicy
from sam3_grpc.client.types import (
    AddPromptResult,
    FrameResult,
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

MiB = 1024 * 1024
DEFAULT_TARGET = "localhost:50051"


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()  # "use the client's timeout"


class PropagateStream:
    """The frames of one Propagate call, as an iterator of PropagateFrame.

    Breaking out of a for loop over it (or calling close()/cancel(), or leaving a with block)
    cancels the gRPC stream: the server stops after the frame in flight and the session stays
    usable. frames_done/frames_total follow the last frame received.
    """

    def __init__(self, call: Any, target: str) -> None:
        self._call = call
        self._target = target
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
            raise from_rpc_error(exc, self._target) from None
        frame = _convert.propagate_frame_from_proto(response)
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


class VideoSession:
    """A video session bound to the client (or pool) that opened it.

    Obtained from `client.session(...)`; every method forwards to the client with this
    session's id. `info` is the last Session description received.
    """

    def __init__(self, client: Any, info: Session) -> None:
        self._client = client
        self.info = info
        self.closed = False

    @property
    def session_id(self) -> str:
        return self.info.session_id

    @property
    def frame_count(self) -> int:
        return self.info.frame_count

    @property
    def fps(self) -> float:
        return self.info.fps

    @property
    def width(self) -> int:
        return self.info.width

    @property
    def height(self) -> int:
        return self.info.height

    def add_prompt(self, frame_index: int, prompt: str | Prompt, **kwargs: Any) -> AddPromptResult:
        return self._client.add_prompt(self.session_id, frame_index, prompt, **kwargs)

    def remove_object(self, object_id: int, **kwargs: Any) -> Session:
        self.info = self._client.remove_object(self.session_id, object_id, **kwargs)
        return self.info

    def reset(self, **kwargs: Any) -> Session:
        self.info = self._client.reset_session(self.session_id, **kwargs)
        return self.info

    def propagate(self, **kwargs: Any) -> PropagateStream:
        return self._client.propagate(self.session_id, **kwargs)

    def refresh(self, **kwargs: Any) -> Session:
        self.info = self._client.get_session(self.session_id, **kwargs)
        return self.info

    def close(self, **kwargs: Any) -> bool:
        """Closes the session on the server; True when it was still open."""
        self.closed = True
        return self._client.close_session(self.session_id, **kwargs)

    def __repr__(self) -> str:
        return f"VideoSession({self.info!r})"


class _SessionContext:
    """The `session(...)` context manager shared by Sam3Client and Sam3Pool."""

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
        if (video_path is None) == (upload is None):
            raise ValueError(
                "give exactly one of video_path (a video on the server) or "
                "upload (a local file to upload)"
            )
        if upload is not None:
            info = self.upload_video(upload, **upload_options)
        else:
            if upload_options:
                raise TypeError(f"unexpected options without upload: {sorted(upload_options)}")
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


def file_sha256(path: str | os.PathLike, chunk_size: int = MiB) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class Sam3Client(_SessionContext):
    """A client of one sam3-grpc server.

    target: "host:port". timeout: seconds allowed per unary call, retries included (None: no
    deadline); streaming calls (upload_video, propagate) default to no deadline. credentials:
    grpc.ssl_channel_credentials(...) for TLS. token: sent as "authorization: Bearer <token>"
    on every call. retry: how safe calls are retried (see RetryPolicy).
    Thread-safe; use as a context manager or call close().
    """

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
        channel: grpc.Channel | None = None,
    ) -> None:
        if not isinstance(target, str):
            raise TypeError("Sam3Client takes one target; use Sam3Pool for several endpoints")
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
        self._owns_channel = channel is None
        if channel is None:
            if credentials is not None:
                channel = grpc.secure_channel(target, credentials, channel_options)
            else:
                channel = grpc.insecure_channel(target, channel_options)
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

    def _timeout(self, timeout: Any) -> float | None:
        return self.timeout if timeout is DEFAULT else timeout

    def _unary(
        self,
        method: Callable,
        request: Any,
        *,
        timeout: Any,
        safe: bool,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Calls a unary method; safe calls are retried per the retry policy within the
        call's overall deadline."""
        timeout = self._timeout(timeout)
        policy = (retry or self.retry) if safe else None
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 1
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
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
            policy.sleep(delay)
            attempt += 1

    # ----- images --------------------------------------------------------------------------
    def segment_image(
        self,
        image: Any,
        prompts: str | Prompt | Sequence[str | Prompt],
        *,
        mask_encoding: str = "rle",
        include_polygons: bool = False,
        polygon_tolerance: float = 0.0,
        score_threshold: float | None = None,
        min_area: int = 0,
        max_detections: int = 0,
        timeout: Any = DEFAULT,
    ) -> SegmentResult:
        """Segments one image with one or more prompts.

        image: a local path (its bytes are sent), encoded bytes (JPEG/PNG/...), an RGB uint8
        numpy array (H, W, 3), a PIL image, or ServerPath("rel/path.jpg") for a file inside the
        server's media root. prompts: a str (text), a Prompt, or a list of them.
        mask_encoding: "rle" (default), "png" or "none".
        """
        prompt_list = as_prompts(prompts)
        request = _convert.segment_request(
            image,
            prompt_list,
            mask_encoding=mask_encoding,
            include_polygons=include_polygons,
            polygon_tolerance=polygon_tolerance,
            score_threshold=score_threshold,
            min_area=min_area,
            max_detections=max_detections,
        )
        response = self._unary(self._segmentation.SegmentImage, request, timeout=timeout, safe=True)
        return _convert.segment_result_from_proto(response, prompt_list)

    # ----- video sessions ------------------------------------------------------------------
    def start_session(self, video_path: str | ServerPath, *, timeout: Any = DEFAULT) -> Session:
        """Opens a session on a video already on the server (inside its media root)."""
        path = video_path.path if isinstance(video_path, ServerPath) else os.fspath(video_path)
        response = self._unary(
            self._video.StartSession,
            video_service_pb2.StartSessionRequest(video_path=path),
            timeout=timeout,
            safe=False,
        )
        return _convert.session_from_proto(response.session, self.target)

    def upload_video(
        self,
        path: str | os.PathLike,
        *,
        chunk_size: int = MiB,
        sha256: bool | str = True,
        progress: Callable[[int, int], None] | None = None,
        timeout: float | None = None,
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
        if sha256 is True:
            digest = file_sha256(path)
        elif isinstance(sha256, str):
            digest = sha256.lower()
        else:
            digest = ""

        def requests() -> Iterator[video_service_pb2.UploadVideoRequest]:
            yield _convert.upload_metadata(path, size, digest)
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

        try:
            response = self._video.UploadVideo(requests(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target) from None
        return _convert.session_from_proto(response.session, self.target)

    def add_prompt(
        self,
        session_id: str,
        frame_index: int,
        prompt: str | Prompt,
        *,
        object_id: int | None = None,
        mask_encoding: str = "rle",
        include_polygons: bool = False,
        polygon_tolerance: float = 0.0,
        score_threshold: float | None = None,
        min_area: int = 0,
        max_detections: int = 0,
        timeout: Any = DEFAULT,
    ) -> AddPromptResult:
        """Adds a prompt on one frame: new object(s), or with object_id a refinement.
        Returns every object on that frame and the ids this prompt created or refined."""
        request = _convert.add_prompt_request(
            session_id,
            frame_index,
            as_prompt(prompt),
            object_id=object_id,
            mask_encoding=mask_encoding,
            include_polygons=include_polygons,
            polygon_tolerance=polygon_tolerance,
            score_threshold=score_threshold,
            min_area=min_area,
            max_detections=max_detections,
        )
        response = self._unary(self._video.AddPrompt, request, timeout=timeout, safe=False)
        return _convert.add_prompt_result_from_proto(response)

    def remove_object(self, session_id: str, object_id: int, *, timeout: Any = DEFAULT) -> Session:
        response = self._unary(
            self._video.RemoveObject,
            video_service_pb2.RemoveObjectRequest(session_id=session_id, object_id=object_id),
            timeout=timeout,
            safe=False,
        )
        return _convert.session_from_proto(response.session, self.target)

    def reset_session(self, session_id: str, *, timeout: Any = DEFAULT) -> Session:
        response = self._unary(
            self._video.ResetSession,
            video_service_pb2.ResetSessionRequest(session_id=session_id),
            timeout=timeout,
            safe=True,
        )
        return _convert.session_from_proto(response.session, self.target)

    def propagate(
        self,
        session_id: str,
        *,
        direction: str = "forward",
        start_frame_index: int | None = None,
        max_frames: int = 0,
        mask_encoding: str = "rle",
        include_polygons: bool = False,
        polygon_tolerance: float = 0.0,
        score_threshold: float | None = None,
        min_area: int = 0,
        max_detections: int = 0,
        timeout: float | None = None,
    ) -> PropagateStream:
        """Tracks every object through the video; iterate the result for one PropagateFrame
        per processed frame. direction: "forward", "backward" or "both". Breaking out of the
        loop (or close()) cancels the stream; the session stays usable."""
        request = _convert.propagate_request(
            session_id,
            direction=direction,
            start_frame_index=start_frame_index,
            max_frames=max_frames,
            mask_encoding=mask_encoding,
            include_polygons=include_polygons,
            polygon_tolerance=polygon_tolerance,
            score_threshold=score_threshold,
            min_area=min_area,
            max_detections=max_detections,
        )
        call = self._video.Propagate(request, timeout=timeout, metadata=self._metadata)
        return PropagateStream(call, self.target)

    def get_session(self, session_id: str, *, timeout: Any = DEFAULT) -> Session:
        response = self._unary(
            self._video.GetSession,
            video_service_pb2.GetSessionRequest(session_id=session_id),
            timeout=timeout,
            safe=True,
        )
        return _convert.session_from_proto(response.session, self.target)

    def list_sessions(self, *, timeout: Any = DEFAULT) -> list[Session]:
        response = self._unary(
            self._video.ListSessions,
            video_service_pb2.ListSessionsRequest(),
            timeout=timeout,
            safe=True,
        )
        return [_convert.session_from_proto(s, self.target) for s in response.sessions]

    def close_session(self, session_id: str, *, timeout: Any = DEFAULT) -> bool:
        """Closes a session; False when it was already closed (closing twice is fine)."""
        response = self._unary(
            self._video.CloseSession,
            video_service_pb2.CloseSessionRequest(session_id=session_id),
            timeout=timeout,
            safe=True,
        )
        return response.closed

    # ----- server state --------------------------------------------------------------------
    def status(self, *, timeout: Any = DEFAULT) -> ServerStatus:
        response = self._unary(
            self._status.GetServerStatus,
            status_service_pb2.GetServerStatusRequest(),
            timeout=timeout,
            safe=True,
        )
        return _convert.status_from_proto(response, self.target)

    def health(
        self, service: str = "", *, timeout: Any = DEFAULT, retry: RetryPolicy | None = None
    ) -> str:
        """Standard grpc.health.v1 check: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or
        "UNKNOWN". service "" is the whole server; a service the server does not know is
        "SERVICE_UNKNOWN"."""
        from sam3_grpc.client.errors import NotFoundError

        request_class, _ = _health.messages()
        try:
            response = self._unary(
                self._health_check,
                request_class(service=service),
                timeout=timeout,
                safe=True,
                retry=retry,
            )
        except NotFoundError:  # grpc.health.v1: an unknown service fails with NOT_FOUND
            return "SERVICE_UNKNOWN"
        return _health.STATUS_NAMES.get(response.status, "UNKNOWN")

    def wait_until_serving(
        self, timeout: float = 60.0, *, service: str = "", poll_interval: float = 0.5
    ) -> None:
        """Blocks until health reports SERVING (e.g. while the model loads); raises
        DeadlineExceededError after `timeout` seconds."""
        from sam3_grpc.client.errors import DeadlineExceededError
        from sam3_grpc.client.retry import NO_RETRY

        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                last = self.health(
                    service, timeout=max(0.1, min(5.0, deadline - time.monotonic())), retry=NO_RETRY
                )
                if last == "SERVING":
                    return
            except Sam3Error as exc:
                if exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                last = exc.message
            if time.monotonic() + poll_interval >= deadline:
                raise DeadlineExceededError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{self.target} not SERVING after {timeout:g} s (last: {last})",
                    target=self.target,
                )
            time.sleep(poll_interval)


__all__ = ["DEFAULT", "FrameResult", "PropagateStream", "Sam3Client", "VideoSession", "file_sha256"]
