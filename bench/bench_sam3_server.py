"""SAM 3 through the server: cold start, SegmentImage uncached vs cached, per-frame propagation.

    python bench/bench_sam3_server.py                                  # tiny preset on the CPU
    python bench/bench_sam3_server.py --checkpoint /models/sam3.pt --device cuda:0   # a GPU

Starts `sam3-grpc serve` in its own process and measures, as a client sees it:
- cold start: process spawn until health reports SERVING (imports, build, weights, warm-up);
- SegmentImage, uncached: a new 1008x756 JPEG every call (image encoder + one text prompt);
- SegmentImage, cached: the same image with a new text each call (the embedding cache skips the
  image encoder); the ratio is the cache speed-up;
- Propagate: per-frame time of a forward propagation over a short clip, one text prompt.
The SAM 3 paper reports 30 ms per image with 100+ objects on one H200: compare the uncached row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import cv2
import grpc
import numpy as np
from common import machine

from sam3_grpc.cli.serve_process import ServeProcess, ServeProcessError
from sam3_grpc.v1 import common_pb2, status_service_pb2, status_service_pb2_grpc
from sam3_grpc.v1 import segmentation_service_pb2 as seg_pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as seg_grpc
from sam3_grpc.v1 import video_service_pb2 as vid_pb
from sam3_grpc.v1 import video_service_pb2_grpc as vid_grpc

PHRASES = [
    "a red box",
    "a blue ball",
    "a car",
    "a person",
    "a dog",
    "a cat",
    "a tree",
    "a chair",
    "a bottle",
    "a cup",
    "a laptop",
    "a phone",
    "a book",
    "a bird",
]


def scene(seed: int, width: int = 1008, height: int = 756) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), rng.integers(20, 80, 3), np.uint8)
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(60, [width - 60, height - 60]))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, (x, y), int(rng.integers(20, 60)), colour, -1)
    return image


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def start(args) -> tuple[ServeProcess, float]:
    """The server and its cold start: spawn until it reports SERVING (its port file)."""
    flags = ["--port", str(args.port), "--device", args.device, "--log-level", "WARNING"]
    flags += ["--checkpoint", args.checkpoint] if args.checkpoint else ["--model", "sam3-tiny"]
    started = time.perf_counter()
    server = ServeProcess(flags)
    try:
        server.wait_ready(args.start_timeout)
    except ServeProcessError as exc:
        server.stop()
        raise SystemExit(str(exc)) from None
    return server, time.perf_counter() - started


def segment(stub, data: bytes, text: str) -> float:
    started = time.perf_counter()
    stub.SegmentImage(
        seg_pb.SegmentImageRequest(
            image=common_pb2.Image(content=data), prompts=[common_pb2.Prompt(text=text)]
        ),
        timeout=600,
    )
    return time.perf_counter() - started


def propagate(channel, frames: int, directory: str) -> float:
    folder = os.path.join(directory, "clip")
    os.makedirs(folder, exist_ok=True)
    for i in range(frames):
        cv2.imwrite(os.path.join(folder, f"{i:05d}.jpg"), scene(1000 + i, 640, 480))
    stub = vid_grpc.VideoServiceStub(channel)
    # Upload the JPEG folder as an MJPG AVI so the bench needs no media root on the server.
    path = os.path.join(directory, "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for i in range(frames):
        writer.write(cv2.imread(os.path.join(folder, f"{i:05d}.jpg")))
    writer.release()
    with open(path, "rb") as handle:
        data = handle.read()

    def requests():
        yield vid_pb.UploadVideoRequest(
            metadata=vid_pb.UploadVideoMetadata(filename="clip.avi", size_bytes=len(data))
        )
        yield vid_pb.UploadVideoRequest(chunk=data)

    session = stub.UploadVideo(requests(), timeout=600).session
    stub.AddPrompt(
        vid_pb.AddPromptRequest(
            session_id=session.session_id, frame_index=0, prompt=common_pb2.Prompt(text="a ball")
        ),
        timeout=600,
    )
    started = time.perf_counter()
    count = sum(
        1
        for _ in stub.Propagate(
            vid_pb.PropagateRequest(session_id=session.session_id), timeout=3600
        )
    )
    elapsed = time.perf_counter() - started
    stub.CloseSession(vid_pb.CloseSessionRequest(session_id=session.session_id))
    assert count == frames
    return elapsed / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="real SAM 3 weights (default: the tiny preset)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--port", type=int, default=0, help="the server's port (0: a free one)")
    parser.add_argument("--start-timeout", type=float, default=900.0, metavar="SECONDS")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args()
    server, cold_s = start(args)
    with server:
        with grpc.insecure_channel(
            server.target, options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel:
            status = status_service_pb2_grpc.StatusServiceStub(channel).GetServerStatus(
                status_service_pb2.GetServerStatusRequest()
            )
            stub = seg_grpc.SegmentationServiceStub(channel)
            segment(stub, jpeg(scene(0)), "warm")
            uncached = [
                segment(stub, jpeg(scene(i + 1)), PHRASES[i % len(PHRASES)])
                for i in range(args.repeat)
            ]
            data = jpeg(scene(99))
            segment(stub, data, "first look")
            cached = [
                segment(stub, data, PHRASES[i % len(PHRASES)] + " again")
                for i in range(args.repeat)
            ]
            with tempfile.TemporaryDirectory() as directory:
                per_frame = propagate(channel, args.frames, directory)
    u, c = statistics.median(uncached) * 1000, statistics.median(cached) * 1000
    print(f"machine: {machine()}")
    print(
        f"model: {status.model_name} ({status_service_pb2.ModelKind.Name(status.model_kind)}) "
        f"on {status.device}; weights: {status.weights_source}"
    )
    print("| measurement | value |")
    print("|---|---|")
    print(
        f"| cold start to SERVING | {cold_s:.1f} s (load {status.load_duration.ToTimedelta().total_seconds():.1f} s, "
        f"warm-up {status.warmup_duration.ToTimedelta().total_seconds():.2f} s) |"
    )
    print(
        f"| SegmentImage 1008x756 JPEG, 1 text prompt, uncached (median of {args.repeat}) "
        f"| {u:.0f} ms |"
    )
    print(f"| SegmentImage, same image, new text, cached encoding | {c:.0f} ms |")
    print(f"| cache speed-up | {u / c:.1f}x |")
    print(
        f"| Propagate, 640x480, {args.frames} frames, 1 text prompt | {per_frame * 1000:.0f} ms "
        "per frame |"
    )
    print("| reference: SAM 3 paper, H200, 100+ objects | 30 ms per image |")


if __name__ == "__main__":
    main()
