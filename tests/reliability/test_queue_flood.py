"""Flooding a full queue: the overflow is refused at once, the rest all run exactly once."""

from __future__ import annotations

import grpc
from helpers import Gate, retry_info
from reliability_support import NOT_SERVING, SERVING, TaggingEngine, health, wait_for
from test_executor import queue_status, segment_request

CAPACITY = 8
OVERFLOW = 5


def test_flood_refuses_exactly_the_overflow_and_runs_the_rest_once(start_server):
    engine = TaggingEngine()
    server = start_server(engine, queue_size=CAPACITY)
    stub = server.segmentation
    before = queue_status(server)
    warmup_encodes = len(engine.encoded)
    gate = Gate(names=("encode_image",))
    engine.before_call = gate
    try:
        running = stub.SegmentImage.future(segment_request(1000), timeout=60)
        gate.wait_entered()
        tags = list(range(CAPACITY + OVERFLOW))
        futures = {tag: stub.SegmentImage.future(segment_request(tag), timeout=60) for tag in tags}
        # Nothing drains while the engine is held: exactly OVERFLOW calls can be refused, and
        # they are refused at once, while the others wait.
        wait_for(
            lambda: (
                sum(f.done() for f in futures.values()) == OVERFLOW
                and queue_status(server).depth == CAPACITY
            ),
            what="overflow refused",
        )
        refused = {tag for tag, f in futures.items() if f.done()}
        for tag in refused:
            error = futures[tag].exception()
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            info = retry_info(error)
            assert info is not None and info.retry_delay.ToNanoseconds() > 0
        # A full queue sheds load: balancers are told to look elsewhere.
        assert health(server.channel) == NOT_SERVING
    finally:
        gate.release()
    assert running.result(timeout=30).results[0].detections
    accepted = set(tags) - refused
    for tag in accepted:
        assert len(futures[tag].result(timeout=30).results[0].detections) == 1
    # Every accepted request ran exactly once, no refused one ran, nothing else ran.
    ran = engine.encoded[warmup_encodes:]
    assert sorted(ran) == sorted([1000, *accepted])
    after = queue_status(server)
    assert after.completed - before.completed == 1 + CAPACITY
    assert after.rejected - before.rejected == OVERFLOW
    assert after.dropped == before.dropped
    assert (after.depth, after.running) == (0, 0)
    wait_for(lambda: health(server.channel) == SERVING, what="health back to SERVING")
