"""Mask refiner: a light trainable head that corrects the frozen decoder's logits at model-input
resolution, from the image itself, the encoder's embedding and the reader's clicks.

Why: the frozen SAM decoder predicts a 4x-upsampled mask from a 1/4 (or 1/16) resolution embedding
and stops at the box it is given, so thin bone surfaces come out blobby and clipped where the
predicted box is off. A plain U-Net trained on the same 10 images sees every pixel; this head gives
Sam2Rad that sight while keeping SAM's prior: it outputs a residual on the decoder's logits (zero at
initialisation, so an untrained refiner changes nothing), and clicks reach it twice, through the
decoder's point prompts and as click maps beside the image, so a reader's click moves the mask
where it was made. It runs on the cached encoding: a click never re-runs the encoder.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Decoder logits are clamped before the residual: SAM saturates far outside the box (-30 and
# below) and the refiner must be able to overturn that with a bounded correction.
LOGIT_CLAMP = 12.0


@dataclass(frozen=True)
class RefinerConfig:
    enabled: bool = True
    channels: tuple[int, int, int] = (8, 16, 32)  # at 1/1, 1/2 and 1/4 of the model input
    embed_channels: int = 32  # the encoder embedding, projected and joined at 1/4
    click_sigma_px: float = 6.0  # click maps: a Gaussian of this width (model pixels) per click
    # The refiner works on at most this side: on a 512 input (SAM2) it cost as much as the decoder
    # (auto/encoder 0.71 on CPU); the decoder's own logits are at 1/4 of the input, so 256 stays finer.
    max_side: int | None = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"refiner channels must be 3 positive widths, got {self.channels}")
        if self.click_sigma_px <= 0:
            raise ValueError("click_sigma_px must be > 0")
        if self.max_side is not None and self.max_side < 16:
            raise ValueError(f"max_side must be at least 16 (or None), got {self.max_side}")

    def to_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    groups = 4 if cout % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
    )


def click_maps(coords: torch.Tensor | None, labels: torch.Tensor | None, n: int, size: int, sigma: float,
               device: torch.device) -> torch.Tensor:
    """(N, 2, S, S): channel 0 the foreground clicks, 1 the background ones (max of Gaussians).

    coords (N, P, 2) in model pixels (x, y), labels (N, P) with 1 / 0, and -1 for no click.
    """
    maps = torch.zeros(n, 2, size, size, device=device)
    if coords is None or labels is None or coords.numel() == 0:
        return maps
    axis = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    gx = torch.exp(-((axis[None, None, :] - coords[..., 0:1] - 0.5) ** 2) / (2 * sigma ** 2))  # (N, P, S)
    gy = torch.exp(-((axis[None, None, :] - coords[..., 1:2] - 0.5) ** 2) / (2 * sigma ** 2))
    blobs = gy[..., :, None] * gx[..., None, :]  # (N, P, S, S)
    for channel, label in ((0, 1), (1, 0)):
        sel = (labels == label).to(blobs.dtype)[..., None, None]
        if sel.any():
            maps[:, channel] = (blobs * sel).amax(dim=1)
    return maps


class MaskRefiner(nn.Module):
    """A three-level U-Net over [image, decoder logits, click maps] with the embedding at 1/4."""

    def __init__(self, cfg: RefinerConfig, embed_dim: int = 256):
        super().__init__()
        self.cfg = cfg
        c1, c2, c3 = cfg.channels
        self.enc1 = _block(1 + 1 + 2, c1)
        self.enc2 = _block(c1, c2)
        self.embed_proj = nn.Conv2d(embed_dim, cfg.embed_channels, 1)
        self.enc3 = _block(c2 + cfg.embed_channels, c3)
        self.dec2 = _block(c3 + c2, c2)
        self.dec1 = _block(c2 + c1, c1)
        self.out = nn.Conv2d(c1, 1, 1)
        nn.init.zeros_(self.out.weight)  # untrained: exactly the decoder's logits
        nn.init.zeros_(self.out.bias)
        # Channels-last convolutions run about 1.3-1.5x faster forward+backward on a CPU.
        self.to(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor, logits: torch.Tensor, clicks: torch.Tensor,
                embedding: torch.Tensor) -> torch.Tensor:
        """image (N,1,S,S), logits (N,1,s,s) any side, clicks (N,2,S,S), embedding (N,D,h,w) -> (N,1,S,S)."""
        size = image.shape[-1]
        if logits.shape[-1] != size:
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        base = logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        x1 = self.enc1(torch.cat([image, base / LOGIT_CLAMP, clicks], dim=1).contiguous(memory_format=torch.channels_last))
        x2 = self.enc2(F.max_pool2d(x1, 2))
        quarter = F.max_pool2d(x2, 2)
        emb = self.embed_proj(embedding)
        if emb.shape[-2:] != quarter.shape[-2:]:
            emb = F.interpolate(emb, size=quarter.shape[-2:], mode="bilinear", align_corners=False)
        x3 = self.enc3(torch.cat([quarter, emb], dim=1))
        up2 = F.interpolate(x3, size=x2.shape[-2:], mode="bilinear", align_corners=False)
        y2 = self.dec2(torch.cat([up2, x2], dim=1))
        up1 = F.interpolate(y2, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        y1 = self.dec1(torch.cat([up1, x1], dim=1))
        return base + self.out(y1)
