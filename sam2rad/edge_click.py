"""Edge clicks: one click moves a whole edge of the surface, in depth, to the click.

Why: across scanners the errors that are left are not pieces but edges. A model trained on
generator A and run on generator B gets the extent of a bone surface right and its deep (or
shallow) edge one to three pixels off along the whole surface, which is where the two
generators' labels differ. A point click on such a strip changes a few pixels next to it (+0.004
Dice on the demo model's 20 held-out B images). Moving the edge nearest to the click along the
whole mask to the click, the simulated reader using it when the largest error is a strip spanning
at least a quarter of the mask (sam2rad/clicks.py): +0.048 for the first click on the same images,
5 % of them worse (`sam2rad evaluate --clicks 3`, README). On the model's own generator the errors
are short slivers and a whole-edge move there makes most images worse (65 % of A images, simulated
for every click near an edge), so it is a separate tool the reader picks, not what a point click
does.

Depth is the image's row axis (the beam direction of a linear probe; near the middle of a convex
sector it is close to it). The move works on logits, so it is sub-pixel in model space:
  grow the deep edge by a:     max(L, L shifted down by a)
  grow the shallow edge by a:  max(L, L shifted up by a)
  shrink the deep edge by a:   min(L, L shifted up by a)
  shrink the shallow edge by a: min(L, L shifted down by a)
"""
from __future__ import annotations

import math

import numpy as np
import torch

MAX_MOVE_PX = 16.0  # logit pixels (model pixels at the refiner's size): a click further from the edge moves it this far


def _shift_rows(logits: torch.Tensor, amount: float) -> torch.Tensor:
    """Shift (…, s, s) logits down by `amount` rows (up when negative), linearly between rows; the
    rows uncovered take the nearest edge row, so nothing new appears at the border."""
    whole = math.floor(amount)
    frac = amount - whole
    out = None
    for rows, weight in ((whole, 1.0 - frac), (whole + 1, frac)):
        if weight == 0.0:
            continue
        idx = (torch.arange(logits.shape[-2], device=logits.device) - rows).clamp(0, logits.shape[-2] - 1)
        part = logits.index_select(-2, idx) * weight
        out = part if out is None else out + part
    return out


def _run_at(column: np.ndarray, y: float) -> tuple[int, int] | None:
    """(top, deep) rows of the column's mask run holding the click, or the nearest one."""
    rows = np.nonzero(column)[0]
    if len(rows) == 0:
        return None
    runs = np.split(rows, np.nonzero(np.diff(rows) > 1)[0] + 1)
    run = min(runs, key=lambda r: 0.0 if r[0] <= y <= r[-1] else min(abs(y - r[0]), abs(y - r[-1])))
    return int(run[0]), int(run[-1])


def move_edge(logits: torch.Tensor, x: float, y: float, grow: bool, threshold: float = 0.0) -> torch.Tensor:
    """Move the edge of (1, 1, s, s) `logits` nearest to the click (x, y, logit pixels) to it.

    grow: the structure reaches the click (a click beyond the deep or above the shallow edge);
    otherwise it stops before it (a click inside the mask: the nearer edge moves past the click).
    A click in a column without mask, or a grow click inside / a shrink click outside the mask,
    changes nothing.
    """
    s = logits.shape[-1]
    col = int(np.clip(round(x), 0, s - 1))
    run = _run_at((logits[0, 0, :, col] > threshold).cpu().numpy(), y)
    if run is None:
        return logits
    top, deep = run
    if grow and y > deep:
        shift, keep = min(y - deep, MAX_MOVE_PX), torch.maximum
    elif grow and y < top:
        shift, keep = -min(top - y, MAX_MOVE_PX), torch.maximum
    elif not grow and top <= y <= deep:
        if deep - y <= y - top:  # the deep edge moves up past the click
            shift, keep = -min(deep - y + 1, MAX_MOVE_PX), torch.minimum
        else:  # the shallow edge moves down past the click
            shift, keep = min(y - top + 1, MAX_MOVE_PX), torch.minimum
    else:
        return logits
    return keep(logits, _shift_rows(logits, float(shift)))


def apply_edge_clicks(logits: torch.Tensor, coords_px: np.ndarray, labels: np.ndarray, input_size: int,
                      threshold: float = 0.0) -> torch.Tensor:
    """Edge clicks in order, each on the result of the ones before. coords_px: (E, 2) in model-input
    pixels (the logits may be coarser); labels (E,): 1 grow, 0 shrink."""
    scale = logits.shape[-1] / float(input_size)
    for (x, y), label in zip(np.asarray(coords_px, dtype=np.float64).reshape(-1, 2), np.asarray(labels).reshape(-1)):
        logits = move_edge(logits, x * scale, y * scale, bool(label), threshold)
    return logits
