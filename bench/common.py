"""Shared benchmark helpers: an in-process server on loopback, scenes, percentiles, machine.
A server in its own process (as deployed): `sam3_grpc.cli.serve_process.ServeProcess`."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import threading

import cv2
import numpy as np

from sam3_grpc.config import Settings
from sam3_grpc.server.app import create_server


class BackgroundServer:
    """A real server on 127.0.0.1 with its event loop on a background thread."""

    def __init__(self, engine, **overrides) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        settings = Settings(host="127.0.0.1", port=0, **overrides)

        async def build():
            return create_server(settings, engine)

        self.server, self.port = self._run(build())
        self._run(self.server.start())

    def _run(self, coroutine, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._run(self.server.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def discs_scene(width: int = 640, height: int = 480, count: int = 5, seed: int = 0):
    """An RGB image with `count` red discs that do not touch."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (40, 60, 40)
    columns = np.linspace(60, width - 60, count)
    for x in columns:
        y = int(rng.integers(60, height - 60))
        cv2.circle(image, (int(x), y), 40, (255, 0, 0), -1)
    return image


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": ms[int(0.9 * (len(ms) - 1))],
        "p99_ms": ms[int(0.99 * (len(ms) - 1))],
        "mean_ms": statistics.fmean(ms),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {cpu}, {memory:.0f} GiB, Python {platform.python_version()}"
