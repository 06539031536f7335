"""The committed stubs match the protos, and the protos pass buf lint and format."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_generated_code_is_up_to_date():
    result = subprocess.run(
        [sys.executable, "scripts/generate_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def _buf() -> str:
    local = ROOT / "node_modules" / ".bin" / "buf"
    if local.exists():
        return str(local)
    found = shutil.which("buf")
    if found is None:
        pytest.skip("buf is not installed: run `npm ci` at the repository root")
    return found


@pytest.mark.parametrize(
    "args", [["lint"], ["format", "--diff", "--exit-code"]], ids=["lint", "format"]
)
def test_buf(args):
    result = subprocess.run([_buf(), *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_stubs_and_package_does_not_import_torch():
    code = (
        "import sys, sam3_grpc, sam3_grpc.v1.video_service_pb2_grpc, "
        "sam3_grpc.v1.segmentation_service_pb2_grpc, sam3_grpc.engines, sam3_grpc.types; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
