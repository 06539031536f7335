"""The synthetic engine, in-process: colour segmentation on images and tracking through videos."""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np
import pytest

import sam3_grpc.engines.synthetic.engine as synthetic_engine
from sam3_grpc.domain import (
    Box,
    Direction,
    LabeledBox,
    LabeledPoint,
    ModelKind,
    Prompt,
)
from sam3_grpc.engines.base import propagation_plan
from sam3_grpc.engines.synthetic import COLOURS, SyntheticEngine
from sam3_grpc.errors import FailedPrecondition, InvalidArgument
from sam3_grpc.media.frames import open_window

H, W = 240, 320


# ----- helpers -------------------------------------------------------------------------------
def disc(center, radius, shape=(H, W)) -> np.ndarray:
    """The exact pixels cv2 fills for a disc drawn without anti-aliasing."""
    mask = np.zeros(shape, np.uint8)
    cv2.circle(mask, center, radius, 1, -1, cv2.LINE_8)
    return mask.astype(bool)


def rect(x0, y0, x1, y1, shape=(H, W)) -> np.ndarray:
    """Pixels of cv2.rectangle((x0, y0), (x1, y1)) filled: both corners inclusive."""
    mask = np.zeros(shape, bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def canvas(background="black") -> np.ndarray:
    return np.full((H, W, 3), COLOURS[background], np.uint8)


def paint(image: np.ndarray, mask: np.ndarray, colour: str) -> np.ndarray:
    image[mask] = COLOURS[colour]
    return image


def png(rgb: np.ndarray) -> np.ndarray:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def jpeg(rgb: np.ndarray, quality=90) -> np.ndarray:
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


def tight_box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


@pytest.fixture
def engine() -> SyntheticEngine:
    e = SyntheticEngine()
    e.load()
    return e


def segment(engine, image, *prompts):
    return engine.predict(engine.encode_image(image), list(prompts))


# ----- images --------------------------------------------------------------------------------
def test_info_and_warmup(engine):
    assert engine.info.name == "synthetic"
    assert engine.info.kind is ModelKind.SYNTHETIC
    assert engine.info.device == "cpu"
    assert engine.info.weights_source == "none"
    assert engine.info.default_score_threshold == 0.5
    engine.warmup()
    assert engine.calls["predict"] == 1


def test_text_prompt_returns_every_region_pixel_exact_on_png(engine):
    big = rect(20, 30, 99, 89)
    small = disc((200, 150), 20)
    also_small = disc((270, 60), 20)  # same area as `small`, higher up: comes first
    blue = disc((100, 180), 30)
    image = canvas()
    for mask, colour in ((big, "red"), (small, "red"), (also_small, "red"), (blue, "blue")):
        paint(image, mask, colour)

    [reds, blues] = segment(engine, png(image), Prompt(text="red"), Prompt(text="A BLUE ball"))

    assert [d.object_id for d in reds] == [1, 2, 3]
    for detection, expected in zip(reds, (big, also_small, small), strict=True):
        assert detection.score == 1.0
        assert detection.mask.dtype == bool and detection.mask.shape == (H, W)
        np.testing.assert_array_equal(detection.mask, expected)
        assert detection.box == tight_box(expected)
    assert reds[0].box == Box(20.0, 30.0, 100.0, 90.0)
    assert reds[0].mask.sum() == 80 * 60
    assert len(blues) == 1
    np.testing.assert_array_equal(blues[0].mask, blue)


@pytest.mark.parametrize("colour", list(COLOURS))
def test_each_colour_is_exact_and_matches_no_other_word(engine, colour):
    background = "white" if colour in ("black", "gray") else "black"
    shape = disc((160, 120), 40)
    image = png(paint(canvas(background), shape, colour))
    state = engine.encode_image(image)

    [[detection]] = engine.predict(state, [Prompt(text=f"the {colour} thing")])
    np.testing.assert_array_equal(detection.mask, shape)
    for other in COLOURS:
        if other not in (colour, background):
            assert engine.predict(state, [Prompt(text=other)]) == [[]], other
    assert engine.state_nbytes(state) == H * W * 3


def test_grey_is_gray(engine):
    shape = disc((160, 120), 40)
    [[detection]] = segment(engine, paint(canvas(), shape, "gray"), Prompt(text="Grey"))
    np.testing.assert_array_equal(detection.mask, shape)


@pytest.mark.parametrize(
    ("colour", "background"),
    [(c, b) for c in COLOURS for b in ("black", "white") if c != b],
)
@pytest.mark.parametrize("damage", ["jpeg", "antialiased"])
def test_lossy_and_antialiased_shapes_stay_close(engine, colour, background, damage):
    shape = disc((160, 120), 40)
    if damage == "jpeg":
        image = jpeg(paint(canvas(background), shape, colour))
    else:
        image = canvas(background)
        cv2.circle(image, (160, 120), 40, COLOURS[colour], -1, cv2.LINE_AA)

    detections = segment(engine, image, Prompt(text=colour))[0]

    assert len(detections) == 1
    assert iou(detections[0].mask, shape) >= 0.95


def test_unknown_text_is_invalid_argument_naming_the_colours(engine):
    state = engine.encode_image(canvas())
    with pytest.raises(InvalidArgument) as raised:
        engine.predict(state, [Prompt(text="a dog")])
    for word in ("red", "green", "blue", "gray", "grey", "black"):
        assert word in raised.value.message


@pytest.fixture
def scene():
    """Two red discs, a blue disc and a green square on black, as a PNG round trip."""
    masks = {
        "red_a": disc((60, 60), 30),
        "red_b": disc((240, 70), 25),
        "blue": disc((80, 180), 35),
        "green": rect(200, 150, 279, 209),
    }
    image = canvas()
    for name, mask in masks.items():
        paint(image, mask, name.split("_")[0])
    return png(image), masks


def test_box_prompt_selects_the_regions_of_the_box_colour(engine, scene):
    image, masks = scene
    around_b = LabeledBox(Box(210, 40, 270, 100))
    around_blue_and_some_red = LabeledBox(Box(40, 60, 130, 230))  # mostly blue
    around_both_reds = LabeledBox(Box(20, 20, 280, 110))  # mostly black, but holds two reds

    results = segment(
        engine,
        image,
        Prompt(boxes=(around_b,)),
        Prompt(boxes=(around_blue_and_some_red,)),
        Prompt(boxes=(LabeledBox(Box(25, 25, 95, 95)), around_b)),
        Prompt(boxes=(around_both_reds, LabeledBox(Box(230, 60, 250, 80), positive=False))),
    )

    [[b], [blue], [both], [a]] = results
    np.testing.assert_array_equal(b.mask, masks["red_b"])
    assert b.box == tight_box(masks["red_b"]) and b.object_id == 1
    np.testing.assert_array_equal(blue.mask, masks["blue"])
    np.testing.assert_array_equal(both.mask, masks["red_a"] | masks["red_b"])
    np.testing.assert_array_equal(a.mask, masks["red_a"])


def test_point_prompts_and_negative_prompts(engine, scene):
    image, masks = scene
    results = segment(
        engine,
        image,
        Prompt(points=(LabeledPoint(240.5, 70.5),)),
        Prompt(points=(LabeledPoint(230, 180), LabeledPoint(60, 60))),  # green first: red ignored
        Prompt(text="red", points=(LabeledPoint(60, 60, positive=False),)),
        Prompt(text="red", boxes=(LabeledBox(Box(0, 0, 100, 100)),)),
        Prompt(points=(LabeledPoint(5, 5),)),  # the background
        Prompt(points=(LabeledPoint(-50, 1e6),)),  # clipped to the bottom-left corner
        Prompt(points=(LabeledPoint(60, 60), LabeledPoint(60, 60, positive=False))),
    )

    [[b], [green], [only_b], [only_a], [black], [corner], cancelled] = results
    np.testing.assert_array_equal(b.mask, masks["red_b"])
    np.testing.assert_array_equal(green.mask, masks["green"])
    np.testing.assert_array_equal(only_b.mask, masks["red_b"])
    assert only_b.object_id == 1
    np.testing.assert_array_equal(only_a.mask, masks["red_a"])
    background = ~np.logical_or.reduce(list(masks.values()))  # black is a colour too
    np.testing.assert_array_equal(black.mask, background)
    np.testing.assert_array_equal(corner.mask, background)
    assert cancelled == []


def test_point_on_a_smeared_edge_still_finds_the_region(engine):
    shape = disc((160, 120), 40)
    image = jpeg(paint(canvas(), shape, "blue"), quality=60)
    [[detection]] = segment(engine, image, Prompt(points=(LabeledPoint(160, 80),)))
    assert iou(detection.mask, shape) >= 0.95


def test_counters_and_before_call_hook(engine, scene):
    image, _ = scene
    seen = []
    engine.before_call = seen.append
    state = engine.encode_image(image)
    engine.predict(state, [Prompt(text="red")])
    assert seen == ["encode_image", "predict"]
    assert engine.calls["encode_image"] == 1 and engine.calls["predict"] == 1

    def fail(name):
        if name == "predict":
            raise RuntimeError("injected")

    engine.before_call = fail
    with pytest.raises(RuntimeError, match="injected"):
        engine.predict(state, [Prompt(text="red")])
    assert engine.calls["predict"] == 2


def test_before_call_can_hold_the_engine(engine, scene):
    image, _ = scene
    entered, release = threading.Event(), threading.Event()

    def hold(name):
        entered.set()
        assert release.wait(5)

    engine.before_call = hold
    results = []
    worker = threading.Thread(target=lambda: results.append(engine.encode_image(image)))
    worker.start()
    assert entered.wait(5)
    assert not results
    release.set()
    worker.join(5)
    assert len(results) == 1


# ----- videos --------------------------------------------------------------------------------
N = 20
VANISHED = range(8, 12)  # the blue disc is hidden on these frames


def clip_masks(i: int) -> dict[int, np.ndarray | None]:
    """Per object id (as the prompts in `prompt_clip` number them), its pixels on frame i."""
    return {
        1: disc((40 + 6 * i, 70), 22),  # red, moving right: the larger red region
        2: disc((260, 190), 18),  # red, still
        3: disc((260 - 3 * i, 120 + 3 * i), 26),  # green, moving down-left
        4: None if i in VANISHED else disc((60 + 2 * i, 180), 20),  # blue, hidden for a while
    }


COLOUR_OF = {1: "red", 2: "red", 3: "green", 4: "blue"}


def clip_frame(i: int, masks_of=clip_masks, colour_of=COLOUR_OF) -> np.ndarray:
    """Frame i as BGR."""
    image = canvas()
    for oid, mask in masks_of(i).items():
        if mask is not None:
            paint(image, mask, colour_of[oid])
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def write_clip(tmp_path, kind: str, n=N, masks_of=clip_masks, colour_of=COLOUR_OF) -> str:
    """A clip as a folder of JPEGs ("jpeg"), an MP4 ("mp4") or a lossless AVI ("ffv1")."""
    frames = [clip_frame(i, masks_of, colour_of) for i in range(n)]
    if kind == "jpeg":
        folder = tmp_path / "frames"
        folder.mkdir()
        for i, frame in enumerate(frames):  # unpadded names: the order must still be numeric
            cv2.imwrite(str(folder / f"{i}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        return str(folder)
    fourcc, name = {"ffv1": ("FFV1", "clip.avi"), "mp4": ("mp4v", "clip.mp4")}[kind]
    path = str(tmp_path / name)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 10.0, (W, H))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def start(engine: SyntheticEngine, path: str):
    """A session on a local clip, its frames read through a window as the server does."""
    return engine.start_session(open_window(path, engine.frame_preparer()))


def prompt_clip(engine, session, frame_index: int = 0):
    """Adds objects 1-4 on one frame: text for the reds, a point and a box for the others."""
    masks = clip_masks(frame_index)
    output, ids = engine.add_prompt(session, frame_index, Prompt(text="red"), None)
    assert ids == [1, 2]
    green = masks[3]
    ys, xs = np.nonzero(green)
    point = LabeledPoint(float(xs.mean()), float(ys.mean()))
    assert engine.add_prompt(session, frame_index, Prompt(points=(point,)), None)[1] == [3]
    box = tight_box(masks[4])
    output, ids = engine.add_prompt(session, frame_index, Prompt(boxes=(LabeledBox(box),)), None)
    assert ids == [4]
    return output


def check_frame(output, exact: bool, masks_of=clip_masks):
    expected = {oid: m for oid, m in masks_of(output.frame_index).items() if m is not None}
    expected = {oid: m for oid, m in expected.items() if m.any()}
    assert [d.object_id for d in output.objects] == sorted(expected), output.frame_index
    for detection in output.objects:
        want = expected[detection.object_id]
        if exact:
            np.testing.assert_array_equal(detection.mask, want)
            assert detection.box == tight_box(want)
        else:
            assert iou(detection.mask, want) >= 0.95, (output.frame_index, detection.object_id)


@pytest.mark.parametrize("kind", ["ffv1", "jpeg", "mp4"])
def test_tracks_every_disc_forward_and_backward(engine, tmp_path, kind):
    exact = kind == "ffv1"  # lossless
    session = start(engine, write_clip(tmp_path, kind))
    check_frame(prompt_clip(engine, session), exact)
    assert engine.object_ids(session) == [1, 2, 3, 4]
    assert engine.prompted_frames(session) == [0]

    outputs = list(engine.propagate(session, *propagation_plan(N, Direction.FORWARD, 0)))
    assert [o.frame_index for o in outputs] == list(range(N))
    for output in outputs:
        check_frame(output, exact)

    # Backward from the last frame: catches up from frame 0, then walks back (seeking in MP4s).
    outputs = list(engine.propagate(session, *propagation_plan(N, Direction.BACKWARD, N - 1)))
    assert [o.frame_index for o in outputs] == list(range(N - 1, -1, -1))
    for output in outputs:
        check_frame(output, exact)
    engine.close_session(session)


def hard_masks(i: int) -> dict[int, np.ndarray]:
    """Same-colour discs passing each other, a bar growing faster than the search margin, a
    disc jumping across the frame and one leaving it (from frame 12 on)."""
    return {
        1: disc((30 + 16 * i, 100), 18),  # red, moving right
        2: disc((290 - 16 * i, 145), 18),  # red, moving left, passing 1 nine pixels apart
        3: rect(10, 200, 30 + 18 * i, 215),  # yellow, growing right
        4: disc((60, 40) if i < 6 else (250, 40), 12),  # magenta, jumps on frame 6
        5: disc((240 + 8 * i, 180), 12),  # cyan, gone from frame 12
    }


HARD_COLOURS = {1: "red", 2: "red", 3: "yellow", 4: "magenta", 5: "cyan"}


def test_tracking_through_crossings_growth_jumps_and_exits(engine, tmp_path):
    n = 16
    session = start(engine, write_clip(tmp_path, "ffv1", n, hard_masks, HARD_COLOURS))
    assert engine.add_prompt(session, 0, Prompt(text="red"), None)[1] == [1, 2]
    for colour in ("yellow", "magenta", "cyan"):
        engine.add_prompt(session, 0, Prompt(text=colour), None)
    assert engine.object_ids(session) == [1, 2, 3, 4, 5]

    forward = list(engine.propagate(session, *propagation_plan(n, Direction.FORWARD, 0)))
    backward = list(engine.propagate(session, *propagation_plan(n, Direction.BACKWARD, n - 1)))
    for output in forward + backward:
        check_frame(output, exact=True, masks_of=hard_masks)
    assert [d.object_id for d in forward[-1].objects] == [1, 2, 3, 4]


def test_prompt_mid_clip_and_propagate_both_ways(engine, tmp_path):
    session = start(engine, write_clip(tmp_path, "ffv1"))
    prompt_clip(engine, session, frame_index=12)
    forward, backward = propagation_plan(N, Direction.BOTH, 12)
    outputs = list(engine.propagate(session, forward, backward))
    assert [o.frame_index for o in outputs] == [*range(12, N), *range(11, -1, -1)]
    for output in outputs:
        check_frame(output, exact=True)
    assert engine.calls["propagate_step"] == N

    # A prompt on a frame far from the seeds answers with every object tracked to it.
    output, ids = engine.add_prompt(
        session, 3, Prompt(points=(LabeledPoint(260, 190, positive=False),)), 2
    )
    assert ids == [2]
    assert [d.object_id for d in output.objects] == [1, 3, 4]  # 2 now selects nothing on 3
    assert engine.prompted_frames(session) == [3, 12]


def test_closing_propagation_early_leaves_the_session_usable(engine, tmp_path):
    session = start(engine, write_clip(tmp_path, "mp4"))
    prompt_clip(engine, session)
    stream = engine.propagate(session, *propagation_plan(N, Direction.FORWARD, 0))
    assert engine.calls["propagate_step"] == 0  # nothing runs before the first next()
    for _ in range(5):
        check_frame(next(stream), exact=False)
    assert engine.calls["propagate_step"] == 5
    stream.close()

    assert engine.object_ids(session) == [1, 2, 3, 4]
    outputs = list(engine.propagate(session, *propagation_plan(N, Direction.FORWARD, 3)))
    assert len(outputs) == N - 3
    for output in outputs:
        check_frame(output, exact=False)
    assert engine.calls["propagate_step"] == 5 + N - 3
    assert engine.calls["propagate"] == 2
    assert engine.calls["add_prompt"] == 3


def test_refine_remove_reset_and_close(engine, tmp_path):
    session = start(engine, write_clip(tmp_path, "ffv1"))
    masks = clip_masks(0)
    _, [oid] = engine.add_prompt(session, 0, Prompt(points=(LabeledPoint(40, 70),)), None)
    assert oid == 1
    # Clicks on one frame accumulate: a second positive adds the still disc, a negative removes it.
    output, ids = engine.add_prompt(session, 0, Prompt(points=(LabeledPoint(260, 190),)), 1)
    assert ids == [1]
    np.testing.assert_array_equal(output.objects[0].mask, masks[1] | masks[2])
    neg = Prompt(points=(LabeledPoint(260, 190, positive=False),))
    output, _ = engine.add_prompt(session, 0, neg, 1)
    np.testing.assert_array_equal(output.objects[0].mask, masks[1])

    with pytest.raises(InvalidArgument):
        engine.add_prompt(session, 0, Prompt(text="red"), 7)
    with pytest.raises(InvalidArgument):
        engine.add_prompt(session, 0, Prompt(text="a horse"), None)
    with pytest.raises(InvalidArgument):
        engine.remove_object(session, 7)

    _, ids = engine.add_prompt(session, 5, Prompt(text="green"), None)
    assert ids == [2]
    assert engine.prompted_frames(session) == [0, 5]
    engine.remove_object(session, 1)
    assert engine.object_ids(session) == [2]
    assert engine.prompted_frames(session) == [5]
    [output] = engine.propagate(session, [9], [])
    assert [d.object_id for d in output.objects] == [2]
    np.testing.assert_array_equal(output.objects[0].mask, clip_masks(9)[3])
    assert engine.session_nbytes(session) > 0

    engine.reset_session(session)
    assert engine.object_ids(session) == [] and engine.prompted_frames(session) == []
    assert [o.objects for o in engine.propagate(session, [0, 1], [])] == [[], []]
    _, ids = engine.add_prompt(session, 0, Prompt(text="blue"), None)
    assert ids == [1]

    engine.close_session(session)
    with pytest.raises(FailedPrecondition):
        engine.add_prompt(session, 0, Prompt(text="red"), None)


def test_latency_is_slept_once_per_unit_of_device_work(tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr(synthetic_engine.time, "sleep", slept.append)
    engine = SyntheticEngine(latency_ms=20)
    engine.encode_image(canvas())
    assert slept == [0.02]
    folder = write_clip(tmp_path, "jpeg")
    session = start(engine, folder)
    engine.add_prompt(session, 0, Prompt(text="green"), None)
    assert len(list(engine.propagate(session, [0, 1, 2], []))) == 3
    assert slept == [0.02] * 5
    engine.close_session(session)
    assert os.path.isdir(folder)  # the engine never deletes the media
