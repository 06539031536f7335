"""The client commands of `sam3-grpc` (segment, track, status, health) end to end, in process
against a real synthetic server, plus one run of the console entry point in a subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
from helpers import BLUE, RED, blank, disc_clip, draw_disc, draw_rect, encode, write_video
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from sam3_grpc.cli import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE, main
from sam3_grpc.cli.common import EXIT_INTERRUPTED
from sam3_grpc.cli.progress import Progress
from sam3_grpc.client import Sam3Client
from sam3_grpc.client.overlay import (
    H264_MP4,
    LABEL_HEIGHT,
    MAX_INLINE_LABELS,
    MPEG4_MP4,
    VP9_WEBM,
    Item,
    choose_video_format,
    layout,
    legend_swatch,
    mask_edge,
    pyav_can_encode,
    write_video_overlay,
)
from sam3_grpc.client.overlay import draw as draw_items
from sam3_grpc.client.types import Box
from sam3_grpc.engines.synthetic import SyntheticEngine

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
    ("argv", "fragments"),
    [
        (["--box", "1,2,3"], ["--box '1,2,3' must be X0,Y0,X1,Y1", "e.g. --box 10,10,50,50"]),
        (["--box", "5,5,1,1"], ["empty or inverted", "X1 > X0 and Y1 > Y0", "--box 10,10,50,50"]),
        (["--box", "10,10,10,10"], ["empty or inverted", "X1 > X0 and Y1 > Y0"]),
        (["--box", "nan,1,5,5"], ["finite"]),
        (["--point", "x,y"], ["--point 'x,y' must be X,Y", "e.g. --point 10,20"]),
        (["-p", ""], ["--prompt is empty:", "-p 'a dog'"]),
        (["-p", "red", "-p", "  "], ["--prompt is empty (only spaces)"]),
        ([], ["give at least one --prompt"]),
        (["-p", "red", "--score-threshold", "2"], ["--score-threshold"]),
    ],
)
def test_segment_bad_flag_values(capsys, synthetic_server, picture, tmp_path, argv, fragments):
    code, stdout, stderr = run(
        capsys,
        "segment",
        picture[0],
        *argv,
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert (code, stdout) == (EXIT_USAGE, "")
    assert_one_line_error(stderr, "segment", *fragments)
    assert not os.listdir(tmp_path)  # refused before anything was sent or written


def test_the_suggested_examples_are_accepted(capsys, synthetic_server, picture, tmp_path):
    """The examples the error messages suggest are themselves valid prompts."""
    from sam3_grpc.cli.common import BOX_EXAMPLE, POINT_EXAMPLE

    code, stdout, stderr = run(
        capsys,
        "segment",
        picture[0],
        "--box",
        BOX_EXAMPLE,
        "--point",
        POINT_EXAMPLE,
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_OK, stderr
    assert f"box {BOX_EXAMPLE}:" in stdout and f"point {POINT_EXAMPLE}:" in stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["segment", "x.png", "--prom", "red"],  # --prompt
        ["segment", "x.png", "-p", "red", "--serv", "h:1"],  # --server
        ["track", "x.mp4", "-p", "red", "--max-frame", "3"],  # --max-frames
        ["status", "--tim", "3"],  # --timeout
        ["health", "--wai", "3"],  # --wait
        ["serve", "--media-roo", "/srv"],  # --media-root
        ["serve", "--que", "3"],  # --queue-size
    ],
)
def test_flag_prefixes_are_not_flags(capsys, argv):
    from sam3_grpc.cli import build_parser

    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == EXIT_USAGE
    assert "unrecognized arguments" in capsys.readouterr().err


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
    # stderr is not a terminal here: plain progress lines, the last of each step complete.
    progress = stderr.splitlines()
    assert progress[0] == "upload: started (12.8 KiB)" or progress[0].startswith("upload: started")
    assert any(re.match(r"upload: \S+ KiB of \S+ KiB \(100\.0 %\), .* in ", p) for p in progress)
    assert any(p.startswith("propagate: started from frame 0 (forward)") for p in progress)
    assert re.match(r"propagate: 12/12 frames \(100\.0 %\), .* in ", progress[-1]), stderr
    with open(tmp_path / "moving_masks.json") as handle:
        result = json.load(handle)
    assert result["complete"] is True and result["frames_total"] == 12
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

    # A browser plays it: H.264 in MP4, 4:2:0, every frame of the input, the disc tinted.
    assert f"wrote {tmp_path / 'moving_overlay.mp4'} (12 frames, H.264)" in stdout
    codec, pix_fmt, images = decode_video(tmp_path / "moving_overlay.mp4")
    assert (codec, pix_fmt, len(images)) == ("h264", "yuv420p", 12)
    # Each decoded frame is (up to H.264's loss) the drawing of that frame's own mask.
    for image, mask in zip(images, masks, strict=True):
        assert image.shape == (120, 160, 3)
        expected = draw_items(disc_frame(mask), [Item(mask, box_of(mask), "red #1", 0)])
        inside = mask & ~mask_edge(mask)
        assert np.abs(image[inside].mean(0) - expected[inside].mean(0)).max() < 12
        assert np.abs(image.astype(int) - expected).mean() < 3  # 1.2 here; 4.9 a frame off
    assert no_open_sessions(synthetic_server.target)


def disc_frame(mask):
    """The frame of the `video` fixture whose red disc is `mask`."""
    image = blank(160, 120)
    image[mask] = RED
    return image


def decode_video(path):
    """(codec name, pixel format, RGB frames) of a video file, decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        images = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return stream.codec_context.name, stream.codec_context.pix_fmt, images


def test_track_prints_a_progress_line_per_frame_with_interval_zero(
    capsys, synthetic_server, video, tmp_path
):
    code, _, stderr = run(
        capsys,
        "track",
        video[0],
        "-p",
        "red",
        "--progress-interval",
        "0",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_OK, stderr
    counts = [
        int(m.group(1)) for m in re.finditer(r"^propagate: (\d+)/12 frames", stderr, re.MULTILINE)
    ]
    assert counts == list(range(1, 13))
    lines = [line for line in stderr.splitlines() if line.startswith("propagate: 5/12")]
    assert re.fullmatch(
        r"propagate: 5/12 frames \(41\.7 %\), \d+\.\d (frames/s|s/frame), ETA \S+", lines[0]
    )
    # Prompts say what they are doing, and what they found.
    assert "prompt 'red' on frame 0: running" in stderr
    assert re.search(r"prompt 'red' on frame 0: 1 object \(id 1\) in \S+", stderr)


def test_track_quiet_prints_no_progress(capsys, synthetic_server, video, tmp_path):
    code, stdout, stderr = run(
        capsys,
        "track",
        video[0],
        "-p",
        "red",
        "-q",
        "--server",
        synthetic_server.target,
        "--out",
        str(tmp_path),
    )
    assert code == EXIT_OK, stderr
    assert stderr == "" and "tracked 1 object over 12 frames" in stdout


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


def test_track_interrupted_writes_the_frames_received(start_server, tmp_path):
    """Ctrl-C during propagation: the masks and the overlay of the frames received are written,
    the command says so and exits 130, and the session is closed. The whole propagation would
    take ~30 s, so the interrupt after frame 3 lands mid-way even on a slow, busy machine."""
    from sam3_grpc.engines.synthetic import SyntheticEngine

    TOTAL = 100  # frames

    server = start_server(SyntheticEngine(latency_ms=300))
    images, masks = disc_clip(frames=TOTAL, step=1)
    source = write_video(tmp_path / "long.avi", images)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sam3_grpc.cli",
            "track",
            source,
            "-p",
            "red",
            "--progress-interval",
            "0",
            "--server",
            server.target,
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # A test run started in the background by a non-interactive shell ignores SIGINT, and
        # children inherit that: give the command the disposition a terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        seen = []
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(line)
            match = re.match(rf"propagate: (\d+)/{TOTAL} frames", line)
            if match and int(match.group(1)) >= 3:
                break
        else:
            stdout, rest = process.communicate(timeout=60)
            raise AssertionError(
                f"no progress line (exit {process.returncode}): {''.join(seen)}{rest}\n{stdout}"
            )
        process.send_signal(signal.SIGINT)
        stdout, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = "".join(seen) + rest
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr
    with open(out / "long_masks.json") as handle:
        result = json.load(handle)
    done = [frame["frame_index"] for frame in result["frames"]]
    assert result["complete"] is False and result["frames_total"] == TOTAL
    assert 3 <= len(done) < TOTAL and done == list(range(len(done)))
    for frame in result["frames"]:
        [obj] = frame["objects"]
        rle = obj["segmentation"]
        decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), masks[frame["frame_index"]])
    assert f"tracked 1 object over {len(done)} of {TOTAL} frames" in stdout
    assert f"({len(done)} frames, H.264)" in stdout
    codec, _, frames = decode_video(out / "long_overlay.mp4")
    assert (codec, len(frames)) == ("h264", len(done))
    assert f"interrupted after {len(done)} of {TOTAL} frames" in rest
    assert no_open_sessions(server.target)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_lines_come_every_interval_with_rate_and_eta():
    clock, stream = FakeClock(), io.StringIO()  # a StringIO is not a terminal
    progress = Progress("propagate", "frames", interval=10, stream=stream, clock=clock)
    for done in range(1, 3001):
        clock.now += 0.5  # 2 frames/s
        progress.update(done, 3000)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "propagate: started"
    assert lines[1] == "propagate: 1/3000 frames (0.0 %), 2.0 frames/s, ETA 25m00s"
    assert lines[2] == "propagate: 21/3000 frames (0.7 %), 2.0 frames/s, ETA 24m50s"  # 10 s on
    # started, the first frame, one line per 10 s (at 10.5 s ... 1490.5 s), finish()
    assert len(lines) == 1 + 1 + 149 + 1
    assert lines[-1] == "propagate: 3000/3000 frames (100.0 %), 2.0 frames/s in 25m00s"


def test_slow_progress_reads_in_seconds_per_unit_and_bytes_in_binary_units():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress("propagate", "frames", interval=0, stream=stream, clock=clock)
    clock.now += 5.4
    progress.update(1, 16)
    clock.now = 1000 + 5.4 * 2
    progress.update(2, 16)
    assert stream.getvalue().splitlines()[-1] == (
        "propagate: 2/16 frames (12.5 %), 5.4 s/frame, ETA 1m16s"
    )
    stream = io.StringIO()
    upload = Progress("upload", "bytes", total=40 << 20, stream=stream, clock=clock)
    clock.now += 2
    upload.update(12 << 20)
    assert stream.getvalue().splitlines() == [
        "upload: started (40.0 MiB)",
        "upload: 12.0 MiB of 40.0 MiB (30.0 %), 6.0 MiB/s, ETA 4.7s",
    ]


def test_progress_on_a_terminal_is_a_bar():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = Progress("propagate", "frames", stream=stream)
    for done in range(1, 6):
        progress.update(done, 5)
    progress.finish()
    text = stream.getvalue()
    assert "\r" in text and "5/5" in text and "started" not in text


def test_track_failing_mid_propagation_keeps_the_frames_received(
    capsys, start_server, video, tmp_path
):
    engine = SyntheticEngine()
    server = start_server(engine)
    steps = []

    def fail_on_the_fifth_frame(name: str) -> None:
        if name == "propagate_step":
            steps.append(name)
            if len(steps) == 5:
                raise RuntimeError("injected device fault")

    engine.before_call = fail_on_the_fifth_frame
    code, stdout, stderr = run(
        capsys, "track", video[0], "-p", "red", "--server", server.target, "--out", str(tmp_path)
    )
    assert code == EXIT_SERVER_ERROR
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("sam3-grpc track: error: ") and "INTERNAL" in lines[-1]
    assert lines[-2] == (
        "sam3-grpc track: the propagation failed after 4 of 12 frames; the files above hold "
        "the frames done"
    )
    assert "tracked 1 object over 4 of 12 frames" in stdout
    with open(tmp_path / "moving_masks.json") as handle:
        result = json.load(handle)
    assert result["complete"] is False
    assert [frame["frame_index"] for frame in result["frames"]] == [0, 1, 2, 3]
    assert len(decode_video(tmp_path / "moving_overlay.mp4")[2]) == 4
    assert no_open_sessions(server.target)


# ----- overlays ----------------------------------------------------------------------------------
def label_column(image, rect):
    """The first column of a label rectangle: padding, so the label's fill colour only."""
    return image[rect.top : rect.bottom, rect.left]


def test_overlapping_boxes_get_labels_in_separate_places():
    image = blank(240, 180)
    first = draw_rect(image, 40, 40, 120, 120, RED)
    second = draw_rect(image, 44, 44, 124, 124, BLUE)
    first &= ~second
    items = [
        Item(first, (40, 40, 120, 120), "red 0.98", 0),
        Item(second, (44, 44, 124, 124), "blue 0.91", 1),
    ]
    plan = layout(image, items)
    [a, b] = plan.labels
    assert a is not None and b is not None and plan.legend is None
    assert (a.left, a.bottom) == (39, 39)  # just above the first outline
    assert not a.overlaps(b) and a.inside(240, 180) and b.inside(240, 180)
    drawn = draw_items(image, items)
    for rect, colour in zip((a, b), plan.colours, strict=True):
        assert (label_column(drawn, rect) == colour).all()
        inked = drawn[rect.top : rect.bottom, rect.left : rect.right] != np.asarray(colour)
        assert inked.any(axis=2).sum() > 20  # the text is there


def test_a_box_covering_the_image_keeps_its_label_inside():
    image = blank(
        240,
        180,
    )
    image[:] = (90, 90, 90)
    whole = np.ones((180, 240), bool)
    left = np.zeros_like(whole)
    left[:, :120] = True
    items = [
        Item(whole, (0, 0, 240, 180), "wall 0.99", 0),
        Item(left, (0, 0, 120, 180), "left half 0.50", 1),
    ]
    plan = layout(image, items)
    [a, b] = plan.labels
    assert a is not None and b is not None and plan.legend is None
    assert (a.left, a.top) == (0, 0)  # inside the top of the box, clipped to the image
    assert a.inside(240, 180) and b.inside(240, 180) and not a.overlaps(b)
    drawn = draw_items(image, items)
    assert (label_column(drawn, a) == plan.colours[0]).all()
    assert (label_column(drawn, b) == plan.colours[1]).all()


def test_masks_are_tinted_inside_and_outlined_on_their_edge():
    image = blank(160, 120)
    image[:] = (90, 90, 90)
    mask = draw_disc(image.copy(), 80, 60, 25, RED)
    items = [Item(mask, box_of(mask), "", 0)]
    drawn = draw_items(image, items)
    [colour] = layout(image, items).colours
    edge = mask_edge(mask)
    assert edge.any() and not (edge & ~mask).any()
    outside = np.pad(~mask, 1, constant_values=False)
    neighbour_outside = (
        outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2] | outside[1:-1, 2:]
    )
    assert np.array_equal(edge, mask & neighbour_outside)
    assert (drawn[edge] == colour).all()
    blend = np.rint(0.5 * 90 + 0.5 * np.asarray(colour, float))
    assert (drawn[mask & ~edge] == blend).all()
    x0, y0, x1, y1 = box_of(mask)
    untouched = np.ones(mask.shape, bool)
    untouched[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = False
    assert (drawn[untouched] == 90).all()


def test_crowded_images_get_number_tags_and_a_legend():
    image = blank(320, 200)
    items = []
    for i in range(MAX_INLINE_LABELS + 2):  # in the left 200 columns, 2 rows of 4
        x, y = 10 + (i % 4) * 48, 30 + (i // 4) * 90
        mask = draw_disc(image, x + 18, y + 18, 16, (200, 40 + 20 * i, 40))
        items.append(Item(mask, box_of(mask), f"thing {i} 0.{90 - i}", i))
    plan = layout(image, items)
    assert plan.legend is not None
    assert plan.texts == [str(n) for n in range(1, len(items) + 1)]
    assert [text for _, text in plan.legend_rows] == [
        f"{n} {item.label}" for n, item in enumerate(items, 1)
    ]
    assert len(set(plan.colours)) == len(items)  # one colour per object
    # The legend sits in the free corner: the top right.
    assert (plan.legend.right, plan.legend.top) == (320, 0) and plan.legend.inside(320, 200)
    drawn = draw_items(image, items)
    for row, (colour, _) in enumerate(plan.legend_rows):
        swatch = legend_swatch(plan.legend, row)
        patch = drawn[swatch.top : swatch.bottom, swatch.left : swatch.right]
        assert (patch == colour).all()
    tags = [rect for rect in plan.labels if rect is not None]
    assert all(not a.overlaps(b) for i, a in enumerate(tags) for b in tags[i + 1 :])


def test_labels_that_cannot_all_find_a_place_move_to_a_legend():
    image = blank(160, 140)
    whole = np.ones((140, 160), bool)
    items = [Item(whole, (0, 0, 160, 140), f"layer {i}", i) for i in range(5)]
    plan = layout(image, items)  # 5 labels, 4 places inside a box that fills the image
    assert plan.legend is not None
    assert [text for _, text in plan.legend_rows] == [f"{n} layer {n - 1}" for n in range(1, 6)]
    # A legend taller than the image keeps the rows that fit and counts the rest.
    short = layout(
        blank(160, 90), [Item(whole[:90], (0, 0, 160, 90), i.label, i.index) for i in items]
    )
    assert short.legend is not None and short.legend.inside(160, 90)
    assert [text for _, text in short.legend_rows] == [
        "1 layer 0",
        "2 layer 1",
        "3 layer 2",
        "+2 more",
    ]


def write_lossless_video(path, images, fps: int = 10) -> str:
    """RGB frames as FFV1 in Matroska, written with PyAV (OpenCV's writer evens odd sizes)."""
    import av

    height, width = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr0"
        for image in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return str(path)


def rle_of(mask):
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


@pytest.mark.parametrize(
    ("missing", "expected", "codec"),
    [
        ((), H264_MP4, "h264"),
        (("libx264",), VP9_WEBM, "vp9"),
        (("libx264", "libvpx-vp9"), MPEG4_MP4, "mpeg4"),
    ],
)
def test_overlay_video_format_follows_the_installed_encoders(tmp_path, missing, expected, codec):
    chosen = choose_video_format(lambda name: name not in missing and pyav_can_encode(name))
    assert chosen == expected
    images, masks = disc_clip(frames=6, width=161, height=121)  # odd sizes
    source = write_lossless_video(tmp_path / "odd.mkv", images)
    frames = {
        i: [
            {
                "object_id": 1,
                "score": 0.9,
                "bbox": list(Box(*box_of(mask)).to_xywh()),
                "area": int(mask.sum()),
                "segmentation": rle_of(mask),
            }
        ]
        for i, mask in enumerate(masks)
    }
    stem = str(tmp_path / "odd_overlay")
    path, written, used = write_video_overlay(
        source, stem, 10.0, {1: "red"}, frames, video_format=chosen
    )
    assert (path, written, used) == (stem + expected.extension, 6, expected)
    decoded_codec, pix_fmt, decoded = decode_video(path)
    assert (decoded_codec, len(decoded)) == (codec, 6)
    if expected.browser:  # 4:2:0 needs even sizes: padded by one replicated row and column
        assert pix_fmt == "yuv420p" and decoded[0].shape == (122, 162, 3)
    # An interrupted run writes only the frames that have results.
    partial = {i: frames[i] for i in range(3)}
    _, written, _ = write_video_overlay(
        source, stem + "_partial", 10.0, {1: "red"}, partial, only_results=True, video_format=chosen
    )
    assert written == 3 and len(decode_video(stem + "_partial" + expected.extension)[2]) == 3


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


def test_a_wrong_tls_server_name_is_reported_as_a_name_mismatch(capsys, start_server, tmp_path):
    from certs import make_certificates

    from sam3_grpc.engines.synthetic import SyntheticEngine

    certs = make_certificates(tmp_path)  # the server certificate names localhost and 127.0.0.1
    server = start_server(
        SyntheticEngine(), tls_cert=str(certs.server_cert), tls_key=str(certs.server_key)
    )
    tls = ["--server", server.target, "--tls-ca", str(certs.ca)]
    code, _, stderr = run(capsys, "status", *tls, "--tls-server-name", "wrong.example")
    assert code == EXIT_SERVER_ERROR
    assert_one_line_error(
        stderr,
        "status",
        "TLS name mismatch",
        "'wrong.example' (from --tls-server-name)",
        "it names localhost, 127.0.0.1",
    )
    assert "check that the server is running" not in stderr
    code, _, stderr = run(capsys, "status", *tls, "--tls-server-name", "localhost")
    assert code == EXIT_OK, stderr


class SlowLoadingEngine(SyntheticEngine):
    """Holds the model load until `may_load` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.may_load = threading.Event()

    def load(self) -> None:
        assert self.may_load.wait(60)
        super().load()


def test_a_loading_model_points_to_health_wait(capsys, picture, tmp_path):
    from conftest import launch

    engine = SlowLoadingEngine()
    server = launch(engine, wait_ready=False)
    try:
        code, _, stderr = run(
            capsys,
            "segment",
            picture[0],
            "-p",
            "red",
            "--timeout",
            "1",  # no time for the retries the server's RetryInfo suggests
            "--server",
            server.target,
            "--out",
            str(tmp_path),
        )
        assert code == EXIT_SERVER_ERROR
        assert_one_line_error(
            stderr,
            "segment",
            "still loading",
            f"sam3-grpc health --wait 300 --server {server.target}",
        )
        assert run(capsys, "health", "--server", server.target)[:2] == (
            EXIT_SERVER_ERROR,
            "NOT_SERVING\n",
        )
    finally:
        engine.may_load.set()
        server.stop()


def test_timeout_defaults_to_each_calls_own_deadline():
    from sam3_grpc.cli import build_parser
    from sam3_grpc.cli.common import make_client
    from sam3_grpc.client._core import DEFAULT, DEFAULT_TIMEOUTS

    parser = build_parser()
    with make_client(parser.parse_args(["status"])) as client:
        assert client.timeout is DEFAULT
    with make_client(parser.parse_args(["status", "--timeout", "7"])) as client:
        assert client.timeout == 7
    # The help states the client's actual defaults.
    help_text = " ".join(
        parser._subparsers._group_actions[0].choices["segment"].format_help().split()
    )
    assert f"{DEFAULT_TIMEOUTS['SegmentImage']:g} s to segment an image" in help_text
    assert f"{DEFAULT_TIMEOUTS['AddPrompt']:g} s for a prompt on a video frame" in help_text
    assert f"{DEFAULT_TIMEOUTS['GetServerStatus']:g} s for status" in help_text
    assert DEFAULT_TIMEOUTS["Check"] == DEFAULT_TIMEOUTS["GetServerStatus"]
    assert DEFAULT_TIMEOUTS["UploadVideo"] is None and DEFAULT_TIMEOUTS["Propagate"] is None


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
