"""The simulated reader (sam2rad/clicks.py): it does not repeat a click that changed nothing, and it
places an edge click where the edge is off by its typical amount."""
import numpy as np

from sam2rad.clicks import error_click, typical_edge_click


def _surface(deep_rows: np.ndarray, top: int = 20, size: int = 64, x0: int = 8) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    for i, deep in enumerate(deep_rows):
        mask[top:deep + 1, x0 + i] = True
    return mask


def test_a_region_clicked_before_that_did_not_change_is_passed_over_for_the_next_largest():
    pred = np.zeros((40, 40), bool)
    gt = pred.copy()
    gt[5:15, 5:15] = True   # a large missed region
    gt[25:30, 25:30] = True  # a smaller one
    first, label = error_click(pred, gt)
    assert label == 1 and 5 <= first[0] < 15 and 5 <= first[1] < 15
    second, _ = error_click(pred, gt, avoid=[(first[0], first[1], label)])
    assert 25 <= second[0] < 30 and 25 <= second[1] < 30
    # A background click tried there does not count against the foreground region.
    assert error_click(pred, gt, avoid=[(first[0], first[1], 0)])[0] == first
    # Every region tried: the largest again.
    both = [(first[0], first[1], 1), (second[0], second[1], 1)]
    assert error_click(pred, gt, avoid=both)[0] == first


def test_an_edge_click_goes_on_the_true_edge_where_the_edge_is_off_by_its_median():
    n = 48
    truth = np.full(n, 25)
    pred_deep = truth.copy()
    pred_deep[:30] -= 2  # the deep edge 2 rows short along most of the surface
    pred_deep[30:40] -= 5  # 5 short in one stretch: the strip's thickest part
    gt, pred = _surface(truth), _surface(pred_deep)
    point, label = error_click(pred, gt)
    assert label == 1 and 8 + 30 <= point[0] < 8 + 40  # the point click goes where the strip is thickest
    x, y = typical_edge_click(pred, gt, point, label)
    assert 8 <= x < 8 + 30 and y == 25  # on the true deep edge, where it is 2 rows off
    # Off along under half the surface: no edge is typically off, so no edge click.
    pred_deep = truth.copy()
    pred_deep[:20] -= 2
    pred = _surface(pred_deep)
    point, label = error_click(pred, gt)
    assert typical_edge_click(pred, gt, point, label) is None


def test_a_typical_shrink_click_stays_nearer_the_edge_it_names():
    truth = np.full(48, 30)
    gt = _surface(truth, top=24)
    pred = _surface(truth, top=20)  # 4 false rows above a 7-row surface
    point, label = error_click(pred, gt)
    assert label == 0
    x, y = typical_edge_click(pred, gt, point, label)
    assert y == 23  # the last false row: the shallow edge moves past it
