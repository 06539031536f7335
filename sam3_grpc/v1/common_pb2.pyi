from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PromptLabel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMPT_LABEL_UNSPECIFIED: _ClassVar[PromptLabel]
    PROMPT_LABEL_POSITIVE: _ClassVar[PromptLabel]
    PROMPT_LABEL_NEGATIVE: _ClassVar[PromptLabel]

class MaskEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_ENCODING_UNSPECIFIED: _ClassVar[MaskEncoding]
    MASK_ENCODING_RLE: _ClassVar[MaskEncoding]
    MASK_ENCODING_PNG: _ClassVar[MaskEncoding]
    MASK_ENCODING_NONE: _ClassVar[MaskEncoding]
PROMPT_LABEL_UNSPECIFIED: PromptLabel
PROMPT_LABEL_POSITIVE: PromptLabel
PROMPT_LABEL_NEGATIVE: PromptLabel
MASK_ENCODING_UNSPECIFIED: MaskEncoding
MASK_ENCODING_RLE: MaskEncoding
MASK_ENCODING_PNG: MaskEncoding
MASK_ENCODING_NONE: MaskEncoding

class Box(_message.Message):
    __slots__ = ("x_min", "y_min", "x_max", "y_max")
    X_MIN_FIELD_NUMBER: _ClassVar[int]
    Y_MIN_FIELD_NUMBER: _ClassVar[int]
    X_MAX_FIELD_NUMBER: _ClassVar[int]
    Y_MAX_FIELD_NUMBER: _ClassVar[int]
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    def __init__(self, x_min: _Optional[float] = ..., y_min: _Optional[float] = ..., x_max: _Optional[float] = ..., y_max: _Optional[float] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class LabeledBox(_message.Message):
    __slots__ = ("box", "label")
    BOX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    box: Box
    label: PromptLabel
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., label: _Optional[_Union[PromptLabel, str]] = ...) -> None: ...

class LabeledPoint(_message.Message):
    __slots__ = ("point", "label")
    POINT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    point: Point
    label: PromptLabel
    def __init__(self, point: _Optional[_Union[Point, _Mapping]] = ..., label: _Optional[_Union[PromptLabel, str]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("text", "boxes", "points")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    text: str
    boxes: _containers.RepeatedCompositeFieldContainer[LabeledBox]
    points: _containers.RepeatedCompositeFieldContainer[LabeledPoint]
    def __init__(self, text: _Optional[str] = ..., boxes: _Optional[_Iterable[_Union[LabeledBox, _Mapping]]] = ..., points: _Optional[_Iterable[_Union[LabeledPoint, _Mapping]]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("content", "path")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    path: str
    def __init__(self, content: _Optional[bytes] = ..., path: _Optional[str] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("mask_encoding", "include_polygons", "polygon_tolerance_pixels", "score_threshold", "min_area_pixels", "max_detections")
    MASK_ENCODING_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_POLYGONS_FIELD_NUMBER: _ClassVar[int]
    POLYGON_TOLERANCE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_AREA_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    mask_encoding: MaskEncoding
    include_polygons: bool
    polygon_tolerance_pixels: float
    score_threshold: float
    min_area_pixels: int
    max_detections: int
    def __init__(self, mask_encoding: _Optional[_Union[MaskEncoding, str]] = ..., include_polygons: _Optional[bool] = ..., polygon_tolerance_pixels: _Optional[float] = ..., score_threshold: _Optional[float] = ..., min_area_pixels: _Optional[int] = ..., max_detections: _Optional[int] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("width", "height", "rle_counts", "png")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RLE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    rle_counts: str
    png: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., rle_counts: _Optional[str] = ..., png: _Optional[bytes] = ...) -> None: ...

class Polygon(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("object_id", "score", "box", "area_pixels", "mask", "polygons")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    AREA_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    object_id: int
    score: float
    box: Box
    area_pixels: int
    mask: Mask
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    def __init__(self, object_id: _Optional[int] = ..., score: _Optional[float] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., area_pixels: _Optional[int] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("frame_index", "objects")
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    frame_index: int
    objects: _containers.RepeatedCompositeFieldContainer[Detection]
    def __init__(self, frame_index: _Optional[int] = ..., objects: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ...) -> None: ...
