"""One SEG against its reference: align frames and classes, choose the spacing, score every frame."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from pipeline.audit.references import Reference
from pipeline.audit.rows import AuditFrameRow, AuditInstanceRow, ComparisonStatus, SpacingSource
from pipeline.ingest import UsInstance
from pipeline.seg import read_seg_masks
from pipeline.seg.header import SegHeader
from sam2rad.metrics import evaluate_pair


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
        return ref_spacing, SpacingSource.REFERENCE_NPZ.value
    if source is not None and source.calibration.is_calibrated:
        cal = source.calibration
        return (float(cal.row_spacing_mm), float(cal.column_spacing_mm)), SpacingSource.SOURCE_CALIBRATION.value  # type: ignore[arg-type]
    if seg.pixel_spacing_mm is not None:
        return seg.pixel_spacing_mm, SpacingSource.SEG_PIXEL_MEASURES.value
    if reference.seg is not None and reference.seg.pixel_spacing_mm is not None:
        return reference.seg.pixel_spacing_mm, SpacingSource.REFERENCE_SEG_PIXEL_MEASURES.value
    return None, SpacingSource.NONE.value


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


def finite_mean(values: Sequence[float]) -> float:
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
            rows.append(AuditFrameRow(study_uid=study_uid, source_sop_uid=source_sop_uid, seg_sop_uid=seg_sop_uid,
                                      frame_number=frame_number, class_index=c, class_label=label, **m.as_dict()))
    return rows


_IDENTITY_COLUMNS = frozenset({"study_uid", "source_sop_uid", "seg_sop_uid", "seg_series_uid", "reference_kind",
                               "status", "error"})


def instance_row(seg: SegHeader | None, source_sop_uid: str, study_uid: str | None, reference: Reference | None,
                  status: str, error: str | None = None, pair: ComparedPair | None = None,
                  frames: Sequence[AuditFrameRow] = ()) -> AuditInstanceRow:
    # Every measurement column starts empty: a row that compared nothing fills only its identity.
    values: dict[str, object] = dict.fromkeys(f.name for f in fields(AuditInstanceRow)
                                              if f.name not in _IDENTITY_COLUMNS)
    if pair is not None and frames:
        worst = min(frames, key=lambda r: (r.dice, r.frame_number, r.class_index))
        values.update(
            n_frames=len(pair.frame_numbers),
            n_classes=len(pair.class_labels),
            classes=",".join(pair.class_labels),
            dice=float(np.mean([r.dice for r in frames])),
            iou=float(np.mean([r.iou for r in frames])),
            hd95=finite_mean([r.hd95 for r in frames]),
            assd=finite_mean([r.assd for r in frames]),
            hausdorff=finite_mean([r.hausdorff for r in frames]),
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
        status=ComparisonStatus(status).value,
        error=error,
        **values,  # type: ignore[arg-type]
    )


def error_text(exc: BaseException) -> str:
    # Library messages describe geometry and structure; cut long ones so no dataset dump slips in.
    return f"{type(exc).__name__}: {str(exc)[:300]}"
