"""Python client of sam3-grpc: image segmentation and video object tracking over gRPC.

    from sam3_grpc.client import Sam3Client, Prompt

    with Sam3Client("localhost:50051") as client:
        result = client.segment_image("photo.jpg", ["a dog", Prompt(boxes=[(10, 20, 200, 180)])])
        for detection in result[0]:
            print(detection.score, detection.box, detection.mask.sum())

        with client.session(upload="clip.mp4") as session:
            session.add_prompt(0, "a car")
            for frame in session.propagate():
                print(frame.frame_index, [o.object_id for o in frame.objects])

Needs only grpcio, grpcio-status, protobuf, numpy and pycocotools; never imports torch. OpenCV
or Pillow are imported lazily, only to encode numpy/PIL images or decode PNG masks. The names
below are loaded on first use, so importing the package (or the CLI) stays light.

`Sam3Client` blocks; `AsyncSam3Client` has the same methods and signatures as coroutines. Both
are thin I/O around one core (`_core.py`): request building, reply conversion, default deadlines
(`DEFAULT_TIMEOUTS`), the retry decision, and the routing header that keeps a session on its
replica behind Envoy. Errors carry a machine-readable `reason` (see `errors.py`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sam3_grpc.client._core import DEFAULT_TIMEOUTS, OutputOptions
    from sam3_grpc.client.aio import AsyncPropagateStream, AsyncSam3Client, AsyncVideoSession
    from sam3_grpc.client.client import PropagateStream, Sam3Client, VideoSession
    from sam3_grpc.client.errors import (
        CancelledError,
        DataLossError,
        DeadlineExceededError,
        FailedPreconditionError,
        InternalError,
        InvalidArgumentError,
        NotFoundError,
        OutOfRangeError,
        PermissionDeniedError,
        ReplicaLostError,
        ResourceExhaustedError,
        Sam3Error,
        UnauthenticatedError,
        UnavailableError,
        UnimplementedError,
    )
    from sam3_grpc.client.pool import Sam3Pool
    from sam3_grpc.client.retry import NO_RETRY, RetryPolicy
    from sam3_grpc.client.types import (
        AddPromptResult,
        Box,
        CacheStatus,
        Detection,
        FrameResult,
        Prompt,
        PromptResult,
        PropagateFrame,
        QueueStatus,
        SegmentResult,
        ServerPath,
        ServerStatus,
        Session,
    )

__all__ = [
    "DEFAULT_TIMEOUTS",
    "NO_RETRY",
    "AddPromptResult",
    "AsyncPropagateStream",
    "AsyncSam3Client",
    "AsyncVideoSession",
    "Box",
    "CacheStatus",
    "CancelledError",
    "DataLossError",
    "DeadlineExceededError",
    "Detection",
    "FailedPreconditionError",
    "FrameResult",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutOfRangeError",
    "OutputOptions",
    "PermissionDeniedError",
    "Prompt",
    "PromptResult",
    "PropagateFrame",
    "PropagateStream",
    "QueueStatus",
    "ReplicaLostError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "Sam3Client",
    "Sam3Error",
    "Sam3Pool",
    "SegmentResult",
    "ServerPath",
    "ServerStatus",
    "Session",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "VideoSession",
]

_MODULES = {
    "AsyncPropagateStream": "aio",
    "AsyncSam3Client": "aio",
    "AsyncVideoSession": "aio",
    "PropagateStream": "client",
    "Sam3Client": "client",
    "VideoSession": "client",
    "Sam3Pool": "pool",
    "OutputOptions": "_core",
    "DEFAULT_TIMEOUTS": "_core",
    "NO_RETRY": "retry",
    "RetryPolicy": "retry",
}


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _MODULES:
        module = _MODULES[name]
    elif name.endswith("Error"):
        module = "errors"
    else:
        module = "types"
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
