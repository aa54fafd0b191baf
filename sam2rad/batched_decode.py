"""Decoded rows -> one Prediction per image, for a whole batch at once.

A row is one (image, class) pair. `auto` mode decodes every row of a batch in one call through the
PPN, the frozen decoder and the refiner (`Sam2Rad.forward`, the training path); `semi` and `manual`
decode one image's rows, whose prompts differ. Both end here: score, threshold, crop and resize back
to each source image. Rows of images with the same geometry (the frames of one cine loop) are resized
in one call and copied off the device once: on a GPU every copy waits for the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .backbones.base import Backbone, FeaturePyramid, ImageGeometry
from .confidence import mask_confidence
from .mask_parts import auto_base


@dataclass
class Prediction:
    """One image's result; arrays are per class, at the source resolution."""

    masks: np.ndarray  # (C, H, W) bool
    boxes: np.ndarray  # (C, 4) the box prompt used (predicted or the reader's), source pixels
    scores: np.ndarray  # (C,) confidence in [0, 1] (sam2rad/confidence.py)
    mode: str
    class_names: tuple[str, ...] = field(default=("bone",))


@dataclass
class DecodedRows:
    """Decoder results still on the model's device; row r belongs to image_index[r], class_index[r]."""

    image_index: list[int]
    class_index: list[int]
    logits: torch.Tensor  # (N, 1, s, s) final mask logits, any side s
    object_logit: torch.Tensor | None  # (N,) where the backbone predicts one
    boxes_px: torch.Tensor  # (N, 4) the box prompt used, model pixels; NaN where there was none


def cat_pyramids(items: Sequence[FeaturePyramid], device: torch.device | str = "cpu") -> FeaturePyramid:
    """One batch from one-row pyramids (cached encodings, training examples)."""
    def join(tensors: list[torch.Tensor]) -> torch.Tensor:
        # One image is used as it is: a CPU copy of tens of MB (fresh pages) costs more than it seems.
        return (tensors[0] if len(tensors) == 1 else torch.cat(tensors)).to(device)

    return FeaturePyramid(
        join([p.image_embedding for p in items]),
        [join([p.levels[i] for p in items]) for i in range(len(items[0].levels))],
        None if items[0].high_res is None else
        [join([p.high_res[i] for p in items]) for i in range(len(items[0].high_res))],
        None if items[0].image is None else join([p.image for p in items]),
    )


def predictions_from_rows(rows: DecodedRows, geometries: Sequence[ImageGeometry], backbone: Backbone,
                          mode: str, class_names: tuple[str, ...], threshold: float = 0.0,
                          min_part_fraction: float | None = None) -> list[Prediction]:
    """One Prediction per geometry (image); classes without a row stay empty (manual mode).
    min_part_fraction: drop mask parts smaller than this fraction of the largest, and far weaker ones
    (sam2rad/mask_parts.py)."""
    c = len(class_names)
    conf = mask_confidence(rows.logits, rows.object_logit)  # not the IoU head: sam2rad/confidence.py
    present = torch.ones_like(conf)
    if rows.object_logit is not None:
        present = (rows.object_logit >= 0).float()  # SAM2 says nothing is there: no mask
    # Scores, presence and boxes leave the device in one copy.
    small = torch.cat([conf[:, None], present[:, None], rows.boxes_px.float()], dim=1).cpu().numpy()
    preds = [Prediction(masks=np.zeros((c, g.height, g.width), dtype=bool),
                        boxes=np.full((c, 4), np.nan, dtype=np.float32), scores=np.zeros(c, dtype=np.float32),
                        mode=mode, class_names=class_names) for g in geometries]
    by_geometry: dict[ImageGeometry, list[int]] = {}
    for r, i in enumerate(rows.image_index):
        by_geometry.setdefault(geometries[i], []).append(r)
    for geom, idx in by_geometry.items():
        logits = rows.logits
        if idx != list(range(len(logits))):  # only some rows have this geometry
            logits = logits.index_select(0, torch.as_tensor(idx, device=logits.device))
        if min_part_fraction is not None:  # on the logits: the mask semi's clicks edit is this one
            logits = torch.cat([auto_base(row[None], threshold, min_part_fraction) for row in logits])
        masks = (backbone.postprocess(logits, geom) > threshold).cpu().numpy()
        for mask, r in zip(masks, idx):
            pred, k = preds[rows.image_index[r]], rows.class_index[r]
            pred.masks[k] = mask & bool(small[r, 1])
            pred.scores[k] = small[r, 0]
            pred.boxes[k] = small[r, 2:] / geom.scale
    return preds
