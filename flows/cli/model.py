"""Model commands: few-shot PPN training and evaluation (sam2rad code; data specs via pipeline)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flows.cli.output import fail


def train(
    data: str = typer.Option("synthetic:10", help="Training data: synthetic:N[:SEED[:SIZE]] (generator A), rfsim:N[:SEED] (generator B), zsim:N[:SEED] (generator C), an imgs/gts PNG folder, NPZ file(s), dicom:IMAGES_DIR:REFERENCE_SEG_DIR, or reviewed:RUNS_DIR (accepted reviews)."),
    val_data: Optional[str] = typer.Option(None, help="Validation data (same forms); the best epoch on it is kept."),
    val_fraction: Optional[float] = typer.Option(None, help="Fraction of --data held out to pick the best epoch. Default: none for 20 or fewer images (all train, fixed schedule, final weights), else 0.2."),
    out: Path = typer.Option(Path("checkpoints/sam2rad_ppn.safetensors"), help="Checkpoint to write (a .json model card goes beside it)."),
    config: Optional[Path] = typer.Option(None, help="JSON or YAML file with TrainConfig fields; flags below override it."),
    backbone: Optional[str] = typer.Option(None, help="litemedsam (default) or sam2[.1]_hiera_{t,s,b+,l}."),
    backbone_checkpoint: Optional[str] = typer.Option(None, help="Local weights for SAM2 backbones (never downloaded)."),
    input_size: Optional[int] = typer.Option(None, help="SAM2 input size: 512 or 1024."),
    init: Optional[str] = typer.Option(None, help="Starting weights: auto (default: the shipped PPN and refiner pretrained on 600 generated images, where they fit the backbone and classes; else random), pretrained (that, or an error), none (random), or a checkpoint path to fine-tune."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (one pass over the training images each). Default: 70 when training starts from trained weights (the shipped start or a checkpoint), 100 from random weights."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (cosine schedule with warm-up). Default: 3e-4 when training starts from trained weights (the shipped start or a checkpoint), 1e-3 from random weights."),
    start_share: Optional[float] = typer.Option(None, help="The final weights lie this share of the way back to the trained start (weight-space ensembling: what the start knew about other images is partly kept). Default: 0.2 for 20 or fewer images from trained weights, else 0; 0 keeps the trained weights as they are."),
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

    from pipeline.training_data import load_data_spec
    from sam2rad.checkpoint import save_checkpoint
    from sam2rad.config_file import train_config_from
    from sam2rad.train import Trainer, training_summary
    from sam2rad.training_plan import plan_training

    torch.set_num_threads(threads)
    flags = dict(backbone=backbone, backbone_checkpoint=backbone_checkpoint, input_size=input_size, init=init, epochs=epochs,
                 lr=lr, start_share=start_share, batch_size=batch_size, augment_copies=augment_copies, val_every=val_every, cache=cache,
                 cache_dir=cache_dir, seed=seed)
    try:
        cfg = train_config_from(config, flags)
        samples, source = load_data_spec(data)
        plan = plan_training(samples, load_data_spec(val_data)[0] if val_data else None, val_fraction, cfg.seed)
    except ValueError as exc:
        fail(str(exc))
    train_set, val_set = plan.train, plan.val
    refiner = "with the mask refiner" if cfg.refiner.enabled else "without a refiner"
    try:
        trainer = Trainer(cfg, device=device)  # settles the schedule's length and rate by the start
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"training PPN on {cfg.backbone} {refiner}, {trainer.cfg.epochs} epochs ({source}): {plan.note}")
    typer.echo(f"starting weights: {trainer.init_note}; learning rate {trainer.cfg.lr:g}")
    result = trainer.fit(train_set, val_set)
    summary = training_summary(train_set, val_set, trainer.cfg, result, source) | {"plan": plan.note}
    card = save_checkpoint(result.model, out, summary,
                           {"best_val_dice_auto": result.best_val_dice} if val_set else {})
    if val_set:
        before = " (before the blend with the start)" if trainer.cfg.start_share else ""
        typer.echo(f"best validation Dice (auto) {result.best_val_dice:.3f}{before} at epoch {result.best_epoch}; "
                   f"{result.seconds:.0f} s; {result.encodings} encoder passes")
    else:
        share = trainer.cfg.start_share
        kept = f"final weights moved {share:g} of the way back to the start (--start-share)" if share else "final weights kept"
        typer.echo(f"trained {result.best_epoch} epochs on all {len(train_set)} images, {kept}; "
                   f"{result.seconds:.0f} s; {result.encodings} encoder passes")
    typer.echo(f"wrote {out} (+ {out.with_suffix('.json').name}), backbone {card.backbone_fingerprint}")


def evaluate(
    checkpoint: Optional[Path] = typer.Option(None, help="PPN checkpoint (default: the shipped demo checkpoint)."),
    data: str = typer.Option("synthetic:50:7", help="Test data: synthetic:N[:SEED[:SIZE]] (generator A), rfsim:N[:SEED] (generator B), zsim:N[:SEED] (generator C), an imgs/gts folder, NPZ file(s), or dicom:IMAGES_DIR:REFERENCE_SEG_DIR."),
    modes: str = typer.Option("auto,manual_gt_box,semi_click", help="Comma list of auto, manual_gt_box (zero-shot baseline), semi_click (simulated reader clicks)."),
    clicks: int = typer.Option(1, min=1, max=50, help="semi_click: successive simulated clicks, each on the largest error region of the current prediction; one row per click count, NoC@85/NoC@90 in the summary."),
    reader: str = typer.Option("tools", help="semi_click's simulated reader: 'tools' makes a click an end click (the surface ends here) when the error is the surface running on past the true end or stopping short of it, a whole-surface (shift) click (the nearest edge goes to the click, the other edge with it) when both edges are off by the same typical amount the same way, an edge click (moves that edge of the whole surface to the click) when the edge is off by a row or more along at least half of the surface (clicked on the true edge where it is off by its typical amount), a point click otherwise; a region clicked before that did not change is passed over for the next largest; each click edits the mask the clicks before it made; 'points' makes every click a point click."),
    out_dir: Path = typer.Option(Path("runs/evaluate"), help="Where per-image and summary CSVs go."),
    backbone_checkpoint: Optional[str] = typer.Option(None, help="Local weights for SAM2 backbones."),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="auto and semi_click: also decode the mirrored image and average (2x encoder)."),
    hold: bool = typer.Option(True, "--hold/--no-hold", help="semi_click: a point click the decoder did not follow moves the nearest edge to it locally, so the clicked pixel ends up the way the reader said (--no-hold: point clicks take the decoder's answer only)."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
) -> None:
    """Per-image Dice, IoU, HD95 and ASSD (mm when spacing is known) for auto vs the box-prompted baseline."""
    import torch

    from pipeline.training_data import load_data_spec
    from sam2rad.checkpoint import CheckpointError, load_checkpoint
    from sam2rad.evaluate import (click_statistics, evaluate_model, format_click_statistics, format_table,
                                  summarise, write_csv)

    torch.set_num_threads(threads)
    try:
        model = load_checkpoint(checkpoint, backbone_checkpoint=backbone_checkpoint)
        model.flip_test_time = flip
        if not hold:
            model.hold_window_px = None
        samples, source = load_data_spec(data)
        rows = evaluate_model(model, samples, [m.strip() for m in modes.split(",") if m.strip()], progress=True,
                              clicks=clicks, reader=reader)
    except (ValueError, CheckpointError) as exc:
        fail(str(exc))
    summary = summarise(rows)
    stats = click_statistics(rows)
    for line in summary:  # the interactive figures ride along on every summary row (one CSV)
        line.update({k: v for k, v in stats.items() if k.startswith("noc")})
    write_csv(rows, out_dir / "per_image.csv")
    write_csv(summary, out_dir / "summary.csv")
    clicks_line = f"\n{format_click_statistics(stats)} (reader: {reader}{'' if hold else ', no hold'})" if stats else ""
    typer.echo(f"{source}\n{format_table(summary)}{clicks_line}\nCSV: {out_dir / 'per_image.csv'}, {out_dir / 'summary.csv'}")
