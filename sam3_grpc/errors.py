"""Domain errors, each bound to the gRPC status code it becomes.

Servicers, the executor and engines raise these; one interceptor (`server/interceptors.py`)
turns them into rich `google.rpc.Status` replies. Anything else becomes INTERNAL with a generic
message, the traceback going only to the log. This module imports neither grpc nor torch.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error with a message meant for the caller."""

    code_name = "INTERNAL"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Seconds after which a retry may succeed; sent as a google.rpc.RetryInfo detail.
        self.retry_after_s = retry_after_s


class InvalidArgument(ServiceError):
    code_name = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code_name = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    code_name = "FAILED_PRECONDITION"


class OutOfRange(ServiceError):
    code_name = "OUT_OF_RANGE"


class ResourceExhausted(ServiceError):
    code_name = "RESOURCE_EXHAUSTED"


class Unavailable(ServiceError):
    code_name = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code_name = "DEADLINE_EXCEEDED"


class Cancelled(ServiceError):
    code_name = "CANCELLED"


class DataLoss(ServiceError):
    code_name = "DATA_LOSS"


class Unauthenticated(ServiceError):
    code_name = "UNAUTHENTICATED"


class Unimplemented(ServiceError):
    code_name = "UNIMPLEMENTED"


class Internal(ServiceError):
    code_name = "INTERNAL"


class ConfigurationError(Exception):
    """The server cannot start as configured; the message says how to fix it."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error (matched by name: no torch import here)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
