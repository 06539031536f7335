"""Hundreds of calls cancelled at random points from several threads.

Each round holds the engine, queues image requests (each a distinct, tagged image) and one
Propagate per session, then cancels a seeded-random part of them while they are certainly still
queued, waits until the server has seen those cancellations, and releases the engine; another
part is cancelled at random moments while the work drains. Afterwards:

- a call whose cancellation the server saw while it was queued never reached the engine;
- every image request that succeeded ran exactly once, none ran twice, nothing unknown ran;
- every call ended (OK or CANCELLED), and no propagation step ran for a stream already torn down
  (beyond the one benign race per stream explained in `TaggingEngine`);
- health answered SERVING within 1 s on every poll during the storm;
- this process's threads and open files return to their baseline.
"""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from helpers import Gate
from reliability_support import (
    SERVING,
    TaggingEngine,
    health,
    resources,
    small_clip,
    wait_for,
    wait_idle,
)
from test_executor import queue_status, segment_request
from test_video import add_text, propagate, upload

from sam3_grpc.v1 import video_service_pb2 as pb

SEED = 20240611
ROUNDS = 6
SEGMENTS_PER_ROUND = 50
SESSIONS = 8
FRAMES = 16
THREADS = 4


@dataclass
class Call:
    kind: str  # "segment" or "propagate"
    key: int | str  # image tag, or session id
    plan: str  # "queued" (cancel while held), "flight" (cancel while draining), "keep"
    delay: float = 0.0  # flight: seconds after release (segment) or frames read (propagate)
    handle: object = None
    cancelled: bool = False
    code: grpc.StatusCode | None = None
    frames: int = 0
    done: threading.Event = field(default_factory=threading.Event)


def _plan(rng: random.Random) -> str:
    return rng.choices(["queued", "flight", "keep"], weights=[4, 3, 3])[0]


def _read_stream(call: Call, release: threading.Event) -> None:
    """Consumes a Propagate stream, cancelling it as planned; records how it ended."""
    stream = call.handle
    try:
        if call.plan == "queued":
            return  # the main thread cancels it while the engine is held
        release.wait(30)
        for _ in stream:
            call.frames += 1
            if call.plan == "flight" and call.frames >= call.delay:
                call.cancelled = stream.cancel() or call.cancelled
                break
    except grpc.RpcError:
        pass
    finally:
        call.done.set()


def test_cancel_storm(start_server, tmp_path):
    engine = TaggingEngine(latency_ms=1)
    server = start_server(engine, queue_size=512, max_sessions=SESSIONS + 2)
    clip = small_clip(tmp_path / "storm.avi", frames=FRAMES)
    session_ids = [upload(server, clip).session_id for _ in range(SESSIONS)]
    for sid in session_ids:
        add_text(server, sid)
        engine.session_of_state[id(server.server.sessions.get(sid, "").state)] = (
            server.server.sessions.get(sid, "")
        )
    state_of = {sid: id(server.server.sessions.get(sid, "").state) for sid in session_ids}
    # Warm up every kind of call once so lazily created threads exist before the baseline.
    server.segmentation.SegmentImage(segment_request(60000), timeout=30)
    propagate(server, session_ids[0], max_frames=2)
    baseline_threads, baseline_fds = resources()

    polls: list[object] = []
    stop_polling = threading.Event()
    health_channel = grpc.insecure_channel(server.target)

    def poll_health() -> None:
        while not stop_polling.is_set():
            try:
                polls.append(health(health_channel, timeout=1.0))
            except grpc.RpcError as error:
                polls.append(error.code())
            time.sleep(0.05)

    poller = threading.Thread(target=poll_health, name="health-poller", daemon=True)
    poller.start()
    rng = random.Random(SEED)
    workers = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="storm")
    readers = concurrent.futures.ThreadPoolExecutor(SESSIONS, thread_name_prefix="reader")
    stub = server.segmentation
    video = server.video
    calls: list[Call] = []
    queued_steps_before: dict[str, int] = {}
    try:
        for round_index in range(ROUNDS):
            gate = Gate(names=("encode_image",))
            engine.before_call = gate
            blocker_tag = 50000 + round_index
            blocker = stub.SegmentImage.future(segment_request(blocker_tag), timeout=60)
            gate.wait_entered()
            release = threading.Event()
            base = round_index * SEGMENTS_PER_ROUND
            segments = [
                Call("segment", base + i, _plan(rng), delay=rng.uniform(0, 0.03))
                for i in range(SEGMENTS_PER_ROUND)
            ]
            streams = [
                Call("propagate", sid, _plan(rng), delay=rng.randint(0, FRAMES - 2))
                for sid in session_ids
            ]
            calls += segments + streams

            def submit(share: list[Call]) -> None:
                for call in share:
                    call.handle = stub.SegmentImage.future(segment_request(call.key), timeout=60)

            # Several threads submit at once.
            list(workers.map(submit, [segments[i::THREADS] for i in range(THREADS)]))
            for call in streams:
                queued_steps_before[call.key] = engine.steps[state_of[call.key]]
                call.handle = video.Propagate(pb.PropagateRequest(session_id=call.key), timeout=60)
                readers.submit(_read_stream, call, release)
            expected_depth = len(segments) + len(streams)  # one first step per stream
            wait_for(
                # In the queue itself, every image decoded (none still holding a reserved slot).
                lambda expected=expected_depth: (
                    queue_status(server).depth == expected
                    and len(server.server.executor._queue) == expected
                ),
                what=f"round {round_index}: everything queued",
            )
            doomed = [c for c in segments + streams if c.plan == "queued"]
            rng.shuffle(doomed)
            for call in doomed:
                call.cancelled = call.handle.cancel()
            executor = server.server.executor
            wait_for(
                lambda executor=executor, doomed=doomed: (
                    sum(job.abandoned for job in list(executor._queue)) == len(doomed)
                ),
                what=f"round {round_index}: server saw the cancellations",
            )

            # Release, and cancel the "flight" image calls at random moments meanwhile.
            released_at = time.monotonic()
            gate.release()
            release.set()

            def cancel_later(call: Call, released_at: float = released_at) -> None:
                time.sleep(max(0.0, released_at + call.delay - time.monotonic()))
                call.cancelled = call.handle.cancel()

            flights = [c for c in segments if c.plan == "flight"]
            list(workers.map(cancel_later, flights))
            assert blocker.result(timeout=30).results
            for call in segments:
                try:
                    call.handle.result(timeout=30)
                    call.code = grpc.StatusCode.OK
                except grpc.FutureCancelledError:
                    call.code = grpc.StatusCode.CANCELLED
                except grpc.RpcError as error:
                    call.code = error.code()
            for call in streams:
                assert call.done.wait(30), "a Propagate stream never ended"
                call.code = call.handle.code()
            wait_idle(server, session_ids)
            # Propagations cancelled while queued never ran a single step.
            for call in streams:
                if call.plan == "queued":
                    assert engine.steps[state_of[call.key]] == queued_steps_before[call.key], (
                        f"round {round_index}: a cancelled, queued Propagate ran"
                    )
    finally:
        engine.before_call = None
        stop_polling.set()
        poller.join(10)
        health_channel.close()
        workers.shutdown(wait=True, cancel_futures=True)
        readers.shutdown(wait=True, cancel_futures=True)

    assert len(calls) == ROUNDS * (SEGMENTS_PER_ROUND + SESSIONS)
    # Every call ended, with OK or CANCELLED only.
    codes = Counter(c.code for c in calls)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED}, codes
    # Planned outcomes happened: the storm really cancelled and really served.
    assert codes[grpc.StatusCode.CANCELLED] >= sum(c.plan == "queued" for c in calls)
    assert codes[grpc.StatusCode.OK] >= sum(c.plan == "keep" for c in calls)

    ran = Counter(engine.encoded)
    for call in calls:
        if call.kind != "segment":
            continue
        if call.plan == "queued":
            assert ran[call.key] == 0, f"image {call.key} ran although cancelled in the queue"
        elif call.code == grpc.StatusCode.OK:
            assert ran[call.key] == 1, f"image {call.key} succeeded but ran {ran[call.key]}x"
        else:
            assert ran[call.key] <= 1, f"image {call.key} ran {ran[call.key]} times"
    known = (
        {c.key for c in calls if c.kind == "segment"}
        | {60000, None}
        | {50000 + r for r in range(ROUNDS)}
    )
    assert set(ran) <= known
    # Streams read to the end got every frame; no step ran for a stream already torn down,
    # except at most the one dequeued as its cancellation arrived.
    for call in calls:
        if call.kind == "propagate" and call.plan == "keep":
            assert (call.code, call.frames) == (grpc.StatusCode.OK, FRAMES)
    cancelled_streams = sum(
        1 for c in calls if c.kind == "propagate" and c.code == grpc.StatusCode.CANCELLED
    )
    assert len(engine.orphan_steps) <= cancelled_streams

    # Health answered SERVING within its 1 s deadline on every poll.
    assert polls and all(p == SERVING for p in polls), Counter(map(str, polls))
    # The server is idle and stays idle: nothing left to run.
    status = queue_status(server)
    assert (status.depth, status.running) == (0, 0)
    encodes, steps = len(engine.encoded), sum(engine.steps.values())
    time.sleep(0.2)
    assert (len(engine.encoded), sum(engine.steps.values())) == (encodes, steps)
    # Threads and file descriptors return to their baseline (small slack for grpc's pollers).
    wait_for(
        lambda: resources()[0] <= baseline_threads + 3,
        timeout=15,
        interval=0.1,
        what=f"threads back to baseline {baseline_threads} (now {resources()[0]})",
    )
    wait_for(
        lambda: resources()[1] <= baseline_fds + 8,
        timeout=15,
        interval=0.1,
        what=f"open files back to baseline {baseline_fds} (now {resources()[1]})",
    )
    # The sessions survived the storm and still work end to end.
    for sid in session_ids:
        assert len(propagate(server, sid, max_frames=3)) == 3
