"""Aggregates of the instance rows: per study (flagged below the threshold) and over the whole audit."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from pipeline.audit.comparison import finite_mean
from pipeline.audit.rows import AuditInstanceRow, AuditStudyRow, ComparisonStatus
from pipeline.tables import rows_by_study


def _stats(values: Iterable[float | None]) -> tuple[float | None, float | None, float | None, float | None, int]:
    """(mean, median, min, max) over finite values, and how many were infinite."""
    arr = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                     dtype=float)
    n_inf = int(np.isinf(arr).sum())
    arr = arr[np.isfinite(arr)]
    if not arr.size:
        return None, None, None, None, n_inf
    return float(arr.mean()), float(np.median(arr)), float(arr.min()), float(arr.max()), n_inf


def _distance_unit(rows: Sequence[AuditInstanceRow]) -> tuple[str | None, list[AuditInstanceRow]]:
    """The unit distance aggregates use (mm when any row has it) and the rows in that unit."""
    units = {r.unit for r in rows if r.unit}
    unit = "mm" if "mm" in units else ("px" if units else None)
    return unit, [r for r in rows if r.unit == unit]


def study_rows(instances: Sequence[AuditInstanceRow], threshold: float) -> list[AuditStudyRow]:
    """Aggregate instance rows by study (rows with no known study are left out), worst first."""
    result = []
    for study_uid, rows in rows_by_study(instances).items():
        ok = [r for r in rows if r.status == ComparisonStatus.OK]
        dice = [float(r.dice) for r in ok if r.dice is not None]
        unit, in_unit = _distance_unit(ok)
        mean_dice = float(np.mean(dice)) if dice else None
        result.append(AuditStudyRow(
            study_uid=study_uid,
            n_instances=len(ok),
            n_frames=sum(r.n_frames or 0 for r in ok),
            n_missing_reference=sum(r.status == ComparisonStatus.MISSING_REFERENCE for r in rows),
            n_missing_seg=sum(r.status == ComparisonStatus.MISSING_SEG for r in rows),
            n_failed=sum(r.status == ComparisonStatus.FAILED for r in rows),
            mean_dice=mean_dice,
            min_dice=min(dice) if dice else None,
            median_dice=float(np.median(dice)) if dice else None,
            mean_iou=float(np.mean([r.iou for r in ok])) if ok else None,  # type: ignore[arg-type]
            mean_hd95=finite_mean([r.hd95 for r in in_unit]) if in_unit else None,  # type: ignore[misc]
            mean_assd=finite_mean([r.assd for r in in_unit]) if in_unit else None,  # type: ignore[misc]
            distance_unit=unit,
            threshold=float(threshold),
            flagged=mean_dice is not None and mean_dice < threshold,
        ))
    result.sort(key=lambda s: (s.mean_dice is None, s.mean_dice if s.mean_dice is not None else 0.0, s.study_uid))
    return result


def summarise(instances: Sequence[AuditInstanceRow]) -> dict[str, float | int | str | None]:
    """Overall summary over compared instances.

    Dice and IoU: mean, median, min, max. HD95 and ASSD: mean and median over finite instance values
    in `distance_unit` (mm if any instance has a spacing, else px); `n_infinite_distance` counts
    instances left out because a frame's object was missed or hallucinated, and
    `n_other_unit` those measured in the other unit.
    """
    ok = [r for r in instances if r.status == ComparisonStatus.OK]
    summary: dict[str, float | int | str | None] = {"n_instances": len(ok),
                                                    "n_frames": sum(r.n_frames or 0 for r in ok)}
    for metric in ("dice", "iou"):
        mean, median, lo, hi, _ = _stats(getattr(r, metric) for r in ok)
        summary.update({f"{metric}_mean": mean, f"{metric}_median": median, f"{metric}_min": lo, f"{metric}_max": hi})
    unit, in_unit = _distance_unit(ok)
    n_inf = 0
    for metric in ("hd95", "assd"):
        mean, median, lo, hi, inf = _stats(getattr(r, metric) for r in in_unit)
        summary.update({f"{metric}_mean": mean, f"{metric}_median": median, f"{metric}_min": lo, f"{metric}_max": hi})
        n_inf = max(n_inf, inf)
    summary.update(distance_unit=unit, n_infinite_distance=n_inf, n_other_unit=len(ok) - len(in_unit))
    return summary
