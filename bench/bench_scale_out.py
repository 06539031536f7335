"""Scale-out behind Envoy: throughput with 1, 2 and 3 replicas, and what Envoy adds to latency.

    python bench/bench_scale_out.py [--latency-ms 20] [--window-s 4] [--rounds 3] [--pairs 300]

Three clusters run at once, each started as an operator would (`sam3-grpc cluster --replicas N
--device cpu -- --model synthetic --synthetic-latency-ms 20`): every replica is its own process
whose "device" takes 20 ms per image (a device-bound model), with little CPU work per call (a
160x120 PNG, one text prompt, no masks in the reply), so the two cores of this machine are not
what limits N replicas.

- Throughput: one client thread keeps 4 calls per replica in flight through Envoy for
  --window-s seconds; windows of the three clusters are interleaved (1, 2, 3, 1, 2, 3, ...)
  over --rounds rounds so drift hits all alike; the median window is reported. Every image is
  distinct (no embedding-cache hits). Ideal: 50 calls/s per replica.
- Envoy's added latency: on the 1-replica cluster, single calls alternate between Envoy and a
  direct connection to the same replica (A/B interleaved, order swapped every pair), for
  SegmentImage (20 ms device time) and GetServerStatus (no device work).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import grpc
import numpy as np
from common import machine

from sam3_grpc.v1 import common_pb2, status_service_pb2, status_service_pb2_grpc
from sam3_grpc.v1 import segmentation_service_pb2 as pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as pb_grpc

CALLS_IN_FLIGHT_PER_REPLICA = 4


def start_cluster(
    replicas: int, latency_ms: float, directory: str
) -> tuple[subprocess.Popen, dict]:
    port_file = os.path.join(directory, f"cluster-{replicas}.json")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sam3_grpc.cli",
            "cluster",
            "--replicas",
            str(replicas),
            "--device",
            "cpu",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--port-file",
            port_file,
            "--drain-delay",
            "0",
            "--envoy-concurrency",
            "1",
            "--",
            "--model",
            "synthetic",
            "--synthetic-latency-ms",
            str(latency_ms),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not os.path.exists(port_file):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {replicas}-replica cluster did not start")
        time.sleep(0.05)
    with open(port_file) as handle:
        return process, json.load(handle)


def requests(count: int, seed: int) -> list[pb.SegmentImageRequest]:
    """Distinct small PNGs (a red square at a varying place), encoded up front."""
    rng = np.random.default_rng(seed)
    made = []
    for _ in range(count):
        image = np.zeros((120, 160, 3), np.uint8)
        x, y = (int(v) for v in rng.integers(0, 100, 2))
        image[y : y + 20, x : x + 40] = (0, 0, 255)  # BGR red
        image[-1, -1] = tuple(int(v) for v in rng.integers(0, 256, 3))
        ok, data = cv2.imencode(".png", image)
        assert ok
        made.append(
            pb.SegmentImageRequest(
                image=common_pb2.Image(content=data.tobytes()),
                prompts=[common_pb2.Prompt(text="red")],
                output=common_pb2.OutputOptions(mask_encoding=common_pb2.MASK_ENCODING_NONE),
            )
        )
    return made


def throughput(stub, batch: list, window: int, seconds: float) -> tuple[float, int]:
    """Calls/s with `window` calls always in flight; (rate, errors)."""
    in_flight: collections.deque = collections.deque()
    sent = done = errors = 0
    started = time.perf_counter()
    end = started + seconds
    while True:
        now = time.perf_counter()
        while now < end and len(in_flight) < window:
            in_flight.append(stub.SegmentImage.future(batch[sent % len(batch)], timeout=30))
            sent += 1
        if not in_flight:
            break
        try:
            in_flight.popleft().result()
            done += 1
        except grpc.RpcError:
            errors += 1
    return done / (time.perf_counter() - started), errors


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[int(q * (len(ordered) - 1))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=300)
    args = parser.parse_args()
    print(machine())
    directory = tempfile.mkdtemp(prefix="bench-scale-out-")
    clusters = {}
    try:
        for n in (1, 2, 3):
            clusters[n] = start_cluster(n, args.latency_ms, directory)
        channels = {
            n: grpc.insecure_channel(f"127.0.0.1:{info['port']}")
            for n, (_, info) in clusters.items()
        }
        batch = requests(4000, seed=1)
        # Warm every channel and Envoy connection pool.
        for n, channel in channels.items():
            throughput(pb_grpc.SegmentationServiceStub(channel), batch, 4 * n, 0.5)

        rates: dict[int, list[float]] = {1: [], 2: [], 3: []}
        failed = 0
        for _ in range(args.rounds):
            for n in (1, 2, 3):
                stub = pb_grpc.SegmentationServiceStub(channels[n])
                rate, errors = throughput(
                    stub, batch, CALLS_IN_FLIGHT_PER_REPLICA * n, args.window_s
                )
                rates[n].append(rate)
                failed += errors
        print(
            f"\nThroughput through Envoy ({args.latency_ms:.0f} ms device time per image, "
            f"{CALLS_IN_FLIGHT_PER_REPLICA} calls in flight per replica, median of "
            f"{args.rounds} windows of {args.window_s:.0f} s; {failed} failed calls)\n"
        )
        print("| replicas | calls/s (median) | windows | scaling vs 1 replica | ideal |")
        print("|---|---|---|---|---|")
        base = statistics.median(rates[1])
        for n in (1, 2, 3):
            median = statistics.median(rates[n])
            windows = ", ".join(f"{r:.1f}" for r in rates[n])
            print(f"| {n} | {median:.1f} | {windows} | {median / base:.2f}x | {n}.00x |")

        # Envoy vs direct, same replica, interleaved.
        _, info = clusters[1]
        direct = grpc.insecure_channel(f"127.0.0.1:{info['replicas'][0]['port']}")
        paths = {"envoy": channels[1], "direct": direct}
        print(f"\nLatency, 1 replica, {args.pairs} interleaved pairs (ms)\n")
        print("| call | path | p50 | p90 | p99 |")
        print("|---|---|---|---|---|")
        for name in ("SegmentImage", "GetServerStatus"):
            samples: dict[str, list[float]] = {"envoy": [], "direct": []}
            for i in range(args.pairs):
                order = ("envoy", "direct") if i % 2 == 0 else ("direct", "envoy")
                for path in order:
                    channel = paths[path]
                    started = time.perf_counter()
                    if name == "SegmentImage":
                        pb_grpc.SegmentationServiceStub(channel).SegmentImage(
                            batch[(2 * i + (path == "envoy")) % len(batch)], timeout=10
                        )
                    else:
                        status_service_pb2_grpc.StatusServiceStub(channel).GetServerStatus(
                            status_service_pb2.GetServerStatusRequest(), timeout=10
                        )
                    samples[path].append(time.perf_counter() - started)
            for path in ("direct", "envoy"):
                values = samples[path]
                print(
                    f"| {name} | {path} | {percentile(values, 0.5):.2f} | "
                    f"{percentile(values, 0.9):.2f} | {percentile(values, 0.99):.2f} |"
                )
            added = percentile(samples["envoy"], 0.5) - percentile(samples["direct"], 0.5)
            print(f"| {name} | **Envoy adds (p50)** | **{added:.2f}** | | |")
        direct.close()
        for channel in channels.values():
            channel.close()
    finally:
        for process, _ in clusters.values():
            process.send_signal(signal.SIGTERM)
        for process, _ in clusters.values():
            process.wait(60)


if __name__ == "__main__":
    main()
