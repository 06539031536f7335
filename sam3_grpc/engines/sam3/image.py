"""Image segmentation on the detector and tracker of the SAM 3 video model.

Two sam3 tasks answer the prompts of one encoded image:

- Promptable concept segmentation (PCS): a text phrase and/or box exemplars (positive or
  negative) find every matching object. This is what `Sam3Processor.set_text_prompt` /
  `add_geometric_prompt` run: `Sam3Image.forward_grounding` on the cached backbone output, with
  the phrase "visual" standing in when only boxes are given.
- Promptable visual segmentation (the "SAM 1 task", `Sam3Image.predict_inst`): clicks, optionally
  with one box, segment one object, through `SAM3InteractiveImagePredictor` on the tracker's SAM
  heads and the backbone's second ("sam2") neck.

Sam3Processor is used for what it does to an image (resize, normalise, backbone); the prompt
steps are done here because (1) the processor accumulates prompts in the image state, whereas
every prompt here starts from the untouched encoding, and (2) the video model's detector folds the
presence score into its logits already (`supervise_joint_box_scores=True`), where the processor
would multiply by it a second time.

Scores are sam3's: sigmoid(logit) x presence for PCS, the predicted IoU for clicks. Candidates
scoring under `SCORE_FLOOR` are dropped before their masks are upsampled; every other threshold
is the server's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sam3_grpc.domain import Box, LabeledBox, Prompt, RawDetection
from sam3_grpc.engines.sam3.builder import PATCH_SIZE
from sam3_grpc.errors import InvalidArgument, Reason

# PCS candidates below this score are never returned (the server's default threshold is 0.5).
SCORE_FLOOR = 0.05
# sam3's own confidence threshold (Sam3Processor's default); the server's default.
DEFAULT_SCORE_THRESHOLD = 0.5
TEXT_CACHE_SIZE = 64
# Masks are upsampled to the image size this many at a time, bounding the float32 peak.
MASK_CHUNK = 8

SUPPORTED_IMAGE_PROMPTS = (
    "text; boxes (exemplars, positive or negative); text + boxes; "
    "points (clicks on one object); points + one positive box"
)


def validate_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidArgument("the image must be a uint8 array")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise InvalidArgument(f"the image must have shape (height, width, 3), got {image.shape}")


def _clip_box(box: Box, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0 = max(0.0, box.x_min), max(0.0, box.y_min)
    x1, y1 = min(float(width), box.x_max), min(float(height), box.y_max)
    if x1 <= x0 or y1 <= y0:
        raise InvalidArgument(
            f"box ({box.x_min}, {box.y_min}, {box.x_max}, {box.y_max}) has no area inside the "
            f"{width}x{height} image"
        )
    return x0, y0, x1, y1


class ImagePredictor:
    """Encodes images and answers prompts, on a built SAM 3 video model."""

    def __init__(self, model: Any, device: torch.device) -> None:
        from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor
        from sam3.model.sam3_image_processor import Sam3Processor

        self.detector = model.detector
        self.tracker = model.tracker
        self.device = device
        self.resolution = int(model.image_size)
        self.processor = Sam3Processor(
            self.detector,
            resolution=self.resolution,
            device=str(device),
            confidence_threshold=DEFAULT_SCORE_THRESHOLD,
        )
        # Not registered in the model: it only references the tracker's modules (no copy).
        self.interactive = SAM3InteractiveImagePredictor(self.tracker)
        stride = self.resolution // PATCH_SIZE
        self.interactive._bb_feat_sizes = [(stride * 4,) * 2, (stride * 2,) * 2, (stride,) * 2]
        self._text_cache: OrderedDict[str, dict] = OrderedDict()
        self._position_cache: dict[tuple, torch.Tensor] = {}

    # ----- encoding ------------------------------------------------------------------------
    def encode(self, image: np.ndarray) -> dict:
        """The processor's state for the image: backbone output (on device) and original size."""
        validate_image(image)
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        state = self.processor.set_image(chw)
        backbone_out = state["backbone_out"]
        self._share_position_encodings(backbone_out)
        if backbone_out.get("sam2_backbone_out") is not None:
            self._share_position_encodings(backbone_out["sam2_backbone_out"])
        return {
            "original_height": state["original_height"],
            "original_width": state["original_width"],
            "backbone_out": backbone_out,
        }

    def _share_position_encodings(self, features: dict) -> None:
        """Points the state's positional encodings at one shared tensor per shape.

        `PositionEmbeddingSine` returns a fresh copy (`cache[...].repeat(...)`) for every image,
        although it depends only on the feature-map shape: sharing halves a state's memory
        (222 MB instead of 444 MB per image at 1008 px in fp32).
        """
        shared = []
        for pos in features["vision_pos_enc"]:
            if pos.shape[0] == 1:
                key = (tuple(pos.shape), pos.dtype, pos.device)
                pos = self._position_cache.setdefault(key, pos)
            shared.append(pos)
        features["vision_pos_enc"] = shared

    def shared_storages(self) -> frozenset[int]:
        """Storages every encoded state shares: not part of any one state's memory."""
        return frozenset(t.untyped_storage().data_ptr() for t in self._position_cache.values())

    # ----- prompts -------------------------------------------------------------------------
    def predict(self, state: dict, prompt: Prompt) -> list[RawDetection]:
        if prompt.is_empty():
            raise InvalidArgument(f"empty prompt; supported: {SUPPORTED_IMAGE_PROMPTS}")
        if prompt.points:
            return self._predict_clicks(state, prompt)
        return self._predict_concept(state, prompt)

    def _text_features(self, text: str) -> dict:
        cached = self._text_cache.get(text)
        if cached is None:
            cached = self.detector.backbone.forward_text([text], device=self.device)
            self._text_cache[text] = cached
            if len(self._text_cache) > TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        else:
            self._text_cache.move_to_end(text)
        return cached

    def _predict_concept(self, state: dict, prompt: Prompt) -> list[RawDetection]:
        height, width = state["original_height"], state["original_width"]
        # A fresh shallow copy: the cached encoding never sees this prompt's text or boxes.
        backbone_out = dict(state["backbone_out"])
        backbone_out.update(self._text_features(prompt.text or "visual"))
        geometric_prompt = self.detector._get_dummy_prompt()
        if prompt.boxes:
            boxes, labels = self._normalized_boxes(prompt.boxes, width, height)
            geometric_prompt.append_boxes(boxes, labels)
        out = self.detector.forward_grounding(
            backbone_out=backbone_out,
            find_input=self.processor.find_stage,
            geometric_prompt=geometric_prompt,
            find_target=None,
        )
        probs = out["pred_logits"].float().sigmoid()
        if not self.detector.supervise_joint_box_scores:
            probs = probs * out["presence_logit_dec"].float().sigmoid().unsqueeze(1)
        probs = probs.reshape(-1)
        keep = torch.nonzero(probs >= SCORE_FLOOR).reshape(-1)
        if keep.numel() == 0:
            return []
        keep = keep[torch.argsort(probs[keep], descending=True)]
        scores = probs[keep].cpu().numpy()
        boxes = out["pred_boxes"].reshape(-1, 4)[keep].float()
        cx, cy, bw, bh = boxes.unbind(-1)
        scale = torch.tensor([width, height, width, height], device=boxes.device)
        xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * scale
        xyxy = xyxy.clamp_(min=0)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(max=width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(max=height)
        corners = xyxy.cpu().numpy()
        low_res = out["pred_masks"].reshape(-1, *out["pred_masks"].shape[-2:])[keep]
        detections = []
        for start in range(0, keep.numel(), MASK_CHUNK):
            chunk = low_res[start : start + MASK_CHUNK].float().unsqueeze(1)
            # sigmoid(bilinear(logits)) > 0.5, as Sam3Processor thresholds, is logits > 0.
            masks = torch.nn.functional.interpolate(
                chunk, (height, width), mode="bilinear", align_corners=False
            )
            binary = (masks[:, 0] > 0).cpu().numpy()
            for i, mask in enumerate(binary, start):
                x0, y0, x1, y1 = (float(v) for v in corners[i])
                detections.append(
                    RawDetection(
                        mask=mask,
                        score=float(scores[i]),
                        object_id=i + 1,  # the contract: 1, 2, ... best score first
                        box=Box(x0, y0, x1, y1),
                    )
                )
        return detections

    def _normalized_boxes(
        self, boxes: Sequence[LabeledBox], width: int, height: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel boxes as sam3's geometric prompt wants them: (N, 1, 4) normalised cxcywh."""
        rows = []
        for labeled in boxes:
            x0, y0, x1, y1 = _clip_box(labeled.box, width, height)
            cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
            rows.append([cx, cy, (x1 - x0) / width, (y1 - y0) / height])
        tensor = torch.tensor(rows, dtype=torch.float32, device=self.device).view(-1, 1, 4)
        labels = torch.tensor(
            [b.positive for b in boxes], dtype=torch.bool, device=self.device
        ).view(-1, 1)
        return tensor, labels

    def _predict_clicks(self, state: dict, prompt: Prompt) -> list[RawDetection]:
        height, width = state["original_height"], state["original_width"]
        if prompt.text:
            raise InvalidArgument(
                f"points cannot be combined with text; supported: {SUPPORTED_IMAGE_PROMPTS}",
                reason=Reason.UNSUPPORTED_PROMPT,
            )
        if len(prompt.boxes) > 1 or any(not b.positive for b in prompt.boxes):
            raise InvalidArgument(
                "points can be combined with at most one positive box (the object's extent); "
                f"supported: {SUPPORTED_IMAGE_PROMPTS}",
                reason=Reason.UNSUPPORTED_PROMPT,
            )
        coords = np.array([[p.x, p.y] for p in prompt.points], dtype=np.float32)
        labels = np.array([1 if p.positive else 0 for p in prompt.points], dtype=np.int32)
        box = None
        if prompt.boxes:
            box = np.array(_clip_box(prompt.boxes[0].box, width, height), dtype=np.float32)
        # SAM's convention: three candidates for an ambiguous single click, keep the best.
        multimask = len(prompt.points) == 1 and box is None
        predictor = self.interactive
        predictor._features = self._interactive_features(state)
        predictor._orig_hw = [(height, width)]
        predictor._is_image_set = True
        try:
            masks, ious, _ = predictor.predict(
                point_coords=coords,
                point_labels=labels,
                box=box,
                multimask_output=multimask,
            )
        finally:
            predictor.reset_predictor()
        best = int(np.argmax(ious))
        # The best mask whatever its score: clicks always answer. The server derives the box.
        return [RawDetection(mask=masks[best].astype(bool), score=float(ious[best]), object_id=1)]

    def _interactive_features(self, state: dict) -> dict:
        """The tracker-side image features `Sam3Image.predict_inst` builds, from the second neck
        (computed per request so the cached encoding stays untouched)."""
        sam2_out = state["backbone_out"].get("sam2_backbone_out")
        if sam2_out is None:
            raise InvalidArgument("this model has no interactive (point prompt) neck")
        decoder = self.tracker.sam_mask_decoder
        fpn = list(sam2_out["backbone_fpn"])
        fpn[0] = decoder.conv_s0(fpn[0])
        fpn[1] = decoder.conv_s1(fpn[1])
        _, feats, _, _ = self.tracker._prepare_backbone_features(
            {"backbone_fpn": fpn, "vision_pos_enc": sam2_out["vision_pos_enc"]}
        )
        feats[-1] = feats[-1] + self.tracker.no_mem_embed
        sizes = [tuple(level.shape[-2:]) for level in fpn]
        maps = [
            f.permute(1, 2, 0).reshape(1, -1, *size) for f, size in zip(feats, sizes, strict=True)
        ]
        return {"image_embed": maps[-1], "high_res_feats": maps[:-1]}
