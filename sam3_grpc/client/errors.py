"""Typed exceptions for failed calls, decoded from the server's rich google.rpc.Status.

Every RPC error becomes a `Sam3Error` subclass chosen by status code. It carries the code, the
server's message, the machine-readable `reason` (google.rpc.ErrorInfo, one of the names of the
`sam3_grpc.v1.ErrorReason` enum without its prefix, e.g. "QUEUE_FULL") with its `metadata`, the
`field_violations` of an INVALID_ARGUMENT (google.rpc.BadRequest: (field path, description)
pairs), and, when the server sent a google.rpc.RetryInfo detail, the delay after which a retry
may succeed (`retry_after`, seconds). Branch on `reason`, never on the message.
"""

from __future__ import annotations

import grpc


class Sam3Error(Exception):
    """A call failed. `code` is the grpc.StatusCode; `message` the server's explanation."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        retry_after: float | None = None,
        *,
        target: str | None = None,
        from_server: bool = False,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # Seconds after which the server says a retry may succeed (google.rpc.RetryInfo).
        self.retry_after = retry_after
        # The address the call went to.
        self.target = target
        # True when the status came from the sam3-grpc servicer (a rich status), False when grpc
        # itself produced it (connection failure, deadline on the wire, unknown method...).
        self.from_server = from_server
        # Why, machine-readably (google.rpc.ErrorInfo.reason, e.g. "QUEUE_FULL"); None when the
        # status did not come from a sam3-grpc server.
        self.reason = reason
        self.metadata = dict(metadata or {})
        # (field path, description) of each offending request field (google.rpc.BadRequest).
        self.field_violations = list(field_violations or [])

    @property
    def connection_failed(self) -> bool:
        """True when the server could not be reached at all."""
        return self.code == grpc.StatusCode.UNAVAILABLE and not self.from_server

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, retry_after={self.retry_after!r})"
        )

    def __reduce__(self):  # picklable despite the keyword-only arguments
        extras = {
            "target": self.target,
            "from_server": self.from_server,
            "reason": self.reason,
            "metadata": self.metadata,
            "field_violations": self.field_violations,
        }
        return (_rebuild, (type(self), self.code.name, self.message, self.retry_after, extras))


def _rebuild(cls, code_name, message, retry_after, extras):
    return cls(grpc.StatusCode[code_name], message, retry_after, **extras)


class CancelledError(Sam3Error):
    """CANCELLED: the call was cancelled (by this client or the server)."""


class InvalidArgumentError(Sam3Error, ValueError):
    """INVALID_ARGUMENT: the request is malformed; the message names the offending field."""


class DeadlineExceededError(Sam3Error, TimeoutError):
    """DEADLINE_EXCEEDED: the call's deadline passed (a queued request then never runs)."""


class NotFoundError(Sam3Error, LookupError):
    """NOT_FOUND: unknown session, or a server path that does not exist."""


class PermissionDeniedError(Sam3Error):
    """PERMISSION_DENIED: the credentials do not allow this call."""


class ResourceExhaustedError(Sam3Error):
    """RESOURCE_EXHAUSTED: queue full, too many sessions/uploads, out of device memory."""


class FailedPreconditionError(Sam3Error):
    """FAILED_PRECONDITION: the call does not fit the current state (e.g. propagate before any
    prompt, or a server path on a server without media roots)."""


class OutOfRangeError(Sam3Error):
    """OUT_OF_RANGE: e.g. a frame index past the end of the video."""


class UnimplementedError(Sam3Error):
    """UNIMPLEMENTED: the server does not offer this call."""


class InternalError(Sam3Error):
    """INTERNAL or UNKNOWN: a server bug; the message has an error id to find in its log."""


class UnavailableError(Sam3Error):
    """UNAVAILABLE: unreachable, still loading, or shutting down. Safe to retry."""


class ReplicaLostError(UnavailableError):
    """The replica holding a session (behind a proxy routing by `x-sam3-replica`) stopped or
    cannot be reached. Not retried: a session cannot move to another replica; start a new one.
    `reason` is "REPLICA_LOST" (set by this client, not by a server)."""


class DataLossError(Sam3Error):
    """DATA_LOSS: e.g. an upload's SHA-256 did not match."""


class UnauthenticatedError(Sam3Error):
    """UNAUTHENTICATED: missing or wrong token."""


_BY_CODE: dict[grpc.StatusCode, type[Sam3Error]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: Sam3Error,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: Sam3Error,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def error_class(code: grpc.StatusCode) -> type[Sam3Error]:
    return _BY_CODE.get(code, Sam3Error)


def _details(status) -> dict:
    """The RetryInfo delay, ErrorInfo reason and metadata, and BadRequest violations."""
    from google.rpc import error_details_pb2

    found: dict = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            found["retry_after"] = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found["reason"] = info.reason
            found["metadata"] = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found["field_violations"] = [(v.field, v.description) for v in bad.field_violations]
    return found


def from_rpc_error(
    error: grpc.RpcError, target: str | None = None, *, pinned_session: str | None = None
) -> Sam3Error:
    """Converts a grpc.RpcError (a failed call) into the matching Sam3Error. `pinned_session`:
    the call carried that session's routing header (see `replica_lost`)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or (
        f"{code.name} (no details given)"
    )
    details: dict = {}
    from_server = False
    try:
        from grpc_status import rpc_status

        status = rpc_status.from_call(error)  # type: ignore[arg-type]  # a failed call is a Call
    except (ImportError, ValueError, AttributeError):  # no or inconsistent rich status
        status = None
    if status is not None:
        from_server = True
        message = status.message or message
        details = _details(status)
    retry_after = details.pop("retry_after", None)
    if pinned_session is not None and not from_server and replica_lost(code, message):
        return ReplicaLostError(
            grpc.StatusCode.UNAVAILABLE,
            f"the replica holding session {pinned_session!r} is gone ({message}); a session "
            "cannot move to another replica: start a new session",
            target=target,
            reason="REPLICA_LOST",
        )
    return error_class(code)(
        code, message, retry_after, target=target, from_server=from_server, **details
    )


def replica_lost(code: grpc.StatusCode, message: str) -> bool:
    """Whether a failure that no server produced, on a call pinned to a replica, means the
    replica is gone: the proxy answered that it cannot reach it (UNAVAILABLE with the proxy's
    own message: deploy/envoy's, or Envoy's defaults), or cut a stream in flight when the
    replica died (gRPC reports the proxy's reset as INTERNAL "RST_STREAM"). A failure to reach
    the proxy itself is not: that stays a retryable UnavailableError."""
    if code == grpc.StatusCode.INTERNAL:
        return "RST_STREAM" in message
    return code == grpc.StatusCode.UNAVAILABLE and any(
        sign in message for sign in _PROXY_LOST_REPLICA
    )


# Envoy's replies when the pinned replica cannot be used: deploy/envoy/envoy.yaml's local reply,
# then Envoy's defaults (no healthy host; connect failure or reset before any reply).
_PROXY_LOST_REPLICA = (
    "the replica holding this video session",
    "no healthy upstream",
    "upstream connect error",
)
