"""The one-edge tools' ceiling (sam2rad/click_ceiling.py): an oracle reader's clicks on known errors."""
import numpy as np
import pytest

from sam2rad.click_ceiling import LOCAL_HALF_WIDTH, column_runs, oracle_clicks, runs_dice
from sam2rad.metrics import dice


def band(first: int, last: int, cols: range, shape=(40, 100)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[first:last + 1, cols.start:cols.stop] = True
    return m


GT = band(10, 14, range(20, 81))


def test_runs_dice_is_the_pixel_dice_of_one_run_per_column_masks():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
        for m in (a, b):
            for c in rng.choice(40, 25, replace=False):
                top = rng.integers(0, 25)
                m[top:top + rng.integers(1, 6), c] = True
        assert runs_dice(*column_runs(a), *column_runs(b)) == pytest.approx(dice(a, b))


def test_a_deep_edge_off_along_the_whole_surface_takes_one_surface_click():
    pred = band(10, 16, range(20, 81))
    trace = oracle_clicks(pred, GT, ("surface",), target=0.99)
    assert trace.dice[0] < 0.9 and trace.dice[-1] == 1.0 and trace.tools == ["surface"]
    assert trace.clicks_to(0.90, 10) == 1


def test_a_short_stretch_needs_a_local_click_and_a_missed_end_an_end_click():
    span = 2 * LOCAL_HALF_WIDTH + 1
    pred = GT.copy()
    pred[15:17, 30:30 + span] = True  # the deep edge 2 rows too deep over one local window
    pred[:, 70:81] = False  # the surface stops 11 columns short
    surface_only = oracle_clicks(pred, GT, ("surface",), target=1.0)
    assert surface_only.dice[-1] == surface_only.dice[0]  # moving every column makes it worse
    full = oracle_clicks(pred, GT, target=1.0)
    assert full.dice[-1] == 1.0 and sorted(full.tools) == ["end", "local"]
    assert full.clicks_to(1.0, 10) == 2 and surface_only.clicks_to(0.99, 10) == 10


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown tools"):
        oracle_clicks(GT, GT, ("brush",))
    with pytest.raises(ValueError, match="one shape"):
        oracle_clicks(GT, GT[:, :50])


def test_a_band_too_shallow_as_a_whole_takes_one_shift_click_not_two_edge_clicks():
    pred = band(8, 12, range(20, 81))  # the right thickness, 2 rows too shallow
    edges_only = oracle_clicks(pred, GT, ("surface", "end", "local"), target=1.0)
    with_shift = oracle_clicks(pred, GT, target=1.0)
    assert with_shift.tools == ["shift"] and with_shift.dice[-1] == 1.0
    assert edges_only.clicks_to(1.0, 10) == 2 and set(edges_only.tools) == {"surface"}
