"""Synthetic bone ultrasound: types, determinism, variety, plausibility, text placement, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from sam2rad.data.synthetic import ANATOMIES, FIELDS_OF_VIEW, SyntheticSample, generate, generate_set


def _region_box(sample: SyntheticSample) -> np.ndarray:
    x0, y0, x1, y1 = sample.imaging_region
    box = np.zeros(sample.image.shape, bool)
    box[y0:y1, x0:x1] = True
    return box


@pytest.mark.parametrize("anatomy", ANATOMIES)
@pytest.mark.parametrize("fov", FIELDS_OF_VIEW)
def test_types_shapes_and_region(anatomy, fov):
    s = generate(3, size=(128, 160), anatomy=anatomy, fov=fov)
    assert isinstance(s, SyntheticSample)
    assert s.image.dtype == np.uint8 and s.image.shape == (128, 160)
    assert s.mask.dtype == bool and s.mask.shape == (128, 160)
    assert s.anatomy == anatomy and s.fov == fov and s.seed == 3
    assert len(s.spacing_mm) == 2 and all(0.01 < v < 1.0 for v in s.spacing_mm)
    x0, y0, x1, y1 = s.imaging_region
    assert 0 <= x0 < x1 <= 160 and 0 < y0 < y1 <= 128
    assert s.mask.any()
    assert not (s.mask & ~_region_box(s)).any(), "mask must lie inside the imaging region"
    assert not s.image[~_region_box(s)].any(), "no text requested: the border is black"


def test_deterministic_for_a_seed_and_varied_across_seeds():
    a, b = generate(11), generate(11)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.spacing_mm == b.spacing_mm and a.imaging_region == b.imaging_region
    samples = generate_set(8, seed=5, size=(96, 96))
    assert len({s.image.tobytes() for s in samples}) == 8
    assert len({s.spacing_mm for s in samples}) == 8
    # Bone position varies: the mask centroids are not all the same.
    rows = [np.argwhere(s.mask)[:, 0].mean() / 96 for s in samples]
    assert np.std(rows) > 0.02


def test_generate_set_is_prefix_stable_and_options_pass_through():
    short = generate_set(3, seed=7, size=64, anatomy="wrist", fov="sector")
    long = generate_set(5, seed=7, size=64, anatomy="wrist", fov="sector")
    for s, t in zip(short, long):
        np.testing.assert_array_equal(s.image, t.image)
    assert all(s.anatomy == "wrist" and s.fov == "sector" and s.image.shape == (64, 64) for s in long)
    assert generate_set(0, seed=1) == []
    again = generate(long[2].seed, size=64, anatomy="wrist", fov="sector")
    np.testing.assert_array_equal(again.image, long[2].image)


def test_all_anatomies_and_fovs_appear_when_unspecified():
    samples = generate_set(30, seed=0, size=64)
    assert {s.anatomy for s in samples} == set(ANATOMIES)
    assert {s.fov for s in samples} == set(FIELDS_OF_VIEW)


def test_bone_brighter_than_surroundings_with_shadow_below():
    for s in generate_set(12, seed=21, size=(128, 128)):
        img = s.image.astype(np.float32)
        inside = _region_box(s) & (img > 0)
        bone = img[s.mask].mean()
        assert bone > img[inside & ~s.mask].mean() + 30, s.seed
        # Shadow: pixels well below the surface (10-25 px down the same column) are dark.
        below = np.zeros_like(s.mask)
        for shift in range(10, 25):
            below[shift:] |= s.mask[:-shift]
        below &= inside & ~ndimage.binary_dilation(s.mask, iterations=3)
        above = np.zeros_like(s.mask)
        for shift in range(10, 25):
            above[:-shift] |= s.mask[shift:]
        above &= inside & ~ndimage.binary_dilation(s.mask, iterations=3)
        assert img[below].mean() < 0.6 * img[above].mean(), s.seed
        assert img[below].mean() < bone / 3, s.seed


def test_speckle_present():
    s = generate(4, size=(128, 128), anatomy="shoulder", fov="linear")
    img = s.image.astype(np.float32)
    x0, y0, x1, y1 = s.imaging_region
    patch = img[y0 + 5 : y0 + 20, x0 + 10 : x1 - 10]  # soft tissue near the top
    # Rayleigh-like speckle: strong local variation, not a flat fill.
    assert patch.std() / patch.mean() > 0.15


def test_mask_is_a_thin_surface_band():
    for s in generate_set(12, seed=3, size=(256, 256)):
        cols = s.mask.any(axis=0)
        per_col = s.mask.sum(axis=0)[cols]
        assert 2 <= np.median(per_col) <= 0.03 * 256 + 2, (s.seed, np.median(per_col))
        assert cols.sum() > 0.2 * 256  # spans a good part of the width


def test_text_is_burned_in_only_outside_the_imaging_region():
    for seed in range(6):
        plain = generate(seed, size=(192, 192))
        texted = generate(seed, size=(192, 192), text=True)
        changed = plain.image != texted.image
        assert changed.any(), seed
        assert not (changed & _region_box(plain)).any(), seed
        np.testing.assert_array_equal(plain.mask, texted.mask)
        assert texted.image[changed].min() >= 180


def test_invalid_arguments():
    with pytest.raises(ValueError, match="anatomy"):
        generate(0, anatomy="knee")
    with pytest.raises(ValueError, match="fov"):
        generate(0, fov="phased")
    with pytest.raises(ValueError, match="seed"):
        generate(-1)
    with pytest.raises(ValueError, match="size"):
        generate(0, size=(32, 256))


def test_fast_enough():
    generate(0)  # warm-up
    start = time.perf_counter()
    for seed in range(10):
        generate(seed, size=(256, 256), text=True)
    per_frame = (time.perf_counter() - start) / 10
    assert per_frame < 0.1, per_frame  # typically ~15 ms; generous for loaded CI machines
