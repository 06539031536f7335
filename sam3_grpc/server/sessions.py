"""Video sessions: ids, owners, limits, idle expiry, and the upload directory.

All bookkeeping happens on the event loop; engine state is created, changed and freed only by
executor jobs. A session closed while a job of its own is queued is detected by that job (it
checks `closed` on the executor thread) so freed state is never touched.

Sessions belong to the principal that created them (see `server/principals.py`): another
principal gets NOT_FOUND for it, exactly as for a session that does not exist, and does not see
it listed. Without authentication every caller is the same principal.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam3_grpc.domain import SessionBudget, VideoInfo
from sam3_grpc.errors import FailedPrecondition, NotFound, Reason, ResourceExhausted
from sam3_grpc.media.frames import FrameWindow
from sam3_grpc.server.budget import MemoryBudget
from sam3_grpc.server.uploads import UploadDirectory

logger = logging.getLogger(__name__)


@dataclass
class Session:
    session_id: str
    frames: FrameWindow
    uploaded: bool
    upload_path: Path | None
    budget: SessionBudget
    owner: str = ""  # the principal that created it
    state: Any = None
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    object_ids: list[int] = field(default_factory=list)
    prompted_frames: list[int] = field(default_factory=list)
    memory_bytes: int = 0
    propagating: bool = False
    pending_ops: int = 0  # AddPrompt/RemoveObject/ResetSession calls queued or running
    closed: bool = False
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def info(self) -> VideoInfo:
        return self.frames.info

    def touch(self) -> None:
        self.last_used_at = time.time()

    async def require_idle(self, grace_s: float = 1.0) -> None:
        """Refuses while a Propagate streams on this session. A client that has just cancelled
        its stream may ask again before the server has torn it down, so wait `grace_s` first."""
        deadline = time.monotonic() + grace_s
        while self.propagating:  # re-checked: another waiter may have started one meanwhile
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise FailedPrecondition(
                    f"session {self.session_id} is propagating; cancel that Propagate call or "
                    "wait for it to finish",
                    reason=Reason.SESSION_BUSY,
                ) from None

    def set_propagating(self, value: bool) -> None:
        self.propagating = value
        if value:
            self._idle.clear()
        else:
            self._idle.set()

    def require_no_pending_ops(self) -> None:
        if self.pending_ops:
            raise FailedPrecondition(
                f"session {self.session_id} has a prompt change in progress; call Propagate "
                "after it has returned",
                reason=Reason.SESSION_BUSY,
            )


class SessionManager:
    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self._sessions: dict[str, Session] = {}
        self._opening = 0  # sessions being created (counted against the limit)
        self.uploads = UploadDirectory(self.settings.upload_dir)
        # Limits are set once the engine is loaded (device memory is known then): start_budget.
        self.budget = MemoryBudget(None, None)
        self._reaper: asyncio.Task | None = None
        self.upload_slots = asyncio.Semaphore(self.settings.max_concurrent_uploads)
        self.uploads_in_progress = 0

    @property
    def upload_dir(self) -> Path | None:
        """This server's own upload directory (inside --upload-dir)."""
        return self.uploads.path

    # ----- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.uploads.open()
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close_all(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for session_id in list(self._sessions):
            await self.close(session_id, wait=False)
        self.uploads.close()

    # ----- queries ---------------------------------------------------------------------------
    def count(self) -> int:
        return len(self._sessions)

    def memory_bytes(self) -> int:
        return sum(s.memory_bytes for s in self._sessions.values())

    def list(self, owner: str) -> list[Session]:
        """The open sessions of one principal, oldest first."""
        mine = [s for s in self._sessions.values() if s.owner == owner]
        return sorted(mine, key=lambda s: s.created_at)

    def get(self, session_id: str, owner: str) -> Session:
        """The session, touched; NOT_FOUND when it does not exist or belongs to another
        principal (indistinguishable on purpose)."""
        session = self._sessions.get(session_id)
        if session is None or session.closed or session.owner != owner:
            raise NotFound(
                f"no session {session_id!r} on this server: it was closed, expired "
                "after being idle, or belongs to another replica",
                reason=Reason.SESSION_NOT_FOUND,
            )
        session.touch()
        return session

    def expire_time(self, session: Session) -> float:
        return session.last_used_at + self.settings.session_ttl_s

    # ----- opening and closing ---------------------------------------------------------------
    def check_room(self) -> None:
        """Fails fast when no session could be opened now (before an upload starts)."""
        if len(self._sessions) + self._opening >= self.settings.max_sessions:
            raise ResourceExhausted(
                f"this server already holds {self.settings.max_sessions} video sessions; close "
                "one (CloseSession) or wait for idle ones to expire",
                reason=Reason.SESSION_LIMIT,
                metadata={"limit": self.settings.max_sessions},
                retry_after_s=5.0,
            )

    def reserve(self) -> None:
        """Claims a session slot for a session being created; release with `release`."""
        self.check_room()
        self._opening += 1

    def release(self) -> None:
        self._opening -= 1

    async def open_reserved(
        self,
        frames: FrameWindow,
        *,
        owner: str,
        upload_path: Path | None,
        deadline: float | None,
    ) -> Session:
        """Creates the engine state for a reserved slot, within the memory budget. Takes the
        frames (closed on failure); the caller still calls `release`."""
        engine = self.runtime.engine
        try:
            budget = engine.session_budget(frames.info, frames.capacity)
            self.budget.reserve(budget)
        except BaseException:
            frames.close()
            raise
        session = Session(
            session_id=secrets.token_urlsafe(16),
            frames=frames,
            uploaded=upload_path is not None,
            upload_path=upload_path,
            budget=budget,
            owner=owner,
        )

        def start(engine) -> None:
            # Stored on the device thread, so a cleanup queued behind this job sees it.
            session.state = engine.start_session(frames)
            session.memory_bytes = engine.session_nbytes(session.state)

        try:
            await self.runtime.executor.submit(start, deadline=deadline, label="StartSession")
        except BaseException:
            # The caller went away (or failed) while the session was being created: free what
            # the start job may still create, or the device memory would have no owner.
            session.closed = True
            self._free_state(session)
            raise
        self._sessions[session.session_id] = session
        info = frames.info
        logger.info(
            "session %s opened: %d frames %dx%d%s",
            session.session_id,
            info.frame_count,
            info.width,
            info.height,
            " (uploaded)" if session.uploaded else "",
        )
        return session

    async def close(self, session_id: str, owner: str | None = None, *, wait: bool = True) -> bool:
        """Closes a session (of `owner`, or any with None); False when there was none."""
        session = self._sessions.get(session_id)
        if session is None or (owner is not None and session.owner != owner):
            return False
        del self._sessions[session_id]
        session.closed = True
        done = self._free_state(session)
        if wait:
            try:
                await asyncio.wrap_future(done)
            except Exception:
                logger.exception("closing session %s failed", session_id)
        if session.upload_path is not None:
            session.upload_path.unlink(missing_ok=True)
        logger.info("session %s closed", session_id)
        return True

    def _free_state(self, session: Session):
        """Queues the release of a session's engine state and frames, and of its memory
        reservation. An internal job: it runs even when the queue is full, cannot be abandoned,
        and runs after any job already running."""

        def free(engine) -> None:
            try:
                if session.state is not None:
                    engine.close_session(session.state)
                    session.state = None
            finally:
                session.frames.close()

        done = self.runtime.executor.run_soon(free, label="CloseSession")
        if done.done() and done.exception() is not None:  # the executor has stopped
            session.frames.close()
        self.budget.release(session.budget)
        return done

    async def _reap_forever(self) -> None:
        interval = max(0.05, min(30.0, self.settings.session_ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            for session in list(self._sessions.values()):
                if not session.propagating and now >= self.expire_time(session):
                    logger.info(
                        "session %s expired after %.0f s idle",
                        session.session_id,
                        now - session.last_used_at,
                    )
                    await self.close(session.session_id)
