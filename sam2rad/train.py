"""Few-shot PPN training on a frozen backbone.

The backbone never changes, so each (image, augmentation) pair is encoded once and its features are
reused every epoch (memory or disk cache, keyed by image hash + augmentation + backbone
fingerprint). That is what makes 10-shot training practical on a CPU: epochs then cost only the PPN
and the frozen decoder.

Prompt mix per training row: mostly learned prompts only (auto mode); some with the ground-truth
box in place of the predicted one (semi mode with a reader's box); some with one simulated click
added (semi mode with a reader's click). Manual mode needs no training: with the decoder frozen it
is exactly the backbone.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from .augment import augment, jitter_refiner_input, warp_rows
from .backbones.base import FeaturePyramid
from .clicks import error_click, training_click
from .confidence import REFERENCE_IMAGES, reference_scores
from .cpu_flags import flush_denormals
from .mask_box import boxes_from_logits
from .data.datasets import Sample
from .feature_cache import CachedExample, FeatureCache, cat_pyramids
from .losses import LossWeights, Targets, make_targets, mask_coverage_in_model_space, sam2rad_loss
from .metrics import dice
from .model import Sam2Rad, build_sam2rad
from .ppn import PPNConfig
from .refine import RefinerConfig
from .training_plan import SMALL_DATASET
from .init_weights import (FROM_SCRATCH_EPOCHS, FROM_SCRATCH_LR, apply_init, blend_with_start, default_epochs, default_lr,
                           resolve_start_share, start_state)

__all__ = ["TrainConfig", "Trainer", "TrainResult", "training_summary", "class_masks", "augmented_copy",
           "cat_pyramids", "training_click", "augment"]


@dataclass
class TrainConfig:
    backbone: str = "litemedsam"
    backbone_checkpoint: str | None = None
    input_size: int | None = None
    class_names: tuple[str, ...] = ("bone",)
    ppn: PPNConfig = field(default_factory=PPNConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    # Starting weights (sam2rad/init_weights.py): "auto" takes the shipped pretrained PPN and refiner
    # where they fit the backbone, classes and configs; "pretrained", "none" or a checkpoint path.
    init: str = "auto"
    # A fixed schedule: with <= 20 images nothing is held out to pick an epoch. None: by the start
    # (init_weights.default_epochs: 70 from trained weights, 100 from random weights).
    epochs: int | None = None
    batch_size: int = 4
    lr: float | None = None  # None: by the start (init_weights.default_lr: 3e-4 from trained weights, else 1e-3)
    # The final weights lie this share of the way back to a trained start (init_weights.blend_with_start).
    start_share: float | None = None  # None: 0.2 for <= SMALL_DATASET images from trained weights, else 0
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    augment_copies: int = 8  # encoded versions of each training image (copy 0 is the original)
    gt_box_fraction: float = 0.25  # rows trained with the ground-truth box (semi mode)
    box_jitter_px: float = 3.0
    gt_box_margin_px: float = 0.0  # ground-truth boxes grown by this much, like the boxes auto mode takes from its first mask
    click_fraction: float = 0.25  # rows trained with simulated reader clicks (semi mode)
    click_rounds: int = 3  # up to this many successive clicks, each on the current prediction's largest error
    # Rows (without a ground-truth box) prompted with the box of the model's own first mask, as auto's
    # second pass and semi's clicks are at inference (sam2rad/mask_box.py); with any, clicked rows
    # always are. Off by default: measured no better (train A, one run each: A->B 0.655 with 0.5,
    # 0.652 without; with grow_click_boxes too 0.628), and it costs a forward pass per step.
    mask_box_fraction: float = 0.0
    # Clicked training rows get boxes grown to hold their add-clicks, as semi does at inference. Off by
    # default: the shipped recipe trained without it and was no worse (see mask_box_fraction).
    grow_click_boxes: bool = False
    refiner_logit_dropout: float = 0.0  # rows whose decoder logits the refiner does not see in training
    # Rows whose cached encoding, refiner input and masks get a fresh small affine warp each step
    # (sam2rad/augment.py: warp_rows): new framings without encoding more copies.
    feature_warp: float = 0.0
    # The refined mask learns each pixel's covered fraction, not a thresholded mask (losses.Targets.soft).
    # Measured, 10 B images (320 x 256, scale 0.8 into the model) -> 20 held-out B: Dice 0.859 -> 0.872,
    # HD95 median 0.33 -> 0.29 mm. Square 256 images (generator A) see no change: nothing is resized.
    soft_targets: bool = True
    refiner_jitter: float = 1.0  # strength of fresh grey-level changes of the refiner's input each step (0: none)
    val_every: int = 10
    seed: int = 0
    cache: str = "memory"  # "memory", "disk" or "none" (re-encode every epoch; for benchmarks)
    cache_dir: str | None = None
    loss: LossWeights = field(default_factory=LossWeights)
    threads: int | None = None
    flush_denormals: bool = True  # on a CPU: a faster encoding phase, figures unchanged (sam2rad/cpu_flags.py)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        if "ppn" in data and isinstance(data["ppn"], dict):
            data["ppn"] = PPNConfig(**data["ppn"])
        if "refiner" in data and isinstance(data["refiner"], dict):
            data["refiner"] = RefinerConfig(**data["refiner"])
        if "loss" in data and isinstance(data["loss"], dict):
            data["loss"] = LossWeights(**data["loss"])
        if "class_names" in data:
            data["class_names"] = tuple(data["class_names"])
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.cache not in ("memory", "disk", "none"):
            raise ValueError(f"cache must be memory, disk or none, got {self.cache!r}")
        if self.cache == "disk" and not self.cache_dir:
            raise ValueError("cache='disk' needs cache_dir")
        for name in ("gt_box_fraction", "click_fraction", "mask_box_fraction", "feature_warp"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.augment_copies < 1 or self.val_every < 1:
            raise ValueError("epochs, batch_size, augment_copies and val_every must be >= 1")
        if self.start_share is not None and not 0.0 <= self.start_share < 1.0:
            raise ValueError(f"start_share must be in [0, 1), got {self.start_share}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.click_rounds < 1:
            raise ValueError("click_rounds must be >= 1")
        if len(self.class_names) != self.ppn.num_classes:
            raise ValueError(f"{len(self.class_names)} class names but ppn.num_classes={self.ppn.num_classes}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def class_masks(sample: Sample, num_classes: int) -> np.ndarray:
    """(C, H, W) bool: label k+1 is class k; a binary mask is class 0."""
    m = np.asarray(sample.mask)
    if num_classes == 1:
        return (m != 0)[None]
    return np.stack([m == k + 1 for k in range(num_classes)])


def augmented_copy(sample: Sample, index: int, copy: int, seed: int, num_classes: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(image, class masks) of training copy `copy` of the `index`-th image (0: the original), as the
    trainer caches it; the same on every call."""
    masks = class_masks(sample, num_classes)
    if copy == 0:
        return sample.image, masks
    # Same seed per class so image and every class mask get the same transform.
    aug = [augment(sample.image, m, np.random.default_rng([seed, index, copy])) for m in masks]
    return aug[0][0], np.stack([a[1] for a in aug])


# --- the loop -----------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: Sam2Rad
    best_val_dice: float
    best_epoch: int
    history: list[dict]
    seconds: float
    seconds_to_best: float
    encodings: int
    cache_hits: int
    seconds_encoding: float = 0.0  # the up-front encoding of every cached (image, augmentation)
    init_note: str = ""  # where training started (sam2rad/init_weights.py)


class Trainer:
    def __init__(self, cfg: TrainConfig, model: Sam2Rad | None = None, device: str = "cpu",
                 log: Callable[[str], None] | None = None):
        cfg.validate()
        self.cfg = cfg
        self.device = torch.device(device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        # SAM2 without a local checkpoint trains on random weights: only useful for tests.
        pretrained = cfg.backbone == "litemedsam" or cfg.backbone_checkpoint is not None
        refiner = cfg.refiner if cfg.refiner.enabled else None
        lr, epochs = FROM_SCRATCH_LR, FROM_SCRATCH_EPOCHS
        if model is None:
            model = build_sam2rad(cfg.backbone, cfg.ppn, cfg.class_names, refiner_config=refiner,
                                  checkpoint=cfg.backbone_checkpoint, input_size=cfg.input_size, pretrained=pretrained)
            self.init_note = apply_init(model, cfg.init)
            lr, epochs = default_lr(self.init_note), default_epochs(self.init_note)
            self.start = start_state(model)
        else:
            self.init_note, self.start = "the model given to the Trainer", None
        if cfg.lr is None:  # the card then records the rate used
            self.cfg = cfg = replace(cfg, lr=lr)
        if cfg.epochs is None:  # and the schedule's length
            self.cfg = cfg = replace(cfg, epochs=epochs)
        self.model = model
        self.model.to(self.device)
        self.model.logit_dropout = cfg.refiner_logit_dropout
        self.cache = FeatureCache(self.model, cfg.cache, cfg.cache_dir)
        self._jitter_rng = torch.Generator().manual_seed(cfg.seed)
        self.log = log or (lambda msg: None)

    def _example(self, sample: Sample, index: int, copy: int, seed: int, tag: str) -> CachedExample:
        """Augmented copy `copy` of a sample (copy 0 is the original), encoded through the cache."""
        bb = self.model.backbone
        img, ms = augmented_copy(sample, index, copy, seed, self.model.num_classes)
        feats, geom = self.cache.encode(img, f"{tag}:{sample.name}:{copy}:{seed}")
        # Targets at the finest output: the refiner's (model input) or else the decoder's.
        out_side = bb.input_size if self.model.refiner is not None else bb.prompt_encoder.mask_input_size[0]
        cover = np.stack([mask_coverage_in_model_space(m, geom, bb.input_size, out_side) for m in ms])
        soft = cover.astype(np.float16) if self.cfg.soft_targets else None
        return CachedExample(feats, geom, cover >= 0.5, ms, soft)

    def _examples(self, samples: Sequence[Sample], copies: int, seed: int, tag: str) -> list[CachedExample]:
        return [self._example(s, i, c, seed, tag) for i, s in enumerate(samples) for c in range(copies)]

    def _batch(self, batch: list[CachedExample], rng: np.random.Generator
               ) -> tuple[FeaturePyramid, Targets, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        feats = cat_pyramids([e.features for e in batch], self.device)
        if self.cfg.refiner_jitter > 0 and feats.image is not None:
            feats = replace(feats, image=jitter_refiner_input(feats.image, self._jitter_rng,
                                                                          self.cfg.refiner_jitter))
        masks = [m for e in batch for m in e.target]  # rows image-major, class-minor
        if self.cfg.feature_warp > 0:
            feats, masks = warp_rows(feats, masks, rng, self.cfg.feature_warp)
        soft = None
        if self.cfg.soft_targets and self.cfg.feature_warp == 0 and all(e.soft_target is not None for e in batch):
            soft = [m for e in batch for m in e.soft_target]
        targets = make_targets(masks, soft)
        n = len(targets.present)
        size = self.model.backbone.input_size
        boxes = torch.full((n, 4), float("nan"), device=self.device)  # NaN rows: the PPN's own box
        use_gt = rng.random(n) < self.cfg.gt_box_fraction
        if use_gt.any():
            gt = targets.boxes_px(size).clone()
            margin = self.cfg.gt_box_margin_px
            gt = (gt + torch.tensor([-margin, -margin, margin, margin])).clamp(0, float(size))
            gt += torch.as_tensor(rng.normal(0, self.cfg.box_jitter_px, gt.shape), dtype=torch.float32)
            keep = torch.as_tensor(use_gt, device=self.device)
            boxes[keep] = gt.to(self.device)[keep]
        use_click = rng.random(n) < self.cfg.click_fraction
        use_mask_box = np.zeros(n, dtype=bool)
        if self.cfg.mask_box_fraction > 0:  # (no draw otherwise: the default recipe's random stream stays as shipped)
            use_mask_box = ~use_gt & (use_click | (rng.random(n) < self.cfg.mask_box_fraction))
        if use_mask_box.any() and self.model.box_from_mask_margin_px is not None:
            boxes = self._with_mask_boxes(feats, boxes, torch.as_tensor(use_mask_box, device=self.device))
        if torch.isnan(boxes).all():
            boxes = None
        clicks = self._simulate_clicks(feats, boxes, masks, np.nonzero(use_click)[0], rng) if use_click.any() else None
        return feats, targets, boxes, clicks

    @torch.no_grad()
    def _with_mask_boxes(self, feats: FeaturePyramid, boxes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`boxes` with `rows` replaced by the extent of the current model's first-pass mask (+ margin),
        the box auto's second pass and semi's clicks get at inference; rows whose mask is empty keep theirs."""
        first = self.model(feats, boxes)
        mask_boxes = boxes_from_logits(first.logits, self.model.backbone.input_size,
                                       self.model.box_from_mask_margin_px)
        take = rows & ~torch.isnan(mask_boxes).any(dim=1)
        return torch.where(take[:, None], mask_boxes, boxes)

    @torch.no_grad()
    def _simulate_clicks(self, feats: FeaturePyramid, boxes: torch.Tensor | None, masks: list[np.ndarray],
                         rows: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Clicks for `rows` as a reader makes them: 1..click_rounds successive clicks, each on the
        largest error of the prediction made with the clicks so far (SAM-style interactive training).
        Returns (coords (N, R, 2) in model pixels, labels (N, R)); -1 labels mark no click."""
        n, rounds = len(masks), int(rng.integers(1, self.cfg.click_rounds + 1))
        size = self.model.backbone.input_size
        coords = torch.zeros(n, rounds, 2, device=self.device)
        labels = torch.full((n, rounds), -1, dtype=torch.long, device=self.device)
        c = self.model.num_classes
        images = np.unique(rows // c)  # the forward pass makes every class row of an image
        covered = (images[:, None] * c + np.arange(c)).ravel()
        position = {int(row): i for i, row in enumerate(covered)}
        cov = torch.as_tensor(covered, device=self.device)
        sub = feats.select(torch.as_tensor(images, device=self.device))
        sub_boxes = None if boxes is None else boxes[cov]
        for r in range(rounds):
            if r == 0 and rng.random() < 0.5:
                # Half the first clicks come from the ground truth alone (a reader's first click
                # need not follow the model's error), which keeps the first-click prior broad.
                preds = None
            else:
                out = self.model(sub, sub_boxes, (coords[cov, :r], labels[cov, :r]) if r else None)
                preds = (out.logits[:, 0] > 0).cpu().numpy()
            for row in rows:
                gt = masks[row]
                if not gt.any():  # nothing to click on: the row stays unclicked
                    continue
                if preds is None:
                    click = training_click(gt, rng)
                    if click is None:
                        continue
                    xy, label = click
                    x, y = float(xy[0]), float(xy[1])
                else:
                    pred = preds[position[int(row)]]
                    if pred.shape != gt.shape:
                        pred = np.asarray(torch.nn.functional.interpolate(
                            torch.as_tensor(pred, dtype=torch.float32)[None, None], size=gt.shape)[0, 0] > 0.5)
                    (x, y), label = error_click(pred, gt, strip_middle=False)  # the recipe as measured
                # Pixel indices, like a reader's click (the prompt encoder adds the half pixel).
                coords[row, r] = torch.tensor([x * size / gt.shape[-1], y * size / gt.shape[-2]])
                labels[row, r] = label
        return coords, labels

    @torch.no_grad()
    def validate(self, examples: list[CachedExample]) -> float:
        self.model.eval()
        scores = []
        for e in examples:
            out = self.model(cat_pyramids([e.features], self.device))
            logits, obj = out.logits, out.object_logit
            for k in range(self.model.num_classes):
                pred = (self.model.backbone.postprocess(logits[k:k + 1], e.geometry)[0] > 0).cpu().numpy()
                if obj is not None and obj[k] < 0:
                    pred[:] = False
                scores.append(dice(pred, e.source_mask[k]))
        return float(np.mean(scores)) if scores else float("nan")

    def fit(self, train: Sequence[Sample], val: Sequence[Sample], progress: bool = True) -> TrainResult:
        if not train:
            raise ValueError("no training images")
        cfg = self.cfg
        grow_margin = self.model.click_box_margin_px
        if not cfg.grow_click_boxes:  # training only; the model keeps its inference behaviour
            self.model.click_box_margin_px = None
        try:
            with flush_denormals(cfg.flush_denormals and self.device.type == "cpu"):
                return self._fit(train, val, progress)
        finally:
            self.model.click_box_margin_px = grow_margin

    def _fit(self, train: Sequence[Sample], val: Sequence[Sample], progress: bool) -> TrainResult:
        cfg = self.cfg
        start = time.perf_counter()
        copies = cfg.augment_copies
        rng = np.random.default_rng(cfg.seed)
        # Without the cache (benchmark baseline) every step re-encodes the image it draws.
        uncached = cfg.cache == "none"
        train_ex = [] if uncached else self._examples(train, copies, cfg.seed, "train")
        # Without the cache validation re-encodes its images too, as a cache-less trainer must.
        val_ex = [] if uncached or not val else self._examples(val, 1, cfg.seed, "val")
        seconds_encoding = time.perf_counter() - start
        params = self.model.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # One pass over the original images per epoch; each uses one of its cached augmented copies.
        n_imgs = len(train)
        steps_per_epoch = math.ceil(n_imgs / cfg.batch_size)
        total = cfg.epochs * steps_per_epoch
        warmup = max(1, int(cfg.warmup_fraction * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
        best = (-1.0, 0, None, 0.0)
        history: list[dict] = []
        bar = _progress(range(1, cfg.epochs + 1), progress, "train")
        for epoch in bar:
            self.model.train()
            order = rng.permutation(n_imgs)
            losses = []
            for b in range(steps_per_epoch):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                picks = [(int(i), int(rng.integers(copies))) for i in idx]
                if cfg.cache == "none":
                    batch = [self._example(train[i], i, c, cfg.seed, "train") for i, c in picks]
                else:
                    batch = [train_ex[i * copies + c] for i, c in picks]
                feats, targets, boxes, clicks = self._batch(batch, rng)
                out = self.model(feats, boxes, clicks)
                refined = out.logits if self.model.refiner is not None else None
                loss, parts = sam2rad_loss(out.decoder_logits, out.ppn.box_norm, out.ppn.mask_logits,
                                           out.object_logit, targets, cfg.loss, refined_logits=refined)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            row = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0]}
            if val and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
                row["val_dice"] = self.validate(self._examples(val, 1, cfg.seed, "val") if uncached else val_ex)
                if row["val_dice"] > best[0]:
                    state = {k: v.detach().clone() for k, v in self.model.trainable_state().items()}
                    best = (row["val_dice"], epoch, state, time.perf_counter() - start)
            row["seconds"] = time.perf_counter() - start  # since fit began (benchmarks project from it)
            history.append(row)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({k: round(v, 4) for k, v in row.items() if k not in ("epoch", "seconds")})
            self.log(json.dumps(row))
        if best[2] is not None:
            self.model.load_trainable_state(best[2])
        else:  # no validation: a fixed schedule, the final weights
            best = (float("nan"), cfg.epochs, None, 0.0)
        share = resolve_start_share(cfg.start_share, self.init_note, len(train), SMALL_DATASET) if self.start else 0.0
        self.cfg = replace(cfg, start_share=share)  # the card records the share used
        blend_with_start(self.model, self.start, self.cfg.start_share)
        elapsed = time.perf_counter() - start
        self.model.eval()
        # What "sure" means for these weights: their scores on the images they learned from (an even
        # spread of at most REFERENCE_IMAGES of them), on the cache's encodings of the originals (copy 0).
        picks = range(0, len(train), max(1, -(-len(train) // REFERENCE_IMAGES)))
        known = None if uncached else [(train_ex[i * copies].features, train_ex[i * copies].geometry) for i in picks]
        self.model.confidence_reference = reference_scores(self.model, [train[i].image for i in picks], encodings=known)
        return TrainResult(self.model, best[0], best[1], history, elapsed,
                           best[3] if best[2] is not None else elapsed, self.cache.misses, self.cache.hits,
                           seconds_encoding, self.init_note)


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="epoch", dynamic_ncols=True)


def training_summary(train: Sequence[Sample], val: Sequence[Sample], cfg: TrainConfig, result: TrainResult,
                     data_source: str) -> dict:
    return {
        "data_source": data_source,
        "n_train": len(train), "n_val": len(val),
        "train_names": [s.name for s in train][:50],
        "config": replace(cfg, cache_dir=None).to_dict(),
        "init": result.init_note,
        "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1),
        "encodings": result.encodings,
    }
