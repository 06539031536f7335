import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from sam3_grpc.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PropagationDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROPAGATION_DIRECTION_UNSPECIFIED: _ClassVar[PropagationDirection]
    PROPAGATION_DIRECTION_FORWARD: _ClassVar[PropagationDirection]
    PROPAGATION_DIRECTION_BACKWARD: _ClassVar[PropagationDirection]
    PROPAGATION_DIRECTION_BOTH: _ClassVar[PropagationDirection]
PROPAGATION_DIRECTION_UNSPECIFIED: PropagationDirection
PROPAGATION_DIRECTION_FORWARD: PropagationDirection
PROPAGATION_DIRECTION_BACKWARD: PropagationDirection
PROPAGATION_DIRECTION_BOTH: PropagationDirection

class VideoInfo(_message.Message):
    __slots__ = ("frame_count", "fps", "width", "height")
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    frame_count: int
    fps: float
    width: int
    height: int
    def __init__(self, frame_count: _Optional[int] = ..., fps: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "video", "uploaded", "object_ids", "create_time", "last_use_time", "expire_time", "propagating", "memory_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_USE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    PROPAGATING_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    video: VideoInfo
    uploaded: bool
    object_ids: _containers.RepeatedScalarFieldContainer[int]
    create_time: _timestamp_pb2.Timestamp
    last_use_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    propagating: bool
    memory_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., video: _Optional[_Union[VideoInfo, _Mapping]] = ..., uploaded: _Optional[bool] = ..., object_ids: _Optional[_Iterable[int]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_use_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., propagating: _Optional[bool] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class StartSessionRequest(_message.Message):
    __slots__ = ("video_path",)
    VIDEO_PATH_FIELD_NUMBER: _ClassVar[int]
    video_path: str
    def __init__(self, video_path: _Optional[str] = ...) -> None: ...

class StartSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class UploadVideoMetadata(_message.Message):
    __slots__ = ("filename", "size_bytes", "sha256")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    filename: str
    size_bytes: int
    sha256: str
    def __init__(self, filename: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadVideoRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadVideoMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadVideoMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadVideoResponse(_message.Message):
    __slots__ = ("session", "received_bytes")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    session: Session
    received_bytes: int
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ..., received_bytes: _Optional[int] = ...) -> None: ...

class AddPromptRequest(_message.Message):
    __slots__ = ("session_id", "frame_index", "prompt", "object_id", "output")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    frame_index: int
    prompt: _common_pb2.Prompt
    object_id: int
    output: _common_pb2.OutputOptions
    def __init__(self, session_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ..., object_id: _Optional[int] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class AddPromptResponse(_message.Message):
    __slots__ = ("frame", "object_ids")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    frame: _common_pb2.FrameResult
    object_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, frame: _Optional[_Union[_common_pb2.FrameResult, _Mapping]] = ..., object_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RemoveObjectRequest(_message.Message):
    __slots__ = ("session_id", "object_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    object_id: int
    def __init__(self, session_id: _Optional[str] = ..., object_id: _Optional[int] = ...) -> None: ...

class RemoveObjectResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class ResetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ResetSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class PropagateRequest(_message.Message):
    __slots__ = ("session_id", "direction", "start_frame_index", "max_frames", "output")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAMES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    direction: PropagationDirection
    start_frame_index: int
    max_frames: int
    output: _common_pb2.OutputOptions
    def __init__(self, session_id: _Optional[str] = ..., direction: _Optional[_Union[PropagationDirection, str]] = ..., start_frame_index: _Optional[int] = ..., max_frames: _Optional[int] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class PropagateResponse(_message.Message):
    __slots__ = ("frame", "frames_done", "frames_total")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DONE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    frame: _common_pb2.FrameResult
    frames_done: int
    frames_total: int
    def __init__(self, frame: _Optional[_Union[_common_pb2.FrameResult, _Mapping]] = ..., frames_done: _Optional[int] = ..., frames_total: _Optional[int] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("closed",)
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    closed: bool
    def __init__(self, closed: _Optional[bool] = ...) -> None: ...
