"""`Sam3Engine`: Meta's SAM 3 behind the `Engine` interface.

One `Sam3VideoInferenceWithInstanceInteractivity` model serves both images (on its detector and
tracker, see `image.py`) and video sessions (`video.py`): a single copy of the weights.

Devices. On CUDA every call runs under `torch.autocast("cuda", dtype=torch.bfloat16)` (what
sam3's tracker enables for its whole process, made explicit per call so it holds on any thread),
with TF32 matmuls on Ampere or newer and the chosen GPU current (sam3 puts some caches on the bare
"cuda" device). `compile=True` enables sam3's own `torch.compile` set-up (`_compile_model`) after
an eager warm-up. On the CPU every call runs under the compatibility layer (`compat.py`), in fp32
for images; video runs in fp32 too, sam3's explicit bf16 casts dropped, unless the CPU has bf16
units (then under bf16 autocast, as on CUDA; `cpu_bf16` overrides the choice); `compile` is
ignored.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from sam3_grpc.domain import (
    EngineInfo,
    FrameOutput,
    MemoryUsage,
    ModelKind,
    Prompt,
    RawDetection,
    SessionBudget,
    VideoInfo,
)
from sam3_grpc.engines.base import Engine
from sam3_grpc.engines.sam3 import compat
from sam3_grpc.engines.sam3.builder import (
    DEFAULT_MAX_OBJECTS,
    PRESET_REAL,
    PRESET_TINY,
    PRESETS,
    REAL_RESOLUTION,
    TINY,
    TinySpec,
    build_video_model,
)
from sam3_grpc.engines.sam3.image import DEFAULT_SCORE_THRESHOLD, ImagePredictor
from sam3_grpc.engines.sam3.state import StateFootprint
from sam3_grpc.engines.sam3.video import FramePreparer
from sam3_grpc.errors import ConfigurationError, FailedPrecondition, InvalidArgument
from sam3_grpc.media.frames import FrameWindow

logger = logging.getLogger(__name__)

TINY_WEIGHTS_SOURCE = "random (tiny preset: masks are meaningless)"


def resolve_device(spec: str) -> torch.device:
    """ "auto" | "cpu" | "cuda" | "cuda:N" to a concrete device, or ConfigurationError."""
    value = (spec or "auto").strip().lower()
    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match is None:
        raise ConfigurationError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise ConfigurationError(f"device {spec!r} requested but CUDA is not available")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigurationError(
            f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) are visible"
        )
    return torch.device("cuda", index)


class Sam3Engine(Engine):
    """SAM 3 on one device. Construction is cheap (nothing is imported or built); `load()` builds.

    preset: "sam3" (Meta's model; needs the checkpoint) or "sam3-tiny" (same code, small random
        model; masks are meaningless).
    device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; checked here.
    checkpoint: path of sam3.pt; by default the Hugging Face cache of facebook/sam3 is searched
        (never the network). A missing checkpoint fails `load()` with ConfigurationError.
    bpe_path: the CLIP BPE vocabulary; by default the copy inside open_clip_torch.
    compile: torch.compile as sam3 sets it up, on CUDA only, during `warmup()`.
    hf_offline: whether the hub is declared offline (default: HF_HUB_OFFLINE). The engine never
        downloads either way; the flag only shapes the error message.
    cpu_bf16: on the CPU, run video calls under bf16 autocast (True) or in float32 (False);
        default: bf16 only where the CPU has bf16 units (`compat.cpu_has_bf16_units`).
        Ignored on CUDA, which always runs sam3's bf16 autocast.
    tiny_spec: the sizes of the sam3-tiny preset (default `builder.TINY`), for benchmarks that
        compare sizes; only with preset "sam3-tiny".
    max_objects: the most objects one video session tracks (sam3's `max_num_objects`); default
        `builder.DEFAULT_MAX_OBJECTS` for "sam3", the tiny spec's own for "sam3-tiny".
    bounded_state: video sessions keep their state bounded whatever the video's length
        (`state.SessionBounds`). False keeps everything sam3 keeps: the reference the bounded
        state is tested against, for tests and benchmarks only.
    """

    def __init__(
        self,
        *,
        preset: str = PRESET_REAL,
        device: str = "auto",
        checkpoint: str | None = None,
        bpe_path: str | None = None,
        compile: bool = False,
        hf_offline: bool | None = None,
        cpu_bf16: bool | None = None,
        tiny_spec: TinySpec | None = None,
        max_objects: int | None = None,
        bounded_state: bool = True,
    ) -> None:
        if preset not in PRESETS:
            raise ConfigurationError(f"unknown model preset {preset!r}; choose one of {PRESETS}")
        if preset == PRESET_TINY and checkpoint:
            raise ConfigurationError("the sam3-tiny preset has random weights; drop --checkpoint")
        if tiny_spec is not None and preset != PRESET_TINY:
            raise ConfigurationError("tiny_spec applies to the sam3-tiny preset only")
        if max_objects is not None and max_objects < 1:
            raise ConfigurationError(f"max_objects must be at least 1, got {max_objects}")
        self._preset = preset
        self._device = resolve_device(device)
        self._checkpoint = checkpoint
        self._bpe_path = bpe_path
        self._compile = bool(compile)
        self._hf_offline = hf_offline
        self._cpu_bf16 = cpu_bf16
        self._tiny_spec = tiny_spec or TINY
        self._object_cap = max_objects
        self._bounded_state = bool(bounded_state)
        self._video_bf16 = False  # resolved by load() on the CPU
        self._model: Any = None
        self._image: ImagePredictor | None = None
        self._video: Any = None
        self._position_encodings: list[Any] = []
        self._info = EngineInfo(
            name=preset,
            kind=ModelKind.TINY if preset == PRESET_TINY else ModelKind.REAL,
            device=str(self._device),
            weights_source=TINY_WEIGHTS_SOURCE if preset == PRESET_TINY else "not loaded",
            default_score_threshold=DEFAULT_SCORE_THRESHOLD,
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def loaded(self) -> bool:
        return self._model is not None

    # ----- lifecycle -------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        from sam3_grpc.engines.sam3.bpe import find_bpe_vocab
        from sam3_grpc.engines.sam3.weights import locate_checkpoint

        started = time.monotonic()
        checkpoint_path = None
        weights_source = TINY_WEIGHTS_SOURCE
        if self._preset == PRESET_REAL:
            location = locate_checkpoint(self._checkpoint, hf_offline=self._hf_offline)
            checkpoint_path, weights_source = location.path, location.source
        bpe_path = find_bpe_vocab(self._bpe_path)
        cpu = self._device.type == "cpu"
        logger.info(
            "loading SAM 3 preset %s on %s (weights: %s)",
            self._preset,
            self._device,
            weights_source,
        )
        if self._preset == PRESET_TINY:
            logger.warning(
                "preset %s has RANDOM weights: its masks and scores are meaningless "
                "(for tests and development only)",
                self._preset,
            )
        if cpu:
            compat.install_cpu_patches()
            if self._compile:
                logger.warning("compile=True is ignored on the CPU")
            self._video_bf16 = (
                compat.cpu_has_bf16_units() if self._cpu_bf16 is None else self._cpu_bf16
            )
            logger.info(
                "video calls on the CPU compute in %s",
                "bfloat16 (autocast)" if self._video_bf16 else "float32",
            )
        else:
            compat.import_sam3_quietly()
            major, _ = torch.cuda.get_device_capability(self._device)
            if major >= 8:
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
        try:
            model = build_video_model(
                preset=self._preset,
                device=self._device,
                bpe_path=bpe_path,
                checkpoint_path=checkpoint_path,
                compile=self._compile and not cpu,
                tiny_spec=self._tiny_spec,
                max_objects=self._object_cap,
            )
        except (RuntimeError, KeyError, ValueError, OSError) as exc:
            if checkpoint_path is None or isinstance(exc, torch.OutOfMemoryError):
                raise
            # Strict loading: a truncated file or another model's checkpoint fails here.
            raise ConfigurationError(
                f"cannot load the SAM 3 checkpoint {checkpoint_path}: {exc}"
            ) from exc
        model.compile_model = self._compile and not cpu
        from sam3.model.position_encoding import PositionEmbeddingSine

        from sam3_grpc.engines.sam3.video import VideoRunner

        self._position_encodings = [
            m for m in model.modules() if isinstance(m, PositionEmbeddingSine)
        ]
        with self._context(), compat.quiet_sam3_warnings():
            self._image = ImagePredictor(model, self._device)
        self._video = VideoRunner(
            model, lambda: self._context(video=True), bounded=self._bounded_state
        )
        self._model = model
        self._info = EngineInfo(
            name=self._preset,
            kind=self._info.kind,
            device=str(self._device),
            weights_source=weights_source,
            default_score_threshold=DEFAULT_SCORE_THRESHOLD,
        )
        parameters = sum(p.numel() for p in model.parameters())
        logger.info(
            "loaded SAM 3 preset %s on %s in %.1f s: %.1fM parameters, resolution %s",
            self._preset,
            self._device,
            time.monotonic() - started,
            parameters / 1e6,
            int(model.image_size),
        )

    def _one_inference(self) -> None:
        image = np.zeros((64, 64, 3), np.uint8)
        self.predict(self.encode_image(image), [Prompt(text="object")])

    def warmup(self) -> None:
        self._one_inference()
        if self._model is not None and self._model.compile_model:
            # sam3 compiles after an eager pass has filled its caches (positional encodings).
            with self._context(video=True):
                self._model._compile_model()
            self._one_inference()

    @contextlib.contextmanager
    def _context(self, video: bool = False) -> Iterator[None]:
        with torch.inference_mode():
            if self._device.type == "cpu":
                with compat.cpu_context(bf16_autocast=video and self._video_bf16):
                    yield
            else:
                with torch.cuda.device(self._device), torch.autocast("cuda", dtype=torch.bfloat16):
                    yield

    def _require_loaded(self) -> None:
        if self._model is None:
            raise FailedPrecondition("the model is not loaded yet")

    def _images(self) -> ImagePredictor:
        if self._image is None:
            raise FailedPrecondition("the model is not loaded yet")
        return self._image

    def memory(self) -> MemoryUsage:
        if self._device.type == "cuda":
            total = torch.cuda.get_device_properties(self._device).total_memory
            return MemoryUsage(torch.cuda.memory_allocated(self._device), total)
        return super().memory()

    def _model_owned(self) -> frozenset[int]:
        """Storages shared by every state (position-encoding caches): not per-state memory."""
        owned = {
            t.untyped_storage().data_ptr()
            for module in self._position_encodings
            for t in module.cache.values()
            if isinstance(t, torch.Tensor)
        }
        if self._image is not None:
            owned |= self._image.shared_storages()
        return frozenset(owned)

    # ----- images ----------------------------------------------------------------------------
    def encode_image(self, image: np.ndarray) -> Any:
        self._require_loaded()
        with self._context():
            return self._images().encode(image)

    def state_nbytes(self, state: Any) -> int:
        from sam3_grpc.engines.sam3.video import tensor_nbytes

        return tensor_nbytes(state.get("backbone_out"), self._model_owned())

    def predict(self, state: Any, prompts: Sequence[Prompt]) -> list[list[RawDetection]]:
        self._require_loaded()
        if not isinstance(state, dict) or "backbone_out" not in state:
            raise InvalidArgument("not an encoded image of this engine")
        with self._context():
            images = self._images()
            return [images.predict(state, prompt) for prompt in prompts]

    # ----- video sessions --------------------------------------------------------------------
    def _session(self, state: Any):
        from sam3_grpc.engines.sam3.video import VideoSession

        self._require_loaded()
        if not isinstance(state, VideoSession):
            raise InvalidArgument("not a video session of this engine")
        if state.closed:
            raise FailedPrecondition("the session is closed")
        return state

    def frame_preparer(self) -> FramePreparer:
        return FramePreparer(self._resolution())

    def _resolution(self) -> int:
        if self._model is not None:
            return int(self._model.image_size)
        return self._tiny_spec.resolution if self._preset == PRESET_TINY else REAL_RESOLUTION

    def session_budget(self, info: VideoInfo, window_frames: int) -> SessionBudget:
        """The frame window and the compact per-frame results on the host; tracker state at the
        object limit on the device (`state.StateFootprint`)."""
        footprint = self.state_footprint()
        objects = self._max_objects()
        host = window_frames * FramePreparer(self._resolution()).frame_bytes()
        host += footprint.host_bytes(info.frame_count, objects)
        device = footprint.device_bytes(objects)
        if self._device.type == "cpu":
            return SessionBudget(host_bytes=host + device)
        return SessionBudget(host_bytes=host, device_bytes=device)

    def state_footprint(self) -> StateFootprint:
        # sam3 stores memory features in bfloat16; the CPU path without bf16 units in float32.
        feature_bytes = 2 if self._device.type != "cpu" or self._video_bf16 else 4
        if self._model is not None:
            return StateFootprint.of(self._model, feature_bytes)
        if self._preset == PRESET_TINY:
            spec = self._tiny_spec
            return StateFootprint(
                spec.resolution, 4, hotstart_delay=spec.hotstart_delay, queries=spec.queries
            )
        return StateFootprint(REAL_RESOLUTION, feature_bytes)

    @property
    def max_objects(self) -> int:
        return self._max_objects()

    def _max_objects(self) -> int:
        if self._model is not None:
            return int(self._model.max_num_objects)
        if self._object_cap is not None:
            return self._object_cap
        return (
            self._tiny_spec.max_num_objects if self._preset == PRESET_TINY else DEFAULT_MAX_OBJECTS
        )

    def start_session(self, frames: FrameWindow) -> Any:
        self._require_loaded()
        assert self._video is not None
        return self._video.start(frames)

    def add_prompt(
        self, state: Any, frame_index: int, prompt: Prompt, object_id: int | None
    ) -> tuple[FrameOutput, list[int]]:
        return self._video.add_prompt(self._session(state), frame_index, prompt, object_id)

    def remove_object(self, state: Any, object_id: int) -> None:
        self._video.remove_object(self._session(state), object_id)

    def reset_session(self, state: Any) -> None:
        self._video.reset(self._session(state))

    def object_ids(self, state: Any) -> list[int]:
        return self._video.object_ids(self._session(state))

    def prompted_frames(self, state: Any) -> list[int]:
        return self._video.prompted_frames(self._session(state))

    def propagate(
        self, state: Any, forward: Sequence[int], backward: Sequence[int]
    ) -> Iterator[FrameOutput]:
        return self._video.propagate(self._session(state), forward, backward)

    def session_nbytes(self, state: Any) -> int:
        from sam3_grpc.engines.sam3.video import VideoSession

        if not isinstance(state, VideoSession) or state.closed:
            return 0
        return self._video.nbytes(state, self._model_owned())

    def close_session(self, state: Any) -> None:
        from sam3_grpc.engines.sam3.video import VideoSession

        if isinstance(state, VideoSession) and not state.closed:
            self._video.close(state)
