"""Engines: the real SAM 3, its tiny random-weight preset, and the synthetic colour engine.

`create_engine` imports the chosen engine lazily, so the synthetic engine (and the client) never
pay for importing torch.
"""

from __future__ import annotations

from sam3_grpc.config import Settings
from sam3_grpc.engines.base import Engine


def create_engine(settings: Settings) -> Engine:
    if settings.model == "synthetic":
        from sam3_grpc.engines.synthetic import SyntheticEngine

        return SyntheticEngine(
            latency_ms=settings.synthetic_latency_ms, max_objects=settings.max_objects
        )
    if settings.model in ("sam3", "sam3-tiny"):
        from sam3_grpc.engines.sam3 import Sam3Engine

        return Sam3Engine(
            preset=settings.model,
            device=settings.device,
            checkpoint=settings.checkpoint,
            bpe_path=settings.bpe_path,
            compile=settings.compile,
            max_objects=settings.max_objects,
        )
    raise ValueError(f"unknown model {settings.model!r}")
