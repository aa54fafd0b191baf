"""A bright curved band in speckle: the simplest bone-surface-like test image."""
from __future__ import annotations

import numpy as np


def speckle_band_image(size: int = 256, seed: int = 7, curvature: float = 0.12,
                       thickness: float = 0.025) -> tuple[np.ndarray, np.ndarray]:
    """Returns (uint8 image, bool band mask); the band sits above an acoustic shadow."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre_y = 0.55 * size + curvature * size * np.sin(np.pi * (xx - 0.2 * size) / (0.6 * size))
    span = (xx > 0.2 * size) & (xx < 0.8 * size)
    band = (np.abs(yy - centre_y) < thickness * size) & span
    speckle = rng.rayleigh(0.25, (size, size)).astype(np.float32)
    img = 0.35 * speckle + 0.65 * band + 0.05 * np.exp(-yy / size)
    img[(yy > centre_y + 0.03 * size) & span] *= 0.3  # acoustic shadow under the surface
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), band
