"""Opening client-named files inside the configured media roots, race-free.

A file is opened first and the opened file is checked: its real path (read back from
/proc/self/fd) must lie inside a root, and it must be a regular file (or, where allowed, a
directory). So a symlink pointing out of a root, a directory swapped for a symlink between a
check and the open, `..`, absolute paths elsewhere and sibling-prefix tricks (/data/videos_evil
for root /data/videos) all fail the same way, and FIFOs, sockets and devices are never read
(files are opened non-blocking, so a FIFO cannot stall the opener). Files inside a folder (video
frames) are opened relative to the folder's descriptor and checked the same way.

A path outside the roots and a path that does not exist get the same error and the same message,
so a client cannot probe the server's file system, and no reply echoes a server path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from sam3_grpc.errors import FailedPrecondition, NotFound, Reason

_NOT_FOUND = (
    "no such file inside the server's media roots: give a path relative to a media root (see "
    "the server's --media-root)"
)
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def not_found(message: str = _NOT_FOUND) -> NotFound:
    return NotFound(message, reason=Reason.MEDIA_NOT_FOUND)


@dataclass
class MediaHandle:
    """An open, checked file or directory inside a media root."""

    fd: int
    is_dir: bool
    root: str  # the real path of the root it lies in

    @property
    def proc_path(self) -> str:
        """A path that reopens exactly this file, whatever happens to its name meanwhile."""
        return f"/proc/self/fd/{self.fd}"

    def open_child(self, name: str) -> MediaHandle:
        """Opens a regular file of this directory (by name), with the same checks."""
        if os.sep in name or name in (".", ".."):
            raise not_found()
        handle = _open_checked(name, self.root, allow_dirs=False, dir_fd=self.fd)
        if handle is None:
            raise not_found(f"frame file {name!r} of the folder is missing or not readable")
        return handle

    def read(self, max_bytes: int) -> bytes:
        """Reads at most max_bytes + 1 bytes from the start (callers check the size)."""
        return os.pread(self.fd, max_bytes + 1, 0)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MediaHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _open_checked(
    path: str, root: str, *, allow_dirs: bool, dir_fd: int | None = None
) -> MediaHandle | None:
    try:
        fd = os.open(path, _FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        mode = os.fstat(fd).st_mode
        real = os.readlink(f"/proc/self/fd/{fd}")
        is_dir = stat.S_ISDIR(mode)
        if _inside(real, root) and (stat.S_ISREG(mode) or (allow_dirs and is_dir)):
            # Reads should block like any file read from here on.
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            return MediaHandle(fd, is_dir, root)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.close(fd)
    return None


def open_trusted(path: str) -> MediaHandle:
    """Opens a file or directory the server itself chose (an upload; a test's clip): the path
    is its own root."""
    real = os.path.realpath(path)
    handle = _open_checked(real, real, allow_dirs=True)
    if handle is None:
        raise not_found("the video file is missing or not a regular file")
    return handle


def open_media(user_path: str, roots: Sequence[str], *, allow_dirs: bool = False) -> MediaHandle:
    """Opens a regular file (or, with allow_dirs, a directory) inside one of the roots."""
    if not roots:
        raise FailedPrecondition(
            "this server reads no files by path: start it with --media-root DIR (or "
            "SAM3_GRPC_MEDIA_ROOT) or send the bytes instead",
            reason=Reason.NO_MEDIA_ROOT,
        )
    if not user_path or "\x00" in user_path:
        raise not_found()
    for root in roots:
        real_root = os.path.realpath(root)
        handle = _open_checked(os.path.join(real_root, user_path), real_root, allow_dirs=allow_dirs)
        if handle is not None:
            return handle
    raise not_found()
