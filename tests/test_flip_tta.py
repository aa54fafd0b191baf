"""Test-time flip (sam2rad/flip_tta.py): the averaging, mirror symmetry of auto, the encoder count."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2rad.batched_decode import DecodedRows
from sam2rad.checkpoint import load_checkpoint
from sam2rad.data.specs import load_spec
from sam2rad.flip_tta import mean_with_mirrored
from sam2rad.prompts import Prompts

torch.set_num_threads(2)


def _rows(logits: torch.Tensor, obj: float | None, box: float) -> DecodedRows:
    return DecodedRows([0], [0], logits, None if obj is None else torch.tensor([obj]),
                       torch.full((1, 4), box))


def test_mean_mirrors_the_second_decode_back_and_keeps_the_plain_box():
    plain = torch.zeros(1, 1, 2, 3)
    plain[..., 0] = 4.0  # left column
    mirrored = torch.zeros(1, 1, 2, 3)
    mirrored[..., 2] = 2.0  # its right column is the plain input's left column
    out = mean_with_mirrored(_rows(plain, 1.0, 10.0), _rows(mirrored, 3.0, 99.0))
    assert torch.equal(out.logits[0, 0, :, 0], torch.tensor([3.0, 3.0]))
    assert float(out.logits[..., 1:].abs().sum()) == 0.0
    assert float(out.object_logit[0]) == pytest.approx(2.0)
    assert torch.equal(out.boxes_px, torch.full((1, 4), 10.0))
    assert mean_with_mirrored(_rows(plain, None, 1.0), _rows(mirrored, None, 1.0)).object_logit is None


@pytest.fixture(scope="module")
def model_and_image():
    image = np.asarray(load_spec("synthetic:1:5")[0][0].image)
    assert image.shape[0] == image.shape[1]  # square: the model input has no padding to mirror
    return load_checkpoint(), image


def test_with_the_flip_auto_is_mirror_symmetric_and_encodes_twice(model_and_image):
    model, image = model_and_image
    mirror = np.ascontiguousarray(image[:, ::-1])
    model.clear_cache()
    plain = [model.predict(x)[0].masks[0] for x in (image, mirror)]
    assert not np.array_equal(plain[0], plain[1][:, ::-1])  # the model alone is not mirror symmetric
    model.flip_test_time = True
    try:
        model.clear_cache()
        before = model.encoder_calls
        flipped = model.predict(image)[0].masks[0]
        assert model.encoder_calls == before + 2  # the image and its mirror
        before = model.encoder_calls
        of_mirror = model.predict(mirror)[0].masks[0]
        assert model.encoder_calls == before + 2
        assert np.array_equal(flipped, of_mirror[:, ::-1])
        assert flipped.sum() > 0
        # a reader's click edits the averaged mask and still runs the decoder only
        clicked = model.predict(mirror, "semi", Prompts(points=[(5.0, 5.0)], labels=[0]))[0].masks[0]
        assert model.encoder_calls == before + 2
        assert np.array_equal(clicked, of_mirror) or (clicked & ~of_mirror).sum() == 0
    finally:
        model.flip_test_time = False
        model.clear_cache()


def test_the_flows_turn_the_flip_on_from_the_environment(monkeypatch):
    from flows.runtime import load_model

    monkeypatch.setenv("SAM2RAD_FLIP_TTA", "1")
    assert load_model.__wrapped__(None).flip_test_time is True
    monkeypatch.delenv("SAM2RAD_FLIP_TTA")
    assert load_model.__wrapped__(None).flip_test_time is False
