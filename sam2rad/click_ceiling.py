"""The ceiling of one-edge click tools: how many clicks a reader who knows the truth would need.

Why: the issue asks for NoC@90 <= 2, and the reader that the evaluation simulates follows fixed
rules. Before a rule or a tool is tuned further, this says whether the goal is within reach of the
tools' kind at all. An oracle reader chooses, click by click, the one move that raises Dice most,
from moves made exactly (whole pixels, no decoder, no logits):
- "surface": one edge (shallow or deep) of every column holding mask moves by the same 1-3 rows, as
  an edge click moves the whole surface (sam2rad/edge_click.py; here without the normal's scaling);
- "end": a stretch of columns where only the mask or only the truth has a surface is set right, as
  an end click cuts a surface back or extends it;
- "local": one edge moves by its error at one column, over LOCAL_HALF_WIDTH columns either side,
  as a held point click moves an edge locally (there tapered);
- "shift": both edges of every column holding mask move by the same 1-3 rows, as a whole-surface
  (shift) click moves the surface without changing its thickness (session 20).
Masks are taken one run per column (first to last row), which bone surfaces are; the starting
Dice is that of this filled mask. Greedy choice is not always the best sequence, and the real tools
can do what these moves cannot (point clicks through the decoder, edge moves scaled along the edge's
normal), so this is an estimate of the ceiling, not a bound: on B -> B the simulated reader beats
the oracle's surface and end moves alone (README, session 16).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .edge_click import column_ends

TOOLS = ("surface", "end", "local", "shift")
LOCAL_HALF_WIDTH = 8  # source columns either side of the clicked one
SURFACE_MOVES = (-3, -2, -1, 1, 2, 3)  # rows


@dataclass(frozen=True)
class OracleTrace:
    dice: list[float]  # Dice before any click (index 0) and after each click
    tools: list[str]  # the tool of each click

    def clicks_to(self, target: float, cap: int) -> int:
        """Clicks until Dice >= target (cap when never within the trace)."""
        return next((k for k, d in enumerate(self.dice) if d >= target and k <= cap), cap)


def column_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) row of each column's mask; -1 and -2 where a column holds none (an empty run)."""
    first, last, has = column_ends(mask)
    return np.where(has, first, -1), np.where(has, last, -2)


def runs_dice(pf: np.ndarray, pl: np.ndarray, gf: np.ndarray, gl: np.ndarray) -> float:
    """Dice of two one-run-per-column masks, from their runs alone."""
    inter = np.clip(np.minimum(pl, gl) - np.maximum(pf, gf) + 1, 0, None).sum()
    total = np.clip(pl - pf + 1, 0, None).sum() + np.clip(gl - gf + 1, 0, None).sum()
    return float(2 * inter / total) if total else 1.0


def _stretches(sel: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True columns."""
    edges = np.diff(np.concatenate([[0], sel.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1))


def _moved(pf, pl, cols, edge: int | None, by) -> tuple[np.ndarray, np.ndarray]:
    """Edge 0 (shallow) or 1 (deep) of `cols` moved `by` rows; edge None: both, the run shifted."""
    qf, ql = pf.copy(), pl.copy()
    for e, q in ((0, qf), (1, ql)):
        if edge is None or edge == e:
            q[cols] += by
    bad = qf > ql  # an edge moved past the other: that column keeps its run
    qf[bad], ql[bad] = pf[bad], pl[bad]
    return qf, ql


def candidate_moves(pf, pl, gf, gl, tools: Sequence[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Every move of the given tools on runs (pf, pl) towards the truth's (gf, gl)."""
    has, g_has = pf >= 0, gf >= 0
    if "end" in tools:
        for sel in (~has & g_has, has & ~g_has):
            for a, b in _stretches(sel):
                qf, ql = pf.copy(), pl.copy()
                qf[a:b + 1], ql[a:b + 1] = gf[a:b + 1], gl[a:b + 1]
                yield "end", qf, ql
    if "surface" in tools and has.any():
        cols = np.nonzero(has)[0]
        for edge in (0, 1):
            for by in SURFACE_MOVES:
                yield ("surface", *_moved(pf, pl, cols, edge, by))
    if "shift" in tools and has.any():
        cols = np.nonzero(has)[0]
        for by in SURFACE_MOVES:
            yield ("shift", *_moved(pf, pl, cols, None, by))
    if "local" in tools:
        both = has & g_has
        for edge, err in ((0, pf - gf), (1, pl - gl)):
            for c in np.nonzero(both & (err != 0))[0]:
                lo, hi = max(0, c - LOCAL_HALF_WIDTH), min(len(pf), c + LOCAL_HALF_WIDTH + 1)
                cols = lo + np.nonzero(has[lo:hi])[0]
                yield ("local", *_moved(pf, pl, cols, edge, -err[c]))


def oracle_clicks(pred: np.ndarray, gt: np.ndarray, tools: Sequence[str] = TOOLS, target: float = 0.90,
                  cap: int = 10) -> OracleTrace:
    """Greedy oracle clicks on `pred` until Dice reaches `target`, `cap` clicks are made, or no move
    helps. tools: any of TOOLS."""
    unknown = set(tools) - set(TOOLS)
    if unknown:
        raise ValueError(f"unknown tools {sorted(unknown)}; choose from {TOOLS}")
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must be 2-D masks of one shape, got {pred.shape} and {gt.shape}")
    (pf, pl), (gf, gl) = column_runs(pred), column_runs(gt)
    dice, used = [runs_dice(pf, pl, gf, gl)], []
    while dice[-1] < target and len(used) < cap:
        best = max(((runs_dice(qf, ql, gf, gl), tool, qf, ql) for tool, qf, ql in candidate_moves(pf, pl, gf, gl, tools)),
                   key=lambda m: m[0], default=None)
        if best is None or best[0] <= dice[-1]:
            break
        dice.append(best[0])
        used.append(best[1])
        pf, pl = best[2], best[3]
    return OracleTrace(dice, used)
