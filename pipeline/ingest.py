"""Read ultrasound instances from files, keep the ones the model can take, say why for the rest.

`ingest(paths)` reads headers only (plus a cheap check that the pixel data is all there), so a night
with thousands of files costs little memory; pixels are decoded later, frame by frame, by
`iter_frames`. Every file that is not ingested gets an `IngestIssue` with a code and a plain reason,
and the rest of the batch carries on.
"""
from __future__ import annotations

import enum
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.calibration import Calibration, RegionBounds, calibration_from_dataset, crop_to_region, uncrop_mask
from pipeline.decode import (
    DecodeError,
    decode_grey_frames,
    iter_grey_frames,
    photometric_problem,
    suppress_dicom_warnings,
    transfer_syntax_problem,
)
from pipeline.studies import FetchedStudy

log = logging.getLogger(__name__)

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
ULTRASOUND_SOP_CLASSES = frozenset({US_IMAGE_STORAGE, US_MULTIFRAME_IMAGE_STORAGE})

_SEGMENTATION_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_PRESENTATION_STATE_PREFIX = "1.2.840.10008.5.1.4.1.1.11."
_RETIRED_US_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"})
_PIXEL_DATA_TAG = 0x7FE00010
# Pixel data above this size is not read while ingesting; only its length is checked.
_DEFER_BYTES = 64 * 1024


class IssueKind(str, enum.Enum):
    SKIPPED = "skipped"  # not something this pipeline segments (SEG, SR, CT, ...)
    FAILED = "failed"  # meant to be segmented but unusable (truncated, undecodable, ...)


class IssueCode(str, enum.Enum):
    NOT_DICOM = "not_dicom"
    UNREADABLE = "unreadable"
    MISSING_IDENTITY = "missing_identity"
    SEGMENTATION = "segmentation"
    STRUCTURED_REPORT = "structured_report"
    PRESENTATION_STATE = "presentation_state"
    NOT_ULTRASOUND = "not_ultrasound"
    UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"
    NO_PIXEL_DATA = "no_pixel_data"
    TRUNCATED = "truncated"
    NO_FRAMES = "no_frames"
    TOO_MANY_FRAMES = "too_many_frames"
    IMAGE_TOO_SMALL = "image_too_small"
    IMAGE_TOO_LARGE = "image_too_large"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    UNSUPPORTED_PIXEL_FORMAT = "unsupported_pixel_format"
    DECODE_ERROR = "decode_error"
    DUPLICATE_INSTANCE = "duplicate_instance"
    WRONG_STUDY = "wrong_study"


@dataclass(frozen=True)
class IngestLimits:
    """Resource guards checked on the header, before any pixel is decoded."""

    max_frames: int = 1000
    min_rows: int = 16
    min_cols: int = 16
    max_pixels_per_frame: int = 4096 * 4096

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.max_frames}")
        if self.min_rows < 1 or self.min_cols < 1:
            raise ValueError("minimum image size must be at least 1x1")
        if self.max_pixels_per_frame < self.min_rows * self.min_cols:
            raise ValueError("max_pixels_per_frame is below the minimum image size")


@dataclass(frozen=True)
class IngestIssue:
    """One file that was not ingested (or could not be decoded) and why; carries no PHI."""

    path: Path | None
    kind: IssueKind
    code: IssueCode
    reason: str
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None

    def __post_init__(self) -> None:
        if not self.reason:
            raise ValueError("an ingest issue needs a reason")


class IngestError(ValueError):
    """Raised by strict helpers; carries the issue that explains it."""

    def __init__(self, issue: IngestIssue) -> None:
        super().__init__(f"{issue.code.value}: {issue.reason}")
        self.issue = issue


@dataclass(frozen=True, eq=False)
class UsInstance:
    """An ultrasound image instance accepted for segmentation (metadata only, no pixels).

    `header` is the dataset without pixel data (what the SEG writer copies identity from);
    `load_dataset()` gives the full dataset. patient_id is kept for the SEG, never logged, and
    hidden from repr.
    """

    path: Path | None
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    n_frames: int
    rows: int
    cols: int
    photometric: str
    transfer_syntax_uid: str
    calibration: Calibration
    patient_id: str = field(default="", repr=False)
    header: Dataset = field(default_factory=Dataset, repr=False)
    in_memory: Dataset | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("study_uid", "series_uid", "sop_uid", "sop_class_uid"):
            if not getattr(self, name):
                raise ValueError(f"UsInstance needs {name}")
        if self.n_frames < 1 or self.rows < 1 or self.cols < 1:
            raise ValueError(f"UsInstance needs frames and pixels, got {self.n_frames}x{self.rows}x{self.cols}")
        if self.path is None and self.in_memory is None:
            raise ValueError("UsInstance needs a file path or an in-memory dataset")

    @property
    def is_multiframe(self) -> bool:
        """True for the US Multi-frame SOP class (even with one frame): SEG frames then cite frame numbers."""
        return self.sop_class_uid == US_MULTIFRAME_IMAGE_STORAGE

    @property
    def frame_numbers(self) -> range:
        """1-based frame numbers, as DICOM references them."""
        return range(1, self.n_frames + 1)

    def load_dataset(self) -> Dataset:
        """The full dataset, pixel data included."""
        if self.in_memory is not None:
            return self.in_memory
        assert self.path is not None
        with suppress_dicom_warnings():
            return pydicom.dcmread(self.path)

    def pixel_source(self) -> Path | Dataset:
        return self.in_memory if self.in_memory is not None else self.path  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class UsFrame:
    """One decoded frame: the full grey image, and the crop the model should see."""

    sop_uid: str
    frame_number: int
    image: np.ndarray
    calibration: Calibration

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.image.dtype != np.uint8:
            raise ValueError(f"a frame is a 2-D uint8 image, got {self.image.dtype} {self.image.shape}")
        if self.frame_number < 1:
            raise ValueError("frame numbers start at 1")

    @property
    def crop_bounds(self) -> RegionBounds:
        return self.calibration.crop_bounds(*self.image.shape)

    @property
    def model_input(self) -> np.ndarray:
        """The grey image cropped to the imaging region (no burned-in text around it)."""
        return crop_to_region(self.image, self.crop_bounds)

    def mask_to_full_frame(self, mask_on_crop: np.ndarray) -> np.ndarray:
        """Map a mask predicted on `model_input` back onto the full frame."""
        return uncrop_mask(mask_on_crop, self.crop_bounds, self.image.shape)


@dataclass(frozen=True)
class UsSeries:
    series_uid: str
    instances: tuple[UsInstance, ...]


@dataclass(frozen=True)
class UsStudy:
    study_uid: str
    series: tuple[UsSeries, ...]

    @property
    def instances(self) -> tuple[UsInstance, ...]:
        return tuple(i for s in self.series for i in s.instances)


@dataclass
class IngestResult:
    instances: list[UsInstance] = field(default_factory=list)
    issues: list[IngestIssue] = field(default_factory=list)

    def studies(self) -> list[UsStudy]:
        """Instances grouped by study then series, in first-seen order."""
        grouped: dict[str, dict[str, list[UsInstance]]] = {}
        for inst in self.instances:
            grouped.setdefault(inst.study_uid, {}).setdefault(inst.series_uid, []).append(inst)
        return [
            UsStudy(study, tuple(UsSeries(series, tuple(insts)) for series, insts in by_series.items()))
            for study, by_series in grouped.items()
        ]


# ---------------------------------------------------------------------------------------------
# Classification


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, None)
    return str(value).strip() if value is not None else ""


def _issue(
    path: Path | None, kind: IssueKind, code: IssueCode, reason: str, ds: Dataset | None = None
) -> IngestIssue:
    if ds is None:
        return IngestIssue(path, kind, code, reason)
    return IngestIssue(
        path,
        kind,
        code,
        reason,
        study_uid=_text(ds, "StudyInstanceUID") or None,
        series_uid=_text(ds, "SeriesInstanceUID") or None,
        sop_uid=_text(ds, "SOPInstanceUID") or None,
        sop_class_uid=_text(ds, "SOPClassUID") or None,
        modality=_text(ds, "Modality") or None,
    )


def _sop_class_issue(path: Path | None, ds: Dataset) -> IngestIssue | None:
    """A skip record for objects that are not ultrasound images, else None."""
    sop_class, modality = _text(ds, "SOPClassUID"), _text(ds, "Modality")
    label = pydicom.uid.UID(sop_class).name if sop_class else "(missing)"
    if sop_class in ULTRASOUND_SOP_CLASSES:
        return None
    if sop_class == SECONDARY_CAPTURE_IMAGE_STORAGE and modality == "US":
        return None
    skip = IssueKind.SKIPPED
    if sop_class in _SEGMENTATION_CLASSES:
        return _issue(path, skip, IssueCode.SEGMENTATION, f"{label} is a segmentation, not an image", ds)
    if sop_class.startswith(_SR_PREFIX):
        return _issue(path, skip, IssueCode.STRUCTURED_REPORT, f"{label} is a structured report", ds)
    if sop_class.startswith(_PRESENTATION_STATE_PREFIX):
        return _issue(path, skip, IssueCode.PRESENTATION_STATE, f"{label} is a presentation state", ds)
    if sop_class in _RETIRED_US_CLASSES:
        return _issue(path, skip, IssueCode.UNSUPPORTED_SOP_CLASS, f"retired SOP class {label} is not supported", ds)
    if modality != "US":
        return _issue(
            path, skip, IssueCode.NOT_ULTRASOUND,
            f"modality {modality or '(missing)'} ({label}) is not ultrasound", ds,
        )
    return _issue(path, skip, IssueCode.UNSUPPORTED_SOP_CLASS, f"ultrasound SOP class {label} is not supported", ds)


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _geometry_issue(path: Path | None, ds: Dataset, limits: IngestLimits) -> IngestIssue | None:
    """Frame count and image size checks; nothing here touches pixel data."""
    fail = IssueKind.FAILED
    default_frames = None if _text(ds, "SOPClassUID") == US_MULTIFRAME_IMAGE_STORAGE else 1
    n_frames = _int(ds, "NumberOfFrames", default_frames)
    if n_frames is None:
        return _issue(path, fail, IssueCode.NO_FRAMES, "NumberOfFrames is missing or not a number", ds)
    if n_frames < 1:
        return _issue(path, fail, IssueCode.NO_FRAMES, f"NumberOfFrames is {n_frames}: no frames to segment", ds)
    if n_frames > limits.max_frames:
        return _issue(
            path, fail, IssueCode.TOO_MANY_FRAMES,
            f"cine has {n_frames} frames, more than the limit of {limits.max_frames}; not decoded", ds,
        )
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or cols is None:
        return _issue(path, fail, IssueCode.UNSUPPORTED_PIXEL_FORMAT, "Rows or Columns is missing", ds)
    if rows < limits.min_rows or cols < limits.min_cols:
        return _issue(
            path, fail, IssueCode.IMAGE_TOO_SMALL,
            f"image is {cols}x{rows} pixels, smaller than the minimum {limits.min_cols}x{limits.min_rows}", ds,
        )
    if rows * cols > limits.max_pixels_per_frame:
        return _issue(
            path, fail, IssueCode.IMAGE_TOO_LARGE,
            f"image is {cols}x{rows} pixels, more than the limit of {limits.max_pixels_per_frame} per frame", ds,
        )
    return None


def _pixel_format_issue(path: Path | None, ds: Dataset) -> IngestIssue | None:
    fail = IssueKind.FAILED
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return _issue(path, fail, IssueCode.UNSUPPORTED_TRANSFER_SYNTAX, "file meta has no TransferSyntaxUID", ds)
    problem = transfer_syntax_problem(ts)
    if problem is not None:
        return _issue(path, fail, IssueCode.UNSUPPORTED_TRANSFER_SYNTAX, problem, ds)
    problem = photometric_problem(ds)
    if problem is not None:
        return _issue(path, fail, IssueCode.UNSUPPORTED_PIXEL_FORMAT, problem, ds)
    return None


def _expected_native_bytes(ds: Dataset, n_frames: int) -> int:
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * n_frames
    bits = int(ds.BitsAllocated)
    if bits == 1:
        return (pixels + 7) // 8
    if str(ds.PhotometricInterpretation) == "YBR_FULL_422":
        return pixels * 2 // 3 * bits // 8  # two chroma samples are shared by each pixel pair
    return pixels * bits // 8


def _pixel_data_issue(path: Path, header: Dataset, n_frames: int) -> IngestIssue | None:
    """Is the pixel data present and complete? Large native pixel data is checked by length only."""
    fail = IssueKind.FAILED
    with suppress_dicom_warnings() as caught:
        try:
            full = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        except Exception as exc:
            return _issue(path, fail, IssueCode.TRUNCATED, f"file cannot be read to its end: {type(exc).__name__}", header)
    if any("End of file reached" in str(w.message) for w in caught):
        return _issue(path, fail, IssueCode.TRUNCATED, "file ends inside the pixel data (truncated)", header)
    if _PIXEL_DATA_TAG not in full:
        return _issue(path, fail, IssueCode.NO_PIXEL_DATA, "instance has no PixelData", header)
    if full.file_meta.TransferSyntaxUID.is_compressed:
        return None
    element = full.get_item(_PIXEL_DATA_TAG)
    expected = _expected_native_bytes(header, n_frames)
    if getattr(element, "value", None) is None and hasattr(element, "value_tell"):
        available = max(0, os.path.getsize(path) - int(element.value_tell))
        stored = min(int(element.length), available)
    else:
        stored = len(full.PixelData or b"")
    if stored == 0:
        return _issue(path, fail, IssueCode.NO_PIXEL_DATA, "PixelData is empty", header)
    if stored < expected:
        return _issue(
            path, fail, IssueCode.TRUNCATED,
            f"pixel data holds {stored} bytes, {expected} expected for {n_frames} frame(s) (truncated)", header,
        )
    return None


def instance_from_header(
    header: Dataset, path: Path | None, limits: IngestLimits = IngestLimits(), in_memory: Dataset | None = None
) -> UsInstance | IngestIssue:
    """Classify and validate a header; an UsInstance when it is a segmentable ultrasound image."""
    issue = _sop_class_issue(path, header)
    if issue is None:
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not _text(header, k)]
        if missing:
            issue = _issue(path, IssueKind.FAILED, IssueCode.MISSING_IDENTITY, f"missing {', '.join(missing)}", header)
    issue = issue or _geometry_issue(path, header, limits) or _pixel_format_issue(path, header)
    if issue is not None:
        return issue
    calibration = calibration_from_dataset(header)
    return UsInstance(
        path=path,
        study_uid=_text(header, "StudyInstanceUID"),
        series_uid=_text(header, "SeriesInstanceUID"),
        sop_uid=_text(header, "SOPInstanceUID"),
        sop_class_uid=_text(header, "SOPClassUID"),
        modality=_text(header, "Modality"),
        n_frames=_int(header, "NumberOfFrames", 1) or 1,
        rows=int(header.Rows),
        cols=int(header.Columns),
        photometric=_text(header, "PhotometricInterpretation"),
        transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
        calibration=calibration,
        patient_id=_text(header, "PatientID"),
        header=header,
        in_memory=in_memory,
    )


def read_instance(path: str | os.PathLike[str], limits: IngestLimits = IngestLimits()) -> UsInstance | IngestIssue:
    """Read one file: an UsInstance, or an IngestIssue saying why not. Never raises for bad input."""
    path = Path(path)
    try:
        with suppress_dicom_warnings():
            header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return _issue(path, IssueKind.FAILED, IssueCode.NOT_DICOM, "not a DICOM file (no DICM preamble/header)")
    except Exception as exc:  # pydicom raises many kinds on damaged headers
        return _issue(path, IssueKind.FAILED, IssueCode.UNREADABLE, f"DICOM header cannot be read: {type(exc).__name__}")
    if "SOPClassUID" not in header and "SOPInstanceUID" not in header:
        return _issue(path, IssueKind.FAILED, IssueCode.UNREADABLE, "DICOM header has no SOP Class/Instance UID (damaged file?)")
    result = instance_from_header(header, path, limits)
    if isinstance(result, IngestIssue):
        return result
    return _pixel_data_issue(path, header, result.n_frames) or result


def instance_from_dataset(ds: Dataset, limits: IngestLimits = IngestLimits()) -> UsInstance | IngestIssue:
    """The in-memory counterpart of read_instance (e.g. a dataset received over DICOMweb)."""
    header = Dataset()
    header.update({e.tag: e for e in ds if e.tag != _PIXEL_DATA_TAG})
    header.file_meta = getattr(ds, "file_meta", Dataset())
    result = instance_from_header(header, None, limits, in_memory=ds)
    if isinstance(result, IngestIssue):
        return result
    if _PIXEL_DATA_TAG not in ds:
        return _issue(None, IssueKind.FAILED, IssueCode.NO_PIXEL_DATA, "instance has no PixelData", header)
    return result


def discover_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files under the given files/folders (recursive), sorted for a stable batch order."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            found.add(p)
        else:
            raise FileNotFoundError(f"input path does not exist: {p}")
    return sorted(found)


def ingest(
    paths: Iterable[str | os.PathLike[str]],
    limits: IngestLimits = IngestLimits(),
    expected_study_uid: str | None = None,
) -> IngestResult:
    """Ingest every file under `paths`; bad files become issues and the rest carries on.

    With `expected_study_uid`, instances of any other study are skipped (a fetch must never mix
    studies). A repeated SOP Instance UID keeps its first file.
    """
    result = IngestResult()
    seen: set[str] = set()
    for path in discover_files(paths):
        item = read_instance(path, limits)
        if isinstance(item, UsInstance):
            if expected_study_uid is not None and item.study_uid != expected_study_uid:
                item = _issue(path, IssueKind.SKIPPED, IssueCode.WRONG_STUDY,
                              "instance belongs to another study than the one fetched", item.header)
            elif item.sop_uid in seen:
                item = _issue(path, IssueKind.SKIPPED, IssueCode.DUPLICATE_INSTANCE,
                              "SOP Instance UID already ingested from another file", item.header)
        if isinstance(item, UsInstance):
            seen.add(item.sop_uid)
            result.instances.append(item)
        else:
            result.issues.append(item)
    log.info("ingest: %d instances, %d skipped, %d failed", len(result.instances),
             sum(i.kind is IssueKind.SKIPPED for i in result.issues),
             sum(i.kind is IssueKind.FAILED for i in result.issues))
    return result


def ingest_fetched(fetched: FetchedStudy, limits: IngestLimits = IngestLimits()) -> IngestResult:
    """Ingest the files a source fetched for one study, refusing instances of other studies."""
    return ingest(fetched.files, limits, expected_study_uid=fetched.ref.study_uid)


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_issue(instance: UsInstance, error: Exception) -> IngestIssue:
    """The failure record for an instance whose pixels could not be decoded."""
    return IngestIssue(
        instance.path, IssueKind.FAILED, IssueCode.DECODE_ERROR, str(error) or type(error).__name__,
        instance.study_uid, instance.series_uid, instance.sop_uid, instance.sop_class_uid, instance.modality,
    )


def iter_frames(instance: UsInstance) -> Iterator[UsFrame]:
    """Decode frame by frame; raises DecodeError (a ValueError) when the pixel data is unusable."""
    n = 0
    for n, image in enumerate(iter_grey_frames(instance.pixel_source(), instance.header), start=1):
        if n > instance.n_frames:
            raise DecodeError(f"pixel data holds more frames than NumberOfFrames={instance.n_frames}")
        yield UsFrame(instance.sop_uid, n, image, instance.calibration)
    if n != instance.n_frames:
        raise DecodeError(f"pixel data holds {n} frames, NumberOfFrames says {instance.n_frames}")


def decode_frames(instance: UsInstance) -> np.ndarray:
    """All frames of an instance as a (frames, rows, cols) uint8 grey array."""
    frames = decode_grey_frames(instance.pixel_source(), instance.header)
    if frames.shape[0] != instance.n_frames:
        raise DecodeError(f"pixel data holds {frames.shape[0]} frames, NumberOfFrames says {instance.n_frames}")
    return frames
