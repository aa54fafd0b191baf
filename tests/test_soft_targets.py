"""Soft refined-mask targets: each model pixel's covered fraction when the source is resized."""
import numpy as np
import torch

from sam2rad.data.datasets import Sample
from sam2rad.losses import make_targets, mask_coverage_in_model_space, mask_to_model_space, sam2rad_loss
from sam2rad.model import build_sam2rad
from sam2rad.train import TrainConfig, Trainer


def _band(h: int, w: int, top: int, thick: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[top:top + thick, 20:w - 20] = True
    return mask


def test_coverage_is_fractional_at_resized_edges_and_thresholds_to_the_hard_mask():
    bb = build_sam2rad("litemedsam", pretrained=False).backbone
    mask = _band(256, 320, 101, 3)  # a 3-pixel surface in a 320-wide frame: scale 0.8 into 256
    geom = bb.geometry(*mask.shape)
    cover = mask_coverage_in_model_space(mask, geom, bb.input_size, bb.input_size)
    assert cover.dtype == np.float32 and cover.min() == 0.0 and cover.max() <= 1.0
    partial = (cover > 0.01) & (cover < 0.99)
    assert partial.any(), "resizing a 3-pixel band by 0.8 must leave part-covered pixels"
    np.testing.assert_array_equal(cover >= 0.5, mask_to_model_space(mask, geom, bb.input_size, bb.input_size))
    same = bb.geometry(256, 256)
    square = _band(256, 256, 101, 3)
    assert set(np.unique(mask_coverage_in_model_space(square, same, 256, 256))) == {0.0, 1.0}


def test_the_refined_loss_uses_the_soft_target_when_given():
    hard = np.zeros((16, 16), dtype=bool)
    hard[4:6, 2:14] = True
    soft = hard.astype(np.float32)
    soft[6, 2:14] = 0.4  # a part-covered row below the band
    logits = torch.full((1, 1, 16, 16), -4.0)
    logits[..., 4:6, 2:14] = 4.0
    args = (logits, torch.zeros(1, 4), logits, None)
    _, with_hard = sam2rad_loss(*args, make_targets([hard]), refined_logits=logits)
    _, with_soft = sam2rad_loss(*args, make_targets([hard], [soft]), refined_logits=logits)
    assert with_soft["refined"] > with_hard["refined"], "the soft row must cost the hard-edged logits"
    assert with_soft["dice"] == with_hard["dice"], "only the refined mask learns the soft target"


def test_trainer_keeps_soft_targets_only_when_asked():
    rng = np.random.default_rng(0)
    mask = _band(256, 320, 101, 3)
    image = (rng.random((256, 320)) * 60 + mask * 150).astype(np.uint8)
    sample = Sample(name="band", image=image, mask=mask.astype(np.uint8), spacing_mm=None)
    for flag in (False, True):
        trainer = Trainer(TrainConfig(epochs=1, augment_copies=1, soft_targets=flag, init="none"))
        example = trainer._example(sample, 0, 0, 0, "t")
        assert (example.soft_target is not None) == flag
        if flag:
            np.testing.assert_array_equal(example.soft_target.astype(np.float32) >= 0.5, example.target)
            assert ((example.soft_target > 0) & (example.soft_target < 1)).any()
