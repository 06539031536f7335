"""The SAM 3 engine in-process, on the tiny preset (Meta's sam3 code, random weights, CPU)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import cv2
import numpy as np
import psutil
import pytest
import torch

from sam3_grpc.domain import (
    Box,
    Direction,
    LabeledBox,
    LabeledPoint,
    ModelKind,
    Prompt,
)
from sam3_grpc.engines.base import propagation_plan
from sam3_grpc.engines.sam3 import Sam3Engine, compat
from sam3_grpc.engines.sam3.video import WindowFrames
from sam3_grpc.engines.sam3.weights import locate_checkpoint
from sam3_grpc.errors import (
    ConfigurationError,
    FailedPrecondition,
    InvalidArgument,
)
from sam3_grpc.media.frames import open_window

pytestmark = pytest.mark.sam3

HEIGHT, WIDTH = 120, 160
FRAMES = 6
# The tiny preset's random detector scores this phrase above its thresholds on `clip_frames`, so
# objects are born and tracked (test_video_matches_metas_own_propagation checks that they are).
VIDEO_TEXT = "a thing"


@pytest.fixture(scope="module")
def engine() -> Sam3Engine:
    engine = Sam3Engine(preset="sam3-tiny", device="cpu")
    engine.load()
    return engine


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = (rng.random((HEIGHT, WIDTH, 3)) * 60).astype(np.uint8)
    image[30:80, 40:110] = (220, 30, 30)
    return image


def clip_frames(count: int) -> list[np.ndarray]:
    """A red square moving right on a dark background (BGR, for cv2)."""
    frames = []
    for i in range(count):
        frame = np.full((HEIGHT, WIDTH, 3), 25, np.uint8)
        cv2.rectangle(frame, (20 + 8 * i, 30), (70 + 8 * i, 80), (30, 30, 220), -1)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def frame_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("frames")
    for i, frame in enumerate(clip_frames(FRAMES)):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), frame)
    return str(folder)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (WIDTH, HEIGHT))
    for frame in clip_frames(4):
        writer.write(frame)
    writer.release()
    return str(path)


def start(engine: Sam3Engine, path: str, capacity: int = 16):
    """A session on a video, read through a frame window as the server reads it."""
    return engine.start_session(open_window(path, engine.frame_preparer(), capacity=capacity))


def check_detections(detections, height=HEIGHT, width=WIDTH):
    for det in detections:
        assert det.mask.dtype == bool and det.mask.shape == (height, width)
        assert 0.0 <= det.score <= 1.0
        if det.box is not None:
            assert 0 <= det.box.x_min <= det.box.x_max <= width
            assert 0 <= det.box.y_min <= det.box.y_max <= height


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        np.array_equal(x.mask, y.mask) and x.score == pytest.approx(y.score, abs=1e-6)
        for x, y in zip(a, b, strict=True)
    )


# ----- construction and loading -------------------------------------------------------------
def test_info_of_the_tiny_preset(engine):
    info = engine.info
    assert info.name == "sam3-tiny" and info.kind is ModelKind.TINY
    assert info.device == "cpu"
    assert "random" in info.weights_source and "meaningless" in info.weights_source
    assert info.default_score_threshold == 0.5


def test_memory_reports_rss_on_cpu(engine):
    usage = engine.memory()
    assert 0 < usage.used_bytes < usage.total_bytes


def test_warmup(engine):
    engine.warmup()


def test_imports_stay_light():
    code = (
        "import sys; import sam3_grpc.engines, sam3_grpc.domain; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "import sam3_grpc.engines.sam3 as e; "
        "e.Sam3Engine(preset='sam3-tiny', device='cpu'); "
        "assert 'sam3' not in sys.modules, 'sam3 imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd(), timeout=120)


@pytest.mark.parametrize("device", ["tpu", "cuda:x"])
def test_bad_device_is_a_configuration_error(device):
    with pytest.raises(ConfigurationError):
        Sam3Engine(preset="sam3-tiny", device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="CUDA is not available"):
        Sam3Engine(preset="sam3-tiny", device="cuda")


def test_unknown_preset_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="sam3-tiny"):
        Sam3Engine(preset="sam4")


def test_missing_checkpoint_explains_how_to_get_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    real = Sam3Engine(preset="sam3", device="cpu")
    with pytest.raises(ConfigurationError) as raised:
        real.load()
    message = str(raised.value)
    for needle in (
        "--checkpoint",
        "facebook/sam3",
        "hf auth login",
        "hf download facebook/sam3 sam3.pt",
        "sam3-tiny",
    ):
        assert needle in message
    assert not real.loaded


def test_checkpoint_path_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigurationError, match="--checkpoint"):
        Sam3Engine(preset="sam3", device="cpu", checkpoint=str(tmp_path / "nope.pt")).load()


def test_a_file_that_is_not_a_checkpoint_fails_fast(tmp_path):
    bogus = tmp_path / "sam3.pt"
    bogus.write_bytes(b"<html>login required</html>")
    with pytest.raises(ConfigurationError, match="not a PyTorch checkpoint"):
        Sam3Engine(preset="sam3", device="cpu", checkpoint=str(bogus)).load()


def test_checkpoint_found_in_the_hub_cache_without_network(tmp_path, monkeypatch):
    repo = tmp_path / "models--facebook--sam3"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    torch.save({"model": {}}, snapshot / "sam3.pt")  # a zip archive, like the real file
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    location = locate_checkpoint(None)
    assert location.path == str(snapshot / "sam3.pt")
    assert location.source == f"huggingface-cache:{snapshot / 'sam3.pt'}"
    (repo / "refs" / "main").unlink()  # a snapshot without refs/main is found by scanning
    assert locate_checkpoint(None).path == str(snapshot / "sam3.pt")


# ----- images -------------------------------------------------------------------------------
def test_text_prompt(engine, image):
    state = engine.encode_image(image)
    assert engine.state_nbytes(state) > 0
    (detections,) = engine.predict(state, [Prompt(text="red square")])
    assert detections, "the tiny preset scores some candidates above the floor"
    check_detections(detections)
    scores = [d.score for d in detections]
    assert scores == sorted(scores, reverse=True)


def test_box_exemplars_positive_and_negative(engine, image):
    state = engine.encode_image(image)
    positive = LabeledBox(Box(40, 30, 110, 80))
    negative = LabeledBox(Box(0, 0, 30, 20), positive=False)
    results = engine.predict(state, [Prompt(boxes=(positive,)), Prompt(boxes=(positive, negative))])
    assert len(results) == 2
    for detections in results:
        check_detections(detections)
    assert not same(results[0], results[1]), "the negative exemplar changes the answer"


def test_text_and_boxes(engine, image):
    state = engine.encode_image(image)
    prompt = Prompt(text="red square", boxes=(LabeledBox(Box(40, 30, 110, 80)),))
    (detections,) = engine.predict(state, [prompt])
    check_detections(detections)
    (text_only,) = engine.predict(state, [Prompt(text="red square")])
    assert not same(detections, text_only)


def test_points(engine, image):
    state = engine.encode_image(image)
    one_click = Prompt(points=(LabeledPoint(75, 55),))
    clicks_and_box = Prompt(
        points=(LabeledPoint(75, 55), LabeledPoint(5, 5, positive=False)),
        boxes=(LabeledBox(Box(40, 30, 110, 80)),),
    )
    for detections in engine.predict(state, [one_click, clicks_and_box]):
        assert len(detections) == 1  # clicks segment one object
        check_detections(detections)


@pytest.mark.parametrize(
    "prompt",
    [
        Prompt(),
        Prompt(text="cat", points=(LabeledPoint(5, 5),)),
        Prompt(points=(LabeledPoint(5, 5),), boxes=(LabeledBox(Box(0, 0, 9, 9)),) * 2),
        Prompt(points=(LabeledPoint(5, 5),), boxes=(LabeledBox(Box(0, 0, 9, 9), False),)),
        Prompt(boxes=(LabeledBox(Box(500, 500, 600, 600)),)),
    ],
)
def test_unsupported_image_prompts(engine, image, prompt):
    state = engine.encode_image(image)
    with pytest.raises(InvalidArgument):
        engine.predict(state, [prompt])


def test_unsupported_combination_names_the_supported_ones(engine, image):
    state = engine.encode_image(image)
    with pytest.raises(InvalidArgument, match="supported: text; boxes"):
        engine.predict(state, [Prompt(text="cat", points=(LabeledPoint(5, 5),))])


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8)],
)
def test_bad_images(engine, bad):
    with pytest.raises(InvalidArgument):
        engine.encode_image(bad)


def test_encode_once_predict_twice_is_consistent(engine, image):
    state = engine.encode_image(image)
    prompts = [Prompt(text="red square"), Prompt(points=(LabeledPoint(75, 55),))]
    first = engine.predict(state, prompts)
    second = engine.predict(state, prompts)
    for a, b in zip(first, second, strict=True):
        assert same(a, b)
    again = engine.predict(engine.encode_image(image), prompts)
    for a, b in zip(first, again, strict=True):
        assert same(a, b)


def test_prompts_do_not_pollute_each_other(engine, image):
    state = engine.encode_image(image)
    (alone,) = engine.predict(state, [Prompt(text="red square")])
    boxes = (LabeledBox(Box(40, 30, 110, 80)), LabeledBox(Box(0, 0, 30, 20), False))
    after_others = engine.predict(
        state,
        [
            Prompt(text="dog", boxes=boxes),
            Prompt(points=(LabeledPoint(9, 9),)),
            Prompt(text="red square"),
        ],
    )[-1]
    assert same(alone, after_others)


def test_original_size_is_kept_for_any_aspect(engine):
    tall = np.full((97, 41, 3), 128, np.uint8)
    (detections,) = engine.predict(engine.encode_image(tall), [Prompt(text="thing")])
    check_detections(detections, 97, 41)


# ----- video --------------------------------------------------------------------------------
def indices(outputs) -> list[int]:
    return [o.frame_index for o in outputs]


def test_video_text_prompt_and_propagation_in_every_direction(engine, frame_folder):
    session = start(engine, frame_folder)
    try:
        assert engine.session_nbytes(session) > 0
        output, ids = engine.add_prompt(session, 2, Prompt(text=VIDEO_TEXT), None)
        assert output.frame_index == 2
        check_detections(output.objects)
        assert ids == [o.object_id for o in output.objects]
        assert engine.prompted_frames(session) == [2]
        assert set(ids) <= set(engine.object_ids(session))
        for direction in (Direction.BOTH, Direction.FORWARD, Direction.BACKWARD):
            forward, backward = propagation_plan(FRAMES, direction, 2)
            outputs = list(engine.propagate(session, forward, backward))
            assert indices(outputs) == forward + backward
            for out in outputs:
                check_detections(out.objects)
    finally:
        engine.close_session(session)


def test_video_propagation_capped_and_from_the_ends(engine, frame_folder):
    session = start(engine, frame_folder)
    try:
        engine.add_prompt(session, FRAMES - 1, Prompt(text=VIDEO_TEXT), None)
        forward, backward = propagation_plan(FRAMES, Direction.BACKWARD, FRAMES - 1, max_frames=3)
        assert indices(engine.propagate(session, forward, backward)) == backward
        # frames never computed are computed now, computed ones are replayed
        forward, backward = propagation_plan(FRAMES, Direction.BACKWARD, FRAMES - 1)
        outputs = list(engine.propagate(session, forward, backward))
        assert indices(outputs) == list(range(FRAMES - 1, -1, -1))
        forward, backward = propagation_plan(FRAMES, Direction.FORWARD, 0)
        assert indices(engine.propagate(session, forward, backward)) == list(range(FRAMES))
    finally:
        engine.close_session(session)


def meta_propagation(engine, folder: str, text: str, frames: int = FRAMES):
    """Meta's own pipeline on the engine's model, as `Sam3VideoPredictor` drives it (init_state on
    the JPEG folder, add_prompt, propagate_in_video), under the engine's CPU context."""
    model = engine._model
    with engine._context(video=True):
        state = model.init_state(resource_path=folder)
        _, prompted = model.add_prompt(state, frame_idx=0, text_str=text)
        outputs = list(
            model.propagate_in_video(state, start_frame_idx=0, max_frame_num_to_track=frames - 1)
        )
    return state, prompted, outputs


def api_ids(sam3_ids) -> list[int]:
    """sam3 numbers objects from 0, the API from 1."""
    return [int(i) + 1 for i in sam3_ids]


def assert_same_frame(ours, frame_index, theirs):
    assert ours.frame_index == frame_index
    assert [o.object_id for o in ours.objects] == api_ids(theirs["out_obj_ids"])
    for obj, prob, mask in zip(
        ours.objects, theirs["out_probs"], theirs["out_binary_masks"], strict=True
    ):
        assert obj.score == pytest.approx(min(1.0, max(0.0, float(prob))), abs=1e-6)
        assert np.array_equal(obj.mask, np.asarray(mask, dtype=bool))


def test_video_matches_metas_own_propagation(engine, frame_folder):
    """Same weights, same frames, same CPU context: the session's frames, objects, scores and masks
    are those of Meta's pipeline, frame for frame (births during the run and the object cap
    included)."""
    state, prompted, reference = meta_propagation(engine, frame_folder, VIDEO_TEXT)
    session = start(engine, frame_folder)
    try:
        for i in range(FRAMES):
            assert torch.equal(session.frames[i], state["input_batch"].img_batch[i])
        output, ids = engine.add_prompt(session, 0, Prompt(text=VIDEO_TEXT), None)
        assert_same_frame(output, 0, prompted)
        assert ids == api_ids(prompted["out_obj_ids"])
        outputs = list(engine.propagate(session, list(range(FRAMES)), []))
        assert len(outputs) == len(reference) == FRAMES
        for ours, (index, theirs) in zip(outputs, reference, strict=True):
            assert_same_frame(ours, index, theirs)
        # the clip is long enough for the tiny tracker to reach its object cap
        assert len(engine.object_ids(session)) == engine._model.max_num_objects
        assert sum(len(o.objects) for o in outputs) > 0
    finally:
        engine.close_session(session)


def stored_memory_dtypes(session) -> set[torch.dtype]:
    """Dtypes of the tracker memories a session stored (sam3 casts them to bfloat16)."""
    return {
        out["maskmem_features"].dtype
        for tracker_state in session.state["tracker_inference_states"]
        for outputs in tracker_state["output_dict"].values()
        for out in outputs.values()
        if out.get("maskmem_features") is not None
    }


def run_video(engine, source, frames: int):
    session = start(engine, source)
    engine.add_prompt(session, 0, Prompt(text=VIDEO_TEXT), None)
    outputs = list(engine.propagate(session, list(range(frames)), []))
    return session, outputs


@pytest.mark.skipif(compat.cpu_has_bf16_units(), reason="needs a CPU without bf16 units")
def test_video_runs_in_float32_on_a_cpu_without_bf16(engine, frame_folder):
    session, outputs = run_video(engine, frame_folder, 3)
    try:
        assert indices(outputs) == [0, 1, 2]
        assert stored_memory_dtypes(session) == {torch.float32}
    finally:
        engine.close_session(session)


def test_video_under_bf16_autocast_as_on_cuda(frame_folder):
    """`cpu_bf16=True`: sam3's own precision (bf16 autocast, bf16 memories) still runs on the CPU
    (the default on CPUs with bf16 units)."""
    bf16 = Sam3Engine(preset="sam3-tiny", device="cpu", cpu_bf16=True)
    bf16.load()
    session, outputs = run_video(bf16, frame_folder, 3)
    try:
        assert indices(outputs) == [0, 1, 2]
        assert stored_memory_dtypes(session) == {torch.bfloat16}
        for out in outputs:
            check_detections(out.objects)
    finally:
        bf16.close_session(session)


def test_video_cancelled_propagation_leaves_the_session_usable(engine, frame_folder):
    session = start(engine, frame_folder)
    try:
        engine.add_prompt(session, 0, Prompt(text=VIDEO_TEXT), None)
        stream = engine.propagate(session, list(range(FRAMES)), [])
        first = next(stream)
        assert first.frame_index == 0
        with pytest.raises(FailedPrecondition):  # one propagation at a time
            engine.add_prompt(session, 1, Prompt(text="cat"), None)
        stream.close()
        outputs = list(engine.propagate(session, list(range(FRAMES)), []))
        assert indices(outputs) == list(range(FRAMES))
        output, _ = engine.add_prompt(session, 1, Prompt(text="cat"), None)
        assert output.frame_index == 1
    finally:
        engine.close_session(session)


def test_video_points_remove_and_reset(engine, frame_folder):
    session = start(engine, frame_folder)
    try:
        # clicks before any text prompt create an object of their own
        output, ids = engine.add_prompt(session, 1, Prompt(points=(LabeledPoint(45, 55),)), None)
        assert output.frame_index == 1 and len(ids) == 1
        check_detections(output.objects)
        clicked = ids[0]
        assert clicked in engine.object_ids(session)
        outputs = list(engine.propagate(session, *propagation_plan(FRAMES, Direction.BOTH, 1)))
        assert indices(outputs) == [1, 2, 3, 4, 5, 0]
        # refine the same object elsewhere, then a new one with a chosen id
        _, ids = engine.add_prompt(
            session, 3, Prompt(points=(LabeledPoint(60, 55), LabeledPoint(5, 5, False))), clicked
        )
        assert ids == [clicked]
        # an id the session does not track is refused, not created
        with pytest.raises(InvalidArgument, match="no object 42"):
            engine.add_prompt(session, 3, Prompt(points=(LabeledPoint(150, 110),)), 42)
        _, [second] = engine.add_prompt(session, 3, Prompt(points=(LabeledPoint(150, 110),)), None)
        assert second > clicked >= 1
        assert engine.prompted_frames(session) == [1, 3]
        outputs = list(engine.propagate(session, *propagation_plan(FRAMES, Direction.BOTH, 3)))
        assert indices(outputs) == [3, 4, 5, 2, 1, 0]
        engine.remove_object(session, second)
        assert second not in engine.object_ids(session)
        assert engine.prompted_frames(session) == [1, 3]
        with pytest.raises(InvalidArgument):
            engine.remove_object(session, second)
        outputs = list(engine.propagate(session, list(range(FRAMES)), []))
        assert all(second not in [o.object_id for o in out.objects] for out in outputs)
        engine.reset_session(session)
        assert engine.object_ids(session) == [] and engine.prompted_frames(session) == []
        with pytest.raises(FailedPrecondition):
            engine.propagate(session, [0], [])
        output, _ = engine.add_prompt(session, 0, Prompt(text=VIDEO_TEXT), None)
        assert output.frame_index == 0
    finally:
        engine.close_session(session)


def test_video_box_prompt(engine, frame_folder):
    session = start(engine, frame_folder)
    try:
        output, _ = engine.add_prompt(
            session, 0, Prompt(text=VIDEO_TEXT, boxes=(LabeledBox(Box(20, 30, 70, 80)),)), None
        )
        check_detections(output.objects)
        outputs = list(engine.propagate(session, list(range(FRAMES)), []))
        assert indices(outputs) == list(range(FRAMES))
    finally:
        engine.close_session(session)


def test_video_unsupported_requests(engine, frame_folder):
    session = start(engine, frame_folder)
    try:
        with pytest.raises(FailedPrecondition):
            engine.propagate(session, [0, 1], [])
        with pytest.raises(InvalidArgument, match="object_id"):
            engine.add_prompt(session, 0, Prompt(text="cat"), 3)
        two_boxes = (LabeledBox(Box(0, 0, 10, 10)), LabeledBox(Box(20, 20, 30, 30)))
        with pytest.raises(InvalidArgument, match="one exemplar box"):
            engine.add_prompt(session, 0, Prompt(boxes=two_boxes), None)
        with pytest.raises(InvalidArgument, match="points cannot be combined"):
            engine.add_prompt(session, 0, Prompt(text="cat", points=(LabeledPoint(1, 1),)), None)
        with pytest.raises(InvalidArgument):
            engine.add_prompt(session, 0, Prompt(), None)
        with pytest.raises(InvalidArgument, match="outside"):
            engine.add_prompt(session, FRAMES, Prompt(text="cat"), None)
        engine.add_prompt(session, 0, Prompt(text="cat"), None)
        with pytest.raises(InvalidArgument):
            engine.propagate(session, [0, 2], [])
        with pytest.raises(InvalidArgument, match="outside"):
            engine.propagate(session, list(range(FRAMES + 1)), [])
    finally:
        engine.close_session(session)
    with pytest.raises(FailedPrecondition):
        engine.add_prompt(session, 0, Prompt(text="cat"), None)
    assert engine.session_nbytes(session) == 0
    engine.close_session(session)  # idempotent


def test_video_file(engine, mp4):
    session = start(engine, mp4)
    try:
        frames = session.frames
        assert isinstance(frames, WindowFrames) and len(frames) == 4
        # scaled like sam3's JPEG loader: [0, 1] then mean/std 0.5
        values = torch.stack([frames[i] for i in range(len(frames))])
        assert values.dtype == torch.float16 and values.min() >= -1.01 and values.max() <= 1.01
        output, _ = engine.add_prompt(session, 0, Prompt(text=VIDEO_TEXT), None)
        check_detections(output.objects)
        assert indices(engine.propagate(session, [0, 1, 2, 3], [])) == [0, 1, 2, 3]
    finally:
        engine.close_session(session)


def test_tensor_nbytes_counts_each_storage_once(engine, frame_folder):
    from sam3_grpc.engines.sam3.video import tensor_nbytes

    big = torch.zeros(1000)  # 4000 bytes
    window = open_window(frame_folder, engine.frame_preparer(), capacity=4)
    try:
        for index in range(3):
            window.get(index)
        frames = WindowFrames(window)  # its window's frames: 3 x 3 x 112 x 112 float16
        held = 3 * engine.frame_preparer().frame_bytes()
        assert window.nbytes == held
        state = {"a": big, "b": [big[:10], big.view(10, 100)], "frames": frames, "again": frames}
        assert tensor_nbytes([state, frames]) == 4000 + held
        assert tensor_nbytes(state, exclude={big.untyped_storage().data_ptr()}) == held
    finally:
        window.close()


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


LONG_FRAMES = 960


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("long")
    frames = clip_frames(12)
    for i in range(LONG_FRAMES):
        cv2.imwrite(str(folder / f"{i}.jpg"), frames[i % 12])
    return str(folder)


def run_session(engine, path):
    """A session whose window holds every frame of the clip (a window as large as the video),
    so that its memory stands out of the process RSS (about 1 GB)."""
    session = start(engine, path, capacity=LONG_FRAMES)
    session.frames.window.prefetch(range(LONG_FRAMES))
    engine.add_prompt(session, 0, Prompt(text=VIDEO_TEXT), None)
    for _ in engine.propagate(session, [0, 1, 2, 3], []):
        pass
    return session


def test_close_session_frees_its_memory(engine, long_clip):
    # one session first: caches filled on first use are not session memory
    engine.close_session(run_session(engine, long_clip))
    before = rss()
    session = run_session(engine, long_clip)
    held = engine.session_nbytes(session)
    tensors = []
    stack = [session.state, [session.frames[i] for i in range(LONG_FRAMES)]]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            tensors.append(weakref.ref(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    del stack, item
    during = rss()
    engine.close_session(session)
    del session
    after = rss()
    alive = sum(ref() is not None for ref in tensors)
    print(
        f"\nsession held {held / 1e6:.1f} MB in {len(tensors)} tensors; RSS before "
        f"{before / 1e6:.0f} MB, during {during / 1e6:.0f} MB, after close {after / 1e6:.0f} MB "
        f"({(after - before) / before:+.1%}); tensors still alive: {alive}"
    )
    assert held > 70e6 and during - before > 0.5 * held  # the measurement sees the session
    assert tensors and alive == 0
    assert abs(after - before) <= 0.05 * before
    assert after - before < 0.25 * held
