"""A CPU-only install (PyTorch's CPU wheels bring no Triton) runs the SAM 3 engine.

Triton is installed here (this machine's torch is a CUDA build), so a child process makes every
import of it fail, as on a CPU-only install, then builds the tiny preset and segments an image
(text and click) through the same engine the server uses; tracking reaches the same stand-in
(`sam3.model.edt`), checked here by name."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.sam3

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTriton())
    import importlib.util
    real_find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a, **k: (
        None if name == "triton" or name.startswith("triton.") else real_find_spec(name, *a, **k)
    )

    import numpy as np
    from sam3_grpc.domain import LabeledPoint, Prompt
    from sam3_grpc.engines.sam3 import Sam3Engine

    engine = Sam3Engine(preset="sam3-tiny", device="cpu")
    engine.load()
    image = np.zeros((96, 128, 3), np.uint8)
    image[20:60, 30:90] = (220, 30, 30)
    state = engine.encode_image(image)
    detections = engine.predict(state, [Prompt(text="a red square"), Prompt(points=(LabeledPoint(60, 40),))])
    print(json.dumps({
        "per_prompt": [len(d) for d in detections],
        "click_mask_shape": list(detections[1][0].mask.shape),
        "triton_loaded": any(m == "triton" or m.startswith("triton.") for m in sys.modules),
        "edt": sys.modules["sam3.model.edt"].__doc__,
    }))
""")


def test_the_tiny_engine_runs_without_triton():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["triton_loaded"] is False
    assert "Triton is not installed" in out["edt"]
    # Clicks always answer: the best mask at the image's size.
    assert out["per_prompt"][1] == 1 and out["click_mask_shape"] == [96, 128]
