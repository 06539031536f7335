"""A SAM 3 video session's state in memory that does not grow with the video's length.

sam3 0.1.4 (`Sam3VideoInferenceWithInstanceInteractivity`) keeps, for every frame it processed,
tracker memories, video-resolution masks, scores and bookkeeping, and deep-copies part of it on
every frame. `SessionBounds` keeps what sam3 can still read, in the same containers sam3 expects,
so the model runs unchanged: the same calls, on the same tensors, in the same order. References
below are to `sam3/model/` of sam3 0.1.4: VI = sam3_video_inference.py, VB =
sam3_video_base.py, TP = sam3_tracking_predictor.py, TB = sam3_tracker_base.py,
TU = sam3_tracker_utils.py, IM = sam3_image.py.

Exact in every scenario (storage only):
- A1 `CompactFrameOutputs`: the per-frame output masks sam3 caches for replay ("fetch"),
  partial propagation and clicks (VI:548, 557, 1042, 1308), as COCO RLE on the host (or packed
  bits when smaller), re-inflated to the same dtype, shape and device when read.
- A2 `FrameScores`: per-frame tracker scores, deep-copied by sam3 on every frame (VB:523):
  frames other than the ones being written are stored packed and shared between copies.
- A3 empty per-frame `suppressed_obj_ids` sets dropped (a defaultdict recreates them, VB:1333);
  A4 unmatched / overlap frame lists cut to the hot-start thresholds (only their length is
  compared, VB:1381, 1427); A5 `mask_inputs_per_obj` values dropped (only keys are read,
  TP:742, 926-931, 1213; VI:1684); `frames_already_tracked` kept as one byte a frame
  (`TrackedFrames`, TP:254-259, 867).
- A6 / A7: `feature_cache` and `multigpu_buffer` entries left behind at the end of a part or a
  click are dropped: every reader recomputes them first (VB:393 before TP:1015; IM:728-788).
- The inputs sam3 builds per frame (`find_inputs`, VI:124-140) are made on demand
  (`LazyFindInputs`), identical to the ones sam3 builds.

Bounded (tier B, `SessionBounds.prune`): tracker memories outside the frames sam3 can still
read are deleted, with the rules and the exceptions in `SessionBounds`' docstring.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import os
import tempfile
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import torch

from sam3_grpc.engines.sam3.builder import PATCH_SIZE

# ----- A1: output masks ---------------------------------------------------------------------
# Python's own cost of one stored mask (object, dict slot, shape tuple), counted with the data.
_MASK_OVERHEAD = 200
_FRAME_OVERHEAD = 300
# Encoded masks up to this size stay in memory (empty and tiny masks); larger ones go to the
# session's spill file, so memory per object and frame is bounded whatever the masks look like.
INLINE_MASK_BYTES = 64


class SpillFile:
    """A session's append-only store of encoded masks: an anonymous temporary file (unlinked at
    creation, so nothing is left behind, whatever ends the process), in `directory` (default:
    the system's temporary directory). Read and written on the device thread only."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self._file: Any = None
        self.size = 0  # bytes written (rewritten frames leave their old bytes behind)

    def write(self, data: bytes) -> int:
        if self._file is None:
            # Open for the session's life; closed by close() (or, at the latest, when collected).
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                dir=self.directory, prefix="sam3-grpc-masks-"
            )
        offset = self.size
        os.pwrite(self._file.fileno(), data, offset)
        self.size += len(data)
        return offset

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._file.fileno(), length, offset)
        if len(data) != length:
            raise OSError(f"mask spill file truncated at {offset}+{length}")
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class PackedMask:
    """One boolean mask, lossless: COCO RLE counts or `np.packbits`, whichever is smaller; held
    in memory when small, else in the session's spill file."""

    __slots__ = ("data", "device", "length", "offset", "rle", "shape", "source", "spill", "version")

    def __init__(
        self,
        data: bytes,
        rle: bool,
        shape: tuple[int, ...],
        device: torch.device,
        spill: SpillFile | None = None,
    ):
        self.rle = rle
        self.shape = shape
        self.device = device
        self.length = len(data)
        if spill is not None and len(data) > INLINE_MASK_BYTES:
            self.data: bytes | None = None
            self.offset = spill.write(data)
            self.spill: SpillFile | None = spill
        else:
            self.data = data
            self.offset = 0
            self.spill = None
        self.source: weakref.ref | None = None
        self.version = -1

    @property
    def nbytes(self) -> int:
        """Memory held (the spilled bytes are on disk)."""
        return (len(self.data) if self.data is not None else 0) + _MASK_OVERHEAD

    def remember(self, tensor: torch.Tensor) -> None:
        """Notes the tensor this mask was made from or inflated to: storing the same, unmodified
        tensor again reuses this encoding (sam3 caches each frame at compute time and again,
        filtered, when it releases the frame, VI:345-352, 401-402)."""
        if tensor.is_inference():  # no version counter: an in-place change would go unseen
            self.source = None
            return
        self.source = weakref.ref(tensor)
        self.version = tensor._version

    def same_as(self, tensor: torch.Tensor) -> bool:
        return (
            self.source is not None
            and self.source() is tensor
            and tensor._version == self.version
            and tensor.device == self.device
        )

    def encoded(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.spill is not None
        return self.spill.read(self.offset, self.length)

    def inflate(self) -> torch.Tensor:
        from pycocotools import mask as coco_mask

        height, width = _as_2d(self.shape)
        data = self.encoded()
        if self.rle:
            flat = coco_mask.decode({"size": [height, width], "counts": data}).astype(bool)
        else:
            bits = np.frombuffer(data, np.uint8)
            flat = np.unpackbits(bits, count=height * width).astype(bool).reshape(height, width)
        tensor = torch.from_numpy(np.ascontiguousarray(flat).reshape(self.shape))
        if tensor.device != self.device:
            tensor = tensor.to(self.device)
        self.remember(tensor)
        return tensor


def _as_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    width = shape[-1] if shape else 1
    height = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return height, width


def pack_masks(
    masks: Mapping[Any, Any],
    previous: FrameMasks | None = None,
    spill: SpillFile | None = None,
) -> dict[Any, Any]:
    """Packs a frame's `{obj_id: (1, H, W) bool tensor}`; anything else is kept as it is."""
    from pycocotools import mask as coco_mask

    packed: dict[Any, Any] = {}
    todo: list[tuple[Any, torch.Tensor]] = []
    for key, value in masks.items():
        if isinstance(value, PackedMask):
            packed[key] = value
        elif isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.dim() >= 1:
            old = previous.packed(key) if previous is not None else None
            if old is not None and old.same_as(value) and old.shape == tuple(value.shape):
                packed[key] = old
            else:
                todo.append((key, value))
                packed[key] = None  # keeps the insertion order
        else:
            packed[key] = value
    if todo:
        arrays = [v.detach().cpu().numpy() for _, v in todo]
        for (key, tensor), array in zip(todo, arrays, strict=True):
            shape = tuple(tensor.shape)
            height, width = _as_2d(shape)
            plane = np.asfortranarray(array.reshape(height, width), dtype=np.uint8)
            counts = coco_mask.encode(plane)["counts"]
            bits_len = (height * width + 7) // 8
            if len(counts) <= bits_len:
                mask = PackedMask(counts, True, shape, tensor.device, spill)
            else:
                bits = np.packbits(array.reshape(-1)).tobytes()
                mask = PackedMask(bits, False, shape, tensor.device, spill)
            mask.remember(tensor)
            packed[key] = mask
    return packed


class FrameMasks(MutableMapping):
    """One frame's cached masks `{obj_id: mask}`; a drop-in for the dict sam3 stores. Reading a
    mask inflates it; deleting or adding one changes this frame's entry (sam3 deletes a removed
    object's masks in place, VI:1308-1312); `copy()` returns a plain dict of tensors
    (`_build_tracker_output`, VI:559)."""

    __slots__ = ("_items", "_owner")

    def __init__(self, items: dict[Any, Any], owner: CompactFrameOutputs | None) -> None:
        self._items = items
        self._owner = owner

    def packed(self, key: Any) -> PackedMask | None:
        value = self._items.get(key)
        return value if isinstance(value, PackedMask) else None

    @property
    def nbytes(self) -> int:
        return _FRAME_OVERHEAD + sum(
            v.nbytes if isinstance(v, PackedMask) else _MASK_OVERHEAD for v in self._items.values()
        )

    def _changed(self, before: int) -> None:
        if self._owner is not None:
            self._owner._bytes += self.nbytes - before

    def __getitem__(self, key: Any) -> Any:
        value = self._items[key]
        return value.inflate() if isinstance(value, PackedMask) else value

    def __setitem__(self, key: Any, value: Any) -> None:
        before = self.nbytes
        spill = self._owner.spill if self._owner is not None else None
        self._items[key] = pack_masks({key: value}, self, spill)[key]
        self._changed(before)

    def __delitem__(self, key: Any) -> None:
        before = self.nbytes
        del self._items[key]
        self._changed(before)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self):  # a real keys view: no inflation
        return self._items.keys()

    def copy(self) -> dict[Any, Any]:
        return {key: self[key] for key in self._items}


class CompactFrameOutputs(MutableMapping):
    """`inference_state["cached_frame_outputs"]`: frame -> `FrameMasks`, masks kept packed on
    the host. Also keeps the frames it holds as sorted runs, so the frames a later propagation
    may compute (the gaps between runs) are known without scanning every frame."""

    def __init__(self, num_frames: int, spill_dir: str | None = None) -> None:
        self.num_frames = num_frames
        self.spill = SpillFile(spill_dir)
        self._frames: dict[int, FrameMasks] = {}
        self._bytes = 0
        self._starts: list[int] = []  # sorted, disjoint [start, end] runs of held frames
        self._ends: list[int] = []

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __getitem__(self, frame: int) -> FrameMasks:
        return self._frames[frame]

    def __setitem__(self, frame: int, masks: Mapping[Any, Any]) -> None:
        previous = self._frames.get(frame)
        if previous is not None:
            self._bytes -= previous.nbytes
            previous._owner = None
        entry = FrameMasks(pack_masks(masks, previous, self.spill), self)
        self._frames[frame] = entry
        self._bytes += entry.nbytes
        if previous is None:
            self._add_run(frame)

    def __delitem__(self, frame: int) -> None:
        entry = self._frames.pop(frame)
        entry._owner = None
        self._bytes -= entry.nbytes
        self._remove_run(frame)

    def __contains__(self, frame: object) -> bool:
        return frame in self._frames

    def __iter__(self) -> Iterator[int]:
        return iter(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def setdefault(self, frame: int, default: Mapping[Any, Any] | None = None) -> FrameMasks:
        # Returns the stored entry, as dict.setdefault does.
        if frame not in self._frames:
            self[frame] = default if default is not None else {}
        return self._frames[frame]

    def clear(self) -> None:
        for entry in self._frames.values():
            entry._owner = None
        self._frames.clear()
        self._bytes = 0
        self._starts.clear()
        self._ends.clear()
        # A fresh file: the old one's bytes are all garbage now. It closes (and its disk space
        # is freed) when the last mask still pointing into it goes.
        self.spill = SpillFile(self.spill.directory)

    def close(self) -> None:
        self.clear()
        self.spill.close()

    @property
    def spilled_bytes(self) -> int:
        return self.spill.size

    # ----- runs of held frames ---------------------------------------------------------------
    def _add_run(self, frame: int) -> None:
        i = bisect.bisect_right(self._starts, frame)
        joins_left = i > 0 and self._ends[i - 1] >= frame - 1
        joins_right = i < len(self._starts) and self._starts[i] <= frame + 1
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i], self._ends[i]
        elif joins_left:
            self._ends[i - 1] = max(self._ends[i - 1], frame)
        elif joins_right:
            self._starts[i] = frame
        else:
            self._starts.insert(i, frame)
            self._ends.insert(i, frame)

    def _remove_run(self, frame: int) -> None:
        i = bisect.bisect_right(self._starts, frame) - 1
        start, end = self._starts[i], self._ends[i]
        del self._starts[i], self._ends[i]
        for a, b in ((start, frame - 1), (frame + 1, end)):
            if a <= b:
                j = bisect.bisect_right(self._starts, a)
                self._starts.insert(j, a)
                self._ends.insert(j, b)

    def runs(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def run_containing(self, frame: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self._starts, frame) - 1
        if i >= 0 and self._ends[i] >= frame:
            return self._starts[i], self._ends[i]
        return None

    def gaps(self) -> list[tuple[int, int]]:
        """Maximal runs of frames not held: where a later propagation computes."""
        gaps, cursor = [], 0
        for start, end in zip(self._starts, self._ends, strict=True):
            if start > cursor:
                gaps.append((cursor, start - 1))
            cursor = end + 1
        if cursor < self.num_frames:
            gaps.append((cursor, self.num_frames - 1))
        return gaps


# ----- A2: per-frame tracker scores ---------------------------------------------------------
_SCORE_ROW = np.dtype([("key", "<i8"), ("key_np", "u1"), ("value", "<f8"), ("kind", "u1")])
_KINDS: tuple[type, ...] = (float, np.float32, np.float64, int)


def _freeze_scores(scores: dict) -> bytes | None:
    """`{obj_id: score}` as bytes, or None when a key or value has a type not handled here."""
    rows = np.empty(len(scores), _SCORE_ROW)
    for i, (key, value) in enumerate(scores.items()):
        if type(key) is int:
            key_np = 0
        elif type(key) is np.int64:
            key_np = 1
        else:
            return None
        kind = next((k for k, t in enumerate(_KINDS) if type(value) is t), None)
        if kind is None:
            return None
        rows[i] = (int(key), key_np, float(value), kind)
    return rows.tobytes()


def _thaw_scores(data: bytes) -> dict:
    scores: dict = {}
    for key, key_np, value, kind in np.frombuffer(data, _SCORE_ROW).tolist():
        scores[np.int64(key) if key_np else key] = _KINDS[kind](value)
    return scores


_ABSENT = object()


class FrameScores(defaultdict):
    """`tracker_metadata["obj_id_to_tracker_score_frame_wise"]`: frame -> `{obj_id: score}`.

    sam3 deep-copies the whole mapping on every frame (VB:523-525) and then writes one frame's
    scores (VB:281, 790, 801; VI:1139, 1507): O(N) per frame, O(N^2) per video. Here frames
    nobody is writing are held packed (immutable bytes) and shared between copies, so a copy
    costs the few frames being written. Reading a frame (`[]`, `get`) unpacks it into a fresh
    dict owned by this mapping, so sam3 mutates a private copy exactly as before.
    """

    def __init__(self, items: Iterable[tuple[Any, Any]] = ()) -> None:
        super().__init__(dict)
        self._live: set = set()
        self._packed_bytes = 0
        for key, value in items:
            self[key] = value

    @property
    def nbytes(self) -> int:
        return self._packed_bytes + 120 * len(self) + 250 * len(self._live)

    def __getitem__(self, key: Any) -> Any:
        value = dict.get(self, key, _ABSENT)
        if value is _ABSENT:
            return self.__missing__(key)
        if type(value) is bytes:
            self._packed_bytes -= len(value)
            value = _thaw_scores(value)
            dict.__setitem__(self, key, value)
            self._live.add(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        old = dict.get(self, key, _ABSENT)
        if type(old) is bytes:
            self._packed_bytes -= len(old)
        dict.__setitem__(self, key, value)
        if type(value) is bytes:
            self._packed_bytes += len(value)
            self._live.discard(key)
        else:
            self._live.add(key)

    def __delitem__(self, key: Any) -> None:
        old = dict.pop(self, key)
        if type(old) is bytes:
            self._packed_bytes -= len(old)
        self._live.discard(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401  # self.get is this method

    def pop(self, key: Any, *default: Any) -> Any:
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value

    def values(self):  # unpacked copies, never the stored bytes
        return [_thaw_scores(v) if type(v) is bytes else v for v in dict.values(self)]

    def items(self):  # as values()
        return [(k, _thaw_scores(v) if type(v) is bytes else v) for k, v in dict.items(self)]

    def clear(self) -> None:
        dict.clear(self)
        self._live.clear()
        self._packed_bytes = 0

    def __deepcopy__(self, memo: dict) -> FrameScores:
        twin = FrameScores()
        memo[id(self)] = twin
        dict.update(twin, self)  # packed frames are immutable: shared
        for key in self._live:
            dict.__setitem__(twin, key, copy.deepcopy(dict.__getitem__(self, key), memo))
        twin._live = set(self._live)
        twin._packed_bytes = self._packed_bytes
        return twin

    def __copy__(self) -> FrameScores:
        return self.__deepcopy__({})

    def __reduce__(self):
        return (FrameScores, (self.items(),))

    def pack(self) -> None:
        """Packs every unpacked frame (between steps: nobody holds them for writing)."""
        for key in list(self._live):
            value = dict.__getitem__(self, key)
            if type(value) is dict:
                data = _freeze_scores(value)
                if data is not None:
                    dict.__setitem__(self, key, data)
                    self._packed_bytes += len(data)
                    self._live.discard(key)


# ----- tracker bookkeeping ------------------------------------------------------------------
class TrackedFrames(MutableMapping):
    """A tracker state's `frames_already_tracked`: frame -> `{"reverse": bool}` (TP:867), one
    byte a frame. Read at a clicked or reconditioned frame (TP:254-259, 394-399)."""

    _FORWARD, _REVERSE = 1, 2

    def __init__(self, num_frames: int, items: Mapping[int, Any] | None = None) -> None:
        self._codes = bytearray(num_frames)
        self._other: dict[Any, Any] = {}  # anything not of sam3 0.1.4's shape
        self._count = 0
        for key, value in (items or {}).items():
            self[key] = value

    @property
    def nbytes(self) -> int:
        return len(self._codes) + 200 * len(self._other)

    def _slot(self, key: Any) -> int | None:
        if type(key) in (int, np.int64) and 0 <= key < len(self._codes):
            return int(key)
        return None

    def __getitem__(self, key: Any) -> Any:
        slot = self._slot(key)
        if slot is None:
            return self._other[key]
        code = self._codes[slot]
        if not code:
            raise KeyError(key)
        return {"reverse": code == self._REVERSE}

    def __setitem__(self, key: Any, value: Any) -> None:
        slot = self._slot(key)
        simple = (
            isinstance(value, dict) and set(value) == {"reverse"} and type(value["reverse"]) is bool
        )
        if slot is None or not simple:
            if slot is not None and key in self:
                del self[key]
            self._other[key] = value
            return
        if not self._codes[slot]:
            self._count += 1
        self._codes[slot] = self._REVERSE if value["reverse"] else self._FORWARD

    def __delitem__(self, key: Any) -> None:
        slot = self._slot(key)
        if slot is not None and self._codes[slot]:
            self._codes[slot] = 0
            self._count -= 1
        elif key in self._other:
            del self._other[key]
        else:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        slot = self._slot(key)
        if slot is not None and self._codes[slot]:
            return True
        return key in self._other

    def __iter__(self) -> Iterator[Any]:
        yield from (i for i, code in enumerate(self._codes) if code)
        yield from list(self._other)

    def __len__(self) -> int:
        return self._count + len(self._other)

    def clear(self) -> None:
        self._codes = bytearray(len(self._codes))
        self._other.clear()
        self._count = 0


# ----- per-frame inputs ---------------------------------------------------------------------
class LazyFindInputs(Sequence):
    """`input_batch.find_inputs`: one `FindStage` per frame (VI:124-140), made when read. Every
    frame's stage is identical except `img_ids`; the `text_ids` tensor is shared, so sam3's
    `find_inputs[t].text_ids[...] = text_id` over every frame (VI:96, 871) sets it for all."""

    def __init__(self, template: Any, num_frames: int, device: torch.device) -> None:
        self.template = template
        self.num_frames = num_frames
        self.device = device

    @property
    def nbytes(self) -> int:
        return 0  # the template's tensors are counted by the walk

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.num_frames))]
        index = int(index)
        if index < 0:
            index += self.num_frames
        if not 0 <= index < self.num_frames:
            raise IndexError(index)
        img_ids = torch.tensor([index], dtype=self.template.img_ids.dtype, device=self.device)
        return dataclasses.replace(self.template, img_ids=img_ids)


COMPACT_CONTAINERS = (CompactFrameOutputs, FrameMasks, PackedMask, FrameScores, TrackedFrames)


# ----- the policy ---------------------------------------------------------------------------
# Windows of tracker memories a state keeps (`SessionBounds`, rule 4).
MAX_WINDOWS = 4


def _is_int(key: Any) -> bool:
    return type(key) in (int, np.int64)


@dataclasses.dataclass
class _Gap:
    """Frames [first, last] a later tracker pass may still compute, and in which directions."""

    first: int
    last: int
    forward: bool = True
    reverse: bool = True
    tracker_states: frozenset[int] | None = None  # ids of the states it re-tracks; None: all


class SessionBounds:
    """Keeps one session's sam3 state bounded. Called by the engine between sam3 calls, never
    during one, on the device thread.

    Tier B rules (what a tracker state keeps; everything else is deleted from the batched
    `output_dict` and every per-object dict, TP:114-116, 876-905):

    1. Non-conditioning memories. sam3 selects memories at frame t with `frame_filter`
       (TB:518-558): scanning t-1, t-2, ..., 1 (t+1, ..., N-1 in reverse) it takes the first
       K = min(N, max_obj_ptrs_in_encoder) - 1 frames whose `eff_iou_score` > mf_threshold, plus
       t-1 always; spatial memories and object pointers come only from that list (TB:615-650,
       718-732). A tracker pass only ever starts at a frame without a cached output (the engine
       computes only uncached runs) or continues from the previous frame, so what it can read is
       the window W_F(g) = {g} + the first K valid frames from g down, for every frame g
       followed by a gap, and W_R(g) (upward) for every g preceded by one. Those windows are
       kept, the one at the cursor of a running pass included (it is the end of the run being
       computed), and for a partial propagation (clicks) the windows at its cursor and at the
       start of its backward part. Frames computed later only push older frames out of a
       window, so a deleted memory is never selected again.
    2. Conditioning memories. sam3 attends to the 4 (max_cond_frames_in_attn = M) conditioning
       frames closest to t: the closest before, the closest after, then the nearest others
       (`select_closest_cond_frames`, TU:270-324); the others are read only at t+-1. For a gap
       [u0, u1] that is at most the M-1 nearest below u0 and the M-1 nearest above u1. Those are
       kept, with the state's first prompted frame; when a state has more than M, at least M+1
       are kept, so sam3 takes the same branch and picks the same frames in the same order
       (deleting from a dict keeps the order of the rest). A deleted conditioning frame is also
       removed from `consolidated_frame_inds` and the input dicts, which sam3 asserts agree
       (TP:740-746).
    3. Hot start. A tracker state with two or more objects born at frame b is not pruned while
       the pass that created it is within hotstart_delay frames of b: sam3 may still remove one
       of its objects then (VB:1378-1391), which recomputes every memory's `eff_iou_score`
       (TP:1266-1270) and can make a deleted memory eligible.
    4. At most `max_windows` windows per state (the nearest to the frame last worked on), so
       the bound holds whatever the number of gaps a caller opens.

    What may then differ from keeping everything (and only this):
    - a refine click (points with an existing object_id) on a frame already propagated, and the
      partial propagation after it: sam3 reads that object's memories around the clicked frame
      (TP:292-305, 560-627) and downgrades detector conditioning frames within 16 frames of it
      (VI:1675-1703);
    - removing an object (RemoveObject, or a hot-start removal outside rule 3, e.g. in the
      backward part of a "both" propagation) from a tracker state holding two or more objects:
      sam3 recomputes the remaining memories' scores (TP:1252-1276), which can select a deleted
      memory;
    - a propagation started in a gap whose windows fell outside rule 4.
    """

    def __init__(
        self,
        model: Any,
        num_frames: int,
        *,
        max_windows: int = MAX_WINDOWS,
        spill_dir: str | None = None,
    ) -> None:
        tracker = model.tracker
        self.model = model
        self.spill_dir = spill_dir
        self.num_frames = num_frames
        self.max_windows = max_windows
        self.window = max(0, min(num_frames, int(tracker.max_obj_ptrs_in_encoder)) - 1)
        self.threshold = tracker.mf_threshold
        self.max_cond = int(tracker.max_cond_frames_in_attn)
        self.hotstart_delay = int(model.hotstart_delay)
        # Only the configuration both presets use is understood; anything else is kept whole.
        self.prunable = bool(tracker.use_memory_selection) and (
            int(tracker.memory_temporal_stride_for_eval) == 1
        )
        self.focus = 0
        self.plan: list[_Gap] = []
        self.pruned = 0  # memories deleted so far (tests and benchmarks read it)
        self._validity: dict[int, dict[int, tuple[Any, bool]]] = {}

    # ----- containers ------------------------------------------------------------------------
    def cached_outputs(self) -> CompactFrameOutputs:
        return CompactFrameOutputs(self.num_frames, self.spill_dir)

    def nbytes(self, state: dict) -> int:
        """Host bytes of the compact containers (not tensors: `tensor_nbytes` counts those)."""
        total = 0
        outputs = state.get("cached_frame_outputs")
        if isinstance(outputs, CompactFrameOutputs):
            total += outputs.nbytes
        metadata = state.get("tracker_metadata") or {}
        scores = metadata.get("obj_id_to_tracker_score_frame_wise")
        if isinstance(scores, FrameScores):
            total += scores.nbytes
        for tracker_state in state.get("tracker_inference_states", []):
            tracked = tracker_state.get("frames_already_tracked")
            if isinstance(tracked, TrackedFrames):
                total += tracked.nbytes
        return total

    # ----- after every sam3 call -------------------------------------------------------------
    def tidy(
        self,
        state: dict,
        *,
        cursor: int | None = None,
        reverse: bool = False,
        between_calls: bool = False,
    ) -> None:
        """Compacts what sam3 just wrote and prunes tracker memories. `cursor`: the frame a
        running pass computed last; `between_calls`: no pass is running (end of a part, a
        prompt), so the feature caches' leftovers can go too."""
        if cursor is not None:
            self.focus = cursor
        self._compact_metadata(state)
        for tracker_state in state.get("tracker_inference_states", []):
            self._compact_tracker_state(tracker_state)
        if between_calls:
            self.drop_leftovers(state)
        if self.prunable:
            outputs = state.get("cached_frame_outputs")
            if isinstance(outputs, CompactFrameOutputs):
                self._prune(state, outputs, cursor, reverse)

    def _compact_metadata(self, state: dict) -> None:
        metadata = state.get("tracker_metadata")
        if not metadata:
            return
        scores = metadata.get("obj_id_to_tracker_score_frame_wise")
        if scores is not None and not isinstance(scores, FrameScores):
            scores = FrameScores(dict.items(scores))
            metadata["obj_id_to_tracker_score_frame_wise"] = scores
        if isinstance(scores, FrameScores):
            scores.pack()
        rank0 = metadata.get("rank0_metadata")
        if not rank0:
            return
        suppressed = rank0.get("suppressed_obj_ids")
        if suppressed:
            for frame in [f for f, ids in suppressed.items() if not ids]:
                del suppressed[frame]
        for key, threshold in (
            ("unmatched_frame_inds", self.model.hotstart_unmatch_thresh),
            ("overlap_pair_to_frame_inds", self.model.hotstart_dup_thresh),
        ):
            keep = max(1, int(threshold))
            for frames in (rank0.get(key) or {}).values():
                if len(frames) > keep:
                    del frames[:-keep]

    def _compact_tracker_state(self, tracker_state: dict) -> None:
        tracked = tracker_state.get("frames_already_tracked")
        if tracked is not None and not isinstance(tracked, TrackedFrames):
            tracker_state["frames_already_tracked"] = TrackedFrames(self.num_frames, tracked)
        for inputs in tracker_state.get("mask_inputs_per_obj", {}).values():
            for frame in inputs:
                inputs[frame] = None

    @staticmethod
    def drop_leftovers(state: dict) -> None:
        """Frames' backbone features and detector outputs left in the caches by the last pass.
        Every reader computes a frame's entry before reading it (VB:384-396, IM:728-745), except
        the detector's prefetched next frame, which was computed with the geometric prompt of
        the frame before it (IM:777-787): around a box-prompted frame those are kept."""
        cache = state.get("feature_cache")
        if not cache:
            return
        for key in [k for k in cache if _is_int(k)]:
            del cache[key]
        buffer = cache.get("multigpu_buffer")
        if buffer:
            prompted = [
                i
                for i, prompt in enumerate(state.get("per_frame_geometric_prompt") or [])
                if prompt is not None
            ]
            keep = {p + d for p in prompted for d in (-1, 0, 1)}
            for key in [k for k in buffer if k not in keep]:
                del buffer[key]

    # ----- tier B ----------------------------------------------------------------------------
    def _valid(self, tracker_state: dict, frame: int, entry: dict) -> bool:
        """`frame_filter`'s test (TB:541-550), cached per memory until its score changes."""
        score = entry.get("eff_iou_score")
        if score is None:
            return False
        cache = self._validity.setdefault(id(tracker_state), {})
        known = cache.get(frame)
        if known is not None and known[0] is score:
            return known[1]
        valid = bool(score > self.threshold)
        cache[frame] = (score, valid)
        return valid

    def _window(self, tracker_state: dict, frames: list[int], g: int, reverse: bool) -> set[int]:
        """{g} and the first K valid memories scanning from g away from the direction of
        travel; `frames` are the state's non-conditioning frames, ascending."""
        keep = {g}
        entries = tracker_state["output_dict"]["non_cond_frame_outputs"]
        if reverse:
            scan: Iterable[int] = frames[bisect.bisect_left(frames, g) :]
        else:
            scan = reversed(frames[bisect.bisect_left(frames, 1) : bisect.bisect_right(frames, g)])
        found = 0
        for frame in scan:
            if found >= self.window:
                break
            if self._valid(tracker_state, frame, entries[frame]):
                keep.add(frame)
                found += 1
        return keep

    def _cond_near(self, cond: list[int], gap: _Gap) -> set[int]:
        below = cond[: bisect.bisect_left(cond, gap.first)]
        above = cond[bisect.bisect_right(cond, gap.last) :]
        inside = cond[len(below) : len(cond) - len(above)]
        n = max(1, self.max_cond - 1)
        return {*below[-n:], *above[:n], *inside}

    def _gaps(self, outputs: CompactFrameOutputs) -> list[_Gap]:
        gaps = [_Gap(a, b) for a, b in outputs.gaps()]
        return [*gaps, *self.plan]

    def _young(self, tracker_state: dict, cursor: int | None, reverse: bool) -> bool:
        if cursor is None or len(tracker_state.get("obj_ids", ())) < 2:
            return False
        born = tracker_state.get("first_ann_frame_idx")
        if born is None:
            return False
        age = born - cursor if reverse else cursor - born
        return 0 <= age < self.hotstart_delay

    def _prune(
        self, state: dict, outputs: CompactFrameOutputs, cursor: int | None, reverse: bool
    ) -> None:
        gaps = self._gaps(outputs)
        states = state.get("tracker_inference_states", [])
        alive = {id(s) for s in states}
        for key in [k for k in self._validity if k not in alive]:
            del self._validity[key]
        for tracker_state in states:
            if self._young(tracker_state, cursor, reverse):
                continue
            self._prune_state(tracker_state, gaps)

    def _prune_state(self, tracker_state: dict, gaps: list[_Gap]) -> None:
        output_dict = tracker_state["output_dict"]
        non_cond = output_dict["non_cond_frame_outputs"]
        cond = output_dict["cond_frame_outputs"]
        frames = sorted(non_cond)
        # Windows by the distance of their frame from the focus; ties: forward first.
        candidates: list[tuple[int, int, bool, _Gap]] = []
        for gap in gaps:
            if gap.tracker_states is not None and id(tracker_state) not in gap.tracker_states:
                continue
            if gap.forward and gap.first >= 1:
                candidates.append((abs(gap.first - 1 - self.focus), gap.first - 1, False, gap))
            if gap.reverse and gap.last <= self.num_frames - 2:
                candidates.append((abs(gap.last + 1 - self.focus), gap.last + 1, True, gap))
        candidates.sort(key=lambda c: (c[0], c[1], c[2]))
        keep: set[int] = set()
        cond_frames = sorted(cond)
        keep_cond: set[int] = set()
        born = tracker_state.get("first_ann_frame_idx")
        if born is not None and born in cond:
            keep_cond.add(int(born))
        for _, g, backward, gap in candidates[: self.max_windows]:
            keep |= self._window(tracker_state, frames, g, backward)
            keep_cond |= self._cond_near(cond_frames, gap)
        dropped = [f for f in frames if f not in keep]
        if len(cond) <= self.max_cond:
            keep_cond = set(cond)
        elif len(keep_cond) <= self.max_cond:
            # Keep sam3 on the "more than M" branch of select_closest_cond_frames (TU:289).
            spare = sorted(
                (f for f in cond if f not in keep_cond), key=lambda f: (abs(f - self.focus), f)
            )
            keep_cond.update(spare[: self.max_cond + 1 - len(keep_cond)])
        dropped_cond = [f for f in cond if f not in keep_cond]
        if not dropped and not dropped_cond:
            return
        per_object = tracker_state.get("output_dict_per_obj", {}).values()
        for frame in dropped:
            del non_cond[frame]
            for outputs in per_object:
                outputs["non_cond_frame_outputs"].pop(frame, None)
        for frame in dropped_cond:
            del cond[frame]
            for outputs in per_object:
                outputs["cond_frame_outputs"].pop(frame, None)
            tracker_state["consolidated_frame_inds"]["cond_frame_outputs"].discard(frame)
            for inputs in (
                *tracker_state.get("point_inputs_per_obj", {}).values(),
                *tracker_state.get("mask_inputs_per_obj", {}).values(),
            ):
                inputs.pop(frame, None)
        validity = self._validity.get(id(tracker_state))
        if validity:
            for frame in dropped:
                validity.pop(frame, None)
        self.pruned += len(dropped) + len(dropped_cond)
        # Per-object dicts may hold frames the batched one no longer has (TP:1301-1318).
        for outputs in per_object:
            extra = [f for f in outputs["non_cond_frame_outputs"] if f not in non_cond]
            for frame in extra:
                del outputs["non_cond_frame_outputs"][frame]

    # ----- the plan of the running propagation -----------------------------------------------
    def plan_partial(
        self, frames: Sequence[int], reverse: bool, tracker_states: Iterable[dict]
    ) -> None:
        """A partial propagation (sam3 re-tracks clicked objects over frames that already have
        outputs): the frames it will visit are gaps for those states."""
        if not frames:
            return
        ids = frozenset(id(s) for s in tracker_states)
        self.plan.append(
            _Gap(
                min(frames),
                max(frames),
                forward=not reverse,
                reverse=reverse,
                tracker_states=ids,
            )
        )

    def advance_plan(self, frame: int, reverse: bool) -> None:
        """The partial pass reached `frame`: the rest of its gap starts after it."""
        for gap in self.plan:
            if reverse and gap.reverse and gap.first <= frame <= gap.last:
                gap.last = frame - 1
            elif not reverse and gap.forward and gap.first <= frame <= gap.last:
                gap.first = frame + 1
        self.plan = [g for g in self.plan if g.first <= g.last]

    def clear_plan(self) -> None:
        self.plan = []


def tracked_memories(state: dict) -> int:
    """Memories (non-conditioning and conditioning entries) a session's tracker states hold
    now, bounded or not (tests and benchmarks compare the two)."""
    return sum(
        len(s["output_dict"]["non_cond_frame_outputs"])
        + len(s["output_dict"]["cond_frame_outputs"])
        for s in state.get("tracker_inference_states", [])
    )


# ----- the bound -----------------------------------------------------------------------------
# sam3's per-frame lists (VI:146-152), one slot a frame; only the prompted frame's slot holds
# anything but None (a box prompt's tensors).
PER_FRAME_LISTS = (
    "previous_stages_out",
    "per_frame_raw_point_input",
    "per_frame_raw_box_input",
    "per_frame_visual_prompt",
    "per_frame_geometric_prompt",
    "per_frame_cur_step",
)
PER_FRAME_SLOT_BYTES = 8 * (len(PER_FRAME_LISTS) + 2)  # + find_targets, find_metadatas
FRAMES_IN_FLIGHT = 3
# Host bytes per object and frame that stay with a session for its whole life: its mask's record
# (the encoded mask itself when it is at most INLINE_MASK_BYTES, else it is on disk), its
# tracker score (packed) and its tracker state's one byte in `TrackedFrames`.
RESULT_BYTES_PER_OBJECT_FRAME = _MASK_OVERHEAD + INLINE_MASK_BYTES + _SCORE_ROW.itemsize + 1
# Host bytes per frame whatever the objects: the frame's entries in the results and score maps
# and its slots in sam3's per-frame lists.
FRAME_BYTES = _FRAME_OVERHEAD + 120 + PER_FRAME_SLOT_BYTES


@dataclasses.dataclass(frozen=True)
class StateFootprint:
    """An upper bound on what one video session of a model holds, whatever the video's length,
    with `SessionBounds` keeping it (the engine's session budget; `tests/engines/
    test_bounded_state.py` holds sessions to it).

    Per session: the frames in flight (`frames_in_flight_bytes`). Per tracked object: every
    tracker memory a state may keep (rules 1-4 of `SessionBounds`: `MAX_WINDOWS` windows of
    max_obj_ptrs_in_encoder frames, the first prompted frame, 2(M-1) conditioning frames per
    window, the hot-start frames of a young state, the frame being computed), each a
    64-channel memory feature map at 1/14 of the resolution, the 1/4
    low-resolution mask logits (float32) and the 256-d object pointer; plus
    `RESULT_BYTES_PER_OBJECT_FRAME` per frame; and `FRAME_BYTES` per frame.
    """

    resolution: int
    feature_bytes: int = 2  # sam3 stores memory features in bfloat16 (float32 on a CPU without)
    max_obj_ptrs: int = 16  # Meta's tracker configuration (sam3/model_builder.py)
    max_cond_frames: int = 4
    hotstart_delay: int = 15
    queries: int = 200  # the detector's object queries

    @classmethod
    def of(cls, model: Any, feature_bytes: int) -> StateFootprint:
        tracker = model.tracker
        return cls(
            resolution=int(model.image_size),
            feature_bytes=feature_bytes,
            max_obj_ptrs=int(tracker.max_obj_ptrs_in_encoder),
            max_cond_frames=int(tracker.max_cond_frames_in_attn),
            hotstart_delay=int(model.hotstart_delay),
            queries=int(model.detector.transformer.decoder.num_queries),
        )

    @property
    def memories_per_object(self) -> int:
        windows = MAX_WINDOWS * self.max_obj_ptrs
        conditioning = 1 + MAX_WINDOWS * 2 * max(1, self.max_cond_frames - 1)
        return windows + conditioning + self.hotstart_delay + 1

    @property
    def side(self) -> int:
        """The backbone's feature map side (one cell per patch)."""
        return max(1, self.resolution // PATCH_SIZE)

    @property
    def memory_bytes(self) -> int:
        """One tracker memory of one object."""
        side = self.side
        features = 64 * side * side * self.feature_bytes
        low_res_mask = (4 * side) ** 2 * 4
        pointer = 256 * 4
        return features + low_res_mask + pointer + 64  # + score logits, IoU scores

    def frames_in_flight_bytes(self) -> int:
        """What sam3 caches for the frames it is working on (`feature_cache`): per frame the
        detector's outputs (its query masks, the tracker's feature pyramid and positional
        encodings, `multigpu_buffer`) and the tracker's backbone outputs with the frame's
        image; for `FRAMES_IN_FLIGHT` frames (the current one, the detector's prefetched next
        one and the last of the previous part, dropped when the part ends). float32."""
        side = self.side
        levels = sum((n * side) ** 2 for n in (4, 2, 1))  # the pyramid's cells, 4x, 2x, 1x
        detector = 2 * 256 * 4 * levels + self.queries * (4 * side) ** 2 * 4
        tracker = 256 * 4 * (levels + side * side) + 4 * (32 * 16 + 64 * 4 + 256) * side * side
        image = 3 * self.resolution**2 * 2
        return FRAMES_IN_FLIGHT * (detector + tracker + image)

    def device_bytes(self, objects: int) -> int:
        """Tensors, on the model's device: the same whatever the video's length."""
        positional = 64 * self.side**2 * 4  # the memories' shared positional encoding
        memories = objects * self.memories_per_object * self.memory_bytes
        return self.frames_in_flight_bytes() + positional + memories

    def host_bytes(self, frames: int, objects: int) -> int:
        """Compact per-frame results on the host: grows by a few hundred bytes a frame."""
        return frames * (FRAME_BYTES + objects * RESULT_BYTES_PER_OBJECT_FRAME)
