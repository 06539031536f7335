"""`sam3-grpc segment`: segment an image, write an overlay PNG and COCO JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sam3_grpc.cli.common import (
    EXIT_OK,
    CommandError,
    add_connection_arguments,
    add_output_filters,
    add_prompt_arguments,
    box_text,
    check_input_file,
    file_stem,
    handler,
    make_client,
    output_from_args,
    prepare_out_dir,
    prompts_from_args,
    read_file,
    require_cv2,
    write_json,
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment an image with text, box or point prompts",
        description="Segment IMAGE and write <stem>_overlay.png (masks tinted and outlined, "
        "boxes, labels placed apart, or number tags and a legend when crowded) and "
        "<stem>_coco.json (COCO annotations with RLE masks, one category per prompt) into "
        "--out. Prompts are sent in the order: every --prompt, then "
        "every --box, then every --point.",
    )
    parser.add_argument("image", metavar="IMAGE", help="local image file (JPEG, PNG, WebP...)")
    add_prompt_arguments(parser, "object")
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
    add_output_filters(parser)
    add_connection_arguments(parser)
    parser.set_defaults(handler=handler("segment", _segment))


def _segment(args: argparse.Namespace) -> int:
    from sam3_grpc.client.types import ServerPath

    prompts = prompts_from_args(args)
    output = output_from_args(args)
    if not args.remote:
        check_input_file(args.image, "image")
    cv2 = None if args.remote else require_cv2()
    out_dir = prepare_out_dir(args.out)
    image = ServerPath(args.image) if args.remote else read_file(args.image, "image")
    with make_client(args) as client:
        result = client.segment_image(image, prompts, output=output)

    stem = file_stem(args.image)
    coco = result.to_coco_dataset(file_name=os.path.basename(args.image))
    json_path = os.path.join(out_dir, f"{stem}_coco.json")
    write_json(json_path, coco)
    written = [json_path]
    note = ""
    if cv2 is not None and isinstance(image, bytes):
        overlay_path = os.path.join(out_dir, f"{stem}_overlay.png")
        note = _write_image_overlay(image, result, overlay_path)
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
            scores = ", ".join(f"{d.score:.2f} at [{box_text(d.box)}]" for d in r)
            count = f"{len(r)} detection{'s' if len(r) != 1 else ''}"
            print(f"{r.prompt.label}: {count}{': ' + scores if scores else ''}")
        for path in written:
            print(f"wrote {path}")
    if note:
        print(f"sam3-grpc segment: {note}", file=sys.stderr)
    return EXIT_OK


def _write_image_overlay(data: bytes, result: Any, path: str) -> str:
    """Writes the overlay PNG; returns a note when it cannot (else "")."""
    from sam3_grpc.client import overlay

    try:
        return overlay.write_image_overlay(data, result, path)
    except OSError as exc:
        raise CommandError(str(exc)) from None
