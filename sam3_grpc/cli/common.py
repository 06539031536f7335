"""What every client command shares: connection flags, prompt and filter flags, the client,
and turning failures into one line on stderr and an exit code.

Exit codes: 0 success, 1 the server failed or could not be reached (or the command could not do
its job), 2 usage (bad flags, a missing local file, an unwritable output directory), 130
interrupted. Only argparse-level modules are imported at top level; grpc, numpy and OpenCV are
imported inside the handlers, so `sam3-grpc serve --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

EXIT_OK = 0
EXIT_SERVER_ERROR = 1  # the server (or the model) failed
EXIT_USAGE = 2  # bad flags or arguments (argparse's own code)
EXIT_INTERRUPTED = 130

DEFAULT_SERVER = "localhost:50051"
BOX_EXAMPLE = "10,10,50,50"
POINT_EXAMPLE = "10,20"


class UsageError(Exception):
    """A problem with the command line or local files: exit code 2."""


class CommandError(Exception):
    """The command could not do its job although every call succeeded: exit code 1."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
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
        default=None,
        metavar="SECONDS",
        help="deadline of every unary call, retries included (default: each call's own, sized "
        "for a real model on a CPU: 300 s to segment an image, 600 s for a prompt on a video "
        "frame, 30 s for status and health); uploads and propagation have none",
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


def add_output_filters(parser: argparse.ArgumentParser) -> None:
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


def add_prompt_arguments(parser: argparse.ArgumentParser, noun: str) -> None:
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


def handler(command: str, body):
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
            tls = uses_tls(args)
            message = None
            if tls and _handshake_failed(exc):
                message = tls_name_mismatch(args)
            _fail(command, message or describe_error(exc, args.server, args.timeout, tls))
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


def uses_tls(args: argparse.Namespace) -> bool:
    return bool(args.tls or args.tls_ca or args.tls_cert or args.tls_key)


def _handshake_failed(error: Any) -> bool:
    """The call never reached a server: no connection, or grpc's own handshake failure."""
    import grpc

    return bool(
        error.connection_failed
        or (
            error.code == grpc.StatusCode.UNKNOWN
            and not error.from_server
            and "handshake" in error.message.lower()
        )
    )


# OpenSSL's verify codes for a certificate that does not name the host that was asked for.
_X509_V_ERR_HOSTNAME_MISMATCH = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH = 64


def _host_port(target: str) -> tuple[str, int] | None:
    """("host", port) of a --server "host:port" or "[v6]:port"; None for other forms."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in host:
        return None
    return host.strip("[]"), int(port)


def tls_name_mismatch(args: argparse.Namespace) -> str | None:
    """When a TLS connection failed: whether it is because the server's certificate does not
    name the host the client expects (--tls-server-name, else the host in --server). grpc
    reports every handshake failure alike, so a handshake with Python's ssl module (the same
    OpenSSL checks) tells it by its verify code. None when that is not the cause."""
    import socket
    import ssl

    address = _host_port(args.server)
    if address is None:
        return None
    expected = args.tls_server_name or address[0]
    try:
        context = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert and args.tls_key:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(address, timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=expected),
        ):
            return None
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code not in (_X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH):
            return None
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return None
    names = _certificate_names(context, address)
    holds = f"it names {', '.join(names)}" if names else "it names other hosts"
    source = "--tls-server-name" if args.tls_server_name else "the host in --server"
    return (
        f"TLS name mismatch: the certificate of {args.server} does not name {expected!r} "
        f"(from {source}); {holds}: pass one of them with --tls-server-name"
    )


def _certificate_names(context: Any, address: tuple[str, int]) -> list[str]:
    """The DNS names and IP addresses of a trusted server certificate (hostname not checked)."""
    import socket

    context.check_hostname = False
    try:
        with (
            socket.create_connection(address, timeout=5) as raw,
            context.wrap_socket(raw) as connection,
        ):
            certificate = connection.getpeercert() or {}
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return []
    return [
        value
        for kind, value in certificate.get("subjectAltName", ())
        if kind in ("DNS", "IP Address")
    ]


def describe_error(error: Any, server: str, timeout: float | None = None, tls: bool = False) -> str:
    """One actionable line for a failed call."""
    import grpc

    code = error.code
    if _handshake_failed(error):
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
        limit = f" within {timeout:g} s" if timeout else " within the call's deadline"
        return (
            f"no answer from {server}{limit}; check the address, or allow more time with --timeout"
        )
    if error.reason == "MODEL_LOADING":
        return (
            f"the model on {server} is still loading; wait until it is ready with "
            f"`sam3-grpc health --wait 300 --server {server}`, then try again"
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


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def make_client(args: argparse.Namespace):
    import grpc

    from sam3_grpc.client.client import DEFAULT, Sam3Client

    token = args.token
    if args.token_file:
        token = read_file(args.token_file, "--token-file").decode("utf-8", "replace").strip()
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty")
    credentials = None
    if uses_tls(args):
        if bool(args.tls_cert) != bool(args.tls_key):
            raise UsageError("--tls-cert and --tls-key go together (mutual TLS)")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_file(args.tls_ca, "--tls-ca") if args.tls_ca else None,
            private_key=read_file(args.tls_key, "--tls-key") if args.tls_key else None,
            certificate_chain=read_file(args.tls_cert, "--tls-cert") if args.tls_cert else None,
        )
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    timeout = DEFAULT if args.timeout is None else args.timeout  # DEFAULT: each call's own
    return Sam3Client(
        args.server, timeout=timeout, credentials=credentials, token=token, options=options
    )


def _parse_numbers(text: str, count: int, flag: str, shape: str, example: str) -> list[float]:
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise UsageError(f"{flag} {text!r} must be {shape}, e.g. {flag} {example}")
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag} {text!r} must be finite numbers, e.g. {flag} {example}")
    return values


def prompts_from_args(args: argparse.Namespace) -> list[Any]:
    from sam3_grpc.client.types import Prompt

    prompts: list[Any] = []
    for text in args.prompt:
        if not text.strip():
            spaces = " (only spaces)" if text else ""
            raise UsageError(
                f"--prompt is empty{spaces}: give the words to look for, e.g. -p 'a dog'"
            )
        prompts.append(Prompt(text=text))
    for text in args.box:
        x0, y0, x1, y1 = _parse_numbers(text, 4, "--box", "X0,Y0,X1,Y1 in pixels", BOX_EXAMPLE)
        if x1 <= x0 or y1 <= y0:
            raise UsageError(
                f"--box {text!r} is empty or inverted: it needs X1 > X0 and Y1 > Y0 (corners "
                f"top-left then bottom-right), e.g. --box {BOX_EXAMPLE}"
            )
        prompts.append(Prompt(boxes=[(x0, y0, x1, y1)]))
    for text in args.point:
        x, y = _parse_numbers(text, 2, "--point", "X,Y in pixels", POINT_EXAMPLE)
        prompts.append(Prompt(points=[(x, y)]))
    if not prompts:
        raise UsageError("give at least one --prompt TEXT (or --box / --point)")
    return prompts


def prepare_out_dir(path: str) -> str:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"output directory {path} is not writable")
    return path


def check_input_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{what} {path} does not exist (use --remote for a path on the server)")
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{what} {path} is not readable")


def require_cv2():
    try:
        import cv2
    except ImportError:
        raise UsageError("drawing overlays needs OpenCV: pip install 'sam3-grpc[client]'") from None
    return cv2


def output_from_args(args: argparse.Namespace) -> Any:
    """The OutputOptions of --score-threshold, --min-area and --max-detections."""
    from sam3_grpc.client import OutputOptions

    if args.score_threshold is not None and not 0 <= args.score_threshold <= 1:
        raise UsageError("--score-threshold must be in [0, 1]")
    if args.min_area < 0 or args.max_detections < 0:
        raise UsageError("--min-area and --max-detections cannot be negative")
    return OutputOptions(
        score_threshold=args.score_threshold,
        min_area_pixels=args.min_area,
        max_detections=args.max_detections,
    )


def file_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0] or "output"


def write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")


def box_text(box) -> str:
    return ",".join(f"{v:g}" for v in box)
