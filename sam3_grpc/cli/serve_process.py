"""`sam3-grpc serve` as a child process, ready when its `--port-file` says so.

One launcher for everything that starts a server in its own process: `sam3-grpc cluster` (one
per replica), the benchmarks (a server as deployed: no GIL shared with the client) and the tests
that need a real process (signals, exit codes, the log). Readiness and the port come from the
JSON port file `serve` writes once health is SERVING, never from the wording of its log.

    with ServeProcess(["--model", "synthetic"]) as server:
        server.wait_ready(60)
        channel = grpc.insecure_channel(server.target)
        ...
    # leaving the block: SIGTERM, the server drains and exits (killed if it overruns)

Standard library only, so that importing it costs nothing and pulls in neither grpc nor torch.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import signal as signals  # `signal` is a method of ServeProcess
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

logger = logging.getLogger(__name__)

TAIL_LINES = 30  # log lines quoted when a server fails to start
POLL_INTERVAL_S = 0.02


class ServeProcessError(RuntimeError):
    """The server exited before it was ready, or was not ready in time; the message quotes the
    end of its log."""


def describe_exit(code: int) -> str:
    """Says how a process ended, from Popen's return code (negative: killed by that signal)."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signals.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class ChildLog:
    """Reads a child's text stream on a daemon thread until it closes: keeps the last
    `keep_lines` lines, copies each to our stderr after `relay_prefix`, hands each to `on_line`
    (without its newline). Draining the pipe is what keeps a chatty child from blocking."""

    def __init__(
        self,
        stream: IO[str],
        *,
        keep_lines: int = 2000,
        relay_prefix: str | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self._stream = stream
        self._lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._lock = threading.Lock()
        self._relay_prefix = relay_prefix
        self._on_line = on_line
        self._thread = threading.Thread(target=self._read, name="child-log", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self._stream:
                line = raw.rstrip("\n")
                with self._lock:
                    self._lines.append(line)
                if self._relay_prefix is not None:
                    # Looked up per line: whatever sys.stderr is now (pytest swaps it).
                    sys.stderr.write(f"{self._relay_prefix} {line}\n" if line.strip() else "\n")
                if self._on_line is not None:
                    try:
                        self._on_line(line)
                    except Exception:  # the pipe must keep draining, or the child blocks
                        logger.exception("on_line callback failed; the log is still collected")
        finally:
            self._stream.close()

    @property
    def lines(self) -> list[str]:
        """A copy of the lines kept so far (the last `keep_lines`)."""
        with self._lock:
            return list(self._lines)

    def tail(self, count: int = TAIL_LINES) -> list[str]:
        with self._lock:
            return list(self._lines)[-count:]

    def join(self, timeout: float | None = None) -> bool:
        """Waits for the end of the stream; True once it has been read to the end."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


class ServeProcess:
    """`python -m sam3_grpc.cli serve ARGS --port-file FILE` in a child process.

    `args` are `serve` flags; `--port 0` (a free port) is added unless they name a port.
    `port_file` defaults to a file in a new temporary directory, removed once the process is
    gone. The child's stderr is read on a thread: the last `keep_lines` lines stay in `lines`,
    each goes to `on_line` and, with `relay_prefix`, to our stderr. `env` is added to this
    process's environment. `start_new_session` puts the child in its own session, out of reach
    of a Ctrl-C meant for the parent.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        port_file: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        on_line: Callable[[str], None] | None = None,
        relay_prefix: str | None = None,
        keep_lines: int = 2000,
        start_new_session: bool = False,
    ) -> None:
        args = list(args)
        names = {arg.split("=", 1)[0] for arg in args}
        if "--port-file" in names:  # the launcher reads the file it named itself
            raise ValueError("--port-file is set by ServeProcess; pass port_file= instead")
        if "--port" not in names:
            args += ["--port", "0"]
        self._own_directory: Path | None = None
        if port_file is None:
            self._own_directory = Path(tempfile.mkdtemp(prefix="sam3-grpc-serve-"))
            self.port_file = self._own_directory / "port.json"
        else:
            self.port_file = Path(port_file).absolute()  # the same file whatever `cwd` is
            # A file left by an earlier process must not pass for this one's readiness.
            with contextlib.suppress(FileNotFoundError):
                self.port_file.unlink()
        self.command = [
            sys.executable,
            "-m",
            "sam3_grpc.cli",
            "serve",
            *args,
            "--port-file",
            str(self.port_file),
        ]
        self.started_at = time.monotonic()
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
                start_new_session=start_new_session,
            )
        except BaseException:
            self._remove_own_directory()
            raise
        assert self._process.stderr is not None
        self._log = ChildLog(
            self._process.stderr,
            keep_lines=keep_lines,
            relay_prefix=relay_prefix,
            on_line=on_line,
        )
        self._info: dict[str, Any] = {}
        self._stop_sent = False

    # ----- readiness -----
    def ready(self) -> bool:
        """True once the server has written its port file (health SERVING). Never blocks."""
        if self._info:
            return True
        try:
            info = json.loads(self.port_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        if info.get("pid") != self.pid:
            return False  # another process's file at a path the caller chose
        self._info = info
        return True

    def wait_ready(self, timeout: float = 60.0) -> ServeProcess:
        """Blocks until the server is SERVING. Raises ServeProcessError, quoting the end of its
        log, as soon as it exits instead, or after `timeout` seconds (the process is then left
        running: `stop()`, or leaving the `with` block, ends it)."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self._process.poll() is not None:
                self._log.join(5)  # its last words, usually why it exited
                raise ServeProcessError(
                    f"sam3-grpc serve {describe_exit(self._process.returncode)} before it "
                    f"was ready; {self._tail_text()}"
                )
            if time.monotonic() > deadline:
                raise ServeProcessError(
                    f"sam3-grpc serve (pid {self.pid}) not SERVING after {timeout:g} s; "
                    f"{self._tail_text()}"
                )
            time.sleep(POLL_INTERVAL_S)
        return self

    def _tail_text(self) -> str:
        tail = self._log.tail()
        if not tail:
            return "it logged nothing"
        return "the end of its log:\n" + "\n".join("    " + line for line in tail)

    # ----- what the port file says -----
    @property
    def info(self) -> dict[str, Any]:
        """The port file's content ({"port", "host", "pid", "metrics_port"}); empty until
        `ready()` has seen it."""
        return dict(self._info)

    def _require_info(self) -> dict[str, Any]:
        if not self._info:
            raise RuntimeError("the server is not ready yet: call wait_ready() first")
        return self._info

    @property
    def port(self) -> int:
        return int(self._require_info()["port"])

    @property
    def host(self) -> str:
        """An address to connect to: the listening one, loopback for a wildcard."""
        host = str(self._require_info()["host"])
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)

    @property
    def target(self) -> str:
        """`host:port` for grpc.insecure_channel (IPv6 addresses in brackets)."""
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        return self._require_info().get("metrics_port")

    # ----- the process -----
    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (negative: killed by that signal), else None."""
        return self._process.poll()

    @property
    def lines(self) -> list[str]:
        """The last `keep_lines` lines it logged, without newlines."""
        return self._log.lines

    def log(self) -> str:
        return "\n".join(self._log.lines)

    def signal(self, signum: int = signals.SIGTERM) -> None:
        """Sends a signal if it still runs. To `serve`, a second SIGTERM or SIGINT cuts the
        drain delay short."""
        if signum in (signals.SIGTERM, signals.SIGINT):
            self._stop_sent = True
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)

    def wait(self, timeout: float | None = None) -> int:
        """Waits for it to exit (subprocess.TimeoutExpired after `timeout`), then for the rest
        of its log; returns the exit code."""
        code = self._process.wait(timeout)
        self._finished()
        return code

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (unless one was already sent: a second one would cut the drain short), then
        waits up to `timeout` seconds for the drain and the grace period; kills it after that.
        Returns the exit code: 0 for a clean stop."""
        if self._process.poll() is None and not self._stop_sent:
            self.signal(signals.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.error(
                "sam3-grpc serve (pid %d) did not stop within %g s; killing it", self.pid, timeout
            )
            return self.kill()

    def kill(self) -> int:
        """SIGKILL: no drain, no cleanup of its own. Returns the exit code."""
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        return self.wait(10)

    def _finished(self) -> None:
        self._log.join(5)
        self._remove_own_directory()

    def _remove_own_directory(self) -> None:
        if self._own_directory is not None:
            shutil.rmtree(self._own_directory, ignore_errors=True)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive else describe_exit(self._process.returncode)
        where = f" on {self.target}" if self._info else ""
        return f"<ServeProcess pid {self.pid} {state}{where}>"
