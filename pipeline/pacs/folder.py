"""The embedded archive: DICOM files in an inbox folder in, SEGs into an outbox folder out."""
from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pipeline.decode import suppress_dicom_warnings
from pipeline.dicom_file import write_dicom_file
from pipeline.ingest_checks import overlong_element
from pipeline.pacs.base import (
    answers,
    InstanceRef,
    PacsConfigError,
    PacsOperationError,
    StoreResult,
    StudyFilters,
    instance_path,
)
from pipeline.studies import DateWindow, FetchedStudy, RejectedFile, StudyRef
from pipeline.uid_check import is_valid_uid, uid_problem

log = logging.getLogger(__name__)

# Only what grouping and filtering need, so discovery never reads pixel data.
_HEADER_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "StudyDate", "Modality"]


@dataclass(frozen=True)
class _Header:
    path: Path
    instance: InstanceRef
    study_date: str


def _file_problem(path: Path, root: Path | None) -> tuple[str, str] | None:
    """Refuse, without opening it, what is not a regular file inside `root`: a FIFO or device would
    block or never end, and a symbolic link may lead anywhere (/etc/passwd, another patient's folder)."""
    try:
        info = path.lstat()
    except OSError as exc:
        return "unreadable", f"file cannot be examined: {type(exc).__name__}"
    if stat.S_ISLNK(info.st_mode):
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return "broken_link", "symbolic link to nothing (or a loop)"
        if root is not None and not target.is_relative_to(root.resolve()):
            return "link_outside_inbox", "symbolic link leads outside the inbox; not followed"
        info = target.stat()
    if not stat.S_ISREG(info.st_mode):
        return "not_regular_file", "not a regular file (FIFO, socket or device); not opened"
    return None


def inspect_file(path: Path, root: Path | None = None) -> _Header | RejectedFile:
    """The identity of one file, or why it was refused. Never raises for bad input (a header nested
    3000 levels deep included) and never opens what is not a regular file inside `root`."""
    problem = _file_problem(path, root)
    if problem is not None:
        return RejectedFile(str(path), *problem)
    try:
        with suppress_dicom_warnings():
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        return RejectedFile(str(path), "not_dicom", "not a DICOM file (no DICM preamble/header)")
    except RecursionError:
        return RejectedFile(str(path), "unreadable", "DICOM header nests sequences too deeply to read")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on damaged headers
        return RejectedFile(str(path), "unreadable", f"DICOM header cannot be read: {type(exc).__name__}")
    if len(ds) == 0:
        return RejectedFile(str(path), "unreadable", "DICOM file holds no identity at all (header truncated or empty)")
    study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    for value, what in ((study_uid, "StudyInstanceUID"), (sop_uid, "SOPInstanceUID")):
        problem_text = uid_problem(value, what)
        if problem_text is not None:
            code = "missing_identity" if not value else "invalid_uid"
            overlong = overlong_element(path) if not value else None
            if overlong is not None:  # the UID is there, hidden behind an element that claims the rest
                code, problem_text = "unreadable", overlong
            return RejectedFile(str(path), code, problem_text,
                                study_uid=study_uid if is_valid_uid(study_uid) else None,
                                sop_uid=sop_uid if is_valid_uid(sop_uid) else None)
    return _Header(
        path=path,
        instance=InstanceRef(study_uid=study_uid, series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                             sop_uid=sop_uid, sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
                             modality=str(ds.get("Modality", "") or "")),
        study_date=str(ds.get("StudyDate", "") or ""),
    )


def read_header(path: Path, root: Path | None = None) -> _Header | None:
    """The identity of one DICOM file, or None if it is not DICOM (or has no valid UIDs)."""
    found = inspect_file(path, root)
    return found if isinstance(found, _Header) else None


def scan_with_rejections(root: Path) -> tuple[list[_Header], list[RejectedFile]]:
    """Every DICOM file under root (hidden files and partial writes skipped), in path order, and every
    other file with the reason it was refused. Symbolic links to folders are not followed."""
    headers, rejected = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(".part"):
                continue
            found = inspect_file(Path(dirpath) / name, root)
            (headers if isinstance(found, _Header) else rejected).append(found)
    return headers, rejected


def first_file_per_sop_uid(headers: list[_Header]) -> tuple[list[_Header], list[RejectedFile]]:
    """The one rule for repeated SOP Instance UIDs (in one study or across studies): the first file in
    sorted path order wins; every later one is rejected as `duplicate_sop_uid`, naming the winner."""
    winners: dict[str, Path] = {}
    kept, rejected = [], []
    for header in sorted(headers, key=lambda h: h.path):
        ref = header.instance
        winner = winners.setdefault(ref.sop_uid, header.path)
        if winner == header.path:
            kept.append(header)
        else:
            rejected.append(RejectedFile(str(header.path), "duplicate_sop_uid",
                                         f"SOP Instance UID also in {winner}, which wins (first in path order)",
                                         study_uid=ref.study_uid, sop_uid=ref.sop_uid))
    return kept, rejected


def scan(root: Path) -> list[_Header]:
    """Every DICOM file under root (hidden files and partial writes skipped), in path order."""
    return scan_with_rejections(root)[0]


class FolderArchive:
    """discover/fetch read `inbox`; store writes <outbox>/<StudyUID>/<SOPInstanceUID>.dcm atomically."""

    def __init__(self, inbox: Path | str | None, outbox: Path | str | None) -> None:
        self.inbox = Path(inbox) if inbox else None
        self.outbox = Path(outbox) if outbox else None
        self._index: dict[str, list[Path]] = {}
        self.rejected: list[RejectedFile] = []  # files the last discover refused, with the reason

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
        headers, self.rejected = scan_with_rejections(self._require_inbox())
        headers, duplicates = first_file_per_sop_uid(headers)
        self.rejected += duplicates
        for header in headers:
            by_study[header.instance.study_uid].append(header)
        self._index = {uid: [h.path for h in hs] for uid, hs in by_study.items()}
        studies = []
        for uid, headers in by_study.items():
            # Instances of one study may disagree on StudyDate; the first non-empty one decides.
            study_date = next((h.study_date for h in headers if h.study_date), "")
            modalities = tuple(sorted({h.instance.modality for h in headers if h.instance.modality}))
            if not study_date.strip():  # in no window at all: said every night rather than lost for good
                self.rejected += [_out_of_scope(h, "no_study_date", "no instance of the study has a StudyDate; "
                                                "it belongs to no date window") for h in headers]
                continue
            if not window.contains(study_date):
                continue
            if not any(m in filters.modalities for m in modalities):
                self.rejected += [_out_of_scope(h, "not_ultrasound", f"{_modality_text(h)}; the study has no "
                                                f"{'/'.join(filters.modalities)} instance") for h in headers]
                continue
            studies.append(StudyRef(study_uid=uid, study_date=study_date, modalities=modalities,
                                    n_instances=len(headers), files=tuple(str(h.path) for h in headers)))
        studies.sort(key=lambda s: (s.study_date, s.study_uid))
        log.info("folder discover %s: %d studies (of %d in inbox)", window.dicom_range(), len(studies), len(by_study))
        return studies

    def fetch(self, study: StudyRef, dest_dir: Path) -> FetchedStudy:
        """Copy (hard-link where possible) the study's files to dest_dir/<StudyUID>/<SOPInstanceUID>.dcm.

        The files are those discover indexed (`study.files`); only a StudyRef made elsewhere scans the inbox."""
        # discover's index, carried by the StudyRef (the night scans the inbox once, not once per study)
        paths = [Path(p) for p in study.files] or self._index.get(study.study_uid)
        if paths is None:
            headers = first_file_per_sop_uid(scan(self._require_inbox()))[0]
            paths = [h.path for h in headers if h.instance.study_uid == study.study_uid]
        files, origins = [], {}
        for source in paths:
            header = read_header(source, self.inbox)
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


def _modality_text(header: _Header) -> str:
    modality = header.instance.modality.strip()
    if not modality:
        return "Modality is missing, not ultrasound"
    # A CS value is short and plain; anything else (a hostile header) is not quoted.
    shown = modality if re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality) else "(invalid value)"
    return f"modality {shown} is not ultrasound"


def _out_of_scope(header: _Header, code: str, reason: str) -> RejectedFile:
    ref = header.instance
    return RejectedFile(str(header.path), code, reason, study_uid=ref.study_uid, sop_uid=ref.sop_uid)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)  # same file system: no bytes copied
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


__all__ = ["FolderArchive", "first_file_per_sop_uid", "inspect_file", "read_header", "scan", "scan_with_rejections"]
