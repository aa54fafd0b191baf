"""Values copied from a source into a SEG, made to fit their VR's maximum length (issue 16 (13)).

Archives hold values DICOM does not allow (a 2360-character PatientName, a 40-character SH
AccessionNumber); copied as they are, the SEG fails validation (dciodvfy). Free text (PN, LO, SH,
ST, LT) is cut to the maximum; a code, number, date or UID that is too long would become another
value when cut, so it is left empty instead (the identity attributes the SEG copies are Type 2).
Only keywords are ever logged, never a value.
"""
from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

log = logging.getLogger(__name__)

# Maximum characters per value (PN: per component group), PS3.5 table 6.2-1.
MAX_CHARS = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "LT": 10240,
             "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UI": 64}
_CUT = frozenset({"LO", "LT", "PN", "SH", "ST"})


def _fits(text: str, vr: str) -> bool:
    if vr == "PN":
        return all(len(group) <= MAX_CHARS["PN"] for group in text.split("="))
    return len(text) <= MAX_CHARS[vr]


def _cut(text: str, vr: str) -> str:
    if vr == "PN":
        return "=".join(group[: MAX_CHARS["PN"]] for group in text.split("="))
    return text[: MAX_CHARS[vr]].rstrip()


def conform_lengths(ds: Dataset) -> list[str]:
    """Fit every text value of `ds` (nested sequences included) to its VR's length, in place; the
    keywords (or tags) changed are returned."""
    changed: list[str] = []
    for element in ds.iterall():
        vr = element.VR
        if vr not in MAX_CHARS or element.value is None or isinstance(element.value, bytes):
            continue
        values = list(element.value) if isinstance(element.value, (list, MultiValue)) else [element.value]
        texts = ["" if v is None else str(v) for v in values]
        if all(_fits(text, vr) for text in texts):
            continue
        if vr in _CUT:
            fitted = [_cut(text, vr) for text in texts]
            element.value = fitted if len(fitted) > 1 else fitted[0]
        else:
            element.value = None
        changed.append(element.keyword or str(element.tag))
    if changed:
        log.info("values over their VR's maximum length were cut or emptied in the SEG: %s", ", ".join(changed))
    return changed
