"""The idempotency ledger: skip what is done, retry what failed, count attempts, survive concurrent workers."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from pipeline.ledger import Ledger, Status, default_ledger_path

FP = "sam2rad-ppn:abc123"
OTHER_FP = "sam2rad-ppn:def456"


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as handle:
        yield handle


def test_done_is_skipped_and_failed_is_retried(ledger):
    uids = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert ledger.todo(uids, FP) == uids
    for uid in uids:
        ledger.mark_started(uid, FP, study_uid="1.2.3")
    ledger.mark_done("1.2.3.1", FP, seg_sop_uid="9.9.1")
    ledger.mark_failed("1.2.3.2", FP, RuntimeError("decoder exploded"))
    ledger.mark_skipped("1.2.3.3", FP, "cine without frame of reference")

    assert ledger.is_done("1.2.3.1", FP) and ledger.is_done("1.2.3.3", FP)
    assert not ledger.is_done("1.2.3.2", FP)
    # The next run: only the failure is left, and it is attempted again.
    assert ledger.todo(uids, FP) == ["1.2.3.2"]
    ledger.mark_started("1.2.3.2", FP)
    failed = ledger.entry("1.2.3.2", FP)
    assert failed.status is Status.PENDING and failed.attempts == 2
    assert failed.last_error == "RuntimeError: decoder exploded"  # kept until the retry succeeds
    ledger.mark_done("1.2.3.2", FP, "9.9.2")
    assert ledger.entry("1.2.3.2", FP).last_error is None
    assert ledger.counts(FP) == {"pending": 0, "done": 2, "skipped": 1, "failed": 0, "store-pending": 0}


def test_study_status_counts_one_study(ledger):
    assert ledger.study_status("1.2.3", FP) == {}
    ledger.mark_started("1.2.3.1", FP, study_uid="1.2.3")
    ledger.mark_started("1.2.3.2", FP, study_uid="1.2.3")
    ledger.mark_started("1.2.4.1", FP, study_uid="1.2.4")
    ledger.mark_done("1.2.3.1", FP, "9.9.1")
    assert ledger.study_status("1.2.3", FP) == {"done": 1, "pending": 1}


def test_fingerprints_are_independent(ledger):
    ledger.mark_started("1.2.3.1", FP)
    ledger.mark_done("1.2.3.1", FP, "9.9.1")
    assert ledger.is_done("1.2.3.1", FP)
    assert not ledger.is_done("1.2.3.1", OTHER_FP)  # a new model must segment it again
    assert ledger.todo(["1.2.3.1"], OTHER_FP) == ["1.2.3.1"]


def test_attempts_count_and_failures_stay_listed(ledger):
    for expected in (1, 2, 3):
        assert ledger.mark_started("1.2.3.1", FP).attempts == expected
        ledger.mark_failed("1.2.3.1", FP, f"failure {expected}")
    assert ledger.entry("1.2.3.1", FP).last_error == "failure 3"
    assert [e.source_sop_uid for e in ledger.failed(FP)] == ["1.2.3.1"]


def test_store_pending_until_the_seg_is_stored(ledger):
    ledger.mark_started("1.2.3.1", FP, study_uid="1.2.3")
    ledger.mark_store_pending("1.2.3.1", FP, "9.9.1", ConnectionError("PACS down"))
    entry = ledger.entry("1.2.3.1", FP)
    assert entry.status is Status.STORE_PENDING and entry.store_failures == 1 and entry.seg_sop_uid == "9.9.1"
    assert not ledger.is_done("1.2.3.1", FP)
    assert ledger.todo(["1.2.3.1"], FP) == []  # the SEG exists: do not segment again, drain it
    assert [e.seg_sop_uid for e in ledger.pending_store()] == ["9.9.1"]
    assert ledger.note_store_failure("9.9.1", "still down") == 1
    assert ledger.entry("1.2.3.1", FP).store_failures == 2
    assert ledger.mark_stored("9.9.1") == 1
    assert ledger.is_done("1.2.3.1", FP) and ledger.pending_store() == []
    assert ledger.mark_stored("9.9.1") == 0  # idempotent


def test_ledger_file_is_wal_and_survives_reopen(tmp_path):
    path = tmp_path / "sub" / "ledger.sqlite"
    with Ledger(path) as first:
        first.mark_done("1.2.3.1", FP, "9.9.1")
    with Ledger(path) as second:
        assert second.is_done("1.2.3.1", FP)
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_default_path_from_env(tmp_path):
    assert default_ledger_path({"SAM2RAD_LEDGER": str(tmp_path / "x.sqlite")}) == tmp_path / "x.sqlite"
    assert default_ledger_path({}) == Path("runs/ledger.sqlite")


# -- several processes on one ledger -----------------------------------------------------------
N_WORKERS = 4
N_INSTANCES = 60


def _worker(path: str, worker: int) -> None:
    # Like one chunk worker of a night: this worker's instances, written while the others write theirs.
    with Ledger(path) as ledger:
        for i in range(worker, N_INSTANCES, N_WORKERS):
            uid = f"1.2.3.{i}"
            ledger.mark_started(uid, FP, study_uid="1.2.3")
            if i % 10 == 0:
                ledger.mark_failed(uid, FP, f"worker {worker} failed")
            else:
                ledger.mark_done(uid, FP, f"9.9.{i}")


def test_concurrent_processes_share_one_ledger(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    Ledger(path).close()  # create the schema before the race
    context = mp.get_context("fork")
    workers = [context.Process(target=_worker, args=(path, w)) for w in range(N_WORKERS)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    with Ledger(path) as ledger:
        counts = ledger.counts(FP)
        assert counts["done"] == N_INSTANCES - 6 and counts["failed"] == 6 and counts["pending"] == 0
        assert all(ledger.entry(f"1.2.3.{i}", FP).attempts == 1 for i in range(N_INSTANCES))
        # The next run retries exactly the failures.
        assert ledger.todo([f"1.2.3.{i}" for i in range(N_INSTANCES)], FP) == [f"1.2.3.{i}" for i in range(0, 60, 10)]
