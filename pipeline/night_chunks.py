"""A night split into chunks that workers pull, each chunk's journal, and the night read back from them.

A chunk is a few studies. Whoever runs a chunk (a worker's flow run, or a second one after the first
died) appends to its own journal file, line by line, as each instance is settled; the night is then
read back from all journals plus the ledger, so an attempt killed mid-chunk loses nothing it finished:

    <run_dir>/chunks/<chunk_id>/<attempt_id>.jsonl
      {"kind": "start", "chunk_id", "attempt_id", "worker", "host", "pid"}
      {"kind": "instance", "row": {InstanceMetrics}, "seg_path"}   written BEFORE ledger + sink hear of it
      {"kind": "study", "study_uid", "already_done": [SOP UIDs], "seconds", "error"}
      {"kind": "end"}

The instance line comes first, so an instance the ledger calls finished always has its row; whether
its SEG was stored is the ledger's word (done / store-pending), never the journal's. UIDs, paths and
counts only: no patient data. Plain Python (no prefect).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

from pipeline.ledger import Ledger, Status
from pipeline.run_tables import InstanceMetrics, RowStatus
from pipeline.seg import WrittenSeg
from pipeline.studies import StudyRef
from pipeline.study_processing import StudyResult

JOURNAL_FOLDER = "chunks"


@dataclass(frozen=True)
class NightChunk:
    """A few studies of one night: the unit a free worker pulls."""

    chunk_id: str
    studies: tuple[StudyRef, ...]

    @property
    def study_uids(self) -> tuple[str, ...]:
        return tuple(s.study_uid for s in self.studies)


def split_night(studies: Iterable[StudyRef], studies_per_chunk: int = 4,
                instances_per_chunk: int | None = None) -> list[NightChunk]:
    """Consecutive studies, at most `studies_per_chunk` (and, when discovery counted them, about
    `instances_per_chunk` instances) per chunk: small enough that a lost chunk costs little to redo."""
    if studies_per_chunk < 1:
        raise ValueError("studies_per_chunk must be at least 1")
    groups: list[list[StudyRef]] = [[]]
    for study in studies:
        current = groups[-1]
        size = sum(s.n_instances or 1 for s in current)
        full = len(current) >= studies_per_chunk or (
            instances_per_chunk is not None and current and size + (study.n_instances or 1) > instances_per_chunk)
        if full:
            groups.append(current := [])
        current.append(study)
    return [NightChunk(f"{i:04d}", tuple(group)) for i, group in enumerate(groups) if group]


def worker_identity() -> str:
    """Which worker runs this process: the Prefect worker's name when a worker started it, else host:pid."""
    name = os.environ.get("PREFECT__WORKER_NAME")
    return name or f"{socket.gethostname()}:{os.getpid()}"


class ChunkJournal:
    """One attempt's journal: append-only JSON lines, flushed line by line (a killed process keeps
    every line it wrote; a torn last line is ignored on reading)."""

    def __init__(self, run_dir: Path | str, chunk_id: str, attempt_id: str, worker: str | None = None) -> None:
        self.path = Path(run_dir) / JOURNAL_FOLDER / chunk_id / f"{attempt_id}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()  # run_chunk's reader and writer threads may both report
        self._write(kind="start", chunk_id=chunk_id, attempt_id=attempt_id, worker=worker or worker_identity(),
                    host=socket.gethostname(), pid=os.getpid())

    def _write(self, **line) -> None:
        text = json.dumps(line, separators=(",", ":")) + "\n"
        with self._lock:
            self._file.write(text)
            self._file.flush()

    def instance(self, row: InstanceMetrics, seg: WrittenSeg | None) -> None:
        self._write(kind="instance", row=dataclasses.asdict(row), seg_path=str(seg.path) if seg else None)

    def study(self, study_uid: str, already_done: Iterable[str], seconds: float, error: str | None = None) -> None:
        self._write(kind="study", study_uid=study_uid, already_done=list(already_done), seconds=round(seconds, 3),
                    error=error)

    def close(self) -> None:
        """The attempt ended (finished, or stopped by an error it reported): not killed."""
        if not self._file.closed:
            self._write(kind="end")
            self._file.close()


class Recorder(Protocol):
    stored: int
    kept_in_outbox: int

    def is_done(self, sop_uid: str) -> bool: ...

    def record(self, row: InstanceMetrics, seg: WrittenSeg | None) -> None: ...


class JournaledRecorder:
    """An InstanceRecorder that writes each instance to the chunk journal before the ledger and the sink
    hear of it, and remembers which instances the ledger had finished already."""

    def __init__(self, recorder: Recorder, journal: ChunkJournal) -> None:
        self.recorder, self.journal = recorder, journal
        self.already_done: list[str] = []

    def is_done(self, sop_uid: str) -> bool:
        done = self.recorder.is_done(sop_uid)
        if done:
            self.already_done.append(sop_uid)
        return done

    def record(self, row: InstanceMetrics, seg: WrittenSeg | None) -> None:
        self.journal.instance(row, seg)
        self.recorder.record(row, seg)

    @property
    def stored(self) -> int:
        return self.recorder.stored

    @property
    def kept_in_outbox(self) -> int:
        return self.recorder.kept_in_outbox


@dataclass
class ChunkAttempt:
    """One journal file read back: who ran the chunk, and what it wrote before it ended or died."""

    chunk_id: str
    attempt_id: str
    worker: str
    ended: bool = False
    instances: list[tuple[InstanceMetrics, str | None]] = field(default_factory=list)
    studies: list[dict] = field(default_factory=list)


def read_attempts(run_dir: Path | str) -> list[ChunkAttempt]:
    """Every attempt of every chunk of the night, oldest first within a chunk (by file time)."""
    root = Path(run_dir) / JOURNAL_FOLDER
    paths = sorted(root.glob("*/*.jsonl"), key=lambda p: (p.parent.name, p.stat().st_mtime_ns, p.name))
    return [attempt for attempt in map(_read_attempt, paths) if attempt is not None]


def _read_attempt(path: Path) -> ChunkAttempt | None:
    attempt: ChunkAttempt | None = None
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:  # the line a killed process was writing
            continue
        kind = line.get("kind")
        if kind == "start":
            attempt = ChunkAttempt(line["chunk_id"], line["attempt_id"], line["worker"])
        elif attempt is None:
            continue
        elif kind == "instance":
            attempt.instances.append((InstanceMetrics(**line["row"]), line["seg_path"]))
        elif kind == "study":
            attempt.studies.append(line)
        elif kind == "end":
            attempt.ended = True
    return attempt


@dataclass(frozen=True)
class NightRecords:
    """The night as the journals and the ledger tell it."""

    results: list[StudyResult]  # one per study that finished, in some attempt
    rows: list[InstanceMetrics]
    study_errors: dict[str, str]  # studies whose last word was an error, and that never finished
    workers: dict[str, list[str]]  # chunk id -> the worker of each attempt, in order


def night_records(attempts: list[ChunkAttempt], ledger: Ledger | None) -> NightRecords:
    """Merge the attempts: an instance's newest row wins (a later attempt re-did what the ledger had not
    finished); stored and kept-in-outbox counts come from the ledger (None: a dry run, nothing stored)."""
    rows: dict[tuple[str | None, str | None], tuple[InstanceMetrics, str | None]] = {}
    done_before: dict[str, set[str]] = {}
    seconds: dict[str, float] = {}
    finished: set[str] = set()
    errors: dict[str, str] = {}
    workers: dict[str, list[str]] = {}
    for attempt in attempts:
        workers.setdefault(attempt.chunk_id, []).append(attempt.worker)
        for row, seg_path in attempt.instances:
            rows[(row.study_uid, row.sop_uid or row.path)] = (row, seg_path)
        for study in attempt.studies:
            uid = study["study_uid"]
            done_before.setdefault(uid, set()).update(study["already_done"])
            seconds[uid] = seconds.get(uid, 0.0) + float(study["seconds"])
            if study["error"]:
                errors[uid] = study["error"]
            else:
                finished.add(uid)
    by_study: dict[str, list[tuple[InstanceMetrics, str | None]]] = {}
    for row, seg_path in rows.values():
        by_study.setdefault(row.study_uid or "", []).append((row, seg_path))
    results = [_study_result(uid, by_study.get(uid, []), done_before.get(uid, set()), seconds.get(uid, 0.0), ledger)
               for uid in sorted(finished)]
    all_rows = [row for result in results for row in result.rows]
    # A study that failed, or died mid-way and was never finished, still reports the instances it settled.
    all_rows += [row for uid in sorted(set(by_study) - finished) for row, _ in by_study[uid]]
    study_errors = {uid: err for uid, err in errors.items() if uid not in finished}
    return NightRecords(results, all_rows, study_errors, workers)


def _study_result(study_uid: str, rows: list[tuple[InstanceMetrics, str | None]], done_before: set[str],
                  seconds: float, ledger: Ledger | None) -> StudyResult:
    stored = kept = 0
    for row, seg_path in rows:
        if ledger is None or seg_path is None or row.sop_uid is None or row.model_fingerprint is None:
            continue
        entry = ledger.entry(row.sop_uid, row.model_fingerprint)
        stored += entry is not None and entry.status is Status.DONE
        kept += entry is not None and entry.status is Status.STORE_PENDING
    with_rows = {row.sop_uid for row, _ in rows}
    ok = [row for row, _ in rows if row.status == RowStatus.OK.value]
    return StudyResult(study_uid=study_uid, rows=[row for row, _ in rows],
                       seg_paths=[p for _, p in rows if p], already_done=len(done_before - with_rows),
                       stored=stored, kept_in_outbox=kept, frames=sum(r.n_frames or 0 for r in ok), seconds=seconds)
