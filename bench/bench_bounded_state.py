"""The SAM 3 engine's bounded session state against keeping everything sam3 keeps, in-process.

One session per (length, design), each in a fresh process, interleaved: text prompt on frame 0,
full forward propagation of a generated 640x360 clip on the tiny preset. Reports propagation
frames/s, the session's bytes at the end (`session_nbytes`: every tensor it holds plus the
compact containers), the tracker memories it holds, and the process's peak RSS growth over the
propagation. The bounded design should stay flat with the length; keeping everything grows by a
tracker memory, a mask and a score per object and frame.

    python bench/bench_bounded_state.py --lengths 300 2000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

DESIGNS = {"bounded": True, "keep everything": False}


def child(frames: int, bounded: bool, folder: str) -> dict:
    import psutil

    from sam3_grpc.domain import Prompt
    from sam3_grpc.engines.sam3 import Sam3Engine
    from sam3_grpc.engines.sam3.state import tracked_memories
    from sam3_grpc.media.frames import open_window

    engine = Sam3Engine(preset="sam3-tiny", device="cpu", bounded_state=bounded)
    engine.load()
    window = open_window(folder, engine.frame_preparer())
    session = engine.start_session(window)
    engine.add_prompt(session, 0, Prompt(text="a thing"), None)
    rss_before = psutil.Process().memory_info().rss
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    count = sum(1 for _ in engine.propagate(session, list(range(frames)), []))
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    memories = tracked_memories(session.state)
    budget = engine.session_budget(window.info, window.capacity)
    return {
        "frames": count,
        "fps": round(count / elapsed, 2),
        "objects": len(engine.object_ids(session)),
        "session_mib": round(engine.session_nbytes(session) / 2**20, 2),
        "budget_mib": round((budget.host_bytes + budget.device_bytes) / 2**20, 2),
        "memories": memories,
        "peak_rss_growth_mib": round((max(peak, peak_before) - rss_before) / 2**20, 1),
    }


def write_clip(folder: str, frames: int) -> None:
    """640x360 JPEG frames: a red square sweeping, a blue disc bobbing."""
    import cv2
    import numpy as np

    for i in range(frames):
        image = np.full((360, 640, 3), 25, np.uint8)
        x = 40 + abs((6 * i) % 1000 - 500)
        cv2.rectangle(image, (x, 90), (x + 100, 220), (30, 30, 220), -1)
        cv2.circle(image, (520, 180 + (i % 40) - 20), 40, (220, 60, 30), -1)
        cv2.imwrite(os.path.join(folder, f"{i:05d}.jpg"), image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 2000])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--child", nargs=3, metavar=("FRAMES", "BOUNDED", "FOLDER"))
    args = parser.parse_args()
    if args.child:
        frames, bounded, folder = args.child
        print(json.dumps(child(int(frames), bounded == "1", folder)))
        return
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as workdir:
        folders = {}
        for length in args.lengths:
            folders[length] = os.path.join(workdir, str(length))
            os.mkdir(folders[length])
            write_clip(folders[length], length)
        for round_ in range(args.rounds):
            for length in args.lengths:
                for name, bounded in DESIGNS.items():
                    command = [
                        sys.executable,
                        __file__,
                        "--child",
                        str(length),
                        "1" if bounded else "0",
                        folders[length],
                    ]
                    out = subprocess.run(
                        command, capture_output=True, text=True, env=env, check=True
                    )
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    print(
                        json.dumps({"round": round_, "length": length, "design": name, **row}),
                        flush=True,
                    )


if __name__ == "__main__":
    main()
