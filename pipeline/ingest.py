"""Read ultrasound instances from files, keep the ones the model can take, say why for the rest.

`ingest(paths)` reads headers only (plus a cheap check that the pixel data is all there), so a night
with thousands of files costs little memory; pixels are decoded later, frame by frame, by
`iter_frames`. Every file that is not ingested gets an `IngestIssue` with a code and a plain reason,
and the rest of the batch carries on.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.calibration import calibration_from_dataset
from pipeline.decode import (
    DecodeError,
    decode_grey_frames,
    iter_grey_frames,
    suppress_dicom_warnings,
)
from pipeline.ingest_checks import (
    PIXEL_DATA_TAG,
    budget_issue,
    valid_uids_only,
    geometry_issue,
    identity_issue,
    int_attr,
    make_issue,
    overlong_element,
    pixel_data_issue,
    pixel_format_issue,
    sop_class_issue,
    text_attr,
)
from pipeline.j2k_check import instance_warnings
from pipeline.studies import FetchedStudy
from pipeline.us_records import (
    IngestIssue,
    IngestLimits,
    IngestResult,
    IssueCode,
    IssueKind,
    UsFrame,
    UsInstance,
)

log = logging.getLogger(__name__)



def instance_from_header(
    header: Dataset, path: Path | None, limits: IngestLimits = IngestLimits(), in_memory: Dataset | None = None
) -> UsInstance | IngestIssue:
    """Classify and validate a header; an UsInstance when it is a segmentable ultrasound image."""
    issue = identity_issue(path, header)  # first: no row, path or SEG is made from an invalid UID
    issue = issue or sop_class_issue(path, header)
    issue = issue or geometry_issue(path, header, limits) or pixel_format_issue(path, header)
    issue = issue or budget_issue(path, header, limits)  # before any decoding (issue 16 (9))
    if issue is not None:
        return issue
    calibration = calibration_from_dataset(header)
    return UsInstance(
        path=path,
        study_uid=text_attr(header, "StudyInstanceUID"),
        series_uid=text_attr(header, "SeriesInstanceUID"),
        sop_uid=text_attr(header, "SOPInstanceUID"),
        sop_class_uid=text_attr(header, "SOPClassUID"),
        modality=text_attr(header, "Modality"),
        n_frames=int_attr(header, "NumberOfFrames", 1) or 1,
        rows=int(header.Rows),
        cols=int(header.Columns),
        photometric=text_attr(header, "PhotometricInterpretation"),
        transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
        calibration=calibration,
        patient_id=text_attr(header, "PatientID"),
        header=header,
        in_memory=in_memory,
    )


def read_instance(path: str | os.PathLike[str], limits: IngestLimits = IngestLimits()) -> UsInstance | IngestIssue:
    """Read one file: an UsInstance, or an IngestIssue saying why not. Never raises for bad input."""
    path = Path(path)
    limits.decoded_bytes_budget()  # a bad SAM2RAD_MAX_DECODED_BYTES is a configuration error, raised here
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block forever, a device never end
            return make_issue(path, IssueKind.FAILED, IssueCode.NOT_REGULAR_FILE,
                              "not a regular file (FIFO, socket or device); not opened")
        with suppress_dicom_warnings():
            header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return make_issue(path, IssueKind.FAILED, IssueCode.NOT_DICOM, "not a DICOM file (no DICM preamble/header)")
    except RecursionError:
        return make_issue(path, IssueKind.FAILED, IssueCode.UNREADABLE, "DICOM header nests sequences too deeply to read")
    except Exception as exc:  # pydicom raises many kinds on damaged headers
        return make_issue(path, IssueKind.FAILED, IssueCode.UNREADABLE, f"DICOM header cannot be read: {type(exc).__name__}")
    if any(not text_attr(header, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
        overlong = overlong_element(path)  # a huge declared length hides every later element
        if overlong is not None:
            return make_issue(path, IssueKind.FAILED, IssueCode.UNREADABLE, overlong, valid_uids_only(header))
    if "SOPClassUID" not in header and "SOPInstanceUID" not in header:
        return make_issue(path, IssueKind.FAILED, IssueCode.UNREADABLE, "DICOM header has no SOP Class/Instance UID (damaged file?)")
    try:
        result = instance_from_header(header, path, limits)
        if isinstance(result, IngestIssue):
            return result
        issue = pixel_data_issue(path, header, result.n_frames)
        if issue is not None:
            return issue
        found = instance_warnings(path, header, result.n_frames)  # issue 16 (18)
        return dataclasses.replace(result, warnings=found) if found else result
    except RecursionError:
        return make_issue(path, IssueKind.FAILED, IssueCode.UNREADABLE, "DICOM file nests sequences too deeply to read")
    except Exception as exc:  # noqa: BLE001 - a check tripping on an odd value fails this file only
        # The exception's text may quote a value (PHI): only its type is kept.
        return make_issue(path, IssueKind.FAILED, IssueCode.UNREADABLE,
                          f"header check failed: {type(exc).__name__}", valid_uids_only(header))


def instance_from_dataset(ds: Dataset, limits: IngestLimits = IngestLimits()) -> UsInstance | IngestIssue:
    """The in-memory counterpart of read_instance (e.g. a dataset received over DICOMweb)."""
    header = Dataset()
    header.update({e.tag: e for e in ds if e.tag != PIXEL_DATA_TAG})
    header.file_meta = getattr(ds, "file_meta", Dataset())
    result = instance_from_header(header, None, limits, in_memory=ds)
    if isinstance(result, IngestIssue):
        return result
    if PIXEL_DATA_TAG not in ds:
        return make_issue(None, IssueKind.FAILED, IssueCode.NO_PIXEL_DATA, "instance has no PixelData", header)
    found = instance_warnings(ds, header, result.n_frames)
    return dataclasses.replace(result, warnings=found) if found else result


def discover_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files under the given files/folders (recursive), sorted for a stable batch order."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            # Everything but folders: a FIFO or a socket becomes an issue row (never opened), not a silent gap.
            found.update(f for f in p.rglob("*") if not f.is_dir())
        elif p.exists() or p.is_symlink():
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
    studies). A repeated SOP Instance UID keeps its first file in sorted path order (the rule of the
    nightly's discovery too); each later one is skipped as `duplicate_sop_uid`, naming the winner.
    """
    result = IngestResult()
    seen: dict[str, Path] = {}
    for path in discover_files(paths):
        item = read_instance(path, limits)
        if isinstance(item, UsInstance):
            if expected_study_uid is not None and item.study_uid != expected_study_uid:
                item = make_issue(path, IssueKind.SKIPPED, IssueCode.WRONG_STUDY,
                              "instance belongs to another study than the one fetched", item.header)
            elif item.sop_uid in seen:
                item = make_issue(path, IssueKind.SKIPPED, IssueCode.DUPLICATE_SOP_UID,
                                  f"SOP Instance UID also in {seen[item.sop_uid]}, which wins (first in path order)",
                                  item.header)
        if isinstance(item, UsInstance):
            seen[item.sop_uid] = path
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
    frames = iter_grey_frames(instance.pixel_source(), instance.header, messages=instance.decoder_messages)
    for n, image in enumerate(frames, start=1):
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
