"""SegmentationService: validate, then a three-stage pipeline: decode on the CPU pool, one job on
the device thread, mask encoding on the CPU pool."""

from __future__ import annotations

import grpc

from sam3_grpc.errors import InvalidArgument
from sam3_grpc.media.images import ImageLimits, content_key, decode_image, invalid_image
from sam3_grpc.media.paths import open_media
from sam3_grpc.server import convert
from sam3_grpc.server.runtime import Runtime, deadline_of
from sam3_grpc.v1 import segmentation_service_pb2 as pb
from sam3_grpc.v1 import segmentation_service_pb2_grpc as pb_grpc


class SegmentationServicer(pb_grpc.SegmentationServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.limits = ImageLimits(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            max_scans=settings.max_image_scans,
        )

    def _read_path(self, path: str) -> bytes:
        """The bytes of a media-root file: opened once, checked, read through that handle."""
        with open_media(path, self.runtime.settings.media_roots) as handle:
            size = handle.size()
            if size > self.limits.max_bytes:
                raise invalid_image(
                    f"image file is {size} bytes; this server accepts at most "
                    f"{self.limits.max_bytes} bytes",
                    "image.path",
                    limit=self.limits.max_bytes,
                )
            return handle.read(self.limits.max_bytes)

    async def SegmentImage(
        self, request: pb.SegmentImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.SegmentImageResponse:
        runtime = self.runtime
        runtime.admit()
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
            image = decode_image(data, self.limits, field=f"image.{source}")
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
            return convert.check_reply_size(response, settings.max_send_message_bytes)

        return await runtime.executor.submit(
            run,
            prepare=prepare,
            finish=finish,
            cpu_pool=runtime.cpu_pool,
            deadline=deadline_of(context),
            label="SegmentImage",
        )
