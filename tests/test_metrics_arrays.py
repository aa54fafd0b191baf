"""Array metrics: agreement with SimpleITK and with brute-force definitions; empty-mask conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from sam2rad import metrics

import SimpleITK as sitk  # noqa: E402 - a test dependency (pyproject [test]); never skipped


def _random_pairs(n: int, seed: int = 0):
    """Random mask pairs: salt-and-pepper and blob-like, random anisotropic spacing."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        shape = tuple(int(s) for s in rng.integers(6, 48, 2))
        if len(out) % 2:
            a = rng.random(shape) < rng.uniform(0.02, 0.5)
            b = rng.random(shape) < rng.uniform(0.02, 0.5)
        else:
            a = ndimage.binary_opening(rng.random(shape) < rng.uniform(0.5, 0.7))
            b = ndimage.binary_opening(rng.random(shape) < rng.uniform(0.5, 0.7))
        if a.any() and b.any():
            out.append((a, b, (float(rng.uniform(0.1, 2.0)), float(rng.uniform(0.1, 2.0)))))
    return out


def _sitk_image(mask: np.ndarray, spacing) -> "sitk.Image":
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((spacing[1], spacing[0]))  # SimpleITK is (x, y) = (col, row)
    return image


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour outside the mask or outside the image."""
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for r, c in zip(*np.nonzero(mask)):
        pr, pc = r + 1, c + 1
        if not (padded[pr - 1, pc] and padded[pr + 1, pc] and padded[pr, pc - 1] and padded[pr, pc + 1]):
            out[r, c] = True
    return out


def _brute_directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    pa = np.argwhere(a) * np.asarray(spacing)
    pb = np.argwhere(b) * np.asarray(spacing)
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(axis=1)


def test_dice_and_iou_match_simpleitk():
    for a, b, spacing in _random_pairs(60):
        f = sitk.LabelOverlapMeasuresImageFilter()
        f.Execute(_sitk_image(a, spacing), _sitk_image(b, spacing))
        assert metrics.dice(a, b) == pytest.approx(f.GetDiceCoefficient(), abs=1e-6)
        assert metrics.iou(a, b) == pytest.approx(f.GetJaccardCoefficient(), abs=1e-6)


def test_hausdorff_matches_simpleitk_with_spacing():
    worst = 0.0
    for a, b, spacing in _random_pairs(60, seed=1):
        f = sitk.HausdorffDistanceImageFilter()
        f.Execute(_sitk_image(a, spacing), _sitk_image(b, spacing))
        worst = max(worst, abs(metrics.hausdorff(a, b, spacing) - f.GetHausdorffDistance()))
    assert worst < 1e-6


def test_hausdorff_in_pixels_matches_simpleitk_unit_spacing():
    a, b, _ = _random_pairs(1, seed=2)[0]
    f = sitk.HausdorffDistanceImageFilter()
    f.Execute(_sitk_image(a, (1.0, 1.0)), _sitk_image(b, (1.0, 1.0)))
    assert metrics.hausdorff(a, b) == pytest.approx(f.GetHausdorffDistance(), abs=1e-6)


def test_surface_matches_brute_force():
    for a, _, _ in _random_pairs(10, seed=3):
        np.testing.assert_array_equal(metrics.surface(a), _brute_surface(a))


def test_hd95_and_assd_match_brute_force():
    for a, b, spacing in _random_pairs(20, seed=4):
        sa, sb = _brute_surface(a), _brute_surface(b)
        union = np.concatenate([_brute_directed(sa, sb, spacing), _brute_directed(sb, sa, spacing)])
        assert metrics.hd95(a, b, spacing) == pytest.approx(np.percentile(union, 95), abs=1e-9)
        assert metrics.assd(a, b, spacing) == pytest.approx(union.mean(), abs=1e-9)
        # Symmetric by definition.
        assert metrics.hd95(b, a, spacing) == pytest.approx(metrics.hd95(a, b, spacing), abs=1e-12)


def test_full_object_and_surface_hausdorff_differ_for_nested_masks():
    # A small disc inside a large one: every pixel of A is in B, but the surfaces are apart.
    yy, xx = np.mgrid[:41, :41]
    big = (yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2
    small = (yy - 20) ** 2 + (xx - 20) ** 2 <= 5**2
    full = metrics.hausdorff(small, big)
    assert full == pytest.approx(10.0, abs=0.5)  # from B's rim to A
    assert metrics.hd95(small, big) > 5.0
    assert metrics.assd(small, big) > 5.0


def test_known_values_with_anisotropic_spacing():
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[5, 2:18] = True
    b[8, 2:18] = True  # same line, 3 rows lower
    assert metrics.hd95(a, b, (0.5, 1.0)) == pytest.approx(1.5)
    assert metrics.assd(a, b, (0.5, 1.0)) == pytest.approx(1.5)
    assert metrics.hausdorff(a, b, (2.0, 1.0)) == pytest.approx(6.0)
    assert metrics.hd95(a, b) == pytest.approx(3.0)  # pixels
    assert metrics.dice(a, b) == 0.0


def test_identical_masks():
    a = np.zeros((16, 16), np.uint8)
    a[4:10, 3:12] = 2  # any nonzero value is foreground
    m = metrics.evaluate_pair(a, a > 0, (0.3, 0.3))
    assert (m.dice, m.iou, m.hd95, m.assd, m.hausdorff) == (1.0, 1.0, 0.0, 0.0, 0.0)
    assert m.unit == "mm" and m.pred_pixels == m.gt_pixels == 54


def test_empty_mask_conventions():
    empty = np.zeros((8, 8), bool)
    full = np.zeros((8, 8), bool)
    full[2:5, 2:5] = True
    both = metrics.evaluate_pair(empty, empty)
    assert both.dice == 1.0 and both.iou == 1.0
    assert all(math.isnan(v) for v in (both.hd95, both.assd, both.hausdorff))
    for pred, gt in ((empty, full), (full, empty)):
        one = metrics.evaluate_pair(pred, gt, (1.0, 1.0))
        assert one.dice == 0.0 and one.iou == 0.0
        assert all(math.isinf(v) for v in (one.hd95, one.assd, one.hausdorff))
    with pytest.raises(ValueError):
        metrics.surface_distances(empty, full)


def test_evaluate_pair_agrees_with_single_metrics():
    a, b, spacing = _random_pairs(1, seed=5)[0]
    m = metrics.evaluate_pair(a, b, spacing)
    assert m.dice == metrics.dice(a, b)
    assert m.hd95 == metrics.hd95(a, b, spacing)
    assert m.assd == metrics.assd(a, b, spacing)
    assert m.hausdorff == metrics.hausdorff(a, b, spacing)
    assert m.unit == "mm"
    assert set(m.as_dict()) >= {"dice", "iou", "hd95", "assd", "hausdorff", "pred_pixels", "gt_pixels", "unit"}
    assert metrics.evaluate_pair(a, b).unit == "px"


def test_input_validation():
    a = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.dice(a, np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(a, a, (1.0,))
    with pytest.raises(ValueError, match="positive"):
        metrics.evaluate_pair(a, a, (1.0, 0.0))
