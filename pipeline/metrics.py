"""Per-instance and per-study tables of a run, written as Parquet and CSV.

Rows carry UIDs, counts and measurements only: no patient names, IDs or dates (no PHI), so the
tables can be shared with the people who audit the model.
"""
from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.calibration import Calibration
from pipeline.ingest import IngestIssue, IssueKind, UsInstance
from pipeline.seg.model_card import ModelCard
from pipeline.seg.writer import WrittenSeg
from pipeline.atomic import replace_atomically


class RowStatus(str, enum.Enum):
    OK = "ok"
    SKIPPED = "skipped"
    FAILED = "failed"


class StudyStatus(str, enum.Enum):
    OK = "ok"  # every segmentable instance got a SEG
    PARTIAL = "partial"  # some did, some failed
    FAILED = "failed"  # none did
    SKIPPED = "skipped"  # nothing in the study was segmentable


@dataclass(frozen=True)
class PredictedBox:
    """The model's box prompt in full-frame pixel coordinates (x = column, y = row)."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        if not all(np.isfinite(v) for v in (self.x0, self.y0, self.x1, self.y1)):
            raise ValueError(f"box coordinates must be finite: {self}")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise ValueError(f"box ends before it starts: {self}")


@dataclass(frozen=True)
class MaskAreas:
    """Per-frame area of the union of all classes: mean and max over frames."""

    mean: float
    max: float
    unit: str
    frames_with_mask: int


def mask_areas(masks: np.ndarray, calibration: Calibration) -> MaskAreas:
    """Areas of (frames, rows, cols[, classes]) masks in mm^2, or pixels when uncalibrated."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 4:
        masks = masks.any(axis=-1)
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise ValueError(f"masks must be (frames, rows, cols[, classes]) with frames, got {masks.shape}")
    pixels = masks.reshape(masks.shape[0], -1).sum(axis=1).astype(np.float64)
    scale = calibration.pixel_area_mm2 or 1.0
    areas = pixels * scale
    return MaskAreas(float(areas.mean()), float(areas.max()), calibration.area_unit, int((pixels > 0).sum()))


@dataclass(frozen=True)
class InstanceMetrics:
    """One row per input file or instance: what happened to it and what the model found.

    Everything after `status` defaults to None: a skipped or failed row only fills what it knows.
    """

    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    path: str | None
    status: str
    error_code: str | None = None
    error: str | None = None
    n_frames: int | None = None
    calibration_source: str | None = None
    row_spacing_mm: float | None = None
    column_spacing_mm: float | None = None
    mode: str | None = None
    model_fingerprint: str | None = None
    mask_area_mean: float | None = None
    mask_area_max: float | None = None
    area_unit: str | None = None
    frames_with_mask: int | None = None
    box_x0: float | None = None
    box_y0: float | None = None
    box_x1: float | None = None
    box_y1: float | None = None
    confidence: float | None = None
    runtime_s: float | None = None
    seg_sop_uid: str | None = None
    seg_series_uid: str | None = None

    def __post_init__(self) -> None:
        RowStatus(self.status)  # raises ValueError for an unknown status
        if self.status != RowStatus.OK.value and not self.error:
            raise ValueError("a skipped or failed row needs an error/reason")

    @classmethod
    def for_result(
        cls,
        instance: UsInstance,
        masks: np.ndarray,
        model_card: ModelCard,
        runtime_s: float,
        *,
        box: PredictedBox | None = None,
        confidence: float | None = None,
        seg: WrittenSeg | None = None,
    ) -> "InstanceMetrics":
        """The row of an instance the model segmented (and, given `seg`, whose SEG was written)."""
        areas = mask_areas(masks, instance.calibration)
        cal = instance.calibration
        return cls(
            study_uid=instance.study_uid,
            series_uid=instance.series_uid,
            sop_uid=instance.sop_uid,
            path=str(instance.path) if instance.path else None,
            status=RowStatus.OK.value,
            error_code=None,
            error=None,
            n_frames=instance.n_frames,
            calibration_source=cal.source.value,
            row_spacing_mm=cal.row_spacing_mm,
            column_spacing_mm=cal.column_spacing_mm,
            mode=model_card.mode,
            model_fingerprint=model_card.fingerprint,
            mask_area_mean=areas.mean,
            mask_area_max=areas.max,
            area_unit=areas.unit,
            frames_with_mask=areas.frames_with_mask,
            box_x0=box.x0 if box else None,
            box_y0=box.y0 if box else None,
            box_x1=box.x1 if box else None,
            box_y1=box.y1 if box else None,
            confidence=None if confidence is None else float(confidence),
            runtime_s=float(runtime_s),
            seg_sop_uid=seg.sop_uid if seg else None,
            seg_series_uid=seg.series_uid if seg else None,
        )

    @classmethod
    def for_issue(
        cls, issue: IngestIssue, model_card: ModelCard | None = None, runtime_s: float | None = None
    ) -> "InstanceMetrics":
        """The row of a file that was skipped or failed (ingest, decode, model or SEG writing)."""
        status = RowStatus.SKIPPED if issue.kind is IssueKind.SKIPPED else RowStatus.FAILED
        return cls(
            study_uid=issue.study_uid,
            series_uid=issue.series_uid,
            sop_uid=issue.sop_uid,
            path=str(issue.path) if issue.path else None,
            status=status.value,
            error_code=issue.code.value,
            error=issue.reason,
            mode=model_card.mode if model_card else None,
            model_fingerprint=model_card.fingerprint if model_card else None,
            runtime_s=runtime_s,
        )

    @classmethod
    def for_failure(
        cls,
        instance: UsInstance,
        error: BaseException | str,
        model_card: ModelCard | None = None,
        runtime_s: float | None = None,
        error_code: str = "processing_error",
    ) -> "InstanceMetrics":
        """The row of an ingested instance that failed later (decode, prediction, SEG writing)."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        cal = instance.calibration
        return cls(
            study_uid=instance.study_uid,
            series_uid=instance.series_uid,
            sop_uid=instance.sop_uid,
            path=str(instance.path) if instance.path else None,
            status=RowStatus.FAILED.value,
            error_code=error_code,
            error=message or error_code,
            n_frames=instance.n_frames,
            calibration_source=cal.source.value,
            row_spacing_mm=cal.row_spacing_mm,
            column_spacing_mm=cal.column_spacing_mm,
            mode=model_card.mode if model_card else None,
            model_fingerprint=model_card.fingerprint if model_card else None,
            runtime_s=runtime_s,
        )


@dataclass(frozen=True)
class StudyMetrics:
    """One row per study: counts and aggregates over its instance rows."""

    study_uid: str
    status: str
    n_instances: int
    n_ok: int
    n_skipped: int
    n_failed: int
    n_frames: int
    n_calibrated: int
    mean_mask_area_mm2: float | None
    max_mask_area_mm2: float | None
    mean_mask_area_px: float | None
    mean_confidence: float | None
    runtime_s: float
    error_codes: str | None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def study_metrics(rows: Iterable[InstanceMetrics]) -> list[StudyMetrics]:
    """Aggregate instance rows by study (rows without a study UID, e.g. non-DICOM files, are left out)."""
    by_study: dict[str, list[InstanceMetrics]] = {}
    for row in rows:
        if row.study_uid:
            by_study.setdefault(row.study_uid, []).append(row)
    result = []
    for study_uid, study_rows in by_study.items():
        ok = [r for r in study_rows if r.status == RowStatus.OK.value]
        failed = [r for r in study_rows if r.status == RowStatus.FAILED.value]
        skipped = [r for r in study_rows if r.status == RowStatus.SKIPPED.value]
        if ok and failed:
            status = StudyStatus.PARTIAL
        elif ok:
            status = StudyStatus.OK
        elif failed:
            status = StudyStatus.FAILED
        else:
            status = StudyStatus.SKIPPED
        mm2 = [r for r in ok if r.area_unit == "mm2" and r.mask_area_mean is not None]
        px = [r for r in ok if r.area_unit == "px" and r.mask_area_mean is not None]
        codes = sorted({r.error_code for r in failed + skipped if r.error_code})
        result.append(
            StudyMetrics(
                study_uid=study_uid,
                status=status.value,
                n_instances=len(study_rows),
                n_ok=len(ok),
                n_skipped=len(skipped),
                n_failed=len(failed),
                n_frames=sum(r.n_frames or 0 for r in ok),
                n_calibrated=len(mm2),
                mean_mask_area_mm2=_mean([r.mask_area_mean for r in mm2]),  # type: ignore[misc]
                max_mask_area_mm2=max((r.mask_area_max for r in mm2), default=None),  # type: ignore[type-var]
                mean_mask_area_px=_mean([r.mask_area_mean for r in px]),  # type: ignore[misc]
                mean_confidence=_mean([r.confidence for r in ok if r.confidence is not None]),  # type: ignore[misc]
                runtime_s=float(sum(r.runtime_s or 0.0 for r in study_rows)),
                error_codes=",".join(codes) or None,
            )
        )
    return result


_PANDAS_DTYPES = {"str": "string", "int": "Int64", "float": "float64"}


def _pandas_dtype(annotation: str) -> str:
    """Nullable pandas dtype for a field annotated (as a string) 'str', 'int | None', ..."""
    return _PANDAS_DTYPES[annotation.replace("| None", "").strip()]


def to_frame(rows: Sequence[InstanceMetrics] | Sequence[StudyMetrics], row_type: type) -> pd.DataFrame:
    """A DataFrame with one column per dataclass field and stable dtypes, even with no rows."""
    columns = {f.name: _pandas_dtype(str(f.type)) for f in fields(row_type)}
    frame = pd.DataFrame([asdict(r) for r in rows], columns=list(columns))
    return frame.astype(columns)


@dataclass(frozen=True)
class MetricsTables:
    instances_parquet: Path
    instances_csv: Path
    studies_parquet: Path
    studies_csv: Path


def write_tables(
    instance_rows: Sequence[InstanceMetrics], out_dir: str | os.PathLike[str], stem: str = "metrics"
) -> MetricsTables:
    """Write <stem>_instances.{parquet,csv} and <stem>_studies.{parquet,csv} into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    instances = to_frame(instance_rows, InstanceMetrics)
    studies = to_frame(study_metrics(instance_rows), StudyMetrics)
    tables = MetricsTables(
        out / f"{stem}_instances.parquet",
        out / f"{stem}_instances.csv",
        out / f"{stem}_studies.parquet",
        out / f"{stem}_studies.csv",
    )
    for frame, parquet, csv in (
        (instances, tables.instances_parquet, tables.instances_csv),
        (studies, tables.studies_parquet, tables.studies_csv),
    ):
        replace_atomically(lambda p, f=frame: f.to_parquet(p, index=False, engine="pyarrow"), parquet)
        replace_atomically(lambda p, f=frame: f.to_csv(p, index=False), csv)
    return tables
