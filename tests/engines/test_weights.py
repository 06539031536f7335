"""Where the real model's weights come from, and what a user is told when they are missing.

No sam3 import: these run in the fast suite."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from sam3_grpc.engines.sam3 import weights
from sam3_grpc.errors import ConfigurationError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def missing_weights_message(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigurationError) as raised:
        weights.locate_checkpoint(None, hf_offline=True)
    return str(raised.value)


def test_missing_weights_message_gives_the_readme_commands(tmp_path, monkeypatch):
    message = missing_weights_message(tmp_path, monkeypatch)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    for command in (weights.LOGIN_COMMAND, weights.DOWNLOAD_COMMAND):
        assert f"`{command}`" in message
        assert command in readme, f"README does not give {command!r}"
    for needle in ("https://huggingface.co/facebook/sam3", "--checkpoint", "sam3-tiny"):
        assert needle in message
    assert "HF_HUB_OFFLINE" in message
    assert "huggingface-cli login" not in message + readme  # the deprecated CLI exits 1


@pytest.mark.parametrize("command", [weights.LOGIN_COMMAND, weights.DOWNLOAD_COMMAND])
def test_the_documented_commands_exist_in_the_installed_cli(command):
    """`hf` ships with huggingface_hub (a server dependency); each documented command parses
    (--help: no network, no token)."""
    hf = os.path.join(os.path.dirname(sys.executable), "hf")
    if not os.path.exists(hf):
        pytest.skip("the hf CLI is not installed next to this Python")
    _, *words = command.split()
    subcommands = [w for w in words if not w.startswith(("facebook/", "sam3."))]
    done = subprocess.run(
        [hf, *subcommands, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: hf " + " ".join(subcommands) in done.stdout


def test_the_cache_is_found_offline_in_the_hub_layout(tmp_path, monkeypatch):
    snapshot = tmp_path / "models--facebook--sam3" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    with zipfile.ZipFile(snapshot / "sam3.pt", "w") as archive:
        archive.writestr("archive/data.pkl", b"")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    found = weights.locate_checkpoint(None, hf_offline=True)
    assert found.path == str(snapshot / "sam3.pt")
    assert found.source == f"huggingface-cache:{snapshot / 'sam3.pt'}"


def test_a_file_that_is_not_a_checkpoint_fails_before_building(tmp_path):
    bogus = tmp_path / "sam3.pt"
    bogus.write_bytes(b"<html>login required</html>")
    with pytest.raises(ConfigurationError, match="not a PyTorch checkpoint"):
        weights.locate_checkpoint(str(bogus))
