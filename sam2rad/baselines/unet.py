"""The plain baseline: a small U-Net trained from scratch on the same few labelled images.

16 base channels, 4 down-sampling levels (16-32-64-128, bottleneck 256), two 3x3 convolutions with
GroupNorm and ReLU per block: about 1.9 M parameters. Trained at the source resolution (each batch
padded with zeros to a multiple of 16), Dice + BCE loss, AdamW with a short warm-up and a cosine
schedule, fresh random augmentation every step from the same family as the Sam2Rad recipe
(`sam2rad.augment.augment`: flip, zoom, rotation, shift, gain, depth gain, grey map, speckle, blur).
Deterministic for a seed and a thread count on the CPU.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sam2rad.train import augment

MULTIPLE = 16  # 2 ** levels


def _block(cin: int, cout: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Input (B, 1, H, W) with H, W multiples of 16 -> logits (B, 1, H, W)."""

    def __init__(self, base: int = 16, levels: int = 4, in_channels: int = 1):
        super().__init__()
        chans = [base * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList([_block(in_channels, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(levels)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(levels))])
        self.dec = nn.ModuleList([_block(2 * chans[i], chans[i]) for i in reversed(range(levels))])
        self.head = nn.Conv2d(chans[0], 1, 1)
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return image if image.ndim == 2 else image.mean(axis=2).astype(np.uint8)


def _to_batch(images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None):
    """Zero-pad to a shared size, a multiple of 16 (bottom/right); images scaled to about unit range."""
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    h, w = math.ceil(h / MULTIPLE) * MULTIPLE, math.ceil(w / MULTIPLE) * MULTIPLE
    x = np.zeros((len(images), 1, h, w), np.float32)
    y = np.zeros((len(images), 1, h, w), np.float32)
    for k, img in enumerate(images):
        x[k, 0, : img.shape[0], : img.shape[1]] = (img.astype(np.float32) / 255.0 - 0.4) / 0.25
        if masks is not None:
            y[k, 0, : img.shape[0], : img.shape[1]] = masks[k]
    return torch.from_numpy(x), torch.from_numpy(y)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice (per image, averaged): the usual loss for thin structures."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + (1 - dice).mean()


@dataclass
class UNetConfig:
    epochs: int = 300
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.03
    base: int = 16
    levels: int = 4
    seed: int = 0
    threads: int | None = 2
    device: str = "cpu"  # "cuda" for the benchmark's GPU runs; augmentation stays on the CPU


@dataclass
class UNetModel:
    net: UNet
    config: UNetConfig
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @torch.no_grad()
    def predict_logits(self, image: np.ndarray, flip: bool = False) -> np.ndarray:
        """flip: also run the left-right mirrored image and average the two logit maps (the same
        test-time flip Sam2Rad offers, so the two models' flip rows compare like with like)."""
        img = _grey(image)
        self.net.eval()

        def run(grey: np.ndarray) -> torch.Tensor:
            x, _ = _to_batch([grey])
            x = x.to(self.config.device).contiguous(memory_format=torch.channels_last)
            return self.net(x)[0, 0, : grey.shape[0], : grey.shape[1]]

        logits = run(img)
        if flip:  # mirror the image itself, not the padded batch, so padding stays bottom/right
            logits = 0.5 * (logits + run(np.ascontiguousarray(img[:, ::-1])).flip(-1))
        return logits.cpu().numpy()

    def predict(self, image: np.ndarray, flip: bool = False) -> np.ndarray:
        """uint8 (H, W) or (H, W, 3) image -> bool (H, W) mask."""
        return self.predict_logits(image, flip) > 0


def train_unet(samples, epochs: int = 300, seed: int = 0, threads: int | None = 2, progress: bool = True,
               config: UNetConfig | None = None, device: str = "cpu") -> UNetModel:
    """Train from scratch on `samples` (objects with .image and .mask; foreground = nonzero).
    One epoch is one pass over the images in batches of `batch_size`, each drawn with a fresh
    augmentation (copy of the image unchanged with probability 0: every step augments)."""
    cfg = config or UNetConfig(epochs=epochs, seed=seed, threads=threads, device=device)
    if not samples:
        raise ValueError("no training images")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    images = [_grey(s.image) for s in samples]
    masks = [np.asarray(s.mask) != 0 for s in samples]
    net = UNet(cfg.base, cfg.levels).to(cfg.device, memory_format=torch.channels_last)  # ~1.4x faster on CPU
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, int(cfg.warmup_fraction * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    model = UNetModel(net, cfg)
    start = time.perf_counter()
    epochs_iter = range(1, cfg.epochs + 1)
    if progress:
        from tqdm.auto import tqdm

        epochs_iter = tqdm(epochs_iter, desc="unet", unit="epoch", dynamic_ncols=True)
    for epoch in epochs_iter:
        net.train()
        order = rng.permutation(len(images))
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            pairs = [augment(images[i], masks[i], rng) for i in idx]
            x, y = _to_batch([p[0] for p in pairs], [p[1] for p in pairs])
            x = x.to(cfg.device).contiguous(memory_format=torch.channels_last)
            loss = dice_bce_loss(net(x), y.to(cfg.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        model.history.append({"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - start})
        if progress and hasattr(epochs_iter, "set_postfix"):
            epochs_iter.set_postfix(loss=round(model.history[-1]["loss"], 4))
    model.seconds = time.perf_counter() - start
    net.eval()
    return model
