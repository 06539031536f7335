"""The one place where exceptions become gRPC statuses.

Every servicer method is wrapped, whatever its call shape: a `ServiceError` becomes its own code
with its message and, when it carries a retry hint, a google.rpc.RetryInfo detail; anything else
becomes INTERNAL with a generic message and an error id, the traceback going only to the log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sam3_grpc.errors import ServiceError, is_out_of_memory

logger = logging.getLogger(__name__)


def to_rpc_status(exc: BaseException, method: str) -> grpc.Status:
    if isinstance(exc, ServiceError):
        code, message, retry_after = exc.code_name, exc.message, exc.retry_after_s
    elif is_out_of_memory(exc):
        code, retry_after = "RESOURCE_EXHAUSTED", 1.0
        message = "the server ran out of memory for this request; retry later or send less"
    else:
        error_id = uuid.uuid4().hex[:12]
        logger.error("internal error %s in %s", error_id, method, exc_info=exc)
        code, retry_after = "INTERNAL", None
        message = f"internal server error (error id {error_id}; the server log has details)"
    details = []
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    status = status_pb2.Status(code=code_pb2.Code.Value(code), message=message, details=details)
    return rpc_status.to_status(status)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    status = to_rpc_status(exc, method)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _wrap_unary_response(behavior: Callable[..., Awaitable[Any]], method: str):
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request_or_iterator, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status below
            await _abort(context, exc, method)

    return wrapper


def _wrap_stream_response(behavior: Callable[..., Any], method: str):
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext):
        try:
            async for response in behavior(request_or_iterator, context):
                yield response
        except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status below
            await _abort(context, exc, method)

    return wrapper


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions of every handler to rich statuses (see module docstring)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # Health and reflection are grpc's own handlers with their own error handling.
        if handler is None or method.startswith("/grpc."):
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(handler.unary_unary, method),
                handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, method),
                handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(handler.unary_stream, method),
                handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(handler.stream_stream, method),
            handler.request_deserializer, handler.response_serializer)
