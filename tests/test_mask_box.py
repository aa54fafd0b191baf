"""The second-pass box (auto and semi take the decoder's box from the first mask's extent) and the
refiner-input jitter of training."""
from __future__ import annotations

import math

import numpy as np
import torch

from sam2rad.augment import jitter_refiner_input
from sam2rad.mask_box import boxes_from_logits


def test_box_is_the_masks_extent_plus_the_margin_in_model_pixels():
    logits = torch.full((2, 1, 64, 64), -5.0)
    logits[0, 0, 10:20, 30:41] = 3.0  # rows 10..19, columns 30..40 of a 64-pixel side
    boxes = boxes_from_logits(logits, input_size=256, margin_px=8)
    assert boxes[0].tolist() == [30 * 4 - 8, 10 * 4 - 8, 41 * 4 + 8, 20 * 4 + 8]
    assert all(math.isnan(v) for v in boxes[1].tolist())  # empty mask: the caller keeps its own box


def test_box_is_clipped_to_the_model_input():
    logits = torch.full((1, 1, 32, 32), -1.0)
    logits[0, 0, 0:4, 28:32] = 1.0
    assert boxes_from_logits(logits, input_size=32, margin_px=8)[0].tolist() == [20.0, 0.0, 32.0, 12.0]


def test_semi_mode_computes_the_second_pass_box_once_per_encoding():
    from sam2rad.checkpoint import load_checkpoint
    from sam2rad.model import Prompts

    model = load_checkpoint(None)
    image = np.zeros((96, 128), dtype=np.uint8)
    image[50:56, 20:110] = 220
    auto = model.predict(image, "auto")[0]
    encoded = model.encoder_calls
    calls = []
    original = model._mask_boxes
    model._mask_boxes = lambda out: calls.append(1) or original(out)
    first = model.predict(image, "semi", Prompts(points=[(60, 52)], labels=[1]))[0]
    model.predict(image, "semi", Prompts(points=[(60, 52), (100, 80)], labels=[1, 0]))
    assert model.encoder_calls == encoded and len(calls) == 1
    np.testing.assert_allclose(first.boxes, auto.boxes, atol=1e-4)  # the predicted prompt is auto's box
    model.box_from_mask_margin_px = None  # the one-pass path still works
    assert model.predict(image, "auto")[0].masks.shape == (1, 96, 128)


def test_refiner_jitter_changes_grey_levels_within_each_rows_range():
    image = torch.full((3, 1, 32, 32), -2.0)  # each row's minimum
    image[:, :, :24, :24] = torch.linspace(-1.0, 2.0, 24)
    gen = torch.Generator().manual_seed(0)
    out = jitter_refiner_input(image, gen, 1.0)
    assert out.shape == image.shape and not torch.equal(out, image)
    assert torch.equal(out[:, :, 26:, 26:], image[:, :, 26:, 26:])  # the minimum stays (away from a blur)
    assert out.min() >= -2.0 - 1e-6 and out.max() <= -2.0 + 1.5 * 4.0 + 1e-5  # within the row's range
    assert not torch.equal(out[0], out[1])  # each row its own change
    again = jitter_refiner_input(image, torch.Generator().manual_seed(0), 1.0)
    assert torch.equal(out, again)  # deterministic for a seed
    assert torch.equal(jitter_refiner_input(image, gen, 0.0), image)
