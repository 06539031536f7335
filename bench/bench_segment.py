"""SegmentImage through the server vs the same work in-process, same engine, same images.

    python bench/bench_segment.py [--iterations 300] [--latency-ms 0]

The synthetic engine segments 5 discs in a 640x480 JPEG; masks are returned as COCO RLE. The
in-process baseline runs exactly the server's pipeline (decode, engine, filter, RLE encode,
response message) in one thread without gRPC; the server runs in its own process, as deployed.
The difference is what the service adds: transport, (de)serialisation, the hops to the CPU pool
and the device thread.
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import grpc
from common import discs_scene, jpeg, machine, summary
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sam3_grpc.cli.serve_process import ServeProcess
from sam3_grpc.config import Settings
from sam3_grpc.domain import Prompt
from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.media.images import ImageLimits, decode_image
from sam3_grpc.server import convert
from sam3_grpc.v1 import common_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as pb_grpc


def in_process(engine, data: bytes, settings: Settings) -> pb.SegmentImageResponse:
    limits = ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        max_scans=settings.max_image_scans,
    )
    image = decode_image(data, limits)
    results = engine.predict(engine.encode_image(image), [Prompt(text="red")])
    spec = convert.OutputSpec(score_threshold=0.5)
    response = pb.SegmentImageResponse(width=image.shape[1], height=image.shape[0])
    response.results.add(prompt_index=0, detections=convert.render_detections(results[0], spec))
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    # The server runs OpenCV with one thread per call (--opencv-threads 1); do the same here so
    # both sides do identical engine work and the difference is the service alone.
    cv2.setNumThreads(1)
    data = jpeg(discs_scene())
    settings = Settings(cache_size=0)  # every call encodes, like the in-process baseline
    engine = SyntheticEngine()
    engine.load()
    reference = in_process(engine, data, settings)
    assert len(reference.results[0].detections) == 5

    with ServeProcess(["--model", "synthetic", "--cache-size", "0"]) as server:
        target = server.wait_ready(120).target
        request = pb.SegmentImageRequest(
            image=common_pb2.Image(content=data), prompts=[common_pb2.Prompt(text="red")]
        )
        local, remote, bare, remote_warm, bare_warm = [], [], [], [], []
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.SegmentationServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            ping = health_pb2.HealthCheckRequest()
            # Alternating: in-process call, server call, bare gRPC call; drifts of this shared VM
            # hit all three alike, and the server's threads are as cold as between real requests.
            for i in range(args.warmup + args.iterations):
                t0 = time.perf_counter()
                in_process(engine, data, settings)
                t1 = time.perf_counter()
                reply = stub.SegmentImage(request, timeout=30)
                t2 = time.perf_counter()
                health.Check(ping, timeout=30)
                t3 = time.perf_counter()
                if i >= args.warmup:
                    local.append(t1 - t0)
                    remote.append(t2 - t1)
                    bare.append(t3 - t2)
            assert reply.results == reference.results
            # Back to back: a client sending one request after another (warm threads).
            for samples, call in (
                (remote_warm, lambda: stub.SegmentImage(request, timeout=30)),
                (bare_warm, lambda: health.Check(ping, timeout=30)),
            ):
                for i in range(args.warmup + args.iterations):
                    started = time.perf_counter()
                    call()
                    if i >= args.warmup:
                        samples.append(time.perf_counter() - started)

    rows = {
        "in_process": summary(local),
        "server_alternating": summary(remote),
        "bare_grpc_alternating": summary(bare),
        "server_back_to_back": summary(remote_warm),
        "bare_grpc_back_to_back": summary(bare_warm),
    }
    overhead = rows["server_alternating"]["median_ms"] - rows["in_process"]["median_ms"]
    beyond_bare = overhead - rows["bare_grpc_alternating"]["median_ms"]
    result = {
        "machine": machine(),
        "image": "640x480 JPEG, 5 detections, RLE",
        "iterations": args.iterations,
        "rows": rows,
        "overhead_median_ms": overhead,
        "overhead_beyond_bare_grpc_ms": beyond_bare,
        "ratio_median": rows["server_alternating"]["median_ms"] / rows["in_process"]["median_ms"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}")
    print(
        f"{result['image']}, {args.iterations} calls each, synthetic engine, cache off, "
        "server in its own process"
    )
    print("| path | median ms | p90 ms | p99 ms |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name.replace('_', ' ')} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | "
            f"{row['p99_ms']:.2f} |"
        )
    print(
        f"server overhead over in-process (medians, alternating): {overhead:.2f} ms, "
        f"ratio {result['ratio_median']:.2f}x; of which a bare gRPC round trip is "
        f"{rows['bare_grpc_alternating']['median_ms']:.2f} ms, leaving {beyond_bare:.2f} ms "
        "for the service itself"
    )


if __name__ == "__main__":
    main()
