"""The `sam2rad-dispatch` flow: a night split into chunks that free GPU workers pull.

discover -> split into chunks (a few studies each) -> one `sam2rad-chunk/chunk` flow run per chunk on
the GPU work pool -> watch them (a chunk whose worker died runs again elsewhere) -> the night read back
from the chunks' journals and the ledger -> tables, summary, artifact, as the nightly flow writes them.

The dispatcher holds no GPU and loads no model: run it where it cannot take a GPU worker's slot
(`python -m flows.dispatch serve` on the server host, see deploy/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import yaml
from prefect import flow, get_run_logger

from flows.chunk_watch import ChunkWatch, WatchLimits, WatchOutcome
from flows.chunks import CHUNK_DEPLOYMENT
from flows.night_setup import prepare_night, publish_night
from flows.night_tasks import discover_studies, drain_previous_failures
from pipeline.ledger import Ledger
from pipeline.night_chunks import NightChunk, NightRecords, night_records, read_attempts, split_night
from pipeline.night_summary import night_summary

REPO_ROOT = Path(__file__).resolve().parents[1]
# Larger than the in-process nightly's chunks: a pulled chunk pays a process start and a model load.
DEFAULT_STUDIES_PER_CHUNK = 16


def _lost_studies(chunks: list[NightChunk], outcome: WatchOutcome, records: NightRecords) -> dict[str, str]:
    """Studies of chunks that failed or were given up on, which no attempt finished."""
    finished = {r.study_uid for r in records.results}
    unsettled = {**outcome.failed, **outcome.lost}
    return {uid: f"chunk {c.chunk_id} {unsettled[c.chunk_id]}" for c in chunks if c.chunk_id in unsettled
            for uid in c.study_uids if uid not in finished and uid not in records.study_errors}


@flow(name="sam2rad-dispatch", log_prints=True)
def dispatch_night(inbox: str | None = None, outbox: str | None = None, source_kind: str = "folder",
                   start_date: str | None = None, end_date: str | None = None, checkpoint: str | None = None,
                   mode: str = "auto", batch_size: int = 4, dry_run: bool = False, output_dir: str = "runs",
                   ledger_path: str | None = None, sink_kind: str | None = None,
                   studies_per_chunk: int = DEFAULT_STUDIES_PER_CHUNK, instances_per_chunk: int | None = None,
                   chunk_deployment: str = CHUNK_DEPLOYMENT, max_resubmits: int = 2,
                   heartbeat_timeout_s: float = 450.0, pending_timeout_s: float = 900.0,
                   poll_s: float = 10.0) -> dict:
    """Segment the US studies of a date window (default: yesterday) on the GPU work pool, chunk by chunk.

    Parameters as for the nightly flow, plus: studies_per_chunk, instances_per_chunk (the unit a free
    worker pulls: each chunk costs a flow-run process, its imports and the model load, about 11 s on a
    2-core CPU host, so a chunk should hold minutes of device work); chunk_deployment; max_resubmits
    (how often a lost chunk runs again); heartbeat_timeout_s (a running chunk without a flow-run
    heartbeat for this long has lost its worker; keep it over twice the workers'
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY); pending_timeout_s; poll_s.
    """
    if mode != "auto":
        raise ValueError("the nightly flow runs without a reader: mode must be 'auto'")
    logger = get_run_logger()
    night = prepare_night(source_kind, inbox, outbox, sink_kind, start_date, end_date, output_dir, ledger_path)

    drained = 0 if dry_run else drain_previous_failures(night.sink_settings, night.ledger_file)
    found, rejected = discover_studies(night.settings, start_date, end_date)
    chunks = split_night(found, studies_per_chunk, instances_per_chunk)
    logger.info("%d studies in %d chunks of up to %d studies, to %s", len(found), len(chunks), studies_per_chunk,
                chunk_deployment)
    chunk_night = {"run_dir": str(night.run_dir), "ledger_path": night.ledger_file, "inbox": inbox,
                   "outbox": outbox, "source_kind": source_kind, "sink_kind": sink_kind, "checkpoint": checkpoint,
                   "mode": mode, "batch_size": batch_size, "dry_run": dry_run}
    watch = ChunkWatch(chunk_deployment, lambda chunk: {"chunk": dataclasses.asdict(chunk), **chunk_night},
                       WatchLimits(heartbeat_timeout_s, pending_timeout_s, max_resubmits, poll_s),
                       night.flow_run_id, logger)
    for chunk in chunks:  # all at once: the pool's queue holds the night, free workers take the next
        watch.submit(chunk)
    outcome = watch.watch()

    records = night_records(read_attempts(night.run_dir), None if dry_run else Ledger(night.ledger_file))
    study_errors = {**records.study_errors, **_lost_studies(chunks, outcome, records)}
    summary = night_summary(records.results, records.rows, drained, night.seconds(), night.window, night.run_dir,
                            dry_run, rejected=rejected, study_errors=study_errors)
    summary["chunks"] = {"count": len(chunks), "resubmitted": outcome.resubmitted, "lost": sorted(outcome.lost),
                         "failed": sorted(outcome.failed), "workers": records.workers}
    return publish_night(night, summary, records.rows, rejected,
                         description="Nightly run summary (chunks on the GPU work pool)",
                         detail=f"; {len(chunks)} chunks, {outcome.resubmitted} resubmitted, {len(outcome.lost)} lost")


def serve(prefect_file: Path, name: str) -> None:
    """Serve the dispatcher with the nightly deployment's schedule and parameters from prefect.yaml:
    one long-running process (no worker, no GPU) that starts each night's dispatch."""
    config = yaml.safe_load(prefect_file.read_text())
    nightly = next(d for d in config["deployments"] if d["name"] == "nightly")
    schedule = config["definitions"]["schedules"]["nightly"]
    from prefect.schedules import Cron

    dispatch_night.serve(name=name, schedules=[Cron(schedule["cron"], timezone=schedule["timezone"])],
                         parameters=nightly.get("parameters") or {}, tags=["sam2rad", "nightly", "dispatch"],
                         description="Nightly segmentation, chunks pulled by the GPU work pool's workers.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=serve.__doc__)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--prefect-file", type=Path, default=REPO_ROOT / "deploy" / "prefect.yaml")
    parser.add_argument("--name", default="nightly-pool")
    args = parser.parse_args()
    serve(args.prefect_file, args.name)
