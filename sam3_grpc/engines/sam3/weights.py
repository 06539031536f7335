"""Finding the SAM 3 checkpoint on local disk, never over the network.

The checkpoint (`sam3.pt` in the gated Hugging Face repository `facebook/sam3`, ~3.4 GB) is
looked up in this order:

1. an explicit path (`--checkpoint`);
2. the Hugging Face hub cache, the way `huggingface_hub` lays it out
   (`<HF_HUB_CACHE>/models--facebook--sam3/snapshots/<revision>/sam3.pt`): first the revision
   `refs/main` points to (`try_to_load_from_cache`), then any other cached snapshot.

Nothing is downloaded at run time: a server must not block its start on a 3.4 GB transfer nor
depend on hub credentials. When nothing is found the error says how to get the weights. There is
no fallback to random weights for the real model.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass

from sam3_grpc.errors import ConfigurationError

logger = logging.getLogger(__name__)

REPO_ID = "facebook/sam3"
CHECKPOINT_FILE = "sam3.pt"
# The Hugging Face CLI (`hf`, from huggingface_hub >= 0.34; `huggingface-cli` no longer works).
# The README gives the same commands (a test holds them together).
LOGIN_COMMAND = "hf auth login"
DOWNLOAD_COMMAND = f"hf download {REPO_ID} {CHECKPOINT_FILE}"


@dataclass(frozen=True)
class CheckpointLocation:
    path: str
    # What EngineInfo.weights_source reports: the path, or "huggingface-cache:<path>".
    source: str


def hub_cache_dir() -> str:
    """The hub cache directory, read from the environment at call time.

    `huggingface_hub.constants` freezes the environment when first imported; reading it here lets
    a process (or a test) point HF_HUB_CACHE somewhere else later.
    """
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(name)
        if value:
            return os.path.expanduser(value)
    hf_home = os.environ.get("HF_HOME")
    if hf_home:
        return os.path.join(os.path.expanduser(hf_home), "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def hub_offline_from_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def find_in_hub_cache(cache_dir: str | None = None) -> str | None:
    """Path of a cached `facebook/sam3` `sam3.pt`, or None. Never touches the network."""
    cache_dir = cache_dir or hub_cache_dir()
    if not os.path.isdir(cache_dir):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(REPO_ID, CHECKPOINT_FILE, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    except ImportError:  # huggingface_hub is a sam3 dependency, but the scan below suffices
        pass
    # A snapshot fetched at an explicit revision has no refs/main: scan every snapshot.
    snapshots = os.path.join(cache_dir, "models--" + REPO_ID.replace("/", "--"), "snapshots")
    if not os.path.isdir(snapshots):
        return None
    found_paths = [
        os.path.join(snapshots, revision, CHECKPOINT_FILE) for revision in os.listdir(snapshots)
    ]
    found_paths = [p for p in found_paths if os.path.isfile(p)]
    if not found_paths:
        return None
    return max(found_paths, key=os.path.getmtime)


def check_checkpoint_file(path: str) -> None:
    """Fails fast, before a minute of model building, on a file that cannot be a checkpoint:
    `torch.save` writes zip archives (sam3.pt is one)."""
    if not zipfile.is_zipfile(path):
        raise ConfigurationError(
            f"{path} is not a PyTorch checkpoint (torch.save zip archive); expected "
            f"{CHECKPOINT_FILE} from the Hugging Face repository {REPO_ID}"
        )


def locate_checkpoint(
    checkpoint: str | None, *, hf_offline: bool | None = None
) -> CheckpointLocation:
    """Resolves the real model's checkpoint or raises ConfigurationError saying how to get it."""
    if checkpoint:
        path = os.path.abspath(os.path.expanduser(checkpoint))
        if not os.path.isfile(path):
            raise ConfigurationError(
                f"checkpoint {checkpoint!r} does not exist. Pass --checkpoint with the path of "
                f"{CHECKPOINT_FILE} from the Hugging Face repository {REPO_ID}."
            )
        check_checkpoint_file(path)
        return CheckpointLocation(path, path)
    cache_dir = hub_cache_dir()
    cached = find_in_hub_cache(cache_dir)
    if cached is not None:
        path = cached
        check_checkpoint_file(path)
        logger.info("found %s in the Hugging Face cache: %s", CHECKPOINT_FILE, path)
        return CheckpointLocation(path, f"huggingface-cache:{path}")
    offline = hub_offline_from_env() if hf_offline is None else hf_offline
    raise ConfigurationError(
        f"no SAM 3 checkpoint: --checkpoint was not given and {REPO_ID}/{CHECKPOINT_FILE} is not "
        f"in the Hugging Face cache at {cache_dir}"
        + (" (HF_HUB_OFFLINE is set)" if offline else "")
        + ". The weights are gated and are never downloaded at run time. To get them: "
        f"1) request access on https://huggingface.co/{REPO_ID}; "
        f"2) run `{LOGIN_COMMAND}` with a token of that account; "
        f"3) run `{DOWNLOAD_COMMAND}` (fills the cache) — or "
        f"pass --checkpoint /path/to/{CHECKPOINT_FILE}. "
        "For development without the weights use --model sam3-tiny "
        "(random weights, meaningless masks)."
    )
