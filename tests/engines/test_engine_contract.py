"""The engine contract (engines/base.py), checked against every engine: synthetic and the SAM 3
code through its tiny preset.

What the contract promises is checked on shapes, types, ids, orders and error reasons, never on
what the tiny preset's random weights segment (its masks are meaningless); the synthetic
engine's pixel accuracy is tested in test_synthetic_engine.py and the servers' end to end."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import RED, blank, disc_clip, draw_rect, write_video

from sam3_grpc.domain import Box, Direction, LabeledBox, LabeledPoint, Prompt, VideoInfo
from sam3_grpc.engines.base import Engine, propagation_plan
from sam3_grpc.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    ServiceError,
)
from sam3_grpc.media.frames import FrameWindow, open_frames, open_window

FRAMES = 6
WIDTH, HEIGHT = 96, 72


@pytest.fixture(
    scope="module",
    params=[
        "synthetic",
        pytest.param("sam3-tiny", marks=pytest.mark.sam3),
    ],
)
def engine(request) -> Engine:
    if request.param == "synthetic":
        from sam3_grpc.engines.synthetic import SyntheticEngine

        built: Engine = SyntheticEngine()
    else:
        from sam3_grpc.engines.sam3 import Sam3Engine

        built = Sam3Engine(preset="sam3-tiny", device="cpu")
    built.load()
    built.warmup()
    return built


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> str:
    images, _ = disc_clip(frames=FRAMES, width=WIDTH, height=HEIGHT, radius=10, step=4)
    return write_video(tmp_path_factory.mktemp("contract") / "clip.avi", images)


def image() -> np.ndarray:
    picture = blank(WIDTH, HEIGHT)
    draw_rect(picture, 20, 15, 60, 50, RED)
    return picture


def start(engine: Engine, path: str):
    return engine.start_session(open_window(path, engine.frame_preparer(), capacity=4))


def reason(error: ServiceError) -> Reason:
    return error.reason


# ----- identity and resources --------------------------------------------------------------
def test_info_memory_and_budget(engine, clip_path):
    info = engine.info
    assert info.name and info.device and info.kind
    memory = engine.memory()
    assert memory.used_bytes >= 0 and memory.total_bytes >= 0
    video = VideoInfo(frame_count=20_000, fps=30.0, width=640, height=360)
    small = engine.session_budget(video, window_frames=4)
    large = engine.session_budget(video, window_frames=16)
    short = engine.session_budget(VideoInfo(20, 30.0, 640, 360), window_frames=16)

    def total(budget) -> int:
        return budget.host_bytes + budget.device_bytes

    assert total(small) > 0
    assert total(large) > total(small)  # the frame window is part of it
    # Model state is bounded whatever the video's length; only the compact per-frame results
    # (RLE masks on the host, at most a few KiB per object and frame) grow with it.
    per_frame = (total(large) - total(short)) / (20_000 - 20)
    assert 0 <= per_frame <= engine.max_objects * 8 * 1024


# ----- images -------------------------------------------------------------------------------
def check_detections(detections, height=HEIGHT, width=WIDTH):
    scores = [d.score for d in detections]
    assert scores == sorted(scores, reverse=True)
    assert [d.object_id for d in detections] == list(range(1, len(detections) + 1))
    for detection in detections:
        assert detection.mask.dtype == np.bool_ and detection.mask.shape == (height, width)
        assert 0.0 <= detection.score <= 1.0


def test_image_prompts_give_one_list_each_in_order(engine):
    state = engine.encode_image(image())
    assert engine.state_nbytes(state) >= 0
    prompts = [
        Prompt(text="red"),
        Prompt(points=(LabeledPoint(40, 30),)),
        Prompt(boxes=(LabeledBox(Box(18, 13, 62, 52)),)),
        Prompt(points=(LabeledPoint(40, 30), LabeledPoint(5, 5, positive=False))),
        Prompt(points=(LabeledPoint(40, 30),), boxes=(LabeledBox(Box(18, 13, 62, 52)),)),
    ]
    results = engine.predict(state, prompts)
    assert len(results) == len(prompts)
    for detections in results:
        check_detections(detections)
    # Clicks always answer: one object, the engine's best mask, whatever its score.
    for clicks in (results[1], results[3], results[4]):
        assert len(clicks) == 1


ODD_PROMPTS = {
    "text and points": Prompt(text="red", points=(LabeledPoint(40, 30),)),
    "points and two boxes": Prompt(
        points=(LabeledPoint(40, 30),),
        boxes=(LabeledBox(Box(18, 13, 62, 52)), LabeledBox(Box(0, 0, 10, 10))),
    ),
    "points and a negative box": Prompt(
        points=(LabeledPoint(40, 30),), boxes=(LabeledBox(Box(18, 13, 62, 52), positive=False),)
    ),
    "only negative points": Prompt(points=(LabeledPoint(40, 30, positive=False),)),
    "only a negative box": Prompt(boxes=(LabeledBox(Box(18, 13, 62, 52), positive=False),)),
}


@pytest.mark.parametrize("name", ODD_PROMPTS)
def test_an_unusual_prompt_is_served_or_refused_as_unsupported(engine, name):
    """Every prompt combination either answers in the contract's shape or is refused with
    INVALID_ARGUMENT / UNSUPPORTED_PROMPT naming what is supported; never another error."""
    state = engine.encode_image(image())
    refusal: InvalidArgument | None = None
    try:
        [detections] = engine.predict(state, [ODD_PROMPTS[name]])
    except InvalidArgument as error:
        refusal = error
    if refusal is None:
        check_detections(detections)
    else:
        assert reason(refusal) is Reason.UNSUPPORTED_PROMPT, refusal
        assert "support" in refusal.message


# ----- video --------------------------------------------------------------------------------
def test_a_session_from_start_to_close(engine, clip_path):
    session = start(engine, clip_path)
    budget = engine.session_budget(
        open_frames_info(clip_path), window_frames=4
    )  # what the server reserves
    assert engine.object_ids(session) == [] and engine.prompted_frames(session) == []

    output, created = engine.add_prompt(session, 0, Prompt(points=(LabeledPoint(20, 36),)), None)
    assert len(created) == 1 and created[0] > 0
    first = created[0]
    assert output.frame_index == 0
    assert first in engine.object_ids(session)  # on the frame too, unless its mask is empty
    for detection in output.objects:
        assert detection.mask.shape == (HEIGHT, WIDTH) and detection.mask.dtype == np.bool_

    # A refinement keeps the id; a second click prompt creates another object.
    _, refined = engine.add_prompt(
        session, 0, Prompt(points=(LabeledPoint(60, 10, positive=False),)), first
    )
    assert refined == [first]
    _, [second] = engine.add_prompt(session, 2, Prompt(points=(LabeledPoint(70, 50),)), None)
    assert second > 0 and second != first
    assert engine.object_ids(session) == sorted({first, second})
    assert engine.prompted_frames(session) == [0, 2]

    # Exactly one output per planned frame, forward part first.
    forward, backward = propagation_plan(FRAMES, Direction.BOTH, 2)
    outputs = list(engine.propagate(session, forward, backward))
    assert [o.frame_index for o in outputs] == [*forward, *backward]
    for output in outputs:
        ids = [d.object_id for d in output.objects]
        assert len(ids) == len(set(ids)) and set(ids) <= {first, second}
        for detection in output.objects:
            assert detection.mask.shape == (HEIGHT, WIDTH)
            assert 0.0 <= detection.score <= 1.0
    held = engine.session_nbytes(session)
    assert 0 <= held <= budget.host_bytes + budget.device_bytes

    engine.remove_object(session, second)
    assert engine.object_ids(session) == [first]
    engine.reset_session(session)
    assert engine.object_ids(session) == [] and engine.prompted_frames(session) == []
    engine.close_session(session)


def open_frames_info(path: str) -> VideoInfo:
    from sam3_grpc.media.frames import FrameLimits

    source = open_frames(path, FrameLimits(max_frames=1000, max_pixels=10**6))
    try:
        return source.info
    finally:
        source.close()


def test_errors_carry_the_contract_reasons(engine, clip_path):
    session = start(engine, clip_path)
    try:
        _, [oid] = engine.add_prompt(session, 0, Prompt(points=(LabeledPoint(20, 36),)), None)
        cases = {
            "object_id with text": (Prompt(text="red"), oid, 0, Reason.UNSUPPORTED_PROMPT),
            "unknown object": (
                Prompt(points=(LabeledPoint(20, 36),)),
                oid + 100,
                0,
                Reason.UNKNOWN_OBJECT,
            ),
            "frame past the end": (
                Prompt(points=(LabeledPoint(20, 36),)),
                None,
                FRAMES,
                Reason.FRAME_OUT_OF_RANGE,
            ),
        }
        for name, (prompt, object_id, frame, expected) in cases.items():
            with pytest.raises(InvalidArgument) as caught:
                engine.add_prompt(session, frame, prompt, object_id)
            assert reason(caught.value) is expected, (name, caught.value)
        with pytest.raises(InvalidArgument) as caught:
            engine.remove_object(session, oid + 100)
        assert reason(caught.value) is Reason.UNKNOWN_OBJECT
    finally:
        engine.close_session(session)
    # A closed session refuses everything.
    with pytest.raises((FailedPrecondition, NotFound)):
        engine.add_prompt(session, 0, Prompt(points=(LabeledPoint(20, 36),)), None)


def test_closing_a_propagation_early_then_resuming(engine, clip_path):
    session = start(engine, clip_path)
    try:
        engine.add_prompt(session, 0, Prompt(points=(LabeledPoint(20, 36),)), None)
        stream = engine.propagate(session, *propagation_plan(FRAMES, Direction.FORWARD, 0))
        seen = [next(stream).frame_index for _ in range(3)]
        stream.close()
        assert seen == [0, 1, 2]
        # Usable afterwards, and a propagation from a later frame plans only those frames.
        resumed = list(engine.propagate(session, *propagation_plan(FRAMES, Direction.FORWARD, 3)))
        assert [o.frame_index for o in resumed] == list(range(3, FRAMES))
        assert engine.object_ids(session)
    finally:
        engine.close_session(session)


def test_a_window_larger_than_the_video_or_tiny_both_work(engine, clip_path):
    for capacity in (2, 64):
        window: FrameWindow = open_window(clip_path, engine.frame_preparer(), capacity=capacity)
        session = engine.start_session(window)
        try:
            engine.add_prompt(session, 0, Prompt(points=(LabeledPoint(20, 36),)), None)
            outputs = list(
                engine.propagate(session, *propagation_plan(FRAMES, Direction.FORWARD, 0))
            )
            assert len(outputs) == FRAMES
        finally:
            engine.close_session(session)


def test_object_limit_is_resource_exhausted_when_an_engine_has_one(engine, clip_path):
    limit = engine.max_objects
    assert limit > 0
    if limit > 128:
        pytest.skip("this engine's object limit is beyond what a unit test should create")
    session = start(engine, clip_path)
    try:
        for i in range(limit):
            point = LabeledPoint(float(i % WIDTH), float((i * 7) % HEIGHT))
            engine.add_prompt(session, 0, Prompt(points=(point,)), None)
        with pytest.raises(ResourceExhausted) as caught:
            engine.add_prompt(session, 0, Prompt(points=(LabeledPoint(1, 1),)), None)
        assert reason(caught.value) is Reason.OBJECT_LIMIT
    finally:
        engine.close_session(session)


@pytest.mark.parametrize("model", ["synthetic", "sam3-tiny", "sam3"])
def test_max_objects_sets_the_limit_and_what_a_session_reserves(model):
    """`--max-objects`: the engine's object limit, and the session budget computed at it (not
    loaded: the limit and the budget are known before the model is)."""
    from sam3_grpc.config import Settings
    from sam3_grpc.engines import create_engine

    video = VideoInfo(1000, 30.0, 640, 360)
    default = create_engine(Settings(model=model))
    two = create_engine(Settings(model=model, max_objects=2))
    assert default.max_objects > two.max_objects == 2
    small, large = two.session_budget(video, 16), default.session_budget(video, 16)
    assert small.host_bytes + small.device_bytes < large.host_bytes + large.device_bytes
