"""The client commands of `sam3-grpc` (segment, track, status, health) end to end, in process
against a real synthetic server, plus one run of the console entry point in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers import BLUE, RED, blank, disc_clip, draw_disc, draw_rect, encode, write_video
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from sam3_grpc.cli import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, main
from sam3_grpc.client import Sam3Client
from sam3_grpc.client.overlay import LABEL_HEIGHT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNREACHABLE = "127.0.0.1:1"


def run(capsys, *argv):
    """Runs `sam3-grpc ARGV...` in process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# What `track` prints on stderr besides errors when stderr is not a terminal.
PROGRESS_LINE = re.compile(r"^(upload|propagate): |^prompt '.*' on frame \d+: ")


def assert_one_line_error(err: str, command: str, *fragments: str) -> None:
    """The error is one line, the last one; any line before it is a progress line."""
    lines = err.strip().splitlines()
    assert lines, err
    assert lines[-1].startswith(f"sam3-grpc {command}: error: "), err
    assert all(PROGRESS_LINE.match(line) for line in lines[:-1]), err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A PNG with a red rectangle and a blue disc, with room above each for its label."""
    image = blank(240, 180)
    rect = draw_rect(image, 20, 40, 90, 100, RED)
    disc = draw_disc(image, 170, 120, 30, BLUE)
    path = tmp_path_factory.mktemp("pictures") / "shapes.png"
    path.write_bytes(encode(image))
    return str(path), image, {"red": rect, "blue": disc}


@pytest.fixture(scope="module")
def video(tmp_path_factory, media_root):
    """A lossless 12-frame clip of a moving red disc (also copied into the media root)."""
    images, masks = disc_clip(frames=12)
    path = write_video(tmp_path_factory.mktemp("videos") / "moving.avi", images)
    write_video(os.path.join(media_root, "moving.avi"), images)
    return path, masks


def box_of(mask):
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() + 1), int(ys.max() + 1)


# ----- segment -----------------------------------------------------------------------------------
def test_segment_writes_overlay_and_coco_json(capsys, synthetic_server, picture, tmp_path):
    path, image, masks = picture
    out = tmp_path / "out"
    code, stdout, stderr = run(
        capsys,
        "segment",
        path,
        "--prompt",
        "red",
        "-p",
        "blue",
        "--server",
        synthetic_server.target,
        "--out",
        str(out),
    )
    assert code == EXIT_OK, stderr
    assert "red: 1 detection" in stdout and "blue: 1 detection" in stdout
    overlay_path, json_path = out / "shapes_overlay.png", out / "shapes_coco.json"
    assert overlay_path.is_file() and json_path.is_file()

    # The overlay differs from the input on every mask pixel, and nowhere but on masks, the
    # one-pixel box outlines just outside each box, and each label just above its box.
    overlay = cv2.cvtColor(cv2.imread(str(overlay_path)), cv2.COLOR_BGR2RGB)
    assert overlay.shape == image.shape
    changed = np.any(overlay != image, axis=2)
    allowed = np.zeros(changed.shape, bool)
    for mask in masks.values():
        assert changed[mask].all()
        x0, y0, x1, y1 = box_of(mask)
        ring = np.zeros_like(mask)
        ring[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = True
        ring[y0:y1, x0:x1] = False
        allowed |= mask | ring
        allowed[y0 - 1 - LABEL_HEIGHT : y0 - 1, x0 - 1 : x0 + 120] = True
        assert changed[ring].all()  # the outline is drawn all round
        inside_box_not_mask = np.zeros_like(mask)
        inside_box_not_mask[y0:y1, x0:x1] = ~mask[y0:y1, x0:x1]
        assert not changed[inside_box_not_mask].any()  # the tint stays inside the mask
        assert changed[y0 - 1 - LABEL_HEIGHT : y0 - 1, x0 - 1 : x0 + 20].any()  # a label
    assert not changed[~allowed].any()

    # The COCO file loads with pycocotools and its RLE masks decode to the drawn shapes.
    coco = COCO(str(json_path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["red", "blue"]
    [image_info] = coco.loadImgs(coco.getImgIds())
    assert (image_info["width"], image_info["height"], image_info["file_name"]) == (
        240,
        180,
        "shapes.png",
    )
    for name, mask in masks.items():
        [category] = coco.getCatIds(catNms=[name])
        [annotation] = coco.loadAnns(coco.getAnnIds(catIds=[category]))
        assert np.array_equal(coco.annToMask(annotation).astype(bool), mask)
        x0, y0, x1, y1 = box_of(mask)
        assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert annotation["area"] == mask.sum() and 0 <= annotation["score"] <= 1
    capsys.readouterr()  # COCO's own loading messages


def test_segment_json_summary_and_geometry_prompts(capsys, synthetic_server, picture, tmp_path):
    path, _, masks = picture
    code, stdout, stderr = run(
        capsys,
        "segment",
        path,
        "--point",
        "170,120",
        "--box",
        "15,35,95,105",
        "--json",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_OK, stderr
    summary = json.loads(stdout)
    box, point = summary["results"]  # text prompts first, then boxes, then points
    assert point["prompt"] == "point 170,120" and box["prompt"] == "box 15,35,95,105"
    assert point["detections"][0]["box"] == list(map(float, box_of(masks["blue"])))
    assert box["detections"][0]["area"] == masks["red"].sum()
    assert sorted(os.path.basename(f) for f in summary["files"]) == [
        "shapes_coco.json",
        "shapes_overlay.png",
    ]


def test_segment_server_side_path(capsys, synthetic_server, media_root, picture, tmp_path):
    _path, image, masks = picture
    with open(os.path.join(media_root, "remote.png"), "wb") as handle:
        handle.write(encode(image))
    code, _stdout, stderr = run(
        capsys,
        "segment",
        "remote.png",
        "--remote",
        "-p",
        "red",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_OK, stderr
    with open(tmp_path / "remote_coco.json") as handle:
        [annotation] = json.load(handle)["annotations"]
    rle = annotation["segmentation"]
    assert np.array_equal(
        coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool),
        masks["red"],
    )
    assert not (tmp_path / "remote_overlay.png").exists()


def test_segment_bad_path_is_a_usage_error(capsys, synthetic_server, tmp_path):
    missing = str(tmp_path / "missing.png")
    code, stdout, stderr = run(
        capsys,
        "segment",
        missing,
        "-p",
        "red",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_USAGE and stdout == ""
    assert_one_line_error(stderr, "segment", missing, "does not exist")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--box", "1,2,3"], "--box"),
        (["--box", "5,5,1,1"], "inverted"),
        (["--point", "x,y"], "--point"),
        ([], "--prompt"),
        (["-p", "red", "--score-threshold", "2"], "--score-threshold"),
    ],
)
def test_segment_bad_flag_values(capsys, synthetic_server, picture, tmp_path, argv, fragment):
    code, _, stderr = run(
        capsys,
        "segment",
        picture[0],
        *argv,
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_USAGE
    assert_one_line_error(stderr, "segment", fragment)


def test_unknown_flag_exits_with_usage_code(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["segment", "x.png", "--no-such-flag"])
    assert caught.value.code == EXIT_USAGE
    capsys.readouterr()


def test_segment_unreachable_server(capsys, picture, tmp_path):
    code, stdout, stderr = run(
        capsys, "segment", picture[0], "-p", "red", "--server", UNREACHABLE, "--out", str(tmp_path)
    )
    assert code == EXIT_SERVER_ERROR and stdout == ""
    assert_one_line_error(stderr, "segment", UNREACHABLE, "check that the server is running")


def test_segment_server_error_is_one_line(capsys, synthetic_server, picture, tmp_path):
    code, _, stderr = run(
        capsys,
        "segment",
        picture[0],
        "-p",
        "a dog",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(stderr, "segment", "INVALID_ARGUMENT", "colour")


def test_token_file_errors_are_usage_errors(capsys, synthetic_server, picture, tmp_path):
    code, _, stderr = run(
        capsys,
        "segment",
        picture[0],
        "-p",
        "red",
        "--token-file",
        str(tmp_path / "nope"),
        "--server",
        synthetic_server.target,
    )
    assert code == EXIT_USAGE
    assert_one_line_error(stderr, "segment", "--token-file")


# ----- track -------------------------------------------------------------------------------------
def no_open_sessions(target: str) -> bool:
    with Sam3Client(target) as client:
        return client.list_sessions() == []


def test_track_writes_overlay_video_and_per_frame_masks(capsys, synthetic_server, video, tmp_path):
    path, masks = video
    code, stdout, stderr = run(
        capsys,
        "track",
        path,
        "--prompt",
        "red",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
        "--chunk-size",
        "4096",
    )
    assert code == EXIT_OK, stderr
    assert "tracked 1 object over 12 frames" in stdout
    with open(tmp_path / "moving_masks.json") as handle:
        result = json.load(handle)
    assert result["video"]["frame_count"] == 12
    assert result["objects"] == [{"object_id": 1, "prompt": "red"}]
    assert result["prompts"] == [{"frame_index": 0, "prompt": "red", "object_ids": [1]}]
    assert [f["frame_index"] for f in result["frames"]] == list(range(12))
    for frame in result["frames"]:
        [obj] = frame["objects"]
        rle = obj["segmentation"]
        decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), masks[frame["frame_index"]])
        assert obj["area"] == masks[frame["frame_index"]].sum()

    capture = cv2.VideoCapture(str(tmp_path / "moving_overlay.mp4"))
    assert capture.isOpened()
    frames = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        assert image.shape == (120, 160, 3)
        frames += 1
    capture.release()
    assert frames == 12
    assert no_open_sessions(synthetic_server.target)


def test_track_from_a_middle_frame_both_ways_on_the_server(
    capsys, synthetic_server, video, tmp_path
):
    _path, _masks = video
    code, _stdout, stderr = run(
        capsys,
        "track",
        "moving.avi",
        "--remote",
        "-p",
        "red",
        "--frame",
        "6",
        "--direction",
        "both",
        "-q",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_OK, stderr
    assert "no overlay video" in stderr
    with open(tmp_path / "moving_masks.json") as handle:
        result = json.load(handle)
    assert [f["frame_index"] for f in result["frames"]] == list(range(12))
    assert not (tmp_path / "moving_overlay.mp4").exists()
    assert no_open_sessions(synthetic_server.target)


def test_track_closes_the_session_when_a_prompt_fails(capsys, synthetic_server, video, tmp_path):
    code, _, stderr = run(
        capsys,
        "track",
        video[0],
        "-p",
        "a dog",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(stderr, "track", "INVALID_ARGUMENT")
    assert no_open_sessions(synthetic_server.target)

    code, _, stderr = run(
        capsys,
        "track",
        video[0],
        "-p",
        "green",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(stderr, "track", "no object found")
    assert no_open_sessions(synthetic_server.target)

    code, _, stderr = run(
        capsys,
        "track",
        video[0],
        "-p",
        "red",
        "--frame",
        "99",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_USAGE
    assert_one_line_error(stderr, "track", "--frame 99")
    assert no_open_sessions(synthetic_server.target)


def test_track_bad_path_and_unreachable_server(capsys, video, tmp_path):
    code, _, stderr = run(
        capsys,
        "track",
        str(tmp_path / "nope.mp4"),
        "-p",
        "red",
        "--server",
        UNREACHABLE,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_USAGE
    assert_one_line_error(stderr, "track", "nope.mp4", "does not exist")
    code, _, stderr = run(
        capsys, "track", video[0], "-p", "red", "--server", UNREACHABLE, "--out", str(tmp_path)
    )
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(stderr, "track", UNREACHABLE, "check that the server is running")


# ----- status / health ---------------------------------------------------------------------------
def test_tls_to_a_plaintext_server_is_explained(capsys, synthetic_server):
    code, _, stderr = run(capsys, "status", "--server", synthetic_server.target, "--tls")
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(stderr, "status", "does not speak TLS")


def test_status_human_and_json(capsys, synthetic_server):
    code, stdout, _ = run(capsys, "status", "--server", synthetic_server.target)
    assert code == EXIT_OK
    assert "synthetic (synthetic) on cpu, ready" in stdout
    assert stdout.splitlines()[0].split() == ["server", synthetic_server.target]
    code, stdout, _ = run(capsys, "status", "--server", synthetic_server.target, "--json")
    assert code == EXIT_OK
    status = json.loads(stdout)
    assert status["model_kind"] == "synthetic" and status["ready"] is True
    assert status["queue"]["capacity"] > 0


def test_health_exit_codes(capsys, synthetic_server):
    assert run(capsys, "health", "--server", synthetic_server.target)[:2] == (EXIT_OK, "SERVING\n")
    code, stdout, _ = run(
        capsys,
        "health",
        "--server",
        synthetic_server.target,
        "--json",
        "--service",
        "sam3_grpc.v1.SegmentationService",
        "--wait",
        "5",
    )
    assert code == EXIT_OK and json.loads(stdout)["status"] == "SERVING"
    code, stdout, _ = run(
        capsys, "health", "--server", synthetic_server.target, "--service", "no.such.Service"
    )
    assert (code, stdout) == (EXIT_SERVER_ERROR, "SERVICE_UNKNOWN\n")


@pytest.mark.parametrize("command", ["status", "health"])
def test_status_and_health_unreachable(capsys, command):
    code, stdout, stderr = run(capsys, command, "--server", UNREACHABLE, "--timeout", "5")
    assert code == EXIT_SERVER_ERROR and stdout == ""
    assert_one_line_error(stderr, command, UNREACHABLE)


# ----- TLS and tokens ----------------------------------------------------------------------------
def test_tls_mutual_tls_and_tokens_against_a_real_server(capsys, start_server, picture, tmp_path):
    from certs import make_certificates

    from sam3_grpc.engines.synthetic import SyntheticEngine

    (tmp_path / "certs").mkdir()
    certs = make_certificates(tmp_path / "certs")
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    server = start_server(
        SyntheticEngine(),
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        tls_client_ca=str(certs.ca),
        auth_token_file=str(tokens),
    )
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    tls = [
        "--tls-ca",
        str(certs.ca),
        "--tls-cert",
        str(certs.client_cert),
        "--tls-key",
        str(certs.client_key),
    ]
    code, stdout, stderr = run(
        capsys,
        "segment",
        picture[0],
        "-p",
        "red",
        "--server",
        server.target,
        "--token-file",
        str(token_file),
        "--out",
        str(tmp_path),
        *tls,
    )
    assert code == EXIT_OK, stderr
    assert "red: 1 detection" in stdout

    code, _, stderr = run(capsys, "status", "--server", server.target, *tls)
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(stderr, "status", server.target, "--token")

    # Without the client certificate the handshake fails: one line, exit 1, saying what to do.
    code, _, stderr = run(
        capsys,
        "status",
        "--server",
        server.target,
        "--tls-ca",
        str(certs.ca),
        "--token",
        "s3cret",
        "--timeout",
        "10",
    )
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(stderr, "status", server.target, "--tls-cert")
    # Not trusting the server's certificate, or not using TLS at all, is explained too.
    code, _, stderr = run(capsys, "status", "--server", server.target, "--tls")
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(stderr, "status", server.target, "--tls-ca")
    code, _, stderr = run(capsys, "status", "--server", server.target)
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(stderr, "status", server.target, "--tls-ca")
    code, _, stderr = run(
        capsys, "status", "--server", server.target, "--tls-cert", str(certs.client_cert)
    )
    assert code == EXIT_USAGE
    assert_one_line_error(stderr, "status", "--tls-key")


# ----- the console script ------------------------------------------------------------------------
def test_console_script_in_a_subprocess_stays_light(synthetic_server, picture, tmp_path):
    probe = (
        "import sys; import sam3_grpc.cli as cli; cli.build_parser(); "
        "heavy = [m for m in ('numpy', 'cv2', 'torch', 'tqdm', 'grpc') if m in sys.modules]; "
        "print(heavy)"
    )
    light = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert light.stdout.strip() == "[]", light.stderr
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sam3_grpc.cli",
            "segment",
            picture[0],
            "-p",
            "blue",
            "--server",
            synthetic_server.target,
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert (tmp_path / "shapes_overlay.png").is_file()
