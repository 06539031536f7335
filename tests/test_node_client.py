"""The Node.js client (clients/node) against a real synthetic server.

Runs `npm ci` when clients/node/node_modules is missing; skipped only when `node` (or `npm`,
when an install is needed) is not on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import pytest
from fake_replica import FakeReplica
from helpers import BLUE, RED, blank, disc_clip, draw_disc, draw_rect, encode, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_DIR = os.path.join(ROOT, "clients", "node")


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the Node.js client cannot be tested here")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "@grpc", "grpc-js")):
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not on PATH: cannot install the Node.js client's dependencies")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return node


def run_node(node: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [node, *args], cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout
    )


def box_of(mask):
    import numpy as np

    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() + 1), int(ys.max() + 1)]


def test_example_segments_an_image_and_tracks_a_video(node, synthetic_server, tmp_path):
    image = blank(200, 150)
    rect = draw_rect(image, 15, 25, 80, 70, RED)
    disc = draw_disc(image, 140, 95, 25, BLUE)
    image_path = tmp_path / "shapes.png"
    image_path.write_bytes(encode(image))
    frames, masks = disc_clip(frames=10)
    video_path = write_video(tmp_path / "clip.avi", frames)

    done = run_node(
        node,
        "example.js",
        "--server",
        synthetic_server.target,
        "--image",
        str(image_path),
        "--prompt",
        "red",
        "--prompt",
        "blue",
        "--video",
        video_path,
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["health"] == "SERVING"

    segmented = report["image"]
    assert (segmented["width"], segmented["height"]) == (200, 150)
    red, blue = segmented["results"]
    assert red["prompt"] == "red" and blue["prompt"] == "blue"
    for result, mask in ((red, rect), (blue, disc)):
        [detection] = result["detections"]
        assert detection["box"] == box_of(mask)
        # area from the server, and the area of the RLE mask decoded in JavaScript
        assert detection["area"] == detection["mask_area"] == mask.sum()

    video = report["video"]
    assert video["frame_count"] == 10 and video["uploaded_bytes"] == os.path.getsize(video_path)
    red_prompt, blue_prompt = video["prompts"]
    assert red_prompt["object_ids"] == [1] and blue_prompt["object_ids"] == []
    assert [f["frame_index"] for f in video["frames"]] == list(range(10))
    assert [f["frames_done"] for f in video["frames"]] == list(range(1, 11))
    assert video["frames_total"] == 10
    for frame in video["frames"]:
        [obj] = frame["objects"]
        mask = masks[frame["frame_index"]]
        assert obj["object_id"] == 1 and obj["box"] == box_of(mask)
        assert obj["mask_area"] == mask.sum()
    assert video["open_sessions_after"] == 0


CANCEL_AND_ERRORS = textwrap.dedent("""
    const { Sam3Client } = require('./client');
    (async () => {
      const [target, video] = process.argv.slice(1);
      const client = new Sam3Client(target);
      const out = {};
      try {
        await client.segmentImage(Buffer.from('not an image'), 'red');
      } catch (error) {
        out.bad_image = { name: error.name, code: error.codeName, details: error.details };
      }
      try {
        await client.getSession('no-such-session');
      } catch (error) {
        out.missing = error.codeName;
      }
      const session = await client.uploadVideo(video, { chunkSize: 2048 });
      await client.addPrompt(session.session_id, 0, { points: [[22, 60]] });
      const seen = [];
      for await (const message of client.propagate(session.session_id)) {
        seen.push(message.frame.frame_index);
        if (seen.length === 2) break;  // cancels the stream
      }
      out.seen = seen;
      for (let i = 0; i < 500; i += 1) {
        const info = await client.getSession(session.session_id);
        if (!info.propagating) break;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      const again = [];
      for await (const message of client.propagate(session.session_id)) {
        again.push(message.frame.frame_index);
      }
      out.again = again;
      out.closed = await client.closeSession(session.session_id);
      out.closed_twice = await client.closeSession(session.session_id);
      out.health_unknown = await client.health('no.such.Service');
      client.close();
      console.log(JSON.stringify(out));
    })().catch((error) => { console.error(error); process.exit(1); });
""")


def test_node_client_errors_and_cancellation(node, synthetic_server, tmp_path):
    frames, _ = disc_clip(frames=12)
    video_path = write_video(tmp_path / "clip.avi", frames)
    done = run_node(node, "-e", CANCEL_AND_ERRORS, synthetic_server.target, video_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["bad_image"]["name"] == "Sam3Error"
    assert out["bad_image"]["code"] == "INVALID_ARGUMENT" and out["bad_image"]["details"]
    assert out["missing"] == "NOT_FOUND"
    assert out["seen"] == [0, 1]
    assert out["again"] == list(range(12))  # the session stayed usable after the cancel
    assert out["closed"] is True and out["closed_twice"] is False
    assert out["health_unknown"] == "SERVICE_UNKNOWN"


def test_example_reports_unreachable_server(node, tmp_path):
    image_path = tmp_path / "x.png"
    image_path.write_bytes(encode(blank(8, 8)))
    done = run_node(
        node, "example.js", "--server", "127.0.0.1:1", "--image", str(image_path), "--prompt", "red"
    )
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr


ERROR_REASONS = textwrap.dedent("""
    const fs = require('node:fs');
    const { Sam3Client } = require('./client');
    const fields = (e) => ({
      code: e.codeName, reason: e.reason, domain: e.domain, metadata: e.metadata,
      violations: e.fieldViolations, retry_after_ms: e.retryAfterMs, from_server: e.fromServer,
    });
    async function failure(call) {
      try { await call(); } catch (error) { return fields(error); }
      throw new Error('the call did not fail');
    }
    (async () => {
      const [target, limited, image] = process.argv.slice(1);
      const client = new Sam3Client(target);
      const out = {};
      out.outside = await failure(() => client.segmentImage(image, { points: [[50, 5]] }));
      out.bad_image = await failure(() => client.segmentImage(Buffer.from('not an image'), 'red'));
      out.no_session = await failure(() => client.getSession('no-such-session'));
      out.no_media = await failure(() => client.startSession('missing.mp4'));
      const small = new Sam3Client(limited);
      const first = await small.startSession('clip.avi');
      out.session_limit = await failure(() => small.startSession('clip.avi'));
      await small.closeSession(first.session_id);
      out.unreachable = await failure(() => new Sam3Client('127.0.0.1:1', { maxAttempts: 1 }).status());
      client.close();
      small.close();
      console.log(JSON.stringify(out));
    })().catch((error) => { console.error(error); process.exit(1); });
""")


def test_node_client_exposes_error_reasons_and_field_violations(
    node, synthetic_server, start_server, tmp_path
):
    from sam3_grpc.engines.synthetic import SyntheticEngine

    media = tmp_path / "media"
    media.mkdir()
    frames, _ = disc_clip(frames=3)
    write_video(media / "clip.avi", frames)
    limited = start_server(SyntheticEngine(), media_roots=(str(media),), max_sessions=1)
    image_path = tmp_path / "small.png"
    image_path.write_bytes(encode(blank(40, 30)))

    done = run_node(
        node, "-e", ERROR_REASONS, synthetic_server.target, limited.target, str(image_path)
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)

    outside = out["outside"]
    assert (outside["code"], outside["reason"], outside["domain"]) == (
        "INVALID_ARGUMENT",
        "INVALID_REQUEST",
        "sam3_grpc",
    )
    [violation] = outside["violations"]
    assert violation["field"] == "prompts[0].points[0].point"
    assert "outside the 40x30 image" in violation["description"]
    assert outside["from_server"] is True and outside["retry_after_ms"] is None

    assert out["bad_image"]["reason"] == "INVALID_IMAGE"
    assert [v["field"] for v in out["bad_image"]["violations"]] == ["image.content"]
    assert out["no_session"]["code"] == "NOT_FOUND"
    assert out["no_session"]["reason"] == "SESSION_NOT_FOUND"
    assert out["no_session"]["violations"] == []
    assert out["no_media"]["code"] == "NOT_FOUND"
    assert out["no_media"]["reason"] == "MEDIA_NOT_FOUND"

    limit = out["session_limit"]
    assert (limit["code"], limit["reason"]) == ("RESOURCE_EXHAUSTED", "SESSION_LIMIT")
    assert limit["metadata"]["limit"] == "1"

    # A status grpc made itself (no server reached) has no reason.
    unreachable = out["unreachable"]
    assert unreachable["code"] == "UNAVAILABLE"
    assert unreachable["reason"] is None and unreachable["from_server"] is False


RLE_DECODE = textwrap.dedent("""
    const { Sam3Client, decodeRle } = require('./client');
    const hex = (mask) => Buffer.from(mask).toString('hex');
    (async () => {
      const [examples, target, image] = process.argv.slice(1);
      const out = { examples: JSON.parse(examples).map(([counts, h, w]) => hex(decodeRle(counts, h, w))) };
      out.rejected = [['0`', 20, 20], ['312', 3, 3], ['3z', 2, 2], ['0\\x7f', 1, 1]].map(([counts, h, w]) => {
        try { decodeRle(counts, h, w); return null; } catch (error) { return error.name; }
      });
      const client = new Sam3Client(target);
      const reply = await client.segmentImage(image, 'red');
      out.server = reply.results[0].detections.map(({ mask, area_pixels }) => ({
        counts: mask.rle_counts, height: mask.height, width: mask.width, area: area_pixels,
        decoded: hex(decodeRle(mask.rle_counts, mask.height, mask.width)),
      }));
      client.close();
      console.log(JSON.stringify(out));
    })().catch((error) => { console.error(error); process.exit(1); });
""")


def test_decode_rle_follows_the_proto_spec(node, synthetic_server, tmp_path):
    """decodeRle agrees with pycocotools on the examples of Mask.rle_counts in common.proto and
    on a real server mask with holes (long runs, negative deltas, multi-character numbers)."""
    import cv2
    import numpy as np
    from pycocotools import mask as coco

    def pycoco(counts: str, height: int, width: int) -> np.ndarray:
        return coco.decode({"size": [height, width], "counts": counts.encode()})

    one_pixel = np.zeros((3, 2), np.uint8)  # 2 wide, 3 high, only (x=1, y=0) set
    one_pixel[0, 1] = 1
    full = np.ones((20, 20), np.uint8)
    examples = [("312", 3, 2, one_pixel), ("0`<", 20, 20, full)]
    for counts, height, width, mask in examples:  # the proto comment's examples are right
        assert coco.encode(np.asfortranarray(mask))["counts"].decode() == counts
        assert (pycoco(counts, height, width) == mask).all()

    image = blank(300, 200)
    ring = np.zeros((200, 300), np.uint8)
    cv2.circle(ring, (150, 100), 90, 1, -1)
    cv2.circle(ring, (150, 100), 40, 0, -1)
    cv2.rectangle(ring, (20, 150), (290, 160), 1, -1)
    ring[100:110, 70:230] = 0
    image[ring.astype(bool)] = RED
    image_path = tmp_path / "ring.png"
    image_path.write_bytes(encode(image))

    spec = json.dumps([[c, h, w] for c, h, w, _ in examples])
    done = run_node(node, "-e", RLE_DECODE, spec, synthetic_server.target, str(image_path))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)

    for hexed, (_, _, _, mask) in zip(out["examples"], examples, strict=True):
        assert bytes.fromhex(hexed) == mask.tobytes()  # row-major, like pycocotools' decode
    assert out["rejected"] == ["RangeError"] * 4  # truncated, wrong size, bad characters

    [detection] = out["server"]
    assert len(detection["counts"]) > 20  # a real mask, not a trivial one
    expected = pycoco(detection["counts"], detection["height"], detection["width"])
    assert (expected == ring).all()
    assert bytes.fromhex(detection["decoded"]) == expected.tobytes()
    assert detection["area"] == int(ring.sum())


ROUTES_AND_DEADLINES = textwrap.dedent("""
    const { Sam3Client, DEFAULT_TIMEOUTS_MS } = require('./client');
    (async () => {
      const [target, video] = process.argv.slice(1);
      const client = new Sam3Client(target);
      const out = { table: DEFAULT_TIMEOUTS_MS };
      const s1 = await client.startSession('clip.mp4');
      out.s1_route = s1.route;
      await client.addPrompt('s1', 0, 'red');
      out.removed_route = (await client.removeObject('s1', 1)).route;
      await client.resetSession('s1');
      for await (const _ of client.propagate('s1')) { /* the fake sends no frame */ }
      out.got_route = (await client.getSession('s1')).route;
      out.listed = (await client.listSessions()).map((s) => [s.session_id, s.route]);
      const s2 = await client.uploadVideo(video);
      out.s2_route = s2.route;
      await client.getSession('s2', { timeoutMs: 5000 });
      await client.closeSession('s1');
      out.after_close = (await client.getSession('s1')).route;
      out.routes_left = [...client.routes.entries()];
      client.close();
      const quick = new Sam3Client(target, { timeoutMs: 7000 });
      await quick.addPrompt('s9', 0, 'red');
      for await (const _ of quick.propagate('s9')) { /* none */ }
      quick.close();
      console.log(JSON.stringify(out));
    })().catch((error) => { console.error(error); process.exit(1); });
""")


def test_node_client_follows_the_session_route_and_default_deadlines(node, tmp_path):
    from sam3_grpc.client._core import DEFAULT_TIMEOUTS

    video = tmp_path / "clip.avi"
    video.write_bytes(b"not really a video: the fake replica only counts bytes")
    replica = FakeReplica()
    try:
        done = run_node(node, "-e", ROUTES_AND_DEADLINES, f"127.0.0.1:{replica.port}", str(video))
    finally:
        replica.stop()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)

    # One table of default deadlines, the same numbers as the Python client's.
    assert {m: (None if ms is None else ms / 1000) for m, ms in out["table"].items()} == (
        DEFAULT_TIMEOUTS
    )

    assert out["s1_route"] == "route-of-s1" and out["s2_route"] == "route-of-s2"
    assert out["removed_route"] == out["got_route"] == "route-of-s1"
    assert out["listed"] == [["s1", "route-of-s1"], ["other", None]]
    assert out["after_close"] is None and out["routes_left"] == [["s2", "route-of-s2"]]

    calls = replica.calls
    routes = [(c["method"], c["session_id"], c["route"]) for c in calls]
    assert routes == [
        ("StartSession", None, None),
        ("AddPrompt", "s1", "route-of-s1"),
        ("RemoveObject", "s1", "route-of-s1"),
        ("ResetSession", "s1", "route-of-s1"),
        ("Propagate", "s1", "route-of-s1"),
        ("GetSession", "s1", "route-of-s1"),
        ("ListSessions", None, None),
        ("UploadVideo", None, None),
        ("GetSession", "s2", "route-of-s2"),
        ("CloseSession", "s1", "route-of-s1"),
        ("GetSession", "s1", None),  # forgotten on close
        ("AddPrompt", "s9", None),
        ("Propagate", "s9", None),
    ]

    # The deadline each call carried on the wire (grpc-timeout), in seconds.
    def deadline(index: int) -> float | None:
        return calls[index]["time_remaining"]

    expected = {0: 120, 1: 600, 2: 120, 3: 120, 5: 30, 6: 30, 8: 5, 9: 60, 11: 7}
    for index, seconds in expected.items():
        remaining = deadline(index)
        assert remaining is not None and seconds / 2 < remaining <= seconds, (calls[index], seconds)
    for index in (4, 7, 12):  # the streams have none, even with a client-wide timeout
        assert deadline(index) is None, calls[index]


RETRIES = textwrap.dedent("""
    const { Sam3Client } = require('./client');
    (async () => {
      const client = new Sam3Client(process.argv[1]);
      const out = {};
      const started = Date.now();
      out.got = (await client.getSession('busy')).session_id;  // safe: retried after RetryInfo
      out.waited_ms = Date.now() - started;
      try {
        await client.addPrompt('busy', 0, 'red');  // not safe: never retried
      } catch (error) {
        out.add_prompt = {
          code: error.codeName, reason: error.reason, metadata: error.metadata,
          retry_after_ms: error.retryAfterMs,
        };
      }
      client.close();
      console.log(JSON.stringify(out));
    })().catch((error) => { console.error(error); process.exit(1); });
""")


def test_node_client_retries_only_safe_calls_after_retry_info(node):
    replica = FakeReplica()
    try:
        done = run_node(node, "-e", RETRIES, f"127.0.0.1:{replica.port}")
    finally:
        replica.stop()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["got"] == "busy"
    # It waited the server's RetryInfo delay (its own first backoff is at most 240 ms).
    assert out["waited_ms"] >= 600
    assert out["add_prompt"] == {
        "code": "RESOURCE_EXHAUSTED",
        "reason": "QUEUE_FULL",
        "metadata": {"capacity": "64"},
        "retry_after_ms": 600,
    }
    methods = [c["method"] for c in replica.calls]
    assert methods == ["GetSession", "GetSession", "AddPrompt"]


LOST_REPLICA = textwrap.dedent("""
    const { Sam3Client } = require('./client');
    (async () => {
      const client = new Sam3Client(process.argv[1]);
      const out = {};
      out.route = (await client.startSession('lost.mp4')).route;
      const describe = (error) => ({ code: error.codeName, reason: error.reason, details: error.details });
      try { await client.getSession('lost'); } catch (error) { out.get = describe(error); }
      try {
        for await (const _ of client.propagate('lost')) { /* none */ }
      } catch (error) { out.propagate = describe(error); }
      client.close();
      const down = new Sam3Client('127.0.0.1:1', { maxAttempts: 1 });
      down.routes.set('lost', 'route-of-lost');
      try { await down.getSession('lost', { timeoutMs: 5000 }); } catch (error) { out.down = describe(error); }
      down.close();
      console.log(JSON.stringify(out));
    })().catch((error) => { console.error(error); process.exit(1); });
""")


def test_node_client_names_a_lost_replica_and_never_retries(node):
    replica = FakeReplica()
    try:
        done = run_node(node, "-e", LOST_REPLICA, f"127.0.0.1:{replica.port}")
    finally:
        replica.stop()
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["route"] == "route-of-lost"
    for call in ("get", "propagate"):
        assert out[call]["code"] == "UNAVAILABLE" and out[call]["reason"] == "REPLICA_LOST"
        assert "'lost'" in out[call]["details"] and "start a new session" in out[call]["details"]
    assert "RST_STREAM" in out["propagate"]["details"]
    assert [c["method"] for c in replica.calls].count("GetSession") == 1  # not retried
    # A proxy that cannot be reached is not a lost replica: a plain, retryable UNAVAILABLE.
    assert out["down"]["code"] == "UNAVAILABLE" and out["down"]["reason"] is None
