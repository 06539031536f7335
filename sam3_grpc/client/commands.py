"""Client commands of the `sam3-grpc` console script: segment, track, status, health.

Only argparse-level modules are imported here at top level; numpy, OpenCV, tqdm and grpc are
imported inside the handlers, so `sam3-grpc serve --help` stays fast.

Every failure ends with one line on stderr that says what to do, and an exit code:
0 success, 2 usage (bad flags, a missing local file, an unwritable output directory),
1 the server failed or could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sam3_grpc.cli import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE

DEFAULT_SERVER = "localhost:50051"
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the command line or local files: exit code 2."""


class CommandError(Exception):
    """The command could not do its job although every call succeeded: exit code 1."""


# ----- wiring --------------------------------------------------------------------------------
def add_client_commands(subparsers: Any) -> None:
    """Adds segment, track, status and health to the `sam3-grpc` parser."""
    _add_segment(subparsers)
    _add_track(subparsers)
    _add_status(subparsers)
    _add_health(subparsers)


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("SAM3_GRPC_SERVER", DEFAULT_SERVER),
        metavar="HOST:PORT",
        help=f"server address (env SAM3_GRPC_SERVER; default {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="deadline of each unary call, retries included (default 120: a "
        "real model on a CPU is slow); uploads and propagation have none",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("SAM3_GRPC_TOKEN"),
        help="bearer token sent as 'authorization: Bearer TOKEN' (env SAM3_GRPC_TOKEN)",
    )
    group.add_argument("--token-file", metavar="PATH", help="read the bearer token from this file")
    group.add_argument(
        "--tls", action="store_true", help="use TLS with the system's root certificates"
    )
    group.add_argument(
        "--tls-ca", metavar="PEM", help="use TLS, trusting this CA certificate bundle"
    )
    group.add_argument(
        "--tls-cert", metavar="PEM", help="client certificate for mutual TLS (with --tls-key)"
    )
    group.add_argument("--tls-key", metavar="PEM", help="client private key for mutual TLS")
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="expected server name in its certificate (when it differs from the host in --server)",
    )


def _add_output_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--score-threshold",
        type=float,
        metavar="S",
        help="drop detections scoring below S in [0, 1] (default: the model's)",
    )
    parser.add_argument(
        "--min-area", type=int, default=0, metavar="PIXELS", help="drop masks smaller than this"
    )
    parser.add_argument(
        "--max-detections",
        type=int,
        default=0,
        metavar="N",
        help="keep at most N detections per prompt/frame (0: server limit)",
    )


def _add_prompt_arguments(parser: argparse.ArgumentParser, noun: str) -> None:
    parser.add_argument(
        "--prompt",
        "-p",
        action="append",
        default=[],
        metavar="TEXT",
        help=f"a text prompt, e.g. 'a dog' (repeatable; each finds every matching {noun})",
    )
    parser.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="X0,Y0,X1,Y1",
        help="a box prompt in pixels (repeatable; each is one prompt)",
    )
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y",
        help="a click prompt in pixels (repeatable; each is one prompt)",
    )


def _add_segment(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment an image with text, box or point prompts",
        description="Segment IMAGE and write <stem>_overlay.png (masks tinted, boxes, labels) "
        "and <stem>_coco.json (COCO annotations with RLE masks, one category per "
        "prompt) into --out. Prompts are sent in the order: every --prompt, then "
        "every --box, then every --point.",
    )
    parser.add_argument("image", metavar="IMAGE", help="local image file (JPEG, PNG, WebP...)")
    _add_prompt_arguments(parser, "object")
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
        help="IMAGE is a path on the server, inside its media root (no overlay is drawn)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary on stdout instead of text"
    )
    _add_output_filters(parser)
    _add_connection_arguments(parser)
    parser.set_defaults(handler=_handler("segment", _segment))


def _add_track(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "track",
        help="track objects through a video",
        description="Upload VIDEO, prompt objects on frame --frame, propagate through the "
        "video, and write <stem>_overlay.mp4 (same frame count as the input) and "
        "<stem>_masks.json (per-frame RLE masks) into --out. The session is "
        "always closed, also on errors and Ctrl-C.",
    )
    parser.add_argument("video", metavar="VIDEO", help="local video file (MP4, AVI, MOV, MKV...)")
    _add_prompt_arguments(parser, "object")
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
    _add_output_filters(parser)
    _add_connection_arguments(parser)
    parser.set_defaults(handler=_handler("track", _track))


def _add_status(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the server's model, queue, cache, sessions and memory",
        description="Print the server's status (StatusService.GetServerStatus).",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    _add_connection_arguments(parser)
    parser.set_defaults(handler=_handler("status", _status))


def _add_health(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "health",
        help="standard gRPC health check (exit 0 only when SERVING)",
        description="Ask grpc.health.v1.Health/Check and print the status. Exits 0 when "
        "SERVING, 1 otherwise.",
    )
    parser.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="service to check, e.g. sam3_grpc.v1.VideoService (default: the whole server)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep polling up to SECONDS until SERVING (e.g. while the model loads)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    _add_connection_arguments(parser)
    parser.set_defaults(handler=_handler("health", _health))


def _handler(command: str, body):
    """Runs a command body, turning every expected failure into one line and an exit code."""

    def run(args: argparse.Namespace) -> int:
        from sam3_grpc.client.errors import Sam3Error

        try:
            return body(args)
        except UsageError as exc:
            _fail(command, str(exc))
            return EXIT_USAGE
        except CommandError as exc:
            _fail(command, str(exc))
            return EXIT_SERVER_ERROR
        except Sam3Error as exc:
            tls = bool(args.tls or args.tls_ca or args.tls_cert or args.tls_key)
            _fail(command, describe_error(exc, args.server, args.timeout, tls))
            return EXIT_SERVER_ERROR
        except KeyboardInterrupt:
            _fail(command, "interrupted")
            return EXIT_INTERRUPTED

    return run


def _fail(command: str, message: str) -> None:
    one_line = " ".join(message.split())
    print(f"sam3-grpc {command}: error: {one_line}", file=sys.stderr)


def _connection_reason(message: str) -> str:
    """The last error of a failed connection, without grpc's prefixes and the address."""
    import re

    match = re.search(r"last error: [A-Z_]+: (?:(?:ipv4|ipv6|unix|dns):\S+?: )?(.*)", message)
    reason = (match.group(1) if match else message.rsplit(":", 1)[-1]).strip()
    return reason.removesuffix(": OK").strip() or "unreachable"


def describe_error(error: Any, server: str, timeout: float | None = None, tls: bool = False) -> str:
    """One actionable line for a failed call."""
    import grpc

    code = error.code
    if error.connection_failed or (
        code == grpc.StatusCode.UNKNOWN
        and not error.from_server
        and "handshake" in error.message.lower()
    ):
        reason = _connection_reason(error.message)
        if "WRONG_VERSION_NUMBER" in reason:
            return (
                f"{server} does not speak TLS (or is not a gRPC server); drop --tls, "
                f"--tls-ca, --tls-cert and --tls-key"
            )
        if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate" in reason.lower():
            return (
                f"the TLS certificate of {server} is not trusted ({reason.split(': ')[-1]}); "
                f"pass --tls-ca with the CA that signed it, and --tls-server-name if it "
                f"names another host"
            )
        if reason == "Socket closed":
            if tls:
                return (
                    f"{server} closed the connection during the TLS handshake; if it "
                    f"requires client certificates pass --tls-cert and --tls-key"
                )
            return (
                f"{server} closed the connection; if it serves TLS pass --tls-ca (or "
                f"--tls), otherwise check that it is a sam3-grpc server"
            )
        return (
            f"cannot reach a sam3-grpc server at {server} ({reason}); check that the server "
            f"is running and that --server (or SAM3_GRPC_SERVER) names it"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not error.from_server:
        limit = f" within {timeout:g} s" if timeout else ""
        return (
            f"no answer from {server}{limit}; check the address, or allow more time with --timeout"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{server} refused the credentials ({error.message}); check --token/--token-file"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"{server} denied the call ({error.message})"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (
            f"{server} does not implement this call ({error.message}); is it a sam3-grpc "
            f"server of a matching version?"
        )
    hint = ""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_after is not None:
        hint = f" (retry in about {error.retry_after:.1f} s)"
    return f"server {server} answered {code.name}: {error.message}{hint}"


# ----- shared helpers ------------------------------------------------------------------------
def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _make_client(args: argparse.Namespace):
    import grpc

    from sam3_grpc.client.client import Sam3Client

    token = args.token
    if args.token_file:
        token = _read_file(args.token_file, "--token-file").decode("utf-8", "replace").strip()
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty")
    credentials = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise UsageError("--tls-cert and --tls-key go together (mutual TLS)")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read_file(args.tls_ca, "--tls-ca") if args.tls_ca else None,
            private_key=_read_file(args.tls_key, "--tls-key") if args.tls_key else None,
            certificate_chain=_read_file(args.tls_cert, "--tls-cert") if args.tls_cert else None,
        )
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    return Sam3Client(
        args.server, timeout=args.timeout, credentials=credentials, token=token, options=options
    )


def _parse_numbers(text: str, count: int, flag: str, shape: str) -> list[float]:
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise UsageError(f"{flag} {text!r} must be {shape}, e.g. {flag} {','.join(['10'] * count)}")
    return values


def _prompts(args: argparse.Namespace) -> list[Any]:
    from sam3_grpc.client.types import Prompt

    prompts: list[Any] = [Prompt(text=t) for t in args.prompt if t.strip()]
    for text in args.box:
        x0, y0, x1, y1 = _parse_numbers(text, 4, "--box", "X0,Y0,X1,Y1")
        if x1 <= x0 or y1 <= y0:
            raise UsageError(f"--box {text!r} is empty or inverted: need X1 > X0 and Y1 > Y0")
        prompts.append(Prompt(boxes=[(x0, y0, x1, y1)]))
    for text in args.point:
        prompts.append(Prompt(points=[tuple(_parse_numbers(text, 2, "--point", "X,Y"))]))
    if not prompts:
        raise UsageError("give at least one --prompt TEXT (or --box / --point)")
    return prompts


def _prepare_out_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"output directory {path} is not writable")
    return path


def _check_input_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{what} {path} does not exist (use --remote for a path on the server)")
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} {path} is not readable")


def _require_cv2():
    try:
        import cv2
    except ImportError:
        raise UsageError("drawing overlays needs OpenCV: pip install 'sam3-grpc[client]'") from None
    return cv2


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    if args.score_threshold is not None and not 0 <= args.score_threshold <= 1:
        raise UsageError("--score-threshold must be in [0, 1]")
    if args.min_area < 0 or args.max_detections < 0:
        raise UsageError("--min-area and --max-detections cannot be negative")
    return {
        "score_threshold": args.score_threshold,
        "min_area": args.min_area,
        "max_detections": args.max_detections,
    }


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0] or "output"


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")


def _box_text(box) -> str:
    return ",".join(f"{v:g}" for v in box)


# ----- segment -------------------------------------------------------------------------------
def _segment(args: argparse.Namespace) -> int:
    from sam3_grpc.client.types import ServerPath

    prompts = _prompts(args)
    filters = _filters(args)
    if not args.remote:
        _check_input_file(args.image, "image")
    cv2 = None if args.remote else _require_cv2()
    out_dir = _prepare_out_dir(args.out)
    image = ServerPath(args.image) if args.remote else _read_file(args.image, "image")
    with _make_client(args) as client:
        result = client.segment_image(image, prompts, **filters)

    stem = _stem(args.image)
    coco = result.to_coco_dataset(file_name=os.path.basename(args.image))
    json_path = os.path.join(out_dir, f"{stem}_coco.json")
    _write_json(json_path, coco)
    written = [json_path]
    note = ""
    if cv2 is not None:
        overlay_path = os.path.join(out_dir, f"{stem}_overlay.png")
        note = _write_image_overlay(cv2, image, result, overlay_path)
        if not note:
            written.append(overlay_path)

    if args.json:
        print(
            json.dumps(
                {
                    "width": result.width,
                    "height": result.height,
                    "cache_hit": result.cache_hit,
                    "results": [
                        {
                            "prompt": r.prompt.label,
                            "detections": [
                                {
                                    "object_id": d.object_id,
                                    "score": round(float(d.score), 4),
                                    "box": list(d.box),
                                    "area": d.area,
                                }
                                for d in r
                            ],
                        }
                        for r in result.results
                    ],
                    "files": written,
                }
            )
        )
    else:
        for r in result.results:
            scores = ", ".join(f"{d.score:.2f} at [{_box_text(d.box)}]" for d in r)
            count = f"{len(r)} detection{'s' if len(r) != 1 else ''}"
            print(f"{r.prompt.label}: {count}{': ' + scores if scores else ''}")
        for path in written:
            print(f"wrote {path}")
    if note:
        print(f"sam3-grpc segment: {note}", file=sys.stderr)
    return EXIT_OK


def _write_image_overlay(cv2, data: bytes, result, path: str) -> str:
    """Writes the overlay PNG; returns a note when it cannot (else "")."""
    import numpy as np

    from sam3_grpc.client import overlay

    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # as the server decodes it
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.shape[:2] != (result.height, result.width):
        return "OpenCV cannot decode the image as the server did; no overlay written"
    items = []
    for r in result.results:
        for d in r:
            items.append(
                overlay.Item(
                    d.mask if d.has_mask else None,
                    d.box,
                    f"{r.prompt.label} {d.score:.2f}",
                    len(items),
                )
            )
    drawn = overlay.draw(image, items, bgr=True)
    if not cv2.imwrite(path, drawn):
        raise CommandError(f"cannot write {path}")
    return ""


# ----- track ---------------------------------------------------------------------------------
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

    prompts = _prompts(args)
    filters = _filters(args)
    if args.frame < 0:
        raise UsageError("--frame cannot be negative")
    if args.chunk_size <= 0:
        raise UsageError("--chunk-size must be positive")
    if not args.remote:
        _check_input_file(args.video, "video")
    cv2 = None if args.remote else _require_cv2()
    out_dir = _prepare_out_dir(args.out)
    show = not args.quiet

    bar = None
    with _make_client(args) as client:
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
                    args, session, prompts, filters, show
                )
        finally:
            if bar is not None:
                bar.close()

    stem = _stem(args.video)
    json_path = os.path.join(out_dir, f"{stem}_masks.json")
    _write_json(
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
        written = _write_video_overlay(cv2, args.video, video_path, info, labels, frames)
        print(f"wrote {video_path} ({written} frames)")
    else:
        print(
            "sam3-grpc track: the video is on the server, so no overlay video was drawn",
            file=sys.stderr,
        )
    return EXIT_OK


def _prompt_and_propagate(args, session, prompts, filters, show):
    if args.frame >= session.frame_count:
        raise UsageError(
            f"--frame {args.frame} is past the end of the video ({session.frame_count} frames)"
        )
    labels: dict[int, str] = {}
    prompt_log = []
    for prompt in prompts:
        added = session.add_prompt(args.frame, prompt, **filters)
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
            direction=args.direction, start_frame_index=start, max_frames=args.max_frames, **filters
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


def _write_video_overlay(cv2, source: str, path: str, info, labels, frames) -> int:
    """Re-reads the local video and writes every frame, drawn over where there are results;
    returns the number of frames written (that of the input)."""
    from pycocotools import mask as coco_mask

    from sam3_grpc.client import overlay

    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise CommandError(
            f"the masks are written, but OpenCV cannot read {source} to draw the overlay video"
        )
    fps = info.fps or capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    colour_index = {oid: i for i, oid in enumerate(sorted(labels))}
    written = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                break
            if writer is None:
                height, width = image.shape[:2]
                writer = cv2.VideoWriter(
                    path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
                )
                if not writer.isOpened():
                    raise CommandError(
                        f"the masks are written, but OpenCV cannot write {path} (mp4v codec)"
                    )
            items = []
            for obj in frames.get(written, ()):
                segmentation = obj["segmentation"]
                mask = None
                if tuple(segmentation["size"]) == image.shape[:2]:
                    mask = coco_mask.decode(
                        {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
                    ).astype(bool)
                x, y, w, h = obj["bbox"]
                oid = obj["object_id"]
                items.append(
                    overlay.Item(
                        mask,
                        (x, y, x + w, y + h),
                        f"{labels.get(oid, '')} #{oid}".strip(),
                        colour_index.get(oid, oid),
                    )
                )
            writer.write(overlay.draw(image, items, bgr=True) if items else image)
            written += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return written


# ----- status / health -----------------------------------------------------------------------
def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_status(status) -> str:
    q, c = status.queue, status.cache
    lines = [
        ("server", status.target),
        (
            "model",
            f"{status.model_name} ({status.model_kind}) on {status.device}, "
            f"{'ready' if status.ready else 'NOT ready'}; weights: {status.weights_source}",
        ),
        (
            "version",
            f"{status.version}, up {_duration(status.uptime_s)} (load "
            f"{status.load_s:.1f} s, warm-up {status.warmup_s:.1f} s)",
        ),
        (
            "queue",
            f"{q.depth} waiting of {q.capacity}, {q.running} running; {q.completed} "
            f"completed, {q.rejected} rejected, {q.dropped} dropped",
        ),
        ("sessions", f"{status.active_sessions} open, {_size(status.session_memory_bytes)}"),
        (
            "cache",
            f"{c.entries} of {c.capacity} entries, {_size(c.bytes)}; {c.hits} hits, "
            f"{c.misses} misses",
        ),
        ("memory", f"{_size(status.memory_used_bytes)} used of {_size(status.memory_total_bytes)}"),
    ]
    return "\n".join(f"{name:<9} {value}" for name, value in lines)


def _status(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        status = client.status()
    if args.json:
        print(json.dumps(status.to_dict(), indent=1))
    else:
        print(format_status(status))
    return EXIT_OK


def _health(args: argparse.Namespace) -> int:
    import grpc

    from sam3_grpc.client.errors import Sam3Error

    if args.wait < 0:
        raise UsageError("--wait cannot be negative")
    with _make_client(args) as client:
        if args.wait:
            try:
                client.wait_until_serving(args.wait, service=args.service)
                state = "SERVING"
            except Sam3Error as exc:
                if exc.code != grpc.StatusCode.DEADLINE_EXCEEDED or exc.from_server:
                    raise
                state = client.health(args.service)
        else:
            state = client.health(args.service)
    if args.json:
        print(json.dumps({"server": args.server, "service": args.service, "status": state}))
    else:
        print(state)
    return EXIT_OK if state == "SERVING" else EXIT_SERVER_ERROR
