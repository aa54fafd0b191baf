"""How `semi` turns a reader's clicks into an edit of the mask `auto` showed.

The decoder is re-run with the point clicks (sam2rad/model.py), but its answer is not taken whole:
each point click keeps only the decoder's changes that touch it, in its own direction
(sam2rad/click_edit.py), and a point the decoder left on the wrong side is held by a local edge move.
Edge clicks move one edge of the whole surface to the click, shift clicks the whole surface with that
edge, end clicks say where the surface ends (sam2rad/edge_click.py).

Two orders:
- in the reader's order (`Prompts.order` given): each click edits the mask the ones before it made,
  the mask the reader saw when clicking. Why: an edge click measures its move from the edge in its
  own column; measured on `auto`'s mask instead, after a point click had already moved that column,
  it moved the whole surface too far (A -> B long bone 16: the deep edge ended 3-4 rows too deep).
- by tool (`order` None, the order before session 20): shift clicks, edge clicks, then the point clicks' changes,
  then held points, then end clicks, which have the last word on extent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbones.base import ImageGeometry
from .click_edit import keep_changes_at_clicks
from .edge_click import apply_edge_clicks, apply_end_clicks, hold_point_clicks
from .prompts import Prompts


@dataclass(frozen=True)
class ClickEditSettings:
    input_size: int  # the model input's side, model pixels
    threshold: float  # the mask threshold on the logits
    reach_px: float | None  # a decoder change is a click's when this near it; None: the decoder's mask whole
    hold_window_px: float | None  # a held point's local edge move; None: points are not held


def edit_with_clicks(base: torch.Tensor, decoded: torch.Tensor, p: Prompts, geom: ImageGeometry,
                     s: ClickEditSettings, whole: bool = False) -> torch.Tensor:
    """`base`: auto's logits (1, 1, h, w) as auto showed them; `decoded`: the decoder's and refiner's
    logits with the reader's points. whole: the decoded mask is taken whole (a reader's box or mask
    prompt), and only the surface tools and held points edit it."""
    start = decoded if whole else base
    if p.order is None:
        return _by_tool(start, decoded, p, geom, s, whole)
    out, seen = start, {"point": 0, "edge": 0, "end": 0, "shift": 0}
    for kind in p.order:
        i = seen[kind]
        seen[kind] += 1
        if kind in ("edge", "shift"):
            xy, labels = (p.edges, p.edge_labels) if kind == "edge" else (p.shifts, p.shift_labels)
            out = apply_edge_clicks(out, geom.to_input(xy[i:i + 1]), labels[i:i + 1], s.input_size, s.threshold,
                                    geom.row_scale, translate=kind == "shift")
        elif kind == "end":
            out = apply_end_clicks(out, geom.to_input(p.ends[i:i + 1]), s.input_size, s.threshold)
        else:
            out = _point(start, decoded, out, p, i, i + 1, geom, s, whole)
    return out


def _point(base: torch.Tensor, decoded: torch.Tensor, out: torch.Tensor, p: Prompts, i: int, j: int,
           geom: ImageGeometry, s: ClickEditSettings, whole: bool) -> torch.Tensor:
    """Point clicks i..j-1: the decoder's changes that touch them, then the ones it left wrong held."""
    if not whole and s.reach_px is not None:
        xy = p.points[i:j] * geom.scale  # as the decoder was prompted
        out = keep_changes_at_clicks(base, decoded, xy, s.input_size, s.threshold, s.reach_px, onto=out,
                                     labels=p.labels[i:j])
    if s.hold_window_px is not None:
        out = hold_point_clicks(out, geom.to_input(p.points[i:j]), p.labels[i:j], s.input_size, s.threshold,
                                s.hold_window_px)
    return out


def _by_tool(start: torch.Tensor, decoded: torch.Tensor, p: Prompts, geom: ImageGeometry,
             s: ClickEditSettings, whole: bool) -> torch.Tensor:
    out = start
    if p.shifts is not None:  # the whole surface first, then its edges
        out = apply_edge_clicks(out, geom.to_input(p.shifts), p.shift_labels, s.input_size, s.threshold, geom.row_scale,
                                translate=True)
    if p.edges is not None:
        out = apply_edge_clicks(out, geom.to_input(p.edges), p.edge_labels, s.input_size, s.threshold, geom.row_scale)
    if p.points is not None:
        out = _point(start, decoded, out, p, 0, len(p.points), geom, s, whole)
    return out if p.ends is None else apply_end_clicks(out, geom.to_input(p.ends), s.input_size, s.threshold)
