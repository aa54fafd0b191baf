"""The one interface every frozen backbone offers to the Prompt Predictor Network and Sam2Rad."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageGeometry:
    """How a source image was placed in the square model input (resize longest side, pad bottom/right)."""

    height: int
    width: int
    scale: float  # model pixels per source pixel

    @property
    def resized_hw(self) -> tuple[int, int]:
        return int(round(self.height * self.scale)), int(round(self.width * self.scale))

    @property
    def row_scale(self) -> float:
        """Model-input rows per source row, as the rounded resize has it (not exactly `scale`)."""
        return self.resized_hw[0] / self.height

    def to_input(self, coords_px: np.ndarray) -> np.ndarray:
        """Source pixel indices (x, y) -> model-input pixel indices, pixel centres onto pixel centres,
        with the per-axis factors of the rounded resize (what a mask's way back to the source inverts)."""
        rh, rw = self.resized_hw
        factors = np.array([rw / self.width, rh / self.height])
        return (np.asarray(coords_px, dtype=np.float64) + 0.5) * factors - 0.5


@dataclass
class FeaturePyramid:
    """What an encoder hands on, for a batch of B images.

    image_embedding: (B, D, h, w) the mask decoder's image input (D = decoder width, 256).
    levels: the PPN's keys/values, coarse to fine, each (B, C_i, h_i, w_i).
    high_res: SAM2 only: the decoder's extra high-resolution features (s0, s1), else None.
    image: (B, 1, S, S) the grey model input itself, for the mask refiner (None when not kept).
    """

    image_embedding: torch.Tensor
    levels: list[torch.Tensor]
    high_res: list[torch.Tensor] | None = None
    image: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.image_embedding.shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> "FeaturePyramid":
        """Rows of the batch, e.g. to repeat an image once per class."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.image_embedding.device)
        return FeaturePyramid(
            self.image_embedding.index_select(0, idx),
            [lvl.index_select(0, idx) for lvl in self.levels],
            None if self.high_res is None else [h.index_select(0, idx) for h in self.high_res],
            None if self.image is None else self.image.index_select(0, idx),
        )

    def detach_to(self, device: torch.device | str = "cpu") -> "FeaturePyramid":
        return FeaturePyramid(
            self.image_embedding.detach().to(device),
            [lvl.detach().to(device) for lvl in self.levels],
            None if self.high_res is None else [h.detach().to(device) for h in self.high_res],
            None if self.image is None else self.image.detach().to(device),
        )


@dataclass
class DecoderOutput:
    low_res_logits: torch.Tensor  # (N, 1, 4h, 4w) mask logits at 4x the embedding size
    iou: torch.Tensor  # (N,) the decoder's own IoU estimate
    object_logit: torch.Tensor | None  # (N,) SAM2 object-presence logit, None where absent


class Backbone(nn.Module, ABC):
    """A frozen SAM-family model split into encoder, prompt encoder and mask decoder."""

    name: str
    input_size: int
    level_channels: tuple[int, ...]
    embed_dim: int = 256
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    prompt_encoder: nn.Module
    mask_decoder: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._fingerprint = "unset"

    # --- identity -------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """'<name>:<sha256 of the weights file>' (or ':random-seed<N>' for untrained weights)."""
        return self._fingerprint

    def freeze(self) -> "Backbone":
        """Frozen means no gradients and eval mode, always (batch norm statistics never move)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Backbone":  # noqa: ARG002 - a frozen backbone stays in eval
        return super().train(False)

    @property
    def embedding_hw(self) -> tuple[int, int]:
        return tuple(self.prompt_encoder.image_embedding_size)  # type: ignore[return-value]

    @property
    def has_object_score(self) -> bool:
        return bool(getattr(self.mask_decoder, "pred_obj_scores", False))

    # --- preprocessing --------------------------------------------------------------------------
    def geometry(self, height: int, width: int) -> ImageGeometry:
        return ImageGeometry(height, width, self.input_size / max(height, width))

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[ImageGeometry]]:
        """Grey/RGB uint8 or float images -> normalised (B, 3, S, S) tensor plus their geometries.

        Each image is scaled to [0, 1] by its own range (ultrasound gain varies between machines),
        resized so its longest side is the input size, normalised, and padded bottom/right.
        Inputs are assumed validated by the caller (see sam2rad.model.validate_image).
        """
        device = self.prompt_encoder.no_mask_embed.weight.device
        mean = torch.tensor(self.pixel_mean, device=device).view(3, 1, 1)
        std = torch.tensor(self.pixel_std, device=device).view(3, 1, 1)
        batch = torch.zeros(len(images), 3, self.input_size, self.input_size, device=device)
        geoms = []
        for i, image in enumerate(images):
            t = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32, device=device)
            t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
            t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
            lo, hi = t.amin(), t.amax()
            t = (t - lo) / torch.clamp(hi - lo, min=1e-8)
            geom = self.geometry(t.shape[1], t.shape[2])
            rh, rw = geom.resized_hw
            t = F.interpolate(t[None], size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)[0]
            batch[i, :, :rh, :rw] = (t - mean) / std
            geoms.append(geom)
        return batch, geoms

    def postprocess(self, low_res_logits: torch.Tensor, geom: ImageGeometry) -> torch.Tensor:
        """(N, 1, h, w) decoder logits -> (N, H, W) logits on the source grid (crop padding, resize)."""
        full = F.interpolate(low_res_logits, size=(self.input_size, self.input_size), mode="bilinear",
                             align_corners=False)
        rh, rw = geom.resized_hw
        full = full[..., :rh, :rw]
        return F.interpolate(full, size=(geom.height, geom.width), mode="bilinear", align_corners=False)[:, 0]

    # --- the three frozen parts -----------------------------------------------------------------
    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> FeaturePyramid:
        """(B, 3, S, S) normalised input -> feature pyramid."""

    def encode_prompts(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen prompt encoder. Coordinates are in model-input pixels (x, y).

        points: (N, P, 2) coords and (N, P) labels (1 fg, 0 bg, -1 padding); boxes: (N, 4) xyxy;
        mask_logits: (N, 1, 4h, 4w). Returns sparse (N, K, D) and dense (N, D, h, w) embeddings.
        """
        pe = self.prompt_encoder
        if points is None and boxes is None and mask_logits is None:
            n = batch_size or 1
            sparse = torch.zeros(n, 0, self.embed_dim, device=pe.no_mask_embed.weight.device)
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, *self.embedding_hw)
            return sparse, dense
        return pe(points=points, boxes=boxes, masks=mask_logits)

    def dense_pe(self) -> torch.Tensor:
        return self.prompt_encoder.get_dense_pe()

    @abstractmethod
    def decode(self, features: FeaturePyramid, sparse: torch.Tensor, dense: torch.Tensor,
               multimask: bool = False) -> DecoderOutput:
        """Frozen mask decoder; `features` already has one row per prompt set."""
