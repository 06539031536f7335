"""The SAM 3 engine: Meta's `sam3` package behind the `Engine` interface.

Importing this package imports torch but not sam3; `Sam3Engine.load()` imports and builds sam3.
"""

from sam3_grpc.engines.sam3.engine import Sam3Engine

__all__ = ["Sam3Engine"]
