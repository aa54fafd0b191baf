"""The `sam2rad-chunk` flow: one chunk of a night (a few studies) on whichever GPU worker pulled it.

The dispatcher (flows/dispatch.py) submits each chunk as a flow run of the `sam2rad-chunk/chunk`
deployment; a free worker of the GPU pool takes the next one. The chunk settles instance by instance
(ledger, sink, its journal), so a worker killed mid-chunk leaves the chunk to be run again by another
worker, which redoes only what the ledger has not finished. No task per study: orchestration costs one
flow run per chunk.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from flows.nightly import _settings
from flows.runtime import default_device, ensure_gpu_limit, gpu_slot, load_model
from pipeline.inference import seg_algorithm_for
from pipeline.ledger import Ledger
from pipeline.night_chunks import ChunkJournal, JournaledRecorder, NightChunk, worker_identity
from pipeline.pacs import Archive, Outbox, PacsError, PacsSettings, open_archive
from pipeline.pacs.base import safe_uid
from pipeline.seg import SegAlgorithm, SegWriter
from pipeline.staging import study_staging, sweep_stale_staging
from pipeline.studies import StudyRef
from pipeline.study_processing import InstanceRecorder, process_study

CHUNK_DEPLOYMENT = "sam2rad-chunk/chunk"
# A PACS that drops an association may come back: a study's fetch is tried again after these pauses.
TRANSIENT_RETRY_DELAYS_S = (5.0, 30.0)


@dataclass(frozen=True)
class ChunkReport:
    """What one attempt at a chunk did (the full rows are in its journal, read by the dispatcher)."""

    chunk_id: str
    attempt_id: str
    worker: str
    studies: int
    failed_studies: int
    instances: int
    stored: int
    seconds: float


@dataclass
class _ChunkContext:
    """What every study of the chunk shares: the archive, the sink, the model and the bookkeeping."""

    archive: Archive
    sink_settings: PacsSettings
    sink: Archive
    model: object
    algorithm: SegAlgorithm
    ledger: Ledger
    journal: ChunkJournal
    run_dir: Path
    mode: str
    batch_size: int
    dry_run: bool


def _attempt_id() -> str:
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return str(run.id) if run else f"local-{uuid.uuid4()}"


def _segment_study(ref: StudyRef, ctx: _ChunkContext) -> tuple[int, int]:
    """Fetch one study, segment what the ledger has not finished, settle each instance; (rows, stored)."""
    recorder = JournaledRecorder(
        InstanceRecorder(ctx.ledger, ctx.algorithm.fingerprint, ref.study_uid, ctx.sink,
                         Outbox(ctx.sink_settings.store_outbox), ctx.sink_settings.retry_policy(), ctx.dry_run),
        ctx.journal)
    seg_dir = ctx.run_dir / "segs" / safe_uid(ref.study_uid, "StudyInstanceUID")  # checked before any path
    seg_dir.mkdir(parents=True, exist_ok=True)
    with study_staging(ctx.run_dir.parent) as staging:  # <output_dir>/staging, swept after a kill
        fetched = ctx.archive.fetch(ref, staging)
        outcome = process_study(fetched, ctx.model, SegWriter(ctx.algorithm), seg_dir, ctx.mode, ctx.batch_size,
                                ctx.dry_run, is_done=recorder.is_done, on_result=recorder.record,
                                batch_guard=gpu_slot)
    ctx.journal.study(ref.study_uid, recorder.already_done, outcome.seconds)
    return len(outcome.rows), recorder.stored


def _segment_study_with_retries(ref: StudyRef, ctx: _ChunkContext, logger: logging.LoggerAdapter) -> tuple[int, int] | None:
    """One study; a transient PACS error is tried again, anything else ends the study (not the chunk)."""
    start = time.perf_counter()
    for attempt, delay in enumerate((*TRANSIENT_RETRY_DELAYS_S, None)):
        try:
            return _segment_study(ref, ctx)
        except PacsError as exc:
            if exc.retriable and delay is not None:
                logger.warning("study %s: %s; trying again in %.0f s", ref.study_uid, exc, delay)
                time.sleep(delay)
                continue
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - one study's trouble must not end the chunk
            error = f"{type(exc).__name__}: {exc}"
        logger.error("study %s failed: %s", ref.study_uid, error)
        ctx.journal.study(ref.study_uid, [], time.perf_counter() - start, error=error)
        return None
    return None


@flow(name="sam2rad-chunk")
def segment_chunk(chunk: NightChunk, run_dir: str, ledger_path: str, inbox: str | None = None,
                  outbox: str | None = None, source_kind: str = "folder", sink_kind: str | None = None,
                  checkpoint: str | None = None, mode: str = "auto", batch_size: int = 4,
                  dry_run: bool = False) -> ChunkReport:
    """Segment the studies of one chunk of a night into `run_dir`, recording each instance in the
    ledger and in the chunk's journal. Submitted by the dispatcher; parameters as for the nightly flow."""
    logger = get_run_logger()
    start = time.perf_counter()
    run_path = Path(run_dir).resolve()
    settings = _settings(source_kind, inbox, outbox, run_path.parent)  # PACS settings: this worker's env
    sink_settings = settings if not sink_kind or sink_kind == source_kind else settings.replace(kind=sink_kind)
    swept = sweep_stale_staging(run_path.parent)  # what a killed chunk on this host left behind
    model = load_model(checkpoint, default_device())
    ensure_gpu_limit()
    archive = open_archive(settings)
    attempt_id, worker = _attempt_id(), worker_identity()
    journal = ChunkJournal(run_path, chunk.chunk_id, attempt_id, worker)
    ctx = _ChunkContext(archive=archive, sink_settings=sink_settings,
                        sink=archive if sink_settings == settings else open_archive(sink_settings),
                        model=model, algorithm=seg_algorithm_for(model, mode), ledger=Ledger(ledger_path),
                        journal=journal, run_dir=run_path, mode=mode, batch_size=batch_size, dry_run=dry_run)
    logger.info("chunk %s (%d studies) on worker %s%s", chunk.chunk_id, len(chunk.studies), worker,
                f"; removed {swept} stale staging folder(s)" if swept else "")
    done = [_segment_study_with_retries(ref, ctx, logger) for ref in chunk.studies]
    journal.close()
    report = ChunkReport(chunk_id=chunk.chunk_id, attempt_id=attempt_id, worker=worker, studies=len(done),
                         failed_studies=sum(d is None for d in done), instances=sum(d[0] for d in done if d),
                         stored=sum(d[1] for d in done if d), seconds=round(time.perf_counter() - start, 2))
    logger.info("chunk %s: %d studies (%d failed), %d instances, %d SEGs stored, %.1f s", report.chunk_id,
                report.studies, report.failed_studies, report.instances, report.stored, report.seconds)
    return report
