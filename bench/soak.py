"""Soak test: mixed load against a real server for a fixed duration, then a leak and loss report.

    python bench/soak.py --duration 600                       # starts its own synthetic server
    python bench/soak.py --duration 600 --target HOST:PORT [--server-pid PID] [--upload-dir DIR]

Several client threads loop until the duration is over, each picking (seeded) among: segment an
image (some repeated, so the embedding cache hits), segment and cancel, upload a video (opening a
session), add a prompt, propagate a whole session, propagate and cancel mid-stream, close a
session, and read the server status. Every call has a deadline, so every loop iteration is
bounded; a call that returns without a status, or a worker still stuck at the end, counts as
"lost" (the run fails when any is). A prober checks grpc.health every second with a 1 s deadline.

The report (Markdown, for BENCHMARKS.md) gives requests by method and status code, latency
percentiles of the successful calls, the server's RSS, open files and threads at the start and
the end (psutil on the server pid), leftover upload files, lost requests and failed probes. When
the script started the server, it then stops it with SIGTERM and reports the exit status.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import cv2
import grpc
import numpy as np
import psutil
from common import discs_scene, jpeg, machine
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sam3_grpc.cli.serve_process import ServeProcess, ServeProcessError
from sam3_grpc.v1 import common_pb2, status_service_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as seg_pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as seg_grpc
from sam3_grpc.v1 import status_service_pb2_grpc as status_grpc
from sam3_grpc.v1 import video_service_pb2 as pb
from sam3_grpc.v1 import video_service_pb2_grpc as pb_grpc

MiB = 1024 * 1024
UPLOAD_PREFIX = "sam3grpc-upload-"
OPERATIONS = {  # name: weight
    "segment": 36,
    "segment_cancel": 8,
    "upload": 6,
    "add_prompt": 14,
    "propagate": 14,
    "propagate_cancel": 10,
    "close": 4,
    "status": 4,
    "list": 4,
}
SESSIONS_PER_WORKER = 2


# ----- the server ----------------------------------------------------------------------------
class OwnServer:
    """`sam3-grpc serve --model synthetic` in a subprocess, its log in a file."""

    def __init__(self, latency_ms: float, workdir: str, queue_size: int) -> None:
        self.upload_dir = os.path.join(workdir, "uploads")
        self.log_path = os.path.join(workdir, "server.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - open for the server's life; stop() closes it
        self.server = ServeProcess(
            [
                "--model",
                "synthetic",
                "--synthetic-latency-ms",
                str(latency_ms),
                "--grace",
                "5",
                "--upload-dir",
                self.upload_dir,
                "--queue-size",
                str(queue_size),
            ],
            on_line=lambda line: self._log.write(line + "\n"),
        )
        try:
            self.server.wait_ready(120)
        except ServeProcessError as exc:
            self.stop()
            raise SystemExit(f"{exc}\n(whole log: {self.log_path})") from None
        self.target = self.server.target
        self.pid = self.server.pid

    def stop(self) -> int:
        """SIGTERM; killed if not stopped within 60 s. Returns the exit code."""
        code = self.server.stop(60)
        self._log.close()
        return code

    def log_errors(self) -> int:
        with open(self.log_path) as handle:
            return sum(
                1
                for line in handle
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
            )


def server_resources(pid: int | None) -> dict:
    if pid is None:
        return {}
    process = psutil.Process(pid)
    return {
        "rss_mb": process.memory_info().rss / MiB,
        "fds": process.num_fds(),
        "threads": process.num_threads(),
    }


def leftover_uploads(upload_dir: str | None) -> int | None:
    if not upload_dir or not os.path.isdir(upload_dir):
        return None
    return sum(1 for name in os.listdir(upload_dir) if name.startswith(UPLOAD_PREFIX))


# ----- recording -----------------------------------------------------------------------------
@dataclass
class Record:
    lock: threading.Lock = field(default_factory=threading.Lock)
    codes: collections.Counter = field(default_factory=collections.Counter)  # (method, code)
    latencies: dict = field(default_factory=lambda: collections.defaultdict(list))
    lost: list = field(default_factory=list)
    frames: int = 0

    def add(self, method: str, code: str, seconds: float) -> None:
        with self.lock:
            self.codes[(method, code)] += 1
            if code == "OK":
                self.latencies[method].append(seconds)

    def lose(self, method: str, why: str) -> None:
        with self.lock:
            self.lost.append((method, why))
            self.codes[(method, "LOST")] += 1


def timed_unary(record: Record, method: str, call, *args, timeout: float, **kwargs):
    """Runs a unary (or client-streaming) call as a future; a result without a status, or no
    result within the deadline plus slack, is "lost"."""
    started = time.perf_counter()
    future = call.future(*args, timeout=timeout, **kwargs)
    try:
        reply = future.result(timeout=timeout + 15)
        record.add(method, "OK", time.perf_counter() - started)
        return reply
    except grpc.FutureTimeoutError:
        future.cancel()
        record.lose(method, "no status within the deadline + 15 s")
    except grpc.FutureCancelledError:
        record.add(method, "CANCELLED", time.perf_counter() - started)
    except grpc.RpcError as error:
        code = error.code()
        if code is None:
            record.lose(method, "error without a status")
        else:
            record.add(method, code.name, time.perf_counter() - started)
    return None


# ----- the workload --------------------------------------------------------------------------
def disc_video(path: str, frames: int = 40, width: int = 160, height: int = 120) -> str:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"FFV1"), 10, (width, height))
    for i in range(frames):
        frame = np.full((height, width, 3), 30, np.uint8)
        cv2.circle(frame, (20 + 3 * i, height // 2), 14, (0, 0, 255), -1)  # red in BGR
        cv2.circle(frame, (width - 20 - 2 * i, height // 3), 10, (255, 0, 0), -1)  # blue
        writer.write(frame)
    writer.release()
    return path


class Worker(threading.Thread):
    def __init__(
        self, index: int, args, record: Record, images, video: bytes, stop: threading.Event
    ) -> None:
        super().__init__(name=f"soak-{index}", daemon=True)
        self.args = args
        self.record = record
        self.images = images
        self.video = video
        self.stop_event = stop
        self.rng = random.Random(args.seed * 1000 + index)
        self.sessions: list[list] = []  # [session_id, prompted]
        self.channel = grpc.insecure_channel(
            args.target, options=[("grpc.max_receive_message_length", 64 * MiB)]
        )
        self.seg = seg_grpc.SegmentationServiceStub(self.channel)
        self.video_stub = pb_grpc.VideoServiceStub(self.channel)
        self.status = status_grpc.StatusServiceStub(self.channel)
        self.busy_since: float | None = None
        self.current = ""

    def run(self) -> None:
        names = list(OPERATIONS)
        weights = [OPERATIONS[n] for n in names]
        try:
            while not self.stop_event.is_set():
                name = self.rng.choices(names, weights)[0]
                self.current, self.busy_since = name, time.monotonic()
                getattr(self, "op_" + name)()
                self.busy_since = None
            for session_id, _ in self.sessions:
                self._close(session_id)
            self.sessions.clear()
        finally:
            self.channel.close()

    # ----- operations ------------------------------------------------------------------------
    def _segment_request(self) -> seg_pb.SegmentImageRequest:
        encoding = self.rng.choice(
            [
                common_pb2.MASK_ENCODING_RLE,
                common_pb2.MASK_ENCODING_PNG,
                common_pb2.MASK_ENCODING_NONE,
            ]
        )
        return seg_pb.SegmentImageRequest(
            image=common_pb2.Image(content=self.rng.choice(self.images)),
            prompts=[common_pb2.Prompt(text="red")],
            output=common_pb2.OutputOptions(
                mask_encoding=encoding, include_polygons=self.rng.random() < 0.3
            ),
        )

    def op_segment(self) -> None:
        timed_unary(
            self.record,
            "SegmentImage",
            self.seg.SegmentImage,
            self._segment_request(),
            timeout=self.args.call_timeout,
        )

    def op_segment_cancel(self) -> None:
        started = time.perf_counter()
        future = self.seg.SegmentImage.future(
            self._segment_request(), timeout=self.args.call_timeout
        )
        time.sleep(self.rng.uniform(0, 0.03))
        future.cancel()
        method = "SegmentImage (cancelled)"
        try:
            future.result(timeout=self.args.call_timeout + 15)
            self.record.add(method, "OK", time.perf_counter() - started)
        except grpc.FutureCancelledError:
            self.record.add(method, "CANCELLED", time.perf_counter() - started)
        except grpc.FutureTimeoutError:
            self.record.lose(method, "no status after cancel")
        except grpc.RpcError as error:
            self.record.add(
                method, error.code().name if error.code() else "LOST", time.perf_counter() - started
            )

    def _upload_messages(self):
        yield pb.UploadVideoRequest(
            metadata=pb.UploadVideoMetadata(filename="soak.avi", size_bytes=len(self.video))
        )
        for offset in range(0, len(self.video), 64 * 1024):
            yield pb.UploadVideoRequest(chunk=self.video[offset : offset + 64 * 1024])

    def op_upload(self) -> None:
        if len(self.sessions) >= SESSIONS_PER_WORKER:
            self._close(self.sessions.pop(0)[0])
        reply = timed_unary(
            self.record,
            "UploadVideo",
            self.video_stub.UploadVideo,
            self._upload_messages(),
            timeout=self.args.call_timeout,
        )
        if reply is not None:
            self.sessions.append([reply.session.session_id, False])

    def _session(self, prompted: bool = False):
        if not self.sessions:
            self.op_upload()
        candidates = [s for s in self.sessions if s[1] or not prompted]
        if not candidates and self.sessions:
            self.op_add_prompt()
            candidates = [s for s in self.sessions if s[1]]
        return self.rng.choice(candidates) if candidates else None

    def op_add_prompt(self) -> None:
        session = self._session()
        if session is None:
            return
        prompt = self.rng.choice(
            [
                common_pb2.Prompt(text=self.rng.choice(["red", "blue"])),
                common_pb2.Prompt(
                    points=[common_pb2.LabeledPoint(point=common_pb2.Point(x=20, y=60))]
                ),
            ]
        )
        reply = timed_unary(
            self.record,
            "AddPrompt",
            self.video_stub.AddPrompt,
            pb.AddPromptRequest(session_id=session[0], frame_index=0, prompt=prompt),
            timeout=self.args.call_timeout,
        )
        if reply is not None:
            session[1] = True

    def _propagate(self, cancel_after: int | None) -> None:
        session = self._session(prompted=True)
        if session is None:
            return
        method = "Propagate" if cancel_after is None else "Propagate (cancelled)"
        started = time.perf_counter()
        stream = self.video_stub.Propagate(
            pb.PropagateRequest(session_id=session[0]), timeout=self.args.call_timeout
        )
        frames = 0
        try:
            for _ in stream:
                frames += 1
                if cancel_after is not None and frames >= cancel_after:
                    stream.cancel()
                    break
        except grpc.RpcError:
            pass
        code = stream.code()
        with self.record.lock:
            self.record.frames += frames
        if code is None:
            self.record.lose(method, "stream ended without a status")
        else:
            self.record.add(method, code.name, time.perf_counter() - started)

    def op_propagate(self) -> None:
        self._propagate(None)

    def op_propagate_cancel(self) -> None:
        self._propagate(self.rng.randint(1, 10))

    def _close(self, session_id: str) -> None:
        timed_unary(
            self.record,
            "CloseSession",
            self.video_stub.CloseSession,
            pb.CloseSessionRequest(session_id=session_id),
            timeout=self.args.call_timeout,
        )

    def op_close(self) -> None:
        if self.sessions:
            self._close(self.sessions.pop(self.rng.randrange(len(self.sessions)))[0])

    def op_status(self) -> None:
        timed_unary(
            self.record,
            "GetServerStatus",
            self.status.GetServerStatus,
            status_service_pb2.GetServerStatusRequest(),
            timeout=self.args.call_timeout,
        )

    def op_list(self) -> None:
        timed_unary(
            self.record,
            "ListSessions",
            self.video_stub.ListSessions,
            pb.ListSessionsRequest(),
            timeout=self.args.call_timeout,
        )


def probe_health(target: str, stop: threading.Event, results: collections.Counter) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.wait(1.0):
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                results[health_pb2.HealthCheckResponse.ServingStatus.Name(status)] += 1
            except grpc.RpcError as error:
                results[error.code().name] += 1


def sample_peak(pid: int | None, stop: threading.Event, peak: list) -> None:
    if pid is None:
        return
    process = psutil.Process(pid)
    while not stop.wait(0.5):
        try:
            peak[0] = max(peak[0], process.memory_info().rss / MiB)
        except psutil.Error:
            return


# ----- report --------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def report(
    args,
    record: Record,
    elapsed: float,
    start: dict,
    end: dict,
    peak: float,
    leftovers,
    health: collections.Counter,
    exit_code,
    log_errors,
) -> str:
    methods = sorted({m for m, _ in record.codes})
    codes = sorted({c for _, c in record.codes}, key=lambda c: (c != "OK", c))
    against = (
        f"own synthetic server ({args.synthetic_latency_ms:g} ms/step)" if args.own else args.target
    )
    lines = [
        f"### Soak: {elapsed:.0f} s, {args.threads} client threads, {against}",
        "",
        f"Machine: {machine()}. Seed {args.seed}.",
        "",
        "| method | requests | " + " | ".join(codes) + " | p50 ms | p90 ms | p99 ms |",
        "|---|---:|" + "---:|" * len(codes) + "---:|---:|---:|",
    ]
    total = 0
    for method in methods:
        count = sum(record.codes[(method, c)] for c in codes)
        total += count
        ok = record.latencies.get(method, [])
        stats = [f"{percentile(ok, q):.1f}" for q in (0.5, 0.9, 0.99)] if ok else ["–", "–", "–"]
        lines.append(
            f"| {method} | {count} | "
            + " | ".join(str(record.codes[(method, c)]) for c in codes)
            + " | "
            + " | ".join(stats)
            + " |"
        )
    lines.append(
        f"| **all** | **{total}** | "
        + " | ".join(str(sum(record.codes[(m, c)] for m in methods)) for c in codes)
        + " | | | |"
    )
    lines += [
        "",
        f"{total / elapsed:.1f} requests/s; {record.frames} propagated frames streamed.",
        "",
        "| server | start | end |",
        "|---|---:|---:|",
    ]
    if start:
        lines += [
            f"| RSS (MB) | {start['rss_mb']:.0f} | {end.get('rss_mb', float('nan')):.0f} "
            f"(peak {peak:.0f}) |",
            f"| open file descriptors | {start['fds']} | {end.get('fds', '?')} |",
            f"| threads | {start['threads']} | {end.get('threads', '?')} |",
        ]
    else:
        lines.append("| (no --server-pid: server resources not sampled) | | |")
    lines += [
        "",
        "| check | result |",
        "|---|---|",
        f"| lost requests (no status, or stuck at the end) | {len(record.lost)} |",
        f"| leftover upload files after closing every session | "
        f"{'n/a' if leftovers[0] is None else leftovers[0]} |",
        "| health probes (1 s deadline, every 1 s) | "
        + ", ".join(f"{k} {v}" for k, v in sorted(health.items()))
        + " |",
    ]
    if args.own:
        lines += [
            f"| upload files after SIGTERM | {'n/a' if leftovers[1] is None else leftovers[1]} |",
            f"| server exit status after SIGTERM | {exit_code} |",
            f"| ERROR/Traceback lines in the server log | {log_errors} |",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--target", help="HOST:PORT of a running server (default: start one)")
    parser.add_argument("--server-pid", type=int, help="pid of --target, for RSS/fds/threads")
    parser.add_argument("--upload-dir", help="upload dir of --target, to count leftovers")
    parser.add_argument("--threads", type=int, default=6, help="client threads")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--synthetic-latency-ms", type=float, default=5.0)
    parser.add_argument("--queue-size", type=int, default=64, help="own server's queue size")
    parser.add_argument("--call-timeout", type=float, default=60.0, help="deadline per call")
    parser.add_argument("--output", help="also write the Markdown report to this file")
    args = parser.parse_args()
    args.own = args.target is None

    workdir = tempfile.mkdtemp(prefix="sam3-soak-")
    server = None
    if args.own:
        server = OwnServer(args.synthetic_latency_ms, workdir, args.queue_size)
        args.target, args.server_pid, args.upload_dir = (
            server.target,
            server.pid,
            server.upload_dir,
        )
    images = [jpeg(discs_scene(320, 240, count=3, seed=s)) for s in range(12)]
    with open(disc_video(os.path.join(workdir, "soak.avi")), "rb") as handle:
        video = handle.read()

    record = Record()
    stop = threading.Event()
    health: collections.Counter = collections.Counter()
    # Warm up once so lazily created threads exist before the baseline.
    warm = Worker(-1, args, Record(), images, video, stop)
    warm.op_segment()
    warm.op_upload()
    warm.op_propagate()
    for session_id, _ in warm.sessions:
        warm._close(session_id)
    warm.channel.close()
    time.sleep(1.0)
    start = server_resources(args.server_pid)
    peak = [start.get("rss_mb", 0.0)]
    helpers = [
        threading.Thread(target=probe_health, args=(args.target, stop, health), daemon=True),
        threading.Thread(target=sample_peak, args=(args.server_pid, stop, peak), daemon=True),
    ]
    workers = [Worker(i, args, record, images, video, stop) for i in range(args.threads)]
    began = time.monotonic()
    for thread in helpers + workers:
        thread.start()
    next_note = began + 60
    while time.monotonic() - began < args.duration:
        time.sleep(min(1.0, max(0.0, args.duration - (time.monotonic() - began))))
        if time.monotonic() >= next_note:
            next_note += 60
            done = sum(record.codes.values())
            print(f"[soak] {time.monotonic() - began:.0f} s: {done} requests", file=sys.stderr)
    stop.set()
    elapsed = time.monotonic() - began
    for worker in workers:
        worker.join(args.call_timeout + 30)
        if worker.is_alive():  # stuck in a call that never ends
            record.lose(worker.current or "?", "worker stuck at the end")
    for thread in helpers:
        thread.join(5)
    time.sleep(2.0)  # let the server finish closing sessions
    end = server_resources(args.server_pid) if args.server_pid else {}
    leftovers = [leftover_uploads(args.upload_dir), None]
    exit_code = log_errors = None
    if server is not None:
        exit_code = server.stop()
        leftovers[1] = leftover_uploads(server.upload_dir)
        log_errors = server.log_errors()
    text = report(
        args, record, elapsed, start, end, peak[0], leftovers, health, exit_code, log_errors
    )
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    for method, why in record.lost[:20]:
        print(f"lost: {method}: {why}", file=sys.stderr)
    failed = bool(record.lost) or bool(leftovers[0]) or (exit_code not in (None, 0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
