"""`sam3-grpc status` and `sam3-grpc health`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sam3_grpc.cli.common import (
    EXIT_OK,
    EXIT_SERVER_ERROR,
    UsageError,
    add_connection_arguments,
    handler,
    make_client,
)


def add_status_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the server's model, queue, cache, sessions and memory",
        description="Print the server's status (StatusService.GetServerStatus).",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_connection_arguments(parser)
    parser.set_defaults(handler=handler("status", _status))


def add_health_parser(subparsers: Any) -> None:
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
    add_connection_arguments(parser)
    parser.set_defaults(handler=handler("health", _health))


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
    with make_client(args) as client:
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
    with make_client(args) as client:
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
