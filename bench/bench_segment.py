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
import sys
import time

import grpc

sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import discs_scene, jpeg, machine, serve_subprocess, summary  # noqa: E402

from sam3_grpc.config import Settings  # noqa: E402
from sam3_grpc.engines.synthetic import SyntheticEngine  # noqa: E402
from sam3_grpc.media.images import decode_image  # noqa: E402
from sam3_grpc.server import convert  # noqa: E402
from sam3_grpc.types import Prompt  # noqa: E402
from sam3_grpc.v1 import common_pb2, segmentation_service_pb2 as pb  # noqa: E402
from sam3_grpc.v1 import segmentation_service_pb2_grpc as pb_grpc  # noqa: E402


def in_process(engine, data: bytes, settings: Settings) -> pb.SegmentImageResponse:
    image = decode_image(data, max_bytes=settings.max_image_bytes,
                         max_pixels=settings.max_image_pixels)
    results = engine.predict(engine.encode_image(image), [Prompt(text="red")])
    spec = convert.OutputSpec(score_threshold=0.5)
    response = pb.SegmentImageResponse(width=image.shape[1], height=image.shape[0])
    response.results.add(prompt_index=0,
                         detections=convert.render_detections(results[0], spec))
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    data = jpeg(discs_scene())
    settings = Settings(cache_size=0)  # every call encodes, like the in-process baseline
    engine = SyntheticEngine()
    engine.load()
    reference = in_process(engine, data, settings)
    assert len(reference.results[0].detections) == 5

    local = []
    for i in range(args.warmup + args.iterations):
        started = time.perf_counter()
        in_process(engine, data, settings)
        if i >= args.warmup:
            local.append(time.perf_counter() - started)

    server, target = serve_subprocess("--model", "synthetic", "--cache-size", "0")
    request = pb.SegmentImageRequest(image=common_pb2.Image(content=data),
                                     prompts=[common_pb2.Prompt(text="red")])
    remote = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SegmentationServiceStub(channel)
        for i in range(args.warmup + args.iterations):
            started = time.perf_counter()
            reply = stub.SegmentImage(request, timeout=30)
            if i >= args.warmup:
                remote.append(time.perf_counter() - started)
        assert reply.results == reference.results
    server.terminate()
    server.wait(30)

    local_s, remote_s = summary(local), summary(remote)
    result = {
        "machine": machine(),
        "image": "640x480 JPEG, 5 detections, RLE",
        "iterations": args.iterations,
        "in_process": local_s,
        "through_server": remote_s,
        "overhead_median_ms": remote_s["median_ms"] - local_s["median_ms"],
        "ratio_median": remote_s["median_ms"] / local_s["median_ms"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}")
    print(f"{result['image']}, {args.iterations} calls each, synthetic engine, cache off")
    print("| path | median ms | p90 ms | p99 ms |")
    print("|---|---|---|---|")
    for name, s in (("in-process pipeline", local_s), ("through the server", remote_s)):
        print(f"| {name} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} |")
    print(f"server overhead (median): {result['overhead_median_ms']:.2f} ms; "
          f"ratio {result['ratio_median']:.2f}x")


if __name__ == "__main__":
    main()
