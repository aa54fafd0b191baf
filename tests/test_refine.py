"""Issue 12: the mask refiner, simulated reader clicks and the few-label training plan."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2rad.checkpoint import load_checkpoint, save_checkpoint
from sam2rad.clicks import error_click
from sam2rad.data.specs import load_spec
from sam2rad.evaluate import click_statistics, evaluate_model, format_click_statistics, number_of_clicks, EvalRow
from sam2rad.model import Prompts, Sam2Rad, build_sam2rad
from sam2rad.refine import RefinerConfig, click_maps
from sam2rad.train import TrainConfig, Trainer
from sam2rad.training_plan import plan_training
from tests.band_image import speckle_band_image

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def with_refiner() -> Sam2Rad:
    """LiteMedSAM (real weights) with an untrained PPN and refiner."""
    torch.manual_seed(0)
    return build_sam2rad("litemedsam", refiner_config=RefinerConfig())


def test_untrained_refiner_is_exactly_the_decoder():
    torch.manual_seed(0)
    plain = build_sam2rad("litemedsam")
    torch.manual_seed(0)
    refined = build_sam2rad("litemedsam", refiner_config=RefinerConfig())
    refined.ppn.load_state_dict(plain.ppn.state_dict())
    image, _ = speckle_band_image(seed=3)
    a = plain.predict(image, "auto")[0]
    b = refined.predict(image, "auto")[0]
    # The residual starts at zero; only the clamp of saturated logits (beyond +-12) may differ,
    # and the mask threshold is 0, so the masks agree exactly.
    np.testing.assert_array_equal(a.masks, b.masks)


def test_refiner_works_at_most_at_max_side_and_answers_at_the_input_size(with_refiner):
    """On a large input (SAM2 at 512) the refiner runs on a smaller grid (max_side) and its logits are
    brought back to the input size, clicks scaled with the image."""
    from dataclasses import replace as dc_replace
    from types import SimpleNamespace

    model = with_refiner
    sides = []
    hook = model.refiner.enc1.register_forward_hook(lambda mod, inp, out: sides.append(inp[0].shape[-1]))
    saved = model.refiner_config
    try:
        model.refiner_config = dc_replace(saved, max_side=32)
        feats = SimpleNamespace(image=torch.rand(2, 1, 64, 64), image_embedding=torch.rand(2, 256, 16, 16))
        logits = torch.zeros(2, 1, 16, 16)
        clicks = (torch.tensor([[[40.0, 20.0]], [[0.0, 0.0]]]), torch.tensor([[1], [-1]]))
        out = model.refine(feats, logits, clicks)
        model.refiner_config = dc_replace(saved, max_side=None)
        full = model.refine(feats, logits, clicks)
    finally:
        model.refiner_config = saved
        hook.remove()
    assert sides == [32, 64]
    assert out.shape == full.shape == (2, 1, 64, 64)


def test_click_maps_mark_foreground_and_background_channels():
    coords = torch.tensor([[[10.0, 20.0], [40.0, 5.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, 0, -1]])
    maps = click_maps(coords, labels, 1, 64, 3.0, torch.device("cpu"))
    assert maps.shape == (1, 2, 64, 64)
    fg, bg = maps[0, 0], maps[0, 1]
    assert tuple(np.unravel_index(int(fg.argmax()), fg.shape)) == (20, 10)  # (row, col) = (y, x)
    assert tuple(np.unravel_index(int(bg.argmax()), bg.shape)) == (5, 40)
    assert fg[0, 0] < 1e-6 and bg[0, 0] < 1e-6, "a -1 label is no click"
    assert click_maps(None, None, 2, 8, 3.0, torch.device("cpu")).abs().sum() == 0


def test_error_click_goes_to_the_largest_error_region():
    gt = np.zeros((40, 40), bool)
    gt[10:20, 5:35] = True
    pred = gt.copy()
    pred[10:20, 20:35] = False  # a 150-pixel miss
    pred[30:33, 0:5] = True  # a 15-pixel false region
    (x, y), label = error_click(pred, gt)
    assert label == 1 and 20 <= x < 35 and 10 <= y < 20
    pred = gt.copy()
    pred[25:38, 5:35] = True  # now the false region is the largest
    (x, y), label = error_click(pred, gt)
    assert label == 0 and 25 <= y < 38


def _train_short(samples, **overrides):
    cfg = TrainConfig.from_dict(dict(epochs=2, batch_size=2, augment_copies=1, val_every=100, seed=0,
                                     click_fraction=1.0, **overrides))
    return Trainer(cfg).fit(samples, [], progress=False)


def test_refiner_trains_with_click_rows_and_checkpoint_round_trips(tmp_path):
    samples = load_spec("synthetic:2:5:128")[0]
    result = _train_short(samples)
    model = result.model
    assert model.refiner is not None
    assert float(model.refiner.out.weight.detach().abs().sum()) > 0, "the refiner's output layer learned nothing"
    assert np.isnan(result.best_val_dice) and result.best_epoch == 2  # no validation: final weights
    path = save_checkpoint(model, tmp_path / "m.safetensors").backbone_name and tmp_path / "m.safetensors"
    loaded = load_checkpoint(path)
    assert loaded.refiner is not None
    image = samples[0].image
    a, b = model.predict(image, "auto")[0], loaded.predict(image, "auto")[0]
    np.testing.assert_array_equal(a.masks, b.masks)


@pytest.fixture(scope="module")
def shipped() -> Sam2Rad:
    return load_checkpoint()  # the demo checkpoint, trained with the current recipe


def _window(mask: np.ndarray, x: int, y: int, r: int = 5) -> int:
    return int(mask[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].sum())


def test_clicks_add_and_remove_area_where_made_without_reencoding(shipped):
    """On the shipped model: a foreground click on a missed part adds area there, a background
    click on a false part removes area there, and neither re-runs the encoder."""
    model = shipped
    grown = shrunk = 0
    for sample in load_spec("synthetic:6:11")[0]:
        gt = sample.mask != 0
        model.clear_cache()
        calls = model.encoder_calls
        auto = model.predict(sample.image, "auto")[0].masks[0]
        for label, error in ((1, gt & ~auto), (0, auto & ~gt)):
            if error.sum() < 20:
                continue
            # The innermost pixel of the largest missed (or false) region, as a reader clicks.
            (x, y), _ = error_click(np.zeros_like(error), error)
            x, y = int(x), int(y)
            after = model.predict(sample.image, "semi", Prompts(points=[[x, y]], labels=[label]))[0].masks[0]
            if label == 1:
                grown += _window(after, x, y) > _window(auto, x, y)
            else:
                shrunk += _window(after, x, y) < _window(auto, x, y)
        assert model.encoder_calls == calls + 1, "clicks must not re-run the encoder"
    assert grown >= 3, f"a foreground click grew the mask where it was made on only {grown} images"
    assert shrunk >= 1, "no background click removed area where it was made"


def test_noc_counts_clicks_until_the_threshold():
    def row(name, clicks, dice, mode="semi_click"):
        return EvalRow(name, "bone", mode if clicks else "auto", dice, dice, 1.0, 1.0, "mm", clicks)
    rows = [row("a", 0, 0.95), row("a", 1, 0.96), row("a", 2, 0.96),
            row("b", 0, 0.50), row("b", 1, 0.80), row("b", 2, 0.91),
            row("c", 0, 0.40), row("c", 1, 0.30), row("c", 2, 0.50)]
    assert number_of_clicks(rows, 0.90) == pytest.approx((0 + 2 + 2) / 3)  # c never reaches it: capped
    assert number_of_clicks(rows, 0.85) == pytest.approx((0 + 2 + 2) / 3)
    stats = click_statistics(rows)
    assert stats["n_weak"] == 2
    assert stats["first_click_gain_weak"] == pytest.approx(((0.80 - 0.50) + (0.30 - 0.40)) / 2)
    assert stats["first_click_worse_fraction"] == pytest.approx(1 / 3)
    assert stats["noc_cap"] == 2 and "capped at 2 clicks" in format_click_statistics(stats)


def test_evaluate_with_clicks_writes_one_row_per_click(with_refiner):
    samples = load_spec("synthetic:1:9:128")[0]
    calls = with_refiner.encoder_calls
    rows = evaluate_model(with_refiner, samples, ["auto", "manual_gt_box", "semi_click"], clicks=3)
    assert [r.clicks for r in rows if r.mode == "semi_click"] == [1, 2, 3]
    assert {r.mode for r in rows} == {"auto", "manual_gt_box", "semi_click"}
    assert with_refiner.encoder_calls == calls + 1, "one encoding per image, whatever the clicks"


def test_few_labels_train_on_everything_by_default():
    samples = load_spec("synthetic:12:2:64")[0]
    plan = plan_training(samples)
    assert len(plan.train) == 12 and plan.val == [] and "fixed schedule" in plan.note
    plan = plan_training(samples, val_fraction=0.25)
    assert len(plan.train) == 9 and len(plan.val) == 3
    many = load_spec("synthetic:25:2:64")[0]
    plan = plan_training(many)
    assert len(plan.train) == 20 and len(plan.val) == 5


def test_feature_warp_moves_encoding_refiner_input_and_masks_together():
    from sam2rad.augment import warp_rows
    from sam2rad.backbones.base import FeaturePyramid
    import torch.nn.functional as F

    img = torch.zeros(2, 1, 64, 64)
    img[:, :, 20:30, 10:50] = 1.0
    emb = F.avg_pool2d(img, 4).repeat(1, 8, 1, 1)
    feats = FeaturePyramid(emb, [emb[:, :4], F.avg_pool2d(img, 2).repeat(1, 3, 1, 1)], None, img.clone())
    masks = [img[i, 0].numpy() > 0.5 for i in range(2)]
    warped, moved = warp_rows(feats, masks, np.random.default_rng(3), probability=1.0, shift=0.1)
    for i in range(2):
        image_mask = warped.image[i, 0].numpy() > 0.5
        assert (image_mask ^ moved[i]).sum() <= 0.02 * moved[i].sum()  # same transform for both
        assert (moved[i] ^ masks[i]).sum() > 0  # and it did move
        up = F.interpolate(warped.image_embedding[i:i + 1, :1], size=64, mode="bilinear")[0, 0].numpy() > 0.5
        assert (up & moved[i]).sum() / (up | moved[i]).sum() > 0.85
    same, kept = warp_rows(feats, masks, np.random.default_rng(3), probability=0.0)
    assert same is feats and kept is masks
