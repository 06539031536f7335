"""Domain errors, each bound to the gRPC status code it becomes and a machine-readable reason.

Servicers, the executor and engines raise these; one interceptor (`server/interceptors.py`)
turns them into rich `google.rpc.Status` replies: the message, a `google.rpc.ErrorInfo` with the
reason (domain "sam3_grpc"), a `google.rpc.BadRequest` naming the offending field for
INVALID_ARGUMENT, and a `google.rpc.RetryInfo` when a retry may succeed. Anything else becomes
INTERNAL with a generic message, the traceback going only to the log.

`Reason` mirrors the `sam3_grpc.v1.ErrorReason` proto enum (without its prefix); a test holds the
two together. This module imports neither grpc, protobuf nor torch.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Reason(str, enum.Enum):
    """Why a call failed; see protos/sam3_grpc/v1/error_reason.proto for each value."""

    INVALID_REQUEST = "INVALID_REQUEST"
    MALFORMED_MESSAGE = "MALFORMED_MESSAGE"
    INVALID_IMAGE = "INVALID_IMAGE"
    INVALID_VIDEO = "INVALID_VIDEO"
    UNSUPPORTED_PROMPT = "UNSUPPORTED_PROMPT"
    FRAME_OUT_OF_RANGE = "FRAME_OUT_OF_RANGE"
    UNKNOWN_OBJECT = "UNKNOWN_OBJECT"
    UPLOAD_SIZE_MISMATCH = "UPLOAD_SIZE_MISMATCH"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    MEDIA_NOT_FOUND = "MEDIA_NOT_FOUND"
    NO_MEDIA_ROOT = "NO_MEDIA_ROOT"
    SESSION_BUSY = "SESSION_BUSY"
    NO_PROMPTS = "NO_PROMPTS"
    QUEUE_FULL = "QUEUE_FULL"
    SESSION_LIMIT = "SESSION_LIMIT"
    UPLOAD_LIMIT = "UPLOAD_LIMIT"
    UPLOAD_TOO_LARGE = "UPLOAD_TOO_LARGE"
    DEVICE_OUT_OF_MEMORY = "DEVICE_OUT_OF_MEMORY"
    MEMORY_BUDGET = "MEMORY_BUDGET"
    OBJECT_LIMIT = "OBJECT_LIMIT"
    CPU_BUSY = "CPU_BUSY"
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    DISK_FULL = "DISK_FULL"
    TOO_MANY_CALLS = "TOO_MANY_CALLS"
    DEADLINE_IN_QUEUE = "DEADLINE_IN_QUEUE"
    UPLOAD_STALLED = "UPLOAD_STALLED"
    INPUT_TOO_COSTLY = "INPUT_TOO_COSTLY"
    CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
    FRAME_UNREADABLE = "FRAME_UNREADABLE"
    TOKEN_INVALID = "TOKEN_INVALID"
    MODEL_LOADING = "MODEL_LOADING"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    ENGINE_WEDGED = "ENGINE_WEDGED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


ERROR_DOMAIN = "sam3_grpc"


class ServiceError(Exception):
    """An error with a message meant for the caller.

    reason: the machine-readable cause (each subclass has a default). field: for
    INVALID_ARGUMENT, the path of the offending request field ("prompts[0].text").
    metadata: ErrorInfo metadata (string values; limits, counts). retry_after_s: seconds after
    which a retry may succeed (a RetryInfo detail).
    """

    code_name = "INTERNAL"
    default_reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        field: str | None = None,
        metadata: Mapping[str, object] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.field = field
        self.metadata = {key: str(value) for key, value in (metadata or {}).items()}
        self.retry_after_s = retry_after_s


class InvalidArgument(ServiceError):
    code_name = "INVALID_ARGUMENT"
    default_reason = Reason.INVALID_REQUEST


class NotFound(ServiceError):
    code_name = "NOT_FOUND"
    default_reason = Reason.SESSION_NOT_FOUND


class FailedPrecondition(ServiceError):
    code_name = "FAILED_PRECONDITION"
    default_reason = Reason.SESSION_BUSY


class ResourceExhausted(ServiceError):
    code_name = "RESOURCE_EXHAUSTED"
    default_reason = Reason.QUEUE_FULL


class Unavailable(ServiceError):
    code_name = "UNAVAILABLE"
    default_reason = Reason.SHUTTING_DOWN


class DeadlineExceeded(ServiceError):
    code_name = "DEADLINE_EXCEEDED"
    default_reason = Reason.DEADLINE_IN_QUEUE


class Cancelled(ServiceError):
    code_name = "CANCELLED"
    default_reason = Reason.CANCELLED


class DataLoss(ServiceError):
    code_name = "DATA_LOSS"
    default_reason = Reason.CHECKSUM_MISMATCH


class Unauthenticated(ServiceError):
    code_name = "UNAUTHENTICATED"
    default_reason = Reason.TOKEN_INVALID


class Internal(ServiceError):
    code_name = "INTERNAL"
    default_reason = Reason.INTERNAL


class ConfigurationError(Exception):
    """The server cannot start as configured; the message says how to fix it."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error (matched by name: no torch import here)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
