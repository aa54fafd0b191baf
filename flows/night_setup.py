"""How a night starts and how it ends, the same whether it runs in process (flows/nightly.py) or as
chunks on the GPU work pool (flows/dispatch.py).

`prepare_night` settles everything a night needs before its first study, and fails at the start on
what would otherwise fail every study (a bad date window, a bad decode budget, an unusable ledger
path). `publish_night` writes the run tables and the artifacts and gives the flow its return value.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.objects import State
from prefect.context import get_run_context
from prefect.states import Failed

from flows.night_tasks import STUDIES_ARTIFACT, SUMMARY_ARTIFACT, StudiesFailed
from pipeline.ledger import Ledger
from pipeline.night_summary import summary_markdown
from pipeline.pacs import PacsSettings
from pipeline.run_tables import InstanceMetrics, study_metrics, write_rejected_table, write_tables
from pipeline.staging import sweep_stale_staging
from pipeline.studies import DateWindow, RejectedFile, parse_window
from pipeline.us_records import IngestLimits


@dataclass(frozen=True)
class NightSetup:
    """One night's settings and places, fixed before its first study."""

    settings: PacsSettings  # where the studies come from
    sink_settings: PacsSettings  # where the SEGs go
    window: DateWindow
    output_dir: Path  # run folders, the default ledger, staging
    run_dir: Path  # this night's tables (and, for chunks, their journals)
    ledger_file: str
    flow_run_id: str
    started: float  # time.perf_counter() at the start, for the summary's seconds

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def pacs_settings(source_kind: str, inbox: str | None, outbox: str | None, output_dir: Path) -> PacsSettings:
    """The archive's settings: the environment's (SAM2RAD_PACS_*, SAM2RAD_DICOMWEB_*), with the flow's
    source kind and folders."""
    changes: dict = {"kind": source_kind}
    if "SAM2RAD_STORE_OUTBOX" not in os.environ:  # SEGs waiting for a store live beside the run folders
        changes["store_outbox"] = output_dir / "store-outbox"
    if inbox:
        changes["inbox"] = Path(inbox)
    if outbox:
        changes["outbox"] = Path(outbox)
    return PacsSettings.from_env().replace(**changes)


def sink_settings_for(settings: PacsSettings, source_kind: str, sink_kind: str | None) -> PacsSettings:
    """The source's settings, unless the SEGs go to another kind of archive (read a VNA folder, store to PACS)."""
    return settings if not sink_kind or sink_kind == source_kind else settings.replace(kind=sink_kind)


def prepare_night(source_kind: str, inbox: str | None, outbox: str | None, sink_kind: str | None,
                  start_date: str | None, end_date: str | None, output_dir: str,
                  ledger_path: str | None) -> NightSetup:
    """Settings, window, run folder and ledger of the night the current flow run processes; removes the
    staging folders a killed run left behind."""
    started = time.perf_counter()
    out = Path(output_dir).resolve()
    settings = pacs_settings(source_kind, inbox, outbox, out)
    window = parse_window(start_date, end_date)
    IngestLimits().decoded_bytes_budget()  # a bad SAM2RAD_MAX_DECODED_BYTES fails the start, not each study
    flow_run_id = str(get_run_context().flow_run.id)
    run_dir = out / f"nightly-{window.start:%Y%m%d}-{window.end:%Y%m%d}-{flow_run_id[:8]}"
    ledger_file = str(Path(ledger_path).resolve() if ledger_path else out / "ledger.sqlite")
    Ledger(ledger_file)  # create it (and fail early if the path is unusable)
    swept = sweep_stale_staging(out)  # source DICOM a killed run left behind
    if swept:
        get_run_logger().warning("removed %d staging folder(s) a killed run left under %s", swept,
                                 out / "staging")
    return NightSetup(settings=settings, sink_settings=sink_settings_for(settings, source_kind, sink_kind),
                      window=window, output_dir=out, run_dir=run_dir, ledger_file=ledger_file,
                      flow_run_id=flow_run_id, started=started)


def publish_night(night: NightSetup, summary: dict, rows: list[InstanceMetrics], rejected: list[RejectedFile],
                  description: str = "Nightly run summary", detail: str = "") -> dict | State:
    """Run tables, the summary and per-study artifacts, then the flow's return value: the summary with its
    table paths, or a Failed state carrying StudiesFailed when studies failed (the tables are written
    either way; the run says it did not finish, without a traceback). `detail` follows the logged headline."""
    tables = write_tables(rows, night.run_dir, "nightly") if rows else None
    rejected_table = write_rejected_table(rejected, night.run_dir, "nightly") if rejected else None
    create_markdown_artifact(key=SUMMARY_ARTIFACT, markdown=summary_markdown(summary), description=description)
    if rows:
        create_table_artifact(key=STUDIES_ARTIFACT, table=[dataclasses.asdict(s) for s in study_metrics(rows)],
                              description="Per-study metrics")
    get_run_logger().info("%s%s", summary["headline"], detail)
    table_paths = {k: str(v) for k, v in dataclasses.asdict(tables).items()} if tables else {}
    if rejected_table:
        table_paths["rejected_csv"] = str(rejected_table)
    summary = summary | {"tables": table_paths}
    if summary["study_errors"]:
        return Failed(message=summary["headline"], data=StudiesFailed(summary))
    return summary
