"""Training targets and the Sam2Rad loss mix (Dice + focal on the mask, GIoU + L1 on the box,
focal on the PPN's interim mask, BCE on the object score where the backbone predicts one)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .backbones.base import ImageGeometry


@dataclass(frozen=True)
class LossWeights:
    dice: float = 1.0
    # SAM trained whole objects with focal:dice 20:1. A bone surface covers ~1-2% of the pixels, and
    # that much focal drives every logit negative early, where Dice's gradient vanishes: 10-shot
    # runs of 100 epochs reached 0.41-0.49 validation Dice with 20 and 0.58 with 5 (or 2).
    focal: float = 5.0
    giou: float = 1.0
    l1: float = 5.0
    interim_focal: float = 2.5
    # Dice on the interim mask too: focal alone lets a thin-structure head settle on all-background.
    interim_dice: float = 1.0
    object_bce: float = 1.0
    # The refiner's output is the mask the user gets: Dice + focal on it, at the same focal weight.
    refined: float = 1.0


@dataclass
class Targets:
    """Per row (image x class): masks in model space at the decoder's output size, and boxes."""

    masks: torch.Tensor  # (N, 1, 4h, 4w) float {0, 1}
    boxes_norm: torch.Tensor  # (N, 4) in [0, 1] of the model input side; NaN where the mask is empty
    present: torch.Tensor  # (N,) 1.0 where the class is present
    # (N, 1, 4h, 4w) the covered fraction of each pixel, for the refined mask; None: `masks` is used.
    # Why: a model input smaller than the source (a 320-pixel frame into 256) turns a thin surface's
    # edges into part-covered pixels; hard targets teach a staircase, and back at the source a
    # 3-pixel-thick bone loses up to 7 % Dice to that alone (measured, generator B: 0.933 at best).
    soft: torch.Tensor | None = None

    def boxes_px(self, input_size: int) -> torch.Tensor:
        return self.boxes_norm * input_size


def mask_coverage_in_model_space(mask: np.ndarray, geom: ImageGeometry, input_size: int, out_size: int) -> np.ndarray:
    """A source-resolution mask placed like the image (resize longest side, pad) at `out_size`, as
    the fraction of each output pixel it covers (float32 in [0, 1])."""
    t = torch.as_tensor(mask.astype(np.float32))[None, None]
    rh, rw = geom.resized_hw
    padded = torch.zeros(1, 1, input_size, input_size)
    padded[..., :rh, :rw] = F.interpolate(t, size=(rh, rw), mode="area" if geom.scale < 1 else "nearest")
    if out_size != input_size:
        padded = F.interpolate(padded, size=(out_size, out_size), mode="area")
    return padded[0, 0].numpy()


def mask_to_model_space(mask: np.ndarray, geom: ImageGeometry, input_size: int, out_size: int) -> np.ndarray:
    """A source-resolution mask placed like the image (resize longest side, pad) at `out_size`."""
    return mask_coverage_in_model_space(mask, geom, input_size, out_size) >= 0.5


def box_of(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def make_targets(masks_model: list[np.ndarray], soft_model: list[np.ndarray] | None = None) -> Targets:
    """masks_model: per row, a (S, S) bool mask in model space (S = decoder output side); soft_model:
    the same as covered fractions (see Targets.soft)."""
    size = masks_model[0].shape[-1]
    boxes = []
    for m in masks_model:
        b = box_of(m)
        boxes.append(np.full(4, np.nan, np.float32) if b is None else b / size)
    stacked = torch.as_tensor(np.stack(masks_model).astype(np.float32))[:, None]
    present = (stacked.flatten(1).sum(1) > 0).float()
    soft = None if soft_model is None else torch.as_tensor(np.stack(soft_model).astype(np.float32))[:, None]
    return Targets(stacked, torch.as_tensor(np.stack(boxes)), present, soft)


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss per row, (N,)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(1)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per row, (N,)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of xyxy boxes, (N,)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-9)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def sam2rad_loss(low_res_logits: torch.Tensor, box_norm: torch.Tensor, interim_logits: torch.Tensor,
                 object_logit: torch.Tensor | None, targets: Targets, w: LossWeights = LossWeights(),
                 refined_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss plus its parts (floats, for logging). Targets may be finer than the decoder's
    logits (when a refiner works at the model input size); each output is scored at its own size."""
    full = targets.masks.to(low_res_logits.device)
    refined_parts: dict[str, torch.Tensor] = {}
    if refined_logits is not None:
        soft = None if targets.soft is None else targets.soft.to(full.device)
        if soft is not None and soft.shape[-2:] == refined_logits.shape[-2:]:
            tr = soft
        else:
            tr = full if full.shape[-2:] == refined_logits.shape[-2:] else \
                (F.interpolate(full, size=refined_logits.shape[-2:], mode="area") >= 0.5).float()
        refined_parts["refined"] = soft_dice(refined_logits, tr).mean() + w.focal * sigmoid_focal(refined_logits, tr).mean()
    t = full
    if t.shape[-2:] != low_res_logits.shape[-2:]:
        t = (F.interpolate(t, size=low_res_logits.shape[-2:], mode="area") >= 0.5).float()
    parts: dict[str, torch.Tensor] = {
        "dice": soft_dice(low_res_logits, t).mean(),
        "focal": sigmoid_focal(low_res_logits, t).mean(),
    }
    ti = t if t.shape[-2:] == interim_logits.shape[-2:] else \
        (F.interpolate(t, size=interim_logits.shape[-2:], mode="area") >= 0.5).float()
    parts["interim_focal"] = sigmoid_focal(interim_logits, ti).mean()
    parts["interim_dice"] = soft_dice(interim_logits, ti).mean()
    has_box = ~torch.isnan(targets.boxes_norm).any(1)
    if has_box.any():
        pb, tb = box_norm[has_box], targets.boxes_norm.to(box_norm.device)[has_box]
        parts["giou"] = (1 - generalized_iou(pb, tb)).mean()
        parts["l1"] = F.l1_loss(pb, tb)
    if object_logit is not None:
        parts["object_bce"] = F.binary_cross_entropy_with_logits(object_logit, targets.present.to(object_logit.device))
    parts.update(refined_parts)
    total = sum(getattr(w, k) * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}
