"""10-shot PPN training on 2 CPU threads: with vs without the frozen-encoder feature cache, then
held-out Dice/HD95 for auto, manual with the ground-truth box (zero-shot baseline), semi + one click.

Both runs draw the same (image, augmentation) per step and validate on the same images every
--val-every epochs; without the cache every step re-encodes its images, and so does every validation
(finding the best epoch needs validation, and only a cache spares its re-encoding). The uncached run
is measured for --uncached-epochs epochs (a whole number of validation cycles) and its time to the
cached run's best epoch is projected from that per-epoch cost (--uncached-epochs 0 runs it fully).
Usage: .venv/bin/python benchmarks/bench_training.py [--epochs 100] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import torch

from sam2rad.data.specs import load_spec
from sam2rad.evaluate import evaluate_model, format_table, summarise
from sam2rad.train import TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--uncached-epochs", type=int, default=10,
                    help="epochs of the uncached baseline to measure (0 = run it fully)")
    ap.add_argument("--val-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--test", default="synthetic:50:7")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--augment-copies", type=int, default=4)
    ap.add_argument("--val", default="synthetic:8:1", help="validation images (best-epoch selection)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, _ = load_spec("synthetic:10:0")
    val, _ = load_spec(args.val)
    test, test_name = load_spec(args.test)
    base = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, augment_copies=args.augment_copies,
                val_every=args.val_every, seed=0)

    cached = Trainer(TrainConfig(**base), device=args.device).fit(train, val, progress=False)
    un_epochs = args.uncached_epochs or args.epochs
    if un_epochs % args.val_every and un_epochs != args.epochs:
        ap.error("--uncached-epochs must be a multiple of --val-every, so validation's share is measured")
    t0 = time.perf_counter()
    uncached = Trainer(TrainConfig(**{**base, "epochs": un_epochs, "cache": "none"}),
                       device=args.device).fit(train, val, progress=False)
    per_epoch_uncached = (time.perf_counter() - t0) / un_epochs  # validation's share included
    projected = per_epoch_uncached * cached.best_epoch
    uncached_passes = round(uncached.encodings / un_epochs * cached.best_epoch)
    label = "measured" if not args.uncached_epochs else f"projected from {un_epochs} measured epochs"

    rows = evaluate_model(cached.model, test)
    print(f"\n10-shot training, threads={args.threads}, device={args.device}, epochs={args.epochs}")
    print(f"{'run':<28}{'encoder passes':>16}{'best epoch':>12}{'s to best':>12}{'s total':>10}")
    print(f"{'with feature cache':<28}{cached.encodings:>16}{cached.best_epoch:>12}"
          f"{cached.seconds_to_best:>12.0f}{cached.seconds:>10.0f}")
    print(f"{'without cache':<28}{uncached_passes:>16}{cached.best_epoch:>12}{projected:>12.0f}"
          f"{per_epoch_uncached * args.epochs:>10.0f}   ({label})")
    print(f"speed-up to best epoch: {projected / cached.seconds_to_best:.1f}x; best validation Dice "
          f"{cached.best_val_dice:.3f}")
    print(f"cached run: encoding phase {cached.seconds_encoding:.0f} s for {cached.encodings} images; "
          f"{(cached.seconds - cached.seconds_encoding) / args.epochs:.2f} s an epoch after it (with validation); "
          f"uncached: {per_epoch_uncached:.2f} s an epoch")
    print(f"\nheld-out: {test_name}\n{format_table(summarise(rows))}")


if __name__ == "__main__":
    main()
