"""Ingest's checks on one header: is it an ultrasound image the model can take, and is its pixel data whole?

Each check returns an `IngestIssue` saying why not, or None.
"""
from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, UltrasoundMultiFrameImageStorage

from pipeline.decode import photometric_problem, suppress_dicom_warnings, transfer_syntax_problem
from pipeline.sop_classes import SEG_SOP_CLASSES, ULTRASOUND_SOP_CLASSES
from pipeline.uid_check import is_valid_uid, uid_problem
from pipeline.us_records import MAX_DECODED_BYTES_ENV, IngestIssue, IngestLimits, IssueCode, IssueKind

PIXEL_DATA_TAG = 0x7FE00010
# Pixel data above this size is not read while ingesting; only its length is checked.
_DEFER_BYTES = 64 * 1024
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_PRESENTATION_STATE_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
_RETIRED_US_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"})  # retired US SOP classes


def text_attr(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, None)
    return str(value).strip() if value is not None else ""


def make_issue(
    path: Path | None, kind: IssueKind, code: IssueCode, reason: str, ds: Dataset | None = None
) -> IngestIssue:
    if ds is None:
        return IngestIssue(path, kind, code, reason)
    return IngestIssue(
        path,
        kind,
        code,
        reason,
        study_uid=text_attr(ds, "StudyInstanceUID") or None,
        series_uid=text_attr(ds, "SeriesInstanceUID") or None,
        sop_uid=text_attr(ds, "SOPInstanceUID") or None,
        sop_class_uid=text_attr(ds, "SOPClassUID") or None,
        modality=text_attr(ds, "Modality") or None,
    )


def sop_class_issue(path: Path | None, ds: Dataset) -> IngestIssue | None:
    """A skip record for objects that are not ultrasound images, else None."""
    sop_class, modality = text_attr(ds, "SOPClassUID"), text_attr(ds, "Modality")
    label = pydicom.uid.UID(sop_class).name if sop_class else "(missing)"
    if sop_class in ULTRASOUND_SOP_CLASSES:
        return None
    if sop_class == SecondaryCaptureImageStorage and modality == "US":
        return None
    skip = IssueKind.SKIPPED
    if sop_class in SEG_SOP_CLASSES:
        return make_issue(path, skip, IssueCode.SEGMENTATION, f"{label} is a segmentation, not an image", ds)
    if sop_class.startswith(_SR_PREFIX):
        return make_issue(path, skip, IssueCode.STRUCTURED_REPORT, f"{label} is a structured report", ds)
    if sop_class.startswith(_PRESENTATION_STATE_PREFIX):
        return make_issue(path, skip, IssueCode.PRESENTATION_STATE, f"{label} is a presentation state", ds)
    if sop_class in _RETIRED_US_CLASSES:
        return make_issue(path, skip, IssueCode.UNSUPPORTED_SOP_CLASS, f"retired SOP class {label} is not supported", ds)
    if modality != "US":
        return make_issue(
            path, skip, IssueCode.NOT_ULTRASOUND,
            f"modality {modality or '(missing)'} ({label}) is not ultrasound", ds,
        )
    return make_issue(path, skip, IssueCode.UNSUPPORTED_SOP_CLASS, f"ultrasound SOP class {label} is not supported", ds)


def int_attr(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def geometry_issue(path: Path | None, ds: Dataset, limits: IngestLimits) -> IngestIssue | None:
    """Frame count and image size checks; nothing here touches pixel data."""
    fail = IssueKind.FAILED
    default_frames = None if text_attr(ds, "SOPClassUID") == UltrasoundMultiFrameImageStorage else 1
    n_frames = int_attr(ds, "NumberOfFrames", default_frames)
    if n_frames is None:
        return make_issue(path, fail, IssueCode.NO_FRAMES, "NumberOfFrames is missing or not a number", ds)
    if n_frames < 1:
        return make_issue(path, fail, IssueCode.NO_FRAMES, f"NumberOfFrames is {n_frames}: no frames to segment", ds)
    if n_frames > limits.max_frames:
        return make_issue(
            path, fail, IssueCode.TOO_MANY_FRAMES,
            f"cine has {n_frames} frames, more than the limit of {limits.max_frames}; not decoded", ds,
        )
    rows, cols = int_attr(ds, "Rows"), int_attr(ds, "Columns")
    if rows is None or cols is None:
        return make_issue(path, fail, IssueCode.UNSUPPORTED_PIXEL_FORMAT, "Rows or Columns is missing", ds)
    if rows < limits.min_rows or cols < limits.min_cols:
        return make_issue(
            path, fail, IssueCode.IMAGE_TOO_SMALL,
            f"image is {cols}x{rows} pixels, smaller than the minimum {limits.min_cols}x{limits.min_rows}", ds,
        )
    if rows * cols > limits.max_pixels_per_frame:
        return make_issue(
            path, fail, IssueCode.IMAGE_TOO_LARGE,
            f"image is {cols}x{rows} pixels, more than the limit of {limits.max_pixels_per_frame} per frame", ds,
        )
    return None


def budget_issue(path: Path | None, ds: Dataset, limits: IngestLimits) -> IngestIssue | None:
    """The decoded size the header declares (Rows x Columns x SamplesPerPixel x NumberOfFrames x bytes per
    sample) against the memory budget, before anything is decoded: a few-KB JPEG 2000 file can
    declare gigabytes. Runs after geometry_issue and pixel_format_issue (the numbers are valid)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples, frames = int(ds.SamplesPerPixel), int_attr(ds, "NumberOfFrames", 1) or 1
    sample_bytes = -(-int(ds.BitsAllocated) // 8)
    declared = rows * cols * samples * frames * sample_bytes
    budget = limits.decoded_bytes_budget()
    if declared <= budget:
        return None
    return make_issue(
        path, IssueKind.FAILED, IssueCode.OVER_BUDGET,
        f"header declares {declared} bytes decoded ({rows} x {cols} x {samples} samples x {frames} frames x "
        f"{sample_bytes} byte{'s' if sample_bytes > 1 else ''}), more than the budget of {budget} bytes "
        f"({MAX_DECODED_BYTES_ENV}); not decoded", ds,
    )


# The Image Pixel module's Type 1 attributes ingest and decoding rely on (Rows/Columns: geometry_issue).
_REQUIRED_PIXEL_ATTRIBUTES = ("BitsAllocated", "BitsStored", "SamplesPerPixel", "PhotometricInterpretation")


def identity_issue(path: Path | None, ds: Dataset) -> IngestIssue | None:
    """Missing or invalid Study/Series/SOP Instance UIDs (checked before any path is built from them)."""
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not text_attr(ds, k)]
    if missing:
        return make_issue(path, IssueKind.FAILED, IssueCode.MISSING_IDENTITY, f"missing {', '.join(missing)}",
                          valid_uids_only(ds))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        problem = uid_problem(text_attr(ds, keyword), keyword)
        if problem is not None:
            return make_issue(path, IssueKind.FAILED, IssueCode.INVALID_UID, problem, valid_uids_only(ds))
    return None


def valid_uids_only(ds: Dataset) -> Dataset:
    """A copy of the identity with invalid UIDs left out, so a row never carries '../../x'."""
    kept = Dataset()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if is_valid_uid(text_attr(ds, keyword)):
            setattr(kept, keyword, text_attr(ds, keyword))
    if text_attr(ds, "Modality"):
        kept.Modality = text_attr(ds, "Modality")[:16]
    return kept


def pixel_format_issue(path: Path | None, ds: Dataset) -> IngestIssue | None:
    fail = IssueKind.FAILED
    for keyword in _REQUIRED_PIXEL_ATTRIBUTES:
        if keyword not in ds or ds[keyword].value in (None, ""):
            return make_issue(path, fail, IssueCode.UNSUPPORTED_PIXEL_FORMAT,
                              f"{keyword} is missing (Image Pixel module, Type 1)", ds)
    for keyword in ("BitsAllocated", "BitsStored", "SamplesPerPixel"):
        if int_attr(ds, keyword) is None or int_attr(ds, keyword) < 1:  # type: ignore[operator]
            return make_issue(path, fail, IssueCode.UNSUPPORTED_PIXEL_FORMAT, f"{keyword} is not a positive number", ds)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return make_issue(path, fail, IssueCode.UNSUPPORTED_TRANSFER_SYNTAX, "file meta has no TransferSyntaxUID", ds)
    problem = transfer_syntax_problem(ts)
    if problem is not None:
        return make_issue(path, fail, IssueCode.UNSUPPORTED_TRANSFER_SYNTAX, problem, ds)
    problem = photometric_problem(ds)
    if problem is not None:
        return make_issue(path, fail, IssueCode.UNSUPPORTED_PIXEL_FORMAT, problem, ds)
    return None


def _expected_native_bytes(ds: Dataset, n_frames: int) -> int:
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * n_frames
    bits = int(ds.BitsAllocated)
    if bits == 1:
        return (pixels + 7) // 8
    if str(ds.PhotometricInterpretation) == "YBR_FULL_422":
        return pixels * 2 // 3 * bits // 8  # two chroma samples are shared by each pixel pair
    return pixels * bits // 8


def overlong_element(path: Path) -> str | None:
    """The first top-level element declaring more bytes than the file has left: pydicom reads it to the
    end of the file and silently loses every later element (UIDs included), so say so instead."""
    try:
        size = path.stat().st_size
        with suppress_dicom_warnings(), open(path, "rb") as fp:
            pydicom.filereader.read_preamble(fp, False)
            syntax = pydicom.uid.UID(pydicom.filereader._read_file_meta_info(fp).TransferSyntaxUID)
            if syntax.is_deflated:
                return None
            elements = pydicom.filereader.data_element_generator(fp, syntax.is_implicit_VR, syntax.is_little_endian,
                                                                 defer_size=256)
            for raw in elements:
                length, tell = raw.length, raw.value_tell
                if length == 0xFFFFFFFF or tell + length <= size:
                    continue
                tag = raw.tag
                name = pydicom.datadict.keyword_for_tag(tag) or "a private element"
                return (f"element {tag} ({name}) declares a length of {length} bytes, more than the "
                        f"{max(0, size - tell)} left in the file; the elements after it cannot be read")
    except Exception:  # noqa: BLE001 - this only refines a reason; the caller already has one
        return None
    return None


def _bits_mismatch(header: Dataset, n_frames: int, stored: int) -> str | None:
    """Pixel data whose size fits another BitsAllocated (e.g. 8-bit RGB samples labelled 16-bit)."""
    bits = int(header.BitsAllocated)
    for other in (8, 16):
        if other < bits and stored == _expected_native_bytes(header, n_frames) * other // bits:
            return (f"BitsAllocated is {bits} but PixelData holds {stored} bytes, the size of {other}-bit samples "
                    f"for Rows x Columns x SamplesPerPixel {int(header.get('SamplesPerPixel', 1) or 1)} x "
                    f"{n_frames} frame(s); BitsAllocated does not match the pixel data")
    return None


def pixel_data_issue(path: Path, header: Dataset, n_frames: int) -> IngestIssue | None:
    """Is the pixel data present and complete? Large native pixel data is checked by length only."""
    fail = IssueKind.FAILED
    with suppress_dicom_warnings() as caught:
        try:
            full = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        except Exception as exc:
            return make_issue(path, fail, IssueCode.TRUNCATED, f"file cannot be read to its end: {type(exc).__name__}", header)
    if any("End of file reached" in str(w.message) for w in caught):
        return make_issue(path, fail, IssueCode.TRUNCATED, "file ends inside the pixel data (truncated)", header)
    if PIXEL_DATA_TAG not in full:
        return make_issue(path, fail, IssueCode.NO_PIXEL_DATA, "instance has no PixelData", header)
    if full.file_meta.TransferSyntaxUID.is_compressed:
        return None
    element = full.get_item(PIXEL_DATA_TAG)
    expected = _expected_native_bytes(header, n_frames)
    if getattr(element, "value", None) is None and hasattr(element, "value_tell"):
        available = max(0, os.path.getsize(path) - int(element.value_tell))
        stored = min(int(element.length), available)
    else:
        stored = len(full.PixelData or b"")
    if stored == 0:
        return make_issue(path, fail, IssueCode.NO_PIXEL_DATA, "PixelData is empty", header)
    mismatch = _bits_mismatch(header, n_frames, stored) if stored < expected else None
    if mismatch is not None:
        return make_issue(path, fail, IssueCode.UNSUPPORTED_PIXEL_FORMAT, mismatch, header)
    if stored < expected:
        return make_issue(
            path, fail, IssueCode.TRUNCATED,
            f"PixelData holds {stored} bytes, {expected} expected from Rows x Columns x SamplesPerPixel x "
            f"BitsAllocated for {n_frames} frame(s) (truncated)", header,
        )
    return None
