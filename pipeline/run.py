"""One study through the pipeline, and the run's tables: the steps a nightly flow wires together.

Everything here is plain Python (no prefect): a flow task calls one of these functions.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.ingest import ingest_fetched
from pipeline.metrics import InstanceMetrics, RowStatus
from pipeline.seg import SegWriter, WrittenSeg
from pipeline.segment import BatchGuard, SegmentationModel, segment_instance
from pipeline.studies import DateWindow, FetchedStudy

log = logging.getLogger(__name__)


@dataclass
class StudyOutcome:
    study_uid: str
    rows: list[InstanceMetrics] = field(default_factory=list)
    segs: list[WrittenSeg] = field(default_factory=list)
    already_done: int = 0  # instances the ledger says are finished for this model
    frames: int = 0
    seconds: float = 0.0


def parse_window(start_date: str | None, end_date: str | None, today: dt.date | None = None) -> DateWindow:
    """YYYY-MM-DD (or YYYYMMDD) bounds; both missing means yesterday, one missing means that one day."""
    def parse(value: str) -> dt.date:
        for fmt in ("%Y-%m-%d", "%Y%m%d"):
            try:
                return dt.datetime.strptime(value.strip(), fmt).date()
            except ValueError:
                pass
        raise ValueError(f"bad date {value!r}: use YYYY-MM-DD")

    if not start_date and not end_date:
        return DateWindow.yesterday(today)
    start = parse(start_date or end_date)  # type: ignore[arg-type]
    end = parse(end_date or start_date)  # type: ignore[arg-type]
    return DateWindow(start, end)


def process_study(fetched: FetchedStudy, model: SegmentationModel, writer: SegWriter, seg_dir: Path,
                  mode: str = "auto", batch_size: int = 4, dry_run: bool = False,
                  is_done: Callable[[str], bool] = lambda sop_uid: False,
                  on_result: Callable[[InstanceMetrics, WrittenSeg | None], None] = lambda row, seg: None,
                  batch_guard: BatchGuard = nullcontext) -> StudyOutcome:
    """Ingest a fetched study and segment every instance not already done; never raises for bad data.

    `is_done(sop_uid)` asks the ledger; `on_result` tells it what happened, instance by instance, so
    a crash mid-study loses at most the instance in flight.
    """
    start = time.perf_counter()
    outcome = StudyOutcome(fetched.ref.study_uid)
    ingested = ingest_fetched(fetched)
    for issue in ingested.issues:
        row = InstanceMetrics.for_issue(issue, writer.model_card)
        outcome.rows.append(row)
        on_result(row, None)
    for instance in ingested.instances:
        if is_done(instance.sop_uid):
            outcome.already_done += 1
            continue
        result = segment_instance(instance, model, writer, seg_dir, mode, batch_size, dry_run, batch_guard)
        outcome.rows.append(result.row)
        outcome.frames += result.n_frames if result.row.status == RowStatus.OK.value else 0
        if result.seg is not None:
            outcome.segs.append(result.seg)
        on_result(result.row, result.seg)
    outcome.seconds = time.perf_counter() - start
    log.info("study %s: %d rows, %d SEGs, %d already done, %.1f s", outcome.study_uid, len(outcome.rows),
             len(outcome.segs), outcome.already_done, outcome.seconds)
    return outcome
