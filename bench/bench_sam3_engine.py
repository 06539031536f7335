"""The SAM 3 engine in-process (no server): build, image and video timings, session memory.

    python bench/bench_sam3_engine.py [--preset sam3-tiny] [--device cpu] [--checkpoint PATH]
                                      [--repeat 10] [--frames 24] [--json]

Measures, on one engine:
- build: `load()` wall time (imports sam3, builds, loads weights);
- encode: `encode_image` of a 640x480 image;
- predict, new text: one text prompt whose phrase was never seen (text encoder included);
- predict, cached: the same prompt on the same encoded image again (text features cached);
- predict, box / click: one box exemplar, one click;
- video: session start, add_prompt(text) on frame 0, propagation forward over every frame
  (per-frame time over the whole run, hot-start buffering included), close;
- memory: process RSS (CPU) or allocated device memory (CUDA) before a session, with it open,
  and after `close_session`, after one warm-up session so one-off caches are not counted.

Numbers are medians over --repeat runs. A timing is a benchmark, never a test assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import cv2
import numpy as np

from sam3_grpc.domain import (
    Box,
    LabeledBox,
    LabeledPoint,
    Prompt,
    VideoInfo,
    VideoSource,
)
from sam3_grpc.engines.sam3 import Sam3Engine


def scene(width: int = 640, height: int = 480, shift: int = 0) -> np.ndarray:
    image = np.full((height, width, 3), (40, 60, 40), np.uint8)
    cv2.rectangle(image, (100 + shift, 120), (260 + shift, 300), (220, 30, 30), -1)
    cv2.circle(image, (470, 240), 60, (30, 30, 220), -1)
    return image


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


def timed(fn, repeat: int) -> tuple[float, object]:
    samples, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - started)
    return median_ms(samples), result


def write_clip(folder: str, frames: int) -> VideoSource:
    for i in range(frames):
        cv2.imwrite(os.path.join(folder, f"{i:05d}.jpg"), scene(shift=4 * i)[:, :, ::-1])
    return VideoSource(folder, VideoInfo(frames, 30.0, 640, 480), is_frame_folder=True)


def run_session(engine: Sam3Engine, source: VideoSource) -> dict:
    times: dict = {}
    started = time.perf_counter()
    session = engine.start_session(source)
    times["start_ms"] = round((time.perf_counter() - started) * 1000, 1)
    started = time.perf_counter()
    engine.add_prompt(session, 0, Prompt(text="red rectangle"), None)
    times["add_prompt_ms"] = round((time.perf_counter() - started) * 1000, 1)
    frames = list(range(source.info.frame_count))
    started = time.perf_counter()
    first = None
    for _ in engine.propagate(session, frames, []):
        if first is None:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    times["first_output_ms"] = round(first * 1000, 1)
    times["propagate_per_frame_ms"] = round(total / len(frames) * 1000, 1)
    times["objects"] = len(engine.object_ids(session))
    times["session_mb"] = round(engine.session_nbytes(session) / 2**20, 1)
    times["session"] = session
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="sam3-tiny", choices=("sam3", "sam3-tiny"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "preset": args.preset,
        "device": args.device,
    }
    started = time.perf_counter()
    engine = Sam3Engine(preset=args.preset, device=args.device, checkpoint=args.checkpoint)
    engine.load()
    report["build_s"] = round(time.perf_counter() - started, 2)
    engine.warmup()

    image = scene()
    report["encode_ms"], state = timed(lambda: engine.encode_image(image), args.repeat)
    report["state_mb"] = round(engine.state_nbytes(state) / 2**20, 1)
    counter = iter(range(10**9))
    report["predict_new_text_ms"], _ = timed(
        lambda: engine.predict(state, [Prompt(text=f"object number {next(counter)}")]),
        args.repeat,
    )
    prompt = Prompt(text="red rectangle")
    engine.predict(state, [prompt])
    report["predict_cached_ms"], _ = timed(lambda: engine.predict(state, [prompt]), args.repeat)
    box = Prompt(boxes=(LabeledBox(Box(100, 120, 260, 300)),))
    report["predict_box_ms"], _ = timed(lambda: engine.predict(state, [box]), args.repeat)
    click = Prompt(points=(LabeledPoint(180, 210),))
    report["predict_click_ms"], _ = timed(lambda: engine.predict(state, [click]), args.repeat)
    report["segment_image_ms"], _ = timed(
        lambda: engine.predict(engine.encode_image(image), [Prompt(text="red rectangle")]),
        args.repeat,
    )

    with tempfile.TemporaryDirectory() as folder:
        source = write_clip(folder, args.frames)
        engine.close_session(run_session(engine, source)["session"])  # warm-up
        before = engine.memory().used_bytes
        video = run_session(engine, source)
        during = engine.memory().used_bytes
        session = video.pop("session")
        started = time.perf_counter()
        engine.close_session(session)
        video["close_ms"] = round((time.perf_counter() - started) * 1000, 1)
        del session
        after = engine.memory().used_bytes
    report["video"] = video
    report["memory_mb"] = {
        "before_session": round(before / 2**20),
        "with_session": round(during / 2**20),
        "after_close": round(after / 2**20),
        "after_vs_before": f"{(after - before) / before:+.1%}",
    }
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for sub, val in value.items():
                print(f"  {sub:<26} {val}")
        else:
            print(f"{key:<28} {value}")


if __name__ == "__main__":
    main()
