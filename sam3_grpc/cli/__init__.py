"""The `sam3-grpc` command: `serve` runs the server, `cluster` runs several behind Envoy;
`segment`, `track`, `status` and `health` talk to one. One module per command; `common.py`
holds what the client commands share; `serve_process.py` runs `serve` as a child process
(for `cluster`, the benchmarks and the tests)."""

from __future__ import annotations

import argparse
import sys

from sam3_grpc import __version__
from sam3_grpc.cli.common import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE

__all__ = ["EXIT_OK", "EXIT_SERVER_ERROR", "EXIT_USAGE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from sam3_grpc.cli import cluster, segment, serve, status, track

    parser = argparse.ArgumentParser(
        prog="sam3-grpc",
        description="gRPC service for Meta's SAM 3 segmentation and tracking.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"sam3-grpc {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(subparsers)
    cluster.add_parser(subparsers)
    segment.add_parser(subparsers)
    track.add_parser(subparsers)
    status.add_status_parser(subparsers)
    status.add_health_parser(subparsers)
    for command in subparsers.choices.values():
        # Whole flag names only: a prefix such as `--media-roo` must not silently mean a flag,
        # and adding a flag later must not change what an existing prefix meant.
        command.allow_abbrev = False
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["serve"]:
        from sam3_grpc.cli.serve import catch_early_signals

        catch_early_signals()  # before the second of imports and parsing that precedes serving
    parser = build_parser()
    args = parser.parse_args(args_list)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
