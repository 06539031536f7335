import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_REAL: _ClassVar[ModelKind]
    MODEL_KIND_TINY: _ClassVar[ModelKind]
    MODEL_KIND_SYNTHETIC: _ClassVar[ModelKind]
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_REAL: ModelKind
MODEL_KIND_TINY: ModelKind
MODEL_KIND_SYNTHETIC: ModelKind

class GetServerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("depth", "capacity", "running", "completed", "rejected", "dropped")
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    depth: int
    capacity: int
    running: int
    completed: int
    rejected: int
    dropped: int
    def __init__(self, depth: _Optional[int] = ..., capacity: _Optional[int] = ..., running: _Optional[int] = ..., completed: _Optional[int] = ..., rejected: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class CpuStatus(_message.Message):
    __slots__ = ("workers", "backlog", "capacity", "completed", "rejected")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    workers: int
    backlog: int
    capacity: int
    completed: int
    rejected: int
    def __init__(self, workers: _Optional[int] = ..., backlog: _Optional[int] = ..., capacity: _Optional[int] = ..., completed: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class DeviceMemory(_message.Message):
    __slots__ = ("used_bytes", "total_bytes")
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    used_bytes: int
    total_bytes: int
    def __init__(self, used_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class SessionMemoryBudget(_message.Message):
    __slots__ = ("host_budget_bytes", "host_reserved_bytes", "device_budget_bytes", "device_reserved_bytes")
    HOST_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    host_budget_bytes: int
    host_reserved_bytes: int
    device_budget_bytes: int
    device_reserved_bytes: int
    def __init__(self, host_budget_bytes: _Optional[int] = ..., host_reserved_bytes: _Optional[int] = ..., device_budget_bytes: _Optional[int] = ..., device_reserved_bytes: _Optional[int] = ...) -> None: ...

class CacheStatus(_message.Message):
    __slots__ = ("entries", "capacity", "hits", "misses", "bytes")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    entries: int
    capacity: int
    hits: int
    misses: int
    bytes: int
    def __init__(self, entries: _Optional[int] = ..., capacity: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class GetServerStatusResponse(_message.Message):
    __slots__ = ("model_name", "model_kind", "device", "ready", "queue", "active_sessions", "memory", "uptime", "version", "cache", "load_duration", "warmup_duration", "weights_source", "session_memory_bytes", "session_memory_budget", "cpu")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_FIELD_NUMBER: _ClassVar[int]
    WARMUP_DURATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SESSION_MEMORY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_kind: ModelKind
    device: str
    ready: bool
    queue: QueueStatus
    active_sessions: int
    memory: DeviceMemory
    uptime: _duration_pb2.Duration
    version: str
    cache: CacheStatus
    load_duration: _duration_pb2.Duration
    warmup_duration: _duration_pb2.Duration
    weights_source: str
    session_memory_bytes: int
    session_memory_budget: SessionMemoryBudget
    cpu: CpuStatus
    def __init__(self, model_name: _Optional[str] = ..., model_kind: _Optional[_Union[ModelKind, str]] = ..., device: _Optional[str] = ..., ready: _Optional[bool] = ..., queue: _Optional[_Union[QueueStatus, _Mapping]] = ..., active_sessions: _Optional[int] = ..., memory: _Optional[_Union[DeviceMemory, _Mapping]] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., version: _Optional[str] = ..., cache: _Optional[_Union[CacheStatus, _Mapping]] = ..., load_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., warmup_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., weights_source: _Optional[str] = ..., session_memory_bytes: _Optional[int] = ..., session_memory_budget: _Optional[_Union[SessionMemoryBudget, _Mapping]] = ..., cpu: _Optional[_Union[CpuStatus, _Mapping]] = ...) -> None: ...
