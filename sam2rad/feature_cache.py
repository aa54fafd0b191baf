"""Encoded features of training images, computed once: the backbone is frozen, so an (image,
augmentation) pair always encodes to the same pyramid. Memory or disk (safetensors), keyed by image
hash, augmentation tag and backbone fingerprint.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backbones.base import FeaturePyramid, ImageGeometry
from .batched_decode import cat_pyramids  # noqa: F401 - training batches cached examples with it
from .model import Sam2Rad, grey_input


@dataclass
class CachedExample:
    features: FeaturePyramid  # one row, on CPU
    geometry: ImageGeometry
    target: np.ndarray  # (C, S, S) bool masks in model space at the decoder's output side
    source_mask: np.ndarray  # (C, H, W) bool at source resolution (for validation Dice)
    # (C, S, S) float16: the fraction of each model pixel the source mask covers (losses.py: soft targets)
    soft_target: np.ndarray | None = None


class FeatureCache:
    """Encoded features keyed by (image, augmentation, backbone) hash, in memory and/or on disk."""

    def __init__(self, model: Sam2Rad, kind: str = "memory", folder: str | Path | None = None):
        self.model, self.kind = model, kind
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.memory: dict[str, FeaturePyramid] = {}
        self.hits = self.misses = 0

    def key(self, image: np.ndarray, tag: str) -> str:
        h = hashlib.sha256(np.ascontiguousarray(image).tobytes())
        # Levels are stored pooled (PromptPredictor.pool_levels), so the pooled side is part of the key.
        pooled = self.model.ppn.cfg.max_level_side
        h.update(f"{image.shape}|{tag}|{self.model.backbone.fingerprint}|pool{pooled}|img".encode())
        return h.hexdigest()[:32]

    @torch.no_grad()
    def encode(self, image: np.ndarray, tag: str) -> tuple[FeaturePyramid, ImageGeometry]:
        bb = self.model.backbone
        geom = bb.geometry(*image.shape[:2])
        k = self.key(image, tag)
        if k in self.memory:
            self.hits += 1
            return self.memory[k], geom
        if self.kind == "disk" and self.folder and (self.folder / f"{k}.safetensors").is_file():
            from safetensors.torch import load_file

            self.hits += 1
            return _pyramid_from_dict(load_file(str(self.folder / f"{k}.safetensors"))), geom
        self.misses += 1
        pixels, _ = bb.preprocess([image])
        feats = bb.encode(pixels)
        feats.image = grey_input(pixels)
        feats = self.model.ppn.pool_levels(feats).detach_to("cpu")
        if self.kind == "memory":
            self.memory[k] = feats
        elif self.kind == "disk" and self.folder:
            from safetensors.torch import save_file

            save_file(_pyramid_to_dict(feats), str(self.folder / f"{k}.safetensors"))
        return feats, geom


def _pyramid_to_dict(p: FeaturePyramid) -> dict[str, torch.Tensor]:
    out = {"embedding": p.image_embedding.contiguous()}
    # Backbones hand the embedding on as the coarsest level too; safetensors refuses shared storage.
    out.update({f"level{i}": (t.clone() if t.data_ptr() == p.image_embedding.data_ptr() else t.contiguous())
                for i, t in enumerate(p.levels)})
    if p.high_res is not None:
        out.update({f"high{i}": t.contiguous() for i, t in enumerate(p.high_res)})
    if p.image is not None:
        out["image"] = p.image.contiguous()
    return out


def _pyramid_from_dict(d: dict[str, torch.Tensor]) -> FeaturePyramid:
    levels = [d[f"level{i}"] for i in range(sum(k.startswith("level") for k in d))]
    highs = [d[f"high{i}"] for i in range(sum(k.startswith("high") for k in d))] or None
    return FeaturePyramid(d["embedding"], levels, highs, d.get("image"))
