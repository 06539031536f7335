"""`sam3-grpc serve`: run the gRPC server."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from sam3_grpc.cli.common import EXIT_OK, EXIT_SERVER_ERROR, EXIT_USAGE

logger = logging.getLogger("sam3_grpc.cli")

# SIGTERM / SIGINT received before the server's event loop handles them (see catch_early_signals).
_early_signals: list[int] = []


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


def catch_early_signals() -> None:
    """Remembers a SIGTERM or SIGINT that arrives while the command starts up (imports, flag
    parsing, building the engine), so the server then stops at once and cleanly, instead of the
    process dying with a traceback or signal status. The event loop takes over these signals as
    soon as it runs."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (e.g. not in a test)

    def remember(signum: int, frame: object) -> None:
        _early_signals.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, remember)


def _stop_requested() -> bool:
    return bool(_early_signals)


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
    if _stop_requested():
        logger.info("stopped by a signal during start-up")
        return EXIT_OK
    problem = bind_problem(settings.host, settings.port)
    if problem:
        logger.error("cannot start: %s", problem)
        return EXIT_SERVER_ERROR

    import asyncio

    from sam3_grpc.server.app import serve

    try:
        asyncio.run(serve(settings, stop_requested=_stop_requested))
    except (ConfigurationError, OSError, ValueError) as exc:
        logger.error("cannot start: %s", exc)
        return EXIT_SERVER_ERROR
    return EXIT_OK


def bind_problem(host: str, port: int) -> str | None:
    """Why the server cannot listen on host:port, found by binding a plain socket first (grpc
    reports a failed bind only as a RuntimeError without the cause); None when it can."""
    if port == 0:
        return None
    import errno
    import socket

    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"--host {host} does not resolve to an address ({exc.strerror})"
    failure: OSError | None = None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does
            try:
                probe.bind(address)
                return None  # grpc serves when it can bind any of the addresses
            except OSError as exc:
                failure = failure or exc
    if failure is None:
        return None
    if failure.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another server?); stop that process or "
            f"choose another --port (--port 0 picks a free one)"
        )
    if failure.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}:{port}: {host} is not an address of this machine (--host)"
    if failure.errno == errno.EACCES:
        return (
            f"cannot listen on port {port} of {host}: ports below 1024 need privileges; "
            f"choose another --port"
        )
    return f"cannot listen on {host}:{port}: {failure.strerror or failure}"
