"""`sam2rad` command line: demo, nightly run, audit, one-off segmentation, training and evaluation.

Heavy imports happen inside each command so `sam2rad --help` is instant and `sam2rad train` never
loads Prefect or DICOM libraries.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary server migrates its database on first start: slow on 2 cores, so wait longer.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Sam2Rad Pipeline: autonomous ultrasound bone segmentation -> DICOM-SEG -> PACS.")


def _load_data(spec: str):
    """A data spec -> (samples, description); dicom:IMAGES:SEGS pairs archive images with reference SEGs."""
    if spec.startswith("dicom:"):
        parts = spec.split(":")
        if len(parts) != 3:
            raise ValueError(f"bad dicom spec {spec!r}; use dicom:IMAGES_DIR:REFERENCE_SEG_DIR")
        from pipeline.training_data import samples_from_dicom

        return samples_from_dicom([parts[1]], [parts[2]]), f"DICOM {parts[1]} + SEG {parts[2]}"
    from sam2rad.data.specs import load_spec

    return load_spec(spec)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
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


@app.command("run-nightly")
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
) -> None:
    """Run the nightly flow once, now, in this process (Prefect local mode unless PREFECT_API_URL is set)."""
    from flows.nightly import nightly

    try:
        summary = nightly(inbox=inbox, outbox=outbox, source_kind=source_kind, start_date=start_date,
                          end_date=end_date, checkpoint=checkpoint, batch_size=batch_size, dry_run=dry_run,
                          output_dir=output_dir, ledger_path=ledger_path)
    except Exception as exc:  # noqa: BLE001 - the flow already logged the details
        _fail(f"{type(exc).__name__}: {exc}")
    typer.echo(summary["headline"])
    typer.echo(f"run folder: {summary['run_dir']}")
    if summary["failed"]:
        raise typer.Exit(1)


@app.command()
def audit(
    seg_dir: str = typer.Argument(..., help="Folder of SEG files to audit."),
    reference_dir: str = typer.Argument(..., help="Reference labels: reference SEGs or <SOPInstanceUID>.npz masks."),
    output_dir: str = typer.Option("runs", help="Where the tables and the HTML report go (under audit/)."),
    threshold: float = typer.Option(0.7, help="Studies with mean Dice below this are flagged."),
    source_dir: Optional[str] = typer.Option(None, help="Source images (for overlays in the report)."),
) -> None:
    """Dice audit of SEGs against reference labels: tables, flags and an HTML report."""
    from flows.audit import audit as audit_flow

    summary = audit_flow(seg_dir=seg_dir, reference_dir=reference_dir, output_dir=output_dir,
                         threshold=threshold, source_dir=source_dir)
    typer.echo(f"{summary['n_matched']} SEGs audited; studies flagged (mean Dice < {threshold:g}): "
               f"{summary['n_flagged_studies']}; "
               f"report {summary['report_html']}")


@app.command()
def segment(
    files: list[Path] = typer.Argument(..., help="DICOM files or folders (ultrasound instances)."),
    out: Path = typer.Option(Path("segs"), help="Folder for the SEG files."),
    checkpoint: Optional[str] = typer.Option(None, help="PPN checkpoint (default: the shipped demo checkpoint)."),
    labelmap: bool = typer.Option(False, help="Write a LABELMAP SEG instead of BINARY."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """One-off: DICOM in, DICOM-SEG out (no Prefect, no PACS, no ledger)."""
    import torch

    from pipeline.ingest import ingest
    from pipeline.seg import SegWriter
    from pipeline.segment import model_card_for, segment_instance
    from sam2rad.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    try:
        result = ingest(files)
    except FileNotFoundError as exc:
        _fail(str(exc))
    for issue in result.issues:
        typer.echo(f"skipped {issue.path}: {issue.code.value}: {issue.reason}")
    if not result.instances:
        _fail("no ultrasound image instances to segment")
    model = load_checkpoint(checkpoint)
    writer = SegWriter(model_card_for(model), segmentation_type="LABELMAP" if labelmap else "BINARY")
    failed = 0
    for inst in result.instances:
        outcome = segment_instance(inst, model, writer, out)
        if outcome.seg:
            typer.echo(f"{inst.path} -> {outcome.seg.path} ({outcome.n_frames} frames)")
        else:
            failed += 1
            typer.echo(f"{inst.path}: failed: {outcome.row.error}", err=True)
    raise typer.Exit(1 if failed else 0)


@app.command()
def train(
    data: str = typer.Option("synthetic:10", help="Training data: synthetic:N[:SEED[:SIZE]], an imgs/gts PNG folder, NPZ file(s), or dicom:IMAGES_DIR:REFERENCE_SEG_DIR."),
    val_data: Optional[str] = typer.Option(None, help="Validation data (same forms). Default: --val-fraction of --data."),
    val_fraction: float = typer.Option(0.2, help="Fraction of --data held out for validation when --val-data is not given."),
    out: Path = typer.Option(Path("checkpoints/sam2rad_ppn.safetensors"), help="Checkpoint to write (a .json model card goes beside it)."),
    config: Optional[Path] = typer.Option(None, help="JSON or YAML file with TrainConfig fields; flags below override it."),
    backbone: Optional[str] = typer.Option(None, help="litemedsam (default) or sam2[.1]_hiera_{t,s,b+,l}."),
    backbone_checkpoint: Optional[str] = typer.Option(None, help="Local weights for SAM2 backbones (never downloaded)."),
    input_size: Optional[int] = typer.Option(None, help="SAM2 input size: 512 or 1024."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (one pass over the training images each)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (cosine schedule with warm-up)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per optimiser step."),
    augment_copies: Optional[int] = typer.Option(None, help="Encoded versions of each training image (augmentations cached)."),
    val_every: Optional[int] = typer.Option(None, help="Validate every K epochs; the best checkpoint is kept."),
    cache: Optional[str] = typer.Option(None, help="Feature cache: memory, disk or none."),
    cache_dir: Optional[str] = typer.Option(None, help="Folder for cache=disk."),
    seed: Optional[int] = typer.Option(None, help="Random seed (data order, augmentation, initialisation)."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
) -> None:
    """Train the Prompt Predictor Network on a frozen backbone (few-shot: 10 labelled images suffice)."""
    import torch

    from sam2rad.checkpoint import save_checkpoint
    from sam2rad.data.datasets import InMemoryDataset, train_val_split
    from sam2rad.train import Trainer, TrainConfig, training_summary

    torch.set_num_threads(threads)
    base: dict = {}
    if config:
        text = config.read_text()
        if config.suffix in (".yaml", ".yml"):
            import yaml

            base = yaml.safe_load(text) or {}
        else:
            base = json.loads(text)
    flags = dict(backbone=backbone, backbone_checkpoint=backbone_checkpoint, input_size=input_size, epochs=epochs,
                 lr=lr, batch_size=batch_size, augment_copies=augment_copies, val_every=val_every, cache=cache,
                 cache_dir=cache_dir, seed=seed)
    base.update({k: v for k, v in flags.items() if v is not None})
    try:
        cfg = TrainConfig.from_dict(base)
        samples, source = _load_data(data)
        if val_data:
            train_set, val_set = samples, _load_data(val_data)[0]
        else:
            tr, va = train_val_split(InMemoryDataset(samples), val_fraction, seed=cfg.seed)
            train_set, val_set = list(tr), list(va)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"training PPN on {cfg.backbone}: {len(train_set)} train / {len(val_set)} val images ({source})")
    result = Trainer(cfg, device=device).fit(train_set, val_set)
    card = save_checkpoint(result.model, out, training_summary(train_set, val_set, cfg, result, source),
                           {"best_val_dice_auto": result.best_val_dice})
    typer.echo(f"best validation Dice (auto) {result.best_val_dice:.3f} at epoch {result.best_epoch}; "
               f"{result.seconds:.0f} s; {result.encodings} encoder passes")
    typer.echo(f"wrote {out} (+ {out.with_suffix('.json').name}), backbone {card.backbone_fingerprint}")


@app.command()
def evaluate(
    checkpoint: Optional[Path] = typer.Option(None, help="PPN checkpoint (default: the shipped demo checkpoint)."),
    data: str = typer.Option("synthetic:50:7", help="Test data: synthetic:N[:SEED[:SIZE]], an imgs/gts folder, NPZ file(s), or dicom:IMAGES_DIR:REFERENCE_SEG_DIR."),
    modes: str = typer.Option("auto,manual_gt_box,semi_click", help="Comma list of auto, manual_gt_box (zero-shot baseline), semi_click (one simulated click)."),
    out_dir: Path = typer.Option(Path("runs/evaluate"), help="Where per-image and summary CSVs go."),
    backbone_checkpoint: Optional[str] = typer.Option(None, help="Local weights for SAM2 backbones."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """Per-image Dice, IoU, HD95 and ASSD (mm when spacing is known) for auto vs the box-prompted baseline."""
    import torch

    from sam2rad.checkpoint import CheckpointError, load_checkpoint
    from sam2rad.evaluate import evaluate_model, format_table, summarise, write_csv

    torch.set_num_threads(threads)
    try:
        model = load_checkpoint(checkpoint, backbone_checkpoint=backbone_checkpoint)
        samples, source = _load_data(data)
        rows = evaluate_model(model, samples, [m.strip() for m in modes.split(",") if m.strip()], progress=True)
    except (ValueError, CheckpointError) as exc:
        _fail(str(exc))
    summary = summarise(rows)
    write_csv(rows, out_dir / "per_image.csv")
    write_csv(summary, out_dir / "summary.csv")
    typer.echo(f"{source}\n{format_table(summary)}\nCSV: {out_dir / 'per_image.csv'}, {out_dir / 'summary.csv'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
