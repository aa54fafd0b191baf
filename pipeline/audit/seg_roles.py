"""Which SEG of a source instance the audit's Dice means use, when a folder holds several.

Reviewed SEGs (the review station's, `SegmentAlgorithmType` SEMIAUTOMATIC or MANUAL) are stored through
the same sink as the nightly ones, so a SEG folder can hold two SEGs of one source instance. The rule:

- the means measure the AI: only AI SEGs (every segment AUTOMATIC, or no type given) enter them;
- a reviewed SEG is scored against the reference too, but reported apart (status `reviewed`);
- when several AI SEGs cite one source (e.g. two model versions), the newest (Content Date/Time, then
  SOP Instance UID) is audited and the others are reported as `superseded`, never averaged in twice.
"""
from __future__ import annotations

import enum
from collections.abc import Sequence

from pipeline.seg.header import SegHeader

REVIEWED_ALGORITHM_TYPES = frozenset({"SEMIAUTOMATIC", "MANUAL"})


class SegRole(str, enum.Enum):
    AUDITED = "audited"  # the source's AI SEG: in the Dice means
    REVIEWED = "reviewed"  # a reader's SEG: scored, reported apart
    SUPERSEDED = "superseded"  # an older AI SEG of a source a newer AI SEG also cites


def is_reviewed(seg: SegHeader) -> bool:
    """A reader made (or corrected) this SEG: any segment SEMIAUTOMATIC or MANUAL."""
    types = {str(item.get("SegmentAlgorithmType", "")).upper() for item in seg.header.get("SegmentSequence", [])}
    return bool(types & REVIEWED_ALGORITHM_TYPES)


def _age(seg: SegHeader) -> tuple[str, str, str]:
    ds = seg.header
    return str(ds.get("ContentDate", "") or ""), str(ds.get("ContentTime", "") or ""), seg.sop_uid


def seg_roles(segs: Sequence[SegHeader]) -> dict[tuple[str, str], tuple[SegRole, str | None]]:
    """(SEG SOP UID, source SOP UID) -> (role, the audited AI SEG's UID for a superseded one)."""
    roles: dict[tuple[str, str], tuple[SegRole, str | None]] = {}
    ai_by_source: dict[str, list[SegHeader]] = {}
    for seg in segs:
        for source in seg.source_sop_uids:
            if is_reviewed(seg):
                roles[(seg.sop_uid, source)] = (SegRole.REVIEWED, None)
            else:
                ai_by_source.setdefault(source, []).append(seg)
    for source, candidates in ai_by_source.items():
        newest = max(candidates, key=_age)
        for seg in candidates:
            roles[(seg.sop_uid, source)] = ((SegRole.AUDITED, None) if seg is newest
                                            else (SegRole.SUPERSEDED, newest.sop_uid))
    return roles
