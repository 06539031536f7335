"""Unit tests of the CPU compatibility layer for Meta's sam3 (sam3_grpc/engines/sam3/compat.py).

The tests that import or run sam3 itself carry the `sam3` marker; the others need only torch.
"""

from __future__ import annotations

import os
import platform
import sys

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt
from skimage.measure import label

from sam3_grpc.engines.sam3 import compat


def random_masks(batch: int, height: int, width: int, density: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((batch, height, width)) < density)


# ----- Euclidean distance transform ---------------------------------------------------------
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_edt_cpu_equals_scipy_on_random_masks(density):
    masks = random_masks(4, 37, 53, density, seed=int(density * 100))
    got = compat.edt_cpu(masks)
    assert got.shape == masks.shape and got.dtype == torch.float32
    for i in range(masks.shape[0]):
        expected = distance_transform_edt(masks[i].numpy())
        np.testing.assert_allclose(got[i].numpy(), expected, rtol=1e-6, atol=1e-5)


def test_edt_cpu_blob_distances_are_exact():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 2:7, 2:7] = True
    got = compat.edt_cpu(mask)[0]
    assert got[4, 4] == pytest.approx(3.0)  # centre of a 5x5 square: 3 px to the nearest zero
    assert got[2, 2] == pytest.approx(1.0)
    assert got[0, 0] == 0.0


def test_edt_cpu_without_background_matches_the_triton_sentinel():
    got = compat.edt_cpu(torch.ones(1, 4, 4, dtype=torch.bool))
    assert torch.all(got == 1e9)


@pytest.mark.sam3  # imports and runs Meta's sam3
def test_edt_dispatch_is_what_sam3_tracker_utils_sees_on_cpu():
    compat.install_cpu_patches()
    import sam3.model.sam3_tracker_utils as tracker_utils

    masks = random_masks(2, 20, 30, 0.4, seed=3)
    np.testing.assert_allclose(
        tracker_utils.edt_triton(masks).numpy(), compat.edt_cpu(masks).numpy()
    )
    # sam3's click sampler, which needs the EDT, now runs on CPU tensors.
    gt = masks[:, None]
    points, labels = tracker_utils.sample_one_point_from_error_center(gt, torch.zeros_like(gt))
    assert points.shape == (2, 1, 2) and labels.shape == (2, 1)


# ----- connected components -----------------------------------------------------------------
def reference_components(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What sam3's original connected_components_cpu computes, image by image."""
    labels = label(values)
    counts = np.zeros_like(labels)
    for i in range(1, labels.max() + 1):
        counts[labels == i] = (labels == i).sum()
    return labels, counts


@pytest.mark.parametrize("shape", [(3, 24, 31), (3, 1, 24, 31)])
def test_connected_components_cpu_matches_the_original(shape):
    masks = random_masks(shape[0], 24, 31, 0.45, seed=7).to(torch.uint8).reshape(shape)
    labels, counts = compat.connected_components_cpu(masks)
    assert labels.shape == masks.shape and counts.shape == masks.shape
    flat = masks.reshape(shape[0], 24, 31).numpy()
    for i in range(shape[0]):
        ref_labels, ref_counts = reference_components(flat[i])
        np.testing.assert_array_equal(labels.reshape(shape[0], 24, 31)[i].numpy(), ref_labels)
        np.testing.assert_array_equal(counts.reshape(shape[0], 24, 31)[i].numpy(), ref_counts)


def test_connected_components_cpu_uses_8_connectivity():
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    mask[0, 0, 0, 0] = mask[0, 0, 1, 1] = 1  # diagonal neighbours: one component
    labels, counts = compat.connected_components_cpu(mask)
    assert labels.max() == 1
    assert counts[0, 0, 0, 0] == 2 and counts[0, 0, 0, 1] == 0


@pytest.mark.parametrize("shape", [(0, 16, 16), (0, 1, 16, 16)])
def test_connected_components_cpu_empty_batch(shape):
    labels, counts = compat.connected_components_cpu(torch.zeros(shape, dtype=torch.uint8))
    assert labels.shape == shape and counts.shape == shape


@pytest.mark.sam3  # imports and runs Meta's sam3
def test_sam3_hole_filling_survives_a_frame_without_objects():
    """The original crash: sam3's post-processing on zero masks (torch.stack of [])."""
    compat.install_cpu_patches()
    from sam3.model.sam3_tracker_utils import fill_holes_in_mask_scores

    empty = torch.zeros(0, 1, 18, 18)
    assert fill_holes_in_mask_scores(empty, max_area=16).shape == empty.shape
    scores = torch.full((2, 1, 18, 18), -1.0)
    scores[:, :, 4:12, 4:12] = 1.0
    scores[:, :, 7, 7] = -1.0  # a one-pixel hole
    filled = fill_holes_in_mask_scores(scores, max_area=16)
    assert torch.all(filled[:, :, 7, 7] > 0)


# ----- device rewriting ---------------------------------------------------------------------
def test_cuda_to_cpu_mode_rewrites_factories_and_moves():
    with compat.CudaToCpuMode():
        a = torch.zeros(2, 3, device="cuda")
        b = torch.arange(4, device=torch.device("cuda", 0))
        c = torch.ones(2).to("cuda")
        d = torch.ones(2).to(torch.device("cuda"), non_blocking=True)
        e = torch.ones(2).to(device="cuda:0", dtype=torch.float16)
    for t in (a, b, c, d, e):
        assert t.device.type == "cpu"
    assert e.dtype == torch.float16


def test_cuda_to_cpu_mode_makes_cuda_and_pin_memory_no_ops():
    x = torch.randn(3)
    with compat.CudaToCpuMode():
        assert x.cuda() is x
        assert x.cuda(non_blocking=True) is x
        assert x.pin_memory() is x
        y = x * 2  # ordinary ops pass through unchanged
    assert torch.equal(y, x * 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_to_cpu_mode_is_scoped():
    with compat.CudaToCpuMode():
        torch.zeros(1, device="cuda")
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(1, device="cuda")


def test_cpu_context_adds_bf16_autocast_only_when_asked():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with compat.cpu_context():
        assert (a @ b).dtype == torch.float32
    with compat.cpu_context(bf16_autocast=True):
        assert (a @ b).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_float32_context_keeps_sams_bf16_casts_in_float32():
    """sam3 casts memories and tracker features with `.to(torch.bfloat16)`; in float32 mode those
    casts of float32 tensors keep float32, and every other conversion is untouched."""
    x = torch.randn(2, 3)
    with compat.cpu_context():
        kept = [
            x.to(torch.bfloat16),
            x.to(dtype=torch.bfloat16),
            x.bfloat16(),
            x.to("cuda", torch.bfloat16, non_blocking=True),
            x.to(device="cuda:0", dtype=torch.bfloat16),
        ]
        converted = [x.half().to(torch.bfloat16), x.to(torch.float16), x.to(torch.bfloat16) + 0]
        features = torch.randn(1, 4, 3, 3)
        conv = torch.nn.Conv2d(4, 4, 3)
        assert conv(features.to(torch.bfloat16)).dtype == torch.float32  # the original failure
    for t in kept:
        assert t.dtype == torch.float32 and t.device.type == "cpu" and torch.equal(t, x)
    assert [t.dtype for t in converted] == [torch.bfloat16, torch.float16, torch.float32]
    with compat.cpu_context(bf16_autocast=True):
        assert x.to(torch.bfloat16).dtype == torch.bfloat16
    assert x.to(torch.bfloat16).dtype == torch.bfloat16  # scoped


def cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"),
    reason="reads the x86 CPU flags Linux reports",
)
def test_bf16_probe_agrees_with_the_kernel():
    """The probe that picks float32 video by default (Sam3Engine(cpu_bf16=None)) sees the same
    bf16 units as Linux does: AVX512-BF16 or AMX-BF16."""
    expected = bool({"avx512_bf16", "amx_bf16"} & cpuinfo_flags())
    assert compat.cpu_has_bf16_units() is expected


@pytest.mark.sam3  # imports and runs Meta's sam3
def test_sam3_position_encoding_builds_on_cpu_under_the_mode():
    """sam3/model/position_encoding.py precomputes on device="cuda" at construction."""
    compat.import_sam3_quietly()
    from sam3.model.position_encoding import PositionEmbeddingSine

    with compat.CudaToCpuMode():
        encoding = PositionEmbeddingSine(num_pos_feats=32, precompute_resolution=112)
    assert all(t.device.type == "cpu" for t in encoding.cache.values())


# ----- imports ------------------------------------------------------------------------------
def test_stub_edt_module_when_triton_is_missing(monkeypatch):
    # Restores sys.modules afterwards (undo runs last-in first-out), so the stub never leaks
    # into a later test that imports sam3.
    monkeypatch.setitem(sys.modules, "sam3.model.edt", None)
    monkeypatch.delitem(sys.modules, "sam3.model.edt")
    real_find_spec = compat.importlib.util.find_spec
    monkeypatch.setattr(
        compat.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "triton" else real_find_spec(name, *a),
    )
    compat.ensure_sam3_importable()
    assert sys.modules["sam3.model.edt"].edt_triton is compat.edt_cpu
