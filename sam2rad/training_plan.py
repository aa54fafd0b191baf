"""Which labelled images train and which validate, and why (the plan `sam2rad train` prints).

Why: with 10 labelled images a hold-out costs more than it tells, so small sets train whole on a
fixed schedule; larger ones hold a fraction out to pick the best epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .data.datasets import Sample

# With this few labelled images a hold-out costs more than it tells: 2 of 10 images are a fifth of
# the training signal, and a 2-image validation Dice is too noisy to pick an epoch by.
SMALL_DATASET = 20


@dataclass
class TrainingPlan:
    train: list[Sample]
    val: list[Sample]
    note: str  # what was chosen and why, for the user and the model card


def plan_training(samples: Sequence[Sample], val_samples: Sequence[Sample] | None = None,
                  val_fraction: float | None = None, seed: int = 0) -> TrainingPlan:
    """Which images train and which validate: explicit validation data if given; with at most
    SMALL_DATASET images and no val_fraction, all of them train on a fixed schedule (final weights);
    otherwise val_fraction (default 0.2) is held out to pick the best epoch."""
    from .data.datasets import InMemoryDataset, train_val_split

    samples = list(samples)
    if val_samples:
        return TrainingPlan(samples, list(val_samples), f"{len(samples)} images train; {len(val_samples)} "
                            "given validation images pick the best epoch")
    if val_fraction is None and len(samples) <= SMALL_DATASET:
        return TrainingPlan(samples, [], f"all {len(samples)} images train on a fixed schedule and the final "
                            f"weights are kept (<= {SMALL_DATASET} labelled images: no hold-out; pass "
                            "--val-fraction or --val-data to hold some out)")
    fraction = 0.2 if val_fraction is None else val_fraction
    if fraction == 0:
        return TrainingPlan(samples, [], f"all {len(samples)} images train (val fraction 0); final weights kept")
    tr, va = train_val_split(InMemoryDataset(samples), fraction, seed=seed)
    return TrainingPlan(list(tr), list(va), f"{len(tr)} images train; {len(va)} held out "
                        f"(val fraction {fraction:g}) pick the best epoch")
