"""The `sam2rad-chunk` flow: one chunk of a night (a few studies) on whichever GPU worker pulled it.

The dispatcher (flows/dispatch.py) submits each chunk as a flow run of the `sam2rad-chunk/chunk`
deployment; a free worker of the GPU pool takes the next one. The chunk runs through
`pipeline.chunk_runner.run_chunk` (fetch, decode, model, SEG write and store overlapped) and settles
instance by instance (its journal, then the ledger and the sink), so a worker killed mid-chunk leaves
the chunk to be run again by another worker, which redoes only what the ledger has not finished.
No task per study: orchestration costs one flow run per chunk.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from flows.night_setup import pacs_settings, sink_settings_for
from flows.runtime import default_device, ensure_gpu_limit, gpu_slot, load_model
from pipeline.chunk_runner import run_chunk
from pipeline.inference import seg_algorithm_for
from pipeline.night_chunks import ChunkJournal, JournaledRecorder, NightChunk, worker_identity
from pipeline.staging import sweep_stale_staging
from pipeline.studies import StudyRef
from pipeline.study_processing import InstanceRecorder, StudyResult

CHUNK_DEPLOYMENT = "sam2rad-chunk/chunk"


@dataclass(frozen=True)
class ChunkReport:
    """What one attempt at a chunk did (the rows are in its journal, which the dispatcher reads)."""

    chunk_id: str
    attempt_id: str
    worker: str
    studies: int
    failed_studies: int
    frames: int
    stored: int
    seconds: float
    model_seconds: float  # time inside the model: model_seconds / seconds is how busy the device was


def _attempt_id() -> str:
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return str(run.id) if run else f"local-{uuid.uuid4()}"


class _StudyJournal:
    """run_chunk's two hooks: each study's recorder journals before the ledger hears, and each study's
    end is journaled with the instances the ledger had finished already."""

    def __init__(self, journal: ChunkJournal) -> None:
        self.journal = journal
        self.recorders: dict[str, JournaledRecorder] = {}

    def recorder_for(self, ref: StudyRef, recorder: InstanceRecorder) -> JournaledRecorder:
        self.recorders[ref.study_uid] = JournaledRecorder(recorder, self.journal)
        return self.recorders[ref.study_uid]

    def on_study(self, ref: StudyRef, result: StudyResult | None, error: str | None) -> None:
        recorder = self.recorders.pop(ref.study_uid, None)
        self.journal.study(ref.study_uid, recorder.already_done if recorder else [],
                           result.seconds if result else 0.0, error=None if result else error)


@flow(name="sam2rad-chunk")
def segment_chunk(chunk: NightChunk, run_dir: str, ledger_path: str, inbox: str | None = None,
                  outbox: str | None = None, source_kind: str = "folder", sink_kind: str | None = None,
                  checkpoint: str | None = None, mode: str = "auto", batch_size: int = 4,
                  dry_run: bool = False) -> ChunkReport:
    """Segment the studies of one chunk of a night into `run_dir`, recording each instance in the
    ledger and in the chunk's journal. Submitted by the dispatcher; parameters as for the nightly flow."""
    logger = get_run_logger()
    run_path = Path(run_dir).resolve()
    settings = pacs_settings(source_kind, inbox, outbox, run_path.parent)  # PACS settings: this worker's env
    sink_settings = sink_settings_for(settings, source_kind, sink_kind)
    swept = sweep_stale_staging(run_path.parent)  # what a killed chunk on this host left behind
    model = load_model(checkpoint, default_device())  # once per worker process
    ensure_gpu_limit()
    attempt_id, worker = _attempt_id(), worker_identity()
    logger.info("chunk %s (%d studies) on worker %s%s", chunk.chunk_id, len(chunk.studies), worker,
                f"; removed {swept} stale staging folder(s)" if swept else "")
    journal = ChunkJournal(run_path, chunk.chunk_id, attempt_id, worker)
    hooks = _StudyJournal(journal)
    try:
        result = run_chunk(settings, chunk.studies, checkpoint, mode, batch_size, dry_run, run_path, ledger_path,
                           sink_settings, model=model, algorithm=seg_algorithm_for(model, mode),
                           batch_guard=gpu_slot, recorder_for=hooks.recorder_for, on_study=hooks.on_study)
    finally:
        journal.close()
    report = ChunkReport(chunk_id=chunk.chunk_id, attempt_id=attempt_id, worker=worker,
                         studies=len(chunk.studies), failed_studies=len(result.study_errors), frames=result.frames,
                         stored=sum(s.stored for s in result.studies), seconds=round(result.seconds, 2),
                         model_seconds=round(result.model_seconds, 2))
    logger.info("chunk %s: %d studies (%d failed), %d frames, %d SEGs stored, %.1f s, model busy %.0f %%",
                report.chunk_id, report.studies, report.failed_studies, report.frames, report.stored,
                report.seconds, 100 * report.model_seconds / report.seconds if report.seconds else 0.0)
    return report
