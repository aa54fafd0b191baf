"""Training augmentation: what changes between scanners, probes, presets and readers' framing.

Ultrasound differs between sites mostly in how the image is formed, not in what it shows: gain and
time-gain compensation (brightness that changes with depth), dynamic range and grey map (the
intensity curve), speckle size (probe frequency, lateral resolution), and framing (depth, zoom,
probe angle). A model trained on 10 images of one scanner meets the others only through these
transforms. Deterministic for a given generator, so cached (image, augmentation) encodings can be
reused.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def _geometric(img: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip, zoom, rotation and shift, one affine warp for image (bilinear) and mask (nearest)."""
    if rng.random() < 0.5:
        img, m = img[:, ::-1], m[:, ::-1]
    h, w = img.shape[:2]
    zoom = rng.uniform(0.8, 1.2)
    angle = math.radians(rng.uniform(-12, 12))
    dy, dx = rng.uniform(-0.08, 0.08, 2) * (h, w)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    # affine_grid works in normalised coordinates; the aspect ratio keeps rotations rigid.
    theta = torch.tensor([[cos, -sin * h / w, -2 * dx / w], [sin * w / h, cos, -2 * dy / h]],
                         dtype=torch.float32)[None]
    grid = F.affine_grid(theta, (1, 1, h, w), align_corners=False)
    t_img = torch.from_numpy(np.ascontiguousarray(img)).reshape(1, h, w, -1).permute(0, 3, 1, 2)
    img = F.grid_sample(t_img, grid, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    m = F.grid_sample(torch.from_numpy(np.ascontiguousarray(m))[None, None], grid, mode="nearest",
                      align_corners=False)[0, 0].numpy()
    return img, m


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain, depth gain (TGC), grey map, speckle grain and blur on a float image in [0, 255]."""
    h = img.shape[0]
    x = img / 255.0
    # Time-gain compensation set differently: brightness ramps up or down with depth.
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    x = x * np.exp(rng.uniform(-0.5, 0.5) * ramp) * rng.uniform(0.75, 1.3)
    # Speckle grain: a finer or coarser texture, as another probe frequency gives.
    if rng.random() < 0.5:
        sigma = rng.uniform(0.4, 1.2)
        x = ndimage.gaussian_filter(x, (sigma, sigma, 0))
    if rng.random() < 0.3:
        x = x * (1 + rng.uniform(0.05, 0.2) * rng.standard_normal(x.shape).astype(np.float32))
    # Grey map / dynamic range: gamma and a soft contrast curve.
    x = np.clip(x, 0, 1) ** rng.uniform(0.65, 1.5)
    if rng.random() < 0.5:
        k = rng.uniform(2.0, 6.0)
        lo, hi = 1 / (1 + math.exp(k / 2)), 1 / (1 + math.exp(-k / 2))
        x = (1 / (1 + np.exp(-k * (x - 0.5))) - lo) / (hi - lo)
    return np.clip(255 * x, 0, 255)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An augmented (image, mask) pair: uint8 image of the input's shape, bool mask."""
    img, m = _geometric(image.astype(np.float32), mask.astype(np.float32), rng)
    img = _photometric(img, rng).astype(np.uint8)
    img = img[..., 0] if image.ndim == 2 else img
    return img, m > 0.5


def jitter_refiner_input(image: torch.Tensor, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Fresh per-step changes of the refiner's grey input (N, 1, S, S), in place of re-encoding.

    The encoder's features come from a few cached augmented copies, but the refiner also reads the
    pixels themselves, and with 10 images it learns their exact grey levels and speckle. Every step
    each row gets its own grey curve (gamma), depth-dependent gain, multiplicative speckle and
    sometimes a blur, mapped back into the row's value range. The padding (0 after normalisation)
    changes with the rest, so the refiner cannot key on its exact value. strength 0 returns the input
    unchanged.
    """
    if strength <= 0:
        return image
    n, device = image.shape[0], image.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)).to(device)

    low = image.amin(dim=(1, 2, 3), keepdim=True)
    span = (image.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
    x = (image - low) / span
    x = x.clamp(0, 1) ** torch.exp(uniform(-0.5, 0.5) * strength)  # gamma 0.6 .. 1.65
    depth = torch.linspace(-0.5, 0.5, image.shape[-2], device=device)[None, None, :, None]
    x = x * (1 + uniform(-0.6, 0.6) * strength * depth)  # time-gain compensation
    noise = torch.randn(image.shape, generator=generator).to(device)
    x = x * (1 + uniform(0.0, 0.25) * strength * noise)  # speckle
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = torch.where(uniform(0, 1) < 0.3, blurred, x)
    return low + x.clamp(0, 1.5) * span


def warp_rows(feats: "FeaturePyramid", masks: list[np.ndarray], rng: np.random.Generator, probability: float,
              zoom: float = 0.12, shift: float = 0.06, degrees: float = 8.0) -> tuple["FeaturePyramid", list[np.ndarray]]:
    """A fresh small affine warp per image, applied to its cached encoding and its target masks alike.

    Why: encoding is what a training step cannot afford, so each image has only a few encoded
    augmented copies, and the PPN and refiner learn their exact framing. The encoder's feature maps
    shift and scale nearly with the image (convolutions and local attention), so warping every level
    of the pyramid, the refiner's grey input and the masks by the same small transform gives new
    framings each step for the cost of a grid_sample. Rows repeat per class (image-major), as masks do.
    """
    from .backbones.base import FeaturePyramid

    n = feats.batch_size
    per_image = len(masks) // max(n, 1)
    theta = torch.eye(2, 3).repeat(n, 1, 1)
    for i in range(n):
        if rng.random() >= probability:
            continue
        z = rng.uniform(1 - zoom, 1 + zoom)
        a = math.radians(rng.uniform(-degrees, degrees))
        tx, ty = rng.uniform(-shift, shift, 2) * 2  # normalised coordinates span 2
        cos, sin = math.cos(a) / z, math.sin(a) / z
        theta[i] = torch.tensor([[cos, -sin, tx], [sin, cos, ty]])
    moved = theta.sub(torch.eye(2, 3)).abs().sum(dim=(1, 2)) > 0
    if not moved.any():
        return feats, masks

    def warp(t: torch.Tensor, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
        th = theta.to(t.device, t.dtype).repeat_interleave(t.shape[0] // n, dim=0)
        grid = F.affine_grid(th, list(t.shape), align_corners=False)
        return F.grid_sample(t, grid, mode=mode, padding_mode=padding, align_corners=False)

    warped = FeaturePyramid(warp(feats.image_embedding), [warp(lvl) for lvl in feats.levels],
                            None if feats.high_res is None else [warp(h) for h in feats.high_res],
                            None if feats.image is None else warp(feats.image))
    stack = torch.as_tensor(np.stack(masks).astype(np.float32))[:, None]
    if per_image > 1:
        stack = stack.reshape(n, per_image, *stack.shape[-2:])
        out = warp(stack, padding="zeros").reshape(n * per_image, *stack.shape[-2:])
    else:
        out = warp(stack, padding="zeros")[:, 0]
    return warped, [m for m in (out.numpy() > 0.5)]
