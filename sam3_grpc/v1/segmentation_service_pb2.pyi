from sam3_grpc.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentImageRequest(_message.Message):
    __slots__ = ("image", "prompts", "output")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    output: _common_pb2.OutputOptions
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., output: _Optional[_Union[_common_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class PromptResult(_message.Message):
    __slots__ = ("prompt_index", "detections")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    detections: _containers.RepeatedCompositeFieldContainer[_common_pb2.Detection]
    def __init__(self, prompt_index: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[_common_pb2.Detection, _Mapping]]] = ...) -> None: ...

class SegmentImageResponse(_message.Message):
    __slots__ = ("width", "height", "results", "cache_hit")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    results: _containers.RepeatedCompositeFieldContainer[PromptResult]
    cache_hit: bool
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., results: _Optional[_Iterable[_Union[PromptResult, _Mapping]]] = ..., cache_hit: _Optional[bool] = ...) -> None: ...
