"""Issue 2 acceptance: frozen backbones, PPN, and the three predict modes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2rad.backbones import build_backbone
from sam2rad.backbones.litemedsam import LiteMedSAMBackbone
from sam2rad.backbones.weights import WeightsError, load_state_dict
from sam2rad.losses import make_targets, mask_to_model_space, sam2rad_loss
from sam2rad.model import Prompts, Sam2Rad, build_sam2rad, validate_image
from sam2rad.ppn import PPNConfig
from tests.band_image import speckle_band_image

torch.set_num_threads(2)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def lite() -> Sam2Rad:
    torch.manual_seed(0)  # an untrained PPN: the same one whatever ran before (its masks are what tests click on)
    return build_sam2rad("litemedsam")


@pytest.fixture(scope="module")
def sam2_tiny() -> Sam2Rad:
    return build_sam2rad("sam2.1_hiera_t", pretrained=False, input_size=512)


# --- LiteMedSAM: real weights -------------------------------------------------------------------
def test_litemedsam_loads_every_tensor_strictly(lite):
    assert lite.backbone.n_loaded_tensors == 435
    assert lite.backbone.fingerprint == \
        "litemedsam:79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    unfused = LiteMedSAMBackbone(fuse=False)
    state = unfused.state_dict()
    n_params_and_stats = sum(1 for k in state if not k.endswith("bias_idx"))
    assert n_params_and_stats == 435  # nothing in the model is left at its random initialisation


def test_fused_encoder_matches_unfused(lite):
    """Batch norm folded into the convolutions (and channels-last) changes outputs only by rounding."""
    unfused = LiteMedSAMBackbone(fuse=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in lite.backbone.image_encoder.modules())
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = lite.backbone.encode(x), unfused.encode(x)
    for fa, fb in zip([a.image_embedding, *a.levels], [b.image_embedding, *b.levels]):
        assert fa.is_contiguous() and fa.shape == fb.shape
        assert (fa - fb).abs().max() < 1e-4 * max(1.0, float(fb.abs().max()))


def test_litemedsam_matches_recorded_reference(lite):
    """Our TinyViT + sam2 decoder vs the package's own model code, recorded once by
    scripts/record_litemedsam_reference.py."""
    ref = np.load("tests/data/litemedsam_reference.npz")
    x = torch.from_numpy(ref["image"]).float()[None, None].repeat(1, 3, 1, 1) / 255.0
    bb = lite.backbone
    with torch.no_grad():
        feats = bb.encode(x)
        sparse, dense = bb.encode_prompts(boxes=torch.from_numpy(ref["box"]))
        out = bb.decode(feats, sparse, dense)
    diff = np.abs(out.low_res_logits.numpy() - ref["low_res_logits"]).max()
    assert diff < 1e-3, f"max |logit difference| {diff}"


@pytest.mark.parametrize("seed,curvature", [(11, 0.12), (12, 0.12), (13, 0.08)])
def test_manual_tight_box_segments_band(lite, seed, curvature):
    image, band = speckle_band_image(size=256, seed=seed, curvature=curvature)
    ys, xs = np.nonzero(band)
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    pred = lite.predict(image, "manual", Prompts(box=box))[0]
    assert pred.masks.shape == (1, 256, 256)
    assert dice(pred.masks[0], band) > 0.8
    np.testing.assert_allclose(pred.boxes[0], box, atol=1e-3)


@pytest.mark.parametrize("hw", [(320, 480), (600, 200), (100, 90)])
def test_geometry_round_trip(lite, hw):
    """A mask put into model space (resize longest side + pad) comes back onto the source grid."""
    bb = lite.backbone
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - h / 2) ** 2 / (h / 4) ** 2 + (xx - w / 3) ** 2 / (w / 5) ** 2) < 1
    geom = bb.geometry(h, w)
    side = bb.prompt_encoder.mask_input_size[0]
    model_space = mask_to_model_space(mask, geom, bb.input_size, side)
    logits = torch.from_numpy(model_space.astype(np.float32) * 20 - 10)[None, None]
    back = bb.postprocess(logits, geom)[0].numpy() > 0
    assert back.shape == (h, w)
    assert dice(back, mask) > 0.95


def test_manual_is_exactly_the_plain_backbone(lite):
    image, band = speckle_band_image(seed=3)
    ys, xs = np.nonzero(band)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    pred = lite.predict(image, "manual", Prompts(box=box, points=[[128, 140]], labels=[1]))[0]
    bb = lite.backbone
    with torch.no_grad():
        pixels, geoms = bb.preprocess([image])
        feats = bb.encode(pixels)
        s = geoms[0].scale
        sparse, dense = bb.encode_prompts(points=(torch.tensor([[[128 * s, 140 * s]]]), torch.tensor([[1]])),
                                          boxes=torch.from_numpy(box * s)[None])
        logits = bb.postprocess(bb.decode(feats, sparse, dense).low_res_logits, geoms[0])[0]
    assert np.array_equal(pred.masks[0], (logits > 0).numpy())


# --- SAM2.1 tiny, random weights, 512 --------------------------------------------------------------
def test_sam2_tiny_512_end_to_end_shapes(sam2_tiny):
    bb = sam2_tiny.backbone
    assert bb.fingerprint == "sam2.1_hiera_t@512:random-seed0"
    with torch.no_grad():
        pixels, geoms = bb.preprocess([np.zeros((300, 400), np.uint8) + 5, np.ones((512, 200, 3), np.uint8)])
        assert pixels.shape == (2, 3, 512, 512)
        feats = bb.encode(pixels)
        assert feats.image_embedding.shape == (2, 256, 32, 32)
        assert [tuple(x.shape) for x in feats.levels] == [(2, 256, 32, 32), (2, 256, 64, 64), (2, 256, 128, 128)]
        assert [tuple(x.shape) for x in feats.high_res] == [(2, 32, 128, 128), (2, 64, 64, 64)]
        out = sam2_tiny(feats)
        ppn_out, logits, iou, obj = out.ppn, out.logits, out.iou, out.object_logit
    assert ppn_out.box_norm.shape == (2, 4)
    assert ((ppn_out.box_norm >= 0) & (ppn_out.box_norm <= 1)).all()
    assert ppn_out.mask_logits.shape == (2, 1, 128, 128)
    assert ppn_out.extra_tokens.shape == (2, 6, 256)
    assert logits.shape == (2, 1, 128, 128) and iou.shape == (2,) and obj.shape == (2,)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 400), dtype=np.uint8)
    pred = sam2_tiny.predict(image, "auto")[0]
    assert pred.masks.shape == (1, 300, 400) and pred.masks.dtype == bool
    assert pred.boxes.shape == (1, 4) and 0 <= pred.scores[0] <= 1


def test_multiclass_runs_decoder_per_class():
    model = build_sam2rad("sam2.1_hiera_t", pretrained=False, input_size=512,
                          ppn_config=PPNConfig(num_classes=2), class_names=("bone", "cartilage"))
    pred = model.predict(np.full((64, 96), 7, np.uint8), "auto")[0]
    assert pred.masks.shape == (2, 64, 96) and pred.scores.shape == (2,)
    assert pred.class_names == ("bone", "cartilage")


# --- training contract: only the PPN learns ---------------------------------------------------------
@pytest.mark.parametrize("which", ["lite", "sam2_tiny"])
def test_one_step_changes_only_the_ppn(which, request):
    model: Sam2Rad = request.getfixturevalue(which)
    bb = model.backbone
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    image, band = speckle_band_image(size=200, seed=5)
    model.train()
    assert not bb.training, "a frozen backbone must stay in eval mode"
    pixels, geoms = bb.preprocess([image])
    feats = bb.encode(pixels)  # with autograd on: nothing in the backbone may still learn
    out_side = bb.prompt_encoder.mask_input_size[0]
    targets = make_targets([mask_to_model_space(band, geoms[0], bb.input_size, out_side)])
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    out = model(feats)
    loss, parts = sam2rad_loss(out.decoder_logits, out.ppn.box_norm, out.ppn.mask_logits, out.object_logit, targets)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    assert {"dice", "focal", "interim_focal", "giou", "l1"} <= set(parts)
    for name, value in bb.state_dict().items():
        assert torch.equal(value, before[name]), f"backbone tensor {name} changed"
    assert all(p.grad is None for p in bb.parameters())
    for name, p in model.ppn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"PPN parameter {name} got no gradient"
    model.clear_cache()


# --- semi mode reuses the encoding -----------------------------------------------------------------
def test_semi_correction_changes_mask_without_reencoding(lite):
    image, band = speckle_band_image(seed=21)
    lite.clear_cache()
    calls = lite.encoder_calls
    auto = lite.predict(image, "auto")[0]
    assert lite.encoder_calls == calls + 1
    ys, xs = np.nonzero(band & ~auto.masks[0])
    point = [[xs[len(xs) // 2], ys[len(ys) // 2]]]
    semi = lite.predict(image, "semi", Prompts(points=point, labels=[1]))[0]
    assert lite.encoder_calls == calls + 1, "semi mode must not run the encoder again"
    assert not np.array_equal(semi.masks, auto.masks)
    # The predicted box is kept, or grown just enough to hold the add-click (never shrunk).
    before, after = auto.boxes[0], semi.boxes[0]
    assert (after[:2] <= before[:2] + 1e-3).all() and (after[2:] >= before[2:] - 1e-3).all()
    assert after[0] <= point[0][0] <= after[2] and after[1] <= point[0][1] <= after[3]
    box = np.array([10, 20, 200, 220], np.float32)
    semi_box = lite.predict(image, "semi", Prompts(box=box))[0]
    np.testing.assert_allclose(semi_box.boxes[0], box, atol=1e-3)
    assert lite.encoder_calls == calls + 1


# --- bad input -------------------------------------------------------------------------------------
BAD_IMAGES = {
    "wrong dtype (bool)": (np.zeros((8, 8), bool), "dtype bool"),
    "wrong dtype (complex)": (np.zeros((8, 8), complex), "dtype complex"),
    "wrong dtype (object)": (np.zeros((8, 8), object), "dtype object"),
    "empty image": (np.zeros((0, 0), np.uint8), "empty"),
    "0-pixel side": (np.zeros((0, 16), np.uint8), "0-pixel side"),
    "NaNs": (np.full((8, 8), np.nan, np.float32), "NaN"),
    "wrong channel count": (np.zeros((8, 8, 4), np.uint8), "4 channels"),
    "4-D": (np.zeros((1, 8, 8, 3), np.uint8), "2-D"),
    "not an array": ([[1, 2], [3, 4]], "numpy array"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_input_raises_clear_value_error(lite, case):
    image, message = BAD_IMAGES[case]
    with pytest.raises(ValueError, match=message):
        lite.predict(image if isinstance(image, np.ndarray) else [image], "auto")
    with pytest.raises(ValueError, match=message):
        validate_image(image)


def test_bad_modes_and_prompts(lite):
    image = np.zeros((32, 32), np.uint8)
    with pytest.raises(ValueError, match="mode must be one of"):
        lite.predict(image, "automatic")
    with pytest.raises(ValueError, match="manual mode needs"):
        lite.predict(image, "manual")
    with pytest.raises(ValueError, match="auto mode takes no prompts"):
        lite.predict(image, "auto", Prompts(box=[0, 0, 5, 5]))
    with pytest.raises(ValueError, match="reversed"):
        Prompts(box=[10, 10, 5, 5])
    with pytest.raises(ValueError, match="2 labels"):
        Prompts(points=[[1, 1]], labels=[1, 0])


def test_weights_checksum_is_verified(tmp_path):
    bad = tmp_path / "lite.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_state_dict(bad, expected_sha256="0" * 64)
    with pytest.raises(WeightsError, match="SAM2 weights are not bundled"):
        build_backbone("sam2.1_hiera_t")
