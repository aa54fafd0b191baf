"""A SEG file's header: identity, cited source instances, segment labels, pixel spacing; no pixels."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from pipeline.decode import suppress_dicom_warnings
from pipeline.sop_classes import SEG_SOP_CLASSES


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
        """The source frames this SEG has masks for, in the order pipeline.seg.read_seg_masks returns them."""
        numbers = referenced_frame_numbers(self.header, source_sop_uid)
        return numbers or (1,)


def valid_spacing(value: object) -> tuple[float, float] | None:
    try:
        pair = tuple(float(v) for v in np.ravel(np.asarray(value, dtype=float)))
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        return None
    return pair  # type: ignore[return-value]


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]


def referenced_frame_numbers(ds: Dataset, source_sop_uid: str) -> tuple[int, ...]:
    """The source frames (1-based) a SEG's per-frame derivation references cite for one source."""
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
                spacing = valid_spacing(list(measures.PixelSpacing))
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
