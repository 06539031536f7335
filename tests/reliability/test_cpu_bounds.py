"""CPU-side work is bounded and refusing costs nothing (issue 10, items 1, 4 and 16)."""

from __future__ import annotations

import io
import threading
import time

import grpc
import numpy as np
import pytest
from helpers import RED, Gate, blank, encode
from PIL import Image
from reliability_support import NOT_SERVING, SERVING, health, reason_of, wait_for
from test_hostile_media import still_serves

from sam3_grpc.engines.synthetic import SyntheticEngine
from sam3_grpc.media.images import count_jpeg_scans
from sam3_grpc.v1 import common_pb2, status_service_pb2
from sam3_grpc.v1 import segmentation_service_pb2 as seg_pb

SEGMENT = "/sam3_grpc.v1.SegmentationService/SegmentImage"
IMAGES = "sam3_grpc.v1.SegmentationService"


def segment_request(data: bytes, **output) -> seg_pb.SegmentImageRequest:
    return seg_pb.SegmentImageRequest(
        image=common_pb2.Image(content=data),
        prompts=[common_pb2.Prompt(text="red")],
        output=common_pb2.OutputOptions(**output),
    )


def scan_bomb(side: int, extra_scans: int) -> bytes:
    """A valid progressive JPEG whose last scan is repeated: libjpeg decodes one full pass over
    the image per scan and only warns."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(
        buffer, "JPEG", progressive=True, quality=50
    )
    data = buffer.getvalue()
    last_scan = data.rfind(b"\xff\xda")
    scan = data[last_scan:-2]  # the last SOS segment and its entropy-coded data
    return data[:-2] + scan * extra_scans + b"\xff\xd9"


def status(server):
    return server.status.GetServerStatus(status_service_pb2.GetServerStatusRequest(), timeout=10)


def requests_with_code(server, code: str) -> float:
    return (
        server.server.metrics.registry.get_sample_value(
            "sam3_grpc_requests_total", {"method": SEGMENT, "code": code}
        )
        or 0.0
    )


# ----- item 1: the JPEG scan bomb --------------------------------------------------------------
def test_a_jpeg_scan_bomb_is_refused_from_its_markers(synthetic_server):
    bomb = scan_bomb(2000, 600)
    assert count_jpeg_scans(bomb, 10_000) > 600
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        synthetic_server.segmentation.SegmentImage(segment_request(bomb), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "INPUT_TOO_COSTLY"
    assert "scans" in caught.value.details()
    assert time.monotonic() - started < 10  # refused from the markers: a liveness bound
    still_serves(synthetic_server)
    # An ordinary progressive JPEG still decodes.
    image = blank(120, 90)
    image[20:40, 30:60] = RED
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", progressive=True, quality=95)
    reply = synthetic_server.segmentation.SegmentImage(
        segment_request(buffer.getvalue()), timeout=10
    )
    assert len(reply.results[0].detections) == 1


# ----- item 4: refusing costs nothing ----------------------------------------------------------
def test_a_full_queue_refuses_without_decoding(start_server):
    engine = SyntheticEngine()
    server = start_server(engine, queue_size=1)
    gate = Gate(names=("encode_image",))
    engine.before_call = gate
    small = encode(blank(16, 16))
    try:
        running = server.segmentation.SegmentImage.future(segment_request(small), timeout=60)
        gate.wait_entered()
        waiting = server.segmentation.SegmentImage.future(segment_request(small), timeout=60)
        wait_for(lambda: status(server).queue.depth == 1, what="the queue full")
        decoded_before = server.server.runtime.cpu_pool.completed
        big = encode(np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), np.uint8))
        refusals = []
        for _ in range(30):
            with pytest.raises(grpc.RpcError) as caught:
                server.segmentation.SegmentImage(segment_request(big), timeout=30)
            refusals.append((caught.value.code(), reason_of(caught.value)))
        assert set(refusals) == {(grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")}
        # Not one of them cost a CPU job: refused before decoding.
        assert server.server.runtime.cpu_pool.completed == decoded_before
    finally:
        gate.release()
    running.result()
    waiting.result()


def test_saturated_cpu_workers_refuse_new_requests(start_server, monkeypatch):
    import sam3_grpc.server.segmentation as segmentation

    server = start_server(SyntheticEngine(), cpu_workers=1, cpu_queue_size=2)
    entered, proceed = threading.Semaphore(0), threading.Event()
    real_decode = segmentation.decode_image

    def slow_decode(*args, **kwargs):
        entered.release()
        assert proceed.wait(30)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(segmentation, "decode_image", slow_decode)
    small = encode(blank(16, 16))
    held = [server.segmentation.SegmentImage.future(segment_request(small), timeout=60)]
    assert entered.acquire(timeout=10)  # the one worker is busy
    held.append(server.segmentation.SegmentImage.future(segment_request(small), timeout=60))
    wait_for(lambda: status(server).cpu.backlog >= 2, what="CPU backlog full")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            server.segmentation.SegmentImage(segment_request(small), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(caught.value) == "CPU_BUSY"
        cpu = status(server).cpu
        assert cpu.rejected >= 1 and cpu.capacity == 2 and cpu.workers == 1
        # Balancers see it: image calls NOT_SERVING, session calls still SERVING.
        wait_for(
            lambda: health(server.channel, IMAGES) == NOT_SERVING, what="image health shedding"
        )
        assert health(server.channel, "sam3_grpc.v1.VideoService") == SERVING
    finally:
        proceed.set()
    for call in held:
        assert call.result().results
    wait_for(lambda: health(server.channel, IMAGES) == SERVING, what="image health back")


# ----- item 16: a reply over the size limit ----------------------------------------------------
def test_a_reply_over_the_size_limit_is_refused_and_counted_as_such(start_server):
    server = start_server(SyntheticEngine(), max_send_message_bytes=20_000)
    noise = np.random.default_rng(1).random((600, 600)) < 0.5
    image = blank(600, 600)
    image[noise] = RED
    request = segment_request(encode(image), mask_encoding=common_pb2.MASK_ENCODING_PNG)
    before = requests_with_code(server, "RESOURCE_EXHAUSTED")
    with pytest.raises(grpc.RpcError) as caught:
        server.segmentation.SegmentImage(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(caught.value) == "RESPONSE_TOO_LARGE"
    assert "max_detections" in caught.value.details()
    # Counted as what the client saw (the call is recorded as it ends, just after the reply).
    wait_for(
        lambda: requests_with_code(server, "RESOURCE_EXHAUSTED") == before + 1,
        what="the refusal counted",
    )
    assert requests_with_code(server, "OK") == 0
    # Without masks the same request fits.
    small = segment_request(encode(image), mask_encoding=common_pb2.MASK_ENCODING_NONE)
    assert server.segmentation.SegmentImage(small, timeout=30).results


def test_a_job_cancelled_before_it_starts_leaves_no_backlog():
    """A caller that leaves before its CPU job starts (the future is cancelled) must not keep
    counting against the pool, or the pool would report itself saturated for ever."""
    from sam3_grpc.server.cpu import CpuPool

    pool = CpuPool(workers=1, capacity=4, max_wait_s=0.5)
    hold = threading.Event()
    try:
        running = pool.submit(hold.wait, 10)
        queued = pool.submit(time.sleep, 0)
        assert queued.cancel()
        hold.set()
        running.result(10)
        wait_for(lambda: pool.backlog == 0, what="backlog drained")
        assert pool.oldest_wait() == 0.0 and not pool.saturated
        pool.admit()  # admits again
    finally:
        hold.set()
        pool.shutdown()
