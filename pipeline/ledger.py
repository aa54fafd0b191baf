"""The idempotency ledger: what happened to each source instance under each model.

One SQLite row per (source SOP Instance UID, model fingerprint). A re-run skips what is done, retries
what failed, and leaves SEGs waiting in the store outbox to `drain`. Several worker processes may share
one ledger file (each takes its own chunks of the night): WAL journal, a busy timeout, and
short write transactions (`BEGIN IMMEDIATE`).

Rows hold UIDs, counts, statuses and error texts only, never patient data.
"""
from __future__ import annotations

import datetime as dt
import enum
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LEDGER_ENV = "SAM2RAD_LEDGER"
DEFAULT_LEDGER_PATH = Path("runs/ledger.sqlite")
_MAX_ERROR_CHARS = 2000
_SCHEMA_VERSION = 1


class Status(str, enum.Enum):
    PENDING = "pending"  # started, result not recorded yet
    DONE = "done"  # SEG stored and confirmed by the sink
    SKIPPED = "skipped"  # deliberately not segmented (e.g. unsupported instance); final
    FAILED = "failed"  # processing failed; the next run retries it
    STORE_PENDING = "store-pending"  # SEG written but not yet stored; it waits in the outbox


FINISHED = (Status.DONE, Status.SKIPPED)


@dataclass(frozen=True)
class LedgerEntry:
    source_sop_uid: str
    fingerprint: str
    status: Status
    study_uid: str | None
    seg_sop_uid: str | None
    attempts: int  # processing attempts (starts)
    store_failures: int  # failed store rounds (each after its own retries)
    last_error: str | None
    created_at: str
    updated_at: str

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


_COLUMNS = ("source_sop_uid", "fingerprint", "status", "study_uid", "seg_sop_uid", "attempts",
            "store_failures", "last_error", "created_at", "updated_at")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    source_sop_uid TEXT NOT NULL,
    fingerprint    TEXT NOT NULL,
    status         TEXT NOT NULL,
    study_uid      TEXT,
    seg_sop_uid    TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    store_failures INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (source_sop_uid, fingerprint)
);
CREATE INDEX IF NOT EXISTS instances_by_seg ON instances (seg_sop_uid);
CREATE INDEX IF NOT EXISTS instances_by_status ON instances (status, fingerprint);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances (study_uid, fingerprint);
"""


def _now() -> str:
    # Fixed-width UTC text: sorts and compares as time does, and reads well in the sqlite3 shell.
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_ledger_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(LEDGER_ENV) or DEFAULT_LEDGER_PATH)


class Ledger:
    """A handle on one ledger file. One handle per process (it may be shared by that process's threads)."""

    def __init__(self, path: Path | str | None = None, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_ledger_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves, so transactions are exactly as short as written.
        self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        self._db.execute("PRAGMA journal_mode = WAL")  # readers never block the one writer
        self._db.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
        with self._write() as db:
            # Statement by statement: executescript() would COMMIT the transaction we began.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    # -- plumbing ----------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; the write lock is taken at BEGIN, so read-then-write is atomic."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _entry(row: tuple) -> LedgerEntry:
        values = dict(zip(_COLUMNS, row))
        values["status"] = Status(values["status"])
        return LedgerEntry(**values)

    def _upsert(self, db: sqlite3.Connection, sop_uid: str, fingerprint: str, **values) -> None:
        """Insert the row if missing, then set the given columns (and updated_at)."""
        now = _now()
        db.execute(
            "INSERT OR IGNORE INTO instances (source_sop_uid, fingerprint, status, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)", (sop_uid, fingerprint, Status.PENDING.value, now, now))
        values["updated_at"] = now
        assignments = ", ".join(f"{k} = ?" for k in values)
        db.execute(f"UPDATE instances SET {assignments} WHERE source_sop_uid = ? AND fingerprint = ?",
                   (*values.values(), sop_uid, fingerprint))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reads -------------------------------------------------------------------------------
    def entry(self, sop_uid: str, fingerprint: str) -> LedgerEntry | None:
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM instances "
                          "WHERE source_sop_uid = ? AND fingerprint = ?", (sop_uid, fingerprint))
        return self._entry(rows[0]) if rows else None

    def is_done(self, sop_uid: str, fingerprint: str) -> bool:
        """True when nothing is left to do: the SEG is stored, or the instance was skipped on purpose."""
        entry = self.entry(sop_uid, fingerprint)
        return entry is not None and entry.finished

    def todo(self, sop_uids: Iterable[str], fingerprint: str) -> list[str]:
        """The given instances a run still has to segment (not finished, no SEG waiting in the outbox)."""
        uids = list(dict.fromkeys(sop_uids))
        settled = {Status.DONE.value, Status.SKIPPED.value, Status.STORE_PENDING.value}
        known: dict[str, str] = {}
        for start in range(0, len(uids), 500):  # stay under SQLite's bound-parameter limit
            chunk = uids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            for uid, status in self._read(f"SELECT source_sop_uid, status FROM instances WHERE fingerprint = ? "
                                          f"AND source_sop_uid IN ({marks})", (fingerprint, *chunk)):
                known[uid] = status
        return [u for u in uids if known.get(u) not in settled]

    def _where(self, status: Status, fingerprint: str | None) -> list[LedgerEntry]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM instances WHERE status = ?"
        params: tuple = (status.value,)
        if fingerprint is not None:
            sql += " AND fingerprint = ?"
            params += (fingerprint,)
        return [self._entry(r) for r in self._read(sql + " ORDER BY updated_at, source_sop_uid", params)]

    def pending_store(self, fingerprint: str | None = None) -> list[LedgerEntry]:
        """Entries whose SEG waits in the outbox for a confirmed store."""
        return self._where(Status.STORE_PENDING, fingerprint)

    def failed(self, fingerprint: str | None = None) -> list[LedgerEntry]:
        return self._where(Status.FAILED, fingerprint)

    def counts(self, fingerprint: str | None = None) -> dict[str, int]:
        sql, params = "SELECT status, COUNT(*) FROM instances", ()
        if fingerprint is not None:
            sql, params = sql + " WHERE fingerprint = ?", (fingerprint,)
        found = dict(self._read(sql + " GROUP BY status", params))
        return {s.value: int(found.get(s.value, 0)) for s in Status}

    def study_status(self, study_uid: str, fingerprint: str) -> dict[str, int]:
        """Instance counts by status for one study and model; empty when the ledger never saw it."""
        rows = self._read("SELECT status, COUNT(*) FROM instances WHERE study_uid = ? AND fingerprint = ? "
                          "GROUP BY status", (study_uid, fingerprint))
        return {status: int(n) for status, n in rows}

    # -- writes ------------------------------------------------------------------------------
    def mark_started(self, sop_uid: str, fingerprint: str, study_uid: str | None = None) -> LedgerEntry:
        """Record an attempt at an instance (the flow calls it when the instance's result is known)."""
        with self._write() as db:
            row = db.execute("SELECT attempts FROM instances WHERE source_sop_uid = ? AND fingerprint = ?",
                             (sop_uid, fingerprint)).fetchone()
            self._upsert(db, sop_uid, fingerprint, status=Status.PENDING.value,
                         attempts=(int(row[0]) if row else 0) + 1, **({"study_uid": study_uid} if study_uid else {}))
        return self.entry(sop_uid, fingerprint)  # type: ignore[return-value]

    def mark_done(self, sop_uid: str, fingerprint: str, seg_sop_uid: str | None = None) -> None:
        values = {"status": Status.DONE.value, "last_error": None}
        if seg_sop_uid:
            values["seg_sop_uid"] = seg_sop_uid
        with self._write() as db:
            self._upsert(db, sop_uid, fingerprint, **values)

    def mark_skipped(self, sop_uid: str, fingerprint: str, reason: str) -> None:
        with self._write() as db:
            self._upsert(db, sop_uid, fingerprint, status=Status.SKIPPED.value, last_error=reason[:_MAX_ERROR_CHARS])

    def mark_failed(self, sop_uid: str, fingerprint: str, error: str | BaseException) -> None:
        with self._write() as db:
            self._upsert(db, sop_uid, fingerprint, status=Status.FAILED.value, last_error=_error_text(error))

    def mark_store_pending(self, sop_uid: str, fingerprint: str, seg_sop_uid: str,
                           error: str | BaseException) -> None:
        """The SEG exists (in the outbox) but the sink did not confirm it; `drain` finishes the job."""
        with self._write() as db:
            row = db.execute("SELECT store_failures FROM instances WHERE source_sop_uid = ? AND fingerprint = ?",
                             (sop_uid, fingerprint)).fetchone()
            self._upsert(db, sop_uid, fingerprint, status=Status.STORE_PENDING.value, seg_sop_uid=seg_sop_uid,
                         store_failures=(int(row[0]) if row else 0) + 1, last_error=_error_text(error))

    def mark_stored(self, seg_sop_uid: str) -> int:
        """A SEG was confirmed by the sink: its entries become done. Returns how many entries changed."""
        with self._write() as db:
            cursor = db.execute("UPDATE instances SET status = ?, last_error = NULL, updated_at = ? "
                                "WHERE seg_sop_uid = ? AND status != ?",
                                (Status.DONE.value, _now(), seg_sop_uid, Status.DONE.value))
            return cursor.rowcount

    def mark_seg_lost(self, seg_sop_uid: str, reason: str) -> int:
        """A store-pending SEG is gone from the outbox: make its source failed, so a run segments it again.

        Conditional on store-pending, so a concurrent drain that stored it (ledger first, file after) wins.
        """
        with self._write() as db:
            cursor = db.execute("UPDATE instances SET status = ?, last_error = ?, updated_at = ? "
                                "WHERE seg_sop_uid = ? AND status = ?",
                                (Status.FAILED.value, reason[:_MAX_ERROR_CHARS], _now(), seg_sop_uid,
                                 Status.STORE_PENDING.value))
            return cursor.rowcount

    def note_store_failure(self, seg_sop_uid: str, error: str | BaseException) -> int:
        """A drain could not store this SEG either; count it and keep the newest error."""
        with self._write() as db:
            cursor = db.execute("UPDATE instances SET store_failures = store_failures + 1, last_error = ?, "
                                "updated_at = ? WHERE seg_sop_uid = ? AND status = ?",
                                (_error_text(error), _now(), seg_sop_uid, Status.STORE_PENDING.value))
            return cursor.rowcount


def _error_text(error: str | BaseException) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text[:_MAX_ERROR_CHARS]
