"""Held-out evaluation: auto vs the zero-shot baseline (manual with the ground-truth box) vs semi
with simulated reader clicks. Per-image Dice, IoU, HD95, ASSD (mm when spacing is known, else px).

Clicks are simulated as a reader makes them: each on the largest error region of the *current*
prediction (foreground where it missed, background where it over-segmented), all clicks so far sent
together in semi mode, so each click re-runs only the decoder path on the cached encoding. NoC@T is
the number of clicks until Dice reaches T (0 when `auto` already does), capped at the clicks given.

Readers: "tools" (the default) makes a click an end click when its error is about where the surface
ends (it runs on past the true end, or stops short of it: sam2rad/clicks.py surface_end_click), a
shift click when both edges are off by the same typical amount the same way (surface_shift_click), an
edge click (sam2rad/edge_click.py) when the edge it names is off along most of the surface
(typical_edge_click: placed on the true edge where the edge is off by its typical amount), a point
click otherwise; "points" makes every click a
point click (the only reader before edge clicks existed). Neither clicks again into a region whose
earlier click changed nothing there."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .data.datasets import Sample
from .clicks import error_click, surface_end_click, surface_shift_click, typical_edge_click
from .losses import box_of
from .metrics import evaluate_pair
from .model import Prompts, Sam2Rad
from .train import class_masks

EVAL_MODES = ("auto", "manual_gt_box", "semi_click")
READERS = ("tools", "points")


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
    clicks: int = 0  # semi_click rows: how many simulated clicks produced this mask


# The reader model of every click evaluation: the largest error region's innermost pixel.
simulated_click = error_click


def click_sequence(model: Sam2Rad, image: np.ndarray, gt: np.ndarray, start: np.ndarray, n_clicks: int,
                   class_index: int = 0, reader: str = "tools") -> list[np.ndarray]:
    """Masks after 1..n_clicks successive simulated clicks, starting from the `start` prediction."""
    return [mask for _, mask in reader_session(model, image, gt, start, n_clicks, class_index, reader)]


def reader_session(model: Sam2Rad, image: np.ndarray, gt: np.ndarray, start: np.ndarray, n_clicks: int,
                   class_index: int = 0, reader: str = "tools") -> list[tuple[Prompts, np.ndarray]]:
    """The prompts after each of 1..n_clicks simulated clicks (all clicks so far, in the order made)
    and the mask they gave."""
    tools: dict[str, tuple[list, list]] = {k: ([], []) for k in ("point", "edge", "end", "shift")}  # -> (xy, labels)
    steps, current, tried, order = [], start, [], []
    for _ in range(n_clicks):
        point, label = simulated_click(current, gt, avoid=tried)
        tried.append((point[0], point[1], label))
        end = surface_end_click(current, gt, point, label) if reader == "tools" else None
        shift = surface_shift_click(current, gt, point, label) if reader == "tools" and end is None else None
        typical = typical_edge_click(current, gt, point, label) if reader == "tools" and end is None and shift is None else None
        if end is not None:
            tool, point = "end", end
        elif shift is not None:
            tool, point = "shift", shift
        elif typical is not None:
            tool, point = "edge", typical
        else:
            tool = "point"
        tools[tool][0].append(point)
        tools[tool][1].append(label)
        order.append(tool)
        (pts, labels), (edges, edge_labels), (ends, _), (shifts, shift_labels) = (tools[k] for k in ("point", "edge", "end", "shift"))
        prompts = Prompts(points=pts or None, labels=labels or None, edges=edges or None, edge_labels=edge_labels or None,
                          ends=ends or None, shifts=shifts or None, shift_labels=shift_labels or None,
                          class_index=class_index, order=tuple(order))
        current = model.predict(image, "semi", prompts)[0].masks[class_index]
        steps.append((prompts, current))
    return steps


def evaluate_model(model: Sam2Rad, samples: Sequence[Sample], modes: Sequence[str] = EVAL_MODES,
                   progress: bool = False, clicks: int = 1, reader: str = "tools") -> list[EvalRow]:
    """Rows per image, class and mode; semi_click gives one row per click count 1..clicks."""
    bad = set(modes) - set(EVAL_MODES)
    if bad:
        raise ValueError(f"unknown evaluation modes {sorted(bad)}; choose from {EVAL_MODES}")
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    if clicks < 1:
        raise ValueError(f"clicks must be >= 1, got {clicks}")
    rows: list[EvalRow] = []
    it = samples
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(samples, desc="evaluate", unit="img")
    for s in it:
        gts = class_masks(s, model.num_classes)
        auto = model.predict(s.image, "auto")[0]
        for k, gt in enumerate(gts):
            results: list[tuple[str, int, np.ndarray]] = [("auto", 0, auto.masks[k])]
            box = box_of(gt)
            if "manual_gt_box" in modes:
                # box_of is exclusive at the far edge; SAM boxes are inclusive pixel corners.
                manual = np.zeros_like(gt) if box is None else \
                    model.predict(s.image, "manual", Prompts(box=box - [0, 0, 1, 1], class_index=k))[0].masks[k]
                results.append(("manual_gt_box", 0, manual))
            if "semi_click" in modes:
                seq = click_sequence(model, s.image, gt, auto.masks[k], clicks, k, reader)
                results += [("semi_click", i + 1, m) for i, m in enumerate(seq)]
            for mode, n, mask in results:
                if mode not in modes:
                    continue
                m = evaluate_pair(mask, gt, s.spacing_mm)
                rows.append(EvalRow(s.name, model.class_names[k], mode, m.dice, m.iou, m.hd95, m.assd, m.unit, n))
        model.clear_cache()
    return rows


def _dice_by_clicks(rows: Sequence[EvalRow]) -> list[dict[int, float]]:
    """Per (image, class): {clicks: Dice}, 0 being auto."""
    by_item: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        if r.mode in ("auto", "semi_click"):
            by_item.setdefault((r.name, r.class_name), {})[r.clicks] = r.dice
    return list(by_item.values())


def noc_cap(rows: Sequence[EvalRow]) -> int:
    """The most clicks simulated: what an image that never reaches a threshold counts in NoC."""
    return max((max(d) for d in _dice_by_clicks(rows)), default=0)


def number_of_clicks(rows: Sequence[EvalRow], threshold: float) -> float:
    """Mean NoC@threshold over (image, class): clicks until Dice >= threshold, 0 when auto reaches
    it, capped at the most clicks simulated (noc_cap)."""
    items, cap = _dice_by_clicks(rows), noc_cap(rows)
    if not items:
        return float("nan")
    return float(np.mean([next((n for n in sorted(d) if d[n] >= threshold), cap) for d in items]))


def click_statistics(rows: Sequence[EvalRow], weak_below: float = 0.85) -> dict:
    """What clicks do: first-click gain where auto is weak, how often a click makes things worse, NoC."""
    items = [d for d in _dice_by_clicks(rows) if 0 in d and 1 in d]
    if not items:
        return {}
    weak = [d for d in items if d[0] < weak_below]
    steps = [(d[n - 1], d[n]) for d in items for n in sorted(d) if n >= 1 and n - 1 in d]
    return {
        "n_images": len(items), "n_weak": len(weak),
        "first_click_gain_weak": float(np.mean([d[1] - d[0] for d in weak])) if weak else float("nan"),
        "first_click_worse_fraction": float(np.mean([d[1] < d[0] - 1e-9 for d in items])),
        "any_click_worse_fraction": float(np.mean([b < a - 1e-9 for a, b in steps])) if steps else float("nan"),
        "noc85": number_of_clicks(rows, 0.85), "noc90": number_of_clicks(rows, 0.90),
        "noc_cap": noc_cap(rows),
    }


def summarise(rows: Sequence[EvalRow]) -> list[dict]:
    """Mean/median per mode (non-finite distances excluded from their means, and counted)."""
    out = []
    for mode, clicks in dict.fromkeys((r.mode, r.clicks) for r in rows):
        sel = [r for r in rows if r.mode == mode and r.clicks == clicks]
        def finite(vals):
            vals = [v for v in vals if math.isfinite(v)]
            return float(np.mean(vals)) if vals else float("nan")
        out.append({
            "mode": mode, "clicks": clicks, "n": len(sel),
            "dice_mean": float(np.mean([r.dice for r in sel])),
            "dice_median": float(np.median([r.dice for r in sel])),
            "hd95_median": float(np.median([r.hd95 for r in sel])),
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
    head = (f"{'mode':<16}{'clicks':>7}{'n':>5}{'Dice':>8}{'median':>8}{'IoU':>8}{'HD95':>9}{'HD95 med':>9}"
            f"{'ASSD':>8}  unit")
    lines = [head, "-" * len(head)]
    for s in summary:
        lines.append(f"{s['mode']:<16}{s.get('clicks', 0):>7}{s['n']:>5}{s['dice_mean']:>8.3f}{s['dice_median']:>8.3f}"
                     f"{s['iou_mean']:>8.3f}{s['hd95_mean']:>9.2f}{s.get('hd95_median', float('nan')):>9.2f}"
                     f"{s['assd_mean']:>8.2f}  {s['unit']}")
    return "\n".join(lines)


def format_click_statistics(stats: dict) -> str:
    if not stats:
        return "no click rows"
    return (f"clicks: NoC@85 {stats['noc85']:.2f}, NoC@90 {stats['noc90']:.2f} over {stats['n_images']} images "
            f"(capped at {stats['noc_cap']} clicks: an image never reaching the Dice counts {stats['noc_cap']}); "
            + (f"first click on the {stats['n_weak']} images with auto Dice < 0.85 adds {stats['first_click_gain_weak']:+.3f}; "
               if stats['n_weak'] else "no image has auto Dice < 0.85; ")
            + f"a first click makes {100 * stats['first_click_worse_fraction']:.1f} % of images worse, "
            f"any click {100 * stats['any_click_worse_fraction']:.1f} % of steps")
