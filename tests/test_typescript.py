"""TypeScript generated from protos/ compiles and calls the server (issue 12: protos for every
language, proved in CI).

scripts/check_typescript.sh generates the stubs with the committed buf.gen.yaml (ts-proto,
@grpc/grpc-js clients) and compiles them with clients/typescript/src/example.ts under strict tsc;
the compiled example then segments an image on a real server and decodes an error's
google.rpc.ErrorInfo and BadRequest with the generated googleapis types. Skipped only when node
or npm is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from helpers import RED, blank, draw_rect, encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TS_DIR = os.path.join(ROOT, "clients", "typescript")


@pytest.fixture(scope="module")
def compiled_example() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to generate and compile the TypeScript client")
    done = subprocess.run(
        [os.path.join(ROOT, "scripts", "check_typescript.sh")],
        capture_output=True,
        text=True,
        timeout=600,  # a first npm ci; afterwards the script takes seconds
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    example = os.path.join(TS_DIR, "dist", "example.js")
    assert os.path.isfile(example)
    return example


def run_example(example: str, *args: str) -> tuple[int, dict]:
    done = subprocess.run(
        ["node", example, *args], capture_output=True, text=True, timeout=60, cwd=TS_DIR
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_generated_typescript_client_segments_an_image(
    compiled_example, synthetic_server, tmp_path
):
    image = blank(80, 60)
    rect = draw_rect(image, 5, 10, 30, 40, RED)
    path = tmp_path / "photo.png"
    path.write_bytes(encode(image))

    code, reply = run_example(compiled_example, synthetic_server.target, str(path), "red")
    assert code == 0
    assert (reply["width"], reply["height"]) == (80, 60)
    [result] = reply["results"]
    assert result["prompt"] == "red"
    [detection] = result["detections"]
    assert detection["box"] == [5, 10, 30, 40]
    assert detection["areaPixels"] == int(rect.sum())  # int64 decoded as a number
    assert detection["rleCounts"]


def test_generated_typescript_client_reads_error_info(compiled_example, synthetic_server, tmp_path):
    path = tmp_path / "small.png"
    path.write_bytes(encode(blank(40, 30)))

    code, reply = run_example(compiled_example, synthetic_server.target, str(path), "point:50,5")
    assert code == 1
    error = reply["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["reasonName"] == "INVALID_REQUEST"
    assert error["reason"] == 1  # the generated ErrorReason.ERROR_REASON_INVALID_REQUEST
    [violation] = error["fieldViolations"]
    assert violation["field"] == "prompts[0].points[0].point"
    assert error["retryAfterMs"] is None
