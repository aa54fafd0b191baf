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

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .backbones.base import FeaturePyramid, ImageGeometry
from .data.datasets import Sample
from .losses import LossWeights, Targets, make_targets, mask_to_model_space, sam2rad_loss
from .metrics import dice
from .model import Sam2Rad, build_sam2rad
from .ppn import PPNConfig


@dataclass
class TrainConfig:
    backbone: str = "litemedsam"
    backbone_checkpoint: str | None = None
    input_size: int | None = None
    class_names: tuple[str, ...] = ("bone",)
    ppn: PPNConfig = field(default_factory=PPNConfig)
    epochs: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    augment_copies: int = 4  # encoded versions of each training image (copy 0 is the original)
    gt_box_fraction: float = 0.25  # rows trained with the ground-truth box (semi mode)
    box_jitter_px: float = 3.0
    click_fraction: float = 0.25  # rows trained with one simulated reader click (semi mode)
    val_every: int = 10
    seed: int = 0
    cache: str = "memory"  # "memory", "disk" or "none" (re-encode every epoch; for benchmarks)
    cache_dir: str | None = None
    loss: LossWeights = field(default_factory=LossWeights)
    threads: int | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
        if "ppn" in data and isinstance(data["ppn"], dict):
            data["ppn"] = PPNConfig(**data["ppn"])
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
        for name in ("gt_box_fraction", "click_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.epochs < 1 or self.batch_size < 1 or self.augment_copies < 1 or self.val_every < 1:
            raise ValueError("epochs, batch_size, augment_copies and val_every must be >= 1")
        if len(self.class_names) != self.ppn.num_classes:
            raise ValueError(f"{len(self.class_names)} class names but ppn.num_classes={self.ppn.num_classes}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


# --- augmentation (deterministic per image and copy) ----------------------------------------------
def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Left-right flip, small zoom/shift, gain and gamma: what changes between scanners and sessions."""
    img = image.astype(np.float32)
    m = mask.astype(np.float32)
    if rng.random() < 0.5:
        img, m = img[:, ::-1], m[:, ::-1]
    h, w = img.shape[:2]
    zoom = rng.uniform(0.9, 1.1)
    dy, dx = rng.uniform(-0.05, 0.05, 2) * (h, w)
    theta = torch.tensor([[1 / zoom, 0, -2 * dx / w], [0, 1 / zoom, -2 * dy / h]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, (1, 1, h, w), align_corners=False)
    t_img = torch.from_numpy(np.ascontiguousarray(img)).reshape(1, h, w, -1).permute(0, 3, 1, 2)
    img = F.grid_sample(t_img, grid, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    m = F.grid_sample(torch.from_numpy(np.ascontiguousarray(m))[None, None], grid, mode="nearest",
                      align_corners=False)[0, 0].numpy()
    gamma = rng.uniform(0.8, 1.25)
    gain = rng.uniform(0.85, 1.15)
    img = np.clip(255 * gain * (img / 255) ** gamma, 0, 255).astype(np.uint8)
    img = img[..., 0] if image.ndim == 2 else img
    return img, m > 0.5


@dataclass
class CachedExample:
    features: FeaturePyramid  # one row, on CPU
    geometry: ImageGeometry
    target: np.ndarray  # (C, S, S) bool masks in model space at the decoder's output side
    source_mask: np.ndarray  # (C, H, W) bool at source resolution (for validation Dice)


class FeatureCache:
    """Encoded features keyed by (image, augmentation, backbone) hash, in memory and/or on disk."""

    def __init__(self, model: Sam2Rad, kind: str = "memory", folder: str | Path | None = None):
        self.model, self.kind = model, kind
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.memory: dict[str, FeaturePyramid] = {}
        self.hits = self.misses = 0

    def key(self, image: np.ndarray, tag: str) -> str:
        h = hashlib.sha256(np.ascontiguousarray(image).tobytes())
        # Levels are stored pooled (PromptPredictor.pool_levels), so the pooled side is part of the key.
        pooled = self.model.ppn.cfg.max_level_side
        h.update(f"{image.shape}|{tag}|{self.model.backbone.fingerprint}|pool{pooled}".encode())
        return h.hexdigest()[:32]

    @torch.no_grad()
    def encode(self, image: np.ndarray, tag: str) -> tuple[FeaturePyramid, ImageGeometry]:
        bb = self.model.backbone
        geom = bb.geometry(*image.shape[:2])
        k = self.key(image, tag)
        if k in self.memory:
            self.hits += 1
            return self.memory[k], geom
        if self.kind == "disk" and self.folder and (self.folder / f"{k}.safetensors").is_file():
            from safetensors.torch import load_file

            self.hits += 1
            return _pyramid_from_dict(load_file(str(self.folder / f"{k}.safetensors"))), geom
        self.misses += 1
        pixels, _ = bb.preprocess([image])
        feats = self.model.ppn.pool_levels(bb.encode(pixels)).detach_to("cpu")
        if self.kind == "memory":
            self.memory[k] = feats
        elif self.kind == "disk" and self.folder:
            from safetensors.torch import save_file

            save_file(_pyramid_to_dict(feats), str(self.folder / f"{k}.safetensors"))
        return feats, geom


def _pyramid_to_dict(p: FeaturePyramid) -> dict[str, torch.Tensor]:
    out = {"embedding": p.image_embedding.contiguous()}
    # Backbones hand the embedding on as the coarsest level too; safetensors refuses shared storage.
    out.update({f"level{i}": (t.clone() if t.data_ptr() == p.image_embedding.data_ptr() else t.contiguous())
                for i, t in enumerate(p.levels)})
    if p.high_res is not None:
        out.update({f"high{i}": t.contiguous() for i, t in enumerate(p.high_res)})
    return out


def _pyramid_from_dict(d: dict[str, torch.Tensor]) -> FeaturePyramid:
    levels = [d[f"level{i}"] for i in range(sum(k.startswith("level") for k in d))]
    highs = [d[f"high{i}"] for i in range(sum(k.startswith("high") for k in d))] or None
    return FeaturePyramid(d["embedding"], levels, highs)


def cat_pyramids(items: Sequence[FeaturePyramid], device: torch.device | str = "cpu") -> FeaturePyramid:
    return FeaturePyramid(
        torch.cat([p.image_embedding for p in items]).to(device),
        [torch.cat([p.levels[i] for p in items]).to(device) for i in range(len(items[0].levels))],
        None if items[0].high_res is None else
        [torch.cat([p.high_res[i] for p in items]).to(device) for i in range(len(items[0].high_res))],
    )


def training_click(mask: np.ndarray, rng: np.random.Generator, negative_fraction: float = 0.3
                   ) -> tuple[np.ndarray, int] | None:
    """A reader-like click for a training row, from its ground truth: usually a foreground click on
    the structure, sometimes a background click just beside it (inside its box grown by a quarter).
    Returns ((x, y) in mask pixels, label) or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    if rng.random() < negative_fraction:
        h, w = mask.shape
        gy, gx = max(2, (ys.max() - ys.min()) // 4), max(2, (xs.max() - xs.min()) // 4)
        y0, y1 = max(0, ys.min() - gy), min(h, ys.max() + gy + 1)
        x0, x1 = max(0, xs.min() - gx), min(w, xs.max() + gx + 1)
        by, bx = np.nonzero(~mask[y0:y1, x0:x1])
        if len(bx):
            i = rng.integers(len(bx))
            return np.array([bx[i] + x0, by[i] + y0], np.float32), 0
    i = rng.integers(len(xs))
    return np.array([xs[i], ys[i]], np.float32), 1


def class_masks(sample: Sample, num_classes: int) -> np.ndarray:
    """(C, H, W) bool: label k+1 is class k; a binary mask is class 0."""
    m = np.asarray(sample.mask)
    if num_classes == 1:
        return (m != 0)[None]
    return np.stack([m == k + 1 for k in range(num_classes)])


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
        self.model = model or build_sam2rad(cfg.backbone, cfg.ppn, cfg.class_names,
                                            checkpoint=cfg.backbone_checkpoint, input_size=cfg.input_size,
                                            pretrained=pretrained)
        self.model.to(self.device)
        self.cache = FeatureCache(self.model, cfg.cache, cfg.cache_dir)
        self.log = log or (lambda msg: None)

    def _example(self, sample: Sample, index: int, copy: int, seed: int, tag: str) -> CachedExample:
        """Augmented copy `copy` of a sample (copy 0 is the original), encoded through the cache."""
        bb = self.model.backbone
        masks = class_masks(sample, self.model.num_classes)
        if copy == 0:
            img, ms = sample.image, masks
        else:
            # Same seed per class so image and every class mask get the same transform.
            aug = [augment(sample.image, m, np.random.default_rng([seed, index, copy])) for m in masks]
            img, ms = aug[0][0], np.stack([a[1] for a in aug])
        feats, geom = self.cache.encode(img, f"{tag}:{sample.name}:{copy}:{seed}")
        out_side = bb.prompt_encoder.mask_input_size[0]
        target = np.stack([mask_to_model_space(m, geom, bb.input_size, out_side) for m in ms])
        return CachedExample(feats, geom, target, ms)

    def _examples(self, samples: Sequence[Sample], copies: int, seed: int, tag: str) -> list[CachedExample]:
        return [self._example(s, i, c, seed, tag) for i, s in enumerate(samples) for c in range(copies)]

    def _batch(self, batch: list[CachedExample], rng: np.random.Generator
               ) -> tuple[FeaturePyramid, Targets, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
        feats = cat_pyramids([e.features for e in batch], self.device)
        masks = [m for e in batch for m in e.target]  # rows image-major, class-minor
        targets = make_targets(masks)
        boxes = None
        n = len(targets.present)
        size = self.model.backbone.input_size
        use_gt = rng.random(n) < self.cfg.gt_box_fraction
        if use_gt.any():
            gt = targets.boxes_px(size).clone()
            gt += torch.as_tensor(rng.normal(0, self.cfg.box_jitter_px, gt.shape), dtype=torch.float32)
            gt[~torch.as_tensor(use_gt)] = float("nan")
            boxes = gt.to(self.device)
        clicks = None
        use_click = rng.random(n) < self.cfg.click_fraction
        if use_click.any():
            coords = np.zeros((n, 1, 2), np.float32)
            labels = np.full((n, 1), -1, np.int64)
            for row in np.nonzero(use_click)[0]:
                click = training_click(masks[row], rng)
                if click is not None:
                    # Pixel indices, like a reader's click (the prompt encoder adds the half pixel).
                    coords[row, 0] = click[0] * size / masks[row].shape[-1]
                    labels[row, 0] = click[1]
            clicks = (torch.as_tensor(coords, device=self.device), torch.as_tensor(labels, device=self.device))
        return feats, targets, boxes, clicks

    @torch.no_grad()
    def validate(self, examples: list[CachedExample]) -> float:
        self.model.eval()
        scores = []
        for e in examples:
            _, logits, _, obj = self.model(cat_pyramids([e.features], self.device))
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
                ppn_out, logits, _, obj = self.model(feats, boxes, clicks)
                loss, parts = sam2rad_loss(logits, ppn_out.box_norm, ppn_out.mask_logits, obj, targets, cfg.loss)
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
                    state = {k: v.detach().clone() for k, v in self.model.ppn.state_dict().items()}
                    best = (row["val_dice"], epoch, state, time.perf_counter() - start)
            row["seconds"] = time.perf_counter() - start  # since fit began (benchmarks project from it)
            history.append(row)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix({k: round(v, 4) for k, v in row.items() if k not in ("epoch", "seconds")})
            self.log(json.dumps(row))
        if best[2] is not None:
            self.model.ppn.load_state_dict(best[2])
        elapsed = time.perf_counter() - start
        self.model.eval()
        return TrainResult(self.model, best[0], best[1], history, elapsed,
                           best[3] if best[2] is not None else elapsed, self.cache.misses, self.cache.hits,
                           seconds_encoding)


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
        "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1),
        "encodings": result.encodings,
    }
