"""DICOM UID values checked before any use: a UID from a file or a PACS answer becomes a folder or
file name, so a value such as '../../x' or '/abs/path' must never get that far."""
from __future__ import annotations

import re

# DICOM PS3.5 9.1: UI = components of digits separated by '.', at most 64 characters.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LENGTH = 64


def uid_problem(value: object, what: str = "UID") -> str | None:
    """Why `value` is not a valid DICOM UID (the value itself is not echoed), or None when it is."""
    text = str(value if value is not None else "").strip().rstrip("\x00")
    if not text:
        return f"{what} is missing"
    if len(text) > MAX_UID_LENGTH:
        return f"{what} is {len(text)} characters long, more than the {MAX_UID_LENGTH} DICOM allows"
    if not _UID.fullmatch(text):
        return f"{what} is not a DICOM UID (digits and dots only)"
    return None


def is_valid_uid(value: object) -> bool:
    return uid_problem(value) is None


__all__ = ["MAX_UID_LENGTH", "is_valid_uid", "uid_problem"]
