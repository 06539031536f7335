"""The SAM 3 engine's bounded session state (`engines/sam3/state.py`) against keeping everything.

Two engines on identical tiny-preset weights: one keeps every tracker memory, mask and score sam3
keeps (`bounded_state=False`, the oracle), the other the bounded state the server runs. Each
scenario runs on both and must give the same object ids, pixel-identical masks and scores within
1e-6, while the bounded one deletes memories and holds, at every step, no more than the session
budget the server reserves for it (`StateFootprint`).

The tiny preset's random tracker scores every frame 0, below Meta's memory-frame threshold, so
by default no frame would ever be selected as a memory and pruning could not matter. These
engines set `mf_threshold=-1` (every frame eligible): sam3 then reads the full window of
max_obj_ptrs_in_encoder memories and conditioning frames on every step, so deleting a frame sam3
still reads would change the masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import pytest
import torch

from sam3_grpc.domain import FrameOutput, LabeledPoint, Prompt
from sam3_grpc.engines.sam3 import Sam3Engine
from sam3_grpc.engines.sam3.builder import TINY
from sam3_grpc.engines.sam3.state import (
    INLINE_MASK_BYTES,
    CompactFrameOutputs,
    StateFootprint,
    tracked_memories,
)
from sam3_grpc.media.frames import open_window

pytestmark = pytest.mark.sam3

FRAMES = 64
HEIGHT, WIDTH = 120, 160
MIDDLE = FRAMES // 2
TEXT = "a thing"


def clip_frame(i: int) -> np.ndarray:
    """A red square sweeping right and back, and a blue disc bobbing (BGR, for cv2)."""
    frame = np.full((HEIGHT, WIDTH, 3), 25, np.uint8)
    x = 10 + abs((3 * i) % 160 - 80)
    cv2.rectangle(frame, (x, 30), (x + 40, 75), (30, 30, 220), -1)
    cv2.circle(frame, (125, 60 + (i % 20) - 10), 14, (220, 60, 30), -1)
    return frame


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("long")
    for i in range(FRAMES):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), clip_frame(i))
    return str(folder)


def tiny_engine(bounded: bool) -> Sam3Engine:
    # Two objects at most: two tracker states, half the time of the preset's four.
    spec = dataclasses.replace(TINY, mf_threshold=-1.0, max_num_objects=2)
    engine = Sam3Engine(preset="sam3-tiny", device="cpu", tiny_spec=spec, bounded_state=bounded)
    engine.load()
    record_tracker_steps(engine)
    return engine


def record_tracker_steps(engine: Sam3Engine) -> None:
    """Records what the tracker computes on every frame step (low-resolution mask logits and
    object pointers, per object): they depend on every memory sam3 reads, so a memory deleted
    while still read changes them, even where the random weights' masks come out empty."""
    tracker = engine._model.tracker
    step = tracker._run_single_frame_inference
    engine.tracker_steps = []  # type: ignore[attr-defined]

    def recorded(inference_state, output_dict, frame_idx, *args, **kwargs):
        out, pred_masks = step(inference_state, output_dict, frame_idx, *args, **kwargs)
        engine.tracker_steps.append(  # type: ignore[attr-defined]
            (
                int(frame_idx),
                pred_masks.detach().float().cpu().numpy().copy(),
                out["obj_ptr"].detach().float().cpu().numpy().copy(),
            )
        )
        return out, pred_masks

    tracker._run_single_frame_inference = recorded


@pytest.fixture(scope="module")
def bounded() -> Sam3Engine:
    return tiny_engine(True)


@pytest.fixture(scope="module")
def reference() -> Sam3Engine:
    return tiny_engine(False)


@dataclasses.dataclass
class Run:
    outputs: list[FrameOutput]
    steps: list[tuple[int, np.ndarray, np.ndarray]]  # tracker steps: frame, mask logits, pointers
    peak_memories: int  # tracker memories held after a step, at most
    peak_objects: int
    pruned: int  # memories the bounded state deleted
    held_bytes: int  # session_nbytes at the end


Scenario = Callable[
    [Sam3Engine, object, Callable[[Iterator[FrameOutput]], Iterator[FrameOutput]]], list
]


def run(engine: Sam3Engine, clip: str, scenario) -> Run:
    engine.tracker_steps.clear()  # type: ignore[attr-defined]
    window = open_window(clip, engine.frame_preparer(), capacity=8)
    budget = engine.session_budget(window.info, window_frames=8)  # what the server reserves
    session = engine.start_session(window)
    peak = {"memories": 0, "objects": 0}

    def watched(outputs: Iterator[FrameOutput]) -> Iterator[FrameOutput]:
        for output in outputs:
            peak["memories"] = max(peak["memories"], tracked_memories(session.state))
            peak["objects"] = max(peak["objects"], len(engine.object_ids(session)))
            if session.bounds is not None:  # held at every step: within the reservation
                held = engine.session_nbytes(session)
                assert held <= budget.host_bytes + budget.device_bytes, output.frame_index
            yield output

    try:
        outputs = scenario(engine, session, watched)
        pruned = session.bounds.pruned if session.bounds is not None else 0
        steps = list(engine.tracker_steps)  # type: ignore[attr-defined]
        held = engine.session_nbytes(session)
        return Run(outputs, steps, peak["memories"], peak["objects"], pruned, held)
    finally:
        engine.close_session(session)


def clicks_then_both_ways(engine, session, watched) -> list[FrameOutput]:
    first, _ = engine.add_prompt(session, MIDDLE, Prompt(points=(LabeledPoint(40, 50),)), None)
    second, _ = engine.add_prompt(session, MIDDLE, Prompt(points=(LabeledPoint(125, 60),)), None)
    forward, backward = list(range(MIDDLE, FRAMES)), list(range(MIDDLE - 1, -1, -1))
    return [first, second, *watched(engine.propagate(session, forward, backward))]


def cancel_then_resume(engine, session, watched) -> list[FrameOutput]:
    """Text prompt on frame 0, then forward: one sam3 run to frame 21, cancelled, and another
    from frame 22 to the end (the issue's "text then forward" scenario, with a cancel in it)."""
    outputs = [engine.add_prompt(session, 0, Prompt(text=TEXT), None)[0]]
    stop = FRAMES // 3
    stream = engine.propagate(session, list(range(FRAMES)), [])
    for output in watched(stream):
        outputs.append(output)
        if output.frame_index == stop:
            break
    stream.close()  # the caller left: the server closes the generator
    outputs += watched(engine.propagate(session, list(range(stop + 1, FRAMES)), []))
    return outputs


def assert_same(got: list[FrameOutput], want: list[FrameOutput]) -> None:
    """Same frames, ids, masks and scores."""
    assert [o.frame_index for o in got] == [o.frame_index for o in want]
    for mine, theirs in zip(got, want, strict=True):
        assert [d.object_id for d in mine.objects] == [d.object_id for d in theirs.objects], (
            f"frame {mine.frame_index}"
        )
        for a, b in zip(mine.objects, theirs.objects, strict=True):
            assert np.array_equal(a.mask, b.mask), f"frame {mine.frame_index} object {a.object_id}"
            assert a.score == pytest.approx(b.score, abs=1e-6)


@pytest.mark.parametrize(
    "scenario",
    [clicks_then_both_ways, cancel_then_resume],
    ids=lambda f: f.__name__,
)
def test_bounded_state_gives_what_keeping_everything_gives(bounded, reference, clip, scenario):
    want = run(reference, clip, scenario)
    got = run(bounded, clip, scenario)

    assert_same(got.outputs, want.outputs)
    # Every tracker step alike, bit for bit: the same frames in the same order, the same logits.
    assert [s[0] for s in got.steps] == [s[0] for s in want.steps]
    assert len(want.steps) >= FRAMES  # objects were tracked: the comparison means something
    for (frame, masks, pointers), (_, want_masks, want_pointers) in zip(
        got.steps, want.steps, strict=True
    ):
        assert np.array_equal(masks, want_masks), f"tracker mask logits differ on frame {frame}"
        assert np.array_equal(pointers, want_pointers), f"object pointers differ on frame {frame}"
    assert got.peak_objects == want.peak_objects >= 1

    # The oracle keeps a memory per frame per tracker state; the bounded state deleted most of
    # them and never held more than its footprint allows.
    assert want.peak_memories >= FRAMES
    assert got.pruned > 0
    footprint = bounded.state_footprint()
    assert got.peak_memories <= footprint.memories_per_object * got.peak_objects
    assert got.peak_memories < want.peak_memories
    assert got.held_bytes < want.held_bytes


def test_results_are_compact_and_spill_to_disk_losslessly():
    """Masks sam3 caches for replay: tiny ones in memory, the rest in the session's spill file,
    read back bit for bit, in the same dtype and shape."""
    rng = np.random.default_rng(7)
    outputs = CompactFrameOutputs(num_frames=3)
    noise = torch.from_numpy(rng.random((1, 90, 70)) > 0.5)  # incompressible: packbits
    blob = torch.zeros((1, 90, 70), dtype=torch.bool)
    blob[0, 20:60, 10:50] = True  # RLE
    empty = torch.zeros((1, 90, 70), dtype=torch.bool)  # a few bytes: inline
    outputs[0] = {1: noise, 2: blob, 3: empty}
    outputs[2] = {1: blob}
    assert outputs.spilled_bytes > 0
    # Memory held: the records, the inline masks, never the spilled bytes.
    assert outputs.nbytes < 2 * 4 * (200 + INLINE_MASK_BYTES) + 1000
    for frame, masks in ((0, {1: noise, 2: blob, 3: empty}), (2, {1: blob})):
        stored = outputs[frame]
        assert list(stored.keys()) == list(masks)
        for key, tensor in masks.items():
            back = stored[key]
            assert back.dtype == torch.bool and back.shape == tensor.shape
            assert torch.equal(back, tensor)
    assert outputs.gaps() == [(1, 1)]
    del outputs[0][2]  # sam3 deletes a removed object's masks in place
    assert list(outputs[0].keys()) == [1, 3]
    outputs.close()
    assert len(outputs) == 0


def test_the_real_models_footprint_does_not_grow_with_the_video():
    real = StateFootprint(resolution=1008, feature_bytes=2)
    assert real.device_bytes(32) == StateFootprint(1008, 2).device_bytes(32)
    # Device: independent of the length by construction; host: a few hundred bytes a frame.
    per_frame = (real.host_bytes(20_000, 32) - real.host_bytes(300, 32)) / (20_000 - 300)
    assert per_frame < 32 * 400
    assert 50 * 2**20 < real.memories_per_object * real.memory_bytes < 150 * 2**20
