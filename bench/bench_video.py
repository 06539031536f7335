"""Video service benchmarks against a real `sam3-grpc serve --model synthetic` process.

    python bench/bench_video.py [--upload-mb 256] [--frames 300]

1. Upload throughput (MiB/s) of >= 256 MiB in 1 MiB chunks, and the server's RSS growth while it
   streams to disk (sampled every 20 ms): the transfer alone (random bytes, which the probe then
   refuses in milliseconds) and end to end with a real video (the probe decodes its first and
   last frames; a lossless noise video makes that slow on purpose: a worst case).
2. Propagate streaming rate: 1280x720, 5 objects, RLE masks, frames per second the service
   sustains to one reader.
3. SegmentImage latency while a propagation runs vs idle (640x480 JPEG, 5 detections).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import threading
import time

import cv2
import grpc
import numpy as np
import psutil
from common import discs_scene, jpeg, machine

from sam3_grpc.cli.serve_process import ServeProcess
from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as seg_pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as seg_grpc
from sam3_grpc.v1 import video_service_pb2 as pb
from sam3_grpc.v1 import video_service_pb2_grpc as pb_grpc

MiB = 1024 * 1024


def noise_video(path: str, min_bytes: int) -> str:
    """A lossless AVI of noise frames (incompressible), at least min_bytes long."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"FFV1"), 25, (1280, 720))
    frame = rng.integers(0, 256, (720, 1280, 3), np.uint8)
    while not os.path.exists(path) or os.path.getsize(path) < min_bytes:
        writer.write(np.roll(frame, int(rng.integers(0, 1280)), axis=1))
        if os.path.getsize(path) >= min_bytes:
            break
    writer.release()
    return path


def discs_video(path: str, frames: int, width=1280, height=720, objects=5) -> str:
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255)]  # BGR
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30, (width, height))
    for i in range(frames):
        frame = np.full((height, width, 3), 30, np.uint8)
        for k in range(objects):
            x = 100 + k * 240 + int(40 * np.sin((i + 7 * k) / 15))
            y = 200 + (k % 2) * 300 + int(30 * np.cos((i + 3 * k) / 20))
            cv2.circle(frame, (x, y), 60, colours[k], -1)
        writer.write(frame)
    writer.release()
    return path


def bench_upload(target: str, pid: int, path: str) -> dict:
    """Uploads `path` in 1 MiB chunks; returns throughput and the server's RSS growth."""
    size = os.path.getsize(path)
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 * MiB), b""):
            sha.update(block)

    def requests():
        yield pb.UploadVideoRequest(
            metadata=pb.UploadVideoMetadata(
                filename=os.path.basename(path), size_bytes=size, sha256=sha.hexdigest()
            )
        )
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(MiB), b""):
                yield pb.UploadVideoRequest(chunk=block)

    process = psutil.Process(pid)
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    outcome = "session opened"
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.VideoServiceStub(channel)
        started = time.perf_counter()
        try:
            reply = stub.UploadVideo(requests(), timeout=600)
        except grpc.RpcError as error:  # bytes that are no video: refused after the transfer
            outcome = f"{error.code().name} after the transfer"
        else:
            stub.CloseSession(pb.CloseSessionRequest(session_id=reply.session.session_id))
        elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "bytes": size,
        "seconds": elapsed,
        "mb_per_s": size / MiB / elapsed,
        "rss_growth_mb": (peak[0] - baseline) / MiB,
        "outcome": outcome,
    }


def bench_propagate(target: str, video_name: str, frames: int) -> dict:
    with grpc.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 * MiB)]
    ) as channel:
        stub = pb_grpc.VideoServiceStub(channel)
        session = stub.StartSession(pb.StartSessionRequest(video_path=video_name)).session
        for colour in ("red", "green", "blue", "yellow", "magenta"):
            stub.AddPrompt(
                pb.AddPromptRequest(
                    session_id=session.session_id,
                    frame_index=0,
                    prompt=common_pb2.Prompt(text=colour),
                )
            )
        started = time.perf_counter()
        count = objects = 0
        for reply in stub.Propagate(pb.PropagateRequest(session_id=session.session_id)):
            count += 1
            objects += len(reply.frame.objects)
        elapsed = time.perf_counter() - started
        stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))
    assert count == frames and objects == 5 * frames, (count, objects)
    return {"frames": count, "seconds": elapsed, "frames_per_s": count / elapsed}


def engine_rate(path: str, frames: int) -> float:
    """Frames/s of the synthetic engine alone, in this process, on the same video and prompts
    (OpenCV on one thread, as in the server): the ceiling the service can reach."""
    from sam3_grpc.domain import Prompt
    from sam3_grpc.engines.synthetic import SyntheticEngine
    from sam3_grpc.media.frames import open_window

    cv2.setNumThreads(1)
    engine = SyntheticEngine()
    state = engine.start_session(open_window(path, engine.frame_preparer(), capacity=16))
    for colour in ("red", "green", "blue", "yellow", "magenta"):
        engine.add_prompt(state, 0, Prompt(text=colour), None)
    started = time.perf_counter()
    count = sum(1 for _ in engine.propagate(state, list(range(frames)), []))
    elapsed = time.perf_counter() - started
    engine.close_session(state)
    return count / elapsed


def bench_interleaving(target: str, video_name: str, iterations: int) -> dict:
    request = seg_pb.SegmentImageRequest(
        image=common_pb2.Image(content=jpeg(discs_scene())), prompts=[common_pb2.Prompt(text="red")]
    )

    def latencies(stub) -> list[float]:
        samples = []
        for _ in range(iterations):
            started = time.perf_counter()
            stub.SegmentImage(request, timeout=30)
            samples.append(time.perf_counter() - started)
        return samples

    with grpc.insecure_channel(target) as channel:
        seg_stub = seg_grpc.SegmentationServiceStub(channel)
        latencies(seg_stub)  # warm up
        idle = latencies(seg_stub)
        stop = threading.Event()

        def propagate_forever():
            with grpc.insecure_channel(target) as own:
                stub = pb_grpc.VideoServiceStub(own)
                session = stub.StartSession(pb.StartSessionRequest(video_path=video_name)).session
                stub.AddPrompt(
                    pb.AddPromptRequest(
                        session_id=session.session_id, prompt=common_pb2.Prompt(text="red")
                    )
                )
                while not stop.is_set():
                    for _ in stub.Propagate(pb.PropagateRequest(session_id=session.session_id)):
                        if stop.is_set():
                            break
                stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))

        worker = threading.Thread(target=propagate_forever, daemon=True)
        worker.start()
        time.sleep(1.0)
        busy = latencies(seg_stub)
        stop.set()
        worker.join(30)
    idle_ms, busy_ms = statistics.median(idle) * 1000, statistics.median(busy) * 1000
    return {"idle_median_ms": idle_ms, "busy_median_ms": busy_ms, "ratio": busy_ms / idle_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upload-mb", type=int, default=256)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as media:
        print(f"machine: {machine()}")
        noise = noise_video(os.path.join(media, "noise.avi"), args.upload_mb * MiB)
        discs_video(os.path.join(media, "discs.mp4"), args.frames)
        with ServeProcess(
            [
                "--model",
                "synthetic",
                "--media-root",
                media,
                "--max-frames",
                "100000",
                "--max-upload-bytes",
                "4G",
            ]
        ) as server:
            target, pid = server.wait_ready(120).target, server.pid
            raw = os.path.join(media, "random.bin")
            with open(raw, "wb") as handle:
                for _ in range(args.upload_mb):
                    handle.write(os.urandom(MiB))
            os.sync()  # the generated files' write-back must not compete with the uploads
            bench_upload(target, pid, raw)  # warm-up: the first upload sizes grpc's buffers
            for label, path in (
                ("transfer only (random bytes, refused by the probe)", raw),
                ("end to end (lossless AVI: transfer, probe, session)", noise),
            ):
                runs = [bench_upload(target, pid, path) for _ in range(3)]
                rates = sorted(r["mb_per_s"] for r in runs)
                growth = max(r["rss_growth_mb"] for r in runs)
                print(
                    f"upload, {label}: {runs[0]['bytes'] / MiB:.0f} MiB, 3 runs: median "
                    f"{rates[1]:.0f} MiB/s (min {rates[0]:.0f}, max {rates[2]:.0f}); server RSS "
                    f"growth at most {growth:.1f} MiB; {runs[0]['outcome']}"
                )
            for _ in range(3):
                rate = bench_propagate(target, "discs.mp4", args.frames)
                ceiling = engine_rate(os.path.join(media, "discs.mp4"), args.frames)
                print(
                    f"propagate: 1280x720, 5 objects, RLE: {rate['frames']} frames in "
                    f"{rate['seconds']:.2f} s = {rate['frames_per_s']:.0f} frames/s through "
                    f"the service; the engine alone: {ceiling:.0f} frames/s"
                )
            mix = bench_interleaving(target, "discs.mp4", args.iterations)
            print(
                f"SegmentImage median: idle {mix['idle_median_ms']:.2f} ms, during "
                f"propagation {mix['busy_median_ms']:.2f} ms (ratio {mix['ratio']:.2f})"
            )


if __name__ == "__main__":
    main()
