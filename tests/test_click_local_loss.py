"""The click-local loss: BCE on the refined mask, weighted around each training click."""
import pytest
import torch

from sam2rad.losses import LossWeights, click_local_bce, make_targets, sam2rad_loss


def test_only_pixels_under_the_weight_count():
    logits = torch.zeros(2, 1, 8, 8, requires_grad=True)
    target = torch.zeros(2, 1, 8, 8)
    target[:, 0, 6:, 6:] = 1.0  # an error far from the click
    weight = torch.zeros(2, 1, 8, 8)
    weight[0, 0, :3, :3] = 1.0  # row 0 clicked top-left, row 1 not clicked
    loss = click_local_bce(logits, target, weight)
    loss.backward()
    grad = logits.grad[:, 0]
    assert grad[0, :3, :3].abs().sum() > 0
    assert grad[0, 3:, :].abs().sum() == 0 and grad[0, :, 3:].abs().sum() == 0
    assert grad[1].abs().sum() == 0, "an unclicked row must not count"


def test_wrong_near_the_click_costs_more_than_right_near_it():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 2:5, 2:5] = 1.0
    weight = torch.zeros(1, 1, 8, 8)
    weight[0, 0, 1:6, 1:6] = 1.0
    right = (target * 2 - 1) * 6.0
    assert click_local_bce(-right, target, weight) > 10 * click_local_bce(right, target, weight)


def test_no_clicked_row_gives_zero_and_the_weight_switches_the_part():
    logits = torch.zeros(1, 1, 16, 16)
    assert float(click_local_bce(logits, logits, torch.zeros_like(logits))) == 0.0
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:8, 4:12] = True
    targets = make_targets([mask.numpy()])
    weight = torch.ones(1, 1, 16, 16)
    args = (logits, targets.boxes_norm.clone(), logits, None, targets)
    _, off = sam2rad_loss(*args, refined_logits=logits, click_weight=weight)
    total, on = sam2rad_loss(*args, LossWeights(click_local=2.0), refined_logits=logits, click_weight=weight)
    assert "click_local" not in off and on["click_local"] > 0
    base = sum(getattr(LossWeights(), k) * v for k, v in off.items())
    assert float(total) == pytest.approx(base + 2.0 * on["click_local"], rel=1e-5)
