"""`sam3-grpc track`: upload a video, prompt, propagate, write an overlay video and masks."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sam3_grpc.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CommandError,
    UsageError,
    add_connection_arguments,
    add_output_filters,
    add_prompt_arguments,
    check_input_file,
    file_stem,
    handler,
    make_client,
    output_from_args,
    prepare_out_dir,
    prompts_from_args,
    require_cv2,
    write_json,
)
from sam3_grpc.cli.progress import DEFAULT_INTERVAL_S, Progress, duration_text


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "track",
        help="track objects through a video",
        description="Upload VIDEO, prompt objects on frame --frame, propagate through the "
        "video, and write <stem>_masks.json (per-frame RLE masks) and an overlay video "
        "with the same frame count as the input into --out: <stem>_overlay.mp4 (H.264), or "
        "<stem>_overlay.webm (VP9) when no H.264 encoder is installed. Progress goes to "
        "stderr: bars on a terminal, plain lines otherwise. Ctrl-C stops the propagation "
        "and writes the frames done so far (exit 130). The session is always closed, also "
        "on errors and Ctrl-C.",
    )
    parser.add_argument("video", metavar="VIDEO", help="local video file (MP4, AVI, MOV, MKV...)")
    add_prompt_arguments(parser, "object")
    parser.add_argument(
        "--frame",
        type=int,
        default=0,
        metavar="N",
        help="frame the prompts are placed on (default 0)",
    )
    parser.add_argument(
        "--direction",
        choices=("forward", "backward", "both"),
        default="forward",
        help="propagation direction from --start-frame",
    )
    parser.add_argument(
        "--start-frame",
        type=int,
        metavar="N",
        help="first frame to propagate from (default: --frame)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=0,
        metavar="N",
        help="process at most N frames per direction (0: all)",
    )
    parser.add_argument(
        "--out",
        "-o",
        default=".",
        metavar="DIR",
        help="output directory (created if missing; default: current directory)",
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="VIDEO is a path on the server, inside its media root (no upload, no overlay video)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="upload chunk size (default 1 MiB)",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress on stderr (results only)"
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help="when stderr is not a terminal, print a progress line this often (default "
        f"{DEFAULT_INTERVAL_S:g}; 0: at every frame); on a terminal progress bars are shown",
    )
    add_output_filters(parser)
    add_connection_arguments(parser)
    parser.set_defaults(handler=handler("track", _track))


@dataclass
class _Tracking:
    """What the server sent so far: kept outside the session so that an interrupted run can
    still write it."""

    info: Any = None  # the Session description
    prompt_log: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)  # object id -> its prompt's label
    frames: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    frames_total: int = 0


def _track(args: argparse.Namespace) -> int:
    prompts = prompts_from_args(args)
    output = output_from_args(args)
    if args.frame < 0:
        raise UsageError("--frame cannot be negative")
    if args.chunk_size <= 0:
        raise UsageError("--chunk-size must be positive")
    if args.progress_interval < 0:
        raise UsageError("--progress-interval cannot be negative")
    draw_video = not args.remote  # the video is local: it can be drawn on
    if draw_video:
        check_input_file(args.video, "video")
        require_cv2()
    out_dir = prepare_out_dir(args.out)

    from sam3_grpc.client.errors import Sam3Error

    run = _Tracking()
    stopped_by: BaseException | None = None
    with make_client(args) as client:
        try:
            with _session(args, client) as session:  # always closed, also on Ctrl-C
                run.info = session.info
                _prompt(args, session, prompts, output, run)
                _propagate(args, session, output, run)
        except (KeyboardInterrupt, Sam3Error) as exc:
            if not run.frames:
                raise  # nothing to save: the usual one-line error or "interrupted"
            stopped_by = exc  # save the frames received first
    _write_results(args, out_dir, draw_video, run, complete=stopped_by is None)
    if stopped_by is None:
        return EXIT_OK
    done = f"{len(run.frames)} of {run.frames_total} frames"
    if isinstance(stopped_by, KeyboardInterrupt):
        print(
            f"sam3-grpc track: interrupted after {done}; the files above hold the frames done",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(
        f"sam3-grpc track: the propagation failed after {done}; the files above hold the "
        f"frames done",
        file=sys.stderr,
    )
    raise stopped_by  # then the one-line error, as for any failed call


@contextlib.contextmanager
def _session(args: argparse.Namespace, client: Any) -> Iterator[Any]:
    """Opens the session (uploading the video, with progress) and always closes it."""
    from sam3_grpc.client.types import ServerPath

    if args.remote:
        with client.session(ServerPath(args.video)) as session:
            yield session
        return
    progress = Progress(
        "upload",
        "bytes",
        total=os.path.getsize(args.video),
        enabled=not args.quiet,
        interval=args.progress_interval,
    )
    try:
        with client.session(
            upload=args.video,
            chunk_size=args.chunk_size,
            progress=lambda sent, total: progress.update(sent, total),
        ) as session:
            progress.finish()
            yield session
    finally:
        progress.close()


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _prompt(
    args: argparse.Namespace, session: Any, prompts: list[Any], output: Any, run: _Tracking
) -> None:
    if args.frame >= session.frame_count:
        raise UsageError(
            f"--frame {args.frame} is past the end of the video ({session.frame_count} frames)"
        )
    for prompt in prompts:
        _say(args, f"prompt {prompt.label!r} on frame {args.frame}: running")
        started = time.monotonic()
        added = session.add_prompt(args.frame, prompt, output=output)
        ids = ", ".join(map(str, added.object_ids))
        count = len(added.object_ids)
        _say(
            args,
            f"prompt {prompt.label!r} on frame {args.frame}: {count} object"
            f"{'s' if count != 1 else ''}{f' (id {ids})' if ids else ''} in "
            f"{duration_text(time.monotonic() - started)}",
        )
        run.prompt_log.append(
            {"frame_index": args.frame, "prompt": prompt.label, "object_ids": added.object_ids}
        )
        for oid in added.object_ids:
            run.labels.setdefault(oid, prompt.label)
    if not run.labels:
        raise CommandError(
            f"no object found on frame {args.frame} for "
            f"{', '.join(repr(p.label) for p in prompts)}; nothing to track"
        )


def _propagate(args: argparse.Namespace, session: Any, output: Any, run: _Tracking) -> None:
    start = args.start_frame if args.start_frame is not None else args.frame
    progress = Progress(
        "propagate",
        "frames",
        enabled=not args.quiet,
        interval=args.progress_interval,
        start_note=f" from frame {start} ({args.direction}); the model sends its first frames "
        "together, so the first count comes after several frame times",
    )
    try:
        with session.propagate(
            direction=args.direction,
            start_frame_index=start,
            max_frames=args.max_frames,
            output=output,
        ) as stream:
            for frame in stream:
                run.frames[frame.frame_index] = [
                    {
                        "object_id": d.object_id,
                        "score": float(d.score),
                        "bbox": d.box.to_xywh(),
                        "area": int(d.area),
                        "segmentation": d.rle,
                    }
                    for d in frame.objects
                ]
                run.frames_total = frame.frames_total
                progress.update(frame.frames_done, frame.frames_total)
        progress.finish()
    finally:
        progress.close()


def _write_results(
    args: argparse.Namespace, out_dir: str, draw_video: bool, run: _Tracking, *, complete: bool
) -> None:
    """The masks JSON and the overlay video; of the frames received when not `complete`."""
    info = run.info
    stem = file_stem(args.video)
    json_path = os.path.join(out_dir, f"{stem}_masks.json")
    write_json(
        json_path,
        {
            "video": {
                "file_name": os.path.basename(args.video),
                "frame_count": info.frame_count,
                "fps": info.fps,
                "width": info.width,
                "height": info.height,
            },
            # False when the run stopped early: "frames" then holds the frames done.
            "complete": complete,
            "frames_total": run.frames_total,
            "prompts": run.prompt_log,
            "objects": [
                {"object_id": oid, "prompt": label} for oid, label in sorted(run.labels.items())
            ],
            "frames": [
                {"frame_index": index, "objects": objects}
                for index, objects in sorted(run.frames.items())
            ],
        },
    )
    objects, done = len(run.labels), len(run.frames)
    of_total = "" if complete else f" of {run.frames_total}"
    print(
        f"tracked {objects} object{'s' if objects != 1 else ''} over {done}{of_total} "
        f"frame{'s' if done != 1 else ''}"
    )
    print(f"wrote {json_path}")
    if draw_video:
        path, written, video_format = _write_video_overlay(
            args.video, os.path.join(out_dir, f"{stem}_overlay"), info, run, complete
        )
        print(f"wrote {path} ({written} frames, {video_format.name})")
        if not video_format.browser:
            print(
                f"sam3-grpc track: {video_format.name} plays in desktop players but not in "
                f"browsers; for H.264 install PyAV: pip install 'sam3-grpc[client]'",
                file=sys.stderr,
            )
    else:
        print(
            "sam3-grpc track: the video is on the server, so no overlay video was drawn",
            file=sys.stderr,
        )


def _write_video_overlay(
    source: str, path_stem: str, info: Any, run: _Tracking, complete: bool
) -> tuple[str, int, Any]:
    from sam3_grpc.client import overlay

    try:
        return overlay.write_video_overlay(
            source, path_stem, info.fps, run.labels, run.frames, only_results=not complete
        )
    except OSError as exc:
        raise CommandError(f"the masks are written, but {exc}") from None
