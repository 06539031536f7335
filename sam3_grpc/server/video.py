"""VideoService: sessions, prompts and streamed, frame-by-frame propagation.

Uploads are received by `uploads.py`; sessions are kept by `sessions.py`. Every engine call is an
executor job; a job on a session also refreshes the servicer's view of the session (object ids,
prompted frames, memory), so GetSession and RemoveObject see objects that a propagation added.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from sam3_grpc.domain import Direction
from sam3_grpc.engines.base import propagation_plan
from sam3_grpc.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
)
from sam3_grpc.media.frames import FrameLimits, FrameWindow, open_frames
from sam3_grpc.media.paths import MediaHandle, open_media
from sam3_grpc.server import convert
from sam3_grpc.server.principals import principal_of
from sam3_grpc.server.runtime import Runtime, deadline_of
from sam3_grpc.server.sessions import Session, SessionManager
from sam3_grpc.server.uploads import UploadReceiver
from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import video_service_pb2 as pb
from sam3_grpc.v1 import video_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

_END = object()  # a propagation generator that is exhausted


def refresh_view(session: Session, engine: Any) -> None:
    """Copies the engine's view of a session into the servicer's (on the executor thread)."""
    if session.closed or session.state is None:
        return
    session.object_ids = engine.object_ids(session.state)
    session.prompted_frames = engine.prompted_frames(session.state)
    session.memory_bytes = engine.session_nbytes(session.state)


def on_session(session: Session, fn: Callable[[Any, Any], Any]):
    """An executor job on a session's engine state that also refreshes the servicer's view of
    it. Refuses to run once the session is closed."""

    def run(engine):
        if session.closed:
            raise NotFound(
                f"session {session.session_id} was closed", reason=Reason.SESSION_NOT_FOUND
            )
        try:
            return fn(engine, session.state)
        finally:
            refresh_view(session, engine)

    return run


def check_frame(frame_index: int, frame_count: int, field: str) -> int:
    if not 0 <= frame_index < frame_count:
        raise InvalidArgument(
            f"{field} {frame_index} is outside the video's {frame_count} frames [0, {frame_count})",
            reason=Reason.FRAME_OUT_OF_RANGE,
            field=field,
            metadata={"frame_count": frame_count},
        )
    return frame_index


class VideoServicer(pb_grpc.VideoServiceServicer):
    def __init__(self, runtime: Runtime, sessions: SessionManager) -> None:
        self.runtime = runtime
        self.sessions = sessions
        self.receiver = UploadReceiver(
            runtime.settings,
            sessions.uploads,
            runtime.cpu_pool,
            on_bytes=lambda n: runtime.metrics.upload_bytes.inc(n) if runtime.metrics else None,
        )

    # ----- helpers ---------------------------------------------------------------------------
    def _principal(self, context: grpc.aio.ServicerContext) -> str:
        return principal_of(context, self.runtime.settings)

    def _session(self, session_id: str, context: grpc.aio.ServicerContext) -> Session:
        return self.sessions.get(session_id, self._principal(context))

    def _to_proto(self, session: Session) -> pb.Session:
        return convert.session_to_proto(session, self.sessions.expire_time(session))

    async def _run_on_session(self, session: Session, fn, context, label: str):
        session.pending_ops += 1
        try:
            return await self.runtime.executor.submit(
                on_session(session, fn), deadline=deadline_of(context), label=label
            )
        finally:
            session.pending_ops -= 1
            session.touch()

    def _video_output(self, options: common_pb2.OutputOptions) -> convert.OutputSpec:
        # Tracked objects are kept whatever their score unless the caller sets a threshold.
        return convert.output_from_proto(options, self.runtime.settings, concept_threshold=0.0)

    def _open_window(self, video: MediaHandle | str) -> FrameWindow:
        """The probe, on a CPU-pool thread: opens the video within the limits."""
        settings = self.runtime.settings
        limits = FrameLimits(
            max_frames=settings.max_frames,
            max_pixels=settings.max_video_pixels,
            max_gop_frames=settings.max_gop_frames,
            max_frame_file_bytes=settings.max_image_bytes,
        )
        source = open_frames(video, limits)
        return FrameWindow(source, self.runtime.engine.frame_preparer(), settings.frame_window)

    async def _open(self, video: str | Path, context) -> Session:
        """Probes a video (a media-root path, or an upload's file) and creates its session in a
        reserved slot."""
        upload = video if isinstance(video, Path) else None

        def probe() -> FrameWindow:
            if upload is not None:
                return self._open_window(str(upload))
            roots = self.runtime.settings.media_roots
            return self._open_window(open_media(str(video), roots, allow_dirs=True))

        self.sessions.reserve()
        try:
            frames = await self.runtime.on_cpu_owned(probe)
            return await self.sessions.open_reserved(
                frames,
                owner=self._principal(context),
                upload_path=upload,
                deadline=deadline_of(context),
            )
        finally:
            self.sessions.release()

    # ----- opening sessions ------------------------------------------------------------------
    async def StartSession(
        self, request: pb.StartSessionRequest, context
    ) -> pb.StartSessionResponse:
        self.runtime.admit()
        session = await self._open(request.video_path, context)
        return pb.StartSessionResponse(session=self._to_proto(session))

    async def UploadVideo(
        self, request_iterator: AsyncIterator[pb.UploadVideoRequest], context
    ) -> pb.UploadVideoResponse:
        settings = self.runtime.settings
        self.runtime.admit()
        slots = self.sessions.upload_slots
        if slots.locked():
            raise ResourceExhausted(
                f"{settings.max_concurrent_uploads} uploads are already in progress on this "
                "server (--max-concurrent-uploads); retry shortly",
                reason=Reason.UPLOAD_LIMIT,
                metadata={"limit": settings.max_concurrent_uploads},
                retry_after_s=2.0,
            )
        # Refuse before any byte moves when no session could be opened afterwards; the slot
        # itself is claimed only once the upload is complete, so a slow upload holds none.
        self.sessions.check_room()
        async with slots:
            self.sessions.uploads_in_progress += 1
            try:
                upload = await self.receiver.receive(request_iterator)
            finally:
                self.sessions.uploads_in_progress -= 1
        try:
            session = await self._open(upload.path, context)
        except BaseException:
            upload.path.unlink(missing_ok=True)
            raise
        return pb.UploadVideoResponse(session=self._to_proto(session), received_bytes=upload.size)

    # ----- prompts ---------------------------------------------------------------------------
    async def AddPrompt(self, request: pb.AddPromptRequest, context) -> pb.AddPromptResponse:
        self.runtime.admit()
        session = self._session(request.session_id, context)
        await session.require_idle()
        info = session.info
        check_frame(request.frame_index, info.frame_count, "frame_index")
        if not request.HasField("prompt"):
            raise InvalidArgument("prompt is missing: give text, boxes or points", field="prompt")
        prompt = convert.prompt_from_proto(request.prompt, self.runtime.settings, "prompt")
        prompt = convert.fit_prompt_to_image(prompt, info.width, info.height, "prompt")
        object_id = request.object_id if request.HasField("object_id") else None
        if object_id is not None and object_id not in session.object_ids:
            raise _unknown_object(object_id, session, "object_id")
        spec = self._video_output(request.output)
        # Decode (and prepare) the frame here, so the device job is model work only.
        await self.runtime.on_cpu(session.frames.get, request.frame_index)
        frame, affected = await self._run_on_session(
            session,
            lambda engine, state: engine.add_prompt(state, request.frame_index, prompt, object_id),
            context,
            "AddPrompt",
        )
        limit = self.runtime.settings.max_send_message_bytes

        def encode() -> pb.AddPromptResponse:
            reply = pb.AddPromptResponse(
                frame=convert.frame_to_proto(frame, spec), object_ids=affected
            )
            return convert.check_reply_size(reply, limit)

        return await self.runtime.on_cpu(encode)

    async def RemoveObject(
        self, request: pb.RemoveObjectRequest, context
    ) -> pb.RemoveObjectResponse:
        self.runtime.require_ready()
        session = self._session(request.session_id, context)
        await session.require_idle()
        if request.object_id not in session.object_ids:
            raise _unknown_object(request.object_id, session, "object_id")
        await self._run_on_session(
            session,
            lambda engine, state: engine.remove_object(state, request.object_id),
            context,
            "RemoveObject",
        )
        return pb.RemoveObjectResponse(session=self._to_proto(session))

    async def ResetSession(
        self, request: pb.ResetSessionRequest, context
    ) -> pb.ResetSessionResponse:
        self.runtime.require_ready()
        session = self._session(request.session_id, context)
        await session.require_idle()
        await self._run_on_session(
            session, lambda engine, state: engine.reset_session(state), context, "ResetSession"
        )
        return pb.ResetSessionResponse(session=self._to_proto(session))

    # ----- propagation -----------------------------------------------------------------------
    def _plan(self, session: Session, request: pb.PropagateRequest):
        direction = convert.direction_from_proto(request.direction)
        frame_count = session.info.frame_count
        max_frames = convert.non_negative(request.max_frames, "max_frames")
        if request.HasField("start_frame_index"):
            start = check_frame(request.start_frame_index, frame_count, "start_frame_index")
        elif direction is Direction.BACKWARD:
            start = max(session.prompted_frames)
        else:
            start = min(session.prompted_frames)
        return propagation_plan(frame_count, direction, start, max_frames)

    async def Propagate(
        self, request: pb.PropagateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PropagateResponse]:
        runtime = self.runtime
        runtime.admit()
        session = self._session(request.session_id, context)
        await session.require_idle()
        if not session.prompted_frames:
            raise FailedPrecondition(
                "the session has no prompts: call AddPrompt before Propagate",
                reason=Reason.NO_PROMPTS,
            )
        spec = self._video_output(request.output)
        forward, backward = self._plan(session, request)
        total = len(forward) + len(backward)
        deadline = deadline_of(context)
        frames: asyncio.Queue = asyncio.Queue(maxsize=runtime.settings.stream_buffer_frames)
        generator = None

        def step(engine):
            nonlocal generator
            if session.closed:
                raise NotFound(
                    f"session {session.session_id} was closed during propagation",
                    reason=Reason.SESSION_NOT_FOUND,
                )
            if generator is None:
                generator = engine.propagate(session.state, forward, backward)
            try:
                return next(generator, _END)
            finally:
                # A text prompt's objects appear during propagation: keep the view current.
                refresh_view(session, engine)

        plan = [*forward, *backward]
        ahead = runtime.settings.prefetch_frames
        limit = runtime.settings.max_send_message_bytes

        def encode(frame) -> pb.PropagateResponse:
            # Frames done and total are filled in when it is sent; they add a few bytes.
            reply = pb.PropagateResponse(frame=convert.frame_to_proto(frame, spec))
            return convert.check_reply_size(reply, limit - 32)

        async def produce() -> None:
            prefetching: asyncio.Future | None = None
            try:
                for index in range(total):
                    # Decode the coming frames on the CPU pool while the device works.
                    if prefetching is None or prefetching.done():
                        prefetching = asyncio.ensure_future(
                            runtime.on_cpu(session.frames.prefetch, plan[index : index + ahead + 1])
                        )
                    frame = await runtime.executor.submit(
                        step, deadline=deadline, label="Propagate"
                    )
                    if frame is _END:
                        raise Internal("the engine produced fewer frames than planned")
                    # Encoding starts now on the CPU pool, overlapping the next device step;
                    # the bounded queue blocks while the reader is behind: backpressure.
                    await frames.put(asyncio.ensure_future(runtime.on_cpu(encode, frame)))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                await frames.put(exc)
            finally:
                if prefetching is not None and not prefetching.done():
                    prefetching.cancel()  # a prefetch already running finishes its frame

        def finish(engine):
            # On the device thread, so the engine tidies its state before the next job.
            if generator is not None:
                generator.close()
            refresh_view(session, engine)

        session.require_no_pending_ops()
        session.set_propagating(True)
        producer = asyncio.get_running_loop().create_task(produce())
        try:
            for done in range(1, total + 1):
                item = await frames.get()
                if isinstance(item, BaseException):
                    raise item
                reply = await item
                reply.frames_done, reply.frames_total = done, total
                session.touch()
                yield reply
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
        return pb.GetSessionResponse(
            session=self._to_proto(self._session(request.session_id, context))
        )

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context
    ) -> pb.ListSessionsResponse:
        sessions = self.sessions.list(self._principal(context))
        return pb.ListSessionsResponse(sessions=[self._to_proto(s) for s in sessions])

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context
    ) -> pb.CloseSessionResponse:
        closed = await self.sessions.close(request.session_id, self._principal(context))
        return pb.CloseSessionResponse(closed=closed)


def _unknown_object(object_id: int, session: Session, field: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} {object_id} is not tracked in this session "
        f"(tracked: {session.object_ids or 'none'})",
        reason=Reason.UNKNOWN_OBJECT,
        field=field,
    )
