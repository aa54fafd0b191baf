"""semi's clicks edit auto's mask in the reader's order (sam2rad/semi_edit.py), each on the mask the
clicks before it made; without an order, by tool as before."""
import numpy as np
import pytest
import torch

from sam2rad.backbones.base import ImageGeometry
from sam2rad.model import Prompts
from sam2rad.semi_edit import ClickEditSettings, edit_with_clicks

SIZE = 64
GEOM = ImageGeometry(SIZE, SIZE, 1.0)  # source pixels are model pixels
SETTINGS = ClickEditSettings(input_size=SIZE, threshold=0.0, reach_px=3.0, hold_window_px=None)


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.where(mask, 5.0, -5.0), dtype=torch.float32)[None, None]


def _deep_edges(logits: torch.Tensor) -> dict[int, int]:
    mask = (logits[0, 0] > 0).numpy()
    return {c: int(np.nonzero(mask[:, c])[0][-1]) for c in range(SIZE) if mask[:, c].any()}


def _surface_with_a_dip() -> tuple[torch.Tensor, torch.Tensor]:
    """auto: a surface with its deep edge on row 13, but on row 11 in columns 18-22 (a dip); the
    decoder, given a foreground point in the dip, fills it to row 13 there."""
    auto = np.zeros((SIZE, SIZE), bool)
    auto[10:14, 5:60] = True
    auto[12:14, 18:23] = False
    decoded = auto.copy()
    decoded[12:14, 18:23] = True
    return _logits(auto), _logits(decoded)


def test_an_edge_click_after_a_point_click_moves_the_edge_from_where_the_reader_saw_it():
    auto, decoded = _surface_with_a_dip()
    # The reader clicked the dip (a point), saw it filled to row 13, then put an edge click on the
    # true deep edge, row 15, in the same column: the whole deep edge should go 2 rows down.
    p = Prompts(points=[[20.0, 12.0]], labels=[1], edges=[[20.0, 15.0]], edge_labels=[1], order=("point", "edge"))
    edges = _deep_edges(edit_with_clicks(auto, decoded, p, GEOM, SETTINGS))
    assert edges[8] == edges[40] == 15 and edges[20] == 15
    # By tool (no order), the edge move is measured on auto's mask, where the dip is: 4 rows, too far.
    p.order = None
    by_tool = _deep_edges(edit_with_clicks(auto, decoded, p, GEOM, SETTINGS))
    assert by_tool[8] == by_tool[40] == 17


def test_in_the_reader_order_an_end_click_then_an_edge_click_keeps_the_cut():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[20:24, 8:56] = True
    auto = _logits(mask)
    p = Prompts(ends=[[40.0, 21.5]], edges=[[20.0, 26.0]], edge_labels=[1], order=("end", "edge"))
    out = (edit_with_clicks(auto, auto, p, GEOM, SETTINGS)[0, 0] > 0).numpy()
    cols = np.nonzero(out.any(axis=0))[0]
    assert cols[-1] < 41 and cols[0] == 8  # cut at the click, on the side away from the surface's middle
    assert _deep_edges(_logits(out))[20] == 26  # and the deep edge moved after it


def test_a_point_click_far_from_the_decoders_changes_keeps_autos_mask():
    auto, decoded = _surface_with_a_dip()
    p = Prompts(points=[[40.0, 40.0]], labels=[1], order=("point",))  # far from every change: nothing kept
    assert torch.equal(edit_with_clicks(auto, decoded, p, GEOM, SETTINGS), auto)


@pytest.mark.parametrize("kwargs,message", [
    (dict(points=[[1.0, 2.0]], labels=[1], order=("point", "edge")), "1 edge clicks, the prompts 0"),
    (dict(points=[[1.0, 2.0]], labels=[1], order=("point", "point")), "2 point clicks, the prompts 1"),
    (dict(points=[[1.0, 2.0]], labels=[1], order=("dot",)), "click order names ['dot']"),
])
def test_a_click_order_that_does_not_match_the_clicks_is_refused(kwargs, message):
    with pytest.raises(ValueError) as err:
        Prompts(**kwargs)
    assert message in str(err.value)


def test_on_the_shipped_model_an_edge_click_after_a_point_click_ends_where_the_reader_clicked():
    """A -> B long bone 16 (held-out): the reader's first click is a point in the missed deep strip,
    the second an edge click on the true deep edge. In the reader's order the deep edge goes to that
    click. By tool, measured on auto's mask, the session 18 model's edge went 3-4 rows past the true
    edge (Dice 0.05 below the reader's order); the session 22 model's point click moves less, so both
    end near the edge and the reader's order is ahead by less (0.883 against 0.875). The mechanism
    itself is checked on a drawn mask above."""
    from sam2rad.checkpoint import load_checkpoint
    from sam2rad.clicks import error_click, typical_edge_click
    from sam2rad.data.specs import load_spec
    from sam2rad.edge_click import column_ends

    model = load_checkpoint(None)
    sample = load_spec("rfsim:17:7")[0][16]
    gt = np.asarray(sample.mask) != 0
    auto = model.predict(sample.image, "auto")[0].masks[0]
    calls = model.encoder_calls
    point, label = error_click(auto, gt)
    after_point = model.predict(sample.image, "semi", Prompts(points=[point], labels=[label], order=("point",)))[0].masks[0]
    second, edge_label = error_click(after_point, gt, avoid=[(*point, label)])
    edge = typical_edge_click(after_point, gt, second, edge_label)
    assert edge is not None, "the reader's second click is an edge click here"
    both = dict(points=[point], labels=[label], edges=[edge], edge_labels=[edge_label])
    ordered = model.predict(sample.image, "semi", Prompts(**both, order=("point", "edge")))[0].masks[0]
    assert model.encoder_calls == calls, "clicks re-run only the decoder"
    col, row = int(edge[0]), int(edge[1])
    assert abs(int(np.nonzero(ordered[:, col])[0][-1]) - row) <= 1  # the deep edge is where it was clicked
    p_first, p_last, p_has = column_ends(ordered)
    g_first, g_last, g_has = column_ends(gt)
    cols = np.nonzero(p_has & g_has)[0]
    assert np.median(p_last[cols] - g_last[cols]) <= 1  # along the whole surface, not past it
    by_tool = model.predict(sample.image, "semi", Prompts(**both))[0].masks[0]
    dice = lambda m: 2 * (m & gt).sum() / (m.sum() + gt.sum())  # noqa: E731
    assert dice(ordered) > dice(by_tool)


def test_a_shift_click_moves_autos_whole_surface_in_either_order():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[20:24, 8:56] = True
    auto = _logits(mask)
    for order in (("shift",), None):
        p = Prompts(shifts=[[30.0, 25.0]], shift_labels=[1], order=order)
        out = (edit_with_clicks(auto, auto, p, GEOM, SETTINGS)[0, 0] > 0).numpy()
        assert out[22:26, 8:56].all() and not out[20:22].any() and out.sum() == mask.sum()
