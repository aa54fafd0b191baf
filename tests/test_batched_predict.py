"""auto mode decodes a whole batch (images x classes) in one call, with the results of the per-image path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2rad.batched_decode import DecodedRows, predictions_from_rows
from sam2rad.checkpoint import load_checkpoint
from sam2rad.data.specs import load_spec
from sam2rad.model import Prediction, Sam2Rad, build_sam2rad
from sam2rad.ppn import PPNConfig
from sam2rad.refine import RefinerConfig

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def shipped() -> Sam2Rad:
    return load_checkpoint()  # the demo checkpoint, refiner included


@pytest.fixture(scope="module")
def mixed_sizes() -> list[np.ndarray]:
    """Square synthetic frames and non-square rfsim frames (300x256 twice, so two share a geometry)."""
    images = [s.image for s in load_spec("synthetic:2:11")[0] + load_spec("rfsim:3:5")[0]]
    assert len({im.shape for im in images}) >= 3
    return images


def assert_same(batched: list[Prediction], alone: list[Prediction]) -> None:
    assert len(batched) == len(alone)
    for b, a in zip(batched, alone):
        assert b.masks.shape == a.masks.shape and b.masks.dtype == bool
        # Batched matrix products round differently (1e-7); a logit that close to the threshold may
        # flip a pixel, and the mask-box cascade can carry that on: allow a pixel or two, no more.
        flipped = int((b.masks != a.masks).sum())
        assert flipped <= max(2, 0.002 * a.masks.sum()), f"{flipped} mask pixels differ"
        # The score counts pixels past +-2 (sam2rad/confidence.py): the same rounding may move a pixel
        # or two across, about 0.001 each on these masks.
        np.testing.assert_allclose(b.scores, a.scores, atol=5e-3)
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)


class CallCounter:
    """Counts calls of a module method, e.g. to show a batch goes through the decoder once."""

    def __init__(self, owner, name: str):
        self.calls = 0
        self.owner, self.name, self.original = owner, name, getattr(owner, name)

    def __enter__(self) -> "CallCounter":
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)
        setattr(self.owner, self.name, counted)
        return self

    def __exit__(self, *exc) -> None:
        delattr(self.owner, self.name)


def test_batch_matches_one_image_at_a_time_on_the_shipped_model(shipped, mixed_sizes):
    shipped.clear_cache()
    with CallCounter(shipped.backbone, "decode") as decode, CallCounter(shipped.refiner, "forward") as refine:
        batched = shipped.predict(mixed_sizes, "auto")
    assert all(p.masks.any() for p in batched)
    shipped.clear_cache()  # batch 1 end to end: each image encoded alone too
    with CallCounter(shipped.backbone, "decode") as decode_one, CallCounter(shipped.refiner, "forward") as refine_one:
        alone = [shipped.predict(mixed_sizes[0], "auto")[0]]
    alone += [shipped.predict(im, "auto")[0] for im in mixed_sizes[1:]]
    assert_same(batched, alone)
    # The decoder and refiner are called as often for the whole batch as for one image.
    assert (decode.calls, refine.calls) == (decode_one.calls, refine_one.calls) and decode.calls >= 1


def test_batch_matches_the_per_image_decode_path(shipped, mixed_sizes):
    """semi without corrections is the per-image path (one PPN and decoder call per image and class)."""
    batched = shipped.predict(mixed_sizes, "auto")
    per_image = shipped.predict(mixed_sizes, "semi")
    assert_same(batched, per_image)
    assert {p.mode for p in batched} == {"auto"}


def test_classes_and_object_scores_keep_their_rows():
    """Two classes on SAM2 (object scores), a refiner that changes the logits, mixed geometries."""
    torch.manual_seed(0)
    model = build_sam2rad("sam2.1_hiera_t", PPNConfig(num_classes=2), ("a", "b"), pretrained=False,
                          input_size=512, refiner_config=RefinerConfig())
    torch.nn.init.normal_(model.refiner.out.weight, std=0.5)  # an untrained refiner adds exactly zero
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in ((200, 256), (256, 180), (200, 256))]
    batched = model.predict(images, "auto")
    model.clear_cache()
    alone = [model.predict(im, "auto")[0] for im in images]
    assert_same(batched, alone)
    assert all(p.masks.shape == (2, *im.shape) for p, im in zip(batched, images))
    assert not np.array_equal(batched[0].scores, batched[2].scores), "rows of different images were mixed up"


def test_rows_become_predictions_per_image_and_class(shipped):
    """No object: empty mask; a class without a row (manual) stays empty, with a NaN box."""
    size = shipped.backbone.input_size
    geoms = [shipped.backbone.geometry(128, 64), shipped.backbone.geometry(64, 64)]
    logits = torch.full((3, 1, size, size), 5.0)
    rows = DecodedRows(image_index=[0, 1, 1], class_index=[1, 0, 1], logits=logits,
                       object_logit=torch.tensor([2.0, 1.0, -1.0]),
                       boxes_px=torch.tensor([[0.0, 0, 128, 256], [0, 0, 10, 20], [float("nan")] * 4]))
    first, second = predictions_from_rows(rows, geoms, shipped.backbone, "manual", ("a", "b"))
    assert first.masks.shape == (2, 128, 64) and second.masks.shape == (2, 64, 64)
    assert not first.masks[0].any() and first.masks[1].all()
    assert np.isnan(first.boxes[0]).all() and first.scores[0] == 0
    np.testing.assert_allclose(first.boxes[1], [0, 0, 64, 128])  # model pixels / scale (2)
    # Every logit is +5, far past +-2: stability 1, so the score is the object presence alone (the
    # IoU head is not part of it).
    assert first.scores[1] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert second.masks[0].all() and not second.masks[1].any(), "a negative object logit means no mask"
    assert second.scores[0] == pytest.approx(1 / (1 + np.exp(-1.0)))
    np.testing.assert_allclose(second.boxes[0], [0, 0, 2.5, 5])  # scale 4
    assert np.isnan(second.boxes[1]).all()
