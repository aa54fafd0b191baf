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
