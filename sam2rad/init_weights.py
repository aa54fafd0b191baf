"""Where few-shot training starts: the shipped pretrained PPN and refiner, another checkpoint, or nothing.

Why: 10 labelled images are too few to learn what a bone surface looks like from random queries.
The project ships a PPN and refiner trained on 600 generated images (generator A) against the
real LiteMedSAM weights; a site's 10 images then fine-tune it. Measured (20 held-out images each,
one run, lr 1e-3): on generator B, never used while designing the recipe, 10 B images from the
300-image start gave `auto` Dice 0.863 / HD95 median 0.33 mm against 0.849 / 0.39 mm from the
earlier 150-image start and 0.817 / 0.45 mm from random weights. Today's recipe from the 600-image
start: 0.878 over 3 seeds (0.876 from the 300-image start); across generators (10 A images, 40
held-out B images, 3 seeds) 0.778 against 0.768.

`init` values: "auto" (the shipped start when it fits the backbone, classes and configs, else
random), "pretrained" (the shipped start, an error when it does not fit), "none" (random), or the
path of any checkpoint of this project.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import CheckpointError, read_card
from .model import Sam2Rad

PRETRAINED_CHECKPOINT = Path(__file__).parent / "assets" / "pretrained_litemedsam_bone.safetensors"
INIT_CHOICES = ("auto", "pretrained", "none")
RANDOM_START = "random initialisation"  # every note for random weights starts with it
# Learning rates when TrainConfig.lr is None. From trained weights 10 images pull the model towards
# themselves: at 1e-3 the shipped start fine-tuned on 10 A images fell on unseen generator B from
# 0.755 (the start alone) to 0.728 Dice, at 3e-4 it kept 0.756 (and A rose 0.924 -> 0.931; B -> B
# 0.863 vs 0.859, within a run's noise). Random weights need the larger step.
FINE_TUNE_LR = 3e-4
FROM_SCRATCH_LR = 1e-3


# Epochs when TrainConfig.epochs is None. From trained weights 70 are enough: 10 images over 3 seeds
# gave level figures with 70 and 100 (session 22: A -> B 0.768 vs 0.766, B -> B 0.878 vs 0.878) in
# 30 % less time; 50 lost on B -> B clicks. Random weights keep the 100 they were measured with.
FINE_TUNE_EPOCHS = 70
FROM_SCRATCH_EPOCHS = 100


def default_lr(init_note: str) -> float:
    """The learning rate for a start described by apply_init's note."""
    return FROM_SCRATCH_LR if init_note.startswith(RANDOM_START) else FINE_TUNE_LR


def default_epochs(init_note: str) -> int:
    """The fixed schedule's length for a start described by apply_init's note."""
    return FROM_SCRATCH_EPOCHS if init_note.startswith(RANDOM_START) else FINE_TUNE_EPOCHS


def _plain(config: dict) -> dict:
    return json.loads(json.dumps(config, default=str))  # tuples -> lists, as a card stores them


def _mismatch(model: Sam2Rad, path: Path) -> str | None:
    """Why the checkpoint at `path` cannot start this model, or None when it can."""
    card = read_card(path)
    if card.backbone_fingerprint != model.backbone.fingerprint:
        return f"it was trained on backbone {card.backbone_fingerprint}, this model has {model.backbone.fingerprint}"
    if list(card.class_names) != list(model.class_names):
        return f"its classes are {card.class_names}, this model's {list(model.class_names)}"
    if _plain(card.ppn_config) != _plain(asdict(model.ppn.cfg)):
        return f"its PPN config {card.ppn_config} differs from this model's {asdict(model.ppn.cfg)}"
    refiner, theirs = _plain(model.refiner_config.to_dict()), _plain(card.refiner_config)
    if theirs != refiner and (theirs.get("enabled") or refiner["enabled"]):
        return f"its refiner config {card.refiner_config} differs from this model's {refiner}"
    return None


def apply_init(model: Sam2Rad, init: str | None) -> str:
    """Load the starting weights named by `init` into `model`; returns what was done, for logs and cards."""
    init = "none" if init is None else str(init)
    if init == "none":
        return RANDOM_START
    path = PRETRAINED_CHECKPOINT if init in ("auto", "pretrained") else Path(init)
    if init not in INIT_CHOICES and not path.is_file():
        raise ValueError(f"init must be one of {INIT_CHOICES} or a checkpoint path; {init!r} is neither")
    why = "the shipped pretrained checkpoint is missing" if not path.is_file() else _mismatch(model, path)
    if why is not None:
        if init == "auto":
            return f"{RANDOM_START} (the shipped pretrained start does not fit: {why})"
        raise ValueError(f"cannot start training from {path}: {why}")
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_trainable_state(state)
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors missing {missing[:5]} / unexpected {unexpected[:5]}")
    name = "the shipped pretrained PPN and refiner" if init in ("auto", "pretrained") else str(path)
    return f"started from {name} ({path.name})"


# Weight-space ensembling with the start (WiSE-FT, Wortsman et al., CVPR 2022): the weights kept after
# few-shot training lie this share of the way back towards the trained start. Why: 10 images pull the
# start towards themselves; part of what it knew about bone surfaces elsewhere is worth keeping.
# Measured (session 16; the demo and the B -> B model blended afterwards, the same 20 held-out images,
# `auto` Dice at shares 0 / 0.1 / 0.15 / 0.2 / 0.25 / 0.35 / 0.5): B -> B 0.872 / 0.878 / 0.879 /
# 0.879 / 0.877 / 0.867 / 0.849; A -> B 0.756 / - / - / 0.760 / 0.761 / - / 0.758; A -> A 0.931 /
# 0.932 / - / - / 0.934 / - / - (README, session 16). Over 3 training seeds B -> B gains +0.005 to
# +0.007 each (0.870 -> 0.876); A -> B +0.003, +0.003 and -0.000 (within a run's noise).
FEW_SHOT_START_SHARE = 0.2


def start_state(model: Sam2Rad) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights as they are now (the start, before training moves them)."""
    return {k: v.detach().clone() for k, v in model.trainable_state().items()}


def resolve_start_share(share: float | None, init_note: str, n_train: int, few_shot: int) -> float:
    """The share used: `share` as given; None: FEW_SHOT_START_SHARE for up to `few_shot` images from
    trained weights, 0 otherwise (random weights hold nothing worth keeping; many images need no
    anchor, and a pretraining stage should move fully)."""
    if share is not None:
        return float(share)
    trained = not init_note.startswith(RANDOM_START)
    return FEW_SHOT_START_SHARE if trained and n_train <= few_shot else 0.0


def blend_with_start(model: Sam2Rad, start: dict[str, torch.Tensor] | None, share: float) -> None:
    """Move the model's trainable weights `share` of the way back to `start` (in place)."""
    if start is None or share == 0.0:
        return
    now = model.trainable_state()
    if now.keys() != start.keys():
        raise CheckpointError("the start's tensors differ from the model's: cannot blend them")
    model.load_trainable_state({k: v + (start[k].to(v.device, v.dtype) - v) * share if v.is_floating_point() else v
                                for k, v in now.items()})
