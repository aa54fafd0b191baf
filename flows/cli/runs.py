"""Commands that run the night's flows: the embedded demo, one nightly run, the Dice audit."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli.output import fail
from pipeline.audit.rows import DEFAULT_DICE_THRESHOLD


def demo(
    output: Path = typer.Option(Path("demo-output"), help="Folder for the demo archive, SEGs, tables and report."),
    keep: bool = typer.Option(False, help="Keep an existing demo archive and ledger (a re-run then stores nothing new)."),
) -> None:
    """The embedded demo: bundled ultrasound studies -> nightly flow -> Dice audit (no server, GPU or network)."""
    from flows.demo import run_demo

    result = run_demo(output, fresh=not keep)
    n, a = result.nightly, result.audit
    overall = a.get("summary") or {}
    typer.echo("\n=== Sam2Rad demo finished ===")
    typer.echo(n["headline"])
    typer.echo(f"SEGs (DICOM-SEG, one per source instance): {result.root / 'outbox'}")
    for name, path in n.get("tables", {}).items():
        typer.echo(f"  {name:<20} {path}")
    typer.echo(f"Dice audit: {a.get('n_matched')} SEGs vs reference labels, mean Dice "
               f"{overall.get('dice_mean', float('nan')):.3f}, "
               f"studies flagged (mean Dice under the audit threshold): {a.get('n_flagged_studies')}")
    typer.echo(f"Audit report: {a.get('report_html')}")


def run_nightly(
    inbox: Optional[str] = typer.Option(None, help="Folder source: the inbox of DICOM files (source-kind folder)."),
    outbox: Optional[str] = typer.Option(None, help="Folder sink: where SEGs are stored (source-kind folder)."),
    source_kind: str = typer.Option("folder", help="folder, dimse or dicomweb (PACS settings from SAM2RAD_* environment variables)."),
    start_date: Optional[str] = typer.Option(None, help="First StudyDate, YYYY-MM-DD (default: yesterday)."),
    end_date: Optional[str] = typer.Option(None, help="Last StudyDate, YYYY-MM-DD (default: start date)."),
    checkpoint: Optional[str] = typer.Option(None, help="PPN checkpoint (default: the shipped demo checkpoint)."),
    batch_size: int = typer.Option(4, help="Frames per model call (each call holds one 'gpu' concurrency slot)."),
    dry_run: bool = typer.Option(False, help="Segment but write, store and record nothing."),
    output_dir: str = typer.Option("runs", help="Where run folders (tables, SEG copies) and the ledger go."),
    ledger_path: Optional[str] = typer.Option(None, help="SQLite ledger (default: <output-dir>/ledger.sqlite)."),
    dispatch: str = typer.Option("local", help="local: this process runs the night, chunk by chunk. pool: split the "
                                 "night into chunks that free workers of the GPU work pool pull (needs PREFECT_API_URL "
                                 "and the sam2rad-chunk/chunk deployment; see deploy/README.md)."),
) -> None:
    """Run the nightly flow once, now (Prefect local mode unless PREFECT_API_URL is set).

    Exit status: 0 every instance found was segmented (or skipped as not an ultrasound image); 1 the
    night finished but some instances or studies failed (see the headline, the run tables and the
    rejected-files table); 2 a usage or configuration error (bad option, PACS settings) stopped it.
    """
    from flows.nightly import StudiesFailed, nightly

    if dispatch not in ("local", "pool"):
        fail(f"--dispatch must be local or pool, got {dispatch!r}")
    if dispatch == "pool":
        from flows.runtime import uses_prefect_server

        if not uses_prefect_server():
            fail("--dispatch pool needs a Prefect server (PREFECT_API_URL) with workers on the GPU pool")
        from flows.dispatch import dispatch_night as run_night
    else:
        run_night = nightly
    from flows.runtime import local_run_settings

    try:
        with local_run_settings():
            summary = run_night(inbox=inbox, outbox=outbox, source_kind=source_kind, start_date=start_date,
                                end_date=end_date, checkpoint=checkpoint, batch_size=batch_size,
                                dry_run=dry_run, output_dir=output_dir, ledger_path=ledger_path)
    except StudiesFailed as exc:  # data problems: the night finished, its summary says what failed
        summary = exc.summary
    except Exception as exc:  # noqa: BLE001 - the flow already logged the details
        fail(f"{type(exc).__name__}: {exc}")
    typer.echo(summary["headline"])
    typer.echo(f"run folder: {summary['run_dir']}")
    if summary["failed"] or summary.get("failed_studies"):
        raise typer.Exit(1)


def audit(
    seg_dir: str = typer.Argument(..., help="Folder of SEG files to audit."),
    reference_dir: str = typer.Argument(..., help="Reference labels: reference SEGs or <SOPInstanceUID>.npz masks."),
    output_dir: str = typer.Option("runs", help="Where the tables and the HTML report go (under audit/)."),
    threshold: float = typer.Option(DEFAULT_DICE_THRESHOLD, help="Studies with mean Dice below this are flagged."),
    source_dir: Optional[str] = typer.Option(None, help="Source images (for overlays in the report)."),
) -> None:
    """Dice audit of SEGs against reference labels: tables, flags and an HTML report."""
    from flows.audit import audit as audit_flow

    summary = audit_flow(seg_dir=seg_dir, reference_dir=reference_dir, output_dir=output_dir,
                         threshold=threshold, source_dir=source_dir)
    typer.echo(f"{summary['n_matched']} SEGs audited; studies flagged (mean Dice < {threshold:g}): "
               f"{summary['n_flagged_studies']}; "
               f"report {summary['report_html']}")
