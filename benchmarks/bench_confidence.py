"""How well the confidence floor triages: which images it flags, and how much worse they are.

The review worklist flags an instance whose confidence (`sam2rad/confidence.py`) is under its model's
floor. A floor is useful when the images it flags are clearly worse than the rest, and when it does
not flag good images of the kind the model was trained on. This benchmark scores one checkpoint's
`auto` masks on held-out sets (Dice against the labels, the confidence of each) and sets beside each
other, on the same scores, floors rebuilt from the checkpoint's training images by two rules:

  originals: the lowest score on the training images themselves (the trainer's rule,
             `sam2rad/confidence.py`);
  copies:    a low quantile of the scores on the training images' augmented copies (the trainer's
             cached copies 1..k-1, rebuilt with `sam2rad.train.augmented_copy`; measured in session
             23 as a more lenient floor and not adopted: it flags fewer good images but also fewer
             weak ones, at the same precision),

and the floor the checkpoint's card holds. For each set and floor: images flagged, mean Dice of the
flagged and of the others, and how many of the images under 0.85 Dice it flags (of how many); per
set, Spearman's rho between confidence and Dice. The floor only sets the operating point; how well
the score separates good from weak masks is the rho.

--train-data must give the checkpoint's training images in the trainer's order (with 20 or fewer
images all of them train in the order given); the augmentation seed and the number of copies come
from the card. Rebuilding costs one encoder pass per training image and copy (80 for 10 images).

Usage: .venv/bin/python benchmarks/bench_confidence.py [--checkpoint PATH] [--train-data synthetic:10:0]
       [--data rfsim:20:7,synthetic:20:7] [--quantiles 0.05,0.1,0.2] [--threads 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from sam2rad.checkpoint import DEMO_CHECKPOINT, CheckpointError, load_checkpoint, read_card
from sam2rad.data.specs import load_spec
from sam2rad.metrics import dice
from sam2rad.train import augmented_copy

WEAK_DICE = 0.85  # the "images auto gets wrong" line, used for the flagged-weak count
COPIES_QUANTILE = 0.10  # the copies rule's default quantile


def quantile_list(text: str) -> list[float]:
    """argparse type: a comma list of quantiles, each in (0, 0.5)."""
    try:
        values = [float(q) for q in text.split(",") if q.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None
    if not values or not all(0 < q < 0.5 for q in values):
        raise argparse.ArgumentTypeError(f"quantiles must lie in (0, 0.5), got {text!r}")
    return values


def _mean(values: np.ndarray) -> str:
    return f"{values.mean():.3f}" if values.size else "-"


def auto_scores(model, images) -> list[tuple[float, np.ndarray]]:
    """(confidence, first-class mask) per image, auto mode, one image at a time."""
    out = []
    for image in images:
        pred = model.predict(np.asarray(image), "auto")[0]
        out.append((float(pred.scores[0]), pred.masks[0]))
        model.clear_cache()
    return out


def rebuilt_floors(model, card, train_spec: str, quantiles: list[float]) -> dict[str, float]:
    config = card.training.get("config", {})
    seed, copies = int(config.get("seed", 0)), int(config.get("augment_copies", 1))
    samples, _ = load_spec(train_spec)
    originals = [s for s, _ in auto_scores(model, tqdm([s.image for s in samples], desc="originals", unit="img"))]
    floors = {"originals, lowest": float(np.min(originals))}
    if copies > 1:
        images = [augmented_copy(s, i, c, seed, model.num_classes)[0] for i, s in enumerate(samples)
                  for c in range(1, copies)]
        scored = [s for s, _ in auto_scores(model, tqdm(images, desc="augmented copies", unit="img"))]
        for q in quantiles:
            floors[f"copies, {q:.0%} quantile"] = float(np.quantile(scored, q))
    return floors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped demo checkpoint")
    ap.add_argument("--train-data", default="synthetic:10:0", help="the checkpoint's training images (default: the demo's)")
    ap.add_argument("--data", default="rfsim:20:7,synthetic:20:7", help="comma list of held-out data specs")
    ap.add_argument("--quantiles", type=quantile_list, default=[COPIES_QUANTILE],
                    help="comma list: floors at these quantiles of the copies' scores, to see how the "
                         "choice trades flags")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.checkpoint) if args.checkpoint else DEMO_CHECKPOINT
    try:
        model, card = load_checkpoint(path), read_card(path)
    except CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from None
    floors = rebuilt_floors(model, card, args.train_data, args.quantiles)
    if model.confidence_reference is not None:
        floors["card"] = model.confidence_reference.floor
    print(f"\ncheckpoint {path.name}, trained on {args.train_data}")
    print(f"{'data':16s} {'n':>3s} {'Dice':>6s} {'rho':>5s}  {'floor rule':44s} {'floor':>6s} {'flagged':>7s}"
          f"  {'Dice flagged / others':>21s}  {'weak flagged':>12s}")
    for spec in [s for s in args.data.split(",") if s]:
        samples, _ = load_spec(spec)
        scored = auto_scores(model, tqdm([s.image for s in samples], desc=spec, unit="img"))
        conf = np.array([c for c, _ in scored])
        dc = np.array([dice(m, np.asarray(s.mask) > 0) for (_, m), s in zip(scored, samples)])
        rho, weak = spearmanr(conf, dc).correlation, dc < WEAK_DICE
        for k, (rule, floor) in enumerate(floors.items()):
            flag = conf < floor
            split = f"{_mean(dc[flag])} / {_mean(dc[~flag])}"
            head = f"{spec:16s} {len(dc):3d} {dc.mean():6.3f} {rho:5.2f}" if k == 0 else " " * 33
            print(f"{head}  {rule:44s} {floor:6.3f} {int(flag.sum()):7d}  {split:>21s}  "
                  f"{int((flag & weak).sum()):>5d} of {int(weak.sum()):<3d}")


if __name__ == "__main__":
    main()
