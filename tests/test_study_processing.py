"""The nightly flow's per-study bookkeeping, without Prefect: ledger marks, delivery, the typed result."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from prefect.serializers import JSONSerializer
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from flows.demo.us_dicom import new_instance
from pipeline.ledger import Ledger, Status
from pipeline.pacs import Outbox, PacsUnreachable, RetryPolicy, StoreResult
from pipeline.run_tables import InstanceMetrics, RowStatus
from pipeline.seg import WrittenSeg
from pipeline.studies import FetchedStudy, StudyRef
from pipeline.study_processing import InstanceRecorder, StudyOutcome, StudyResult

FP = "f" * 64
STUDY = "1.2.826.0.1.3680043.8.498.1"


class RecordingSink:
    def __init__(self, fail: bool = False) -> None:
        self.stored: list[str] = []
        self.fail = fail

    def store(self, item: Dataset | Path) -> StoreResult:
        if self.fail:
            raise PacsUnreachable("archive down")
        ds = item if isinstance(item, Dataset) else pydicom.dcmread(item)
        self.stored.append(str(ds.SOPInstanceUID))
        return StoreResult(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), "memory")


def _seg_file(tmp_path: Path, sop_uid: str) -> WrittenSeg:
    ds = new_instance(SegmentationStorage, sop_uid)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, f"{STUDY}.9"
    path = tmp_path / f"{sop_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return WrittenSeg(path, sop_uid, f"{STUDY}.9", 1, f"{STUDY}.1", 1, "BINARY")  # type: ignore[arg-type]


def _row(sop_uid: str, status: RowStatus = RowStatus.OK, error: str | None = None) -> InstanceMetrics:
    return InstanceMetrics(study_uid=STUDY, series_uid=f"{STUDY}.2", sop_uid=sop_uid, path="/inbox/a.dcm",
                           status=status.value, error=error)


def _recorder(tmp_path: Path, sink: RecordingSink, dry_run: bool = False) -> InstanceRecorder:
    return InstanceRecorder(Ledger(tmp_path / "ledger.sqlite"), FP, STUDY, sink, Outbox(tmp_path / "outbox"),
                            RetryPolicy(attempts=1), dry_run)


def test_a_stored_seg_marks_the_instance_done(tmp_path):
    sink = RecordingSink()
    recorder = _recorder(tmp_path, sink)
    assert not recorder.is_done(f"{STUDY}.1")
    recorder.record(_row(f"{STUDY}.1"), _seg_file(tmp_path, f"{STUDY}.100"))
    assert sink.stored == [f"{STUDY}.100"] and (recorder.stored, recorder.kept_in_outbox) == (1, 0)
    assert recorder.is_done(f"{STUDY}.1")
    assert recorder.ledger.entry(f"{STUDY}.1", FP).status is Status.DONE


def test_an_unreachable_sink_keeps_the_seg_in_the_outbox(tmp_path):
    recorder = _recorder(tmp_path, RecordingSink(fail=True))
    recorder.record(_row(f"{STUDY}.1"), _seg_file(tmp_path, f"{STUDY}.100"))
    assert (recorder.stored, recorder.kept_in_outbox) == (0, 1)
    assert recorder.ledger.entry(f"{STUDY}.1", FP).status is Status.STORE_PENDING
    assert recorder.is_done(f"{STUDY}.1")  # the SEG exists: drain it, do not segment again


@pytest.mark.parametrize("status, expected", [(RowStatus.FAILED, Status.FAILED), (RowStatus.SKIPPED, Status.SKIPPED)])
def test_rows_without_a_seg_are_marked_failed_or_skipped(tmp_path, status, expected):
    recorder = _recorder(tmp_path, RecordingSink())
    recorder.record(_row(f"{STUDY}.1", status, "why"), None)
    assert recorder.ledger.entry(f"{STUDY}.1", FP).status is expected


def test_a_dry_run_records_nothing(tmp_path):
    sink = RecordingSink()
    recorder = _recorder(tmp_path, sink, dry_run=True)
    recorder.record(_row(f"{STUDY}.1"), _seg_file(tmp_path, f"{STUDY}.100"))
    assert sink.stored == [] and recorder.ledger.entry(f"{STUDY}.1", FP) is None


def test_study_result_round_trips_through_prefects_json_cache(tmp_path):
    """segment_study persists its result as JSON (ledger-gated cache): a cached study must come back typed."""
    recorder = _recorder(tmp_path, RecordingSink())
    outcome = StudyOutcome(STUDY, rows=[_row(f"{STUDY}.1")], segs=[_seg_file(tmp_path, f"{STUDY}.100")],
                           frames=3, seconds=1.5)
    result = StudyResult.of(outcome, recorder)
    serializer = JSONSerializer()
    back = serializer.loads(serializer.dumps(result))
    assert back == result and isinstance(back, StudyResult) and isinstance(back.rows[0], InstanceMetrics)


def test_rows_record_where_the_instance_came_from():
    fetched = FetchedStudy(StudyRef(STUDY), [Path("/tmp/fetch/a.dcm")], {Path("/tmp/fetch/a.dcm"): "/inbox/a.dcm"})
    assert fetched.origin_of("/tmp/fetch/a.dcm") == "/inbox/a.dcm"
    assert fetched.origin_of(None) is None
