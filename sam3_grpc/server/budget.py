"""Memory admission: sessions are admitted against a budget instead of running the host (or the
GPU) out of memory.

Each engine states, before a session starts, the most that session can ever hold
(`Engine.session_budget`: its frame window and its per-object state at the object limit, on the
host and on the device); both stay bounded whatever the video's length. The server reserves that
much from `--memory-budget` (host) and `--device-memory-budget` (device) and refuses a session
that does not fit with RESOURCE_EXHAUSTED, naming the budget, so the process is never killed for
memory by the sessions it accepted and the sessions already open are unaffected.
"""

from __future__ import annotations

from sam3_grpc.domain import SessionBudget
from sam3_grpc.errors import Reason, ResourceExhausted

MiB = 1 << 20


class MemoryBudget:
    """Reservations of open sessions against a host and a device limit (None: unlimited)."""

    def __init__(self, host_limit: int | None, device_limit: int | None) -> None:
        self.host_limit = host_limit
        self.device_limit = device_limit
        self.host_reserved = 0
        self.device_reserved = 0

    def reserve(self, need: SessionBudget) -> None:
        for what, limit, reserved, wanted, flag in (
            ("host", self.host_limit, self.host_reserved, need.host_bytes, "--memory-budget"),
            (
                "device",
                self.device_limit,
                self.device_reserved,
                need.device_bytes,
                "--device-memory-budget",
            ),
        ):
            if limit is not None and wanted and reserved + wanted > limit:
                raise ResourceExhausted(
                    f"this session could hold up to {wanted / MiB:.0f} MiB of {what} memory, "
                    f"but the server's sessions already hold {reserved / MiB:.0f} MiB of its "
                    f"{limit / MiB:.0f} MiB budget ({flag}); close a session, lower "
                    "--frame-window, or use another replica",
                    reason=Reason.MEMORY_BUDGET,
                    metadata={
                        "budget_bytes": limit,
                        "used_bytes": reserved,
                        "needed_bytes": wanted,
                    },
                    retry_after_s=5.0,
                )
        self.host_reserved += need.host_bytes
        self.device_reserved += need.device_bytes

    def release(self, need: SessionBudget) -> None:
        self.host_reserved -= need.host_bytes
        self.device_reserved -= need.device_bytes


def default_host_budget(total_bytes: int) -> int:
    """Half of the machine's memory: the model, the image cache and the process need the rest."""
    return total_bytes // 2
