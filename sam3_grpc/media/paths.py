"""Confining client-named files to the configured media roots.

A path outside the roots and a path that does not exist get the same error and the same message,
so a client cannot probe the server's file system, and no reply echoes a server path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from sam3_grpc.errors import FailedPrecondition, NotFound, Reason

_NOT_FOUND = (
    "no such file inside the server's media roots: give a path relative to a media "
    "root (see the server's --media-root)"
)


def resolve_media_path(user_path: str, roots: Sequence[str], *, allow_dirs: bool = False) -> Path:
    """Returns the real path of a regular file (or, with allow_dirs, a directory) inside a root.

    Symlinks are resolved before the containment check, so a link pointing out of a root is
    refused; `..`, absolute paths elsewhere and sibling-prefix tricks (/data/videos_evil for root
    /data/videos) fail the same check. Devices, FIFOs and sockets are refused.
    """
    if not roots:
        raise FailedPrecondition(
            "this server reads no files by path: start it with --media-root DIR (or "
            "SAM3_GRPC_MEDIA_ROOTS) or send the bytes instead",
            reason=Reason.NO_MEDIA_ROOT,
        )
    if not user_path or "\x00" in user_path:
        raise NotFound(_NOT_FOUND, reason=Reason.MEDIA_NOT_FOUND)
    for root in roots:
        real_root = Path(os.path.realpath(root))
        candidate = Path(os.path.realpath(real_root / user_path))
        if not candidate.is_relative_to(real_root):
            continue
        try:
            mode = candidate.stat().st_mode
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(mode) or (allow_dirs and stat.S_ISDIR(mode)):
            return candidate
    raise NotFound(_NOT_FOUND, reason=Reason.MEDIA_NOT_FOUND)
