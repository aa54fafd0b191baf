"""Where few-shot training starts (sam2rad/init_weights.py)."""
import pytest
import torch
from safetensors.torch import load_file

from sam2rad.init_weights import PRETRAINED_CHECKPOINT, apply_init
from sam2rad.model import build_sam2rad
from sam2rad.ppn import PPNConfig
from sam2rad.refine import RefinerConfig


@pytest.fixture(scope="module")
def backbone():
    from sam2rad.backbones import build_backbone

    return build_backbone("litemedsam")


def test_auto_starts_from_the_shipped_pretrained_weights(backbone):
    model = build_sam2rad(backbone, refiner_config=RefinerConfig())
    note = apply_init(model, "auto")
    assert "pretrained" in note
    shipped = load_file(str(PRETRAINED_CHECKPOINT))
    state = model.trainable_state()
    assert set(state) == set(shipped)
    assert all(torch.equal(state[k], shipped[k]) for k in shipped)


def test_none_keeps_random_weights(backbone):
    model = build_sam2rad(backbone, refiner_config=RefinerConfig())
    before = {k: v.clone() for k, v in model.trainable_state().items()}
    assert apply_init(model, "none") == "random initialisation"
    assert all(torch.equal(before[k], v) for k, v in model.trainable_state().items())


def test_auto_falls_back_to_random_when_the_start_does_not_fit_and_pretrained_says_why(backbone):
    two = build_sam2rad(backbone, PPNConfig(num_classes=2), ("bone", "cartilage"), refiner_config=RefinerConfig())
    assert apply_init(two, "auto").startswith("random initialisation (the shipped pretrained start does not fit")
    with pytest.raises(ValueError, match="classes"):
        apply_init(two, "pretrained")
    no_refiner = build_sam2rad(backbone)
    with pytest.raises(ValueError, match="refiner config"):
        apply_init(no_refiner, "pretrained")


def test_bad_init_values_are_refused(backbone, tmp_path):
    model = build_sam2rad(backbone, refiner_config=RefinerConfig())
    with pytest.raises(ValueError, match="init must be one of"):
        apply_init(model, str(tmp_path / "missing.safetensors"))


def test_learning_rate_follows_the_start_unless_given():
    from sam2rad.init_weights import FINE_TUNE_LR, FROM_SCRATCH_LR, default_lr
    from sam2rad.train import TrainConfig, Trainer

    assert FINE_TUNE_LR < FROM_SCRATCH_LR
    assert default_lr("started from the shipped pretrained PPN and refiner (x)") == FINE_TUNE_LR
    assert default_lr("random initialisation (the shipped pretrained start does not fit: classes)") == FROM_SCRATCH_LR
    assert Trainer(TrainConfig(epochs=1)).cfg.lr == FINE_TUNE_LR  # the shipped start fits the defaults
    assert Trainer(TrainConfig(epochs=1, init="none")).cfg.lr == FROM_SCRATCH_LR
    assert Trainer(TrainConfig(epochs=1, lr=5e-4)).cfg.lr == 5e-4
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0.0).validate()


def test_the_schedule_length_follows_the_start_unless_given():
    from sam2rad.init_weights import FINE_TUNE_EPOCHS, FROM_SCRATCH_EPOCHS
    from sam2rad.train import TrainConfig, Trainer

    assert FINE_TUNE_EPOCHS < FROM_SCRATCH_EPOCHS
    assert Trainer(TrainConfig()).cfg.epochs == FINE_TUNE_EPOCHS  # the shipped start fits the defaults
    assert Trainer(TrainConfig(init="none")).cfg.epochs == FROM_SCRATCH_EPOCHS
    assert Trainer(TrainConfig(epochs=3)).cfg.epochs == 3
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0).validate()


def test_start_share_defaults_to_a_fifth_for_few_images_from_trained_weights_only():
    from sam2rad.init_weights import FEW_SHOT_START_SHARE, resolve_start_share

    trained = "started from the shipped pretrained PPN and refiner (x)"
    assert FEW_SHOT_START_SHARE == 0.2
    assert resolve_start_share(None, trained, 10, 20) == FEW_SHOT_START_SHARE
    assert resolve_start_share(None, trained, 21, 20) == 0.0  # many images: no anchor
    assert resolve_start_share(None, "random initialisation", 10, 20) == 0.0  # nothing worth keeping
    assert resolve_start_share(0.5, trained, 300, 20) == 0.5  # given: as given
    assert resolve_start_share(0.0, trained, 10, 20) == 0.0
    from sam2rad.train import TrainConfig
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="start_share"):
            TrainConfig(start_share=bad).validate()


def test_blend_moves_every_weight_the_share_of_the_way_back_to_the_start(backbone):
    from sam2rad.checkpoint import CheckpointError
    from sam2rad.init_weights import blend_with_start, start_state

    model = build_sam2rad(backbone, refiner_config=RefinerConfig())
    apply_init(model, "auto")
    start = start_state(model)
    moved = {k: v + torch.randn_like(v) if v.is_floating_point() else v for k, v in start.items()}
    model.load_trainable_state(moved)
    blend_with_start(model, start, 0.0)
    assert all(torch.equal(v, moved[k]) for k, v in model.trainable_state().items())
    blend_with_start(model, start, 0.25)
    for k, v in model.trainable_state().items():
        assert torch.allclose(v, start[k] + 0.75 * (moved[k] - start[k]), atol=1e-6), k
    assert not torch.equal(model.trainable_state()["refiner.out.weight"], moved["refiner.out.weight"])
    with pytest.raises(CheckpointError, match="differ"):
        blend_with_start(model, {k: v for k, v in list(start.items())[1:]}, 0.2)


def test_training_blends_its_final_weights_with_the_start_and_records_the_share():
    from sam2rad.data.specs import load_spec
    from sam2rad.train import TrainConfig, Trainer

    images = load_spec("synthetic:2:3")[0]
    final = {}
    for share in (0.0, 0.5, None):
        trainer = Trainer(TrainConfig(epochs=1, batch_size=2, augment_copies=1, seed=0, start_share=share))
        start = {k: v.clone() for k, v in trainer.model.trainable_state().items()}
        trainer.fit(images, [], progress=False)
        final[share] = {k: v.clone() for k, v in trainer.model.trainable_state().items()}
        assert trainer.cfg.start_share == (0.2 if share is None else share)  # what the card records
    moved = [k for k in start if not torch.equal(final[0.0][k], start[k])]
    assert moved  # training changed the weights, so the blend has something to undo
    for k in start:
        assert torch.allclose(final[0.5][k], start[k] + 0.5 * (final[0.0][k] - start[k]), atol=1e-5), k
        assert torch.allclose(final[None][k], start[k] + 0.8 * (final[0.0][k] - start[k]), atol=1e-5), k
