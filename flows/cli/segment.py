"""One-off segmentation: DICOM in, DICOM-SEG out, without Prefect, PACS or ledger."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli.output import fail


def segment(
    files: list[Path] = typer.Argument(..., help="DICOM files or folders (ultrasound instances)."),
    out: Path = typer.Option(Path("segs"), help="Folder for the SEG files."),
    checkpoint: Optional[str] = typer.Option(None, help="PPN checkpoint (default: the shipped demo checkpoint)."),
    labelmap: bool = typer.Option(False, help="Write a LABELMAP SEG instead of BINARY."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """One-off: DICOM in, DICOM-SEG out (no Prefect, no PACS, no ledger).

    Exit status: 0 every ultrasound image got a SEG (other objects, e.g. SR or CT, are skipped); 1 some
    inputs failed (unreadable, truncated, undecodable: each is listed with its reason) while the others
    got their SEGs; 2 a usage error (no such path, nothing to segment).
    """
    import torch

    from pipeline.ingest import ingest
    from pipeline.seg import SegWriter
    from pipeline.inference import seg_algorithm_for, segment_instance
    from sam2rad.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    try:
        result = ingest(files)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: a bad SAM2RAD_MAX_DECODED_BYTES
        fail(str(exc))
    failed = 0
    for issue in result.issues:
        failed += issue.kind.value == "failed"
        typer.echo(f"{issue.kind.value} {issue.path}: {issue.code.value}: {issue.reason}")
    if not result.instances:
        fail("no ultrasound image instances to segment")
    model = load_checkpoint(checkpoint)
    writer = SegWriter(seg_algorithm_for(model), segmentation_type="LABELMAP" if labelmap else "BINARY")
    for inst in result.instances:
        outcome = segment_instance(inst, model, writer, out)
        if outcome.seg:
            typer.echo(f"{inst.path} -> {outcome.seg.path} ({outcome.n_frames} frames)")
            for warning in inst.warnings:  # e.g. a JPEG 2000 codestream at odds with the header
                typer.echo(f"{inst.path}: warning: {warning}", err=True)
        else:
            failed += 1
            typer.echo(f"{inst.path}: failed: {outcome.row.error}", err=True)
    raise typer.Exit(1 if failed else 0)
