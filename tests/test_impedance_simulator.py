"""Generator C (impedance interfaces, I/Q): determinism, labels, physics one can see, and that it
differs from A and B."""
from __future__ import annotations

import numpy as np
import pytest

from sam2rad.data.impedance_simulator import (ANATOMIES, PROBES, ImpedanceSample, generate_impedance,
                                              generate_impedance_set)
from sam2rad.data.rf_simulator import generate_rf_set
from sam2rad.data.specs import load_spec


@pytest.fixture(scope="module")
def frames() -> list[ImpedanceSample]:
    return [generate_impedance(i, anatomy=a, probe=p) for i, (a, p) in
            enumerate((a, p) for a in ANATOMIES for p in PROBES)]


def test_deterministic_for_a_seed_and_sets_extend():
    a, b = generate_impedance(5), generate_impedance(5)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    s3, s2 = generate_impedance_set(3, 2), generate_impedance_set(2, 2)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(s3, s2))
    assert not np.array_equal(s3[0].mask, generate_impedance_set(1, 3)[0].mask)


def test_types_region_spacing_and_cortex_thickness(frames):
    for s in frames:
        h, w = s.image.shape
        assert s.image.dtype == np.uint8 and s.mask.dtype == bool and s.mask.shape == (h, w) and h != w
        assert s.mask.sum() > 50, (s.anatomy, s.probe)
        assert not (s.mask & ~s.inside).any()
        assert not s.image[~s.inside & ~_markers(s)].any(), "black outside the imaging region"
        assert 0.1 <= s.spacing_mm[0] <= 0.3
        rows = s.mask.sum(0)
        # the cortex: 0.5-1.4 mm along the normal (slopes make columns a little longer)
        assert 0.35 <= np.median(rows[rows > 0]) * s.spacing_mm[0] <= 2.2, (s.anatomy, s.probe)
    assert {s.probe for s in frames} == set(PROBES) and {s.anatomy for s in frames} == set(ANATOMIES)


def _markers(s: ImpedanceSample) -> np.ndarray:
    """The depth-marker dots in the right margin (the only pixels lit outside the imaging region)."""
    out = np.zeros_like(s.mask)
    out[:, -6:-4] = True
    return out


def test_bright_cortex_and_shadow_under_bone(frames):
    for s in frames:
        img = s.image.astype(float)
        shift = int(round(4.0 / s.spacing_mm[0]))
        below = np.zeros_like(s.mask)
        below[shift:] = s.mask[:-shift]
        below &= s.inside
        above = np.zeros_like(s.mask)
        above[:-shift] = s.mask[shift:]
        above &= s.inside & ~s.mask
        # the surface echo: each column's brightest cortex pixel (the cortex under it is darker)
        cols = s.mask.any(0)
        peak = np.where(s.mask, img, 0).max(0)[cols]
        assert peak.mean() > 1.3 * img[above].mean(), (s.anatomy, s.probe)
        assert img[below].mean() < 0.6 * img[above].mean(), (s.anatomy, s.probe)


def test_phased_sector_is_a_fan_from_the_top():
    s = generate_impedance(3, probe="phased")
    rows = s.inside.sum(1)
    first = int(np.argmax(rows > 0))
    assert rows[first] < 0.1 * s.inside.shape[1], "a sector starts narrow at its apex"
    assert rows[first + int(0.6 * (len(rows) - first))] > 4 * rows[first + 3]


def test_differs_from_generator_b():
    """C's display (speckle reduction, its grey map) and frames differ from B's: other frame shapes, a
    smoother tissue texture at one pixel lag."""
    c, b = generate_impedance_set(6, 0), generate_rf_set(6, 0)
    assert not {s.image.shape for s in c} & {s.image.shape for s in b}

    def lag1(s):
        x = s.image.astype(float)
        ok = s.inside[1:] & s.inside[:-1] & (x[1:] > 30) & (x[:-1] > 30)
        return np.corrcoef(x[1:][ok], x[:-1][ok])[0, 1]

    assert np.mean([lag1(s) for s in c]) != pytest.approx(np.mean([lag1(s) for s in b]), abs=0.02)


def test_spec_names_and_bad_specs():
    samples, desc = load_spec("zsim:2:4")
    assert [s.name.split("-")[:3] for s in samples] == [["zsim", "s4", "00000"], ["zsim", "s4", "00001"]]
    assert samples[0].name.endswith(ANATOMIES) and desc == "zsim n=2 seed=4"
    for bad in ("zsim:0", "zsim:x", "zsim:2:1:3", "zsim:2:-1"):
        with pytest.raises(ValueError, match="zsim"):
            load_spec(bad)
    with pytest.raises(ValueError, match="anatomy"):
        generate_impedance(1, anatomy="skull")
    with pytest.raises(ValueError, match="probe"):
        generate_impedance(1, probe="convex")
    with pytest.raises(ValueError, match="seed"):
        generate_impedance(-1)
