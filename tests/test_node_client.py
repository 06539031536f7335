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
