"""The `sam3-grpc` command: `serve` runs the server; the client commands talk to one."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from sam3_grpc import __version__

EXIT_OK = 0
EXIT_SERVER_ERROR = 1  # the server (or the model) failed
EXIT_USAGE = 2  # bad flags or arguments (argparse's own code)


def _add_serve(subparsers) -> None:
    from sam3_grpc.config import add_serve_arguments

    parser = subparsers.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the sam3-grpc server. Every flag can also be set with the environment "
        "variable shown in its help.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_serve_arguments(parser)
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from sam3_grpc.config import settings_from_args
    from sam3_grpc.errors import ConfigurationError

    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"sam3-grpc serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from sam3_grpc.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from sam3_grpc.server.app import serve

    try:
        asyncio.run(serve(settings))
    except (ConfigurationError, OSError, ValueError) as exc:
        logging.getLogger("sam3_grpc").error("cannot start: %s", exc)
        return EXIT_SERVER_ERROR
    return EXIT_OK


def _add_cluster(subparsers) -> None:
    from sam3_grpc import cluster

    parser = subparsers.add_parser(
        "cluster",
        help="run N replicas behind Envoy on one port (one per device)",
        description=(cluster.__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cluster.add_arguments(parser)
    parser.set_defaults(handler=cluster.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3-grpc", description="gRPC service for Meta's SAM 3 segmentation and tracking."
    )
    parser.add_argument("--version", action="version", version=f"sam3-grpc {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_serve(subparsers)
    _add_cluster(subparsers)
    from sam3_grpc.client.commands import add_client_commands

    add_client_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
