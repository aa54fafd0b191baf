"""Held-out evaluation: auto vs the zero-shot baseline (manual with the ground-truth box) vs semi
with one simulated click. Per-image Dice, IoU, HD95, ASSD (mm when spacing is known, else px)."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from .data.datasets import Sample
from .losses import box_of
from .metrics import evaluate_pair
from .model import Prompts, Sam2Rad
from .train import class_masks

EVAL_MODES = ("auto", "manual_gt_box", "semi_click")


@dataclass
class EvalRow:
    name: str
    class_name: str
    mode: str
    dice: float
    iou: float
    hd95: float
    assd: float
    unit: str


def simulated_click(pred: np.ndarray, gt: np.ndarray) -> tuple[list[float], int]:
    """The click a reader would make: the centre of the largest error region (its innermost pixel),
    foreground if the model missed it, background if the model over-segmented it."""
    fn, fp = gt & ~pred, pred & ~gt
    error = fn if fn.sum() >= fp.sum() else fp
    if not error.any():
        ys, xs = np.nonzero(gt) if gt.any() else (np.array([gt.shape[0] // 2]), np.array([gt.shape[1] // 2]))
        return [float(xs[len(xs) // 2]), float(ys[len(ys) // 2])], 1
    labels, n = ndimage.label(error)
    largest = 1 + int(np.argmax(ndimage.sum(error, labels, range(1, n + 1))))
    dist = ndimage.distance_transform_edt(labels == largest)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [float(x), float(y)], int(error is fn)


def evaluate_model(model: Sam2Rad, samples: Sequence[Sample], modes: Sequence[str] = EVAL_MODES,
                   progress: bool = False) -> list[EvalRow]:
    bad = set(modes) - set(EVAL_MODES)
    if bad:
        raise ValueError(f"unknown evaluation modes {sorted(bad)}; choose from {EVAL_MODES}")
    rows: list[EvalRow] = []
    it = samples
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(samples, desc="evaluate", unit="img")
    for s in it:
        gts = class_masks(s, model.num_classes)
        auto = model.predict(s.image, "auto")[0]
        results: dict[str, np.ndarray] = {"auto": auto.masks}
        if "manual_gt_box" in modes or "semi_click" in modes:
            manual = np.zeros_like(auto.masks)
            semi = np.zeros_like(auto.masks)
            for k, gt in enumerate(gts):
                box = box_of(gt)
                if box is not None and "manual_gt_box" in modes:
                    # box_of is exclusive at the far edge; SAM boxes are inclusive pixel corners.
                    manual[k] = model.predict(s.image, "manual", Prompts(box=box - [0, 0, 1, 1], class_index=k))[0].masks[k]
                if "semi_click" in modes:
                    point, label = simulated_click(auto.masks[k], gt)
                    semi[k] = model.predict(s.image, "semi", Prompts(points=[point], labels=[label], class_index=k))[0].masks[k]
            results["manual_gt_box"], results["semi_click"] = manual, semi
        for mode in modes:
            for k, gt in enumerate(gts):
                m = evaluate_pair(results[mode][k], gt, s.spacing_mm)
                rows.append(EvalRow(s.name, model.class_names[k], mode, m.dice, m.iou, m.hd95, m.assd, m.unit))
        model.clear_cache()
    return rows


def summarise(rows: Sequence[EvalRow]) -> list[dict]:
    """Mean/median per mode (non-finite distances excluded from their means, and counted)."""
    out = []
    for mode in dict.fromkeys(r.mode for r in rows):
        sel = [r for r in rows if r.mode == mode]
        def finite(vals):
            vals = [v for v in vals if math.isfinite(v)]
            return float(np.mean(vals)) if vals else float("nan")
        out.append({
            "mode": mode, "n": len(sel),
            "dice_mean": float(np.mean([r.dice for r in sel])),
            "dice_median": float(np.median([r.dice for r in sel])),
            "iou_mean": float(np.mean([r.iou for r in sel])),
            "hd95_mean": finite([r.hd95 for r in sel]),
            "assd_mean": finite([r.assd for r in sel]),
            "n_infinite_distance": sum(1 for r in sel if not math.isfinite(r.hd95)),
            "unit": sel[0].unit,
        })
    return out


def write_csv(rows: Sequence[dict] | Sequence[EvalRow], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dicts = [r if isinstance(r, dict) else r.__dict__ for r in rows]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dicts[0]))
        writer.writeheader()
        writer.writerows(dicts)
    return path


def format_table(summary: Sequence[dict]) -> str:
    head = f"{'mode':<16}{'n':>5}{'Dice':>8}{'median':>8}{'IoU':>8}{'HD95':>9}{'ASSD':>8}  unit"
    lines = [head, "-" * len(head)]
    for s in summary:
        lines.append(f"{s['mode']:<16}{s['n']:>5}{s['dice_mean']:>8.3f}{s['dice_median']:>8.3f}{s['iou_mean']:>8.3f}"
                     f"{s['hd95_mean']:>9.2f}{s['assd_mean']:>8.2f}  {s['unit']}")
    return "\n".join(lines)
