"""The SAM 3 engine in-process (no server): build, image and video timings, session memory.

    python bench/bench_sam3_engine.py [--preset sam3-tiny] [--device cpu] [--checkpoint PATH]
                                      [--repeat 10] [--frames 24] [--json]
    python bench/bench_sam3_engine.py --ab [--rounds 3] [--frames 32] [--repeat 5] [--profile]
    python bench/bench_sam3_engine.py --omp-ab [--rounds 3] [--omp-env default NAME=VALUE ...]

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

--ab (sam3-tiny on the CPU): the preset as it was before the CPU speed work and as it is now,
built side by side in one process and run interleaved, round after round, so load on the machine
hits every variant alike:
- "before": video under bf16 autocast (`cpu_bf16=True`), 224 px, cap of 16 objects;
- "float32 only": the same sizes, video in float32 (the compat change alone);
- "after": the defaults (float32 on a CPU without bf16 units, `TINY` sizes).
Each round and variant: segment (encode a new 640x480 image + one text prompt, median of
--repeat) and video (a 640x360 clip, text prompt on frame 0, forward propagation): ms per frame
over the frames after the object cap is reached (wall and process CPU time) and over the whole
run. Medians over --rounds. --profile adds where one "after" propagation spends its time
(cProfile, cumulative seconds per sam3 phase, then the top functions by own time).

--omp-ab: the "after" video in fresh processes, one per OpenMP setting of --omp-env (default:
OpenMP's defaults, and OMP_WAIT_POLICY=PASSIVE), interleaved; libgomp reads them once, when torch
loads.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

from sam3_grpc.domain import (
    Box,
    LabeledBox,
    LabeledPoint,
    Prompt,
)
from sam3_grpc.engines.sam3 import Sam3Engine
from sam3_grpc.engines.sam3.builder import TINY, TinySpec
from sam3_grpc.media.frames import open_window


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


def write_clip(folder: str, frames: int) -> str:
    for i in range(frames):
        cv2.imwrite(os.path.join(folder, f"{i:05d}.jpg"), scene(shift=4 * i)[:, :, ::-1])
    return folder


def run_session(engine: Sam3Engine, source: str) -> dict:
    times: dict = {}
    started = time.perf_counter()
    window = open_window(source, engine.frame_preparer())
    session = engine.start_session(window)
    times["start_ms"] = round((time.perf_counter() - started) * 1000, 1)
    started = time.perf_counter()
    engine.add_prompt(session, 0, Prompt(text="red rectangle"), None)
    times["add_prompt_ms"] = round((time.perf_counter() - started) * 1000, 1)
    frames = list(range(len(window)))
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


# ----- --ab: the tiny preset before and after, interleaved --------------------------------------
BEFORE_SPEC = dataclasses.replace(TINY, resolution=224, max_num_objects=16)
# name: (Sam3Engine's cpu_bf16, tiny_spec); "after" is the engine's default (None: by the CPU).
VARIANTS: dict[str, tuple[bool | None, TinySpec]] = {
    "before (bf16 autocast, 224 px, cap 16)": (True, BEFORE_SPEC),
    "float32 only (224 px, cap 16)": (False, BEFORE_SPEC),
    f"after (default precision, {TINY.resolution} px, cap {TINY.max_num_objects})": (None, TINY),
}
PROMPT_TEXT = "red rectangle"
# sam3 phases of one propagated frame (sam3/model/sam3_video_base.py), for --profile.
PHASES = (
    "run_backbone_and_detection",
    "run_tracker_propagation",
    "run_tracker_update_planning_phase",
    "run_tracker_update_execution_phase",
    "build_outputs",
    "_postprocess_output",
)


def video_clip(folder: str, frames: int, width: int = 640, height: int = 360) -> str:
    for i in range(frames):
        image = scene(width, height, shift=4 * i)
        cv2.imwrite(os.path.join(folder, f"{i:05d}.jpg"), image[:, :, ::-1])
    return folder


def capped_video(engine: Sam3Engine, source: str, profiler=None) -> dict:
    """One session: text prompt on frame 0, forward propagation; per-frame times once every
    object the preset allows exists (the worst case: sam3 runs each object's tracker state),
    and over the whole run."""
    cap = engine._model.max_num_objects
    window = open_window(source, engine.frame_preparer())
    session = engine.start_session(window)
    try:
        engine.add_prompt(session, 0, Prompt(text=PROMPT_TEXT), None)
        frames = list(range(len(window)))
        marks = []  # (wall, cpu, objects) after each output
        start = (time.perf_counter(), time.process_time())
        if profiler is not None:
            profiler.enable()
        for _ in engine.propagate(session, frames, []):
            marks.append(
                (time.perf_counter(), time.process_time(), len(engine.object_ids(session)))
            )
        if profiler is not None:
            profiler.disable()
    finally:
        engine.close_session(session)
    # sam3 withholds `hotstart_delay` outputs: output i arrives once frame i + delay - 1 is
    # computed, and the last computed frame releases the remaining `delay` outputs at once. So
    # between an output and the first output of that final burst lie as many computed frames as
    # outputs, and the object count read at an output is that of the frames computed so far.
    last = len(marks) - max(1, engine._model.hotstart_delay)
    capped = next((i for i, m in enumerate(marks) if m[2] >= cap), None)
    result = {
        "all_ms": (marks[-1][0] - start[0]) / len(marks) * 1000,
        "objects": marks[-1][2],
        "cap": cap,
        "capped_frames": 0,
        "capped_ms": float("nan"),
        "capped_cpu_ms": float("nan"),
    }
    if capped is not None and last - capped >= 3:
        n = last - capped
        result["capped_frames"] = n
        result["capped_ms"] = (marks[last][0] - marks[capped][0]) / n * 1000
        result["capped_cpu_ms"] = (marks[last][1] - marks[capped][1]) / n * 1000
    return result


def segment_ms(engine: Sam3Engine, repeat: int, seed: int) -> float:
    """Encode a new 640x480 image and answer one text prompt (an uncached SegmentImage)."""
    samples = []
    for i in range(repeat):
        image = scene(shift=(seed * repeat + i) % 200)
        started = time.perf_counter()
        engine.predict(engine.encode_image(image), [Prompt(text=PROMPT_TEXT)])
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def ab_main(args) -> None:
    import torch

    engines = {}
    for name, (bf16, spec) in VARIANTS.items():
        engine = Sam3Engine(preset="sam3-tiny", device="cpu", cpu_bf16=bf16, tiny_spec=spec)
        engine.load()
        engine.warmup()
        engines[name] = engine
    logging_quiet()
    results: dict[str, list[dict]] = {name: [] for name in engines}
    with tempfile.TemporaryDirectory() as folder:
        source = video_clip(folder, args.frames)
        print(f"machine: {machine_line()}")
        print(
            f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY', '(default)')}, load average at start "
            f"{os.getloadavg()[0]:.1f}; clip 640x360, {args.frames} frames, text on frame 0"
        )
        for round_index in range(args.rounds):
            for name, engine in engines.items():
                row = capped_video(engine, source)
                row["segment_ms"] = segment_ms(engine, args.repeat, round_index)
                row["load"] = os.getloadavg()[0]
                results[name].append(row)
                print(
                    f"round {round_index} {name}: video {row['capped_ms']:.0f} ms/frame at the "
                    f"cap ({row['capped_cpu_ms']:.0f} ms CPU), {row['all_ms']:.0f} ms/frame "
                    f"overall; segment {row['segment_ms']:.0f} ms; load {row['load']:.1f}",
                    flush=True,
                )
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        print()
        print(
            "| variant | video ms/frame, cap reached | frames/s | CPU ms/frame | "
            "ms/frame, whole run | segment ms |"
        )
        print("|---|---|---|---|---|---|")
        for name, rows in results.items():

            def med(key: str, rows=rows) -> float:
                return statistics.median(r[key] for r in rows)

            print(
                f"| {name} | {med('capped_ms'):.0f} | {1000 / med('capped_ms'):.1f} | "
                f"{med('capped_cpu_ms'):.0f} | {med('all_ms'):.0f} | {med('segment_ms'):.0f} |"
            )
        print(f"(medians of {args.rounds} rounds)")
        if args.profile:
            profile_after(engines[list(engines)[-1]], source)


def profile_after(engine: Sam3Engine, source: str) -> None:
    profiler = cProfile.Profile()
    row = capped_video(engine, source, profiler)
    stats = pstats.Stats(profiler)
    frames = len(os.listdir(source))
    print()
    print(f"profile of one 'after' propagation ({frames} frames, {row['objects']} objects):")
    print("| sam3 phase (per frame) | ms |")
    print("|---|---|")
    for (filename, _, function), entry in stats.stats.items():
        if function in PHASES and "sam3/model" in filename:
            print(f"| {function} | {entry[3] / frames * 1000:.1f} |")
    print()
    stats.sort_stats("tottime").print_stats(15)


def logging_quiet() -> None:
    """sam3 warns on every frame once the object cap is reached: not benchmark output."""
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name == "sam3" or name.startswith("sam3."):
            logging.getLogger(name).setLevel(logging.ERROR)


def machine_line() -> str:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import machine

    return machine()


# ----- --omp-ab: OpenMP wait policy, in fresh processes -----------------------------------------
def omp_ab_main(args) -> None:
    results: dict[str, list[float]] = {setting: [] for setting in args.omp_env}
    print(f"machine: {machine_line()}")
    for _ in range(args.rounds):
        for setting in results:
            env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
            if setting != "default":
                name, _, value = setting.partition("=")
                env[name] = value
            command = [sys.executable, __file__, "--omp-child", "--frames", str(args.frames)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            value = json.loads(out.stdout.strip().splitlines()[-1])
            results[setting].append(value["capped_ms"])
            print(
                f"{setting}: {value['capped_ms']:.0f} ms/frame at the cap "
                f"({value['capped_cpu_ms']:.0f} ms CPU); load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    for setting, values in results.items():
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"{setting}: median {statistics.median(values):.0f} ms/frame (runs: {runs})")


OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def omp_child(args) -> None:
    engine = Sam3Engine(preset="sam3-tiny", device="cpu")
    engine.load()
    engine.warmup()
    logging_quiet()
    with tempfile.TemporaryDirectory() as folder:
        source = video_clip(folder, args.frames)
        capped_video(engine, source)  # warm-up
        print(json.dumps(capped_video(engine, source)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="sam3-tiny", choices=("sam3", "sam3-tiny"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--ab", action="store_true", help="tiny preset before/after, interleaved")
    parser.add_argument("--omp-ab", action="store_true", help="OpenMP wait policies, interleaved")
    parser.add_argument("--omp-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--omp-env",
        nargs="+",
        default=["default", "OMP_WAIT_POLICY=PASSIVE"],
        help="--omp-ab: OpenMP settings to compare, NAME=VALUE or 'default'",
    )
    parser.add_argument("--rounds", type=int, default=3, help="--ab / --omp-ab rounds")
    parser.add_argument("--profile", action="store_true", help="--ab: profile one 'after' run")
    args = parser.parse_args()
    if args.ab or args.omp_ab or args.omp_child:
        if args.frames == parser.get_default("frames"):
            args.frames = 32  # the before variant reaches its cap of 16 around frame 16
        if args.repeat == parser.get_default("repeat"):
            args.repeat = 5
        if args.omp_child:
            omp_child(args)
        elif args.ab:
            ab_main(args)
        else:
            omp_ab_main(args)
        return

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
