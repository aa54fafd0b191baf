"""A nightly run seen by a reader: its instances, which need review first, and the review progress.

Reads the run folder the nightly flow wrote (`nightly_instances.parquet` or `.csv`, and the audit's
`audit/audit_studies.csv` when the audit ran on it). UIDs and measurements only, never patient data.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# For rows without the model's own floor (checkpoints trained before it existed, older runs).
DEFAULT_CONFIDENCE_THRESHOLD = 0.6
RUN_NAME = re.compile(r"^nightly-[0-9A-Za-z-]{1,80}$")


class ReviewNotFound(LookupError):
    """An unknown run or instance (the web layer answers 404)."""


@dataclass(frozen=True)
class WorklistItem:
    """One instance of a run, as the worklist shows it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    source_path: str
    n_frames: int
    confidence: float | None
    confidence_floor: float | None  # the score under which this item is "low-confidence"
    frames_with_mask: int
    seg_sop_uid: str | None
    reasons: tuple[str, ...]  # why it needs review: "low-confidence", "empty-mask", "audit-flagged"
    row_spacing_mm: float | None = None
    column_spacing_mm: float | None = None
    box: tuple[float, float, float, float] | None = None
    status: str = "to-do"  # "to-do", or the review outcome: "accepted", "rejected"

    @property
    def needs_review(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class NightlyRun:
    """A run folder and what the reader can review in it."""

    run_id: str
    directory: Path
    items: tuple[WorklistItem, ...] = field(default_factory=tuple)

    def item(self, sop_uid: str) -> WorklistItem:
        for item in self.items:
            if item.sop_uid == sop_uid:
                return item
        raise ReviewNotFound(f"instance {sop_uid} is not in run {self.run_id}")

    def seg_path(self, item: WorklistItem) -> Path | None:
        """The nightly SEG copy the run folder keeps (segs/<study>/<SEG SOP UID>.dcm), if any."""
        if not item.seg_sop_uid:
            return None
        path = self.directory / "segs" / item.study_uid / f"{item.seg_sop_uid}.dcm"
        return path if path.is_file() else None


def _read_table(run_dir: Path, stem: str) -> pd.DataFrame | None:
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        path = run_dir / f"{stem}{suffix}"
        if path.is_file():
            return reader(path)
    return None


def flagged_studies(run_dir: Path) -> set[str]:
    """Studies the audit flagged (mean Dice under its threshold); empty when no audit ran here."""
    table = _read_table(run_dir / "audit", "audit_studies")
    if table is None or "flagged" not in table:
        return set()
    return {str(uid) for uid, flag in zip(table.study_uid, table.flagged) if bool(flag)}


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def load_run(run_dir: Path, confidence_threshold: float | None = None,
             statuses: dict[str, str] | None = None) -> NightlyRun:
    """The run's reviewable instances (those the nightly segmented), needs-review first.

    confidence_threshold: flags every instance under it; None (default) flags an instance under its
    model's own floor (the `confidence_floor` column: the lowest score the model gave its training
    images), or under DEFAULT_CONFIDENCE_THRESHOLD where the row has no floor.
    `statuses` maps SOP Instance UID -> review outcome (from the review ledger).
    """
    table = _read_table(run_dir, "nightly_instances")
    if table is None:
        raise ReviewNotFound(f"{run_dir.name} has no nightly_instances table")
    flagged = flagged_studies(run_dir)
    statuses = statuses or {}
    items = []
    for row in table.to_dict("records"):
        if row.get("status") != "ok" or not isinstance(row.get("sop_uid"), str):
            continue
        confidence = _number(row.get("confidence"))
        floor = confidence_threshold
        if floor is None:
            floor = _number(row.get("confidence_floor"))
            floor = DEFAULT_CONFIDENCE_THRESHOLD if floor is None else floor
        frames_with_mask = int(_number(row.get("frames_with_mask")) or 0)
        reasons = []
        if confidence is not None and confidence < floor:
            reasons.append("low-confidence")
        if frames_with_mask == 0:
            reasons.append("empty-mask")
        if row["study_uid"] in flagged:
            reasons.append("audit-flagged")
        corners = [_number(row.get(k)) for k in ("box_x0", "box_y0", "box_x1", "box_y1")]
        items.append(WorklistItem(
            study_uid=str(row["study_uid"]), series_uid=str(row["series_uid"]), sop_uid=row["sop_uid"],
            source_path=str(row.get("path") or ""), n_frames=int(_number(row.get("n_frames")) or 1),
            confidence=confidence, confidence_floor=floor, frames_with_mask=frames_with_mask,
            seg_sop_uid=row.get("seg_sop_uid") if isinstance(row.get("seg_sop_uid"), str) else None,
            reasons=tuple(reasons), row_spacing_mm=_number(row.get("row_spacing_mm")),
            column_spacing_mm=_number(row.get("column_spacing_mm")),
            box=tuple(corners) if all(c is not None for c in corners) else None,  # type: ignore[arg-type]
            status=statuses.get(row["sop_uid"], "to-do")))
    items.sort(key=lambda i: (not i.needs_review, i.confidence if i.confidence is not None else -1.0, i.sop_uid))
    return NightlyRun(run_dir.name, run_dir, tuple(items))


def list_runs(runs_dir: Path) -> list[str]:
    """Run folder names under runs_dir that hold a nightly table, newest (by name) first."""
    if not runs_dir.is_dir():
        return []
    found = [p.name for p in runs_dir.iterdir() if p.is_dir() and RUN_NAME.match(p.name)
             and any((p / f"nightly_instances{s}").is_file() for s in (".parquet", ".csv"))]
    return sorted(found, key=lambda name: ((runs_dir / name).stat().st_mtime, name), reverse=True)


def run_directory(runs_dir: Path, run_id: str) -> Path:
    """The folder of a known run; anything else (unknown name, path tricks) is ReviewNotFound."""
    if not RUN_NAME.match(run_id) or run_id not in list_runs(runs_dir):
        raise ReviewNotFound(f"unknown run {run_id!r}")
    return runs_dir / run_id
