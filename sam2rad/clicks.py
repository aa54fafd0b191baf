"""Simulated reader clicks: for training rows and for evaluating interactive correction.

A reader clicks where the mask is most wrong: inside the largest missed region (a foreground
click) or the largest false region (a background click), at its innermost pixel, passing over a
region an earlier click did not change. With the tools (the evaluation's default reader) that click
becomes an end click when the error is about where the surface ends, a shift click when the whole
surface is off by one amount (both edges the same way), an edge click when the edge it
names is off along most of the surface (on the true edge, where it is off by its typical amount), a
point click otherwise.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .edge_click import column_ends, run_at


def error_click(pred: np.ndarray, gt: np.ndarray, strip_middle: bool = True,
                avoid: Sequence[tuple[float, float, int]] = ()) -> tuple[list[float], int]:
    """The click a reader would make on `pred`: (x, y) in pixels and the label (1 add, 0 remove).

    With nothing wrong it returns a foreground click on the structure (a no-op for a good model).
    strip_middle=False takes the first innermost pixel in raster order (a thin strip's left end), as
    before session 14: the training recipe's interactive rows were measured that way.
    avoid: earlier clicks (x, y, label) as `error_click` chose them. A region still holding one was
    clicked and did not change there, so a reader turns to the next largest error (the largest
    again when every region has been tried).
    """
    fn, fp = gt & ~pred, pred & ~gt
    if not fn.any() and not fp.any():
        ys, xs = np.nonzero(gt) if gt.any() else (np.array([gt.shape[0] // 2]), np.array([gt.shape[1] // 2]))
        return [float(xs[len(xs) // 2]), float(ys[len(ys) // 2])], 1
    candidates = []  # (size, tried, region, label)
    for error, label in ((fn, 1), (fp, 0)):
        if not error.any():
            continue
        labels, n = ndimage.label(error)
        sizes = ndimage.sum(error, labels, range(1, n + 1))
        tried = {int(labels[int(y), int(x)]) for x, y, lab in avoid if lab == label}
        is_tried = np.array([i + 1 in tried for i in range(n)])
        k = int(np.argmax(np.where(is_tried, -1.0, sizes))) if not is_tried.all() else int(np.argmax(sizes))
        candidates.append((sizes[k], bool(is_tried[k]), labels == k + 1, label))
    untried = [c for c in candidates if not c[1]] or candidates
    _, _, region, label = max(untried, key=lambda c: c[0])
    # Innermost pixel of the region: its distance to the region's border is largest. A thin strip has
    # many such pixels; a reader clicks its middle, not its first pixel in raster order.
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    if not strip_middle:
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return [float(x), float(y)], label
    ys, xs = np.nonzero(dist >= dist.max() - 1e-6)
    i = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return [float(xs[i]), float(ys[i])], label


# The simulated reader takes the edge tool (sam2rad/edge_click.py) when at least this share of the
# surface's columns need the edge it names moved by a row or more (the median: "most of the surface").
# 0.6 measured, not kept (README, session 15).
EDGE_TYPICAL_SHARE = 0.5


def typical_edge_click(pred: np.ndarray, gt: np.ndarray, point: list[float], label: int) -> list[float] | None:
    """An edge click placed as a reader who sees one edge off along most of the surface places it:
    on the true edge, in a column where that edge is off by its typical amount, or None.

    The edge is the one the click `error_click` chose names: for a foreground click the edge it
    lies beyond, for a background one the nearer edge of its column's mask. Per column holding both
    masks, that edge's error in the click's direction (rows to grow for a foreground click, to
    shrink for a background one; 0 where it is right or off the other way). An edge tool moves every
    column by about one amount, and the largest move that at least EDGE_TYPICAL_SHARE of the columns
    need fixes the most of them; None when no move of a row or more is needed that widely. The
    column: the one nearest the chosen click whose error is that move. Why: the chosen click sits in
    the middle of the error strip's thickest column, and the true edge there overshoots the rest of
    the surface (README, session 15)."""
    h, w = pred.shape
    x, y = int(np.clip(round(point[0]), 0, w - 1)), int(np.clip(round(point[1]), 0, h - 1))
    rows = np.nonzero(pred[:, x])[0]
    if len(rows) == 0:
        return None
    top, deep = rows[0], rows[-1]
    deep_edge = y > deep if label == 1 else (deep - y <= y - top)
    if label == 1 and top <= y <= deep:
        return None  # a hole inside the mask: not an edge
    p_first, p_last, p_has = column_ends(pred)
    g_first, g_last, g_has = column_ends(gt)
    cols = np.nonzero(p_has & g_has)[0]
    if len(cols) == 0:
        return None
    if deep_edge:  # grow: the truth goes deeper; shrink: the mask does
        err = (g_last - p_last)[cols] if label == 1 else (p_last - g_last)[cols]
    else:
        err = (p_first - g_first)[cols] if label == 1 else (g_first - p_first)[cols]
    amount = _typical_amount(err)
    if amount < 1:
        return None
    return _on_true_edge(pred, gt, cols[err == amount], x, label, deep_edge)


def _on_true_edge(pred: np.ndarray, gt: np.ndarray, cols: np.ndarray, x: int, label: int,
                  deep_edge: bool) -> list[float] | None:
    """A surface tool's click on the true edge it names, in the column of `cols` nearest x: on the
    edge's last true row (a grow) or the first row past it (a shrink); None when empty, or when a
    shrink click would lie nearer the mask's other edge (the tools move the nearer one)."""
    if len(cols) == 0:
        return None
    p_first, p_last, _ = column_ends(pred)
    g_first, g_last, _ = column_ends(gt)
    c = int(cols[np.argmin(np.abs(cols - x))])
    edge_row = g_last[c] if deep_edge else g_first[c]
    row = edge_row if label == 1 else edge_row + (1 if deep_edge else -1)
    if label == 0 and (p_last[c] - row <= row - p_first[c]) != deep_edge:
        return None
    return [float(c), float(row)]


def _typical_amount(err: np.ndarray) -> int:
    """The largest move that at least EDGE_TYPICAL_SHARE of the columns need (0 when none needs a row)."""
    err = np.maximum(err, 0)
    return max((n for n in range(1, int(err.max(initial=0)) + 1) if np.mean(err >= n) >= EDGE_TYPICAL_SHARE), default=0)


def surface_shift_click(pred: np.ndarray, gt: np.ndarray, point: list[float], label: int) -> list[float] | None:
    """Where a reader puts a shift click (the whole surface moves with the edge clicked:
    sam2rad/edge_click.py move_edge translate) when both edges of the mask are off by the same typical
    amount in the same direction, a surface drawn too shallow or too deep as a whole, and the error
    `error_click` chose lies along the surface (it touches the truth, for a false region, or the mask,
    for a missed one); else None. The click goes where an edge click would (`typical_edge_click`'s
    placement) on the edge that error names: a missed strip below or a false one above means the
    surface goes deeper. Why: across generators both edges are typically a row too shallow (session
    20: the demo model on held-out B images, top −0.95 and deep −1.43 rows), and an edge click fixes
    only one of them."""
    h, w = pred.shape
    x, y = int(np.clip(round(point[0]), 0, w - 1)), int(np.clip(round(point[1]), 0, h - 1))
    error = (pred & ~gt) if label == 0 else (gt & ~pred)
    if not error[y, x]:
        return None
    pieces, _ = ndimage.label(error, structure=np.ones((3, 3), bool))
    near = ndimage.binary_dilation(pieces == pieces[y, x], structure=np.ones((3, 3), bool))
    if not (near & (gt if label == 0 else pred)).any():
        return None  # a piece of its own, not a strip along the surface
    p_first, p_last, p_has = column_ends(pred)
    g_first, g_last, g_has = column_ends(gt)
    cols = np.nonzero(p_has & g_has)[0]
    if len(cols) == 0:
        return None
    for down in (True, False):
        sign = 1 if down else -1
        amount = _typical_amount(sign * (g_first - p_first)[cols])
        if amount < 1 or _typical_amount(sign * (g_last - p_last)[cols]) != amount:
            continue
        deep_edge = down == (label == 1)  # going deeper: grow the deep edge or shrink the shallow one
        err = sign * ((g_last - p_last) if deep_edge else (g_first - p_first))[cols]
        return _on_true_edge(pred, gt, cols[err == amount], x, label, deep_edge)
    return None


def _middle_row(mask: np.ndarray, col: int, y: float) -> float:
    """The middle of the column's mask run holding row y, or the nearest one (edge_click.run_at)."""
    top, deep = run_at(mask[:, col], y)
    return (top + deep) / 2.0


def surface_end_click(pred: np.ndarray, gt: np.ndarray, point: list[float], label: int) -> list[float] | None:
    """Where a reader puts an end click (the surface ends here: sam2rad/edge_click.py apply_end_clicks)
    when the error `error_click` chose is about where the surface ends, else None:
    - a false run beyond the true surface's lateral end, joined to it: one column past the true end,
      in the middle of the mask's run there (the surface is cut back to it); a false piece wholly
      beyond the true end: its column nearest the true surface (the whole piece goes);
    - a missed run beyond the end of the mask, joined to the true surface, with no mask past it: the
      true end's column, in the middle of the true run there (the surface is extended to it)."""
    h, w = pred.shape
    x, y = int(np.clip(round(point[0]), 0, w - 1)), int(np.clip(round(point[1]), 0, h - 1))
    error, mask, other = (pred & ~gt, pred, gt) if label == 0 else (gt & ~pred, gt, pred)
    other_cols = np.nonzero(other.any(axis=0))[0]
    if len(other_cols) == 0 or other_cols[0] <= x <= other_cols[-1] or not error[y, x]:
        return None  # not beyond the lateral extent of the truth (label 0) or of the mask (label 1)
    pieces, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    piece = pieces == pieces[y, x]
    right = x > other_cols[-1]
    joined = (piece & other).any()
    if label == 0:
        cols = np.nonzero(piece.any(axis=0))[0]
        if joined:
            col = int(other_cols[-1] + 1 if right else other_cols[0] - 1)
        elif cols[0] > other_cols[-1] or cols[-1] < other_cols[0]:  # a false piece wholly past the end
            col = int(cols[0] if right else cols[-1])
        else:
            return None
        return [float(col), _middle_row(pred, col, y)] if piece[:, col].any() else None
    if not joined:  # a missed piece of its own
        return None
    cols = np.nonzero(piece.any(axis=0))[0]
    col = int(cols[-1] if right else cols[0])  # the true end
    beyond = pred[:, col + 1:] if right else pred[:, :col]
    if beyond.any():  # mask further on: a gap in the surface, not its end
        return None
    return [float(col), _middle_row(gt, col, y)]


def training_click(mask: np.ndarray, rng: np.random.Generator, negative_fraction: float = 0.3
                   ) -> tuple[np.ndarray, int] | None:
    """A reader-like click for a training row, from its ground truth: usually a foreground click on
    the structure, sometimes a background click just beside it (inside its box grown by a quarter).
    Returns ((x, y) in mask pixels, label) or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    if rng.random() < negative_fraction:
        h, w = mask.shape
        gy, gx = max(2, (ys.max() - ys.min()) // 4), max(2, (xs.max() - xs.min()) // 4)
        y0, y1 = max(0, ys.min() - gy), min(h, ys.max() + gy + 1)
        x0, x1 = max(0, xs.min() - gx), min(w, xs.max() + gx + 1)
        by, bx = np.nonzero(~mask[y0:y1, x0:x1])
        if len(bx):
            i = rng.integers(len(bx))
            return np.array([bx[i] + x0, by[i] + y0], np.float32), 0
    i = rng.integers(len(xs))
    return np.array([xs[i], ys[i]], np.float32), 1
