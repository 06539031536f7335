"""Server interceptors, outermost first: call observation, authentication, error mapping.

- `ObservingInterceptor`: one structured log line and the Prometheus request metrics per call.
- `AuthInterceptor`: bearer tokens, checked before the handler runs, so a rejected call queues no
  work and writes no upload byte; on every call shape.
- `ErrorMappingInterceptor`: the one place where exceptions become gRPC statuses. A
  `ServiceError` becomes its own code with its message and, with a retry hint, a
  google.rpc.RetryInfo detail; anything else becomes INTERNAL with a generic message and an error
  id, the traceback going only to the log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import inspect
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sam3_grpc.errors import (
    ERROR_DOMAIN,
    Internal,
    InvalidArgument,
    Reason,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    is_out_of_memory,
)

logger = logging.getLogger(__name__)
call_logger = logging.getLogger("sam3_grpc.calls")

PROBE_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


# An absolute file system path (two or more components), as it may appear inside a message.
_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@%+~-]+/)+[\w.@%+~-]*")


def redact_paths(text: str) -> str:
    """Replies never carry server paths: whatever a message says (an engine's, a library's),
    every absolute path in it is replaced before it leaves the server."""
    return _PATH.sub("<server path>", text)


def as_service_error(exc: BaseException, method: str) -> ServiceError:
    """The ServiceError a failure is reported as; anything unexpected is logged with an id."""
    if isinstance(exc, ServiceError):
        return exc
    if is_out_of_memory(exc):
        return ResourceExhausted(
            "the server ran out of memory for this request; retry later or send less",
            reason=Reason.DEVICE_OUT_OF_MEMORY,
            retry_after_s=1.0,
        )
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error %s in %s", error_id, method, exc_info=exc)
    return Internal(
        f"internal server error (error id {error_id}; the server log has details)",
        metadata={"error_id": error_id},
    )


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_rpc_status(exc: BaseException, method: str) -> grpc.Status:
    """The rich status of a failure: ErrorInfo always, BadRequest for a named field,
    RetryInfo when a retry may succeed."""
    error = as_service_error(exc, method)
    details = [
        _packed(
            error_details_pb2.ErrorInfo(
                reason=error.reason.value,
                domain=ERROR_DOMAIN,
                metadata={k: redact_paths(v) for k, v in error.metadata.items()},
            )
        )
    ]
    if error.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=redact_paths(error.message)
        )
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(
        code=code_pb2.Code.Value(error.code_name),
        message=redact_paths(error.message),
        details=details,
    )
    rich = rpc_status.to_status(status)
    if error.retry_after_s is None:
        return rich
    trailers = (*rich.trailing_metadata, *pushback(error.retry_after_s))
    return _Status(rich.code, rich.details, trailers)


def pushback(retry_after_s: float) -> tuple[tuple[str, str], ...]:
    """The retry delay again, for what cannot read RetryInfo inside grpc-status-details-bin:
    gRPC's own `grpc-retry-pushback-ms` (honoured by gRPC clients' retry policies) and
    `retry-after` in whole seconds, rounded up (what Envoy's rate_limited_retry_back_off reads;
    deploy/envoy/envoy.yaml)."""
    return (
        ("grpc-retry-pushback-ms", str(max(0, round(retry_after_s * 1000)))),
        ("retry-after", str(max(1, math.ceil(retry_after_s)))),
    )


class _Status(
    collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status
):
    """What context.abort reads (grpc.Status is abstract; grpcio-status does the same)."""


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    status = to_rpc_status(exc, method)
    await context.abort(status.code, status.details, status.trailing_metadata)


# A wrapper takes (behavior, method) and returns a behavior of the same call shape.
Wrap = Callable[[Callable[..., Any], str], Callable[..., Any]]


def rewrap(
    handler: grpc.RpcMethodHandler,
    method: str,
    wrap_unary: Wrap,
    wrap_stream: Wrap,
    deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler with its behavior wrapped, whatever its call shape."""
    shapes = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, wrap_unary),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, wrap_unary),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, wrap_stream),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, wrap_stream),
    )
    for attribute, build, wrap in shapes:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            return build(
                wrap(behavior, method),
                deserializer or handler.request_deserializer,
                handler.response_serializer,
            )
    return handler


class _Malformed:
    """Stands in for a request message whose bytes did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _lenient(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    # grpc answers a deserialization failure with UNKNOWN (or INTERNAL inside a stream); keep
    # the failure as a value so the handler wrapper can answer INVALID_ARGUMENT instead.
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's bytes
            return _Malformed(exc)

    return parse


def _checked(message: Any) -> Any:
    if isinstance(message, _Malformed):
        raise InvalidArgument(
            "the request bytes are not a valid message of this method's "
            "request type; check the client uses the sam3_grpc.v1 protos",
            reason=Reason.MALFORMED_MESSAGE,
        )
    return message


async def _checked_stream(messages):
    async for message in messages:
        yield _checked(message)


def _check_requests(request_or_iterator: Any) -> Any:
    if hasattr(request_or_iterator, "__aiter__"):
        return _checked_stream(request_or_iterator)
    return _checked(request_or_iterator)


# ----- error mapping -------------------------------------------------------------------------
def _map_unary(behavior, method):
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(_check_requests(request_or_iterator), context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status below
            await abort_with(context, exc, method)

    return wrapper


def _map_stream(behavior, method):
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext):
        try:
            async for response in behavior(_check_requests(request_or_iterator), context):
                yield response
        except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status below
            await abort_with(context, exc, method)

    return wrapper


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions of this service's handlers to rich statuses (see module docstring)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # Health and reflection are grpc's own handlers with their own error handling.
        if handler is None or method.startswith("/grpc."):
            return handler
        return rewrap(
            handler,
            method,
            _map_unary,
            _map_stream,
            deserializer=_lenient(handler.request_deserializer),
        )


# ----- authentication ------------------------------------------------------------------------
def load_tokens(path: str) -> list[bytes]:
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    tokens = [t.encode() for t in lines if t and not t.startswith("#")]
    if not tokens:
        raise ValueError(f"--auth-token-file {path} holds no token")
    return tokens


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Accepts a call only with `authorization: Bearer <token>` naming a configured token."""

    def __init__(self, tokens: Sequence[bytes], *, exempt_probes: bool) -> None:
        self._tokens = list(tokens)
        self._exempt_probes = exempt_probes

    def _authorized(self, metadata) -> bool:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode("latin-1")
                if text[:7].lower() == "bearer ":
                    presented = text[7:].strip().encode()
                break
        # Compare against every token, in constant time, whatever matches first.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched and bool(presented)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if self._exempt_probes and method.startswith(PROBE_PREFIXES):
            return await continuation(handler_call_details)
        if self._authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        error = Unauthenticated(
            "missing or invalid token: send the metadata "
            "'authorization: Bearer <token>' with a token the server accepts"
        )

        def refuse_unary(behavior, method_name):
            async def refused(request_or_iterator, context):
                await abort_with(context, error, method_name)

            return refused

        def refuse_stream(behavior, method_name):
            async def refused(request_or_iterator, context):
                await abort_with(context, error, method_name)
                yield  # an async generator, like the handler it replaces

            return refused

        return rewrap(handler, method, refuse_unary, refuse_stream)


# ----- calls per connection ------------------------------------------------------------------
class ConnectionLimitInterceptor(grpc.aio.ServerInterceptor):
    """At most `limit` calls in progress per connection (peer address); the next ones are
    refused with RESOURCE_EXHAUSTED (TOO_MANY_CALLS) and a RetryInfo, which clients retry and
    which is logged and counted like any call. The HTTP/2 stream limit stays above this one, so
    extra calls never end as anonymous "stream removed" resets. Probes are exempt."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._calls: collections.Counter[str] = collections.Counter()

    def _wrap(self, behavior, method, streaming: bool):
        error = ResourceExhausted(
            f"this connection already has {self.limit} calls in progress "
            "(--max-calls-per-connection); retry shortly or open another connection",
            reason=Reason.TOO_MANY_CALLS,
            metadata={"limit": self.limit},
            retry_after_s=0.5,
        )
        calls = self._calls

        @contextlib.contextmanager
        def admitted(context):
            peer = context.peer()
            if calls[peer] >= self.limit:
                yield False
                return
            calls[peer] += 1
            try:
                yield True
            finally:
                calls[peer] -= 1
                if not calls[peer]:
                    del calls[peer]

        if streaming and inspect.isasyncgenfunction(behavior):

            async def stream_wrapper(request_or_iterator, context):
                with admitted(context) as ok:
                    if not ok:
                        await abort_with(context, error, method)
                    async for response in behavior(request_or_iterator, context):
                        yield response

            return stream_wrapper

        async def unary_wrapper(request_or_iterator, context):
            with admitted(context) as ok:
                if not ok:
                    await abort_with(context, error, method)
                return await behavior(request_or_iterator, context)

        return unary_wrapper

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PROBE_PREFIXES):
            return handler
        return rewrap(
            handler,
            method,
            lambda behavior, name: self._wrap(behavior, name, streaming=False),
            lambda behavior, name: self._wrap(behavior, name, streaming=True),
        )


# ----- observation ---------------------------------------------------------------------------
def _session_id(message: Any) -> str:
    session_id = getattr(message, "session_id", "")
    if not session_id and hasattr(message, "session"):
        session_id = message.session.session_id
    return session_id or ""


class _CallRecord:
    __slots__ = ("method", "peer", "session_id", "started")

    def __init__(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.method = method
        self.peer = context.peer()
        self.started = time.perf_counter()
        self.session_id = ""


def _client_left(context, outcome: BaseException | None) -> bool:
    """The caller cancelled or went away: whatever the handler was answering (an upload cut
    short looks incomplete), the call ended as CANCELLED for it. Sending a status to a gone
    client fails inside gRPC with ExecuteBatchError."""
    return context.cancelled() or type(outcome).__name__ == "ExecuteBatchError"


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """One log line and the request metrics per call (health checks log at DEBUG)."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics

    def _finish(self, record: _CallRecord, context, outcome: BaseException | None) -> None:
        if isinstance(outcome, asyncio.CancelledError) or _client_left(context, outcome):
            code = grpc.StatusCode.CANCELLED
        elif outcome is None or isinstance(outcome, grpc.aio.AbortError):
            code = context.code() or grpc.StatusCode.OK
        else:
            code = grpc.StatusCode.UNKNOWN
        if isinstance(code, int):
            code = {c.value[0]: c for c in grpc.StatusCode}.get(code, grpc.StatusCode.UNKNOWN)
        elapsed = time.perf_counter() - record.started
        self.metrics.observe_call(record.method, code.name, elapsed)
        level = logging.DEBUG if record.method.startswith(PROBE_PREFIXES) else logging.INFO
        if call_logger.isEnabledFor(level):
            call_logger.log(
                level,
                "%s %s %.1f ms session=%s peer=%s",
                record.method,
                code.name,
                elapsed * 1000,
                record.session_id or "-",
                record.peer,
                extra={
                    "method": record.method,
                    "code": code.name,
                    "duration_ms": round(elapsed * 1000, 3),
                    "session_id": record.session_id or None,
                    "peer": record.peer,
                },
            )

    @contextlib.contextmanager
    def _observed(self, method: str, context, request_or_iterator):
        record = _CallRecord(method, context)
        record.session_id = _session_id(request_or_iterator)
        outcome: BaseException | None = None
        try:
            yield record
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            self._finish(record, context, outcome)

    def _wrap_unary(self, behavior, method):
        async def wrapper(request_or_iterator, context):
            with self._observed(method, context, request_or_iterator) as record:
                response = await behavior(request_or_iterator, context)
                record.session_id = record.session_id or _session_id(response)
                return response

        return wrapper

    def _wrap_stream(self, behavior, method):
        if not inspect.isasyncgenfunction(behavior):
            # grpc's own health Watch streams with context.write from a coroutine.
            return self._wrap_unary(behavior, method)

        async def wrapper(request_or_iterator, context):
            with self._observed(method, context, request_or_iterator):
                async for response in behavior(request_or_iterator, context):
                    yield response

        return wrapper

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return rewrap(handler, handler_call_details.method, self._wrap_unary, self._wrap_stream)
