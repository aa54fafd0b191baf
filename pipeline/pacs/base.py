"""The one interface every archive implements (folder, DIMSE, DICOMweb), its records and its errors.

An archive is a source (`discover`, `fetch`) and a sink (`store`) of DICOM instances, plus a
connectivity check. Errors are `PacsError`s that say what went wrong, where, and which setting to fix;
`retriable` tells the store loop whether waiting could help.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

import pydicom
from pydicom.dataset import Dataset

from pipeline.studies import DateWindow, FetchedStudy, StudyRef
from pipeline.uid_check import is_valid_uid, uid_problem

log = logging.getLogger(__name__)



# -- errors ------------------------------------------------------------------------------------
class PacsError(Exception):
    """An archive operation failed. `setting` names the env variable most likely to fix it."""

    retriable: bool = False

    def __init__(self, message: str, *, setting: str | None = None, retriable: bool | None = None) -> None:
        if setting and setting not in message:
            message = f"{message}; set {setting}"  # every message names the knob to turn
        super().__init__(message)
        self.setting = setting
        if retriable is not None:
            self.retriable = retriable


class PacsConfigError(PacsError):
    """A setting is missing or wrong; nothing will work until it is fixed."""


class PacsUnreachable(PacsError):
    """No connection (refused, timed out, DNS): the archive may be down; worth retrying later."""

    retriable = True


class PacsAssociationRejected(PacsError):
    """The DICOM peer refused the association (AE titles, presentation contexts)."""


class PacsAccessDenied(PacsError):
    """Credentials or permissions refused (wrong password, calling AE not allowed)."""


class PacsOperationError(PacsError):
    """The archive answered but the query/retrieve/store failed."""


# -- records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyFilters:
    """What to look for inside the date window. ModalitiesInStudy must contain one of these."""

    modalities: tuple[str, ...] = ("US",)

    def accepts(self, modalities_in_study: Sequence[str]) -> bool:
        """Client-side re-check: some archives ignore a matching key they do not support."""
        if not modalities_in_study:  # the archive did not say; trust its own filtering
            return True
        return any(m in self.modalities for m in modalities_in_study)


@dataclass(frozen=True)
class InstanceRef:
    """One instance as a query returns it (no pixel data)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""
    modality: str = ""


@dataclass(frozen=True)
class StoreResult:
    """A store the archive confirmed."""

    sop_uid: str
    study_uid: str
    destination: str  # e.g. "dimse://ORTHANC@127.0.0.1:4242" or a file path
    warning: str = ""


# -- the interface -----------------------------------------------------------------------------
@runtime_checkable
class StudySource(Protocol):
    def discover(self, window: DateWindow, filters: StudyFilters | None = None) -> list[StudyRef]:
        """Studies whose StudyDate lies in the window and whose modalities match the filters."""

    def fetch(self, study: StudyRef, dest_dir: Path) -> FetchedStudy:
        """Write the study's instances under dest_dir as local files."""

    def list_instances(self, study_uid: str, modality: str | None = None) -> list[InstanceRef]:
        """Instances of one study (optionally of one modality, e.g. 'SEG')."""

    def check(self) -> str:
        """Raise a PacsError if the archive cannot be used; else return a one-line description."""

    def echo(self) -> bool:
        """Connectivity only, never raises."""


@runtime_checkable
class SegSink(Protocol):
    def store(self, item: Dataset | Path) -> StoreResult:
        """Store one instance; return only after the archive confirmed it."""

    def list_instances(self, study_uid: str, modality: str | None = None) -> list[InstanceRef]:
        ...

    def check(self) -> str:
        ...


@runtime_checkable
class Archive(StudySource, SegSink, Protocol):
    """Source and sink in one (each implementation is both)."""


# -- helpers shared by the implementations -----------------------------------------------------
def answers(check: Callable[[], object]) -> bool:
    """Yes/no connectivity probe over an archive's `check()` (which raises with the reason)."""
    try:
        check()
    except Exception:  # noqa: BLE001 - a probe only says whether the archive answers
        return False
    return True


def safe_uid(uid: object, what: str = "UID") -> str:
    """A UID that is safe as a file name; anything else (a path, garbage) is refused."""
    problem = uid_problem(uid, what)
    if problem is not None:
        raise PacsOperationError(problem)
    return str(uid).strip().rstrip("\x00")


def load_dataset(item: Dataset | Path | str) -> Dataset:
    if isinstance(item, Dataset):
        return item
    return pydicom.dcmread(item)


def instance_path(root: Path, study_uid: str, sop_uid: str) -> Path:
    """<root>/<StudyInstanceUID>/<SOPInstanceUID>.dcm, the layout of the folder sink and the outbox."""
    return root / safe_uid(study_uid, "StudyInstanceUID") / f"{safe_uid(sop_uid, 'SOPInstanceUID')}.dcm"


def split_modalities(value: object) -> tuple[str, ...]:
    """ModalitiesInStudy as returned by C-FIND (MultiValue or str) or QIDO (list)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        parts = value.split("\\")
    else:
        parts = [str(v) for v in value]
    return tuple(sorted({p.strip() for p in parts if p and p.strip()}))


def study_ref_from_answer(answer: Dataset, window: DateWindow, filters: StudyFilters) -> StudyRef | None:
    """A C-FIND / QIDO-RS study answer as a StudyRef, or None when it lies outside the query.

    Re-checked here because an archive may ignore a date range or ModalitiesInStudy it does not support.
    """
    uid = str(answer.get("StudyInstanceUID", "") or "")
    study_date = str(answer.get("StudyDate", "") or "")
    modalities = split_modalities(answer.get("ModalitiesInStudy"))
    if not uid or not window.contains(study_date) or not filters.accepts(modalities):
        return None
    if not is_valid_uid(uid):  # it would become a folder name: never let '../x' get that far
        log.warning("study answer ignored: %s", uid_problem(uid, "StudyInstanceUID"))
        return None
    n = answer.get("NumberOfStudyRelatedInstances")
    return StudyRef(study_uid=uid, study_date=study_date, modalities=modalities,
                    n_instances=int(n) if n not in (None, "") else None)


def studies_from_answers(answers: Iterable[Dataset], window: DateWindow, filters: StudyFilters) -> list[StudyRef]:
    """Study answers (C-FIND or QIDO-RS) inside the query, one per Study Instance UID, in date order."""
    studies: dict[str, StudyRef] = {}
    for answer in answers:
        ref = study_ref_from_answer(answer, window, filters)
        if ref is not None:
            studies[ref.study_uid] = ref
    return sorted(studies.values(), key=lambda r: (r.study_date, r.study_uid))


def instance_ref_from_answer(answer: Dataset, study_uid: str, modality: str | None) -> InstanceRef | None:
    """A C-FIND / QIDO-RS instance answer as an InstanceRef, or None when it lies outside the query.

    Re-checked here because not every archive matches a series-level key in an image-level query.
    """
    ref = InstanceRef(study_uid=str(answer.get("StudyInstanceUID", study_uid) or study_uid),
                      series_uid=str(answer.get("SeriesInstanceUID", "") or ""),
                      sop_uid=str(answer.get("SOPInstanceUID", "") or ""),
                      sop_class_uid=str(answer.get("SOPClassUID", "") or ""),
                      modality=str(answer.get("Modality", "") or ""))
    if ref.sop_uid and ref.study_uid == study_uid and (not modality or ref.modality in ("", modality)):
        return ref
    return None
