"""An image's encoding as the model keeps it between calls, and the key it is kept under.

Why a module of its own: the model's encoding cache is filled by `Sam2Rad.encode` and, for images
the training cache already encoded, by `Sam2Rad.adopt_encoding` (the Trainer's confidence reference).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones.base import FeaturePyramid, ImageGeometry


def image_key(image: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16)
    digest.update(str((image.shape, image.dtype.str)).encode())
    return digest.hexdigest()


@dataclass
class EncodedImage:
    features: FeaturePyramid  # one row
    geometry: ImageGeometry
    auto_boxes: torch.Tensor | None = None  # (C, 4) the second-pass boxes, computed on first use
    auto_logits: torch.Tensor | None = None  # (C, 1, s, s) auto's final logits: what a click edits
    # auto_logits with the parts auto dropped, per (threshold, part fraction): per class
    auto_bases: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)
    mirrored: FeaturePyramid | None = None  # of the mirrored input, where flip_test_time is on
