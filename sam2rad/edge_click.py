"""Edge clicks: one click moves a whole edge of the surface, in depth, to the click.

Why: across scanners the errors that are left are not pieces but edges. A model trained on
generator A and run on generator B gets the extent of a bone surface right and its deep (or
shallow) edge one to three pixels off along the whole surface, which is where the two
generators' labels differ. A point click on such a strip changes a few pixels next to it (+0.004
Dice on the demo model's 20 held-out B images). Moving the edge nearest to the click along the
whole mask to the click gained +0.048 for the first click on the same images (session 12), and
+0.080 since session 15, where the simulated reader clicks the true edge at a column where the
edge is off by its typical amount (sam2rad/clicks.py typical_edge_click; README). On the model's
own generator the errors are short slivers and a whole-edge move there makes most images worse
(65 % of A images, simulated for every click near an edge), so it is a separate tool the reader
picks, not what a point click does.

A point click still goes to the decoder first. Where the decoder did not follow it (the clicked
pixel still on the wrong side, as for most point clicks on B), the same move is made locally: the
nearest edge moves to the click at its column, fading out over a few columns either side
(`hold_point_clicks`); a foreground click just off the end of a surface extends the surface to it.
A reader's click near the surface then always counts where it was made, and repeated clicks walk
an edge piece by piece instead of stalling. A held background click in the middle of a run cuts a
surface back near its end, or removes a small false piece.

End clicks (`apply_end_clicks`) set where the surface ends: cut back to the click, or extended to it.

Moves shift each column's logits along the image's rows (depth: the beam direction of a linear
probe; near the middle of a convex sector it is close to it), so they are sub-pixel in model space:
  grow the deep edge by a:     max(L, L shifted down by a)
  grow the shallow edge by a:  max(L, L shifted up by a)
  shrink the deep edge by a:   min(L, L shifted up by a)
  shrink the shallow edge by a: min(L, L shifted down by a)
An edge click's `a` differs per column: the click's distance along the edge's normal, so sloped
stretches move further in rows; a shrink leaves a row of every column's surface. Given the source's
row scale, it counts whole source rows: the clicked pixel becomes the edge's last one in (a grow) or
first one out (a shrink), read where the source column lies between two logit columns, and every
other column moves by the same number of source rows (times its normal's share), its threshold
crossing put between two source rows.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from .click_edit import keep_changes_at_clicks
from .row_shifts import shift_rows as _shift_rows, shift_rows_by_column as _shift_rows_by_column

MAX_MOVE_PX = 16.0  # logit pixels (model pixels at the refiner's size): a click further from the edge moves it this far


def run_at(column: np.ndarray, y: float) -> tuple[int, int] | None:
    """(top, deep) rows of the column's mask run holding the click, or the nearest one."""
    rows = np.nonzero(column)[0]
    if len(rows) == 0:
        return None
    runs = np.split(rows, np.nonzero(np.diff(rows) > 1)[0] + 1)
    run = min(runs, key=lambda r: 0.0 if r[0] <= y <= r[-1] else min(abs(y - r[0]), abs(y - r[-1])))
    return int(run[0]), int(run[-1])


def column_ends(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of a (h, w) mask: its first and last mask row (0 where the column is empty) and
    whether it holds mask."""
    has = mask.any(axis=0)
    first = np.where(has, mask.argmax(0), 0)
    last = np.where(has, mask.shape[0] - 1 - mask[::-1].argmax(0), 0)
    return first, last, has


def _normal_scaled_shifts(mask: np.ndarray, col: int, shift: float, deep: bool) -> np.ndarray:
    """Per-column row shifts that move the edge by the same distance along its normal as `shift`
    rows moves it at `col`: a sloped stretch of the edge moves further in rows (1 / cos of its
    slope). Why: the labels' bands keep their thickness across the surface, not in rows, and the
    errors left across generators grow with the slope (README, session 14). Slopes come from the
    edge's rows smoothed over 7 columns; columns without mask take `shift`."""
    first, last, has = column_ends(mask)
    edge = (last if deep else first).astype(np.float64)
    kernel = np.ones(7)
    num, den = np.convolve(edge * has, kernel, "same"), np.convolve(has.astype(float), kernel, "same")
    smooth = np.where(den > 0, num / np.maximum(den, 1e-9), np.nan)
    inv_cos = np.sqrt(1.0 + np.nan_to_num(np.gradient(smooth), nan=0.0) ** 2)
    shifts = shift * inv_cos / inv_cos[col]
    limit = min(MAX_MOVE_PX, 3.0 * abs(shift))
    return np.where(has, np.clip(shifts, -limit, limit), shift)


def move_edge(logits: torch.Tensor, x: float, y: float, grow: bool, threshold: float = 0.0,
              reach: float | None = None, past: float = 0.0, along_normal: bool = False,
              pixel: float | None = None, translate: bool = False) -> torch.Tensor:
    """Move the edge of (1, 1, s, s) `logits` nearest to the click (x, y, logit pixels) to it.

    grow: the structure reaches the click (a click beyond the deep or above the shallow edge);
    otherwise it stops before it (a click inside the mask: the nearer edge moves past the click).
    A click in a column without mask, or a grow click inside / a shrink click outside the mask,
    changes nothing; so does one that would move the edge further than `reach` (None: any distance,
    moves capped at MAX_MOVE_PX). `past`: a grown edge goes this far beyond the click.
    along_normal: the move keeps the click's distance along the edge's normal, not in rows.
    pixel: the clicked source pixel's height in logit rows. Given, the edge's sub-pixel threshold
    crossing lands on the clicked pixel's far side (a grow) or near side (a shrink), so the clicked
    pixel is the edge's last one in or first one out; None: the edge moves by whole logit rows from
    its last thresholded row (a shrink then also takes up to a further row).
    translate: the whole surface moves with that edge, its other edge by as many rows (a shift click).
    """
    s = logits.shape[-1]
    col = int(np.clip(round(x), 0, s - 1))
    mask = (logits[0, 0] > threshold).cpu().numpy()
    run = run_at(mask[:, col], y)
    if run is None:
        return logits
    top, deep = run
    if grow and y > deep:
        shift, keep = min(y - deep + past, MAX_MOVE_PX), torch.maximum
    elif grow and y < top:
        shift, keep = -min(top - y + past, MAX_MOVE_PX), torch.maximum
    elif not grow and top - 1 <= y <= deep + 1:
        # Within a pixel outside the run counts as on its edge: the source pixel clicked can be in
        # the mask while its model-space position lies just past the thresholded run.
        clicked_y, y = y, min(max(y, float(top)), float(deep))
        if deep - y <= y - top:  # the deep edge moves up past the click
            shift, keep = -min(deep - y + 1, MAX_MOVE_PX), torch.minimum
        else:  # the shallow edge moves down past the click
            shift, keep = min(y - top + 1, MAX_MOVE_PX), torch.minimum
    else:
        return logits
    n_rows = 0
    if pixel is not None:  # whole source rows, read where the click is
        n_rows, exact = _rows_to_pixel_side(logits, x, y if grow else clicked_y, shift > 0, grow, pixel, threshold)
        if n_rows == 0:
            return logits
        shift = float(np.clip(exact, -MAX_MOVE_PX, MAX_MOVE_PX))
    if reach is not None and abs(shift) > reach:  # too far from any edge to be meant for one
        return logits
    if along_normal:
        deep_edge = (grow and y > deep) or (not grow and deep - y <= y - top)
        shifts = _normal_scaled_shifts(mask, col, float(shift), deep_edge)
        if pixel is not None:
            shifts = _whole_source_rows(logits[0, 0], mask, n_rows, shifts, col, deep_edge, pixel, threshold)
        if not grow and not translate:  # a shrink leaves a row of each column's surface: it does not end the bone
            first, last, _ = column_ends(mask)
            shifts = np.sign(shifts) * np.minimum(np.abs(shifts), np.maximum(last - first - 0.5, 0.0))
        shifted = _shift_rows_by_column(logits, shifts)
    else:
        shifted = _shift_rows(logits, float(shift))
    return shifted if translate else keep(logits, shifted)


def _crossing(column: torch.Tensor, inside: int, outside: int, threshold: float) -> float:
    """Where the column's logits cross `threshold` between row `inside` (above it) and the
    neighbouring row `outside` (linear between rows; half a row out at the border)."""
    if not 0 <= outside < column.shape[0]:
        return inside + 0.5 * (outside - inside)
    return inside + float(_crossing_fraction(float(column[inside]), float(column[outside]), threshold)) * (outside - inside)


def _crossing_fraction(v_in, v_out, threshold: float):
    """How far from the row inside to the row outside (0..1) the logits cross `threshold`, linearly."""
    return np.clip((np.asarray(v_in) - threshold) / np.maximum(np.asarray(v_in) - np.asarray(v_out), 1e-6), 0.0, 1.0)


def _pixel_boundary(u, deep: bool):
    """The source-row boundary just past the edge's last row in (deep) or before its first (shallow),
    for a threshold crossing at source row u: the rows whose centres lie inside are the mask's."""
    return np.floor(u) + 0.5 if deep else np.ceil(u) - 0.5


def _column_at(logits: torch.Tensor, x: float) -> torch.Tensor:
    """The (h,) logits at sub-pixel column x, linear between columns as on the way back to the source:
    a source column lies between two logit columns, and a click refers to what the source shows."""
    w = logits.shape[-1]
    x = float(np.clip(x, 0, w - 1))
    x0 = min(int(x), w - 2) if w > 1 else 0
    fx = x - x0
    return logits[0, 0, :, x0].double() * (1 - fx) + logits[0, 0, :, min(x0 + 1, w - 1)].double() * fx


def _source_rows(logit_row, pixel: float):
    return (logit_row + 0.5) / pixel - 0.5


def _rows_to_pixel_side(logits: torch.Tensor, x: float, y: float, down: bool, grow: bool, pixel: float,
                        threshold: float) -> tuple[int, float]:
    """How many whole source rows the edge must move (signed, positive = deeper) for its last pixel
    in (a grow) or first pixel out (a shrink) to be the clicked one, read at the click's sub-pixel
    column, and the logit row shift that puts its crossing between that pixel and the next. `down`:
    the direction `move_edge` chose; (0, 0.0) when the click is already on the right side."""
    column = _column_at(logits, x)
    run = run_at((column > threshold).cpu().numpy(), y)
    if run is None:
        return 0, 0.0
    deep_edge = down == grow  # grow deeper or shrink upwards: the deep edge
    inside = run[1] if deep_edge else run[0]
    u = _source_rows(_crossing(column, inside, inside + (1 if deep_edge else -1), threshold), pixel)
    boundary = _pixel_boundary(u, deep_edge)
    target = _source_rows(y, pixel) + (0.5 if down else -0.5)  # the clicked pixel's far or near side
    n = int(np.round(target - boundary))
    return (n, float((boundary + n - u) * pixel)) if (n > 0) == down else (0, 0.0)


def _whole_source_rows(logits: torch.Tensor, mask: np.ndarray, n_rows: int, shifts: np.ndarray, col: int,
                       deep: bool, pixel: float, threshold: float) -> np.ndarray:
    """Per-column logit row shifts that move each column's edge by a whole number of source rows and
    put its threshold crossing between two source rows: `n_rows` at the clicked column `col`, and
    elsewhere n_rows times the column's share of the shift (`shifts`: the normal's scaling), rounded.
    Why: one logit shift moves columns whose crossings sit at different depths inside a source pixel
    by different numbers of source rows; a one-row click then moved much of a thin surface by two
    (session 15)."""
    first, last, has = column_ends(mask)
    h = logits.shape[0]
    inside = last if deep else first
    outside = np.clip(inside + (1 if deep else -1), 0, h - 1)
    cols = np.arange(mask.shape[1])
    t = _crossing_fraction(logits[inside, cols].double().cpu().numpy(), logits[outside, cols].double().cpu().numpy(),
                           threshold)
    t = np.where(outside == inside, 0.5, t)  # at the border: half a row out
    u = _source_rows(inside + (t if deep else -t), pixel)
    boundary = _pixel_boundary(u, deep)
    n = np.round(n_rows * shifts / shifts[col]) if shifts[col] != 0 else np.zeros_like(shifts)
    return np.where(has, (boundary + n - u) * pixel * (n != 0), shifts)


def _to_logit_px(coords_px: np.ndarray, input_size: int, side: int) -> np.ndarray:
    """Model-input pixel indices -> logit pixel indices (pixel centres map onto pixel centres)."""
    scale = side / float(input_size)
    return (np.asarray(coords_px, dtype=np.float64).reshape(-1, 2) + 0.5) * scale - 0.5


def apply_edge_clicks(logits: torch.Tensor, coords_px: np.ndarray, labels: np.ndarray, input_size: int,
                      threshold: float = 0.0, source_scale: float | None = None, translate: bool = False) -> torch.Tensor:
    """Edge clicks in order, each on the result of the ones before, each moving its edge by the
    click's distance along the edge's normal. coords_px: (E, 2) in model-input pixels (the logits
    may be coarser); labels (E,): 1 grow, 0 shrink. source_scale: model-input rows per source row
    (ImageGeometry.row_scale); given, the edge stops exactly at the clicked source pixel's side
    (`move_edge` pixel). translate: shift clicks, the whole surface moves with the edge."""
    pixel = None if source_scale is None else source_scale * logits.shape[-1] / float(input_size)
    for (x, y), label in zip(_to_logit_px(coords_px, input_size, logits.shape[-1]), np.asarray(labels).reshape(-1)):
        logits = move_edge(logits, x, y, bool(label), threshold, along_normal=True, pixel=pixel, translate=translate)
    return logits


# A point click the decoder did not follow (its pixel still on the wrong side) moves the nearest edge
# to it locally: fully at the click's column, tapering linearly to nothing HOLD_WINDOW_PX logit
# columns either side. Why tapered and short: on the model's own generator the errors left are short
# slivers, and a hard 16-column window made 30 % of A images worse with the first click (this taper:
# 1 of 20, by 0.001); across generators it is what lets later clicks count (README, session 13).
HOLD_WINDOW_PX = 8
HOLD_REACH_PX = 8.0  # logit pixels: a click further than this from every edge is not about an edge
HOLD_PAST_PX = 0.25  # a held edge goes this far past the click (logit pixels)
# A held background click in the middle of a run cuts the surface back only this near its end (logit
# columns): further in, a mid-run click on a thin surface is more likely a thickness click.
HOLD_CUT_REACH_PX = 32.0
END_REACH_PX = 64.0  # logit columns: an end click beyond a surface's end extends the surface this far


def _value_at(logits: torch.Tensor, x: float, y: float) -> float:
    """The (1, 1, h, w) logits at a sub-pixel position, interpolated like the mask's way back to the source."""
    column = _column_at(logits, x)
    h = column.shape[0]
    y = float(np.clip(y, 0, h - 1))
    y0 = min(int(y), h - 2) if h > 1 else 0
    fy = y - y0
    return float(column[y0] * (1 - fy) + column[min(y0 + 1, h - 1)] * fy)


def extend_to_click(logits: torch.Tensor, x: float, y: float, threshold: float = 0.0,
                    reach: float = 2 * HOLD_REACH_PX, depth_reach: float = HOLD_REACH_PX) -> torch.Tensor:
    """A foreground click in a column without mask, beyond the end of a surface: the surface goes on
    to it. From the nearest column within `reach` whose mask run lies within `depth_reach` rows of the
    click, the thickest of its last few columns (`_donor_column`) lends its logits to every column
    from there to the click, drifting in depth linearly from the run's middle to the click. Nothing
    such near: unchanged."""
    side = logits.shape[-1]
    col = int(np.clip(round(x), 0, side - 1))
    mask = (logits[0, 0] > threshold).cpu().numpy()
    for dist in range(1, int(reach) + 1):
        for c0 in (col - dist, col + dist):
            if not 0 <= c0 < side:
                continue
            run = run_at(mask[:, c0], y)
            if run is None or min(abs(y - run[0]), abs(y - run[1])) > depth_reach and not run[0] <= y <= run[1]:
                continue
            step = 1 if col > c0 else -1
            c0, run = _donor_column(mask, c0, run, -step)
            middle, out = (run[0] + run[1]) / 2.0, logits.clone()
            for c in range(c0 + step, col + step, step):
                drift = (y - middle) * (c - c0) / float(col - c0)
                out[..., :, c] = torch.maximum(out[..., :, c], _shift_rows(logits[..., :, c0:c0 + 1], drift)[..., 0])
            return out
    return logits


# A surface tapers to a pixel or two at its end: extending it with its last column's logits draws a
# line that does not survive the way back to the source (session 15: an end click 5 source columns
# past a femoral head's end added 1 logit pixel). The thickest of its last few columns lends instead.
DONOR_COLUMNS = 5


def _donor_column(mask: np.ndarray, c0: int, run: tuple[int, int], inwards: int) -> tuple[int, tuple[int, int]]:
    """The column (and its run) that lends its logits to an extension from the surface end at `c0`:
    the thickest run among the DONOR_COLUMNS columns from c0 inwards, each the run nearest to the
    one before (the same surface), stopping at a column without mask."""
    best, cur = (c0, run), run
    for c in range(c0 + inwards, c0 + inwards * DONOR_COLUMNS, inwards):
        if not 0 <= c < mask.shape[1]:
            break
        nxt = run_at(mask[:, c], (cur[0] + cur[1]) / 2.0)
        if nxt is None or nxt[0] > cur[1] + 1 or nxt[1] < cur[0] - 1:  # not touching: another part
            break
        cur = nxt
        if cur[1] - cur[0] > best[1][1] - best[1][0]:
            best = (c, cur)
    return best


def _is_mid_run(column: np.ndarray, y: float) -> bool:
    """The click lies in a mask run, a pixel or more inside both its edges and within a pixel of its
    middle: a reader clicking the middle of a run says none of it belongs there (a click on a strip
    along one edge lands on that edge's pixels)."""
    run = run_at(column, y)
    return run is not None and run[0] + 1 <= y <= run[1] - 1 and abs(y - (run[0] + run[1]) / 2.0) <= 1.0


def cut_back_at_click(logits: torch.Tensor, x: float, y: float, threshold: float = 0.0,
                      false_pieces: bool = False, reach: float | None = None, run_col: int | None = None) -> torch.Tensor:
    """The surface ends at the click: the part of the mask's 8-connected piece under the click (or
    the nearest in its column) from the click's column outwards goes, away from the middle of the
    mask's largest piece (the surface: a click on a piece beyond its end at that piece's near end
    takes the whole piece); unless that part is more than `reach` columns long (None: any length).
    With `false_pieces`, a piece under a quarter of the largest's size goes whole (a point click on a
    false part; a second bone is not that small), and so does one apart from the largest clicked in
    its middle half (a click near a piece's end says where it ends). Other parts in those columns stay.
    run_col: the logit column whose run under the click is cut (None: the click's nearest)."""
    side = logits.shape[-1]
    mask = (logits[0, 0] > threshold).cpu().numpy()
    col = int(np.clip(round(x), 0, side - 1)) if run_col is None else run_col
    run = run_at(mask[:, col], y)
    if run is None:
        return logits
    pieces, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    piece = pieces == pieces[int(np.clip(round(y), run[0], run[1])), col]
    largest = pieces == 1 + int(np.argmax(ndimage.sum(mask, pieces, range(1, n + 1))))
    cols = np.nonzero(piece.any(axis=0))[0]
    # A click in the middle half of a piece other than the largest says the piece is not bone (near
    # its end, it says where the piece ends: a second bone's overrun).
    inner = min(col - cols[0], cols[-1] - col) > (cols[-1] - cols[0] + 1) / 4.0
    end = None  # (last kept logit column, the click's distance from it, the cut's direction)
    if false_pieces and (piece.sum() * 4 <= largest.sum() or (inner and not (piece & largest).any())):
        cut = piece
    else:
        outwards = col >= np.nonzero(largest)[1].mean()
        if reach is not None and (cols[-1] - col if outwards else col - cols[0]) > reach:  # mid-surface: not an end
            return logits
        last = int(np.clip(np.floor(x) if outwards else np.ceil(x), 0, side - 1))  # the near side of the click
        cut, span = np.zeros_like(piece), slice(last + 1, cols[-1] + 1) if outwards else slice(cols[0], last)
        cut[:, span] = piece[:, span]
        end = (last, abs(x - last), 1 if outwards else -1)
    below = torch.full_like(logits, threshold - 1.0)
    out = torch.where(torch.as_tensor(cut, device=logits.device)[None, None], torch.minimum(logits, below), logits)
    return out if end is None else _end_between_columns(out, piece[:, end[0]], *end, threshold)


def _end_between_columns(logits: torch.Tensor, rows: np.ndarray, last: int, frac: float, step: int,
                         threshold: float, margin: float = 0.5, floor: float = 50.0) -> torch.Tensor:
    """The mask reaches the source through bilinear upsampling: the surface ends `frac` of the way from
    logit column `last` (kept; `rows`: its rows of the piece) to `last + step` (cut), which goes just low
    enough to put the clicked pixel `margin` under the threshold and keep the one before it (past
    `floor` under it, the kept column is lowered too)."""
    nxt = last + step
    if not 0 <= nxt < logits.shape[-1] or not rows.any():
        return logits
    out, sel = logits.clone(), torch.as_tensor(rows, device=logits.device)
    a, b, target = out[0, 0, sel, last], out[0, 0, sel, nxt], threshold - margin
    need = (target - (1 - frac) * a) / frac if frac > 1e-6 else torch.full_like(a, -math.inf)
    b = torch.minimum(b, need.clamp(min=threshold - floor))
    a = torch.minimum(a, (target - frac * b) / max(1 - frac, 1e-6))
    out[0, 0, sel, last], out[0, 0, sel, nxt] = a, b
    return out


def hold_point_clicks(logits: torch.Tensor, coords_px: np.ndarray, labels: np.ndarray, input_size: int,
                      threshold: float = 0.0, window_px: float = HOLD_WINDOW_PX) -> torch.Tensor:
    """Point clicks whose pixel is still on the wrong side of `threshold` move the nearest edge to
    them (a tapered local edge move, only the change that reaches the click kept); a foreground
    click just off the end of a surface extends it (`extend_to_click`); clicks the mask already
    obeys, and clicks far from any edge, change nothing. coords_px: (P, 2) model-input pixels;
    labels (P,) 1 foreground, 0 background."""
    side = logits.shape[-1]
    coords_px = np.asarray(coords_px, dtype=np.float64).reshape(-1, 2)
    cols = torch.arange(side, device=logits.device, dtype=logits.dtype)
    for xy, (x, y), label in zip(coords_px, _to_logit_px(coords_px, input_size, side), np.asarray(labels).reshape(-1)):
        col = int(np.clip(round(x), 0, side - 1))
        if (_value_at(logits, x, y) > threshold) == bool(label):
            continue
        # A little past the click: a sub-pixel shift of a sharp edge can stop just short of it.
        if label and not (logits[0, 0, :, col] > threshold).any():  # beyond the end of a surface
            logits = keep_changes_at_clicks(logits, extend_to_click(logits, x, y, threshold), xy[None], input_size,
                                            threshold, reach_px=1.0, margin_px=1)
            continue
        if not label and _is_mid_run((logits[0, 0, :, col] > threshold).cpu().numpy(), y):  # no bone here at all
            logits = cut_back_at_click(logits, x, y, threshold, false_pieces=True, reach=HOLD_CUT_REACH_PX)
            continue
        moved = move_edge(logits, x, y, bool(label), threshold, reach=HOLD_REACH_PX, past=HOLD_PAST_PX)
        weight = (1.0 - (cols - col).abs() / (window_px + 1.0)).clamp(min=0.0)
        moved = logits + weight * (moved - logits)
        # Only the change that reaches the click: the shift also moves other parts in its columns.
        logits = keep_changes_at_clicks(logits, moved, xy[None], input_size, threshold, reach_px=1.0, margin_px=1)
    return logits


def apply_end_clicks(logits: torch.Tensor, coords_px: np.ndarray, input_size: int, threshold: float = 0.0) -> torch.Tensor:
    """End clicks in order: the surface ends at each. In a column holding mask, the surface is cut back
    to the click (`cut_back_at_click`); in one without, the nearest surface end within END_REACH_PX
    columns (and rows) is extended to the click (`extend_to_click`). coords_px: (N, 2) model-input
    pixels."""
    side = logits.shape[-1]
    for x, y in _to_logit_px(coords_px, input_size, side):
        # The clicked source column shows mask: cut back to the click (the run is found in the logit
        # column that holds it); otherwise the surface goes on to the click.
        if (_column_at(logits, x) > threshold).any():
            cols = [int(np.clip(c, 0, side - 1)) for c in (round(x), np.floor(x), np.ceil(x))]
            logits = cut_back_at_click(logits, x, y, threshold, run_col=next(
                (c for c in cols if (logits[0, 0, :, c] > threshold).any()), cols[0]))
        else:
            logits = extend_to_click(logits, x, y, threshold, reach=END_REACH_PX, depth_reach=END_REACH_PX)
    return logits

