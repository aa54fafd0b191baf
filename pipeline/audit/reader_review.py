"""The audit report's "AI vs reader" section, from a run's review correction table.

The review station writes `<run>/review/review_corrections.{parquet,csv}`: per reviewed instance the
outcome, AI-vs-reviewed Dice and HD95, clicks and seconds. This module sums it up (counts, mean and
median Dice/HD95, clicks per accepted review, seconds per review, the instances readers changed most)
and, from the audit's own `reviewed` rows, the reviewed SEGs against the reference beside the AI SEGs
of the same instances. UIDs, codes and measurements only: the table holds no reader names.
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.audit.rows import AuditInstanceRow, ComparisonStatus
from pipeline.review.corrections import read_corrections

MOST_CHANGED = 10


@dataclass(frozen=True)
class ChangedInstance:
    study_uid: str
    sop_uid: str
    seg_sop_uid: str | None
    mode: str | None
    dice: float | None
    hd95: float | None
    unit: str | None
    frames_changed: int | None
    clicks: int
    seconds: float


@dataclass(frozen=True)
class ReaderReview:
    summary: dict[str, float | int | str | None]  # reader_* keys, merged into the audit summary
    most_changed: tuple[ChangedInstance, ...]  # lowest AI-vs-reader Dice first


def _floats(values) -> np.ndarray:
    arr = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    return arr[np.isfinite(arr)]


def _mean_median(values) -> tuple[float | None, float | None]:
    arr = _floats(values)
    return (float(arr.mean()), float(np.median(arr))) if arr.size else (None, None)


def _value(v: object) -> object:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else v


def reader_review(run_dir: Path, instances: Sequence[AuditInstanceRow], n_most_changed: int = MOST_CHANGED
                  ) -> ReaderReview | None:
    """The run's review summary, or None when the run has no correction table (nobody reviewed)."""
    table = read_corrections(Path(run_dir))
    if table.empty:
        return None
    accepted = table[table.outcome == "accepted"]
    rejected = table[table.outcome == "rejected"]
    units = set(accepted.distance_unit.dropna())
    unit = "mm" if "mm" in units else ("px" if units else None)
    in_unit = accepted[accepted.distance_unit == unit]
    dice_mean, dice_median = _mean_median(accepted.dice)
    hd95_mean, hd95_median = _mean_median(in_unit.hd95)
    seconds_mean, seconds_median = _mean_median(table.seconds)
    clicks = _floats(accepted.clicks)
    reasons = rejected.reason.fillna("other").value_counts().sort_index()
    summary: dict[str, float | int | str | None] = {
        "reader_n_reviewed": len(table), "reader_n_accepted": len(accepted), "reader_n_rejected": len(rejected),
        "reader_n_semi": int((accepted["mode"] == "semi").sum()),
        "reader_n_manual": int((accepted["mode"] == "manual").sum()),
        "reader_dice_mean": dice_mean, "reader_dice_median": dice_median,
        "reader_hd95_mean": hd95_mean, "reader_hd95_median": hd95_median, "reader_distance_unit": unit,
        "reader_n_other_unit": len(accepted) - len(in_unit),
        "reader_clicks_per_accepted": float(clicks.mean()) if clicks.size else None,
        "reader_seconds_per_review_mean": seconds_mean, "reader_seconds_per_review_median": seconds_median,
        "reader_reject_reasons": ", ".join(f"{k}: {int(v)}" for k, v in reasons.items()) or None,
    }
    # The reviewed SEGs against the reference, beside the AI SEGs of the same source instances.
    reviewed = {r.source_sop_uid: r.dice for r in instances
                if r.status == ComparisonStatus.REVIEWED and r.dice is not None}
    ai = {r.source_sop_uid: r.dice for r in instances
          if r.status == ComparisonStatus.OK and r.dice is not None and r.source_sop_uid in reviewed}
    both = sorted(set(reviewed) & set(ai))
    summary.update(reader_n_vs_reference=len(both),
                   reader_vs_reference_dice_mean=float(np.mean([reviewed[u] for u in both])) if both else None,
                   ai_vs_reference_dice_mean_same=float(np.mean([ai[u] for u in both])) if both else None)
    worst = accepted.assign(_d=pd.to_numeric(accepted.dice, errors="coerce").fillna(1.0))
    worst = worst.sort_values(["_d", "sop_uid"]).head(n_most_changed)
    changed = tuple(ChangedInstance(
        study_uid=str(r["study_uid"]), sop_uid=str(r["sop_uid"]), seg_sop_uid=_value(r["seg_sop_uid"]),
        mode=_value(r["mode"]), dice=_value(r["dice"]), hd95=_value(r["hd95"]), unit=_value(r["distance_unit"]),
        frames_changed=None if _value(r["frames_changed"]) is None else int(r["frames_changed"]),
        clicks=int(r["clicks"]), seconds=float(r["seconds"])) for r in worst.to_dict("records"))
    return ReaderReview(summary, changed)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    f = float(value)  # type: ignore[arg-type]
    return "–" if math.isnan(f) else ("∞" if math.isinf(f) else f"{f:.{digits}f}")


def reader_section(review: ReaderReview | None) -> str:
    """The report's "AI vs reader" section (HTML, the report's CSS classes); empty without a review."""
    if review is None:
        return ""
    s = review.summary
    unit = s.get("reader_distance_unit") or "px"
    cards = "".join(
        f"<div class='card'><div class='v'>{_e(v)}</div><div class='k'>{_e(k)}</div></div>" for v, k in (
            (s["reader_n_reviewed"], "instances reviewed"), (s["reader_n_accepted"], "accepted"),
            (s["reader_n_rejected"], "rejected"), (_num(s["reader_dice_mean"]), "mean AI-vs-reader Dice"),
            (_num(s["reader_clicks_per_accepted"], 1), "clicks per accepted review"),
            (_num(s["reader_seconds_per_review_mean"], 0) + " s", "per review (mean)")))
    stats = (
        "<table><thead><tr><th>AI vs reader (accepted reviews)</th><th class='num'>mean</th>"
        "<th class='num'>median</th><th>unit</th></tr></thead><tbody>"
        f"<tr><td>Dice</td><td class='num'>{_num(s['reader_dice_mean'])}</td>"
        f"<td class='num'>{_num(s['reader_dice_median'])}</td><td></td></tr>"
        f"<tr><td>HD95</td><td class='num'>{_num(s['reader_hd95_mean'], 2)}</td>"
        f"<td class='num'>{_num(s['reader_hd95_median'], 2)}</td><td>{_e(unit)}</td></tr>"
        f"<tr><td>seconds per review</td><td class='num'>{_num(s['reader_seconds_per_review_mean'], 1)}</td>"
        f"<td class='num'>{_num(s['reader_seconds_per_review_median'], 1)}</td><td>s</td></tr></tbody></table>")
    notes = [f"Accepted: {s['reader_n_semi']} corrected from the AI (semi), {s['reader_n_manual']} drawn from "
             "scratch (manual). Dice 1 means the reader accepted the AI's masks unchanged."]
    if s.get("reader_reject_reasons"):
        notes.append(f"Reject reasons: {s['reader_reject_reasons']}.")
    if s.get("reader_n_vs_reference"):
        notes.append(f"Against the reference, on the {s['reader_n_vs_reference']} reviewed instance(s) with one: "
                     f"reviewed SEGs mean Dice {_num(s['reader_vs_reference_dice_mean'])}, the AI SEGs "
                     f"{_num(s['ai_vs_reference_dice_mean_same'])}. Reviewed SEGs are not in the audit's means.")
    rows = "".join(
        f"<tr><td class='uid'>{_e(c.sop_uid)}</td><td class='uid'>{_e(c.study_uid)}</td>"
        f"<td class='uid'>{_e(c.seg_sop_uid or '–')}</td><td>{_e(c.mode or '')}</td>"
        f"<td class='num'>{_num(c.dice)}</td><td class='num'>{_num(c.hd95, 2)} {_e(c.unit or '')}</td>"
        f"<td class='num'>{'–' if c.frames_changed is None else c.frames_changed}</td>"
        f"<td class='num'>{c.clicks}</td><td class='num'>{_num(c.seconds, 0)}</td></tr>" for c in review.most_changed)
    changed = ("<p class='note'>No accepted reviews.</p>" if not rows else
               "<div class='scroll'><table><thead><tr><th>source SOP Instance UID</th><th>study UID</th>"
               "<th>reviewed SEG UID</th><th>mode</th><th class='num'>AI-vs-reader Dice</th><th class='num'>HD95</th>"
               "<th class='num'>frames changed</th><th class='num'>clicks</th><th class='num'>s</th></tr></thead>"
               f"<tbody>{rows}</tbody></table></div>")
    return ("<h2 id='ai-vs-reader'>AI vs reader</h2>"
            f"<div class='cards'>{cards}</div><div class='panel' style='margin-top:10px'>{stats}"
            + "".join(f"<p class='note'>{_e(n)}</p>" for n in notes) + "</div>"
            "<h3>Instances the readers changed most</h3>" + changed)
