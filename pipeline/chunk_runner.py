"""A chunk of a night (a few studies) through the model, with the I/O around it overlapped.

Four stages joined by three bounded queues, so the model never waits for a fetch, a decode, a SEG
or a store that could have happened while it was working:

    reader (thread)   fetch (transient PACS errors tried again), ingest, ask the ledger, decode frames
        -> frame queue: at most 2 x batch_size items (decoded frames, and study/instance markers)
    model (the caller's thread)   batches of batch_size frames, frames of several instances sharing a
        batch; one model call per batch, inside `batch_guard` (the GPU slot)
        -> result queue: at most RESULT_QUEUE_ITEMS (4) items (predicted instances, study markers)
    SEG writer (thread)   builds and writes each SEG (or the instance's failure row); masks freed
        -> written queue: at most WRITTEN_QUEUE_ITEMS (8) items (rows and SEG paths, no pixels)
    recorder (thread)   rows, then the study's recorder (ledger, then sink or outbox), in input order

Memory stays flat whatever the chunk's size: the decoded frames of the frame queue and of one batch
(3 x batch_size + 1), the masks of at most batch_size + RESULT_QUEUE_ITEMS + 2 instances, and the
staging folders of the studies that have an item in a queue.

Per instance the semantics are process_study's: the ledger is asked before decoding and told as each
instance settles, so a crash loses at most the instances in flight and nothing is stored twice; bad
data becomes a row, never an exception; a study that cannot be fetched or recorded becomes a study
error and the others go on. MemoryError and TimeoutError (no GPU slot in time) stop the chunk and
propagate: they are not properties of one instance. Plain Python (no prefect).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

from pipeline.chunk_pipe import Pipe, Recorder, StudyWork, run_guarded
from pipeline.chunk_stages import ModelStage, RecordStage, SegStage, read_studies
from pipeline.inference import BatchGuard, SegmentationModel, seg_algorithm_for
from pipeline.ledger import Ledger
from pipeline.pacs import Outbox, PacsSettings, open_archive
from pipeline.pacs.base import safe_uid
from pipeline.seg import SegAlgorithm, SegWriter
from pipeline.studies import StudyRef
from pipeline.study_processing import InstanceRecorder, StudyResult

log = logging.getLogger(__name__)

# A PACS that drops an association may come back: a study's fetch is tried again after these pauses.
FETCH_RETRY_DELAYS_S = (5.0, 30.0)


@dataclass(frozen=True)
class ChunkResult:
    """What a chunk hands back (JSON-serialisable, so a Prefect task may return or cache it)."""

    studies: list[StudyResult]  # the studies that finished, in the order given
    study_errors: dict[str, str]  # study UID -> "Error: message", for those that could not be processed
    frames: int  # frames segmented
    seconds: float  # wall time of the chunk
    model_seconds: float  # time inside the model calls (model_seconds / seconds: how busy the device was)
    model_calls: int


@lru_cache(maxsize=2)
def _load_model(checkpoint: str | None) -> SegmentationModel:
    """The model of a checkpoint, once per process, when the caller did not pass one."""
    from sam2rad.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint, backbone_checkpoint=os.environ.get("SAM2RAD_BACKBONE_CHECKPOINT"),
                           device=os.environ.get("SAM2RAD_DEVICE", "cpu"))


def run_chunk(settings: PacsSettings, refs: Sequence[StudyRef], checkpoint: str | None = None, mode: str = "auto",
              batch_size: int = 4, dry_run: bool = False, run_dir: str | os.PathLike[str] = "runs/chunk",
              ledger_path: str | os.PathLike[str] | None = None, sink_settings: PacsSettings | None = None, *,
              model: SegmentationModel | None = None, algorithm: SegAlgorithm | None = None,
              batch_guard: BatchGuard = nullcontext,
              recorder_for: Callable[[StudyRef, InstanceRecorder], Recorder] | None = None,
              on_study: Callable[[StudyRef, StudyResult | None, str | None], None] | None = None,
              on_last_study: Callable[[], None] | None = None,
              fetch_retry_delays: Sequence[float] = FETCH_RETRY_DELAYS_S) -> ChunkResult:
    """Segment the studies `refs` from the archive `settings` describe into `run_dir`, SEGs to the sink
    (`sink_settings`, default the same archive), every instance settled in the ledger at `ledger_path`.

    The positional parameters are plain values, so another process (a Prefect task or worker) can call
    this. Keyword-only hooks for callers in this process: `model` (default: `checkpoint` loaded once per
    process on SAM2RAD_DEVICE), `algorithm` (the SEGs' algorithm identity, default from the model's
    checkpoint), `batch_guard` (wraps each model call: the GPU slot), `recorder_for` (wraps
    each study's InstanceRecorder, e.g. to journal before the ledger), `on_study(ref, result, error)`
    (called as each study ends, from the writer thread), `on_last_study()` (called once, when the reader starts
    the chunk's last study or stops early: the caller may start the next chunk then, so that its
    start-up and first fetches overlap this chunk's last study).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    start = time.perf_counter()
    model = model if model is not None else _load_model(checkpoint)
    algorithm = algorithm or seg_algorithm_for(model, mode)
    sink_settings = sink_settings or settings
    archive = open_archive(settings)
    sink = archive if sink_settings == settings else open_archive(sink_settings)
    ledger = Ledger(ledger_path)
    run_path = Path(run_dir)
    outbox = Outbox(sink_settings.store_outbox)

    last_ref = refs[-1] if refs else None
    signalled = False  # only the reader thread signals

    def signal_last_study() -> None:
        nonlocal signalled
        if on_last_study is not None and not signalled:
            signalled = True
            on_last_study()

    def new_study(ref: StudyRef) -> StudyWork:
        if ref is last_ref:
            signal_last_study()
        recorder: Recorder = InstanceRecorder(ledger, algorithm.fingerprint, ref.study_uid, sink, outbox,
                                              sink_settings.retry_policy(), dry_run)
        if recorder_for is not None:
            recorder = recorder_for(ref, recorder)
        seg_dir = run_path / "segs" / safe_uid(ref.study_uid, "StudyInstanceUID")  # checked before any path
        return StudyWork(ref, recorder, seg_dir)

    pipe = Pipe(batch_size)
    in_flight: list[StudyWork] = []
    model_stage = ModelStage(model, mode, batch_size, batch_guard, pipe)
    seg_stage = SegStage(SegWriter(algorithm), dry_run, pipe)
    record_stage = RecordStage(algorithm, pipe, on_study)
    reader_args = (list(refs), archive, new_study, run_path.parent, fetch_retry_delays, pipe, in_flight)

    def read_then_signal() -> None:
        try:
            run_guarded(pipe, read_studies, *reader_args)
        finally:
            signal_last_study()  # a reader that stopped early

    threads = [threading.Thread(target=read_then_signal, name="chunk-reader"),
               threading.Thread(target=run_guarded, args=(pipe, seg_stage.run), name="chunk-seg-writer"),
               threading.Thread(target=run_guarded, args=(pipe, record_stage.run), name="chunk-recorder")]
    for thread in threads:
        thread.start()
    try:
        run_guarded(pipe, model_stage.run)
    finally:
        for thread in threads:
            thread.join()
        for study in in_flight:  # a stopped chunk still removes its staged source DICOM
            study.staging.close()
        ledger.close()
    if pipe.failure is not None:
        raise pipe.failure
    seconds = time.perf_counter() - start
    result = ChunkResult(studies=record_stage.results, study_errors=record_stage.errors,
                         frames=sum(r.frames for r in record_stage.results), seconds=seconds,
                         model_seconds=model_stage.seconds, model_calls=model_stage.calls)
    log.info("chunk of %d studies: %d finished, %d failed, %d frames in %.1f s, model busy %.0f %% (%d calls)",
             len(refs), len(result.studies), len(result.study_errors), result.frames, seconds,
             100 * result.model_seconds / seconds if seconds else 0.0, result.model_calls)
    return result


