"""The audit's table rows (one dataclass per table) and what their status and spacing columns mean."""
from __future__ import annotations

import enum
from dataclasses import dataclass

from sam2rad.metrics import SegmentationMetrics

DEFAULT_DICE_THRESHOLD = 0.7  # a study whose mean Dice falls below this is flagged for review
DEFAULT_WORST_CASES = 4


class ComparisonStatus(str, enum.Enum):
    """What happened to one (SEG, reference) pair; the value is what the tables hold."""

    OK = "ok"
    MISSING_REFERENCE = "missing_reference"  # a SEG whose source instance has no reference label
    MISSING_SEG = "missing_seg"  # a reference label no audited SEG cites
    FAILED = "failed"  # both exist but could not be compared (unreadable, geometry, classes)
    REVIEWED = "reviewed"  # a reader's SEG (SEMIAUTOMATIC/MANUAL) vs the reference: apart, not in the means
    SUPERSEDED = "superseded"  # an older AI SEG of a source a newer AI SEG also cites (see seg_roles.py)


class SpacingSource(str, enum.Enum):
    """Where a pair's pixel spacing came from (first found, in this order)."""

    REFERENCE_NPZ = "reference_npz"
    SOURCE_CALIBRATION = "source_calibration"
    SEG_PIXEL_MEASURES = "seg_pixel_measures"
    REFERENCE_SEG_PIXEL_MEASURES = "reference_seg_pixel_measures"
    NONE = "none"


# ---------------------------------------------------------------------------------------------
# Rows of the tables


@dataclass(frozen=True)
class AuditFrameRow(SegmentationMetrics):
    """One source frame and class of one audited SEG against its reference: which frame (the fields
    below), and its measurements (the metric fields of `sam2rad.metrics.SegmentationMetrics`)."""

    study_uid: str | None
    source_sop_uid: str
    seg_sop_uid: str
    frame_number: int
    class_index: int
    class_label: str


@dataclass(frozen=True)
class AuditInstanceRow:
    """One source instance: its SEG against its reference (means over frames and classes), or why not.

    Distances average the frames where they are defined: a frame where both masks are empty has no
    distance (nan, left out); a frame where exactly one is empty has an infinite one, which makes
    the instance's mean infinite (a missed or hallucinated object is never averaged away).
    """

    study_uid: str | None
    source_sop_uid: str
    seg_sop_uid: str | None
    seg_series_uid: str | None
    reference_kind: str | None
    status: str
    error: str | None
    n_frames: int | None
    n_classes: int | None
    classes: str | None
    dice: float | None
    iou: float | None
    hd95: float | None
    assd: float | None
    hausdorff: float | None
    min_frame_dice: float | None
    worst_frame: int | None
    worst_class: str | None
    pred_pixels: int | None
    gt_pixels: int | None
    unit: str | None
    spacing_source: str | None
    row_spacing_mm: float | None
    column_spacing_mm: float | None


@dataclass(frozen=True)
class AuditStudyRow:
    """One study: its compared instances' Dice, and whether it falls below the threshold."""

    study_uid: str
    n_instances: int
    n_frames: int
    n_missing_reference: int
    n_missing_seg: int
    n_failed: int
    mean_dice: float | None
    min_dice: float | None
    median_dice: float | None
    mean_iou: float | None
    mean_hd95: float | None
    mean_assd: float | None
    distance_unit: str | None
    threshold: float
    flagged: bool
