"""The embedded archive: DICOM files in an inbox folder in, SEGs into an outbox folder out."""
from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.dicom_file import write_dicom_file
from pipeline.pacs.base import (
    answers,
    InstanceRef,
    PacsConfigError,
    PacsOperationError,
    StoreResult,
    StudyFilters,
    instance_path,
)
from pipeline.studies import DateWindow, FetchedStudy, StudyRef

log = logging.getLogger(__name__)

# Only what grouping and filtering need, so discovery never reads pixel data.
_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyDate", "Modality"]


@dataclass(frozen=True)
class _Header:
    path: Path
    instance: InstanceRef
    study_date: str


def read_header(path: Path) -> _Header | None:
    """The identity of one DICOM file, or None if it is not DICOM (or has no UIDs)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError):
        return None
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    if not study_uid or not sop_uid:
        return None
    return _Header(
        path=path,
        instance=InstanceRef(study_uid=study_uid, series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                             sop_uid=sop_uid, sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
                             modality=str(ds.get("Modality", "") or "")),
        study_date=str(ds.get("StudyDate", "") or ""),
    )


def scan(root: Path) -> list[_Header]:
    """Every DICOM file under root (hidden files and partial writes skipped), in path order."""
    headers = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(".part"):
                continue
            header = read_header(Path(dirpath) / name)
            if header is not None:
                headers.append(header)
    return headers


class FolderArchive:
    """discover/fetch read `inbox`; store writes <outbox>/<StudyUID>/<SOPInstanceUID>.dcm atomically."""

    def __init__(self, inbox: Path | str | None, outbox: Path | str | None) -> None:
        self.inbox = Path(inbox) if inbox else None
        self.outbox = Path(outbox) if outbox else None
        self._index: dict[str, list[Path]] = {}

    @classmethod
    def from_settings(cls, settings) -> "FolderArchive":
        return cls(settings.inbox, settings.outbox)

    def _require_inbox(self) -> Path:
        if self.inbox is None:
            raise PacsConfigError("the folder archive has no inbox", setting="SAM2RAD_INBOX")
        if not self.inbox.is_dir():
            raise PacsConfigError(f"inbox {self.inbox} is not a directory", setting="SAM2RAD_INBOX")
        return self.inbox

    def _require_outbox(self) -> Path:
        if self.outbox is None:
            raise PacsConfigError("the folder archive has no outbox", setting="SAM2RAD_OUTBOX")
        return self.outbox

    # -- source ----------------------------------------------------------------------------
    def discover(self, window: DateWindow, filters: StudyFilters | None = None) -> list[StudyRef]:
        filters = filters or StudyFilters()
        by_study: dict[str, list[_Header]] = defaultdict(list)
        for header in scan(self._require_inbox()):
            by_study[header.instance.study_uid].append(header)
        self._index = {uid: [h.path for h in hs] for uid, hs in by_study.items()}
        studies = []
        for uid, headers in by_study.items():
            # Instances of one study may disagree on StudyDate; the first non-empty one decides.
            study_date = next((h.study_date for h in headers if h.study_date), "")
            modalities = tuple(sorted({h.instance.modality for h in headers if h.instance.modality}))
            if not window.contains(study_date) or not any(m in filters.modalities for m in modalities):
                continue
            studies.append(StudyRef(study_uid=uid, study_date=study_date, modalities=modalities,
                                    n_instances=len(headers)))
        studies.sort(key=lambda s: (s.study_date, s.study_uid))
        log.info("folder discover %s: %d studies (of %d in inbox)", window.dicom_range(), len(studies), len(by_study))
        return studies

    def fetch(self, study: StudyRef, dest_dir: Path) -> FetchedStudy:
        """Copy (hard-link where possible) the study's files to dest_dir/<StudyUID>/<SOPInstanceUID>.dcm."""
        paths = self._index.get(study.study_uid)
        if paths is None:
            paths = [h.path for h in scan(self._require_inbox()) if h.instance.study_uid == study.study_uid]
        files, origins = [], {}
        for source in paths:
            header = read_header(source)
            if header is None or header.instance.study_uid != study.study_uid:
                continue  # changed since discovery; never mix studies
            target = instance_path(Path(dest_dir), study.study_uid, header.instance.sop_uid)
            _link_or_copy(source, target)
            files.append(target)
            origins[target] = str(source)
        if not files:
            raise PacsOperationError(f"study {study.study_uid} has no instances in {self.inbox}")
        log.info("folder fetch %s: %d instances", study.study_uid, len(files))
        return FetchedStudy(ref=study, files=sorted(files), origins=origins)

    def list_instances(self, study_uid: str, modality: str | None = None) -> list[InstanceRef]:
        """Instances of a study in the inbox and the outbox together (the folder's whole archive)."""
        roots = [r for r in (self.inbox, self.outbox) if r is not None and r.is_dir()]
        found: dict[str, InstanceRef] = {}
        for root in roots:
            for header in scan(root):
                ref = header.instance
                if ref.study_uid == study_uid and (modality is None or ref.modality == modality):
                    found.setdefault(ref.sop_uid, ref)
        return sorted(found.values(), key=lambda r: (r.series_uid, r.sop_uid))

    # -- sink ------------------------------------------------------------------------------
    def store(self, item: Dataset | Path) -> StoreResult:
        outbox = self._require_outbox()
        if isinstance(item, Dataset):
            study_uid, sop_uid = item.StudyInstanceUID, item.SOPInstanceUID
            target = write_dicom_file(item, instance_path(outbox, study_uid, sop_uid))
        else:
            header = read_header(Path(item))
            if header is None:
                raise PacsOperationError(f"{item} is not a DICOM file with Study/SOP Instance UIDs")
            study_uid, sop_uid = header.instance.study_uid, header.instance.sop_uid
            target = write_dicom_file(Path(item).read_bytes(), instance_path(outbox, study_uid, sop_uid))
        log.info("folder store %s (study %s)", sop_uid, study_uid)
        return StoreResult(sop_uid=str(sop_uid), study_uid=str(study_uid), destination=str(target))

    # -- connectivity ----------------------------------------------------------------------
    def check(self) -> str:
        inbox = self._require_inbox()
        outbox = self._require_outbox()
        outbox.mkdir(parents=True, exist_ok=True)
        if not os.access(outbox, os.W_OK):
            raise PacsConfigError(f"outbox {outbox} is not writable", setting="SAM2RAD_OUTBOX")
        return f"folder archive: inbox {inbox}, outbox {outbox}"

    def echo(self) -> bool:
        return answers(self.check)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)  # same file system: no bytes copied
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


__all__ = ["FolderArchive", "read_header", "scan"]
