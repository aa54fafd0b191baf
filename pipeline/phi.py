"""Patient data never leaves the DICOM files: error texts from pydicom/highdicom may quote a value
(e.g. "Invalid value for PatientSex: 'MALE'"), so every message about an instance is redacted before
it reaches a log, a row, the ledger or an artifact."""
from __future__ import annotations

import re

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

REDACTED = "<redacted>"

# Patient, study and visit attributes whose values identify someone or something about them.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames",
    "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName", "PatientSex",
    "PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers",
    "PatientComments", "EthnicGroup", "MedicalRecordLocator", "AccessionNumber", "StudyID",
    "StudyDescription", "SeriesDescription", "StudyDate", "StudyTime", "SeriesDate", "ContentDate",
    "AcquisitionDateTime", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "RequestingPhysician", "AdmissionID", "DeviceSerialNumber",
)


def _values(ds: Dataset, keyword: str) -> list[str]:
    """The attribute's values (and the parts of a person name), but no short numbers such as StudyID '1',
    which would blank every '1' of a message; PatientSex is the one short value always redacted."""
    shortest = 1 if keyword == "PatientSex" else 3
    try:
        value = ds.get(keyword, None)
    except Exception:  # noqa: BLE001 - a value pydicom cannot even convert is not quoted either
        return []
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    texts = []
    for item in items:
        text = str(item).strip()
        if len(text) >= shortest:
            texts.append(text)
        texts.extend(part.strip() for part in re.split(r"[\^=]", text) if len(part.strip()) >= 3)
    return texts


def redact(message: str, ds: Dataset | None) -> str:
    """`message` with every identifying value of `ds` (whole words, any case) replaced by <redacted>."""
    if ds is None or not message:
        return message
    values = {v for k in IDENTIFYING_KEYWORDS for v in _values(ds, k)}
    for value in sorted(values, key=len, reverse=True):
        message = re.sub(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", REDACTED, message,
                         flags=re.IGNORECASE)
    return message


__all__ = ["IDENTIFYING_KEYWORDS", "REDACTED", "redact"]
