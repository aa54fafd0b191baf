"""The tasks both ways of running a night share (in process: flows/nightly.py; chunks on the GPU work
pool: flows/dispatch.py), and how a night that lost studies ends.

Retries only where PACS I/O is transient; bad input and configuration errors are never retried.
"""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.ledger import Ledger
from pipeline.pacs import Outbox, PacsError, PacsSettings, drain, open_archive
from pipeline.studies import RejectedFile, StudyRef, parse_window

SUMMARY_ARTIFACT = "sam2rad-nightly-summary"
STUDIES_ARTIFACT = "sam2rad-nightly-studies"


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
