"""Issue 3 acceptance: few-shot training, feature cache, checkpoints and their model card, evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sam2rad.backbones import build_backbone
from sam2rad.checkpoint import CheckpointError, load_checkpoint, read_card, save_checkpoint
from sam2rad.data.specs import load_spec
from sam2rad.evaluate import evaluate_model, simulated_click, summarise
from sam2rad.model import build_sam2rad
from sam2rad.train import TrainConfig, Trainer, augmented_copy, cat_pyramids, training_click

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def ten_images():
    return load_spec("synthetic:10:3")[0]


@pytest.fixture(scope="module")
def trained(ten_images):
    """A short 10-image run on LiteMedSAM (real weights)."""
    cfg = TrainConfig(epochs=6, batch_size=5, augment_copies=1, val_every=3, lr=1e-3, seed=0)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    result = trainer.fit(ten_images[:8], ten_images[8:], progress=False)
    trainer.encoder_calls_after_fit = trainer.model.encoder_calls
    return trainer, result, before


def test_ten_image_training_lowers_loss_and_leaves_backbone(trained):
    trainer, result, before = trained
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 6
    # The loss falls: the lowest epoch is one of the last two, well below the first. (Rows prompted
    # with the model's own first-mask box make the epoch losses a little noisy, so not strictly.)
    # The run starts from the shipped pretrained start, so how far it can fall depends on that start:
    # from the 300-image start 6 epochs took off more than 20 %, from the 600-image start 17 %.
    # (A random start would fall further but leaves empty masks after 6 epochs, and the confidence
    # test below needs real ones.)
    assert min(losses[-2:]) == min(losses) and losses[-1] < 0.88 * losses[0], losses
    for name, value in trainer.model.backbone.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert [h["epoch"] for h in result.history if "val_dice" in h] == [3, 6]
    assert 0 <= result.best_val_dice <= 1


def test_feature_cache_encodes_each_image_once(trained):
    trainer, result, _ = trained
    # 8 training + 2 validation images, one copy each: encoded once, reused for all 6 epochs.
    assert result.encodings == 10
    # The confidence reference scores the cache's encodings of the training images: no encoder pass.
    assert trainer.encoder_calls_after_fit == 0 and trainer.model.confidence_reference.n_images == 8


def test_without_cache_every_step_and_validation_re_encodes(ten_images):
    # The benchmark's baseline: 2 epochs x 2 training images + 2 validations x 1 image.
    cfg = TrainConfig(epochs=2, batch_size=2, augment_copies=1, val_every=1, cache="none")
    result = Trainer(cfg).fit(ten_images[:2], ten_images[2:3], progress=False)
    assert result.encodings == 6 and result.cache_hits == 0
    assert [h["epoch"] for h in result.history if "val_dice" in h] == [1, 2]


def test_disk_cache_round_trip(tmp_path, ten_images):
    model = build_sam2rad("litemedsam")
    cfg = TrainConfig(epochs=1, batch_size=2, augment_copies=1, cache="disk", cache_dir=str(tmp_path / "cache"))
    first = Trainer(cfg, model=model)
    ex1 = first._example(ten_images[0], 0, 0, 0, "t")
    assert first.cache.misses == 1 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    second = Trainer(cfg, model=model)
    ex2 = second._example(ten_images[0], 0, 0, 0, "t")
    assert second.cache.hits == 1 and second.cache.misses == 0
    assert torch.equal(ex1.features.image_embedding, ex2.features.image_embedding)
    for a, b in zip(ex1.features.levels, ex2.features.levels):
        assert torch.equal(a, b)


def test_checkpoint_round_trip_gives_identical_predictions(trained, tmp_path, ten_images):
    trainer, result, _ = trained
    path = tmp_path / "ppn.safetensors"
    card = save_checkpoint(trainer.model, path, training={"n_train": 8}, metrics={"val": result.best_val_dice})
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert json.loads(path.with_suffix(".json").read_text())["backbone_fingerprint"] == card.backbone_fingerprint
    loaded = load_checkpoint(path, backbone=trainer.model.backbone)
    image = ten_images[9].image
    a = trainer.model.predict(image)[0]
    b = loaded.predict(image)[0]
    assert np.array_equal(a.masks, b.masks)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-5)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    # the checkpoint holds the PPN only: small, no backbone tensors
    assert path.stat().st_size < 25e6
    assert read_card(path).ppn_config == trainer.model.ppn.cfg.to_dict()


def test_training_records_the_lowest_score_on_its_own_images_and_the_card_keeps_it(trained, tmp_path, ten_images):
    trainer, _, _ = trained
    ref = trainer.model.confidence_reference
    scores = [float(p.scores[0]) for p in trainer.model.predict([s.image for s in ten_images[:8]])]
    assert ref.n_images == 8 and ref.floor == pytest.approx(min(scores), abs=1e-4)
    assert ref.median == pytest.approx(float(np.median(scores)), abs=1e-4) and 0 < ref.floor <= ref.median <= 1
    path = tmp_path / "ppn.safetensors"
    save_checkpoint(trainer.model, path)
    assert read_card(path).confidence["floor"] == pytest.approx(ref.floor, abs=1e-4)
    assert load_checkpoint(path, backbone=trainer.model.backbone).confidence_reference == \
        type(ref).from_dict(ref.to_dict())


def test_augmented_copy_rebuilds_the_copies_the_trainer_caches(ten_images):
    # benchmarks/bench_confidence.py rebuilds a checkpoint's training copies with it.
    trainer = Trainer(TrainConfig(augment_copies=3, seed=4))
    sample = ten_images[0]
    trainer._examples([sample], 3, 4, "t")
    copies = [augmented_copy(sample, 0, c, 4, 1) for c in range(3)]
    for c, (image, masks) in enumerate(copies):
        assert trainer.cache.key(image, f"t:{sample.name}:{c}:4") in trainer.cache.memory
        assert masks.shape == (1, *image.shape[:2]) and masks.dtype == bool and masks.any()
    assert copies[0][0] is sample.image and not np.array_equal(copies[1][0], copies[2][0])
    assert np.array_equal(augmented_copy(sample, 0, 2, 4, 1)[0], copies[2][0])  # the same on every call


def test_mismatched_backbone_fingerprint_is_refused(tmp_path):
    sam2_model = build_sam2rad("sam2.1_hiera_t", pretrained=False, input_size=512, seed=0)
    path = tmp_path / "sam2_ppn.safetensors"
    save_checkpoint(sam2_model, path)
    other = build_backbone("sam2.1_hiera_t", pretrained=False, input_size=512, seed=1)
    with pytest.raises(CheckpointError, match="trained on backbone sam2.1_hiera_t@512:random-seed0"):
        load_checkpoint(path, backbone=other)
    # the same architecture and seed is accepted
    assert load_checkpoint(path).backbone.fingerprint == "sam2.1_hiera_t@512:random-seed0"
    bad_card = path.with_suffix(".json")
    bad_card.write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed model card"):
        load_checkpoint(path)


def test_training_config_errors():
    with pytest.raises(ValueError, match="unknown training options: bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="cache_dir"):
        TrainConfig.from_dict({"cache": "disk"})
    with pytest.raises(ValueError, match="no training images"):
        Trainer(TrainConfig(epochs=1), model=build_sam2rad("sam2.1_hiera_t", pretrained=False, input_size=512)).fit([], [])
    with pytest.raises(ValueError, match="synthetic:N"):
        load_spec("synthetic:x")


def test_simulated_click_targets_largest_error():
    gt = np.zeros((40, 40), bool)
    gt[10:30, 5:35] = True
    pred = gt.copy()
    pred[10:30, 20:35] = False  # the model missed the right half
    (x, y), label = simulated_click(pred, gt)
    assert label == 1 and 20 <= x < 35 and 10 <= y < 30
    (x, y), label = simulated_click(gt | np.pad(np.ones((5, 5), bool), ((0, 35), (0, 35))), gt)
    assert label == 0 and x < 5 and y < 5


def test_evaluate_demo_checkpoint_beats_box_baseline():
    """The shipped checkpoint on held-out generated images: auto >= the ground-truth-box baseline."""
    model = load_checkpoint()
    samples = load_spec("synthetic:6:7")[0]
    summary = {s["mode"]: s for s in summarise(evaluate_model(model, samples))}
    assert set(summary) == {"auto", "manual_gt_box", "semi_click"}
    assert summary["auto"]["unit"] == "mm"
    assert summary["auto"]["dice_mean"] >= summary["manual_gt_box"]["dice_mean"]


def test_training_click_lands_on_or_beside_the_structure():
    mask = np.zeros((64, 64), bool)
    mask[30:34, 10:50] = True
    rng = np.random.default_rng(0)
    labels = []
    for _ in range(200):
        (x, y), label = training_click(mask, rng)
        labels.append(label)
        assert mask[int(y), int(x)] == bool(label)
        if label == 0:  # a background click stays near the structure, inside its grown box
            assert 20 <= y <= 44 and 0 <= x <= 60
    assert 0.15 < 1 - np.mean(labels) < 0.45  # about 30% background clicks
    assert training_click(np.zeros((8, 8), bool), rng) is None


def test_forward_with_clicks_decodes_clicked_rows_like_semi_mode(trained):
    """Rows without a click are decoded as before; a clicked row gets the point token in front of its
    box (grown to hold an add-click) and extra tokens, which is what semi mode feeds the decoder."""
    trainer, _, _ = trained
    model = trainer.model.eval()
    examples = trainer._examples(load_spec("synthetic:3:5")[0], 1, 0, "clicks")
    feats = cat_pyramids([e.features for e in examples])
    coords = torch.tensor([[[100.0, 120.0]], [[0.0, 0.0]], [[40.0, 60.0]]])
    labels = torch.tensor([[1], [-1], [0]])
    with torch.no_grad():
        plain = model(feats).decoder_logits
        out = model(feats, clicks=(coords, labels))
        clicked, ppn_out = out.decoder_logits, out.ppn
        sparse, dense, _ = model.prompts_from_ppn(ppn_out, clicks=(coords, labels))
        point = model.backbone.prompt_encoder._embed_points(coords[:1], labels[:1], pad=False)
        expected = model.backbone.decode(feats.select([0]), torch.cat([point, sparse[:1]], 1), dense[:1])
    assert torch.allclose(clicked[1], plain[1], atol=1e-4)
    assert torch.allclose(clicked[0], expected.low_res_logits[0], atol=1e-4)
    assert (clicked[0] - plain[0]).abs().max() > 1e-2 and (clicked[2] - plain[2]).abs().max() > 1e-2


def test_click_fraction_must_be_a_fraction():
    with pytest.raises(ValueError, match="click_fraction"):
        TrainConfig(click_fraction=1.5).validate()


def test_fit_trains_without_grown_click_boxes_by_default_and_gives_the_model_back_as_it_was(trained):
    """grow_click_boxes False (the shipped recipe): clicked rows keep their box while training; the
    model's own inference behaviour (an add-click grows the box) comes back after fit."""
    from sam2rad.mask_box import DEFAULT_MARGIN_PX

    trainer, _, _ = trained
    assert TrainConfig().grow_click_boxes is False and trainer.cfg.grow_click_boxes is False
    assert trainer.model.click_box_margin_px == DEFAULT_MARGIN_PX
    seen = []
    real = trainer._fit
    trainer._fit = lambda *a: seen.append(trainer.model.click_box_margin_px)
    try:
        trainer.fit(load_spec("synthetic:2:9")[0], [], progress=False)
    finally:
        trainer._fit = real
    assert seen == [None] and trainer.model.click_box_margin_px == DEFAULT_MARGIN_PX
