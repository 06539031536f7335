"""`ServeProcess`, the one launcher of `sam3-grpc serve` child processes (cluster, benches,
tests): ready from the port file, fails fast with the log's end, stops cleanly."""

from __future__ import annotations

import json
import signal
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sam3_grpc.cli.serve_process import ServeProcess, ServeProcessError, describe_exit
from sam3_grpc.v1 import status_service_pb2, status_service_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(), timeout=10)
            .status
        )


def test_ready_serves_then_stops_cleanly_and_cleans_up(capfd):
    seen: list[str] = []
    server = ServeProcess(
        ["--model", "synthetic", "--metrics-port", "0", "--log-format", "json"],
        on_line=seen.append,
        relay_prefix="[child]",
    )
    # No --port given: a free one.
    assert server.command[-4:] == ["--port", "0", "--port-file", str(server.port_file)]
    with server:
        assert server.wait_ready(60) is server
        # What the port file says, exposed as attributes.
        assert server.info["pid"] == server.pid
        assert server.port > 0 and server.target == f"127.0.0.1:{server.port}"
        assert server.metrics_port and server.metrics_port != server.port
        assert server.port_file.exists()
        # Written only once SERVING: the first check already says so.
        assert health(server.target) == SERVING
        port_dir = server.port_file.parent
    # Leaving the block: SIGTERM, a clean exit, the port file and its directory gone.
    assert server.returncode == 0
    assert server.stop() == 0  # a second stop is harmless
    assert not port_dir.exists()
    # The whole log was collected (every line, JSON here), and handed to on_line and the relay.
    assert server.lines and server.lines == seen
    messages = [json.loads(line)["message"] for line in server.lines]
    assert "stopped" in messages
    relayed = capfd.readouterr().err.splitlines()
    assert [line for line in relayed if line.startswith("[child] ")] == [
        f"[child] {line}" for line in seen
    ]


def test_a_bad_flag_fails_at_once_with_the_end_of_the_log():
    server = ServeProcess(["--model", "synthetic", "--queue-size", "0"])
    with pytest.raises(ServeProcessError) as caught:
        server.wait_ready(60)
    message = str(caught.value)
    # Raised because the process exited (not because 60 s passed), quoting why.
    assert "exited with code 2 before it was ready" in message
    assert "--queue-size must be positive" in message
    assert server.returncode == 2
    assert server.stop() == 2
    assert not server.port_file.parent.exists()


def test_a_busy_port_fails_at_once_naming_it():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with ServeProcess(["--model", "synthetic", "--port", str(port)]) as server:
            with pytest.raises(ServeProcessError) as caught:
                server.wait_ready(60)
    assert "exited with code 1 before it was ready" in str(caught.value)
    assert f"port {port} on 127.0.0.1 is already in use" in str(caught.value)


def test_a_given_port_file_env_cwd_and_a_kill(tmp_path, monkeypatch):
    """A file left at the given path by an earlier process never passes for readiness; `env`
    reaches the child; a relative port file is the same file whatever `cwd` is; a killed server
    cannot remove its port file, so it stays for the caller."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    port_file = tmp_path / "port.json"
    port_file.write_text(json.dumps({"port": 1, "host": "127.0.0.1", "pid": 1}))
    server = ServeProcess(
        [], port_file="port.json", env={"SAM3_GRPC_MODEL": "synthetic"}, cwd="elsewhere"
    )
    try:
        assert server.port_file == port_file
        assert not server.ready() or server.info["pid"] == server.pid
        assert server.wait_ready(60).port != 1
        assert server.info["pid"] == server.pid
        with grpc.insecure_channel(server.target) as channel:
            status = status_service_pb2_grpc.StatusServiceStub(channel).GetServerStatus(
                status_service_pb2.GetServerStatusRequest(), timeout=10
            )
        assert status.model_name == "synthetic"
        assert server.kill() == -signal.SIGKILL
        assert port_file.exists() and not server.alive
        assert list((tmp_path / "elsewhere").iterdir()) == []
    finally:
        server.kill()


def test_flags_the_launcher_owns_are_refused():
    with pytest.raises(ValueError, match="--port-file is set by ServeProcess"):
        ServeProcess(["--port-file", "x.json"])
    with pytest.raises(ValueError, match="--port-file"):
        ServeProcess(["--port-file=x.json"])
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
