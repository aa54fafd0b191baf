"""Audit written DICOM-SEG objects against reference labels: Dice, IoU, HD95 and ASSD per frame,
instance and study, tables (Parquet + CSV) and a self-contained HTML report.

`run_audit(seg_dir, reference_dir, output_dir)` is the whole audit as one call (a Prefect flow wraps
it; nothing here imports prefect). The data path:

    SEG files (seg_dir) --source SOP Instance UID--> reference labels (reference_dir)
        -> per frame and class: sam2rad.metrics.evaluate_pair -> instance mean -> study mean/min
        -> flagged = study mean Dice < threshold -> tables + report

References are `<SOPInstanceUID>.npz` files (`mask`: frames x rows x cols [x classes] bool,
optional `spacing_mm` (row, col), optional `frame_numbers` (1-based source frames the mask rows are)
and `class_names`), or DICOM SEG files citing the same source instance (e.g. a reader's corrected
segmentation); the two SEGs are then compared frame by frame.

Distances are in mm when a pixel spacing is known, taken from (first found) the reference NPZ,
the source instance's ultrasound calibration (`source_dir`), the audited SEG's Pixel Measures, the
reference SEG's Pixel Measures; otherwise in pixels. The `unit` and `spacing_source` columns say
which. Tables, report and logs carry UIDs, counts and measurements only, never patient names, IDs
or birth dates.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from pipeline.decode import iter_grey_frames, suppress_dicom_warnings
from pipeline.ingest import UsInstance, ingest
from pipeline.seg import read_seg_masks
from pipeline.atomic import replace_atomically
from sam2rad.metrics import evaluate_pair

log = logging.getLogger(__name__)

SEG_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
})
DEFAULT_THRESHOLD = 0.7
DEFAULT_WORST_CASES = 4


class RowStatus:
    OK = "ok"
    MISSING_REFERENCE = "missing_reference"  # a SEG whose source instance has no reference label
    MISSING_SEG = "missing_seg"  # a reference label no audited SEG cites
    FAILED = "failed"  # both exist but could not be compared (unreadable, geometry, classes)


class SpacingSource:
    REFERENCE_NPZ = "reference_npz"
    SOURCE_CALIBRATION = "source_calibration"
    SEG_PIXEL_MEASURES = "seg_pixel_measures"
    REFERENCE_SEG_PIXEL_MEASURES = "reference_seg_pixel_measures"
    NONE = "none"


# ---------------------------------------------------------------------------------------------
# Rows of the tables


@dataclass(frozen=True)
class AuditFrameRow:
    """One source frame and class of one audited SEG against its reference."""

    study_uid: str | None
    source_sop_uid: str
    seg_sop_uid: str
    frame_number: int
    class_index: int
    class_label: str
    dice: float
    iou: float
    hd95: float
    assd: float
    hausdorff: float
    pred_pixels: int
    gt_pixels: int
    unit: str


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


_PANDAS_DTYPES = {"str": "string", "int": "Int64", "float": "float64", "bool": "boolean"}


def rows_to_frame(rows: Sequence[object], row_type: type) -> pd.DataFrame:
    """A DataFrame with one column per dataclass field and stable dtypes, even with no rows."""
    columns = {f.name: _PANDAS_DTYPES[str(f.type).replace("| None", "").strip()] for f in fields(row_type)}
    frame = pd.DataFrame([asdict(r) for r in rows], columns=list(columns))  # type: ignore[call-overload]
    return frame.astype(columns)


# ---------------------------------------------------------------------------------------------
# What is on disk


@dataclass(frozen=True)
class SegHeader:
    """A SEG file's identity and references, read without its pixel data."""

    path: Path
    sop_uid: str
    series_uid: str | None
    study_uid: str | None
    source_sop_uids: tuple[str, ...]
    segment_labels: tuple[str, ...]
    pixel_spacing_mm: tuple[float, float] | None
    header: Dataset = field(repr=False, compare=False)

    def frame_numbers(self, source_sop_uid: str) -> tuple[int, ...]:
        """The source frames this SEG has masks for, in the order read_seg_masks returns them."""
        numbers = _referenced_frame_numbers(self.header, source_sop_uid)
        return numbers or (1,)


@dataclass(frozen=True)
class Reference:
    """A reference label for one source instance: an NPZ file or a reference SEG."""

    source_sop_uid: str
    kind: str  # "npz" | "seg"
    path: Path
    seg: SegHeader | None = None

    def load(self) -> tuple[np.ndarray, tuple[int, ...], tuple[str, ...], tuple[float, float] | None]:
        """(masks (frames, rows, cols, classes) bool, 1-based frame numbers, class labels, spacing_mm)."""
        if self.seg is not None:
            masks = read_seg_masks(self.path, self.source_sop_uid)
            return masks, self.seg.frame_numbers(self.source_sop_uid), self.seg.segment_labels, None
        with np.load(self.path, allow_pickle=False) as npz:
            if "mask" not in npz:
                raise ValueError("reference NPZ has no 'mask' array")
            masks = np.asarray(npz["mask"]) != 0
            spacing = _valid_spacing(npz["spacing_mm"]) if "spacing_mm" in npz else None
            frames = tuple(int(v) for v in np.ravel(npz["frame_numbers"])) if "frame_numbers" in npz else None
            labels = tuple(str(v) for v in np.ravel(npz["class_names"])) if "class_names" in npz else ()
        if masks.ndim == 2:
            masks = masks[np.newaxis]
        if masks.ndim == 3:
            masks = masks[..., np.newaxis]
        if masks.ndim != 4:
            raise ValueError(f"reference mask must be (frames, rows, cols[, classes]), got shape {masks.shape}")
        if frames is None:
            frames = tuple(range(1, masks.shape[0] + 1))
        if len(frames) != masks.shape[0]:
            raise ValueError(f"reference has {masks.shape[0]} frames but {len(frames)} frame_numbers")
        return masks, frames, labels, spacing


def _valid_spacing(value: object) -> tuple[float, float] | None:
    try:
        pair = tuple(float(v) for v in np.ravel(np.asarray(value, dtype=float)))
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        return None
    return pair  # type: ignore[return-value]


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]


def _referenced_frame_numbers(ds: Dataset, source_sop_uid: str) -> tuple[int, ...]:
    # Same rule as pipeline.seg.reader: the per-frame derivation references of this source.
    numbers: set[int] = set()
    for item in ds.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in item.get("DerivationImageSequence", []):
            for ref in derivation.get("SourceImageSequence", []):
                if ref.get("ReferencedSOPInstanceUID") == source_sop_uid and "ReferencedFrameNumber" in ref:
                    numbers.update(int(v) for v in _as_list(ref.ReferencedFrameNumber))
    return tuple(sorted(numbers))


def _source_sop_uids(ds: Dataset) -> tuple[str, ...]:
    """Every source instance a SEG cites (series references, source images, per-frame derivations)."""
    seen: dict[str, None] = {}
    for series in ds.get("ReferencedSeriesSequence", []):
        for item in series.get("ReferencedInstanceSequence", []):
            if item.get("ReferencedSOPInstanceUID"):
                seen[str(item.ReferencedSOPInstanceUID)] = None
    for item in ds.get("SourceImageSequence", []):
        if item.get("ReferencedSOPInstanceUID"):
            seen[str(item.ReferencedSOPInstanceUID)] = None
    if not seen:
        for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
            for derivation in frame.get("DerivationImageSequence", []):
                for item in derivation.get("SourceImageSequence", []):
                    if item.get("ReferencedSOPInstanceUID"):
                        seen[str(item.ReferencedSOPInstanceUID)] = None
    return tuple(seen)


def _seg_pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    groups = [ds.get("SharedFunctionalGroupsSequence", [None])[0]]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    if per_frame:
        groups.append(per_frame[0])
    for group in groups:
        if group is None:
            continue
        for measures in group.get("PixelMeasuresSequence", []):
            if "PixelSpacing" in measures:
                spacing = _valid_spacing(list(measures.PixelSpacing))
                if spacing is not None:
                    return spacing
    return None


def _segment_labels(ds: Dataset) -> tuple[str, ...]:
    """Labels of the non-background segments, in SegmentSequence order (read_seg_masks' order)."""
    padding = ds.get("PixelPaddingValue")
    return tuple(
        str(item.get("SegmentLabel", "") or item.SegmentNumber)
        for item in ds.get("SegmentSequence", [])
        if int(item.SegmentNumber) > 0 and (padding is None or int(item.SegmentNumber) != int(padding))
    )


def read_seg_header(path: Path) -> SegHeader | None:
    """The SEG's header, or None when the file is not a DICOM SEG."""
    try:
        with suppress_dicom_warnings():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
        return None
    if str(ds.get("SOPClassUID", "")) not in SEG_SOP_CLASSES or not ds.get("SOPInstanceUID"):
        return None
    return SegHeader(
        path=path,
        sop_uid=str(ds.SOPInstanceUID),
        series_uid=str(ds.get("SeriesInstanceUID", "")) or None,
        study_uid=str(ds.get("StudyInstanceUID", "")) or None,
        source_sop_uids=_source_sop_uids(ds),
        segment_labels=_segment_labels(ds),
        pixel_spacing_mm=_seg_pixel_spacing(ds),
        header=ds,
    )


def _files(folder: Path) -> list[Path]:
    # Hidden files include half-written '.<name>.partial' files of an interrupted writer.
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def find_segs(folder: Path) -> list[SegHeader]:
    """Every DICOM SEG under folder (recursive), in path order; other files are ignored."""
    return [h for h in (read_seg_header(p) for p in _files(folder) if p.suffix.lower() != ".npz") if h]


def find_references(folder: Path, exclude_sop_uids: Iterable[str] = ()) -> dict[str, Reference]:
    """Reference labels under folder by source SOP Instance UID: `<uid>.npz` files and reference SEGs.

    When one source has several, an NPZ wins over a SEG and otherwise the first path wins.
    """
    excluded = set(exclude_sop_uids)
    found: dict[str, Reference] = {}
    n_duplicates = 0
    for path in _files(folder):
        if path.suffix.lower() == ".npz":
            candidates = [Reference(path.stem, "npz", path)]
        else:
            header = read_seg_header(path)
            if header is None or header.sop_uid in excluded:
                continue
            candidates = [Reference(uid, "seg", path, header) for uid in header.source_sop_uids]
        for ref in candidates:
            previous = found.get(ref.source_sop_uid)
            if previous is None or (previous.kind == "seg" and ref.kind == "npz"):
                found[ref.source_sop_uid] = ref
            if previous is not None:
                n_duplicates += 1
    if n_duplicates:
        log.info("audit: %d source instance(s) have more than one reference; NPZ preferred", n_duplicates)
    return found


# ---------------------------------------------------------------------------------------------
# Comparing one SEG with its reference


@dataclass(frozen=True)
class ComparedPair:
    """Aligned masks of one SEG and its reference: (frames, rows, cols, classes) bool each."""

    pred: np.ndarray
    ref: np.ndarray
    frame_numbers: tuple[int, ...]
    class_labels: tuple[str, ...]
    spacing_mm: tuple[float, float] | None
    spacing_source: str


def _norm(label: str) -> str:
    return label.strip().lower()


def match_classes(pred_labels: Sequence[str], ref_labels: Sequence[str], n_pred: int, n_ref: int
                  ) -> list[tuple[int, int, str]]:
    """(pred index, reference index, label) pairs: by label where both sides name their classes and
    share names, else by position when both have as many classes; otherwise a ValueError."""
    if pred_labels and ref_labels:
        ref_index = {_norm(label): i for i, label in enumerate(ref_labels)}
        pairs = [(i, ref_index[_norm(label)], label) for i, label in enumerate(pred_labels)
                 if _norm(label) in ref_index]
        if pairs:
            return pairs
    if n_pred == n_ref:
        labels = list(pred_labels) if len(pred_labels) == n_pred else list(ref_labels)
        if len(labels) != n_pred:
            labels = [str(i + 1) for i in range(n_pred)]
        return [(i, i, labels[i]) for i in range(n_pred)]
    raise ValueError(
        f"cannot match classes: the SEG has {n_pred} segment(s), the reference {n_ref} "
        "(name the reference's classes, e.g. class_names in the NPZ)"
    )


def _spacing_for(ref_spacing: tuple[float, float] | None, source: UsInstance | None, seg: SegHeader,
                 reference: Reference) -> tuple[tuple[float, float] | None, str]:
    if ref_spacing is not None:
        return ref_spacing, SpacingSource.REFERENCE_NPZ
    if source is not None and source.calibration.is_calibrated:
        cal = source.calibration
        return (float(cal.row_spacing_mm), float(cal.column_spacing_mm)), SpacingSource.SOURCE_CALIBRATION  # type: ignore[arg-type]
    if seg.pixel_spacing_mm is not None:
        return seg.pixel_spacing_mm, SpacingSource.SEG_PIXEL_MEASURES
    if reference.seg is not None and reference.seg.pixel_spacing_mm is not None:
        return reference.seg.pixel_spacing_mm, SpacingSource.REFERENCE_SEG_PIXEL_MEASURES
    return None, SpacingSource.NONE


def load_pair(seg: SegHeader, source_sop_uid: str, reference: Reference, source: UsInstance | None) -> ComparedPair:
    """Read both sides and align them on common source frames and matched classes."""
    pred = read_seg_masks(seg.path, source_sop_uid)
    pred_frames = seg.frame_numbers(source_sop_uid)
    if len(pred_frames) != pred.shape[0]:  # the SEG cites no frame numbers per frame: frames are 1..n
        pred_frames = tuple(range(1, pred.shape[0] + 1))
    ref, ref_frames, ref_labels, ref_spacing = reference.load()
    if pred.shape[1:3] != ref.shape[1:3]:
        raise ValueError(f"geometry differs: SEG frames are {pred.shape[1:3]}, reference {ref.shape[1:3]}")
    common = sorted(set(pred_frames) & set(ref_frames))
    if not common:
        raise ValueError(f"no common frames: SEG has frames {list(pred_frames)}, reference {list(ref_frames)}")
    pairs = match_classes(seg.segment_labels, ref_labels, pred.shape[-1], ref.shape[-1])
    pred_at = {f: i for i, f in enumerate(pred_frames)}
    ref_at = {f: i for i, f in enumerate(ref_frames)}
    pred = pred[[pred_at[f] for f in common]][..., [p for p, _, _ in pairs]]
    ref = ref[[ref_at[f] for f in common]][..., [r for _, r, _ in pairs]]
    spacing, spacing_source = _spacing_for(ref_spacing, source, seg, reference)
    return ComparedPair(pred, ref, tuple(common), tuple(label for _, _, label in pairs), spacing, spacing_source)


def _finite_mean(values: Sequence[float]) -> float:
    """Mean over defined values (nan = nothing to measure is left out); inf propagates; nan if none."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def score_pair(pair: ComparedPair, study_uid: str | None, source_sop_uid: str, seg_sop_uid: str
               ) -> list[AuditFrameRow]:
    """evaluate_pair on every frame and class."""
    rows = []
    for f, frame_number in enumerate(pair.frame_numbers):
        for c, label in enumerate(pair.class_labels):
            m = evaluate_pair(pair.pred[f, :, :, c], pair.ref[f, :, :, c], pair.spacing_mm)
            rows.append(AuditFrameRow(study_uid, source_sop_uid, seg_sop_uid, frame_number, c, label, m.dice,
                                      m.iou, m.hd95, m.assd, m.hausdorff, m.pred_pixels, m.gt_pixels, m.unit))
    return rows


def _instance_row(seg: SegHeader | None, source_sop_uid: str, study_uid: str | None, reference: Reference | None,
                  status: str, error: str | None = None, pair: ComparedPair | None = None,
                  frames: Sequence[AuditFrameRow] = ()) -> AuditInstanceRow:
    values: dict[str, object] = dict.fromkeys(
        ("n_frames", "n_classes", "classes", "dice", "iou", "hd95", "assd", "hausdorff", "min_frame_dice",
         "worst_frame", "worst_class", "pred_pixels", "gt_pixels", "unit", "spacing_source",
         "row_spacing_mm", "column_spacing_mm"))
    if pair is not None and frames:
        worst = min(frames, key=lambda r: (r.dice, r.frame_number, r.class_index))
        values.update(
            n_frames=len(pair.frame_numbers),
            n_classes=len(pair.class_labels),
            classes=",".join(pair.class_labels),
            dice=float(np.mean([r.dice for r in frames])),
            iou=float(np.mean([r.iou for r in frames])),
            hd95=_finite_mean([r.hd95 for r in frames]),
            assd=_finite_mean([r.assd for r in frames]),
            hausdorff=_finite_mean([r.hausdorff for r in frames]),
            min_frame_dice=worst.dice,
            worst_frame=worst.frame_number,
            worst_class=worst.class_label,
            pred_pixels=sum(r.pred_pixels for r in frames),
            gt_pixels=sum(r.gt_pixels for r in frames),
            unit=frames[0].unit,
            spacing_source=pair.spacing_source,
            row_spacing_mm=pair.spacing_mm[0] if pair.spacing_mm else None,
            column_spacing_mm=pair.spacing_mm[1] if pair.spacing_mm else None,
        )
    return AuditInstanceRow(
        study_uid=study_uid,
        source_sop_uid=source_sop_uid,
        seg_sop_uid=seg.sop_uid if seg else None,
        seg_series_uid=seg.series_uid if seg else None,
        reference_kind=reference.kind if reference else None,
        status=status,
        error=error,
        **values,  # type: ignore[arg-type]
    )


def _error_text(exc: BaseException) -> str:
    # Library messages describe geometry and structure; cut long ones so no dataset dump slips in.
    return f"{type(exc).__name__}: {str(exc)[:300]}"


# ---------------------------------------------------------------------------------------------
# Aggregates


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
    by_study: dict[str, list[AuditInstanceRow]] = {}
    for row in instances:
        if row.study_uid:
            by_study.setdefault(row.study_uid, []).append(row)
    result = []
    for study_uid, rows in by_study.items():
        ok = [r for r in rows if r.status == RowStatus.OK]
        dice = [float(r.dice) for r in ok if r.dice is not None]
        unit, in_unit = _distance_unit(ok)
        mean_dice = float(np.mean(dice)) if dice else None
        result.append(AuditStudyRow(
            study_uid=study_uid,
            n_instances=len(ok),
            n_frames=sum(r.n_frames or 0 for r in ok),
            n_missing_reference=sum(r.status == RowStatus.MISSING_REFERENCE for r in rows),
            n_missing_seg=sum(r.status == RowStatus.MISSING_SEG for r in rows),
            n_failed=sum(r.status == RowStatus.FAILED for r in rows),
            mean_dice=mean_dice,
            min_dice=min(dice) if dice else None,
            median_dice=float(np.median(dice)) if dice else None,
            mean_iou=float(np.mean([r.iou for r in ok])) if ok else None,  # type: ignore[arg-type]
            mean_hd95=_finite_mean([r.hd95 for r in in_unit]) if in_unit else None,  # type: ignore[misc]
            mean_assd=_finite_mean([r.assd for r in in_unit]) if in_unit else None,  # type: ignore[misc]
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
    ok = [r for r in instances if r.status == RowStatus.OK]
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


# ---------------------------------------------------------------------------------------------
# Overlays for the report


@dataclass(frozen=True)
class OverlayCase:
    """One frame of one of the worst instances: what the report draws."""

    study_uid: str | None
    source_sop_uid: str
    seg_sop_uid: str
    frame_number: int
    class_label: str
    dice: float  # the instance's mean Dice
    frame_dice: float
    reference: np.ndarray  # (rows, cols) bool
    prediction: np.ndarray  # (rows, cols) bool
    image: np.ndarray | None  # (rows, cols) uint8 grey source frame, None without source_dir
    # The imaging region (row0, row1, col0, col1; ends exclusive): pixels outside it are blanked in
    # the image, since burned-in text (patient name, ID) sits there on many scanners.
    region: tuple[int, int, int, int] | None = None


def _decode_frame(instance: UsInstance, frame_number: int) -> np.ndarray | None:
    try:
        with suppress_dicom_warnings():
            frames = list(iter_grey_frames(instance.pixel_source(), instance.header, [frame_number - 1]))
    except Exception as exc:  # noqa: BLE001 - an overlay without its image is still an overlay
        log.warning("audit: could not decode frame %d of %s for the report: %s", frame_number,
                    instance.sop_uid, type(exc).__name__)
        return None
    return frames[0] if frames else None


def worst_cases(instances: Sequence[AuditInstanceRow], frames: Sequence[AuditFrameRow],
                load: Callable[[AuditInstanceRow], ComparedPair], sources: dict[str, UsInstance],
                n: int, show_images: bool = True) -> list[OverlayCase]:
    """The n compared instances with the lowest Dice, each at its worst frame and class; with the
    source frame when the source is known and show_images is on."""
    ok = sorted((r for r in instances if r.status == RowStatus.OK and r.dice is not None),
                key=lambda r: (r.dice, r.source_sop_uid))
    cases = []
    for row in ok[: max(n, 0)]:
        try:
            pair = load(row)
        except Exception as exc:  # noqa: BLE001
            log.warning("audit: could not reload %s for the report: %s", row.source_sop_uid, type(exc).__name__)
            continue
        f = pair.frame_numbers.index(int(row.worst_frame))  # type: ignore[arg-type]
        c = pair.class_labels.index(str(row.worst_class))
        frame_dice = next((fr.dice for fr in frames if fr.source_sop_uid == row.source_sop_uid
                           and fr.seg_sop_uid == row.seg_sop_uid and fr.frame_number == row.worst_frame
                           and fr.class_index == c), float(row.min_frame_dice or 0.0))
        source = sources.get(row.source_sop_uid) if show_images else None
        image = _decode_frame(source, int(row.worst_frame)) if source is not None else None  # type: ignore[arg-type]
        region = None
        if image is not None and image.shape != pair.ref.shape[1:3]:
            image = None
        if image is not None and source is not None and source.calibration.region is not None:
            bounds = source.calibration.region.clipped(*image.shape)
            if bounds is not None:
                region = (bounds.min_y0, bounds.max_y1 + 1, bounds.min_x0, bounds.max_x1 + 1)
                blanked = np.zeros_like(image)
                blanked[bounds.slices()] = image[bounds.slices()]
                image = blanked
        cases.append(OverlayCase(row.study_uid, row.source_sop_uid, str(row.seg_sop_uid), int(row.worst_frame),  # type: ignore[arg-type]
                                 str(row.worst_class), float(row.dice), float(frame_dice),
                                 pair.ref[f, :, :, c].copy(), pair.pred[f, :, :, c].copy(), image, region))
    return cases


# ---------------------------------------------------------------------------------------------
# The audit


@dataclass(frozen=True)
class AuditResult:
    """What an audit wrote and found. Paths are under output_dir."""

    instances_parquet: Path
    instances_csv: Path
    studies_parquet: Path
    studies_csv: Path
    frames_parquet: Path
    frames_csv: Path
    summary_json: Path
    report_html: Path
    plots_dir: Path
    threshold: float
    n_segs: int  # SEG files audited
    n_matched: int  # source instances compared with a reference
    n_missing_reference: int  # source instances a SEG cites that have no reference
    n_missing_seg: int  # references no audited SEG cites
    n_failed: int  # pairs that could not be compared (see the instance table's error column)
    n_flagged_studies: int
    summary: dict[str, float | int | str | None]
    flagged_study_uids: tuple[str, ...]
    missing_reference_uids: tuple[str, ...]  # source SOP Instance UIDs
    missing_seg_uids: tuple[str, ...]  # source SOP Instance UIDs

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (paths as strings), e.g. a flow's return value."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else (list(value) if isinstance(value, tuple) else value)
        return out

    def markdown(self) -> str:
        """A short Markdown summary (UIDs and counts only), e.g. for a Prefect artifact."""
        s = self.summary

        def fmt(v: object, digits: int = 3) -> str:
            return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

        unit = s.get("distance_unit") or ""
        lines = [
            "# Sam2Rad Dice audit",
            "",
            "| | |", "|---|---|",
            f"| SEGs audited | {self.n_segs} |",
            f"| instances compared | {self.n_matched} |",
            f"| SEGs without reference | {self.n_missing_reference} |",
            f"| references without SEG | {self.n_missing_seg} |",
            f"| failed comparisons | {self.n_failed} |",
            f"| mean / median Dice | {fmt(s.get('dice_mean'))} / {fmt(s.get('dice_median'))} |",
            f"| mean / median IoU | {fmt(s.get('iou_mean'))} / {fmt(s.get('iou_median'))} |",
            f"| mean / median HD95 ({unit}) | {fmt(s.get('hd95_mean'), 2)} / {fmt(s.get('hd95_median'), 2)} |",
            f"| mean / median ASSD ({unit}) | {fmt(s.get('assd_mean'), 2)} / {fmt(s.get('assd_median'), 2)} |",
            f"| studies below Dice {self.threshold:g} | {self.n_flagged_studies} |",
        ]
        if self.flagged_study_uids:
            lines += ["", "Flagged studies:", ""] + [f"- `{uid}`" for uid in self.flagged_study_uids]
        lines += ["", f"Report: `{self.report_html}`"]
        return "\n".join(lines)


def _write_table(frame: pd.DataFrame, out: Path, stem: str) -> tuple[Path, Path]:
    parquet, csv = out / f"{stem}.parquet", out / f"{stem}.csv"
    replace_atomically(lambda p: frame.to_parquet(p, index=False, engine="pyarrow"), parquet)
    replace_atomically(lambda p: frame.to_csv(p, index=False), csv)
    return parquet, csv


def _folder(value: str | os.PathLike[str], what: str) -> Path:
    if value is None:
        raise ValueError(f"{what} is required")
    path = Path(value)
    if not path.exists():
        raise ValueError(f"{what} does not exist: {path}")
    if not path.is_dir():
        raise ValueError(f"{what} is not a folder: {path}")
    return path


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def run_audit(
    seg_dir: str | os.PathLike[str],
    reference_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    threshold: float = DEFAULT_THRESHOLD,
    source_dir: str | os.PathLike[str] | None = None,
    *,
    n_worst: int = DEFAULT_WORST_CASES,
    show_images: bool = True,
    stem: str = "audit",
) -> AuditResult:
    """Audit every SEG under seg_dir against the references under reference_dir.

    Writes into output_dir: <stem>_instances / _studies / _frames as .parquet and .csv,
    <stem>_summary.json, <stem>_report.html (self-contained) and the report's plots as PNG under
    plots/. `source_dir` (optional) holds the source instances: their ultrasound calibration gives
    the spacing when the reference has none, and the report's overlays show the image.
    A study is flagged when the mean Dice of its compared instances is below `threshold`.
    The report shows the `n_worst` lowest-Dice instances; `show_images=False` draws their masks
    without the source image (the image is always limited to its imaging region, see OverlayCase).
    """
    seg_root = _folder(seg_dir, "seg_dir")
    ref_root = _folder(reference_dir, "reference_dir")
    src_root = _folder(source_dir, "source_dir") if source_dir is not None else None
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold is a Dice value in [0, 1], got {threshold}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    segs = find_segs(seg_root)
    references = find_references(ref_root, exclude_sop_uids={s.sop_uid for s in segs})
    sources: dict[str, UsInstance] = {}
    if src_root is not None:
        sources = {i.sop_uid: i for i in ingest([src_root]).instances}
    log.info("audit: %d SEG(s), %d reference(s), %d source instance(s)", len(segs), len(references), len(sources))

    instance_rows: list[AuditInstanceRow] = []
    frame_rows: list[AuditFrameRow] = []
    cited: set[str] = set()
    pair_inputs: dict[tuple[str, str], tuple[SegHeader, Reference]] = {}
    for seg in segs:
        if not seg.source_sop_uids:
            instance_rows.append(_instance_row(seg, "", seg.study_uid, None, RowStatus.FAILED,
                                               "the SEG cites no source instance"))
            continue
        for source_uid in seg.source_sop_uids:
            cited.add(source_uid)
            study_uid = seg.study_uid or (sources[source_uid].study_uid if source_uid in sources else None)
            reference = references.get(source_uid)
            if reference is None:
                instance_rows.append(_instance_row(seg, source_uid, study_uid, None, RowStatus.MISSING_REFERENCE))
                continue
            try:
                pair = load_pair(seg, source_uid, reference, sources.get(source_uid))
                scored = score_pair(pair, study_uid, source_uid, seg.sop_uid)
            except Exception as exc:  # noqa: BLE001 - one bad pair must not stop the audit
                log.warning("audit: SEG %s vs reference for %s failed: %s", seg.sop_uid, source_uid,
                            type(exc).__name__)
                instance_rows.append(_instance_row(seg, source_uid, study_uid, reference, RowStatus.FAILED,
                                                   _error_text(exc)))
                continue
            frame_rows.extend(scored)
            instance_rows.append(_instance_row(seg, source_uid, study_uid, reference, RowStatus.OK, pair=pair,
                                               frames=scored))
            pair_inputs[(seg.sop_uid, source_uid)] = (seg, reference)
    for source_uid, reference in sorted(references.items()):
        if source_uid not in cited:
            study_uid = (sources[source_uid].study_uid if source_uid in sources
                         else (reference.seg.study_uid if reference.seg else None))
            instance_rows.append(_instance_row(None, source_uid, study_uid, reference, RowStatus.MISSING_SEG))

    instance_rows.sort(key=lambda r: (r.study_uid or "", r.source_sop_uid, r.seg_sop_uid or ""))
    studies = study_rows(instance_rows, float(threshold))
    summary = summarise(instance_rows)
    flagged = tuple(s.study_uid for s in studies if s.flagged)
    missing_reference = tuple(r.source_sop_uid for r in instance_rows if r.status == RowStatus.MISSING_REFERENCE)
    missing_seg = tuple(r.source_sop_uid for r in instance_rows if r.status == RowStatus.MISSING_SEG)
    n_failed = sum(r.status == RowStatus.FAILED for r in instance_rows)
    n_matched = sum(r.status == RowStatus.OK for r in instance_rows)
    summary.update(n_segs=len(segs), n_missing_reference=len(missing_reference), n_missing_seg=len(missing_seg),
                   n_failed=n_failed, n_studies=len(studies), n_flagged_studies=len(flagged),
                   threshold=float(threshold))

    instances_frame = rows_to_frame(instance_rows, AuditInstanceRow)
    studies_frame = rows_to_frame(studies, AuditStudyRow)
    frames_frame = rows_to_frame(frame_rows, AuditFrameRow)
    instances_parquet, instances_csv = _write_table(instances_frame, out, f"{stem}_instances")
    studies_parquet, studies_csv = _write_table(studies_frame, out, f"{stem}_studies")
    frames_parquet, frames_csv = _write_table(frames_frame, out, f"{stem}_frames")
    summary_json = out / f"{stem}_summary.json"
    payload = {k: _json_safe(v) for k, v in summary.items()} | {
        "flagged_study_uids": list(flagged), "missing_reference_uids": list(missing_reference),
        "missing_seg_uids": list(missing_seg)}
    replace_atomically(lambda p: p.write_text(json.dumps(payload, indent=2)), summary_json)

    def reload(row: AuditInstanceRow) -> ComparedPair:
        seg, reference = pair_inputs[(str(row.seg_sop_uid), row.source_sop_uid)]
        return load_pair(seg, row.source_sop_uid, reference, sources.get(row.source_sop_uid))

    cases = worst_cases(instance_rows, frame_rows, reload, sources, n_worst, show_images)
    from pipeline.report import write_report  # matplotlib is loaded only when a report is drawn

    plots_dir = out / "plots"
    report_html = write_report(out / f"{stem}_report.html", instances=instances_frame, studies=studies_frame,
                               summary=summary, threshold=float(threshold), cases=cases, plots_dir=plots_dir)
    log.info("audit: %d compared, %d without reference, %d without SEG, %d failed, %d of %d studies flagged "
             "(threshold %.2f)", n_matched, len(missing_reference), len(missing_seg), n_failed, len(flagged),
             len(studies), threshold)
    return AuditResult(
        instances_parquet=instances_parquet, instances_csv=instances_csv,
        studies_parquet=studies_parquet, studies_csv=studies_csv,
        frames_parquet=frames_parquet, frames_csv=frames_csv,
        summary_json=summary_json, report_html=report_html, plots_dir=plots_dir,
        threshold=float(threshold), n_segs=len(segs), n_matched=n_matched,
        n_missing_reference=len(missing_reference), n_missing_seg=len(missing_seg), n_failed=n_failed,
        n_flagged_studies=len(flagged), summary=summary, flagged_study_uids=flagged,
        missing_reference_uids=missing_reference, missing_seg_uids=missing_seg,
    )
