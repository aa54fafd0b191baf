"""The nightly flow: discover -> per chunk of studies: fetch, segment, write SEG, store, ledger -> tables + artifact.

Tasks are thin: each calls one pipeline/sam2rad function (a chunk: pipeline.chunk_runner.run_chunk, which
overlaps fetching, decoding, SEG writing and storing with the model). Retries only where I/O is transient (PACS
discovery, retrieval, store); bad input and out-of-memory are never retried.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import deque
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext, get_run_context
from prefect.futures import PrefectFuture
from prefect.states import Failed

from flows.runtime import default_device, ensure_gpu_limit, gpu_slot, load_model
from pipeline.chunk_runner import ChunkResult, run_chunk
from pipeline.inference import seg_algorithm_for
from pipeline.ledger import Ledger
from pipeline.night_chunks import split_night
from pipeline.night_summary import night_summary, summary_markdown
from pipeline.pacs import Outbox, PacsError, PacsSettings, drain, open_archive
from pipeline.run_tables import study_metrics, write_rejected_table, write_tables
from pipeline.staging import sweep_stale_staging
from pipeline.studies import RejectedFile, StudyRef, parse_window
from pipeline.study_processing import StudyResult
from pipeline.us_records import IngestLimits

SUMMARY_ARTIFACT = "sam2rad-nightly-summary"
DEFAULT_STUDIES_PER_CHUNK = 16
CHUNKS_IN_FLIGHT = 2  # the next chunk starts while one finishes (model calls stay one at a time: the gpu slot)


class StudiesFailed(RuntimeError):
    """Some studies could not be processed; the night's summary (tables, counts) is in `.summary`.

    The flow run ends Failed with this as its result: calling `nightly()` raises it, without a traceback
    in the log, and `sam2rad run-nightly` prints the headline and exits 1."""

    def __init__(self, summary: dict) -> None:
        super().__init__(summary["headline"])
        self.summary = summary

    def __reduce__(self):  # picklable with its summary (Prefect may persist the result)
        return (type(self), (self.summary,))


def transient_io(task, task_run, state) -> bool:
    """Retry PACS trouble that may pass (unreachable, dropped association), not configuration errors."""
    try:
        state.result()
    except PacsError as exc:
        return exc.retriable  # unreachable / dropped: yes; wrong AE title or password: no
    except Exception:  # noqa: BLE001 - bad data, bugs, MemoryError: retrying would not help
        return False
    return False


def _settings(source_kind: str, inbox: str | None, outbox: str | None, output_dir: Path) -> PacsSettings:
    changes: dict = {"kind": source_kind}
    if "SAM2RAD_STORE_OUTBOX" not in os.environ:  # SEGs waiting for a store live beside the run folders
        changes["store_outbox"] = output_dir / "store-outbox"
    if inbox:
        changes["inbox"] = Path(inbox)
    if outbox:
        changes["outbox"] = Path(outbox)
    return PacsSettings.from_env().replace(**changes)


@task(name="discover-studies", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=transient_io,
      cache_policy=NO_CACHE)
def discover_studies(settings: PacsSettings, start_date: str | None,
                     end_date: str | None) -> tuple[list[StudyRef], list[RejectedFile]]:
    """The window's studies, and the files the archive refused (not DICOM, invalid UIDs, FIFOs, links out)."""
    window = parse_window(start_date, end_date)
    archive = open_archive(settings)
    studies = archive.discover(window)
    rejected = list(getattr(archive, "rejected", []))
    get_run_logger().info("%d studies with US in %s; %d files rejected", len(studies), window.dicom_range(),
                          len(rejected))
    return studies, rejected


@task(name="drain-store-outbox", retries=1, retry_delay_seconds=5, retry_condition_fn=transient_io,
      cache_policy=NO_CACHE)
def drain_previous_failures(sink_settings: PacsSettings, ledger_path: str) -> int:
    """SEGs a previous night could not store go first: nothing is lost, nothing stored twice."""
    outbox = Outbox(sink_settings.store_outbox)
    if not outbox.items():
        return 0
    report = drain(open_archive(sink_settings), outbox, ledger=Ledger(ledger_path),
                   policy=sink_settings.retry_policy())
    get_run_logger().info("outbox drain: %d stored, %d already in the archive, %d failed, %d remain",
                          len(report.stored), len(report.already_there), len(report.failed), report.remaining)
    return len(report.stored)


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
                  model_fingerprint: str, code_version: str) -> ChunkResult:
    """Fetch a few studies, segment what the ledger has not finished, write SEGs, store them: the I/O
    overlapped with the model, each model call holding a `gpu` slot. A study that fails is reported in
    the result; a transient PACS error that stops the whole chunk retries it (the ledger skips what is done)."""
    result = run_chunk(settings, refs, checkpoint, mode, batch_size, dry_run, run_dir, ledger_path, sink_settings,
                       model=load_model(checkpoint, default_device()), batch_guard=gpu_slot)
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


def _in_shard(study_uid: str, shard_index: int, shard_count: int) -> bool:
    return int(hashlib.sha256(study_uid.encode()).hexdigest(), 16) % shard_count == shard_index


@flow(name="sam2rad-nightly", log_prints=True)
def nightly(inbox: str | None = None, outbox: str | None = None, source_kind: str = "folder",
            start_date: str | None = None, end_date: str | None = None, checkpoint: str | None = None,
            mode: str = "auto", batch_size: int = 4, dry_run: bool = False, output_dir: str = "runs",
            ledger_path: str | None = None, shard_index: int = 0, shard_count: int = 1,
            sink_kind: str | None = None, studies_per_chunk: int = DEFAULT_STUDIES_PER_CHUNK) -> dict:
    """Segment the US studies of a date window (default: yesterday) and put DICOM-SEG back.

    inbox/outbox: folder archive (source_kind="folder"); DIMSE/DICOMweb addresses come from the
    environment (SAM2RAD_PACS_*, SAM2RAD_DICOMWEB_*). checkpoint: PPN checkpoint, default the shipped
    demo model. shard_index/shard_count split one night across several flow runs (one per worker).
    sink_kind: where SEGs go when that differs from the source (e.g. read a VNA folder, store to PACS).
    studies_per_chunk: studies per `segment-chunk` task (one task run, fetch/decode/store overlapped
    with the model inside it; two chunks run side by side); a chunk is also what a transient PACS
    error retries, and what a MemoryError or a `gpu` slot timeout fails as a whole.
    """
    if mode != "auto":
        raise ValueError("the nightly flow runs without a reader: mode must be 'auto'")
    if studies_per_chunk < 1:
        raise ValueError(f"studies_per_chunk must be at least 1, got {studies_per_chunk}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} outside 0..{shard_count - 1}")
    logger = get_run_logger()
    start = time.perf_counter()
    out = Path(output_dir).resolve()
    settings = _settings(source_kind, inbox, outbox, out)
    sink_settings = settings if not sink_kind or sink_kind == source_kind else settings.replace(kind=sink_kind)
    window = parse_window(start_date, end_date)
    IngestLimits().decoded_bytes_budget()  # a bad SAM2RAD_MAX_DECODED_BYTES fails the start, not each study
    run_id = str(get_run_context().flow_run.id)[:8]
    run_dir = out / f"nightly-{window.start:%Y%m%d}-{window.end:%Y%m%d}-{run_id}"
    ledger_file = str(Path(ledger_path).resolve() if ledger_path else out / "ledger.sqlite")
    Ledger(ledger_file)  # create it (and fail early if the path is unusable)
    swept = sweep_stale_staging(out)  # source DICOM a killed run left behind
    if swept:
        logger.warning("removed %d staging folder(s) a killed run left under %s", swept, out / "staging")

    model = load_model(checkpoint, default_device())  # once per worker process
    fingerprint = seg_algorithm_for(model, mode).fingerprint
    from sam2rad.checkpoint import code_version  # torch loads here, not when the flow module is imported

    drained = 0 if dry_run else drain_previous_failures(sink_settings, ledger_file)
    found, rejected = discover_studies(settings, start_date, end_date)
    studies = [s for s in found if _in_shard(s.study_uid, shard_index, shard_count)]
    rejected = rejected if shard_index == 0 else []  # one shard reports them, not every shard
    ensure_gpu_limit()
    results: list[StudyResult] = []
    study_errors: dict[str, str] = {}
    chunks = split_night(studies, studies_per_chunk)
    in_flight: deque[tuple[list[StudyRef], PrefectFuture]] = deque()
    for i, chunk in enumerate(chunks):
        refs = list(chunk.studies)
        in_flight.append((refs, segment_chunk.submit(settings, sink_settings, refs, checkpoint, mode, batch_size,
                                                     dry_run, str(run_dir), ledger_file, fingerprint, code_version())))
        # Two chunks side by side: one fetches and decodes while the other drains, so the model is not idle
        # between chunks (its calls stay one at a time: the gpu slot, and one lock per model object).
        while in_flight and (len(in_flight) >= CHUNKS_IN_FLIGHT or i == len(chunks) - 1):
            finished, errors = _chunk_results(*in_flight.popleft())
            results += finished
            study_errors |= errors
    for uid, error in study_errors.items():
        logger.error("study %s failed: %s", uid, error)

    rows = [row for result in results for row in result.rows]
    tables = write_tables(rows, run_dir, "nightly") if rows else None
    rejected_table = write_rejected_table(rejected, run_dir, "nightly") if rejected else None
    summary = night_summary(results, rows, drained, time.perf_counter() - start, window, run_dir, dry_run,
                            rejected=rejected, study_errors=study_errors)
    create_markdown_artifact(key=SUMMARY_ARTIFACT, markdown=summary_markdown(summary),
                             description="Nightly run summary")
    if rows:
        create_table_artifact(key="sam2rad-nightly-studies", table=[dataclasses.asdict(s) for s in study_metrics(rows)],
                              description="Per-study metrics")
    logger.info(summary["headline"])
    table_paths = {k: str(v) for k, v in dataclasses.asdict(tables).items()} if tables else {}
    if rejected_table:
        table_paths["rejected_csv"] = str(rejected_table)
    summary = summary | {"tables": table_paths}
    if study_errors:  # tables and artifacts are written; the run still says it did not finish (no traceback)
        return Failed(message=summary["headline"], data=StudiesFailed(summary))
    return summary


if __name__ == "__main__":
    nightly()
