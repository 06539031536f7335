"""The client works with only its base dependencies: no torch, OpenCV, Pillow, tqdm, nor the
server's grpc health/reflection packages (each import of those is made to fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from helpers import RED, blank, draw_rect, encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    BLOCKED = ("torch", "torchvision", "sam3", "cv2", "PIL", "tqdm", "grpc_health",
               "grpc_reflection", "sam3_grpc.server", "sam3_grpc.engines", "sam3_grpc.media")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())

    import sam3_grpc.client as client_package
    from sam3_grpc.client import OutputOptions, Prompt, Sam3Client

    target, image_path = sys.argv[1], sys.argv[2]
    with open(image_path, "rb") as handle:
        data = handle.read()
    report = {}
    with Sam3Client(target) as client:
        result = client.segment_image(data, ["red", Prompt(points=[(30, 20)])])
        detection = result[0][0]
        report["box"] = list(detection.box)
        report["area"] = int(detection.area)
        report["mask_sum"] = int(detection.mask.sum())
        report["point_area"] = int(result[1][0].mask.sum())
        report["coco_keys"] = sorted(detection.to_coco())
        report["health"] = client.health()
        report["model_kind"] = client.status().model_kind
        png = client.segment_image(data, "red", output=OutputOptions(mask_encoding="png"))[0][0]
        try:
            png.mask
            report["png"] = "decoded"
        except ImportError as exc:
            report["png"] = str(exc)
    report["heavy"] = sorted(m for m in ("torch", "cv2", "PIL", "tqdm") if m in sys.modules)
    print(json.dumps(report))
""")


def test_client_without_torch_or_opencv(synthetic_server, tmp_path):
    image = blank(80, 60)
    rect = draw_rect(image, 10, 5, 50, 35, RED)
    image_path = tmp_path / "red.png"
    image_path.write_bytes(encode(image))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, synthetic_server.target, str(image_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["box"] == [10.0, 5.0, 50.0, 35.0]
    assert report["area"] == report["mask_sum"] == report["point_area"] == rect.sum()
    assert "segmentation" in report["coco_keys"] and "bbox" in report["coco_keys"]
    assert report["health"] == "SERVING" and report["model_kind"] == "synthetic"
    assert "opencv-python-headless or pillow" in report["png"]  # a clear hint, not a crash
    assert report["heavy"] == []
