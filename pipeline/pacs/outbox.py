"""Store SEGs without losing any and without storing any twice.

`deliver` stores one SEG with retries and exponential backoff; if the sink still fails, the SEG goes
to an on-disk outbox (<dir>/<StudyUID>/<SOPInstanceUID>.dcm) and the ledger says store-pending.
`drain` (at the start of the next run) stores what waits there and deletes a file only after the sink
confirmed it. Both are keyed by the SEG's SOP Instance UID, which is deterministic: a SEG rewritten by
a re-run replaces its outbox file instead of adding a second one.
"""
from __future__ import annotations

import enum
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from pipeline.ledger import Ledger
from pipeline.dicom_file import write_dicom_file
from pipeline.pacs.base import (
    PacsError,
    PacsUnreachable,
    SegSink,
    StoreResult,
    instance_path,
)
from pipeline.pacs.config import RetryPolicy
from pipeline.pacs.folder import read_header, scan

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]


# -- the outbox ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutboxItem:
    path: Path
    study_uid: str
    sop_uid: str


class Outbox:
    """A folder of SEGs waiting for a confirmed store."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def put(self, seg: Dataset | Path) -> OutboxItem:
        """Keep a SEG (atomically; the same SOP Instance UID replaces the earlier file)."""
        if isinstance(seg, Dataset):
            study_uid, sop_uid = str(seg.StudyInstanceUID), str(seg.SOPInstanceUID)
            path = write_dicom_file(seg, instance_path(self.directory, study_uid, sop_uid))
        else:
            header = read_header(Path(seg))
            if header is None:
                raise ValueError(f"{seg} is not a DICOM file with Study/SOP Instance UIDs")
            study_uid, sop_uid = header.instance.study_uid, header.instance.sop_uid
            path = write_dicom_file(Path(seg).read_bytes(), instance_path(self.directory, study_uid, sop_uid))
        return OutboxItem(path=path, study_uid=study_uid, sop_uid=sop_uid)

    def items(self) -> list[OutboxItem]:
        if not self.directory.is_dir():
            return []
        return [OutboxItem(path=h.path, study_uid=h.instance.study_uid, sop_uid=h.instance.sop_uid)
                for h in scan(self.directory)]

    def remove(self, item: OutboxItem) -> None:
        item.path.unlink(missing_ok=True)
        try:
            item.path.parent.rmdir()  # the study folder, once empty
        except OSError:
            pass

    def discard(self, study_uid: str, sop_uid: str) -> None:
        path = instance_path(self.directory, study_uid, sop_uid)
        if path.exists():
            self.remove(OutboxItem(path=path, study_uid=study_uid, sop_uid=sop_uid))

    def __len__(self) -> int:
        return len(self.items())


# -- storing with retries -----------------------------------------------------------------------
def store_with_retry(sink: SegSink, seg: Dataset | Path, policy: RetryPolicy = RetryPolicy(),
                     sleep: Sleep = time.sleep) -> StoreResult:
    """Store, retrying retriable PacsErrors with exponential backoff; re-raise the last error."""
    delays = policy.delays()
    for attempt in range(1, policy.attempts + 1):
        try:
            return sink.store(seg)
        except PacsError as exc:
            if not exc.retriable or attempt == policy.attempts:
                raise
            wait = delays[attempt - 1]
            log.warning("store attempt %d/%d failed (%s); retrying in %.2f s", attempt, policy.attempts,
                        type(exc).__name__, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


class Delivery(str, enum.Enum):
    STORED = "stored"
    KEPT = "kept-in-outbox"
    SKIPPED = "skipped"  # the ledger says this source instance is done already


@dataclass(frozen=True)
class DeliveryOutcome:
    seg_sop_uid: str
    delivery: Delivery
    error: str = ""


def _seg_identity(seg: Dataset | Path) -> tuple[str, str]:
    """(Study, SOP Instance UID) of a SEG dataset or file."""
    if isinstance(seg, Dataset):
        return str(seg.StudyInstanceUID), str(seg.SOPInstanceUID)
    header = read_header(Path(seg))
    if header is None:
        raise ValueError(f"{seg} is not a DICOM file with Study/SOP Instance UIDs")
    return header.instance.study_uid, header.instance.sop_uid


def deliver(seg: Dataset | Path, sink: SegSink, outbox: Outbox, *, ledger: Ledger | None = None,
            source_sop_uid: str | None = None, fingerprint: str | None = None,
            policy: RetryPolicy = RetryPolicy(), sleep: Sleep = time.sleep) -> DeliveryOutcome:
    """Store one SEG; on failure keep it in the outbox. With a ledger, a done source is not stored again."""
    guarded = ledger is not None and source_sop_uid and fingerprint
    # A file goes to the sink as written: its UIDs are read from the header, the rest is not decoded
    # and encoded again (that cost as much as writing the SEG).
    study_uid, seg_uid = _seg_identity(seg)
    if guarded and ledger.is_done(source_sop_uid, fingerprint):
        log.info("SEG %s: source %s already done; not stored again", seg_uid, source_sop_uid)
        return DeliveryOutcome(seg_uid, Delivery.SKIPPED)
    try:
        store_with_retry(sink, seg, policy, sleep)
    except Exception as exc:  # noqa: BLE001 - whatever broke the store, the SEG must not be lost
        outbox.put(seg)
        if guarded:
            ledger.mark_store_pending(source_sop_uid, fingerprint, seg_uid, exc)
        log.warning("SEG %s kept in the outbox (%s): %s", seg_uid, type(exc).__name__, exc)
        return DeliveryOutcome(seg_uid, Delivery.KEPT, error=f"{type(exc).__name__}: {exc}")
    outbox.discard(study_uid, seg_uid)  # a copy kept by an earlier run is obsolete now
    if guarded:
        ledger.mark_done(source_sop_uid, fingerprint, seg_uid)
    elif ledger is not None:
        ledger.mark_stored(seg_uid)
    return DeliveryOutcome(seg_uid, Delivery.STORED)


# -- draining -----------------------------------------------------------------------------------
@dataclass
class DrainReport:
    stored: list[str] = field(default_factory=list)  # stored by this drain
    already_there: list[str] = field(default_factory=list)  # the sink had them (an earlier, unconfirmed store)
    failed: dict[str, str] = field(default_factory=dict)  # SEG SOP UID -> error
    lost: list[str] = field(default_factory=list)  # store-pending in the ledger, gone from the outbox
    remaining: int = 0  # still in the outbox afterwards

    @property
    def complete(self) -> bool:
        return self.remaining == 0


def drain(sink: SegSink, outbox: Outbox, *, ledger: Ledger | None = None, policy: RetryPolicy = RetryPolicy(),
          sleep: Sleep = time.sleep, check_sink_first: bool = True) -> DrainReport:
    """Store every SEG waiting in the outbox; a file is deleted only once the sink confirmed it.

    With `check_sink_first`, each study is first asked for the instances it has, so a SEG whose earlier
    store succeeded without our hearing of it is not sent again. An unreachable sink stops the drain
    (the rest waits for the next run); any other failure is recorded and the drain goes on.
    """
    report = DrainReport()
    by_study: dict[str, list] = defaultdict(list)
    for item in outbox.items():
        by_study[item.study_uid].append(item)
    try:
        for study_uid, items in sorted(by_study.items()):
            present: set[str] = set()
            if check_sink_first:
                present = {ref.sop_uid for ref in sink.list_instances(study_uid)}
            for item in items:
                if item.sop_uid in present:
                    report.already_there.append(item.sop_uid)
                else:
                    try:
                        store_with_retry(sink, item.path, policy, sleep)
                    except PacsUnreachable:
                        raise
                    except Exception as exc:  # noqa: BLE001 - record it, keep the file, go on with the rest
                        report.failed[item.sop_uid] = f"{type(exc).__name__}: {exc}"
                        if ledger is not None:
                            ledger.note_store_failure(item.sop_uid, exc)
                        continue
                    report.stored.append(item.sop_uid)
                # Confirmed: the ledger first, then the file (a crash in between only repeats a no-op).
                if ledger is not None:
                    ledger.mark_stored(item.sop_uid)
                outbox.remove(item)
    except PacsUnreachable as exc:
        log.warning("drain stopped, sink unreachable: %s", exc)
        leftover = {i.sop_uid for i in outbox.items()} - set(report.failed)
        for uid in sorted(leftover):
            report.failed[uid] = f"{type(exc).__name__}: {exc}"
            if ledger is not None:
                ledger.note_store_failure(uid, exc)
    if ledger is not None:
        _reconcile(ledger, outbox, report)
    report.remaining = len(outbox)
    log.info("drain: %d stored, %d already there, %d failed, %d lost, %d remaining", len(report.stored),
             len(report.already_there), len(report.failed), len(report.lost), report.remaining)
    return report


def _reconcile(ledger: Ledger, outbox: Outbox, report: DrainReport) -> None:
    """Ledger entries waiting for a SEG that is no longer in the outbox (deleted by hand, disk lost)
    would never be stored nor segmented again: hand them back to the next run as failed."""
    waiting = {item.sop_uid for item in outbox.items()}
    for entry in ledger.pending_store():
        if entry.seg_sop_uid and entry.seg_sop_uid not in waiting:
            if ledger.mark_seg_lost(entry.seg_sop_uid, "SEG missing from the store outbox; segment again"):
                report.lost.append(entry.seg_sop_uid)
