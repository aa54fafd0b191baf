"""Prompt Predictor Network: learns the prompts a reader would give the frozen SAM decoder.

Learnable query tokens (per class) cross-attend, block by block, to the backbone's feature pyramid
from coarse to fine (two-way: the image tokens also attend back to the queries). Three heads turn the
queries into prompts the frozen prompt encoder understands:
  - a box head on the first two tokens (normalised corners -> the prompt encoder's box embedding),
  - a mask-prompt head (low-resolution logits -> the prompt encoder's dense mask embedding),
  - the remaining tokens, passed to the decoder as extra sparse prompt embeddings.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import Backbone, FeaturePyramid
from .backbones.token_decoder import multi_head_attention, nchw_to_tokens, stack_to_masks
from .backbones.tinyvit import LayerNorm2d


@dataclass(frozen=True)
class PPNConfig:
    num_classes: int = 1
    num_queries: int = 8  # per class: 2 box corners + (num_queries - 2) extra sparse prompts
    num_blocks: int = 3  # blocks cycle over the pyramid levels, coarse to fine
    num_heads: int = 8
    attention_downsample: int = 2  # attention works at dim / this (keeps the PPN cheap beside the encoder)
    mlp_dim: int = 1024
    max_level_side: int = 32  # levels larger than this are average-pooled before attention
    mask_head_channels: int = 32
    query_init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if self.num_queries < 2:
            raise ValueError("num_queries must be >= 2 (two tokens predict the box corners)")
        if self.num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PPNOutput:
    """Rows are (image, class) pairs, image-major: row = image_index * num_classes + class_index."""

    box_norm: torch.Tensor  # (N, 4) x0, y0, x1, y1 in [0, 1] of the model input side
    mask_logits: torch.Tensor  # (N, 1, 4h, 4w) the interim mask (also the dense prompt)
    extra_tokens: torch.Tensor  # (N, K, D) extra sparse prompts


def sine_position_2d(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """DETR-style 2-D sine encoding, (h*w, dim): half the channels encode y, half x."""
    quarter = dim // 4
    freqs = 10000 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    ey = torch.cat([torch.sin(ys[:, None] * freqs), torch.cos(ys[:, None] * freqs)], dim=1)  # (h, dim/2)
    ex = torch.cat([torch.sin(xs[:, None] * freqs), torch.cos(xs[:, None] * freqs)], dim=1)  # (w, dim/2)
    return torch.cat([ey[:, None, :].expand(h, w, -1), ex[None, :, :].expand(h, w, -1)], dim=2).reshape(h * w, dim)


def sine_position_1d(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    half = dim // 2
    freqs = 10000 ** (-torch.arange(half, device=device, dtype=torch.float32) / half)
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None] * freqs
    return torch.cat([torch.sin(pos), torch.cos(pos)], dim=1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        if inner % heads:
            raise ValueError(f"attention width {inner} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.out = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.out(multi_head_attention(self.q(q), self.k(k), self.v(v), self.heads))


class TwoWayBlock(nn.Module):
    """Queries: self-attention, cross-attention to the image, MLP; then image tokens attend to queries."""

    def __init__(self, dim: int, heads: int, downsample: int, mlp_dim: int, update_image: bool):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.to_image = Attention(dim, heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.update_image = update_image
        if update_image:
            self.from_image = Attention(dim, heads, downsample)
            self.norm4 = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, query_pe: torch.Tensor, image: torch.Tensor,
                image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = queries + query_pe
        queries = self.norm1(queries + self.self_attn(q, q, queries))
        keys = image + image_pe
        queries = self.norm2(queries + self.to_image(queries + query_pe, keys, image))
        queries = self.norm3(queries + self.mlp(queries))
        if self.update_image:
            image = self.norm4(image + self.from_image(keys, queries + query_pe, queries))
        return queries, image


class PromptPredictor(nn.Module):
    def __init__(self, cfg: PPNConfig, level_channels: tuple[int, ...], dim: int = 256):
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.queries = nn.Parameter(torch.randn(cfg.num_classes, cfg.num_queries, dim) * cfg.query_init_std)
        self.register_buffer("query_pe", sine_position_1d(cfg.num_queries, dim), persistent=False)
        # 1x1 convolutions bring every level to the decoder width (FPN-style lateral projections).
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in level_channels)
        n_levels = len(level_channels)
        self.block_level = [i % n_levels for i in range(cfg.num_blocks)]
        last_use = {lvl: i for i, lvl in enumerate(self.block_level)}
        self.blocks = nn.ModuleList(
            # An image update is only worth its cost where a later block or the mask head reads it.
            TwoWayBlock(dim, cfg.num_heads, cfg.attention_downsample, cfg.mlp_dim,
                        update_image=(lvl == 0 or last_use[lvl] != i))
            for i, lvl in enumerate(self.block_level)
        )
        self.final_norm = nn.LayerNorm(dim)
        self.box_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 2))
        mc = cfg.mask_head_channels
        self.mask_features = nn.Sequential(
            nn.Conv2d(dim, 2 * mc, 1), LayerNorm2d(2 * mc), nn.GELU(),
            nn.ConvTranspose2d(2 * mc, mc, 2, stride=2), LayerNorm2d(mc), nn.GELU(),
            nn.ConvTranspose2d(mc, mc, 2, stride=2),
        )
        self.mask_hyper = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, mc))
        self.mask_bias = nn.Parameter(torch.zeros(1))
        self._pe_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def _image_pe(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._pe_cache:
            self._pe_cache[key] = sine_position_2d(h, w, self.dim, device)
        return self._pe_cache[key]

    def pool_level(self, level: torch.Tensor) -> torch.Tensor:
        """Average-pool a level to at most max_level_side a side (a no-op on a pooled level)."""
        side = self.cfg.max_level_side
        if max(level.shape[-2:]) <= side:
            return level
        return F.adaptive_avg_pool2d(level, (min(side, level.shape[-2]), min(side, level.shape[-1])))

    def pool_levels(self, features: FeaturePyramid) -> FeaturePyramid:
        """The parameter-free part of reading the pyramid, done once: a training cache stores its
        result, which is smaller and saves the pooling on every step (forward then skips it)."""
        return FeaturePyramid(features.image_embedding, [self.pool_level(lvl) for lvl in features.levels],
                              features.high_res, features.image)

    def _level_tokens(self, index: int, level: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.pool_level(level)
        conv = self.lateral[index]  # a 1x1 convolution, run as a linear map on tokens (contiguous output)
        tokens = F.linear(nchw_to_tokens(x).flatten(1, 2), conv.weight[:, :, 0, 0], conv.bias)
        return tokens, (x.shape[-2], x.shape[-1])

    def forward(self, features: FeaturePyramid) -> PPNOutput:
        """Queries of every class for every image; features has one row per image."""
        b = features.batch_size
        c = self.cfg.num_classes
        rows = torch.arange(b, device=features.image_embedding.device).repeat_interleave(c)
        feats = features.select(rows) if c > 1 else features
        n = b * c
        queries = self.queries.unsqueeze(0).expand(b, -1, -1, -1).reshape(n, self.cfg.num_queries, self.dim)
        query_pe = self.query_pe.unsqueeze(0)
        tokens: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}
        for block, lvl in zip(self.blocks, self.block_level):
            if lvl not in tokens:
                tokens[lvl] = self._level_tokens(lvl, feats.levels[lvl])
            image, hw = tokens[lvl]
            queries, image = block(queries, query_pe, image, self._image_pe(*hw, image.device).unsqueeze(0))
            tokens[lvl] = (image, hw)
        queries = self.final_norm(queries)

        corners = torch.sigmoid(self.box_head(queries[:, :2]))  # (N, 2, 2): (x, y) of each corner
        top_left, bottom_right = torch.minimum(corners[:, 0], corners[:, 1]), torch.maximum(corners[:, 0], corners[:, 1])
        box_norm = torch.cat([top_left, bottom_right], dim=1)

        # Mask prompt: the frozen embedding plus the PPN-updated coarse tokens, upsampled 4x, dotted
        # with a class vector made from the queries (a hypernetwork, as SAM's own decoder does).
        # The head runs in channels-last token layout (see backbones.token_decoder: same weights, same
        # result, no layout changes on the large upsampled tensors).
        emb = feats.image_embedding
        coarse, (ch, cw) = tokens[0]
        update = coarse.reshape(n, ch, cw, self.dim)
        if (ch, cw) != tuple(emb.shape[-2:]):
            update = F.interpolate(update.permute(0, 3, 1, 2), size=emb.shape[-2:], mode="bilinear",
                                   align_corners=False).permute(0, 2, 3, 1)
        weights = self.mask_hyper(queries.mean(dim=1))  # (N, mc)
        mask_logits = stack_to_masks(self.mask_features, nchw_to_tokens(emb) + update, weights[:, None])
        mask_logits = mask_logits + self.mask_bias
        return PPNOutput(box_norm=box_norm, mask_logits=mask_logits, extra_tokens=queries[:, 2:])


def build_ppn(cfg: PPNConfig, backbone: Backbone) -> PromptPredictor:
    return PromptPredictor(cfg, backbone.level_channels, backbone.embed_dim)
