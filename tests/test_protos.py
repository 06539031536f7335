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
        "sam3_grpc.v1.segmentation_service_pb2_grpc, sam3_grpc.engines, sam3_grpc.domain; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_error_reasons_match_the_proto_enum():
    """The server's Reason values are exactly the ErrorReason enum's names without prefix."""
    from sam3_grpc.errors import Reason
    from sam3_grpc.v1 import error_reason_pb2

    names = {
        name.removeprefix("ERROR_REASON_")
        for name in error_reason_pb2.ErrorReason.DESCRIPTOR.values_by_name
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert {reason.value for reason in Reason} == names
    assert all(reason.name == reason.value for reason in Reason)


def test_no_unsigned_integers_on_the_wire():
    """AIP-141: Java has no unsigned types and JavaScript turns uint64 into strings."""
    from google.protobuf.descriptor import FieldDescriptor

    from sam3_grpc.v1 import (
        common_pb2,
        segmentation_service_pb2,
        status_service_pb2,
        video_service_pb2,
    )

    unsigned = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64}
    for module in (common_pb2, segmentation_service_pb2, status_service_pb2, video_service_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                assert field.type not in unsigned, f"{message.full_name}.{field.name}"
