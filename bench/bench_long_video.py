"""Long videos in bounded memory and time: one session per length, full forward propagation.

    python bench/bench_long_video.py --model synthetic --lengths 300 3000 20000
    python bench/bench_long_video.py --model sam3-tiny --lengths 300 3000 20000
    python bench/bench_long_video.py --model synthetic --lengths 300 3000 \\
        --baseline-tree /tmp/sam3-grpc-before          # A/B against an older checkout

For each length, a generated 640x360 H.264 video (three coloured discs moving across a grey
background; cached in --workdir) is put in a media root; a fresh `sam3-grpc serve` process
(ServeProcess, as deployed) opens a session on it (StartSession), takes a text prompt on frame 0
and propagates forward over every frame with masks as RLE, read as they stream. Reported per
length: StartSession latency, frames/s of the propagation, the server's resident memory (psutil,
sampled every 50 ms) before the session and at its peak, the session's own accounting
(GetSession.memory_bytes, at the end) and what it reserved against the memory budget.

With --baseline-tree, the same runs are made, interleaved length by length, by the server of
another checkout (its `sam3_grpc` package first on PYTHONPATH), e.g. the commit before the lazy
frame source, to compare designs in one run on one machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import av
import grpc
import numpy as np
import psutil
from common import machine

from sam3_grpc.cli.serve_process import ServeProcess
from sam3_grpc.v1 import common_pb2, status_service_pb2
from sam3_grpc.v1 import status_service_pb2_grpc as status_grpc
from sam3_grpc.v1 import video_service_pb2 as pb
from sam3_grpc.v1 import video_service_pb2_grpc as pb_grpc

MiB = 1024 * 1024
WIDTH, HEIGHT, FPS = 640, 360, 30
DISCS = (((220, 40, 40), 30), ((40, 200, 60), 24), ((40, 80, 220), 20))  # colour, radius


def disc_frame(index: int) -> np.ndarray:
    frame = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    for k, (colour, radius) in enumerate(DISCS):
        span = WIDTH - 2 * radius
        x = radius + (index * (3 + k) + 97 * k) % (2 * span)
        x = x if x < radius + span else 2 * (radius + span) - x  # bounce off the edges
        y = HEIGHT // 4 * (k + 1)
        frame[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = colour
    return frame


def make_video(path: str, frames: int) -> str:
    """H.264 (ultrafast, a key frame every 250 frames) written once, then reused."""
    if os.path.exists(path):
        return path
    partial = path + ".part"
    with av.open(partial, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "250", "bf": "0"}
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(disc_frame(index), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(partial, path)
    return path


class RssSampler:
    """Peak resident memory of a process, sampled on a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def now(self) -> int:
        return int(self.process.memory_info().rss)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.peak = max(self.peak, self.now())
            except psutil.NoSuchProcess:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


@dataclass
class Run:
    design: str
    frames: int
    start_session_s: float
    add_prompt_s: float
    frames_per_s: float
    rss_before: int
    rss_peak: int
    session_bytes: int
    reserved_bytes: int

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


# Older checkouts have no --port-file: this sitecustomize (on the baseline's PYTHONPATH) takes
# the flag off the command line and writes the same file once the old server has started.
BASELINE_SHIM = """
import json, os, sys
if "--port-file" in sys.argv:
    at = sys.argv.index("--port-file")
    path = sys.argv[at + 1]
    del sys.argv[at : at + 2]
    from sam3_grpc.server import app

    started = app.Sam3Server.start

    async def start_and_tell(self, *args, **kwargs):
        await started(self, *args, **kwargs)
        info = {"port": self.port, "host": "127.0.0.1", "pid": os.getpid(), "metrics_port": 0}
        with open(path + ".tmp", "w") as handle:
            json.dump(info, handle)
        os.replace(path + ".tmp", path)

    app.Sam3Server.start = start_and_tell
"""


def baseline_path(tree: str, workdir: str) -> str:
    shim = os.path.join(workdir, "baseline-shim")
    os.makedirs(shim, exist_ok=True)
    with open(os.path.join(shim, "sitecustomize.py"), "w") as handle:
        handle.write(BASELINE_SHIM)
    return os.pathsep.join([shim, tree, os.environ.get("PYTHONPATH", "")])


def one_run(design: str, tree: str | None, model: str, media: str, video: str, frames: int, args):
    env = {}
    if tree:
        env["PYTHONPATH"] = baseline_path(tree, args.workdir)
    serve_args = ["--model", model, "--media-root", media, "--max-frames", str(max(frames, 20000))]
    serve_args += ["--session-ttl", "36000", "--job-timeout", "3600", *args.serve_arg]
    with ServeProcess(serve_args, env=env) as server:
        server.wait_ready(args.start_timeout)
        channel = grpc.insecure_channel(server.target)
        video_stub = pb_grpc.VideoServiceStub(channel)
        status_stub = status_grpc.StatusServiceStub(channel)
        time.sleep(1.0)  # let the warm-up's transient memory settle
        sampler = RssSampler(server.pid)
        rss_before = sampler.now()
        sampler.peak = rss_before
        started = time.perf_counter()
        session = video_stub.StartSession(
            pb.StartSessionRequest(video_path=os.path.basename(video)), timeout=3600
        ).session
        start_session_s = time.perf_counter() - started
        assert session.video.frame_count == frames, (session.video.frame_count, frames)
        reserved = 0
        status = status_stub.GetServerStatus(status_service_pb2.GetServerStatusRequest())
        if status.HasField("session_memory_budget"):
            budget = status.session_memory_budget
            reserved = budget.host_reserved_bytes + budget.device_reserved_bytes
        started = time.perf_counter()
        video_stub.AddPrompt(
            pb.AddPromptRequest(
                session_id=session.session_id,
                frame_index=0,
                prompt=common_pb2.Prompt(text=args.prompt),
                output=common_pb2.OutputOptions(mask_encoding=common_pb2.MASK_ENCODING_NONE),
            ),
            timeout=3600,
        )
        add_prompt_s = time.perf_counter() - started
        started = time.perf_counter()
        count = 0
        last_report = started
        for _reply in video_stub.Propagate(
            pb.PropagateRequest(session_id=session.session_id), timeout=36000
        ):
            count += 1
            now = time.perf_counter()
            if now - last_report > 60:
                print(
                    f"  {design} {frames}: {count} frames, {count / (now - started):.1f}/s",
                    file=sys.stderr,
                )
                last_report = now
        elapsed = time.perf_counter() - started
        assert count == frames, (count, frames)
        held = video_stub.GetSession(
            pb.GetSessionRequest(session_id=session.session_id), timeout=60
        ).session.memory_bytes
        peak = sampler.stop()
        video_stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id), timeout=60)
        channel.close()
    return Run(
        design,
        frames,
        start_session_s,
        add_prompt_s,
        count / elapsed,
        rss_before,
        peak,
        held,
        reserved,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic", choices=["synthetic", "sam3-tiny"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 3000, 20000])
    parser.add_argument("--repeat", type=int, default=1, help="runs per length and design")
    parser.add_argument("--prompt", default="red")
    parser.add_argument(
        "--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "sam3-grpc-bench")
    )
    parser.add_argument("--baseline-tree", help="another checkout whose server is the baseline")
    parser.add_argument(
        "--baseline-max-frames",
        type=int,
        default=3000,
        help="lengths above this are not run on the baseline (it may not fit)",
    )
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="an extra flag for the servers, e.g. --serve-arg=--max-objects=1 (repeatable)",
    )
    args = parser.parse_args()

    media = os.path.join(args.workdir, "media")
    os.makedirs(media, exist_ok=True)
    videos = {}
    for frames in args.lengths:
        started = time.perf_counter()
        videos[frames] = make_video(os.path.join(media, f"discs_{frames}.mp4"), frames)
        size = os.path.getsize(videos[frames]) / MiB
        print(
            f"video {frames} frames: {size:.1f} MiB ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )

    designs = [("this tree", None)]
    if args.baseline_tree:
        designs.append(("baseline", os.path.abspath(args.baseline_tree)))
    runs: list[Run] = []
    for frames in args.lengths:
        for _ in range(args.repeat):
            for design, tree in designs:  # interleaved: same machine state for both
                if tree and frames > args.baseline_max_frames:
                    continue
                run = one_run(design, tree, args.model, media, videos[frames], frames, args)
                print(f"  {run}", file=sys.stderr)
                runs.append(run)

    print(f"### Long videos, `--model {args.model}`\n")
    print(
        f"Machine: {machine()}. 640x360 H.264, text prompt on frame 0, full forward "
        "propagation, masks as RLE; one fresh server process per run.\n"
    )
    print(
        "| design | frames | StartSession | AddPrompt | frames/s | RSS before | peak RSS growth "
        "| session accounting | reserved (budget) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for design, _ in designs:
        for frames in args.lengths:
            mine = [r for r in runs if r.design == design and r.frames == frames]
            if not mine:
                continue
            med = lambda values: statistics.median(values)  # noqa: E731 - local shorthand
            print(
                f"| {design} | {frames:,} | {med(r.start_session_s for r in mine) * 1000:.0f} ms "
                f"| {med(r.add_prompt_s for r in mine):.2f} s "
                f"| {med(r.frames_per_s for r in mine):.1f} "
                f"| {med(r.rss_before for r in mine) / MiB:.0f} MiB "
                f"| {med(r.growth for r in mine) / MiB:.1f} MiB "
                f"| {med(r.session_bytes for r in mine) / MiB:.1f} MiB "
                f"| {med(r.reserved_bytes for r in mine) / MiB:.1f} MiB |"
            )


if __name__ == "__main__":
    main()
