"""Readers' decisions, kept beside the idempotency ledger: who accepted or rejected which instance, when.

A table `reviews` in the ledger's SQLite file (the nightly's `instances` table is not touched). One
decision per (run, source instance): a second reader's accept or reject is refused with who/when,
never silently overwritten. The claim is taken in one write transaction, so two simultaneous accepts
cannot both win. Rows hold UIDs, reader names, codes and measurements, never patient data.
"""
from __future__ import annotations

import datetime as dt
import enum
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

READER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@ -]{0,63}$")


class Outcome(str, enum.Enum):
    CLAIMED = "claimed"  # an accept in progress (its SEG being written and stored)
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class RejectReason(str, enum.Enum):
    """Coded reasons only: free text could carry patient data into the tables."""

    NOT_BONE = "not-bone"
    POOR_IMAGE = "poor-image"
    WRONG_ANATOMY = "wrong-anatomy"
    CANNOT_CORRECT = "cannot-correct"
    OTHER = "other"


class AlreadyReviewed(RuntimeError):
    """Another decision exists for this instance (the web layer answers 409 with this message)."""

    def __init__(self, decision: "ReviewDecision") -> None:
        self.decision = decision
        verb = "is being accepted" if decision.outcome is Outcome.CLAIMED else f"was {decision.outcome.value}"
        super().__init__(f"instance {decision.sop_uid} {verb} by {decision.reader} at {decision.decided_at}; "
                         "the earlier decision stands (nothing was overwritten)")


@dataclass(frozen=True)
class ReviewDecision:
    run_id: str
    sop_uid: str
    study_uid: str
    outcome: Outcome
    reader: str
    decided_at: str
    mode: str | None = None
    seg_sop_uid: str | None = None
    reason: str | None = None


_COLUMNS = ("run_id", "sop_uid", "study_uid", "outcome", "reader", "decided_at", "mode", "seg_sop_uid", "reason")
_SCHEMA = """CREATE TABLE IF NOT EXISTS reviews (
    run_id TEXT NOT NULL, sop_uid TEXT NOT NULL, study_uid TEXT NOT NULL, outcome TEXT NOT NULL,
    reader TEXT NOT NULL, decided_at TEXT NOT NULL, mode TEXT, seg_sop_uid TEXT, reason TEXT,
    PRIMARY KEY (run_id, sop_uid))"""


def check_reader(reader: str) -> str:
    if not READER_NAME.match(reader or ""):
        raise ValueError("reader name: 1-64 letters, digits, spaces or . _ @ -")
    return reader


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ReviewDecisions:
    def __init__(self, ledger_path: Path | str, busy_timeout_s: float = 30.0) -> None:
        Path(ledger_path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(ledger_path, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(_SCHEMA)

    def _row(self, run_id: str, sop_uid: str) -> ReviewDecision | None:
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM reviews WHERE run_id = ? AND sop_uid = ?",
                               (run_id, sop_uid)).fetchone()
        if row is None:
            return None
        values = dict(zip(_COLUMNS, row))
        values["outcome"] = Outcome(values["outcome"])
        return ReviewDecision(**values)

    def decision(self, run_id: str, sop_uid: str) -> ReviewDecision | None:
        with self._lock:
            return self._row(run_id, sop_uid)

    def statuses(self, run_id: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT sop_uid, outcome FROM reviews WHERE run_id = ?", (run_id,)).fetchall()
        return {uid: ("in-progress" if outcome == Outcome.CLAIMED.value else outcome) for uid, outcome in rows}

    def decide(self, run_id: str, sop_uid: str, study_uid: str, outcome: Outcome, reader: str,
               mode: str | None = None, reason: str | None = None) -> ReviewDecision:
        """Record a decision (a claim for an accept); AlreadyReviewed when one exists."""
        check_reader(reader)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                existing = self._row(run_id, sop_uid)
                if existing is not None:
                    raise AlreadyReviewed(existing)
                self._db.execute("INSERT INTO reviews (run_id, sop_uid, study_uid, outcome, reader, decided_at, "
                                 "mode, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (run_id, sop_uid, study_uid, outcome.value, reader, _now(), mode, reason))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return self._row(run_id, sop_uid)  # type: ignore[return-value]

    def complete_accept(self, run_id: str, sop_uid: str, seg_sop_uid: str) -> ReviewDecision:
        with self._lock:
            self._db.execute("UPDATE reviews SET outcome = ?, seg_sop_uid = ?, decided_at = ? "
                             "WHERE run_id = ? AND sop_uid = ? AND outcome = ?",
                             (Outcome.ACCEPTED.value, seg_sop_uid, _now(), run_id, sop_uid, Outcome.CLAIMED.value))
            return self._row(run_id, sop_uid)  # type: ignore[return-value]

    def release_claim(self, run_id: str, sop_uid: str) -> None:
        """An accept failed before its SEG was safe: the instance is open for review again."""
        with self._lock:
            self._db.execute("DELETE FROM reviews WHERE run_id = ? AND sop_uid = ? AND outcome = ?",
                             (run_id, sop_uid, Outcome.CLAIMED.value))

    def close(self) -> None:
        with self._lock:
            self._db.close()
