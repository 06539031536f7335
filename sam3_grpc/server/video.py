"""VideoService: sessions, chunked uploads and streamed, frame-by-frame propagation."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from sam3_grpc.engines.base import propagation_plan
from sam3_grpc.errors import (
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from sam3_grpc.media.paths import resolve_media_path
from sam3_grpc.media.video import VIDEO_EXTENSIONS, probe_video
from sam3_grpc.server import convert
from sam3_grpc.server.runtime import Runtime, deadline_of
from sam3_grpc.server.sessions import Session, SessionManager
from sam3_grpc.types import Direction, FrameOutput
from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import video_service_pb2 as pb
from sam3_grpc.v1 import video_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_END = object()  # a propagation generator that is exhausted


def session_to_proto(session: Session, manager: SessionManager) -> pb.Session:
    info = session.source.info
    return pb.Session(
        session_id=session.session_id,
        video=pb.VideoInfo(
            frame_count=info.frame_count, fps=info.fps, width=info.width, height=info.height
        ),
        uploaded=session.uploaded,
        object_ids=session.object_ids,
        create_time=convert.timestamp(session.created_at),
        last_use_time=convert.timestamp(session.last_used_at),
        expire_time=convert.timestamp(manager.expire_time(session)),
        propagating=session.propagating,
        memory_bytes=session.memory_bytes,
    )


def on_session(session: Session, fn: Callable[[Any, Any], Any]):
    """An executor job on a session's engine state that also refreshes the session's mirror of
    object ids, prompted frames and memory. Refuses to run once the session is closed."""

    def run(engine):
        if session.closed:
            raise NotFound(f"session {session.session_id} was closed")
        result = fn(engine, session.state)
        return (
            result,
            engine.object_ids(session.state),
            engine.prompted_frames(session.state),
            engine.session_nbytes(session.state),
        )

    return run


class VideoServicer(pb_grpc.VideoServiceServicer):
    def __init__(self, runtime: Runtime, sessions: SessionManager) -> None:
        self.runtime = runtime
        self.sessions = sessions

    # ----- helpers ---------------------------------------------------------------------------
    async def _run_on_session(self, session: Session, fn, context, label: str):
        session.pending_ops += 1
        try:
            result, object_ids, prompted, nbytes = await self.runtime.executor.submit(
                on_session(session, fn), deadline=deadline_of(context), label=label
            )
        finally:
            session.pending_ops -= 1
        session.object_ids, session.prompted_frames, session.memory_bytes = (
            object_ids,
            prompted,
            nbytes,
        )
        session.touch()
        return result

    def _frame_to_proto(
        self, frame: FrameOutput, spec: convert.OutputSpec
    ) -> common_pb2.FrameResult:
        return common_pb2.FrameResult(
            frame_index=frame.frame_index, objects=convert.render_detections(frame.objects, spec)
        )

    def _video_output(self, options: common_pb2.OutputOptions) -> convert.OutputSpec:
        # Tracked objects are kept whatever their score unless the caller sets a threshold.
        return convert.output_from_proto(options, self.runtime.settings, default_threshold=0.0)

    async def _open(self, source, upload_path: Path | None, context) -> Session:
        return await self.sessions.open_reserved(
            source, upload_path=upload_path, deadline=deadline_of(context)
        )

    def _probe(self, path: Path):
        settings = self.runtime.settings
        return probe_video(
            path, max_frames=settings.max_frames, max_pixels=settings.max_video_pixels
        )

    # ----- opening sessions ------------------------------------------------------------------
    async def StartSession(
        self, request: pb.StartSessionRequest, context
    ) -> pb.StartSessionResponse:
        self.runtime.require_ready()
        path = resolve_media_path(
            request.video_path, self.runtime.settings.media_roots, allow_dirs=True
        )
        self.sessions.reserve()
        try:
            source = await self.runtime.on_cpu(self._probe, path)
            session = await self._open(source, None, context)
        finally:
            self.sessions.release()
        return pb.StartSessionResponse(session=session_to_proto(session, self.sessions))

    async def UploadVideo(
        self, request_iterator: AsyncIterator[pb.UploadVideoRequest], context
    ) -> pb.UploadVideoResponse:
        runtime = self.runtime
        settings = runtime.settings
        runtime.require_ready()
        slots = self.sessions.upload_slots
        if slots.locked():
            raise ResourceExhausted(
                f"{settings.max_concurrent_uploads} uploads are already in progress; retry shortly",
                retry_after_s=2.0,
            )
        async with slots:
            self.sessions.reserve()
            try:
                return await self._receive_upload(request_iterator, context)
            finally:
                self.sessions.release()

    async def _next_message(self, iterator: AsyncIterator[pb.UploadVideoRequest]):
        timeout = self.runtime.settings.upload_idle_timeout_s
        try:
            return await asyncio.wait_for(anext(iterator), timeout)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"no upload data for {timeout:.0f} s; the upload was abandoned, send chunks "
                "without long pauses"
            ) from None

    async def _receive_upload(self, iterator, context) -> pb.UploadVideoResponse:
        settings = self.runtime.settings
        first = await self._next_message(iterator)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidArgument(
                "the first UploadVideo message must carry metadata (filename, "
                "size_bytes, optional sha256); chunks follow it"
            )
        meta = first.metadata
        if meta.size_bytes == 0:
            raise InvalidArgument("metadata.size_bytes is 0: declare the file's size in bytes")
        if meta.size_bytes > settings.max_upload_bytes:
            raise ResourceExhausted(
                f"the upload declares {meta.size_bytes} bytes; this server accepts at most "
                f"{settings.max_upload_bytes} bytes per video"
            )
        expected_sha = meta.sha256.strip().lower()
        if expected_sha and not _SHA256.match(expected_sha):
            raise InvalidArgument("metadata.sha256 must be 64 lower-case hex digits")
        extension = Path(meta.filename).suffix.lower()
        path = self.sessions.new_upload_path(extension if extension in VIDEO_EXTENSIONS else ".bin")
        hasher = hashlib.sha256()
        received = 0
        keep = False
        handle = await self.runtime.on_cpu(open, path, "xb")
        writing: asyncio.Future | None = None  # the previous chunk's write, overlapping receipt
        try:
            self.sessions.uploads_in_progress += 1
            try:
                while (message := await self._next_message(iterator)) is not None:
                    if message.WhichOneof("payload") != "chunk":
                        raise InvalidArgument(
                            "only the first UploadVideo message may carry "
                            "metadata; every later one must be a chunk"
                        )
                    chunk = message.chunk
                    received += len(chunk)
                    if received > settings.max_upload_bytes:
                        raise ResourceExhausted(
                            f"the upload passed this server's limit of "
                            f"{settings.max_upload_bytes} bytes; nothing was kept"
                        )
                    if received > meta.size_bytes:
                        raise InvalidArgument(
                            f"received more than the declared {meta.size_bytes} bytes"
                        )
                    if writing is not None:
                        await writing  # at most two chunks in memory: flat whatever the size
                    writing = asyncio.ensure_future(
                        self.runtime.on_cpu(_write_and_hash, handle, hasher, chunk)
                    )
                    self.runtime.metrics.upload_bytes.inc(len(chunk))
                if writing is not None:
                    await writing
            finally:
                self.sessions.uploads_in_progress -= 1
                if writing is not None and not writing.done():
                    await asyncio.wait([writing])  # never close the file under a write
                # Closed here, not on the CPU pool: at shutdown the pool may be gone, and the
                # writes already happened there (closing flushes at most one small buffer).
                handle.close()
            if received != meta.size_bytes:
                raise InvalidArgument(
                    f"received {received} bytes but metadata declared {meta.size_bytes}; the "
                    "upload is incomplete"
                )
            if expected_sha and hasher.hexdigest() != expected_sha:
                raise DataLoss(
                    "the SHA-256 of the received bytes differs from metadata.sha256;"
                    " the file was corrupted in transit: upload it again"
                )
            source = await self.runtime.on_cpu(self._probe, path)
            session = await self._open(source, path, context)
            keep = True
            return pb.UploadVideoResponse(
                session=session_to_proto(session, self.sessions), received_bytes=received
            )
        finally:
            if not keep:
                path.unlink(missing_ok=True)

    # ----- prompts ---------------------------------------------------------------------------
    async def AddPrompt(self, request: pb.AddPromptRequest, context) -> pb.AddPromptResponse:
        self.runtime.require_ready()
        session = self.sessions.get(request.session_id)
        await session.require_idle()
        info = session.source.info
        if request.frame_index >= info.frame_count:
            raise InvalidArgument(
                f"frame_index {request.frame_index} is outside the video's "
                f"{info.frame_count} frames [0, {info.frame_count})"
            )
        if not request.HasField("prompt"):
            raise InvalidArgument("prompt is missing: give text, boxes or points")
        prompt = convert.prompt_from_proto(request.prompt, self.runtime.settings, "prompt")
        prompt = convert.fit_prompt_to_image(prompt, info.width, info.height, "prompt")
        object_id = request.object_id if request.HasField("object_id") else None
        if object_id is not None and object_id not in session.object_ids:
            raise InvalidArgument(
                f"object_id {object_id} is not tracked in this session "
                f"(tracked: {session.object_ids or 'none'})"
            )
        spec = self._video_output(request.output)
        frame, affected = await self._run_on_session(
            session,
            lambda engine, state: engine.add_prompt(state, request.frame_index, prompt, object_id),
            context,
            "AddPrompt",
        )
        rendered = await self.runtime.on_cpu(self._frame_to_proto, frame, spec)
        return pb.AddPromptResponse(frame=rendered, object_ids=affected)

    async def RemoveObject(
        self, request: pb.RemoveObjectRequest, context
    ) -> pb.RemoveObjectResponse:
        self.runtime.require_ready()
        session = self.sessions.get(request.session_id)
        await session.require_idle()
        if request.object_id not in session.object_ids:
            raise InvalidArgument(
                f"object_id {request.object_id} is not tracked in this session "
                f"(tracked: {session.object_ids or 'none'})"
            )
        await self._run_on_session(
            session,
            lambda engine, state: engine.remove_object(state, request.object_id),
            context,
            "RemoveObject",
        )
        return pb.RemoveObjectResponse(session=session_to_proto(session, self.sessions))

    async def ResetSession(
        self, request: pb.ResetSessionRequest, context
    ) -> pb.ResetSessionResponse:
        self.runtime.require_ready()
        session = self.sessions.get(request.session_id)
        await session.require_idle()
        await self._run_on_session(
            session, lambda engine, state: engine.reset_session(state), context, "ResetSession"
        )
        return pb.ResetSessionResponse(session=session_to_proto(session, self.sessions))

    # ----- propagation -----------------------------------------------------------------------
    def _plan(self, session: Session, request: pb.PropagateRequest):
        direction = convert.direction_from_proto(request.direction)
        frame_count = session.source.info.frame_count
        if request.HasField("start_frame_index"):
            start = request.start_frame_index
            if start >= frame_count:
                raise InvalidArgument(
                    f"start_frame_index {start} is outside the video's {frame_count} frames"
                )
        elif direction is Direction.BACKWARD:
            start = max(session.prompted_frames)
        else:
            start = min(session.prompted_frames)
        return propagation_plan(frame_count, direction, start, request.max_frames)

    async def Propagate(
        self, request: pb.PropagateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PropagateResponse]:
        runtime = self.runtime
        runtime.require_ready()
        session = self.sessions.get(request.session_id)
        await session.require_idle()
        if not session.prompted_frames:
            raise FailedPrecondition("the session has no prompts: call AddPrompt before Propagate")
        spec = self._video_output(request.output)
        forward, backward = self._plan(session, request)
        total = len(forward) + len(backward)
        deadline = deadline_of(context)
        frames: asyncio.Queue = asyncio.Queue(maxsize=runtime.settings.stream_buffer_frames)
        generator = None

        def step(engine):
            nonlocal generator
            if session.closed:
                raise NotFound(f"session {session.session_id} was closed during propagation")
            if generator is None:
                generator = engine.propagate(session.state, forward, backward)
            return next(generator, _END)

        async def produce() -> None:
            try:
                for _ in range(total):
                    frame = await runtime.executor.submit(
                        step, deadline=deadline, label="Propagate"
                    )
                    if frame is _END:
                        raise Internal("the engine produced fewer frames than planned")
                    # Encoding starts now on the CPU pool, overlapping the next device step;
                    # the bounded queue blocks while the reader is behind: backpressure.
                    await frames.put(
                        asyncio.ensure_future(runtime.on_cpu(self._frame_to_proto, frame, spec))
                    )
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                await frames.put(exc)

        def finish(engine):
            # On the device thread, so the engine tidies its state before the next job.
            if generator is not None:
                generator.close()
            if not session.closed:
                session.memory_bytes = engine.session_nbytes(session.state)

        session.require_no_pending_ops()
        session.set_propagating(True)
        producer = asyncio.get_running_loop().create_task(produce())
        try:
            for done in range(1, total + 1):
                item = await frames.get()
                if isinstance(item, BaseException):
                    raise item
                rendered = await item
                session.touch()
                yield pb.PropagateResponse(frame=rendered, frames_done=done, frames_total=total)
        finally:
            producer.cancel()
            while not frames.empty():  # encodings nobody will read
                item = frames.get_nowait()
                if isinstance(item, asyncio.Future):
                    item.cancel()
            try:
                await producer
            except BaseException:  # noqa: BLE001 - its outcome was already handled
                pass
            if not session.closed:
                runtime.executor.run_soon(finish, label="PropagateFinish")
            session.set_propagating(False)
            session.touch()

    # ----- queries and closing ---------------------------------------------------------------
    async def GetSession(self, request: pb.GetSessionRequest, context) -> pb.GetSessionResponse:
        session = self.sessions.get(request.session_id)
        return pb.GetSessionResponse(session=session_to_proto(session, self.sessions))

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context
    ) -> pb.ListSessionsResponse:
        return pb.ListSessionsResponse(
            sessions=[session_to_proto(s, self.sessions) for s in self.sessions.list()]
        )

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context
    ) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse(closed=await self.sessions.close(request.session_id))


def _write_and_hash(handle, hasher, chunk: bytes) -> None:
    handle.write(chunk)
    hasher.update(chunk)
