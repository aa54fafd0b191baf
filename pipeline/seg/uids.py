"""Deterministic UIDs, so a re-run writes the same SEG instead of a second copy."""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from pydicom.uid import UID

# SEG series numbers live in a band of their own, away from the scanner's low numbers.
SERIES_NUMBER_BASE = 9000
SERIES_NUMBER_SPAN = 900


# Namespace of our name-based UUIDs (itself a UUID5 of the project's name in the URL namespace).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/sam2rad-pipeline/seg")


def hashed_uid(*parts: str) -> UID:
    """A '2.25.<decimal>' UID (ISO/IEC 9834-8) from a name-based UUID5 of the parts: same parts, same UID.

    (pydicom's generate_uid ignores its entropy sources when prefix is None, so it cannot do this.)
    """
    if not parts or any(not p for p in parts):
        raise ValueError("every part of a derived UID must be non-empty")
    name = "\x1f".join(parts)  # unit separator: ("a", "bc") and ("ab", "c") differ
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


@dataclass(frozen=True)
class SegUids:
    series_uid: UID
    sop_uid: UID
    series_number: int
    dimension_organization_uid: UID


def derive_seg_uids(
    source_series_uid: str, source_sop_uid: str, model_fingerprint: str, segmentation_type: str
) -> SegUids:
    """UIDs of the SEG for one source instance.

    The SOP Instance UID comes from the source SOP Instance UID; the series UID (and number) from
    the source series, so every SEG made by one model from one source series shares a SEG series.
    """
    series_uid = hashed_uid("sam2rad-seg-series", source_series_uid, model_fingerprint, segmentation_type)
    sop_uid = hashed_uid("sam2rad-seg-instance", source_sop_uid, model_fingerprint, segmentation_type)
    digest = int(hashlib.sha256(series_uid.encode("ascii")).hexdigest(), 16)
    return SegUids(
        series_uid=series_uid,
        sop_uid=sop_uid,
        series_number=SERIES_NUMBER_BASE + digest % SERIES_NUMBER_SPAN,
        dimension_organization_uid=hashed_uid("sam2rad-seg-dimensions", sop_uid),
    )
