"""The chunk runner's four stages: reader (fetch, ingest, ledger, decode), model (batches across
instances, one guarded call each), SEG writer and recorder (rows, ledger and sink), joined by
`chunk_pipe.Pipe`."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from pipeline.chunk_pipe import (END, FrameWork, InstanceEnd, InstanceWork, InstanceWritten, Pipe, StudyEnd,
                                 StudyStart, StudyWork, Stopped, is_fatal)
from pipeline.inference import (BatchGuard, InstanceOutcome, InstancePrediction, SegmentationModel, failed_instance,
                                model_confidence_floor, write_instance)
from pipeline.ingest import ingest_fetched, iter_frames
from pipeline.pacs import Archive, PacsError
from pipeline.run_tables import InstanceMetrics, RowStatus
from pipeline.seg import SegAlgorithm, SegWriter, WrittenSeg
from pipeline.staging import study_staging
from pipeline.studies import FetchedStudy, StudyRef
from pipeline.study_processing import StudyOutcome, StudyResult

log = logging.getLogger(__name__)


def fetch_with_retries(archive: Archive, study: StudyWork, output_dir: Path, delays: Sequence[float],
                       stop: threading.Event) -> FetchedStudy:
    """The study's files in a staging folder it owns; a transient PACS error is tried again after each delay."""
    staging = study.staging.enter_context(study_staging(output_dir))  # <output_dir>/staging, swept after a kill
    for delay in (*delays, None):
        try:
            return archive.fetch(study.ref, staging)
        except PacsError as exc:
            if not exc.retriable or delay is None:
                raise
            log.warning("study %s: %s; fetching again in %.0f s", study.ref.study_uid, exc, delay)
            if stop.wait(delay):
                raise Stopped from None
    raise AssertionError("unreachable")


def read_studies(refs: Sequence[StudyRef], archive: Archive, new_study: Callable[[StudyRef], StudyWork],
                 output_dir: Path, delays: Sequence[float], pipe: Pipe, in_flight: list[StudyWork]) -> None:
    """The reader stage: each study fetched, ingested, filtered by the ledger and decoded, in order."""
    for ref in refs:
        study = new_study(ref)
        in_flight.append(study)
        try:
            study.fetched = fetch_with_retries(archive, study, output_dir, delays, pipe.stop)
            ingested = ingest_fetched(study.fetched)
            study.issues = list(ingested.issues)
            pipe.put(pipe.frames, StudyStart(study))
            for instance in ingested.instances:
                if study.recorder.is_done(instance.sop_uid):
                    study.already_done += 1
                    continue
                item = InstanceWork(study, instance)
                try:
                    for frame in iter_frames(instance):
                        pipe.put(pipe.frames, FrameWork(item, frame))
                except Exception as exc:  # noqa: BLE001 - a frame that cannot be decoded fails its instance
                    if is_fatal(exc):
                        raise
                    item.error = exc
                pipe.put(pipe.frames, InstanceEnd(item))
        except Exception as exc:  # noqa: BLE001 - one study's trouble must not end the chunk
            if is_fatal(exc):
                raise
            study.error = f"{type(exc).__name__}: {exc}"
        pipe.put(pipe.frames, StudyEnd(study))
    pipe.put(pipe.frames, END)


_model_locks: dict[int, threading.Lock] = {}
_model_locks_guard = threading.Lock()


def model_lock(model: object) -> threading.Lock:
    """One call at a time per model object, whatever the `gpu` slots: chunks running side by side in
    one process share the model, and a model (its encoding cache) is not assumed thread-safe."""
    with _model_locks_guard:
        return _model_locks.setdefault(id(model), threading.Lock())


class ModelStage:
    """Batches frames across instances; one guarded model call per batch. Markers that follow a frame
    still in the batch wait for its flush, so the writer sees everything in input order."""

    def __init__(self, model: SegmentationModel, mode: str, batch_size: int, batch_guard: BatchGuard,
                 pipe: Pipe) -> None:
        self.model, self.mode, self.batch_size, self.batch_guard, self.pipe = model, mode, batch_size, batch_guard, pipe
        self.batch: list[FrameWork] = []
        self.held: list[object] = []
        self.seconds = 0.0
        self.calls = 0

    def run(self) -> None:
        while (item := self.pipe.get(self.pipe.frames)) is not END:
            if isinstance(item, FrameWork):
                if item.item.error is None:
                    self.batch.append(item)
                if len(self.batch) >= self.batch_size:
                    self.flush()
            elif self.batch:
                self.held.append(item)
            else:
                self.pipe.put(self.pipe.results, item)
        self.flush()
        self.pipe.put(self.pipe.results, END)

    def flush(self) -> None:
        if self.batch:
            try:
                self._add(self.batch, self._predict(self.batch))
            except Exception as exc:  # noqa: BLE001 - find the instance at fault, fail only that one
                if is_fatal(exc):
                    raise
                for owner in dict.fromkeys(f.item for f in self.batch):
                    self._predict_alone(owner, [f for f in self.batch if f.item is owner], exc)
            self.batch = []
        for item in self.held:
            self.pipe.put(self.pipe.results, item)
        self.held = []

    def _predict_alone(self, owner: InstanceWork, frames: list[FrameWork], batch_error: Exception) -> None:
        if len(frames) == len(self.batch):  # the batch was this instance's alone: no second try
            owner.error = batch_error
            return
        try:
            self._add(frames, self._predict(frames))
        except Exception as exc:  # noqa: BLE001 - this instance's frames fail it, and only it
            if is_fatal(exc):
                raise
            owner.error = exc

    def _predict(self, frames: list[FrameWork]) -> list:
        with model_lock(self.model), self.batch_guard():
            start = time.perf_counter()
            try:
                preds = self.model.predict([f.frame.model_input for f in frames], self.mode)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
        if len(preds) != len(frames):
            raise ValueError(f"the model answered {len(preds)} predictions for {len(frames)} images")
        return preds

    def _add(self, frames: list[FrameWork], preds: list) -> None:
        n_classes = len(self.model.class_names)
        for f, pred in zip(frames, preds):
            if f.item.error is not None:
                continue
            try:
                if f.item.prediction is None:  # the masks exist only from the instance's first prediction on
                    f.item.prediction = InstancePrediction(f.item.instance, n_classes, model_confidence_floor(self.model))
                f.item.prediction.add(f.frame, pred)
            except Exception as exc:  # noqa: BLE001 - a prediction that does not fit its frame fails its instance
                if is_fatal(exc):
                    raise
                f.item.error = exc


class SegStage:
    """Writes each predicted instance's SEG (or its failure row) and lets its masks go, in input order."""

    def __init__(self, writer: SegWriter, dry_run: bool, pipe: Pipe) -> None:
        self.writer, self.dry_run, self.pipe = writer, dry_run, pipe

    def run(self) -> None:
        while (item := self.pipe.get(self.pipe.results)) is not END:
            if isinstance(item, InstanceEnd):
                item = InstanceWritten(item.item, self._write(item.item))
            self.pipe.put(self.pipe.written, item)
        self.pipe.put(self.pipe.written, END)

    def _write(self, item: InstanceWork) -> InstanceOutcome:
        prediction, item.prediction = item.prediction, None  # the masks go as soon as the SEG is written
        if item.error is not None:
            return failed_instance(item.instance, item.error, self.writer, item.started)
        if prediction is None:
            prediction = InstancePrediction(item.instance, len(self.writer.algorithm.class_names))
        item.study.seg_dir.mkdir(parents=True, exist_ok=True)
        return write_instance(item.instance, prediction.masks, prediction.first_box, prediction.confidence,
                              self.writer, item.study.seg_dir, self.dry_run, item.started,
                              confidence_floor=prediction.confidence_floor)


class RecordStage:
    """The night's bookkeeping, study by study in input order, and the only stage that records: each
    instance's row and the study's recorder (ledger, then sink or outbox), then the study's result."""

    def __init__(self, algorithm: SegAlgorithm, pipe: Pipe,
                 on_study: Callable[[StudyRef, StudyResult | None, str | None], None] | None) -> None:
        self.algorithm, self.pipe, self.on_study = algorithm, pipe, on_study
        self.results: list[StudyResult] = []
        self.errors: dict[str, str] = {}

    def run(self) -> None:
        while (item := self.pipe.get(self.pipe.written)) is not END:
            if isinstance(item, StudyEnd):
                self._end(item.study)  # failing to close a study's books fails the chunk
                continue
            study = item.item.study if isinstance(item, InstanceWritten) else item.study
            if study.error is not None:
                continue
            try:
                if isinstance(item, StudyStart):
                    self._start(study)
                else:
                    self._settle(study, item.outcome)
            except Exception as exc:  # noqa: BLE001 - a study that cannot be recorded fails alone
                if is_fatal(exc):
                    raise
                study.error = f"{type(exc).__name__}: {exc}"

    def _keep(self, study: StudyWork, row: InstanceMetrics, seg: WrittenSeg | None) -> None:
        row = study.outcome.keep(row, seg, study.fetched)
        study.recorder.record(row, seg)

    def _start(self, study: StudyWork) -> None:
        study.outcome = StudyOutcome(study.ref.study_uid)
        for issue in study.issues:
            self._keep(study, InstanceMetrics.for_issue(issue, self.algorithm), None)

    def _settle(self, study: StudyWork, result: InstanceOutcome) -> None:
        study.outcome.frames += result.n_frames if result.row.status == RowStatus.OK.value else 0
        self._keep(study, result.row, result.seg)

    def _end(self, study: StudyWork) -> None:
        study.staging.close()
        if study.error is None and study.outcome is not None:
            outcome = study.outcome
            outcome.already_done = study.already_done
            outcome.seconds = time.perf_counter() - study.started
            result = StudyResult.of(outcome, study.recorder)
            self.results.append(result)
            log.info("study %s: %d rows, %d SEGs, %d already done, %.1f s", outcome.study_uid, len(outcome.rows),
                     len(outcome.segs), outcome.already_done, outcome.seconds)
        else:
            result = None
            study.error = study.error or "the study ended before it started"
            self.errors[study.ref.study_uid] = study.error
            log.error("study %s failed: %s", study.ref.study_uid, study.error)
        if self.on_study:
            self.on_study(study.ref, result, study.error)


