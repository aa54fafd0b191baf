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


def test_semi_mode_reuses_autos_second_pass_box_or_makes_it_once_per_encoding():
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
    assert model.encoder_calls == encoded and len(calls) == 0  # auto kept its boxes with the encoding
    np.testing.assert_allclose(first.boxes, auto.boxes, atol=1e-4)  # the predicted prompt is auto's box
    model.clear_cache()  # semi without an auto before it: the second-pass box is made once
    model.predict(image, "semi", Prompts(points=[(60, 52)], labels=[1]))
    again = model.predict(image, "semi", Prompts(points=[(60, 52), (100, 80)], labels=[1, 0]))[0]
    assert len(calls) == 1
    np.testing.assert_allclose(again.boxes, auto.boxes, atol=1e-4)
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


def test_training_prompts_chosen_rows_with_the_first_masks_box_and_keeps_the_others():
    """Trainer._with_mask_boxes: the rows asked for get their first-pass mask's box (as auto's second
    pass and semi's clicks get it at inference); ground-truth rows, unchosen rows and rows whose
    first mask is empty keep the box they had."""
    from types import SimpleNamespace

    from sam2rad.train import Trainer

    logits = torch.full((3, 1, 64, 64), -4.0)
    logits[0, 0, 8:16, 8:24] = 2.0
    logits[1, 0, 40:50, 30:40] = 2.0  # row 2's first mask is empty
    seen = {}

    def first_pass(feats, boxes):
        seen["boxes"] = boxes.clone()
        return SimpleNamespace(logits=logits)

    model = SimpleNamespace(backbone=SimpleNamespace(input_size=256), box_from_mask_margin_px=4.0)
    trainer = Trainer.__new__(Trainer)
    trainer.model = lambda feats, boxes: first_pass(feats, boxes)
    trainer.model.backbone, trainer.model.box_from_mask_margin_px = model.backbone, 4.0
    nan = float("nan")
    boxes = torch.tensor([[nan] * 4, [1.0, 2.0, 3.0, 4.0], [nan] * 4])  # row 1: a ground-truth box
    out = trainer._with_mask_boxes(None, boxes, torch.tensor([True, False, True]))
    assert out[0].tolist() == [8 * 4 - 4, 8 * 4 - 4, 24 * 4 + 4, 16 * 4 + 4]
    assert out[1].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert torch.isnan(out[2]).all()  # empty first mask: the PPN's own box stays
    assert torch.equal(torch.isnan(seen["boxes"]), torch.isnan(boxes))  # the first pass got the same prompts


def test_a_foreground_click_outside_the_box_grows_the_box_to_hold_it():
    from sam2rad.mask_box import grow_boxes_to_clicks

    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0], [10.0, 10.0, 50.0, 50.0], [10.0, 10.0, 50.0, 50.0]])
    coords = torch.tensor([[[80.0, 30.0], [0.0, 0.0]],    # add-click right of the box, then nothing
                           [[5.0, 70.0], [60.0, 2.0]],    # remove-click (label 0), then an add-click above-right
                           [[30.0, 30.0], [0.0, 0.0]]])   # add-click inside: the box stays
    labels = torch.tensor([[1, -1], [0, 1], [1, -1]])
    grown = grow_boxes_to_clicks(boxes, coords, labels, margin_px=4)
    assert grown[0].tolist() == [10.0, 10.0, 85.0, 50.0]  # x1 = 80 + 1 + 4
    assert grown[1].tolist() == [10.0, -2.0, 65.0, 50.0]  # the remove-click does not grow it
    assert grown[2].tolist() == [10.0, 10.0, 50.0, 50.0]


def test_auto_drops_mask_parts_far_smaller_than_the_main_one():
    from sam2rad.mask_parts import drop_small_parts

    mask = np.zeros((40, 40), bool)
    mask[5:15, 5:25] = True  # the structure: 200 px
    mask[30:34, 30:34] = True  # 16 px: under a tenth, dropped
    mask[20:25, 2:7] = True  # 25 px: kept
    out = drop_small_parts(mask, 0.1)
    assert out[5:15, 5:25].all() and out[20:25, 2:7].all() and not out[30:34, 30:34].any()
    assert out.sum() == 225
    assert drop_small_parts(np.zeros((4, 4), bool)).sum() == 0


def test_auto_drops_mask_parts_far_weaker_than_the_main_one():
    from sam2rad.mask_parts import drop_small_parts

    logits = np.full((40, 40), -5.0)
    logits[5:15, 5:25] = 9.0  # the structure
    logits[20:25, 2:12] = 3.0  # a large but weak part: under half the structure's mean logit
    logits[30:34, 20:35] = 6.0  # a second piece as sure as a third of the bone is: kept
    mask = logits > 0
    out = drop_small_parts(mask, 0.1, logits)
    assert out[5:15, 5:25].all() and out[30:34, 20:35].all() and not out[20:25, 2:12].any()
    assert np.array_equal(drop_small_parts(mask, 0.1), mask)  # without logits: by size only
    assert np.array_equal(drop_small_parts(mask, 0.1, logits, min_confidence=0), mask)
    # The threshold is where a logit counts as mask: strength is measured above it.
    assert not drop_small_parts(logits > 3.5, 0.1, logits, threshold=3.5)[30:34, 20:35].any()
