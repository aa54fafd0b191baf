"""The nightly run's tables: one row per instance and per study, written as Parquet and CSV.

Rows carry UIDs, counts and measurements only: no patient names, IDs or dates (no PHI), so the
tables can be shared with the people who audit the model.
"""
from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.calibration import Calibration
from pipeline.ingest import IngestIssue, IssueKind, UsInstance
from pipeline.phi import redact
from pipeline.seg.algorithm import SegAlgorithm
from pipeline.seg.writer import WrittenSeg
from pipeline.studies import RejectedFile
from pipeline.tables import rows_by_study, rows_to_frame, write_table


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
    confidence_floor: float | None = None  # the model's own: under it the instance needs a reader
    runtime_s: float | None = None
    seg_sop_uid: str | None = None
    seg_series_uid: str | None = None
    # Problems noticed in a segmented instance, e.g. a JPEG 2000 codestream at odds with the header.
    warnings: str | None = None

    def __post_init__(self) -> None:
        RowStatus(self.status)  # raises ValueError for an unknown status
        if self.status != RowStatus.OK.value and not self.error:
            raise ValueError("a skipped or failed row needs an error/reason")

    @classmethod
    def for_result(
        cls,
        instance: UsInstance,
        masks: np.ndarray,
        algorithm: SegAlgorithm,
        runtime_s: float,
        *,
        box: PredictedBox | None = None,
        confidence: float | None = None,
        confidence_floor: float | None = None,
        seg: WrittenSeg | None = None,
    ) -> "InstanceMetrics":
        """The row of an instance the model segmented (and, given `seg`, whose SEG was written)."""
        areas = mask_areas(masks, instance.calibration)
        return cls(
            **_instance_columns(instance, algorithm, runtime_s),
            status=RowStatus.OK.value,
            mask_area_mean=areas.mean,
            mask_area_max=areas.max,
            area_unit=areas.unit,
            frames_with_mask=areas.frames_with_mask,
            box_x0=box.x0 if box else None,
            box_y0=box.y0 if box else None,
            box_x1=box.x1 if box else None,
            box_y1=box.y1 if box else None,
            confidence=None if confidence is None else float(confidence),
            confidence_floor=None if confidence_floor is None else float(confidence_floor),
            seg_sop_uid=seg.sop_uid if seg else None,
            seg_series_uid=seg.series_uid if seg else None,
        )

    @classmethod
    def for_issue(
        cls, issue: IngestIssue, algorithm: SegAlgorithm | None = None, runtime_s: float | None = None
    ) -> "InstanceMetrics":
        """The row of a file that was skipped or failed (ingest, decode, model or SEG writing)."""
        status = RowStatus.SKIPPED if issue.kind is IssueKind.SKIPPED else RowStatus.FAILED
        return cls(**_source_columns(issue, algorithm, runtime_s), status=status.value,
                   error_code=issue.code.value, error=issue.reason)

    @classmethod
    def for_failure(
        cls,
        instance: UsInstance,
        error: BaseException | str,
        algorithm: SegAlgorithm | None = None,
        runtime_s: float | None = None,
        error_code: str = "processing_error",
    ) -> "InstanceMetrics":
        """The row of an ingested instance that failed later (decode, prediction, SEG writing)."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        message = redact(message, instance.header)  # pydicom/highdicom may quote a patient's value
        return cls(**_instance_columns(instance, algorithm, runtime_s), status=RowStatus.FAILED.value,
                   error_code=error_code, error=message or error_code)


def _source_columns(source: UsInstance | IngestIssue, algorithm: SegAlgorithm | None,
                    runtime_s: float | None) -> dict:
    """The columns every row fills: which file or instance, which model, how long it took."""
    return dict(
        study_uid=source.study_uid,
        series_uid=source.series_uid,
        sop_uid=source.sop_uid,
        path=str(source.path) if source.path else None,
        mode=algorithm.mode if algorithm else None,
        model_fingerprint=algorithm.fingerprint if algorithm else None,
        runtime_s=None if runtime_s is None else float(runtime_s),
    )


def _instance_columns(instance: UsInstance, algorithm: SegAlgorithm | None, runtime_s: float | None) -> dict:
    """The columns of an ingested instance's row: its source columns, frame count and calibration."""
    cal = instance.calibration
    return _source_columns(instance, algorithm, runtime_s) | dict(
        n_frames=instance.n_frames,
        calibration_source=cal.source.value,
        row_spacing_mm=cal.row_spacing_mm,
        column_spacing_mm=cal.column_spacing_mm,
        warnings="; ".join((*instance.warnings, *instance.decoder_messages)) or None,
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
    result = []
    for study_uid, study_rows in rows_by_study(rows).items():
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
    instances_parquet, instances_csv = write_table(rows_to_frame(instance_rows, InstanceMetrics), out,
                                                   f"{stem}_instances")
    studies_parquet, studies_csv = write_table(rows_to_frame(study_metrics(instance_rows), StudyMetrics), out,
                                               f"{stem}_studies")
    return MetricsTables(instances_parquet, instances_csv, studies_parquet, studies_csv)


def write_rejected_table(rejected: Sequence[RejectedFile], out_dir: str | os.PathLike[str],
                         stem: str = "metrics") -> Path:
    """<stem>_rejected.{parquet,csv}: the files discovery refused (path, code, reason); returns the CSV."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_table(rows_to_frame(rejected, RejectedFile), out, f"{stem}_rejected")[1]
