"""The nightly flow: discover -> per study: fetch, segment, write SEG, store, ledger -> tables + artifact.

Tasks are thin: each calls one pipeline/sam2rad function. Retries only where I/O is transient (PACS
discovery, retrieval, store); bad input and out-of-memory are never retried.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext, get_run_context

from flows.runtime import default_device, ensure_gpu_limit, gpu_slot, load_model
from pipeline.ledger import Ledger
from pipeline.metrics import InstanceMetrics, RowStatus, study_metrics, write_tables
from pipeline.pacs import Delivery, Outbox, PacsError, PacsSettings, deliver, drain, open_archive
from pipeline.run import parse_window, process_study
from pipeline.seg import SegWriter
from pipeline.segment import model_card_for
from pipeline.studies import StudyRef

SUMMARY_ARTIFACT = "sam2rad-nightly-summary"


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
def discover_studies(settings: PacsSettings, start_date: str | None, end_date: str | None) -> list[StudyRef]:
    window = parse_window(start_date, end_date)
    studies = open_archive(settings).discover(window)
    get_run_logger().info("%d studies with US in %s", len(studies), window.dicom_range())
    return studies


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


def _study_cache_key(context: TaskRunContext, parameters: dict) -> str | None:
    """Cache a study under (study UID, model fingerprint, code version), but only while the ledger
    (the source of truth) has no unfinished instance of it for this model."""
    ref: StudyRef = parameters["ref"]
    fingerprint = parameters["model_fingerprint"]
    if parameters.get("dry_run"):
        return None
    status = Ledger(parameters["ledger_path"]).study_status(ref.study_uid, fingerprint)
    # Only a study the ledger knows and has finished may be skipped from the cache.
    if not status or any(n for s, n in status.items() if s not in ("done", "skipped")):
        return None
    key = f"{ref.study_uid}|{fingerprint}|{parameters['code_version']}|{parameters['ledger_path']}"
    return hashlib.sha256(key.encode()).hexdigest()


@task(name="segment-study", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient_io,
      cache_key_fn=_study_cache_key, persist_result=True, result_serializer="json")
def segment_study(settings: PacsSettings, sink_settings: PacsSettings, ref: StudyRef, checkpoint: str | None,
                  mode: str, batch_size: int, dry_run: bool, run_dir: str, ledger_path: str,
                  model_fingerprint: str, code_version: str) -> dict:
    """Fetch one study, segment what the ledger has not finished, write SEGs, store them."""
    model = load_model(checkpoint, default_device())
    card = model_card_for(model, mode)
    writer = SegWriter(card)
    ledger = Ledger(ledger_path)
    archive = open_archive(settings)
    sink = archive if sink_settings == settings else open_archive(sink_settings)
    seg_dir = Path(run_dir) / "segs" / ref.study_uid
    seg_dir.mkdir(parents=True, exist_ok=True)
    stored = kept = 0
    with tempfile.TemporaryDirectory(prefix="sam2rad-fetch-") as staging:
        fetched = archive.fetch(ref, Path(staging))

        outbox = Outbox(sink_settings.store_outbox)

        def record(row: InstanceMetrics, seg) -> None:
            nonlocal stored, kept
            if dry_run or row.sop_uid is None:
                return
            ledger.mark_started(row.sop_uid, card.fingerprint, study_uid=ref.study_uid)
            if seg is None:
                if row.status == RowStatus.SKIPPED.value:
                    ledger.mark_skipped(row.sop_uid, card.fingerprint, row.error or "skipped")
                else:
                    ledger.mark_failed(row.sop_uid, card.fingerprint, row.error or "failed")
                return
            result = deliver(seg.path, sink, outbox, ledger=ledger, source_sop_uid=row.sop_uid,
                             fingerprint=card.fingerprint, policy=sink_settings.retry_policy())
            stored += result.delivery is Delivery.STORED
            kept += result.delivery is Delivery.KEPT

        outcome = process_study(fetched, model, writer, seg_dir, mode, batch_size, dry_run,
                                # todo() also settles SEGs waiting in the outbox: no re-segmenting while the PACS is down.
                                is_done=lambda sop: not ledger.todo([sop], card.fingerprint),
                                on_result=record, batch_guard=gpu_slot)
    return {
        "study_uid": ref.study_uid,
        "rows": [asdict(r) for r in outcome.rows],
        "segs": [str(s.path) for s in outcome.segs],
        "already_done": outcome.already_done,
        "stored": stored,
        "kept_in_outbox": kept,
        "frames": outcome.frames,
        "seconds": outcome.seconds,
    }


def _in_shard(study_uid: str, shard_index: int, shard_count: int) -> bool:
    return int(hashlib.sha256(study_uid.encode()).hexdigest(), 16) % shard_count == shard_index


@flow(name="sam2rad-nightly", log_prints=True)
def nightly(inbox: str | None = None, outbox: str | None = None, source_kind: str = "folder",
            start_date: str | None = None, end_date: str | None = None, checkpoint: str | None = None,
            mode: str = "auto", batch_size: int = 4, dry_run: bool = False, output_dir: str = "runs",
            ledger_path: str | None = None, shard_index: int = 0, shard_count: int = 1,
            sink_kind: str | None = None) -> dict:
    """Segment the US studies of a date window (default: yesterday) and put DICOM-SEG back.

    inbox/outbox: folder archive (source_kind="folder"); DIMSE/DICOMweb addresses come from the
    environment (SAM2RAD_PACS_*, SAM2RAD_DICOMWEB_*). checkpoint: PPN checkpoint, default the shipped
    demo model. shard_index/shard_count split one night across several flow runs (one per worker).
    sink_kind: where SEGs go when that differs from the source (e.g. read a VNA folder, store to PACS).
    """
    if mode != "auto":
        raise ValueError("the nightly flow runs without a reader: mode must be 'auto'")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} outside 0..{shard_count - 1}")
    logger = get_run_logger()
    start = time.perf_counter()
    out = Path(output_dir).resolve()
    settings = _settings(source_kind, inbox, outbox, out)
    sink_settings = settings if not sink_kind or sink_kind == source_kind else settings.replace(kind=sink_kind)
    window = parse_window(start_date, end_date)
    run_id = str(get_run_context().flow_run.id)[:8]
    run_dir = out / f"nightly-{window.start:%Y%m%d}-{window.end:%Y%m%d}-{run_id}"
    ledger_file = str(Path(ledger_path).resolve() if ledger_path else out / "ledger.sqlite")
    Ledger(ledger_file)  # create it (and fail early if the path is unusable)

    model = load_model(checkpoint, default_device())  # once per worker process
    card = model_card_for(model, mode)
    from sam2rad.checkpoint import code_version

    drained = 0 if dry_run else drain_previous_failures(sink_settings, ledger_file)
    studies = [s for s in discover_studies(settings, start_date, end_date)
               if _in_shard(s.study_uid, shard_index, shard_count)]
    ensure_gpu_limit()
    results, study_errors = [], {}
    for ref in studies:
        state = segment_study(settings, sink_settings, ref, checkpoint, mode, batch_size, dry_run,
                              str(run_dir), ledger_file, card.fingerprint, code_version(), return_state=True)
        try:
            result = state.result()
        except Exception as exc:  # noqa: BLE001 - one study's trouble must not end the night
            study_errors[ref.study_uid] = f"{type(exc).__name__}: {exc}"
            logger.error("study %s failed: %s", ref.study_uid, study_errors[ref.study_uid])
            continue
        results.append(result | {"from_cache": state.name == "Cached"})

    rows = [InstanceMetrics(**r) for res in results for r in res["rows"]]
    tables = write_tables(rows, run_dir, "nightly") if rows else None
    summary = _summary(results, rows, drained, time.perf_counter() - start, window, run_dir, dry_run)
    summary["study_errors"] = study_errors
    _artifacts(summary, rows)
    logger.info(summary["headline"])
    if study_errors:  # tables and artifacts are written; the run still says it did not finish
        raise RuntimeError(f"{len(study_errors)} of {len(studies)} studies failed: {study_errors}")
    return summary | {"tables": {k: str(v) for k, v in asdict(tables).items()} if tables else {}}


def _summary(results: list[dict], rows: list[InstanceMetrics], drained: int, seconds: float, window, run_dir: Path,
             dry_run: bool) -> dict:
    ok = [r for r in rows if r.status == RowStatus.OK.value]
    failed = [r for r in rows if r.status == RowStatus.FAILED.value]
    skipped = [r for r in rows if r.status == RowStatus.SKIPPED.value]
    frames = sum(res["frames"] for res in results)
    seg_seconds = sum(res["seconds"] for res in results)
    stored = sum(res["stored"] for res in results)
    done_before = sum(res["already_done"] for res in results)
    cached = sum(1 for res in results if res["from_cache"])
    headline = (f"{len(results)} studies, {len(ok)} instances segmented, {len(failed)} failed, {len(skipped)} "
                f"skipped; {stored} SEGs stored new, {drained} from earlier outbox"
                + (f"; nothing new to store ({done_before} instances already done)" if stored == 0 and not dry_run else "")
                + (" [dry run: nothing written]" if dry_run else ""))
    return {
        "headline": headline, "window": window.dicom_range(), "run_dir": str(run_dir),
        "studies": len(results), "instances": len(rows), "succeeded": len(ok), "failed": len(failed),
        "skipped": len(skipped), "already_done": done_before, "stored": stored,
        "kept_in_outbox": sum(res["kept_in_outbox"] for res in results), "drained": drained,
        "studies_from_cache": cached, "frames": frames, "seconds": round(seconds, 1),
        "images_per_second": round(frames / seg_seconds, 3) if seg_seconds else 0.0,
        "failures": [{"sop_uid": r.sop_uid, "code": r.error_code, "reason": r.error} for r in failed],
        "seg_files": [p for res in results for p in res["segs"]],
    }


def _artifacts(summary: dict, rows: list[InstanceMetrics]) -> None:
    lines = [f"# Sam2Rad nightly {summary['window']}", "", summary["headline"], "",
             "| studies | instances | succeeded | failed | skipped | already done | stored | runtime (s) | images/s |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {summary['studies']} | {summary['instances']} | {summary['succeeded']} | {summary['failed']} | "
             f"{summary['skipped']} | {summary['already_done']} | {summary['stored']} | {summary['seconds']} | "
             f"{summary['images_per_second']} |", ""]
    if summary["failures"]:
        lines += ["## Failures", "", "| SOP Instance UID | code | reason |", "|---|---|---|"]
        lines += [f"| {f['sop_uid']} | {f['code']} | {str(f['reason']).replace('|', '/')[:200]} |"
                  for f in summary["failures"]]
    if summary.get("study_errors"):
        lines += ["", "## Studies that could not be processed", "", "| Study Instance UID | error |", "|---|---|"]
        lines += [f"| {uid} | {str(err).replace('|', '/')[:200]} |" for uid, err in summary["study_errors"].items()]
    lines += ["", f"{summary['studies_from_cache']} studies skipped from the cache (finished on an earlier night).",
              "", f"Tables and SEGs: `{summary['run_dir']}`"]
    create_markdown_artifact(key=SUMMARY_ARTIFACT, markdown="\n".join(lines), description="Nightly run summary")
    if rows:
        studies = [asdict(s) for s in study_metrics(rows)]
        create_table_artifact(key="sam2rad-nightly-studies", table=studies, description="Per-study metrics")


if __name__ == "__main__":
    nightly()
