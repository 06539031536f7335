"""Building the SAM 3 video model, which also serves images.

One model object holds every weight: `Sam3VideoInferenceWithInstanceInteractivity` contains the
detector (`Sam3ImageOnVideoMultiGPU`, a `Sam3Image` subclass with the same backbone, text encoder,
fusion encoder, decoder, geometry encoder and segmentation head as the image model) and the
tracker (`Sam3TrackerPredictor`, the same module the image model wraps for point prompts). The
engine runs image requests on `model.detector` and point prompts on `model.tracker`, so images and
videos share one copy of the weights (about 3.4 GB in fp32 for the real model, instead of 6.8 GB
for `build_sam3_image_model` + `build_sam3_video_model`).

Presets:
- "sam3": Meta's own `sam3.model_builder.build_sam3_video_model`, unchanged, with the checkpoint
  loaded strictly (`weights.locate_checkpoint` finds it; no download).
- "sam3-tiny": the same sam3 classes composed with small widths and depths and a 112-pixel input,
  initialised deterministically from a fixed seed. Its masks are meaningless; it exists so the real
  sam3 code paths run in tests and development on a CPU in seconds. Meta's builders hard-code the
  1008-pixel resolution in several places (ViT `img_size`, position-encoding precompute, decoder
  `resolution`, tracker `image_size`, RoPE `feat_sizes`, mask down-sampler `interpol_size`, video
  `image_size`, the interactive predictor's `_bb_feat_sizes`); `TinySpec.resolution` sets all of
  them.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from sam3_grpc.engines.sam3 import compat

logger = logging.getLogger(__name__)

PRESET_REAL = "sam3"
PRESET_TINY = "sam3-tiny"
PRESETS = (PRESET_REAL, PRESET_TINY)

PATCH_SIZE = 14
# Meta's configuration (sam3/model_builder.py): input resolution, and the object limit it sets
# (none: sam3_video_base.py turns -1 into 10000).
REAL_RESOLUTION = 1008
SAM3_MAX_OBJECTS = 10000
# The service's default object limit for the real model (`--max-objects`): every tracked object
# may hold up to ~100 MiB of tracker memories on the GPU at 1008 px (`state.StateFootprint`),
# so with the frames in flight 32 objects bound a session to ~4.3 GiB: about 14 sessions fit
# the default budget of an 80 GB GPU, 3 that of a 24 GB GPU. Without a limit (Meta's 10000)
# no session could be admitted on any GPU.
DEFAULT_MAX_OBJECTS = 32
D_MODEL = 256  # wired into several sam3 modules (tracker heads, box embeddings): never shrunk
TINY_SEED = 20251123


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny preset. Every field is a knob of a sam3 class, not a new architecture."""

    # A multiple of PATCH_SIZE: an 8x8 feature map. At 224 px the detector's fixed cost (the
    # 256-channel necks and pixel decoder at 4x the feature size) doubled the per-frame time of
    # video on a 2-core CPU (BENCHMARKS.md); every code path is the same at either size.
    resolution: int = 112
    vit_dim: int = 64
    vit_depth: int = 2
    vit_heads: int = 2
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    ffn_dim: int = 256
    heads: int = 8
    fusion_layers: int = 1
    decoder_layers: int = 2
    queries: int = 8
    geometry_layers: int = 1
    tracker_layers: int = 1
    # Random weights score every query about 0.2; these two knobs of the initialisation spread
    # the scores over (0, 1) so that thresholds (the server's 0.5, the video model's detection
    # and new-object thresholds) keep some candidates and drop others, as with real weights, and
    # every code path downstream of a threshold runs.
    score_proj_gain: float = 8.0
    presence_bias: float = 3.0
    # Video. A lower bar for new objects than Meta's 0.7, which random scores barely reach. The
    # tiny tracker and detector are unrelated random functions: their masks never match, so a
    # confident detection starts a new object on most frames (the random tracker's own masks are
    # mostly empty, so hot start never retracts them) until the cap, where sam3 refuses new
    # objects. sam3 keeps one tracker state per frame on which objects were born
    # (`_tracker_add_new_objects`) and runs each state every frame, so the cap bounds the
    # per-frame cost: about 12 ms of one CPU core per state at 112 px (BENCHMARKS.md). 4 keeps
    # several objects and states, and a 6-frame clip reaches the cap, exercising its path too. A
    # 4-frame hot start (Meta: 15, with removal after 8 unmatched or duplicate frames) makes
    # short test clips exercise both the release of withheld frames during propagation and the
    # flush at its end.
    new_det_thresh: float = 0.6
    hotstart_delay: int = 4
    hotstart_thresh: int = 2
    max_num_objects: int = 4
    # The tracker's memory-frame threshold (Meta's 0.01). The random tracker scores every frame
    # 0, so no frame is ever selected as memory; tests that need memory selection to matter set
    # it below 0 (every frame eligible).
    mf_threshold: float = 0.01

    @property
    def feat_size(self) -> int:
        return self.resolution // PATCH_SIZE


TINY = TinySpec()


def _attention(heads: int, batch_first: bool, dropout: float = 0.1):
    from sam3.model.model_misc import MultiheadAttentionWrapper

    return MultiheadAttentionWrapper(
        num_heads=heads, dropout=dropout, embed_dim=D_MODEL, batch_first=batch_first
    )


def _position_encoding(feats: int, precompute: int | None):
    from sam3.model.position_encoding import PositionEmbeddingSine

    return PositionEmbeddingSine(
        num_pos_feats=feats,
        normalize=True,
        scale=None,
        temperature=10000,
        precompute_resolution=precompute,
    )


def _tiny_detector(spec: TinySpec, bpe_path: str):
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.sam3_image import Sam3ImageOnVideoMultiGPU
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    res, feat = spec.resolution, spec.feat_size
    vit = ViT(
        img_size=res,
        pretrain_img_size=res,
        patch_size=PATCH_SIZE,
        embed_dim=spec.vit_dim,
        depth=spec.vit_depth,
        num_heads=spec.vit_heads,
        mlp_ratio=4.0,
        norm_layer="LayerNorm",
        drop_path_rate=0.0,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=tuple(range(spec.vit_depth)),
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=feat,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
    )
    neck = Sam3DualViTDetNeck(
        position_encoding=_position_encoding(D_MODEL, res),
        d_model=D_MODEL,
        scale_factors=[4.0, 2.0, 1.0, 0.5],
        trunk=vit,
        add_sam2_neck=True,
    )
    text = VETextEncoder(
        tokenizer=SimpleTokenizer(bpe_path=bpe_path),
        d_model=D_MODEL,
        width=spec.text_width,
        heads=spec.text_heads,
        layers=spec.text_layers,
    )
    backbone = SAM3VLBackbone(scalp=1, visual=neck, text=text)

    def encoder_layer(batch_first: bool, **pos_flags) -> TransformerEncoderLayer:
        return TransformerEncoderLayer(
            activation="relu",
            d_model=D_MODEL,
            dim_feedforward=spec.ffn_dim,
            dropout=0.1,
            pre_norm=True,
            self_attention=_attention(spec.heads, batch_first),
            cross_attention=_attention(spec.heads, batch_first),
            **pos_flags,
        )

    fusion = TransformerEncoderFusion(
        layer=encoder_layer(
            True,
            pos_enc_at_attn=True,
            pos_enc_at_cross_attn_keys=False,
            pos_enc_at_cross_attn_queries=False,
        ),
        num_layers=spec.fusion_layers,
        d_model=D_MODEL,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=False,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )
    decoder = TransformerDecoder(
        layer=TransformerDecoderLayer(
            activation="relu",
            d_model=D_MODEL,
            dim_feedforward=spec.ffn_dim,
            dropout=0.1,
            cross_attention=_attention(spec.heads, False),
            n_heads=spec.heads,
            use_text_cross_attention=True,
        ),
        num_layers=spec.decoder_layers,
        num_queries=spec.queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=D_MODEL,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=res,
        stride=PATCH_SIZE,
        use_act_checkpoint=False,
        presence_token=True,
    )
    seg_head = UniversalSegmentationHead(
        hidden_dim=D_MODEL,
        upsampling_stages=3,
        aux_masks=False,
        presence_head=False,
        dot_product_scorer=None,
        act_ckpt=False,
        cross_attend_prompt=_attention(spec.heads, False, dropout=0.0),
        pixel_decoder=PixelDecoder(
            num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=D_MODEL
        ),
    )
    geometry = SequenceGeometryEncoder(
        pos_enc=_position_encoding(D_MODEL, None),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=D_MODEL,
        num_layers=spec.geometry_layers,
        layer=encoder_layer(
            False,
            pos_enc_at_attn=False,
            pos_enc_at_cross_attn_queries=False,
            pos_enc_at_cross_attn_keys=True,
        ),
        use_act_ckpt=False,
        add_cls=True,
        add_post_encode_proj=True,
    )
    scoring = DotProductScoring(
        d_model=D_MODEL,
        d_proj=D_MODEL,
        prompt_mlp=MLP(
            input_dim=D_MODEL,
            hidden_dim=spec.ffn_dim,
            output_dim=D_MODEL,
            num_layers=2,
            dropout=0.1,
            residual=True,
            out_norm=nn.LayerNorm(D_MODEL),
        ),
    )
    return Sam3ImageOnVideoMultiGPU(
        num_feature_levels=1,
        backbone=backbone,
        transformer=TransformerWrapper(encoder=fusion, decoder=decoder, d_model=D_MODEL),
        segmentation_head=seg_head,
        semantic_segmentation_head=None,
        input_geometry_encoder=geometry,
        use_early_fusion=True,
        use_dot_prod_scoring=True,
        dot_prod_scoring=scoring,
        supervise_joint_box_scores=True,
    )


def _tiny_tracker(spec: TinySpec):
    from sam3.model.decoder import TransformerDecoderLayerv2, TransformerEncoderCrossAttention
    from sam3.model.memory import CXBlock, SimpleFuser, SimpleMaskDownSampler, SimpleMaskEncoder
    from sam3.model.model_misc import TransformerWrapper
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor
    from sam3.sam.transformer import RoPEAttention

    res, feat = spec.resolution, spec.feat_size
    mask_size = feat * 16  # the tracker's input mask size: 4x its 4x-upsampled low-res masks
    maskmem = SimpleMaskEncoder(
        out_dim=64,
        position_encoding=_position_encoding(64, res),
        mask_downsampler=SimpleMaskDownSampler(
            kernel_size=3, stride=2, padding=1, interpol_size=[mask_size, mask_size]
        ),
        fuser=SimpleFuser(
            layer=CXBlock(
                dim=D_MODEL,
                kernel_size=7,
                padding=3,
                layer_scale_init_value=1.0e-06,
                use_dwconv=True,
            ),
            num_layers=2,
        ),
    )

    def rope(**extra) -> RoPEAttention:
        return RoPEAttention(
            embedding_dim=D_MODEL,
            num_heads=1,
            downsample_rate=1,
            dropout=0.1,
            rope_theta=10000.0,
            feat_sizes=[feat, feat],
            use_fa3=False,
            use_rope_real=False,
            **extra,
        )

    layer = TransformerDecoderLayerv2(
        cross_attention_first=False,
        activation="relu",
        dim_feedforward=spec.ffn_dim,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=rope(),
        d_model=D_MODEL,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=rope(kv_in_dim=64, rope_k_repeat=True),
    )
    transformer = TransformerWrapper(
        encoder=TransformerEncoderCrossAttention(
            remove_cross_attention_layers=[],
            batch_first=True,
            d_model=D_MODEL,
            frozen=False,
            pos_enc_at_input=True,
            layer=layer,
            num_layers=spec.tracker_layers,
            use_act_checkpoint=False,
        ),
        decoder=None,
        d_model=D_MODEL,
    )
    # Same tracker flags as Meta's build_tracker(apply_temporal_disambiguation=True).
    return Sam3TrackerPredictor(
        image_size=res,
        num_maskmem=7,
        backbone=None,
        backbone_stride=PATCH_SIZE,
        transformer=transformer,
        maskmem_backbone=maskmem,
        multimask_output_in_sam=True,
        forward_backbone_per_frame_for_eval=True,
        trim_past_non_cond_mem_for_eval=False,
        multimask_output_for_tracking=True,
        multimask_min_pt_num=0,
        multimask_max_pt_num=1,
        always_start_from_first_ann_frame=False,
        non_overlap_masks_for_mem_enc=False,
        non_overlap_masks_for_output=False,
        max_cond_frames_in_attn=4,
        offload_output_to_cpu_for_eval=False,
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        },
        clear_non_cond_mem_around_input=True,
        fill_hole_area=0,
        use_memory_selection=True,
        mf_threshold=spec.mf_threshold,
    )


def _init_uninitialized_text_params(detector) -> None:
    """`sam3/model/text_encoder_ve.py` creates `positional_embedding` and `text_projection` with
    `torch.empty` and leaves them to the checkpoint; random builds must initialise them or they hold
    whatever the allocator returned (NaN included). CLIP's initialisation is used."""
    encoder = detector.backbone.language_backbone.encoder
    nn.init.normal_(encoder.positional_embedding, std=0.01)
    if isinstance(encoder.text_projection, nn.Parameter):
        nn.init.normal_(encoder.text_projection, std=encoder.width**-0.5)


def build_tiny_video_model(bpe_path: str, spec: TinySpec = TINY):
    """The tiny preset: sam3's classes, small sizes, deterministic random weights (CPU tensors)."""
    from sam3.model.sam3_video_inference import Sam3VideoInferenceWithInstanceInteractivity

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        detector = _tiny_detector(spec, bpe_path)
        _init_uninitialized_text_params(detector)
        with torch.no_grad():
            detector.dot_prod_scoring.hs_proj.weight.mul_(spec.score_proj_gain)
            detector.transformer.decoder.presence_token_head.layers[-1].bias.fill_(
                spec.presence_bias
            )
        tracker = _tiny_tracker(spec)
        # Meta's heuristics for apply_temporal_disambiguation=True, at the tiny resolution.
        model = Sam3VideoInferenceWithInstanceInteractivity(
            detector=detector,
            tracker=tracker,
            score_threshold_detection=0.5,
            assoc_iou_thresh=0.1,
            det_nms_thresh=0.1,
            new_det_thresh=spec.new_det_thresh,
            max_num_objects=spec.max_num_objects,
            hotstart_delay=spec.hotstart_delay,
            hotstart_unmatch_thresh=spec.hotstart_thresh,
            hotstart_dup_thresh=spec.hotstart_thresh,
            suppress_unmatched_only_within_hotstart=True,
            min_trk_keep_alive=-1,
            max_trk_keep_alive=30,
            init_trk_keep_alive=30,
            suppress_overlapping_based_on_recent_occlusion_threshold=0.7,
            suppress_det_close_to_boundary=False,
            fill_hole_area=16,
            recondition_every_nth_frame=16,
            masklet_confirmation_enable=False,
            decrease_trk_keep_alive_for_empty_masklets=False,
            image_size=spec.resolution,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            compile_model=False,
        )
    return model


@contextlib.contextmanager
def build_context(device: torch.device):
    """Where a build runs: on the CPU, under the compat device rewriting; on "cuda:N", with N
    current, because sam3 precomputes caches on the bare "cuda" device at construction."""
    with compat.quiet_sam3_warnings():
        if device.type == "cpu":
            with compat.CudaToCpuMode():
                yield
        elif device.type == "cuda":
            with torch.cuda.device(device):
                yield
        else:
            yield


def build_video_model(
    *,
    preset: str,
    device: torch.device,
    bpe_path: str,
    checkpoint_path: str | None,
    compile: bool = False,
    tiny_spec: TinySpec = TINY,
    max_objects: int | None = None,
):
    """Builds the preset's model on `device`, in eval mode, gradients off. `tiny_spec` sizes the
    tiny preset (benchmarks compare sizes with it). `max_objects` sets the object limit (default:
    `DEFAULT_MAX_OBJECTS` for the real model, the tiny spec's own for the tiny preset)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    with build_context(device):
        if preset == PRESET_TINY:
            model = build_tiny_video_model(bpe_path, tiny_spec)
            model = model.to(device)
        else:
            from sam3.model_builder import build_sam3_video_model

            assert checkpoint_path is not None
            model = build_sam3_video_model(
                checkpoint_path=checkpoint_path,
                load_from_HF=False,
                bpe_path=bpe_path,
                device=device,
                compile=compile,
            )
    if max_objects is None and preset == PRESET_REAL:
        max_objects = DEFAULT_MAX_OBJECTS
    if max_objects is not None:
        set_object_limit(model, max_objects)
    _leave_tracker_autocast(model.tracker)
    model.eval()
    model.requires_grad_(False)
    return model


def set_object_limit(model, limit: int) -> None:
    """What `Sam3VideoBase.__init__` (sam3/model/sam3_video_base.py) derives from its
    `max_num_objects` argument, which Meta's builder leaves at "no limit"."""
    model.max_num_objects = int(limit)
    model.num_obj_for_compile = math.ceil(int(limit) / max(1, int(model.world_size)))


def _leave_tracker_autocast(tracker) -> None:
    """`Sam3TrackerPredictor.__init__` (sam3/model/sam3_tracking_predictor.py) enters a CUDA bf16
    autocast context "for the entire model process" and never leaves it: it stays on whichever
    thread built the model. The engine enters autocast around each call instead, so it holds on the
    executor thread and nowhere else; the constructor's context is left here, on the building
    thread, balancing its nesting count."""
    context = getattr(tracker, "bf16_context", None)
    if context is not None:
        context.__exit__(None, None, None)
