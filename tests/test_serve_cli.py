"""`sam3-grpc serve` as an operator runs it: flags, environment, start-up and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sam3_grpc.cli import build_parser
from sam3_grpc.cli.serve_process import ServeProcess
from sam3_grpc.config import Settings, settings_from_args


def parse(argv, env=None, monkeypatch=None):
    if env and monkeypatch:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_match_the_settings_dataclass():
    assert parse([]) == Settings()


def test_flags_and_environment(monkeypatch, tmp_path):
    env = {
        "SAM3_GRPC_QUEUE_SIZE": "7",
        "SAM3_GRPC_MODEL": "synthetic",
        "SAM3_GRPC_MEDIA_ROOT": os.pathsep.join([str(tmp_path), "/srv"]),
        "SAM3_GRPC_MAX_UPLOAD_BYTES": "1G",
        "SAM3_GRPC_SESSION_TTL": "60",
    }
    settings = parse(["--port", "6000", "--grace", "3"], env, monkeypatch)
    assert settings.queue_size == 7 and settings.model == "synthetic"
    assert settings.media_roots == (str(tmp_path), "/srv")
    assert settings.max_upload_bytes == 1 << 30 and settings.session_ttl_s == 60
    assert settings.port == 6000 and settings.grace_s == 3
    # A flag beats the environment.
    assert parse(["--queue-size", "9", "--media-root", "/a"], env, monkeypatch).queue_size == 9
    assert parse(["--media-root", "/a"], env, monkeypatch).media_roots == ("/a",)


def test_help_documents_every_flag_with_its_variable(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    for name in (
        "--queue-size",
        "--media-root",
        "--model",
        "--device",
        "--grace",
        "--max-upload-bytes",
        "--session-ttl",
    ):
        assert name in text
    assert "SAM3_GRPC_QUEUE_SIZE" in text and "SAM3_GRPC_SESSION_TTL" in text


@pytest.mark.parametrize("flag", ["--queue-size", "--max-objects"])
def test_invalid_setting_is_a_usage_error(flag):
    result = subprocess.run(
        [sys.executable, "-m", "sam3_grpc.cli", "serve", flag, "0", "--model", "synthetic"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{flag} must be positive" in result.stderr


def test_serve_then_sigterm_exits_cleanly():
    with ServeProcess(["--model", "synthetic", "--grace", "2"]) as server:
        with grpc.insecure_channel(server.wait_ready(60).target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert server.stop(timeout=30) == 0, server.log()
    # The log tells the shutdown: health NOT_SERVING after it was SERVING, then "stopped".
    lines = server.lines
    serving = max(i for i, line in enumerate(lines) if line.endswith("health: SERVING"))
    after = "\n".join(lines[serving + 1 :])
    assert "health: NOT_SERVING" in after and after.endswith("stopped"), server.log()


def serve_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "sam3_grpc.cli", "serve", "--model", "synthetic", *extra]


def catches_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler yet (Linux: /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("signum", "delay"),
    [
        (signal.SIGTERM, 0.0),  # the moment the process can handle it: imports still running
        (signal.SIGTERM, 0.1),
        (signal.SIGINT, 0.0),
    ],
)
def test_a_signal_during_start_up_stops_cleanly(signum, delay):
    """A SIGTERM (or Ctrl-C) a fraction of a second after start, before the server serves:
    exit 0, no traceback. Sent once the process handles signals at all: before that any
    program dies of the default action, which no code of ours can change."""
    process = subprocess.Popen(serve_command("--port", "0"), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not catches_sigterm(process.pid):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(delay)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "stopped" in stderr


def test_serve_on_a_busy_port_is_one_line_naming_it():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(
            serve_command("--port", str(port)), capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert "--port" in lines[0]


def test_bind_problems_are_explained():
    from sam3_grpc.cli.serve import bind_problem

    assert bind_problem("127.0.0.1", 0) is None
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        holder.listen()
        assert "already in use" in (bind_problem("127.0.0.1", port) or "")
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is on no interface of this machine.
    assert "not an address of this machine" in (bind_problem("192.0.2.1", 50051) or "")


def test_port_file_is_written_once_serving_and_removed_at_shutdown(tmp_path):
    """The machine-readable readiness signal `sam3-grpc cluster` relies on."""
    port_file = tmp_path / "port.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sam3_grpc.cli",
            "serve",
            "--model",
            "synthetic",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--metrics-port",
            "0",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "no port file"
            time.sleep(0.02)
        info = json.loads(port_file.read_text())
        assert info["pid"] == process.pid and info["metrics_port"] > 0
        with grpc.insecure_channel(f"127.0.0.1:{info['port']}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        # Written only once SERVING: the first check already says so.
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert [p.name for p in tmp_path.iterdir()] == ["port.json"]  # no temporary left
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not port_file.exists()
    finally:
        if process.poll() is None:
            process.kill()
