"""SegmentationService: validate, then a three-stage pipeline: decode on the CPU pool, one job on
the device thread, mask encoding on the CPU pool."""

from __future__ import annotations

import os

import grpc

from sam3_grpc.errors import InvalidArgument, Reason
from sam3_grpc.media.images import content_key, decode_image
from sam3_grpc.media.paths import resolve_media_path
from sam3_grpc.server import convert
from sam3_grpc.server.runtime import Runtime, deadline_of
from sam3_grpc.v1 import segmentation_service_pb2 as pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as pb_grpc


def read_image_file(path: str, max_bytes: int) -> bytes:
    size = os.stat(path).st_size
    if size > max_bytes:
        raise InvalidArgument(
            f"image file is {size} bytes; this server accepts at most {max_bytes} bytes",
            reason=Reason.INVALID_IMAGE,
            field="image.path",
            metadata={"limit": max_bytes},
        )
    with open(path, "rb") as handle:
        return handle.read(max_bytes + 1)


class SegmentationServicer(pb_grpc.SegmentationServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _read_path(self, path: str) -> bytes:
        settings = self.runtime.settings
        return read_image_file(
            str(resolve_media_path(path, settings.media_roots)), settings.max_image_bytes
        )

    async def SegmentImage(
        self, request: pb.SegmentImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.SegmentImageResponse:
        runtime = self.runtime
        runtime.require_ready()
        settings = runtime.settings
        prompts = convert.prompts_from_proto(request.prompts, settings)
        spec = convert.output_from_proto(
            request.output, settings, runtime.engine.info.default_score_threshold
        )
        source = request.image.WhichOneof("source")
        if source is None:
            raise InvalidArgument(
                "image is missing: set image.content (bytes) or image.path", field="image"
            )
        cache = runtime.cache

        def prepare():  # CPU pool: read, decode, check prompts against the image size
            data = (
                request.image.content
                if source == "content"
                else self._read_path(request.image.path)
            )
            image = decode_image(
                data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
            )
            height, width = image.shape[:2]
            fitted = [
                convert.fit_prompt_to_image(p, width, height, f"prompts[{i}]")
                for i, p in enumerate(prompts)
            ]
            return image, content_key(data), fitted

        def run(engine, prepared):  # device thread: the encoding comes from the cache if it can
            image, key, fitted = prepared
            state = cache.get(key)
            hit = state is not None
            if not hit:
                state = engine.encode_image(image)
                cache.put(key, state, engine.state_nbytes(state))
            return engine.predict(state, fitted), hit, image.shape

        def finish(outcome):  # CPU pool: filter and encode masks
            results, hit, (height, width, _) = outcome
            response = pb.SegmentImageResponse(width=width, height=height, cache_hit=hit)
            for index, (prompt, detections) in enumerate(zip(prompts, results, strict=True)):
                response.results.add(
                    prompt_index=index,
                    detections=convert.render_detections(detections, spec, prompt),
                )
            return response

        return await runtime.executor.submit(
            run,
            prepare=prepare,
            finish=finish,
            cpu_pool=runtime.cpu_pool,
            deadline=deadline_of(context),
            label="SegmentImage",
        )
