"""The nightly flow: discover -> per chunk of studies: fetch, segment, write SEG, store, ledger -> tables + artifact.

Tasks are thin: each calls one pipeline/sam2rad function (a chunk: pipeline.chunk_runner.run_chunk, which
overlaps fetching, decoding, SEG writing and storing with the model). Retries only where I/O is transient (PACS
discovery, retrieval, store); bad input and out-of-memory are never retried.
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture

from flows.night_setup import prepare_night, publish_night
from flows.night_tasks import SUMMARY_ARTIFACT, StudiesFailed, discover_studies, drain_previous_failures, transient_io
from flows.runtime import default_device, ensure_gpu_limit, gpu_slot, load_model
from pipeline.chunk_runner import ChunkResult, run_chunk
from pipeline.inference import seg_algorithm_for
from pipeline.ledger import Ledger
from pipeline.night_chunks import NightChunk, split_night
from pipeline.night_summary import night_summary
from pipeline.pacs import PacsSettings
from pipeline.studies import StudyRef
from pipeline.study_processing import StudyResult

# The CLI and tests import the night's exception and artifact key from here too.
__all__ = ["DEFAULT_STUDIES_PER_CHUNK", "SUMMARY_ARTIFACT", "StudiesFailed", "nightly", "segment_chunk"]

DEFAULT_STUDIES_PER_CHUNK = 16
CHUNKS_IN_FLIGHT = 2  # the next chunk starts while one finishes (model calls stay one at a time: the gpu slot)
READ_POLL_S = 0.05
# Chunk tasks of this process tell the flow when they start their last study (keyed by a random
# token passed as a task parameter; Events cannot be task parameters).
_LAST_STUDY_STARTED: dict[str, threading.Event] = {}


def _chunk_cache_key(context: TaskRunContext, parameters: dict) -> str | None:
    """Cache a chunk under (its study UIDs, model fingerprint, code version), but only while the ledger
    (the source of truth) has no unfinished instance of any of its studies for this model."""
    refs: list[StudyRef] = parameters["refs"]
    fingerprint = parameters["model_fingerprint"]
    if parameters.get("dry_run"):
        return None
    ledger = Ledger(parameters["ledger_path"])
    for ref in refs:
        status = ledger.study_status(ref.study_uid, fingerprint)
        # Only studies the ledger knows and has finished may be skipped from the cache.
        if not status or any(n for s, n in status.items() if s not in ("done", "skipped")):
            return None
    uids = ",".join(sorted(ref.study_uid for ref in refs))
    key = f"{uids}|{fingerprint}|{parameters['code_version']}|{parameters['ledger_path']}"
    return hashlib.sha256(key.encode()).hexdigest()


@task(name="segment-chunk", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient_io,
      cache_key_fn=_chunk_cache_key, persist_result=True, result_serializer="json")
def segment_chunk(settings: PacsSettings, sink_settings: PacsSettings, refs: list[StudyRef], checkpoint: str | None,
                  mode: str, batch_size: int, dry_run: bool, run_dir: str, ledger_path: str,
                  model_fingerprint: str, code_version: str, last_study_key: str | None = None) -> ChunkResult:
    """Fetch a few studies, segment what the ledger has not finished, write SEGs, store them: the I/O
    overlapped with the model, each model call holding a `gpu` slot. A study that fails is reported in
    the result; a transient PACS error that stops the whole chunk retries it (the ledger skips what is done).
    last_study_key: names an event of this process set when the chunk starts its last study."""
    last_study = _LAST_STUDY_STARTED.get(last_study_key) if last_study_key else None
    result = run_chunk(settings, refs, checkpoint, mode, batch_size, dry_run, run_dir, ledger_path, sink_settings,
                       model=load_model(checkpoint, default_device()), batch_guard=gpu_slot,
                       on_last_study=last_study.set if last_study else None)
    get_run_logger().info("%d studies (%d failed), %d frames in %.1f s; %.1f s inside the model (%d calls)",
                          len(refs), len(result.study_errors), result.frames, result.seconds,
                          result.model_seconds, result.model_calls)
    return result


def _chunk_results(refs: list[StudyRef], future: PrefectFuture) -> tuple[list[StudyResult], dict[str, str]]:
    """A chunk's studies and study errors, once it has finished; a chunk that failed as a whole fails each
    of its studies."""
    future.wait()
    state = future.state
    try:
        chunk: ChunkResult = state.result()
    except Exception as exc:  # noqa: BLE001 - one chunk's trouble must not end the night
        return [], {ref.study_uid: f"{type(exc).__name__}: {exc}" for ref in refs}
    # A cached chunk comes back from Prefect's JSON result store as a ChunkResult too (tested).
    cached = state.name == "Cached"
    return [dataclasses.replace(study, from_cache=cached) for study in chunk.studies], dict(chunk.study_errors)


def _segment_chunks(chunks: list[NightChunk], submit: Callable[..., PrefectFuture]
                    ) -> tuple[list[StudyResult], dict[str, str]]:
    """Every chunk's studies and study errors (each error logged).

    A chunk starts when the one before it starts reading its last study: its start-up, fetches and
    decodes overlap the other's last study, model calls, SEGs and stores, so the model is not idle
    between chunks, and the two do not compete for the CPU all along (measured: two chunks started
    together fed an instant model at 0.75x the plain loop). At most CHUNKS_IN_FLIGHT run at once; model calls stay one at a time
    (the gpu slot, and one lock per model object)."""
    results: list[StudyResult] = []
    study_errors: dict[str, str] = {}
    in_flight: deque[tuple[list[StudyRef], PrefectFuture, str]] = deque()

    def collect_oldest() -> None:
        refs, future, key = in_flight.popleft()
        try:
            finished, errors = _chunk_results(refs, future)
        finally:
            _LAST_STUDY_STARTED.pop(key, None)
        results.extend(finished)
        study_errors.update(errors)

    try:
        for chunk in chunks:
            if in_flight:
                _wait_until_last_study(*in_flight[-1][1:])
            while len(in_flight) >= CHUNKS_IN_FLIGHT:
                collect_oldest()
            refs, key = list(chunk.studies), uuid.uuid4().hex
            _LAST_STUDY_STARTED[key] = threading.Event()
            in_flight.append((refs, submit(refs=refs, last_study_key=key), key))
        while in_flight:
            collect_oldest()
    finally:
        for _, _, key in in_flight:
            _LAST_STUDY_STARTED.pop(key, None)
    for uid, error in study_errors.items():
        get_run_logger().error("study %s failed: %s", uid, error)
    return results, study_errors


def _wait_until_last_study(future: PrefectFuture, key: str) -> None:
    """Until the chunk starts its last study, or has ended without saying so (failed, cached)."""
    event = _LAST_STUDY_STARTED[key]
    while not event.wait(READ_POLL_S) and not future.wrapped_future.done():
        pass


@flow(name="sam2rad-nightly", log_prints=True)
def nightly(inbox: str | None = None, outbox: str | None = None, source_kind: str = "folder",
            start_date: str | None = None, end_date: str | None = None, checkpoint: str | None = None,
            mode: str = "auto", batch_size: int = 4, dry_run: bool = False, output_dir: str = "runs",
            ledger_path: str | None = None, sink_kind: str | None = None,
            studies_per_chunk: int = DEFAULT_STUDIES_PER_CHUNK) -> dict:
    """Segment the US studies of a date window (default: yesterday) and put DICOM-SEG back.

    inbox/outbox: folder archive (source_kind="folder"); DIMSE/DICOMweb addresses come from the
    environment (SAM2RAD_PACS_*, SAM2RAD_DICOMWEB_*). checkpoint: PPN checkpoint, default the shipped
    demo model. One run uses one GPU; to spread a night over several, run the `sam2rad-dispatch` flow
    (flows/dispatch.py), whose chunks free workers of the GPU pool pull.
    sink_kind: where SEGs go when that differs from the source (e.g. read a VNA folder, store to PACS).
    studies_per_chunk: studies per `segment-chunk` task (one task run, fetch/decode/store overlapped
    with the model inside it; the next chunk starts as this one starts its last study); a chunk is also what a transient PACS
    error retries, and what a MemoryError or a `gpu` slot timeout fails as a whole.
    """
    if mode != "auto":
        raise ValueError("the nightly flow runs without a reader: mode must be 'auto'")
    if studies_per_chunk < 1:
        raise ValueError(f"studies_per_chunk must be at least 1, got {studies_per_chunk}")
    night = prepare_night(source_kind, inbox, outbox, sink_kind, start_date, end_date, output_dir, ledger_path)
    model = load_model(checkpoint, default_device())  # once per worker process
    fingerprint = seg_algorithm_for(model, mode).fingerprint
    from sam2rad.checkpoint import code_version  # torch loads here, not when the flow module is imported

    drained = 0 if dry_run else drain_previous_failures(night.sink_settings, night.ledger_file)
    studies, rejected = discover_studies(night.settings, start_date, end_date)
    ensure_gpu_limit()
    submit = partial(segment_chunk.submit, settings=night.settings, sink_settings=night.sink_settings,
                     checkpoint=checkpoint, mode=mode, batch_size=batch_size, dry_run=dry_run,
                     run_dir=str(night.run_dir), ledger_path=night.ledger_file, model_fingerprint=fingerprint,
                     code_version=code_version())
    results, study_errors = _segment_chunks(split_night(studies, studies_per_chunk), submit)

    rows = [row for result in results for row in result.rows]
    summary = night_summary(results, rows, drained, night.seconds(), night.window, night.run_dir, dry_run,
                            rejected=rejected, study_errors=study_errors)
    return publish_night(night, summary, rows, rejected)


if __name__ == "__main__":
    nightly()
