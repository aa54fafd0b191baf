"""SAM2 / SAM2.1 Hiera backbones (tiny, small, base+, large) through the `sam2` package.

Checkpoints come from a local path only (nothing is downloaded). Only the image encoder, the prompt
encoder and the mask decoder are kept; the video-memory modules are dropped after a strict load.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .base import Backbone, DecoderOutput, FeaturePyramid
from .weights import WeightsError, load_state_dict, sha256_file

_NAME = re.compile(r"^(sam2|sam2\.1)_hiera_(t|s|b\+|l)$")


def sam2_config_name(name: str) -> str:
    """'sam2.1_hiera_t' -> the Hydra config name 'configs/sam2.1/sam2.1_hiera_t.yaml'."""
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"unknown SAM2 backbone {name!r}: expected sam2[.1]_hiera_{{t,s,b+,l}}")
    return f"configs/{match.group(1)}/{name}.yaml"


class Sam2Backbone(Backbone):
    def __init__(self, name: str, checkpoint: str | Path | None = None, *, pretrained: bool = True,
                 input_size: int = 1024, seed: int = 0):
        super().__init__()
        if input_size not in (512, 1024):
            raise ValueError(f"SAM2 input_size must be 512 or 1024, got {input_size}")
        if pretrained and checkpoint is None:
            raise WeightsError(
                f"{name}: SAM2 weights are not bundled; pass checkpoint=<local path to {name}.pt> "
                "(or pretrained=False for random weights in tests)"
            )
        from sam2.build_sam import build_sam2  # importing sam2 initialises its Hydra config module

        self.name = name
        self.input_size = input_size
        torch.manual_seed(seed)
        # No stability fallback: the PPN is trained against the single-mask output directly.
        full = build_sam2(sam2_config_name(name), ckpt_path=None, device="cpu", mode="eval",
                          hydra_overrides_extra=[f"++model.image_size={input_size}"],
                          apply_postprocessing=False)
        if pretrained:
            digest = sha256_file(checkpoint)
            full.load_state_dict(load_state_dict(checkpoint, expected_sha256=digest), strict=True)
            self._fingerprint = f"{name}@{input_size}:{digest}"
        else:
            self._fingerprint = f"{name}@{input_size}:random-seed{seed}"
        self.image_encoder = full.image_encoder
        self.prompt_encoder = full.sam_prompt_encoder
        self.mask_decoder = full.sam_mask_decoder
        self.no_mem_embed = full.no_mem_embed
        self.add_no_mem_embed = bool(full.directly_add_no_mem_embed)
        d = full.hidden_dim
        # PPN levels, coarse to fine: the 1/16 image embedding and the 1/8 and 1/4 FPN maps.
        self.level_channels = (d, d, d)
        self.freeze()

    def encode(self, pixels: torch.Tensor) -> FeaturePyramid:
        out = self.image_encoder(pixels)
        fpn = out["backbone_fpn"]  # fine to coarse: 1/4, 1/8, 1/16 (all hidden_dim channels)
        embedding = fpn[-1]
        if self.add_no_mem_embed:
            # A single image has no memory; SAM2 marks that by adding a learned embedding.
            embedding = embedding + self.no_mem_embed.view(1, -1, 1, 1)
        high_res = [self.mask_decoder.conv_s0(fpn[0]), self.mask_decoder.conv_s1(fpn[1])]
        return FeaturePyramid(image_embedding=embedding, levels=[embedding, fpn[1], fpn[0]], high_res=high_res)

    def decode(self, features: FeaturePyramid, sparse: torch.Tensor, dense: torch.Tensor,
               multimask: bool = False) -> DecoderOutput:
        masks, iou, _, obj = self.mask_decoder(
            image_embeddings=features.image_embedding, image_pe=self.dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask, repeat_image=False, high_res_features=features.high_res,
        )
        obj_logit = obj[:, 0] if self.has_object_score else None
        return DecoderOutput(masks, iou[:, 0] if not multimask else iou, obj_logit)
