"""`sam3-grpc track`: upload a video, prompt, propagate, write an overlay video and masks."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sam3_grpc.cli.common import (
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


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "track",
        help="track objects through a video",
        description="Upload VIDEO, prompt objects on frame --frame, propagate through the "
        "video, and write <stem>_overlay.mp4 (same frame count as the input) and "
        "<stem>_masks.json (per-frame RLE masks) into --out. The session is "
        "always closed, also on errors and Ctrl-C.",
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
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_output_filters(parser)
    add_connection_arguments(parser)
    parser.set_defaults(handler=handler("track", _track))


def _progress_bar(enabled: bool, **kwargs: Any):
    """A tqdm bar on stderr, shown only when stderr is a terminal (and not --quiet)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = tqdm(disable=None, file=sys.stderr, dynamic_ncols=True, leave=True, **kwargs)
    return None if bar.disable else bar


def _track(args: argparse.Namespace) -> int:
    from sam3_grpc.client.types import ServerPath

    prompts = prompts_from_args(args)
    output = output_from_args(args)
    if args.frame < 0:
        raise UsageError("--frame cannot be negative")
    if args.chunk_size <= 0:
        raise UsageError("--chunk-size must be positive")
    if not args.remote:
        check_input_file(args.video, "video")
    cv2 = None if args.remote else require_cv2()
    out_dir = prepare_out_dir(args.out)
    show = not args.quiet

    bar = None
    with make_client(args) as client:
        if args.remote:
            context = client.session(ServerPath(args.video))
        else:
            bar = _progress_bar(
                show,
                total=os.path.getsize(args.video),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="upload",
            )

            def progress(sent: int, total: int) -> None:
                if bar is not None:
                    bar.update(sent - bar.n)

            context = client.session(
                upload=args.video, chunk_size=args.chunk_size, progress=progress
            )
        try:
            with context as session:  # uploads on entry; always closes the session on exit
                if bar is not None:
                    bar.close()
                info, prompt_log, labels, frames = _prompt_and_propagate(
                    args, session, prompts, output, show
                )
        finally:
            if bar is not None:
                bar.close()

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
            "prompts": prompt_log,
            "objects": [
                {"object_id": oid, "prompt": label} for oid, label in sorted(labels.items())
            ],
            "frames": [
                {"frame_index": index, "objects": objects}
                for index, objects in sorted(frames.items())
            ],
        },
    )
    print(
        f"tracked {len(labels)} object{'s' if len(labels) != 1 else ''} over "
        f"{len(frames)} frame{'s' if len(frames) != 1 else ''}"
    )
    print(f"wrote {json_path}")
    if cv2 is not None:
        video_path = os.path.join(out_dir, f"{stem}_overlay.mp4")
        written = _write_video_overlay(args.video, video_path, info, labels, frames)
        print(f"wrote {video_path} ({written} frames)")
    else:
        print(
            "sam3-grpc track: the video is on the server, so no overlay video was drawn",
            file=sys.stderr,
        )
    return EXIT_OK


def _prompt_and_propagate(args, session, prompts, output, show):
    if args.frame >= session.frame_count:
        raise UsageError(
            f"--frame {args.frame} is past the end of the video ({session.frame_count} frames)"
        )
    labels: dict[int, str] = {}
    prompt_log = []
    for prompt in prompts:
        added = session.add_prompt(args.frame, prompt, output=output)
        prompt_log.append(
            {"frame_index": args.frame, "prompt": prompt.label, "object_ids": added.object_ids}
        )
        for oid in added.object_ids:
            labels.setdefault(oid, prompt.label)
    if not labels:
        raise CommandError(
            f"no object found on frame {args.frame} for "
            f"{', '.join(repr(p.label) for p in prompts)}; nothing to track"
        )
    frames: dict[int, list[dict[str, Any]]] = {}
    start = args.start_frame if args.start_frame is not None else args.frame
    bar = _progress_bar(show, unit="frame", desc="propagate")
    try:
        with session.propagate(
            direction=args.direction,
            start_frame_index=start,
            max_frames=args.max_frames,
            output=output,
        ) as stream:
            for frame in stream:
                if bar is not None:
                    if bar.total != frame.frames_total:
                        bar.total = frame.frames_total
                        bar.refresh()
                    bar.update(1)
                frames[frame.frame_index] = [
                    {
                        "object_id": d.object_id,
                        "score": float(d.score),
                        "bbox": d.box.to_xywh(),
                        "area": int(d.area),
                        "segmentation": d.rle,
                    }
                    for d in frame.objects
                ]
    finally:
        if bar is not None:
            bar.close()
    return session.refresh(), prompt_log, labels, frames


def _write_video_overlay(source: str, path: str, info: Any, labels: Any, frames: Any) -> int:
    from sam3_grpc.client import overlay

    try:
        return overlay.write_video_overlay(source, path, info.fps, labels, frames)
    except OSError as exc:
        raise CommandError(f"the masks are written, but {exc}") from None
