"""One study through the pipeline, and what the night keeps of it: the steps a nightly flow wires together.

`process_study` ingests a fetched study and segments what the ledger has not finished;
`InstanceRecorder` settles each instance (ledger, then sink or outbox) the moment it is done;
`StudyResult` is what a study hands back to the flow. Plain Python (no prefect), testable alone.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.inference import BatchGuard, SegmentationModel, segment_instance
from pipeline.ingest import ingest_fetched
from pipeline.ledger import Ledger
from pipeline.pacs import Delivery, Outbox, RetryPolicy, SegSink, deliver
from pipeline.run_tables import InstanceMetrics, RowStatus
from pipeline.seg import SegWriter, WrittenSeg
from pipeline.studies import FetchedStudy

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    study_uid: str
    rows: list[InstanceMetrics] = field(default_factory=list)
    segs: list[WrittenSeg] = field(default_factory=list)
    already_done: int = 0  # instances the ledger says are finished for this model
    frames: int = 0
    seconds: float = 0.0

    def keep(self, row: InstanceMetrics, seg: WrittenSeg | None, fetched: FetchedStudy | None) -> InstanceMetrics:
        """Add an instance's row (recording where it came from, not the temporary fetch folder) and SEG."""
        if fetched is not None:
            row = dataclasses.replace(row, path=fetched.origin_of(row.path))
        self.rows.append(row)
        if seg is not None:
            self.segs.append(seg)
        return row


def process_study(fetched: FetchedStudy, model: SegmentationModel, writer: SegWriter, seg_dir: Path,
                  mode: str = "auto", batch_size: int = 4, dry_run: bool = False,
                  is_done: Callable[[str], bool] = lambda sop_uid: False,
                  on_result: Callable[[InstanceMetrics, WrittenSeg | None], None] = lambda row, seg: None,
                  batch_guard: BatchGuard = nullcontext) -> StudyOutcome:
    """Ingest a fetched study and segment every instance not already done; never raises for bad data.

    `is_done(sop_uid)` asks the ledger; `on_result` tells it what happened, instance by instance, so
    a crash mid-study loses at most the instance in flight. Rows record where each instance came
    from (`FetchedStudy.origin_of`), not the temporary fetch folder.
    """
    start = time.perf_counter()
    outcome = StudyOutcome(fetched.ref.study_uid)

    def keep(row: InstanceMetrics, seg: WrittenSeg | None) -> None:
        on_result(outcome.keep(row, seg, fetched), seg)

    ingested = ingest_fetched(fetched)
    for issue in ingested.issues:
        keep(InstanceMetrics.for_issue(issue, writer.algorithm), None)
    for instance in ingested.instances:
        if is_done(instance.sop_uid):
            outcome.already_done += 1
            continue
        result = segment_instance(instance, model, writer, seg_dir, mode, batch_size, dry_run, batch_guard)
        outcome.frames += result.n_frames if result.row.status == RowStatus.OK.value else 0
        keep(result.row, result.seg)
    outcome.seconds = time.perf_counter() - start
    log.info("study %s: %d rows, %d SEGs, %d already done, %.1f s", outcome.study_uid, len(outcome.rows),
             len(outcome.segs), outcome.already_done, outcome.seconds)
    return outcome


class InstanceRecorder:
    """Settles each instance as soon as it is done: the ledger hears what happened, a SEG goes to the
    sink (or waits in the outbox when the sink is down). A dry run records nothing."""

    def __init__(self, ledger: Ledger, fingerprint: str, study_uid: str, sink: SegSink, outbox: Outbox,
                 policy: RetryPolicy = RetryPolicy(), dry_run: bool = False) -> None:
        self.ledger, self.fingerprint, self.study_uid = ledger, fingerprint, study_uid
        self.sink, self.outbox, self.policy, self.dry_run = sink, outbox, policy, dry_run
        self.stored = 0
        self.kept_in_outbox = 0

    def is_done(self, sop_uid: str) -> bool:
        # todo() also settles SEGs waiting in the outbox: no re-segmenting while the PACS is down.
        return not self.ledger.todo([sop_uid], self.fingerprint)

    def record(self, row: InstanceMetrics, seg: WrittenSeg | None) -> None:
        if self.dry_run or row.sop_uid is None:
            return
        self.ledger.mark_started(row.sop_uid, self.fingerprint, study_uid=self.study_uid)
        if seg is None:
            if row.status == RowStatus.SKIPPED.value:
                self.ledger.mark_skipped(row.sop_uid, self.fingerprint, row.error or "skipped")
            else:
                self.ledger.mark_failed(row.sop_uid, self.fingerprint, row.error or "failed")
            return
        result = deliver(seg.path, self.sink, self.outbox, ledger=self.ledger, source_sop_uid=row.sop_uid,
                         fingerprint=self.fingerprint, policy=self.policy)
        self.stored += result.delivery is Delivery.STORED
        self.kept_in_outbox += result.delivery is Delivery.KEPT


@dataclass(frozen=True)
class StudyResult:
    """What one study hands back to the nightly flow (JSON-serialisable: Prefect caches it)."""

    study_uid: str
    rows: list[InstanceMetrics]
    seg_paths: list[str]
    already_done: int
    stored: int
    kept_in_outbox: int
    frames: int
    seconds: float
    from_cache: bool = False  # set by the flow when the orchestrator answered from its cache

    @classmethod
    def of(cls, outcome: StudyOutcome, recorder: InstanceRecorder) -> "StudyResult":
        return cls(study_uid=outcome.study_uid, rows=list(outcome.rows),
                   seg_paths=[str(s.path) for s in outcome.segs], already_done=outcome.already_done,
                   stored=recorder.stored, kept_in_outbox=recorder.kept_in_outbox, frames=outcome.frames,
                   seconds=outcome.seconds)
