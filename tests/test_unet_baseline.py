"""The U-Net baseline: size, shapes at odd sizes, a few steps lower the loss, determinism."""
from __future__ import annotations

import numpy as np
import torch

from sam2rad.baselines.unet import UNet, UNetConfig, UNetModel, count_parameters, train_unet
from sam2rad.data.datasets import Sample


def _tiny(seed: int, h: int = 40, w: int = 56) -> Sample:
    rng = np.random.default_rng(seed)
    image = rng.integers(30, 90, (h, w)).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    r = int(rng.integers(12, 25))
    mask[r:r + 3, 5:w - 5] = True
    image[mask] = 240
    image[r + 3:] //= 4
    return Sample(image, mask, (0.2, 0.2), f"tiny{seed}")


def test_parameter_count():
    n = count_parameters(UNet())
    assert 1_500_000 <= n <= 3_000_000, n


def test_predict_shape_odd_sizes():
    torch.manual_seed(0)
    model = UNetModel(UNet(), UNetConfig())
    for shape in [(37, 53), (101, 64), (64, 99)]:
        pred = model.predict(np.zeros(shape, np.uint8))
        assert pred.shape == shape and pred.dtype == bool
    assert model.predict(np.zeros((33, 47, 3), np.uint8)).shape == (33, 47)


def test_training_lowers_the_loss_and_is_deterministic():
    samples = [_tiny(0), _tiny(1, 44, 50)]
    a = train_unet(samples, epochs=12, seed=3, threads=1, progress=False)
    assert a.history[-1]["loss"] < a.history[0]["loss"]
    b = train_unet(samples, epochs=12, seed=3, threads=1, progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    np.testing.assert_array_equal(a.predict_logits(samples[0].image), b.predict_logits(samples[0].image))


def test_flip_averages_the_mirrored_prediction_at_odd_sizes():
    torch.manual_seed(0)
    model = UNetModel(UNet(), UNetConfig())
    image = np.random.default_rng(1).integers(0, 255, (37, 53)).astype(np.uint8)
    plain, mirrored = model.predict_logits(image), model.predict_logits(image[:, ::-1].copy())
    flip = model.predict_logits(image, flip=True)
    assert flip.shape == image.shape
    np.testing.assert_allclose(flip, 0.5 * (plain + mirrored[:, ::-1]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(flip, plain)  # random weights are not mirror-symmetric
