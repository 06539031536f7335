"""`sam3-grpc serve`: run the gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from sam3_grpc.cli.common import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE


def add_parser(subparsers: Any) -> None:
    from sam3_grpc.config import add_serve_arguments

    parser = subparsers.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the sam3-grpc server. Every flag can also be set with the environment "
        "variable shown in its help.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_serve_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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
