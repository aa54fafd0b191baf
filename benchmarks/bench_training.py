"""10-shot PPN training on 2 CPU threads: with vs without the frozen-encoder feature cache, then
held-out Dice/HD95 for auto, manual with the ground-truth box (zero-shot baseline), semi + one click.

Both runs draw the same (image, augmentation) per step and validate on the same images every
--val-every epochs; without the cache every step re-encodes its images, and so does every validation
(finding the best epoch needs validation, and only a cache spares its re-encoding). The uncached run
is measured for --uncached-epochs epochs (at least one validation) and its time to the cached run's
best epoch is projected: its first epoch as measured (one-off warm-up included), each later epoch at
their mean cost, each validation at its measured extra cost (--uncached-epochs 0 runs it fully).
Defaults are the training recipe's (`sam2rad train` on 10 images). The goal: < 5 min on 2 CPU threads.
Usage: .venv/bin/python benchmarks/bench_training.py [--epochs N] [--threads 2] [--device cpu] [--uncached-epochs 0]
       [--denormals-ab]   (the recipe flushes float denormals on a CPU; this also times it without)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sam2rad.data.specs import load_spec
from sam2rad.evaluate import evaluate_model, format_table, summarise
from sam2rad.train import TrainConfig, Trainer


def project_uncached(history: list[dict], best_epoch: int, val_every: int) -> tuple[float, float]:
    """Seconds an uncached run takes to `best_epoch`: its first epoch as measured (one-off warm-up
    included), then the mean later training epoch, plus each validation at its measured extra cost."""
    t = [h["seconds"] for h in history]
    steps = [(h, b - a) for h, a, b in zip(history[1:], t, t[1:])]
    plain = [d for h, d in steps if "val_dice" not in h]
    with_val = [d for h, d in steps if "val_dice" in h]
    per_epoch = float(np.mean(plain)) if plain else float(np.mean(with_val))
    val_extra = float(np.mean(with_val)) - per_epoch if with_val else 0.0
    rate = per_epoch + val_extra / val_every  # an average epoch, validation's share included
    if best_epoch <= len(history):  # the baseline ran that far: no projection needed
        return t[best_epoch - 1], rate
    n_vals = best_epoch // val_every + (1 if best_epoch % val_every else 0) - (1 if "val_dice" in history[0] else 0)
    return t[0] + per_epoch * (best_epoch - 1) + val_extra * n_vals, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None,
                    help="default: the recipe's (70 from the shipped start: init_weights.default_epochs)")
    ap.add_argument("--uncached-epochs", type=int, default=12,
                    help="epochs of the uncached baseline to measure (0 = run it fully)")
    ap.add_argument("--val-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--test", default="synthetic:50:7")
    ap.add_argument("--lr", type=float, default=None, help="default: the recipe's (3e-4 from the shipped start)")
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--augment-copies", type=int, default=TrainConfig.augment_copies,
                    help="cached augmented copies per image; default: the recipe's (TrainConfig)")
    ap.add_argument("--val", default="none", help="validation images for best-epoch selection, e.g. synthetic:8:1; "
                    "'none' (default) is the recipe for 10 images: all train, fixed schedule, final weights")
    ap.add_argument("--denormals-ab", action="store_true",
                    help="also train with float denormals kept (TrainConfig.flush_denormals=False) right before "
                         "the recipe's run, and print both side by side")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, _ = load_spec("synthetic:10:0")
    val = [] if args.val == "none" else load_spec(args.val)[0]
    test, test_name = load_spec(args.test)
    base = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, augment_copies=args.augment_copies,
                val_every=args.val_every, seed=0)

    kept = None
    if args.denormals_ab:  # first, so that a machine slowing down over the runs favours neither
        kept = Trainer(TrainConfig(**base, flush_denormals=False), device=args.device).fit(train, val, progress=False)
    recipe = Trainer(TrainConfig(**base), device=args.device)
    epochs = base["epochs"] = recipe.cfg.epochs  # the length the recipe settled on
    wall = time.perf_counter()
    cached = recipe.fit(train, val, progress=False)
    wall = time.perf_counter() - wall  # what `sam2rad train` waits for: with the confidence reference
    un_epochs = args.uncached_epochs or epochs
    if un_epochs < 2:
        ap.error("--uncached-epochs must be at least 2 (its later epochs give the per-epoch cost), or 0")
    if val and un_epochs < args.val_every and un_epochs != epochs:
        ap.error("--uncached-epochs must reach a validation (at least --val-every), so its cost is measured")
    uncached = Trainer(TrainConfig(**{**base, "epochs": un_epochs, "cache": "none"}),
                       device=args.device).fit(train, val, progress=False)
    projected, per_epoch_uncached = project_uncached(uncached.history, cached.best_epoch, args.val_every)
    uncached_passes = round(uncached.encodings / un_epochs * cached.best_epoch)
    label = "measured" if not args.uncached_epochs else f"projected from {un_epochs} measured epochs"

    rows = evaluate_model(cached.model, test)
    print(f"\n10-shot training, threads={args.threads}, device={args.device}, epochs={epochs}")
    print(f"{'run':<28}{'encoder passes':>16}{'best epoch':>12}{'s to best':>12}{'s total':>10}")
    print(f"{'with feature cache':<28}{cached.encodings:>16}{cached.best_epoch:>12}"
          f"{cached.seconds_to_best:>12.0f}{cached.seconds:>10.0f}")
    print(f"{'without cache':<28}{uncached_passes:>16}{cached.best_epoch:>12}{projected:>12.0f}"
          f"{per_epoch_uncached * epochs:>10.0f}   ({label})")
    print(f"the recipe's fit() from start to return (model built before; confidence reference included): {wall:.0f} s")
    print(f"speed-up to best epoch: {projected / cached.seconds_to_best:.1f}x; best validation Dice "
          f"{cached.best_val_dice:.3f}")
    print(f"cached run: encoding phase {cached.seconds_encoding:.0f} s for {cached.encodings} images; "
          f"{(cached.seconds - cached.seconds_encoding) / epochs:.2f} s an epoch after it (with validation); "
          f"uncached: {per_epoch_uncached:.2f} s an epoch")
    if kept is not None:
        def per_epoch(r):
            return (r.seconds - r.seconds_encoding) / epochs
        print(f"denormals kept / flushed (the recipe): {kept.seconds:.0f} / {cached.seconds:.0f} s in all "
              f"({kept.seconds / cached.seconds:.2f}x); encoding {kept.seconds_encoding:.0f} / "
              f"{cached.seconds_encoding:.0f} s; {per_epoch(kept):.2f} / {per_epoch(cached):.2f} s an epoch")
        kept_rows = evaluate_model(kept.model, test)
        print(f"held-out {test_name}, denormals kept:\n{format_table(summarise(kept_rows))}")
    print(f"\nheld-out: {test_name}\n{format_table(summarise(rows))}")


if __name__ == "__main__":
    main()
