"""What the chunk runner's stages hand each other: the work items, and the three bounded queues.

A study or an instance in flight is one object shared by the stages (each stage writes its own
fields); markers keep the stages in step, so the writer sees every study and instance in input order.
"""
from __future__ import annotations

import queue
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from pipeline.inference import InstanceOutcome, InstancePrediction
from pipeline.ingest import UsFrame, UsInstance
from pipeline.run_tables import InstanceMetrics
from pipeline.seg import WrittenSeg
from pipeline.studies import FetchedStudy, StudyRef
from pipeline.study_processing import StudyOutcome

RESULT_QUEUE_ITEMS = 4  # predicted instances (and study markers) waiting for the SEG writer
WRITTEN_QUEUE_ITEMS = 8  # written instances (rows, SEG paths; no masks) waiting for the recorder
POLL_S = 0.2  # how often a blocked stage looks whether another stage has stopped the chunk


class Recorder(Protocol):
    """What settles each instance: InstanceRecorder, or a wrapper around it (e.g. a chunk journal)."""

    stored: int
    kept_in_outbox: int

    def is_done(self, sop_uid: str) -> bool: ...

    def record(self, row: InstanceMetrics, seg: WrittenSeg | None) -> None: ...


@dataclass(eq=False)
class StudyWork:
    """One study in flight, shared by the three stages (each touches its own fields)."""

    ref: StudyRef
    recorder: Recorder
    seg_dir: Path
    staging: ExitStack = field(default_factory=ExitStack)
    fetched: FetchedStudy | None = None
    issues: list = field(default_factory=list)
    outcome: StudyOutcome | None = None
    already_done: int = 0  # instances the ledger had finished (counted by the reader)
    started: float = field(default_factory=time.perf_counter)
    error: str | None = None


@dataclass(eq=False)
class InstanceWork:
    study: StudyWork
    instance: UsInstance
    started: float = field(default_factory=time.perf_counter)
    prediction: InstancePrediction | None = None
    error: BaseException | None = None  # decode or model failure: the instance's row says why


@dataclass(frozen=True)
class StudyStart:
    study: StudyWork


@dataclass(frozen=True)
class FrameWork:
    item: InstanceWork
    frame: UsFrame


@dataclass(frozen=True)
class InstanceEnd:
    item: InstanceWork


@dataclass(frozen=True)
class InstanceWritten:
    item: InstanceWork
    outcome: InstanceOutcome


@dataclass(frozen=True)
class StudyEnd:
    study: StudyWork


END = object()  # no more items


class Stopped(Exception):
    """Another stage failed: this one gives up quietly (the first failure is what run_chunk raises)."""


class Pipe:
    """The three queues and the stop signal; every wait looks at the signal, so no stage blocks forever."""

    def __init__(self, batch_size: int) -> None:
        self.frames: queue.Queue = queue.Queue(maxsize=max(2, 2 * batch_size))
        self.results: queue.Queue = queue.Queue(maxsize=RESULT_QUEUE_ITEMS)
        self.written: queue.Queue = queue.Queue(maxsize=WRITTEN_QUEUE_ITEMS)
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        if self.failure is None and not isinstance(exc, Stopped):
            self.failure = exc
        self.stop.set()

    def put(self, q: queue.Queue, item: object) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                continue
        raise Stopped

    def get(self, q: queue.Queue) -> object:
        while not self.stop.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                continue
        raise Stopped


def is_fatal(exc: BaseException) -> bool:
    """Errors that are no property of one study or instance: they stop the chunk."""
    return isinstance(exc, (MemoryError, TimeoutError, Stopped)) or not isinstance(exc, Exception)


def run_guarded(pipe: Pipe, stage: Callable, *args) -> None:
    """Run one stage; its failure stops the others (they give up at their next wait)."""
    try:
        stage(*args)
    except BaseException as exc:  # noqa: BLE001 - re-raised by run_chunk once every stage has stopped
        pipe.fail(exc)

