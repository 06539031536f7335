"""Server settings: one frozen dataclass, filled from CLI flags and SAM3_GRPC_* variables.

Every field of `Settings` is a flag of `sam3-grpc serve`; each flag also reads its default from
the environment variable SAM3_GRPC_<FLAG> (upper case, dashes as underscores), so a container can
be configured without a command line. Nothing is parsed at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB

ENV_PREFIX = "SAM3_GRPC_"
MODELS = ("sam3", "sam3-tiny", "synthetic")


@dataclass(frozen=True)
class Settings:
    # Network
    host: str = "127.0.0.1"
    port: int = 50051
    max_receive_message_bytes: int = 64 * MiB
    max_send_message_bytes: int = 64 * MiB
    reflection: bool = True
    grace_s: float = 10.0
    drain_delay_s: float = 0.0
    port_file: str | None = None
    # Model
    model: str = "sam3"
    device: str = "auto"
    checkpoint: str | None = None
    bpe_path: str | None = None
    compile: bool = False
    synthetic_latency_ms: float = 0.0
    # Executor
    queue_size: int = 64
    cpu_workers: int = 2
    cpu_queue_size: int = 256
    cpu_max_wait_s: float = 5.0
    opencv_threads: int = 1
    # Images
    max_image_bytes: int = 48 * MiB
    max_image_pixels: int = 50_000_000
    max_image_scans: int = 64
    max_prompts: int = 16
    max_detections: int = 100
    max_text_chars: int = 256
    max_geometry_per_prompt: int = 64
    media_roots: tuple[str, ...] = ()
    cache_size: int = 8
    cache_max_bytes: int = 4 * GiB
    # Video
    upload_dir: str | None = None
    max_upload_bytes: int = 2 * GiB
    upload_idle_timeout_s: float = 30.0
    upload_min_rate: int = 32 * 1024
    upload_timeout_s: float = 3600.0
    max_concurrent_uploads: int = 4
    max_frames: int = 20_000
    max_video_pixels: int = 3840 * 2160
    max_sessions: int = 16
    session_ttl_s: float = 1800.0
    stream_buffer_frames: int = 4
    max_gop_frames: int = 600
    frame_window: int = 16
    max_objects: int | None = None
    prefetch_frames: int = 4
    memory_budget: int | None = None
    device_memory_budget: int | None = None
    # Security
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token_file: str | None = None
    auth_exempt_probes: bool = True
    insecure: bool = False
    # HTTP/2 and robustness
    max_concurrent_streams: int = 1024
    max_calls_per_connection: int = 128
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    min_ping_interval_s: float = 10.0
    job_timeout_s: float = 300.0
    # Observability
    metrics_port: int | None = None
    metrics_host: str | None = None
    metrics_public: bool = False
    log_level: str = "INFO"
    log_format: str = "plain"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class _Flag:
    dest: str  # the Settings field
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (binary): 64M, 2G, 1048576."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1024, "M": MiB, "G": GiB}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    value = int(float(number) * scale)
    if value < 0:
        raise argparse.ArgumentTypeError("sizes cannot be negative")
    return value


_FLAGS: tuple[_Flag, ...] = (
    _Flag("host", "Address to bind. Loopback by default; use 0.0.0.0 to serve other hosts."),
    _Flag("port", "Port to bind; 0 picks a free port (printed at start).", int),
    _Flag(
        "max_receive_message_bytes",
        "Largest request message accepted (e.g. 64M).",
        _size,
        metavar="BYTES",
    ),
    _Flag(
        "max_send_message_bytes",
        "Largest response message sent (e.g. 64M).",
        _size,
        metavar="BYTES",
    ),
    _Flag("reflection", "Serve gRPC server reflection (for grpcurl).", _bool, metavar="BOOL"),
    _Flag(
        "grace_s",
        "Seconds running calls get to finish on SIGTERM/SIGINT.",
        float,
        metavar="SECONDS",
    ),
    _Flag(
        "drain_delay_s",
        "Seconds between SIGTERM/SIGINT and refusing new calls, during which health is "
        "already NOT_SERVING but calls are still served, so a balancer health-checking this "
        "server (Envoy, Kubernetes) takes it out of rotation first. 0 for a server used "
        "directly; behind a balancer, longer than its health-check interval plus one reply "
        "(sam3-grpc cluster and deploy/kubernetes set it). A second signal ends it early.",
        float,
        metavar="SECONDS",
    ),
    _Flag(
        "port_file",
        'Once health is first SERVING, write {"port": N, "host": ..., "pid": ...} '
        "here as JSON (atomically: a reader never sees a partial file); removed at shutdown. "
        "A machine-readable readiness signal for launchers (use it with --port 0).",
        metavar="PATH",
    ),
    _Flag(
        "model",
        "Model to serve. sam3 needs real weights; sam3-tiny has random weights "
        "(its masks are meaningless; for tests); synthetic segments by colour (load tests).",
        choices=MODELS,
    ),
    _Flag("device", "auto (CUDA when available), cpu, cuda or cuda:N."),
    _Flag(
        "checkpoint",
        "Path to the SAM 3 checkpoint (sam3.pt). Default: the Hugging Face "
        "cache of facebook/sam3, if present.",
        metavar="PATH",
    ),
    _Flag(
        "bpe_path",
        "Path to the CLIP BPE vocabulary; default: the copy in open_clip_torch.",
        metavar="PATH",
    ),
    _Flag(
        "compile",
        "torch.compile the model on CUDA (slower start, faster steady state).",
        _bool,
        metavar="BOOL",
    ),
    _Flag(
        "synthetic_latency_ms",
        "Artificial device time per step of the synthetic engine.",
        float,
        metavar="MS",
    ),
    _Flag(
        "queue_size",
        "Jobs that may wait for the device; more are rejected with RESOURCE_EXHAUSTED.",
        int,
    ),
    _Flag(
        "cpu_workers",
        "Threads for CPU-side work (image and video decoding, mask encoding, upload writes).",
        int,
    ),
    _Flag(
        "cpu_queue_size",
        "CPU jobs that may be queued or running; new requests beyond it are refused with "
        "RESOURCE_EXHAUSTED (health turns NOT_SERVING for image calls meanwhile).",
        int,
    ),
    _Flag(
        "cpu_max_wait_s",
        "When a CPU job has waited this long for a worker, new requests are refused with "
        "RESOURCE_EXHAUSTED until the workers catch up.",
        float,
        metavar="SECONDS",
    ),
    _Flag(
        "opencv_threads",
        "Threads OpenCV may use inside one call (video decode, mask "
        "geometry); the CPU pool already runs calls in parallel.",
        int,
    ),
    _Flag("max_image_bytes", "Largest encoded image accepted.", _size, metavar="BYTES"),
    _Flag(
        "max_image_pixels",
        "Largest image accepted, in pixels (width x height), checked "
        "from the header before decoding.",
        int,
        metavar="PIXELS",
    ),
    _Flag(
        "max_image_scans",
        "Most scans a progressive JPEG may have (each costs a full decoding pass; ordinary "
        "ones have about ten).",
        int,
    ),
    _Flag("max_prompts", "Most prompts in one SegmentImage request.", int),
    _Flag("max_detections", "Most detections returned per prompt or frame.", int),
    _Flag("max_text_chars", "Longest text prompt, in characters.", int),
    _Flag("max_geometry_per_prompt", "Most boxes plus points in one prompt.", int),
    _Flag(
        "media_roots",
        "Directory whose files clients may name by path (repeatable; env: "
        f"paths separated by '{os.pathsep}'). None by default: paths are refused.",
        metavar="DIR",
        extra={"action": "append"},
    ),
    _Flag("cache_size", "Image encodings kept in the embedding cache (0 disables it).", int),
    _Flag(
        "cache_max_bytes",
        "Most bytes of device memory the embedding cache may hold.",
        _size,
        metavar="BYTES",
    ),
    _Flag(
        "upload_dir",
        "Where uploaded videos are stored (may be shared by several servers: each works in a "
        "private sam3-grpc-* subdirectory it locks, and removes it at shutdown). Default: the "
        "system's temporary directory.",
        metavar="DIR",
    ),
    _Flag("max_upload_bytes", "Largest video upload.", _size, metavar="BYTES"),
    _Flag(
        "upload_idle_timeout_s",
        "An upload with no chunk for this long is cut off.",
        float,
        metavar="SECONDS",
    ),
    _Flag(
        "upload_min_rate",
        "Slowest average upload rate accepted, in bytes per second, checked once an upload "
        "has run for --upload-idle-timeout (cuts off senders that trickle bytes).",
        _size,
        metavar="BYTES",
    ),
    _Flag(
        "upload_timeout_s",
        "Longest an upload may take in total.",
        float,
        metavar="SECONDS",
    ),
    _Flag("max_concurrent_uploads", "Uploads in progress at once.", int),
    _Flag("max_frames", "Most frames in a video.", int),
    _Flag(
        "max_video_pixels",
        "Most pixels in one video frame (width x height).",
        int,
        metavar="PIXELS",
    ),
    _Flag("max_sessions", "Open video sessions at once.", int),
    _Flag(
        "session_ttl_s", "Idle seconds after which a session is closed.", float, metavar="SECONDS"
    ),
    _Flag("stream_buffer_frames", "Frames computed ahead of a slow Propagate reader.", int),
    _Flag(
        "max_gop_frames",
        "Most frames between two key frames of a video (random access decodes at most this "
        "many frames).",
        int,
    ),
    _Flag(
        "frame_window",
        "Decoded, model-ready frames a session keeps (its memory does not grow with the "
        "video's length).",
        int,
    ),
    _Flag(
        "max_objects",
        "Most objects one video session tracks (default: 32 for sam3, 4 for sam3-tiny, 64 for "
        "synthetic). Each object's tracker state is reserved from the memory budget when a "
        "session starts, so this sets how many sessions fit.",
        int,
    ),
    _Flag(
        "prefetch_frames",
        "Frames decoded on the CPU ahead of the device during propagation.",
        int,
    ),
    _Flag(
        "memory_budget",
        "Host memory all video sessions together may hold; a session that could exceed it is "
        "refused with RESOURCE_EXHAUSTED. Default: half of the machine's memory.",
        _size,
        metavar="BYTES",
    ),
    _Flag(
        "device_memory_budget",
        "Device (GPU) memory all video sessions together may hold. Default: 80 %% of the "
        "device memory free once the model is loaded.",
        _size,
        metavar="BYTES",
    ),
    _Flag("tls_cert", "PEM certificate chain; with --tls-key, serve TLS.", metavar="PATH"),
    _Flag("tls_key", "PEM private key of --tls-cert.", metavar="PATH"),
    _Flag(
        "tls_client_ca",
        "PEM CA bundle; clients must present a certificate it signed (mutual TLS).",
        metavar="PATH",
    ),
    _Flag(
        "auth_token_file",
        "File of accepted bearer tokens, one per line ('#' comments). "
        "Clients send 'authorization: Bearer <token>'.",
        metavar="PATH",
    ),
    _Flag(
        "auth_exempt_probes",
        "Let health checks and reflection through without a token (Kubernetes probes send none).",
        _bool,
        metavar="BOOL",
    ),
    _Flag(
        "insecure",
        "Allow binding a non-loopback address without TLS and without tokens.",
        _bool,
        metavar="BOOL",
    ),
    _Flag(
        "max_concurrent_streams",
        "HTTP/2 streams one connection may have open at once (a transport limit; keep it above "
        "--max-calls-per-connection so extra calls get a status rather than a reset stream).",
        int,
    ),
    _Flag(
        "max_calls_per_connection",
        "Calls one connection may have in progress; more are refused with RESOURCE_EXHAUSTED "
        "and a RetryInfo (health checks and reflection are exempt).",
        int,
    ),
    _Flag(
        "keepalive_time_s",
        "Seconds between server keepalive pings on idle connections.",
        float,
        metavar="SECONDS",
    ),
    _Flag(
        "keepalive_timeout_s",
        "Seconds to wait for a keepalive ping's answer before closing the connection.",
        float,
        metavar="SECONDS",
    ),
    _Flag(
        "min_ping_interval_s",
        "Clients pinging more often than this are disconnected (keepalive enforcement).",
        float,
        metavar="SECONDS",
    ),
    _Flag(
        "job_timeout_s",
        "A device job running longer than this marks the engine wedged: "
        "health NOT_SERVING, queued calls fail with UNAVAILABLE.",
        float,
        metavar="SECONDS",
    ),
    _Flag("metrics_port", "Serve Prometheus metrics over HTTP on this port (off by default).", int),
    _Flag("metrics_host", "Address of the metrics endpoint; default: the same as --host."),
    _Flag(
        "metrics_public",
        "Allow the metrics endpoint (plain HTTP, no TLS, no tokens) on a non-loopback address, "
        "e.g. for Prometheus inside a cluster.",
        _bool,
        metavar="BOOL",
    ),
    _Flag("log_level", "Logging level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    _Flag(
        "log_format",
        "One line per call and event, as plain text or JSON.",
        choices=("plain", "json"),
    ),
)


# Flags whose name is not derived from their field: a repeatable flag names one item.
_FLAG_NAMES = {"media_roots": "media-root"}


def _flag_name(name: str) -> str:
    if name in _FLAG_NAMES:
        return _FLAG_NAMES[name]
    # Duration fields read better on the command line without their unit suffix.
    for suffix in ("_s", "_ms"):
        if name.endswith(suffix) and name != "synthetic_latency_ms":
            name = name[: -len(suffix)]
    return name.replace("_", "-")


def env_var(name: str) -> str:
    return ENV_PREFIX + _flag_name(name).replace("-", "_").upper()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per Settings field; defaults come from the environment, then Settings."""
    defaults = Settings()
    for flag in _FLAGS:
        default = getattr(defaults, flag.dest)
        env_name = env_var(flag.dest)
        help_text = f"{flag.help} [env {env_name}; default: %(default)s]"
        kwargs: dict[str, Any] = {"dest": flag.dest, "help": help_text, "metavar": flag.metavar}
        if flag.choices:
            kwargs["choices"] = flag.choices
            kwargs.pop("metavar")
        if flag.type is int and default is None:
            kwargs["type"] = int
            env_value = os.environ.get(env_name)
            kwargs["default"] = int(env_value) if env_value else None
        elif flag.extra.get("action") == "append":
            env_value = os.environ.get(env_name)
            kwargs.update(action="append", default=None)
            kwargs["help"] = help_text.replace("%(default)s", env_value or "none")
        else:
            kwargs["type"] = flag.type
            env_value = os.environ.get(env_name)
            kwargs["default"] = flag.type(env_value) if env_value is not None else default
        parser.add_argument("--" + _flag_name(flag.dest), **kwargs)


def settings_from_args(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {}
    for flag in _FLAGS:
        value = getattr(args, flag.dest)
        if flag.dest == "media_roots":
            if value is None:
                env_value = os.environ.get(env_var(flag.dest), "")
                value = [p for p in env_value.split(os.pathsep) if p]
            value = tuple(value)
        values[flag.dest] = value
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Rejects settings that cannot work, with a message naming the flag."""
    positive = (
        "queue_size",
        "cpu_workers",
        "cpu_queue_size",
        "max_prompts",
        "max_detections",
        "max_image_bytes",
        "max_image_pixels",
        "max_image_scans",
        "max_gop_frames",
        "frame_window",
        "max_receive_message_bytes",
        "max_send_message_bytes",
        "max_upload_bytes",
        "max_frames",
        "max_video_pixels",
        "max_sessions",
        "stream_buffer_frames",
        "max_calls_per_connection",
        "max_concurrent_uploads",
        "max_text_chars",
        "opencv_threads",
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ValueError(f"--{_flag_name(name)} must be positive")
    if not 0 <= settings.port <= 65535:
        raise ValueError("--port must be in [0, 65535]")
    if settings.max_objects is not None and settings.max_objects <= 0:
        raise ValueError("--max-objects must be positive")
    if settings.cache_size < 0:
        raise ValueError("--cache-size cannot be negative")
    if min(settings.session_ttl_s, settings.upload_idle_timeout_s, settings.upload_timeout_s) <= 0:
        raise ValueError(
            "--session-ttl, --upload-idle-timeout and --upload-timeout must be positive"
        )
    if settings.upload_min_rate < 0:
        raise ValueError("--upload-min-rate cannot be negative")
    if settings.drain_delay_s < 0:
        raise ValueError("--drain-delay cannot be negative")
    if settings.job_timeout_s <= 0:
        raise ValueError("--job-timeout must be positive")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    if not (
        is_loopback(settings.host)
        or settings.tls_cert
        or settings.auth_token_file
        or settings.insecure
    ):
        raise ValueError(
            f"refusing to serve {settings.host} without TLS or tokens: anyone who can reach it "
            "could use the model and read session videos. Add --tls-cert/--tls-key and/or "
            "--auth-token-file, or pass --insecure if a trusted network or proxy protects it"
        )
    metrics_host = settings.metrics_host or settings.host
    if (
        settings.metrics_port is not None
        and not is_loopback(metrics_host)
        and not settings.metrics_public
    ):
        raise ValueError(
            f"refusing to serve metrics on {metrics_host}: the metrics endpoint is plain HTTP "
            "without TLS or tokens, so anyone who can reach it could read them. Use "
            "--metrics-host 127.0.0.1, or pass --metrics-public true on a trusted network"
        )


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
