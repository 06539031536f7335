"""Video uploads: the directory a server owns for them, and the reception of one upload.

The directory. `--upload-dir` may be shared by several servers on one host (one per GPU), so
each server works in a directory of its own under it, `sam3-grpc-<random>/`, and proves it is
alive by holding an exclusive `flock` on the `owner.lock` file inside for its whole life. The
kernel drops the lock when the process dies, however it dies, and a lock (unlike a pid) cannot
be inherited by an unrelated process. At start a server removes only sibling directories whose
lock it can take: their owner is gone. At shutdown it removes its own directory. Without
`--upload-dir` the root is the system's temporary directory.

One upload. The first message carries the metadata, every later one a chunk; chunks are written
and hashed on the CPU pool while the next one is received (at most two chunks in memory). The
stream is bounded in size (declared size and --max-upload-bytes), in idle time
(--upload-idle-timeout between messages), in average rate (--upload-min-rate, checked once the
upload has run for the idle timeout, so one byte every few seconds is cut off) and in total time
(--upload-timeout). Whatever happens, a failed or cancelled upload leaves no file behind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sam3_grpc.config import Settings
from sam3_grpc.errors import (
    DataLoss,
    DeadlineExceeded,
    InvalidArgument,
    Reason,
    ResourceExhausted,
)
from sam3_grpc.media.frames import VIDEO_EXTENSIONS
from sam3_grpc.v1 import video_service_pb2 as pb

logger = logging.getLogger(__name__)

INSTANCE_PREFIX = "sam3-grpc-"
LOCK_FILE = "owner.lock"
UPLOAD_PREFIX = "upload-"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Write errors that mean "no room", not a bug: the client can retry elsewhere or later.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class UploadDirectory:
    """The per-instance directory for uploads (see the module docstring)."""

    def __init__(self, root: str | None) -> None:
        self.root = Path(root) if root else Path(tempfile.gettempdir())
        self.path: Path | None = None
        self._lock_fd: int | None = None

    def open(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._remove_orphans()
        path = Path(tempfile.mkdtemp(prefix=INSTANCE_PREFIX, dir=self.root))  # mode 0700
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path, self._lock_fd = path, fd
        return path

    def _remove_orphans(self) -> None:
        """Removes instance directories whose owner is provably gone (its lock is free)."""
        for candidate in self.root.glob(INSTANCE_PREFIX + "*"):
            lock_path = candidate / LOCK_FILE
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue  # not an instance directory (or not ours to judge)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live server holds it
            else:
                logger.info("removing the uploads of a server that is gone: %s", candidate.name)
                shutil.rmtree(candidate, ignore_errors=True)
            finally:
                os.close(fd)

    def new_path(self, extension: str) -> Path:
        assert self.path is not None, "open() first"
        return self.path / f"{UPLOAD_PREFIX}{secrets.token_hex(12)}{extension}"

    def close(self) -> None:
        """Removes the directory and everything in it, then releases the lock."""
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


@dataclass(frozen=True)
class ReceivedUpload:
    path: Path
    size: int


def _write_and_hash(handle: BinaryIO, hasher: Any, chunk: bytes) -> None:
    try:
        handle.write(chunk)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise ResourceExhausted(
                "the server has no disk space left for this upload; retry later or on another "
                "replica",
                reason=Reason.DISK_FULL,
                retry_after_s=30.0,
            ) from None
        raise
    hasher.update(chunk)


def _discard(path: Path, opening: concurrent.futures.Future) -> None:
    """Closes a file whose opening outlived its caller, and removes it."""
    with contextlib.suppress(Exception):
        opening.result().close()
    path.unlink(missing_ok=True)


class UploadReceiver:
    """Receives one UploadVideo stream into a new file of `directory`."""

    def __init__(
        self,
        settings: Settings,
        directory: UploadDirectory,
        cpu_pool: concurrent.futures.Executor,
        on_bytes: Any = None,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.cpu_pool = cpu_pool
        self.on_bytes = on_bytes  # called with each chunk's size (metrics)

    async def _next(self, iterator: AsyncIterator[Any], started: float, received: int) -> Any:
        settings = self.settings
        now = time.monotonic()
        elapsed = now - started
        if elapsed >= settings.upload_idle_timeout_s and received < settings.upload_min_rate * (
            elapsed
        ):
            raise DeadlineExceeded(
                f"the upload averaged {received / elapsed:.0f} bytes/s, below this server's "
                f"minimum of {settings.upload_min_rate} bytes/s; upload over a faster link",
                reason=Reason.UPLOAD_STALLED,
                metadata={"min_rate": settings.upload_min_rate},
            )
        remaining = settings.upload_timeout_s - elapsed
        wait = min(settings.upload_idle_timeout_s, remaining)
        try:
            return await asyncio.wait_for(anext(iterator), max(0.0, wait))
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            if wait < settings.upload_idle_timeout_s:
                raise DeadlineExceeded(
                    f"the upload took longer than this server's limit of "
                    f"{settings.upload_timeout_s:.0f} s; upload over a faster link",
                    reason=Reason.UPLOAD_STALLED,
                    metadata={"limit_s": settings.upload_timeout_s},
                ) from None
            raise DeadlineExceeded(
                f"no upload data for {settings.upload_idle_timeout_s:.0f} s; the upload was "
                "abandoned: send chunks without long pauses",
                reason=Reason.UPLOAD_STALLED,
                metadata={"idle_timeout_s": settings.upload_idle_timeout_s},
            ) from None

    def _check_metadata(self, first: Any) -> tuple[pb.UploadVideoMetadata, str]:
        settings = self.settings
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidArgument(
                "the first UploadVideo message must carry metadata (filename, size_bytes, "
                "optional sha256); chunks follow it",
                field="metadata",
            )
        meta = first.metadata
        if meta.size_bytes <= 0:
            raise InvalidArgument(
                f"metadata.size_bytes is {meta.size_bytes}: declare the file's size in bytes",
                field="metadata.size_bytes",
            )
        if meta.size_bytes > settings.max_upload_bytes:
            raise ResourceExhausted(
                f"the upload declares {meta.size_bytes} bytes; this server accepts at most "
                f"{settings.max_upload_bytes} bytes per video",
                reason=Reason.UPLOAD_TOO_LARGE,
                metadata={"limit": settings.max_upload_bytes},
            )
        expected_sha = meta.sha256.strip().lower()
        if expected_sha and not _SHA256.match(expected_sha):
            raise InvalidArgument("metadata.sha256 must be 64 hex digits", field="metadata.sha256")
        return meta, expected_sha

    async def receive(self, iterator: AsyncIterator[Any]) -> ReceivedUpload:
        """Receives the stream into a new file; the caller owns (and must delete) the file."""
        started = time.monotonic()
        first = await self._next(iterator, started, 0)
        meta, expected_sha = self._check_metadata(first)
        extension = Path(meta.filename).suffix.lower()
        path = self.directory.new_path(extension if extension in VIDEO_EXTENSIONS else ".bin")
        opening = self.cpu_pool.submit(open, path, "xb")
        try:
            handle = await asyncio.wrap_future(opening)
        except BaseException:
            # Cancelled while the file was being created: remove it once the open returns.
            opening.add_done_callback(lambda future: _discard(path, future))
            raise
        try:
            received = await self._receive_chunks(iterator, handle, meta, expected_sha, started)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return ReceivedUpload(path, received)

    async def _receive_chunks(
        self,
        iterator: AsyncIterator[Any],
        handle: BinaryIO,
        meta: pb.UploadVideoMetadata,
        expected_sha: str,
        started: float,
    ) -> int:
        loop = asyncio.get_running_loop()
        hasher = hashlib.sha256()
        received = 0
        writing: asyncio.Future | None = None  # the previous chunk's write, overlapping receipt
        try:
            while (message := await self._next(iterator, started, received)) is not None:
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidArgument(
                        "only the first UploadVideo message may carry metadata; every later one "
                        "must be a chunk",
                        field="metadata",
                    )
                chunk = message.chunk
                received += len(chunk)
                if received > meta.size_bytes:
                    raise InvalidArgument(
                        f"received more than the declared {meta.size_bytes} bytes",
                        reason=Reason.UPLOAD_SIZE_MISMATCH,
                        field="metadata.size_bytes",
                    )
                if writing is not None:
                    await writing  # at most two chunks in memory: flat whatever the size
                writing = loop.run_in_executor(
                    self.cpu_pool, _write_and_hash, handle, hasher, chunk
                )
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                await asyncio.wait([writing])  # never close the file under a write
            # Closed here, not on the CPU pool: at shutdown the pool may be gone, and the
            # writes already happened there (closing flushes at most one small buffer).
            handle.close()
        if received != meta.size_bytes:
            raise InvalidArgument(
                f"received {received} bytes but metadata declared {meta.size_bytes}; the "
                "upload is incomplete",
                reason=Reason.UPLOAD_SIZE_MISMATCH,
                field="metadata.size_bytes",
            )
        if expected_sha and hasher.hexdigest() != expected_sha:
            raise DataLoss(
                "the SHA-256 of the received bytes differs from metadata.sha256; the file was "
                "corrupted in transit: upload it again",
                reason=Reason.CHECKSUM_MISMATCH,
            )
        return received
