"""Where the CLIP BPE vocabulary for sam3's text tokenizer comes from.

The `sam3` 0.1.4 wheel does not ship `assets/bpe_simple_vocab_16e6.txt.gz`, yet its builders
default to that path. The identical vocabulary ships inside `open_clip_torch`
(`open_clip/bpe_simple_vocab_16e6.txt.gz`); we locate it without importing open_clip (which would
import torch and take seconds).
"""

from __future__ import annotations

import importlib.util
import os

from sam3_grpc.errors import ConfigurationError

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"


def find_bpe_vocab(bpe_path: str | None = None) -> str:
    """Returns a readable path to the BPE vocabulary, or raises ConfigurationError.

    Order: the explicit `bpe_path`; the file in the installed sam3 package (newer wheels may ship
    it); the copy inside open_clip_torch.
    """
    if bpe_path:
        if not os.path.isfile(bpe_path):
            raise ConfigurationError(
                f"BPE vocabulary {bpe_path!r} does not exist; pass --bpe-path pointing to "
                f"{BPE_FILE_NAME} (it ships in open_clip_torch: pip install open_clip_torch)"
            )
        return bpe_path
    candidates = []
    for package, parts in (("sam3", ("..", "assets")), ("open_clip", ())):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            continue
        candidates.append(
            os.path.normpath(os.path.join(os.path.dirname(spec.origin), *parts, BPE_FILE_NAME))
        )
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigurationError(
        f"cannot find the CLIP BPE vocabulary {BPE_FILE_NAME}: the sam3 wheel does not ship it. "
        "Install open_clip_torch (pip install open_clip_torch), which contains the identical file, "
        "or pass --bpe-path /path/to/" + BPE_FILE_NAME
    )
