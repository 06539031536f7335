"""Running Meta's `sam3` 0.1.4 on a CPU: every workaround, in one place.

`sam3` is written for CUDA. Each piece below names the sam3 file it answers. All of them are
activated only by an engine whose device is the CPU; on CUDA nothing here runs and sam3 behaves
exactly as Meta ships it.

1. `CudaToCpuMode` (a `TorchFunctionMode`) rewrites `device="cuda"` to the CPU and makes
   `Tensor.cuda()` / `Tensor.pin_memory()` no-ops, for code that hard-codes CUDA:
   - `sam3/model/position_encoding.py`: precomputes its cache with `device="cuda"`;
   - `sam3/model/decoder.py`: `TransformerDecoder` precomputes box coordinates on "cuda";
   - `sam3/sam/transformer.py`: `RoPEAttention` puts its frequencies on "cuda" whenever CUDA is
     merely available (breaks device="cpu" on a GPU machine);
   - `sam3/model/geometry_encoders.py`: `pin_memory()` on every box prompt;
   - `sam3/model/sam3_tracker_base.py`, `sam3/model/sam3_tracking_predictor.py`: `.cuda()` on
     memories and `storage_device = torch.device("cuda")`;
   - `sam3/model/sam3_video_inference.py`: `pin_memory()` in `_postprocess_output`;
   - `sam3/model/io_utils.py`: `.cuda()` on loaded frames (unless offloaded to CPU).
   It is entered around each call (and around each step of a generator, never across a `yield`,
   because the mode stack is per thread and must stay balanced between interleaved jobs).
2. Precision of video calls. `sam3/model/sam3_video_inference.py` and
   `sam3/model/sam3_tracking_predictor.py` run under a CUDA bf16 autocast (disabled on the CPU),
   and two places cast to bfloat16 explicitly whatever the autocast: the stored memories
   (`maskmem_features.to(torch.bfloat16)` in `sam3_tracking_predictor.py`) and the tracker's
   backbone features (`backbone_fpn_bf16` in `sam3/model/sam3_image.py`). On a CPU, float32
   weights then meet bfloat16 activations: "Input type (c10::BFloat16) and bias type (float)".
   Two answers, chosen per engine (`cpu_context(bf16_autocast=...)`):
   - float32 (the default where the CPU has no bf16 units, `cpu_has_bf16_units()`):
     `CudaToCpuMode(keep_float32=True)` turns those explicit casts of float32 tensors to
     bfloat16 into no-ops, so video runs in float32 like images. A CPU without bf16 units
     (AVX2 only) has no fast bf16 kernels: on this project's 2-core AVX2 machine tiny-preset
     video ran ~10x slower under bf16 autocast than in float32, and one 256-channel 3x3
     convolution at 64x64 over 100x slower (BENCHMARKS.md). Stored memories take 4 bytes a
     value instead of 2.
   - bf16: `torch.autocast("cpu", dtype=torch.bfloat16)` around video calls, which is what sam3
     does on CUDA; worth it only on CPUs that compute bf16 natively (AVX512-BF16, AMX).
3. `connected_components_cpu` replaces the function of the same name in
   `sam3/perflib/connected_components.py`: the original crashes on an empty batch
   (`torch.stack([])`, reached whenever a frame has no object) and counts component sizes with one
   full-image pass per component; this one returns empty tensors for an empty batch and counts
   with `np.bincount`. Same labelling (skimage, 8-connectivity), same outputs.
4. `edt_cpu` replaces `edt_triton` (a Triton GPU kernel, `sam3/model/edt.py`) as seen by
   `sam3/model/sam3_tracker_utils.py`, for CPU tensors: the exact Euclidean distance transform
   (`scipy.ndimage.distance_transform_edt`). In 0.1.4 only the click-sampling helper
   `sample_one_point_from_error_center` uses it (not reached at inference), so this is a guard.
   When Triton itself is missing (CPU-only torch builds), `ensure_sam3_importable()` registers a
   stand-in `sam3.model.edt` module, because `sam3/model_builder.py` imports it unconditionally.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import threading
import types
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

_PATCH_LOCK = threading.Lock()
_patches_installed = False


# ----- 1. device rewriting ------------------------------------------------------------------
def _is_cuda(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device == "cuda" or device.startswith("cuda:")
    return False


_CPU = torch.device("cpu")
_NO_OPS = frozenset({torch.Tensor.cuda, torch.Tensor.pin_memory})
_CASTS = frozenset({torch.Tensor.to, torch.Tensor.bfloat16})
_SPECIAL = _NO_OPS | _CASTS


class CudaToCpuMode(TorchFunctionMode):
    """Runs code that hard-codes CUDA on the CPU: cuda devices become cpu, `.cuda()` and
    `.pin_memory()` return the tensor unchanged.

    keep_float32: casts of float32 tensors to bfloat16 (`.to(torch.bfloat16)`, `.bfloat16()`)
        leave them in float32 (workaround 2).

    Every torch call in its scope passes through `__torch_function__`, so the common case (no
    device argument, no special method) takes two checks.
    """

    def __init__(self, *, keep_float32: bool = False) -> None:
        super().__init__()
        self.keep_float32 = keep_float32

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        elif "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": _CPU}
        if func in _SPECIAL:
            if func in _NO_OPS:
                return args[0]
            if self.keep_float32 and _casts_float32_to_bf16(func, args, kwargs):
                if func is torch.Tensor.bfloat16:
                    return args[0]
                args = tuple(a for a in args if a is not torch.bfloat16)
                kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
            if func is torch.Tensor.to and any(_is_cuda(a) for a in args[1:]):
                args = tuple(_CPU if _is_cuda(a) else a for a in args)
        return func(*args, **kwargs)


def _casts_float32_to_bf16(func, args, kwargs) -> bool:
    tensor = args[0] if args else None
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32:
        return False
    if func is torch.Tensor.bfloat16:
        return True
    return kwargs.get("dtype") is torch.bfloat16 or any(a is torch.bfloat16 for a in args[1:])


# CPU features with bfloat16 arithmetic in hardware (names of `torch.cpu.get_capabilities()`).
_BF16_UNITS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bfloat16 in hardware: AVX512-BF16 or AMX on x86, BF16 on Arm."""
    try:
        capabilities = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # older torch: assume not
        return False
    return any(bool(capabilities.get(name)) for name in _BF16_UNITS)


@contextlib.contextmanager
def cpu_context(*, bf16_autocast: bool = False) -> Iterator[None]:
    """Everything a sam3 call needs on the CPU: device rewriting, plus either bf16 autocast (as
    sam3 runs on CUDA) or float32 throughout, sam3's explicit bf16 casts dropped (workaround 2)."""
    with CudaToCpuMode(keep_float32=not bf16_autocast):
        if bf16_autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        else:
            yield


# ----- 3. connected components --------------------------------------------------------------
def connected_components_cpu(input_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and component sizes of a (B, H, W) or (B, 1, H, W) mask batch, 8-connectivity.

    Drop-in for `sam3.perflib.connected_components.connected_components_cpu`: background pixels
    get label 0 and size 0; an empty batch gives empty outputs instead of crashing.
    """
    from skimage.measure import label

    out_shape = input_tensor.shape
    if input_tensor.dim() == 4 and input_tensor.shape[1] == 1:
        batch = input_tensor.squeeze(1)
    else:
        assert input_tensor.dim() == 3, "Input tensor must be (B, H, W) or (B, 1, H, W)."
        batch = input_tensor
    if batch.shape[0] == 0:
        empty = torch.zeros(out_shape, dtype=torch.int64, device=input_tensor.device)
        return empty, empty.clone()
    values = batch.detach().cpu().numpy()
    labels = np.empty(values.shape, dtype=np.int64)
    counts = np.empty(values.shape, dtype=np.int64)
    for i in range(values.shape[0]):
        labels_i = label(values[i])
        sizes = np.bincount(labels_i.ravel())
        sizes[0] = 0  # background
        labels[i] = labels_i
        counts[i] = sizes[labels_i]
    labels_t = torch.from_numpy(labels).to(input_tensor.device).view(out_shape)
    counts_t = torch.from_numpy(counts).to(input_tensor.device).view(out_shape)
    return labels_t, counts_t


# ----- 4. Euclidean distance transform ------------------------------------------------------
def edt_cpu(data: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance transform of a (B, H, W) mask batch, like sam3's `edt_triton`.

    Each non-zero pixel gets its distance to the nearest zero pixel. An image without any zero
    pixel gets 1e9 everywhere, as the Triton kernel's 1e18 "infinity" gives after its sqrt.
    """
    from scipy.ndimage import distance_transform_edt

    assert data.dim() == 3
    values = data.detach().cpu().numpy().astype(bool)
    out = np.empty(values.shape, dtype=np.float32)
    for i in range(values.shape[0]):
        if values[i].all():
            out[i] = 1e9
        else:
            out[i] = distance_transform_edt(values[i])
    return torch.from_numpy(out).to(data.device)


def _make_edt_dispatch(original):
    def edt(data: torch.Tensor) -> torch.Tensor:
        if data.is_cuda and original is not None:
            return original(data)
        return edt_cpu(data)

    edt.__wrapped__ = original  # type: ignore[attr-defined]  # read by tests (functools style)
    return edt


def ensure_sam3_importable() -> None:
    """Lets `import sam3.model_builder` succeed without Triton (CPU-only torch builds)."""
    if "sam3.model.edt" in sys.modules or importlib.util.find_spec("triton") is not None:
        return
    stub = types.ModuleType("sam3.model.edt")
    stub.edt_triton = edt_cpu  # type: ignore[attr-defined]
    stub.__doc__ = "Stand-in registered by sam3_grpc: Triton is not installed."
    sys.modules["sam3.model.edt"] = stub


@contextlib.contextmanager
def quiet_sam3_warnings() -> Iterator[None]:
    """Hides two warnings sam3 raises on every start, neither actionable here: CUDA autocast
    decorators evaluated on a machine without CUDA, and `torch.jit.script` being deprecated
    (`sam3/model/utils/sam1_utils.py`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Disabling autocast.*")
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*jit.script.*")
        yield


def import_sam3_quietly() -> None:
    """Imports the sam3 modules the engine uses, without their import-time warnings, and turns
    down their console output: every sam3 module logs INFO lines through its own handler
    (`sam3/logger.py`), and frame loading and propagation draw tqdm progress bars on stderr,
    one per call — noise in a server's log. sam3's warnings still show."""
    ensure_sam3_importable()
    with quiet_sam3_warnings():
        import sam3.model.sam3_video_inference
        import sam3.model_builder  # noqa: F401
    for name in list(logging.root.manager.loggerDict):
        if name == "sam3" or name.startswith("sam3."):
            logging.getLogger(name).setLevel(logging.WARNING)
    for module_name in _MODULES_WITH_PROGRESS_BARS:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "tqdm"):
            module.tqdm = _silenced(module.tqdm)  # type: ignore[attr-defined]  # hasattr above


def _silenced(progress_bar):
    def silent(*args, **kwargs):
        kwargs["disable"] = True  # overrides sam3's own `disable=self.rank > 0`
        return progress_bar(*args, **kwargs)

    return silent


# sam3 0.1.4 modules that draw tqdm bars: frame loading and both propagation loops.
_MODULES_WITH_PROGRESS_BARS = (
    "sam3.model.io_utils",
    "sam3.model.sam3_tracking_predictor",
    "sam3.model.sam3_video_inference",
)


def install_cpu_patches() -> None:
    """Installs pieces 3 and 4 into the sam3 modules (idempotent, process-wide).

    Both replacements act only on CPU tensors, so a CUDA engine in the same process is unaffected.
    """
    global _patches_installed
    with _PATCH_LOCK:
        if _patches_installed:
            return
        import_sam3_quietly()
        import sam3.model.sam3_tracker_utils as tracker_utils
        import sam3.perflib.connected_components as cc

        cc.connected_components_cpu = connected_components_cpu
        tracker_utils.edt_triton = _make_edt_dispatch(getattr(tracker_utils, "edt_triton", None))
        _patches_installed = True


def patches_installed() -> bool:
    return _patches_installed
