"""SegmentationService: validates, decodes off the device thread, queues one device job."""

from __future__ import annotations

import os
from collections.abc import Sequence

import grpc

from sam3_grpc.errors import InvalidArgument
from sam3_grpc.media.images import content_key, decode_image
from sam3_grpc.media.paths import resolve_media_path
from sam3_grpc.server import convert
from sam3_grpc.server.cache import EmbeddingCache
from sam3_grpc.server.runtime import Runtime, deadline_of
from sam3_grpc.types import Prompt, RawDetection
from sam3_grpc.v1 import common_pb2, segmentation_service_pb2 as pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as pb_grpc


def segment_job(
    cache: EmbeddingCache, key: str, image, prompts: Sequence[Prompt]
):
    """The device job: the image encoding comes from the cache when it can."""

    def run(engine) -> tuple[list[list[RawDetection]], bool]:
        state = cache.get(key)
        hit = state is not None
        if not hit:
            state = engine.encode_image(image)
            cache.put(key, state, engine.state_nbytes(state))
        return engine.predict(state, prompts), hit

    return run


def read_image_file(path: str, max_bytes: int) -> bytes:
    size = os.stat(path).st_size
    if size > max_bytes:
        raise InvalidArgument(f"image file is {size} bytes; this server accepts at most "
                              f"{max_bytes} bytes")
    with open(path, "rb") as handle:
        return handle.read(max_bytes + 1)


class SegmentationServicer(pb_grpc.SegmentationServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def _image_bytes(self, image: common_pb2.Image) -> bytes:
        source = image.WhichOneof("source")
        settings = self.runtime.settings
        if source == "content":
            return image.content
        if source == "path":
            path = resolve_media_path(image.path, settings.media_roots)
            return await self.runtime.on_cpu(read_image_file, str(path), settings.max_image_bytes)
        raise InvalidArgument("image is missing: set image.content (bytes) or image.path")

    def _decode(self, data: bytes):
        settings = self.runtime.settings
        image = decode_image(data, max_bytes=settings.max_image_bytes,
                             max_pixels=settings.max_image_pixels)
        return image, content_key(data)

    async def SegmentImage(
        self, request: pb.SegmentImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.SegmentImageResponse:
        runtime = self.runtime
        runtime.require_ready()
        settings = runtime.settings
        prompts = convert.prompts_from_proto(request.prompts, settings)
        spec = convert.output_from_proto(
            request.output, settings, runtime.engine.info.default_score_threshold)
        data = await self._image_bytes(request.image)
        image, key = await runtime.on_cpu(self._decode, data)
        height, width = image.shape[:2]
        prompts = [convert.fit_prompt_to_image(p, width, height, f"prompts[{i}]")
                   for i, p in enumerate(prompts)]
        results, hit = await runtime.executor.submit(
            segment_job(runtime.cache, key, image, prompts),
            deadline=deadline_of(context), label="SegmentImage")
        return await runtime.on_cpu(self._render, results, spec, width, height, hit)

    @staticmethod
    def _render(results, spec, width, height, hit) -> pb.SegmentImageResponse:
        response = pb.SegmentImageResponse(width=width, height=height, cache_hit=hit)
        for index, detections in enumerate(results):
            response.results.add(
                prompt_index=index, detections=convert.render_detections(detections, spec))
        return response
