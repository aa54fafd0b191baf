"""Edge clicks move a whole edge of the surface, in depth, to the click (sam2rad/edge_click.py), and
the simulated reader picks that tool only for error strips along a whole edge (sam2rad/clicks.py)."""
import numpy as np
import pytest
import torch

from sam2rad.clicks import error_click, surface_end_click, typical_edge_click
from sam2rad.edge_click import (HOLD_REACH_PX, HOLD_WINDOW_PX, MAX_MOVE_PX, apply_edge_clicks, apply_end_clicks,
                                hold_point_clicks, move_edge)
from sam2rad.model import Prompts


def _band(top: int = 20, deep: int = 25, size: int = 64, x0: int = 8, x1: int = 56) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:deep + 1, x0:x1] = True
    return mask


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.where(mask, 5.0, -5.0), dtype=torch.float32)[None, None]


def _rows(logits: torch.Tensor, col: int) -> tuple[int, int]:
    rows = np.nonzero((logits[0, 0, :, col] > 0).numpy())[0]
    return int(rows[0]), int(rows[-1])


@pytest.mark.parametrize("y,grow,expected", [
    (28, True, (20, 28)),   # below the deep edge: the surface reaches the click
    (17, True, (17, 25)),   # above the shallow edge
    (24, False, (20, 23)),  # inside, nearer the deep edge: it moves up past the click
    (21, False, (22, 25)),  # inside, nearer the shallow edge: it moves down past the click
])
def test_the_nearest_edge_moves_to_the_click_along_the_whole_surface(y, grow, expected):
    moved = move_edge(_logits(_band()), x=30, y=y, grow=grow)
    for col in (10, 30, 54):  # far from the click too: the whole edge
        assert _rows(moved, col) == expected
    assert not (moved[0, 0, :, :8] > 0).any() and not (moved[0, 0, :, 56:] > 0).any()  # the extent stays


def test_a_shrink_click_just_outside_the_thresholded_run_still_moves_that_edge():
    # A source pixel on the mask's outermost row can land a fraction of a logit pixel outside the run.
    assert _rows(move_edge(_logits(_band()), x=30, y=19.2, grow=False), 30) == (21, 25)
    assert _rows(move_edge(_logits(_band()), x=30, y=25.8, grow=False), 30) == (20, 24)
    assert torch.equal(move_edge(_logits(_band()), x=30, y=27.5, grow=False), _logits(_band()))  # further: nothing


def test_reach_refuses_moves_from_far_away():
    logits = _logits(_band())
    assert torch.equal(move_edge(logits, x=30, y=25 + HOLD_REACH_PX + 2, grow=True, reach=HOLD_REACH_PX), logits)
    assert _rows(move_edge(logits, x=30, y=28, grow=True, reach=HOLD_REACH_PX), 30) == (20, 28)


def test_a_point_click_the_mask_ignores_moves_the_nearest_edge_locally_and_tapers_off():
    logits = _logits(_band())
    held = hold_point_clicks(logits, np.array([[30.0, 28.0]]), np.array([1]), input_size=64)
    assert _rows(held, 30) == (20, 28)  # the clicked pixel is now in the mask
    assert _rows(held, 32) == (20, 28)  # next to it too
    for col in (30 - int(HOLD_WINDOW_PX) + 1, 30 + int(HOLD_WINDOW_PX) - 1, 10, 54):  # the taper faded: unchanged
        assert _rows(held, col) == (20, 25)
    assert (held >= logits).all()  # a foreground click only adds
    removed = hold_point_clicks(logits, np.array([[30.0, 24.0]]), np.array([0]), input_size=64)
    assert _rows(removed, 30) == (20, 23) and (removed <= logits).all()
    # Clicks the mask obeys, or far from any edge (beside the surface, or off its end in depth), change nothing.
    for xy, label in (((30.0, 22.0), 1), ((30.0, 50.0), 1), ((3.0, 40.0), 1), ((30.0, 40.0), 0)):
        assert torch.equal(hold_point_clicks(logits, np.array([xy]), np.array([label]), input_size=64), logits)


def test_a_foreground_click_beyond_the_end_of_a_surface_extends_it_to_the_click():
    logits = _logits(_band(20, 25, x0=8, x1=40))  # the surface ends at column 39
    held = hold_point_clicks(logits, np.array([[46.0, 26.0]]), np.array([1]), input_size=64)
    mask = (held[0, 0] > 0).numpy()
    assert mask[26, 46] and mask[:, 40:47].any(axis=0).all()  # it reaches the click, no gap on the way
    assert not mask[:, 47:].any() and (held >= logits).all()  # not past the click; only adds
    rows = [np.nonzero(mask[:, c])[0].mean() for c in (40, 43, 46)]
    assert rows[0] < rows[1] < rows[2]  # drifting from the surface's depth to the click's
    for x, y in ((60.0, 22.0), (44.0, 50.0)):  # too far along, or too far in depth: nothing
        assert torch.equal(hold_point_clicks(logits, np.array([[x, y]]), np.array([1]), input_size=64), logits)


def test_a_held_click_does_not_move_other_parts_in_its_columns():
    mask = _band()
    mask[40:44, 24:36] = True  # a second part under the click's columns
    logits = _logits(mask)
    held = hold_point_clicks(logits, np.array([[30.0, 28.0]]), np.array([1]), input_size=64)
    assert torch.equal(held[..., 35:, :], logits[..., 35:, :])


def test_clicks_that_name_no_edge_change_nothing():
    logits = _logits(_band())
    for x, y, grow in ((3, 22, True), (30, 22, True), (30, 40, False)):  # no mask in the column; grow inside; shrink outside
        assert torch.equal(move_edge(logits, x, y, grow), logits)


def test_moves_are_sub_pixel_capped_and_scale_to_coarser_logits():
    logits = torch.linspace(-8, 8, 64).repeat(64, 1).t().contiguous()[None, None]  # rises with depth: edge at ~32
    half = move_edge(-logits, x=30, y=31.5 + 0.5, grow=True)  # a mask above row ~32, grown by half a row
    assert (half >= -logits).all() and (half > -logits).any()
    far = move_edge(_logits(_band()), x=30, y=63, grow=True)
    assert _rows(far, 30)[1] == 25 + int(MAX_MOVE_PX)
    # Model-input pixels (256) onto 64-pixel logits: a click at input row 112 is logit row 28.
    coarse = apply_edge_clicks(_logits(_band()), np.array([[120.0, 112.0]]), np.array([1]), input_size=256)
    assert _rows(coarse, 10) == (20, 28)


def test_an_edge_click_moves_a_sloped_stretch_further_in_rows_the_same_distance_along_its_normal():
    mask = np.zeros((64, 64), bool)
    for c in range(4, 60):
        top = 20 + max(0, c - 32)  # flat, then falling one row per column (45 degrees)
        mask[top:top + 5, c] = True
    moved = apply_edge_clicks(_logits(mask), np.array([[16.0, 26.0]]), np.array([1]), input_size=64)
    deep = lambda m, c: int(np.nonzero(m[:, c])[0].max())  # noqa: E731
    after = (moved[0, 0] > 0).numpy()
    assert deep(after, 16) - deep(mask, 16) == 2  # at the click: to the click
    assert deep(after, 46) - deep(mask, 46) == 2 + 1  # at 45 degrees: 2 * sqrt(2) rows = the same 2 along the normal
    assert (moved >= _logits(mask)).all()


def test_an_edge_shrink_leaves_a_thin_stretch_of_surface_in_place():
    mask = _band(20, 25, x0=8, x1=56)
    mask[22:26, 40:56] = False  # rows 20-21 only from column 40 on: thinner than the move
    shrunk = (apply_edge_clicks(_logits(mask), np.array([[20.0, 21.0]]), np.array([0]), input_size=64)[0, 0] > 0).numpy()
    assert _rows(torch.as_tensor(shrunk, dtype=torch.float32)[None, None] * 2 - 1, 20) == (22, 25)  # the top moved
    assert shrunk[:, 8:56].any(axis=0).all()  # no column of the surface vanished


def test_the_reader_clicks_the_middle_of_a_thin_strip_and_training_keeps_its_first_pixel():
    pred = _band(20, 25, size=96, x0=10, x1=86)
    gt = pred.copy()
    gt[26, 30:71] = True  # a one-pixel strip below the deep edge, columns 30-70
    assert error_click(pred, gt) == ([50.0, 26.0], 1)
    assert error_click(pred, gt, strip_middle=False) == ([30.0, 26.0], 1)


def test_the_reader_takes_the_edge_tool_only_for_an_edge_off_along_most_of_the_surface():
    pred = _band(20, 25, size=96, x0=10, x1=86)
    strip = pred.copy()
    strip[26:29, 12:80] = True  # the truth reaches 3 rows deeper along most of the surface
    point, label = error_click(pred, strip)
    assert label == 1 and typical_edge_click(pred, strip, point, label)[1] == 28.0  # on the true deep edge
    broken = pred.copy()
    broken[26:29, 12:84] = True
    broken[26:29, 30:84:18] = False  # the same edge off along most of the surface, in pieces
    point, label = error_click(pred, broken)
    assert typical_edge_click(pred, broken, point, label) is not None
    sliver = pred.copy()
    sliver[26:29, 40:46] = True  # the same error over 6 columns: a point click
    point, label = error_click(pred, sliver)
    assert typical_edge_click(pred, sliver, point, label) is None
    piece = pred.copy()
    piece[60:70, 90:95] = True  # a missed piece where the mask has no column: a point click
    point, label = error_click(pred, piece)
    assert typical_edge_click(pred, piece, point, label) is None
    too_long = pred.copy()
    too_long[:, 50:] = False  # the mask runs on 36 columns past the surface's end: that whole run is
    point, label = error_click(pred, too_long)  # false, so there is no edge to move there
    assert label == 0 and typical_edge_click(pred, too_long, point, label) is None


def test_a_background_click_in_the_middle_of_a_run_cuts_the_surface_back_outwards():
    logits = _logits(_band(20, 25, x0=8, x1=56))
    for cut in (hold_point_clicks(logits, np.array([[46.0, 22.5]]), np.array([0]), input_size=64),  # the decoder left it
                apply_end_clicks(logits, np.array([[46.0, 22.5]]), input_size=64)):  # the end tool
        mask = (cut[0, 0] > 0).numpy()
        assert not mask[:, 46:].any()  # from the click outwards (away from the surface's middle): gone
        assert np.array_equal(mask[:, :46], (logits[0, 0] > 0).numpy()[:, :46]) and (cut <= logits).all()
    # A held click near an edge, or mid-surface far from both ends, is a thickness click: nothing is cut.
    thinned = (hold_point_clicks(logits, np.array([[46.0, 24.0]]), np.array([0]), input_size=64)[0, 0] > 0).numpy()
    assert thinned[:, 46:56].any(axis=0).all() and not thinned[24, 46]
    wide = _logits(_band(20, 25, size=128, x0=4, x1=124))
    kept = (hold_point_clicks(wide, np.array([[70.0, 22.5]]), np.array([0]), input_size=128)[0, 0] > 0).numpy()
    assert kept[:, 70:124].any(axis=0).all()
    # The edge tool never cuts: a background edge click moves the nearer edge past it.
    assert _rows(apply_edge_clicks(logits, np.array([[46.0, 22.0]]), np.array([0]), input_size=64), 50) == (23, 25)


def test_a_background_click_in_the_middle_of_a_false_piece_removes_the_whole_piece():
    mask = _band(20, 25, x0=8, x1=56)
    mask[40:45, 20:32] = True  # a false piece under the surface
    logits = _logits(mask)
    cut = hold_point_clicks(logits, np.array([[22.0, 42.0]]), np.array([0]), input_size=64)
    assert np.array_equal((cut[0, 0] > 0).numpy(), _band(20, 25, x0=8, x1=56))
    # A piece over a quarter of the surface's size (ribs come in pieces) goes whole too when the click
    # is in its middle half; near its end the click only says where it ends, and it is cut back there.
    big = mask.copy()
    big[40:45, 12:52] = True
    whole = (hold_point_clicks(_logits(big), np.array([[30.0, 42.0]]), np.array([0]), input_size=64)[0, 0] > 0).numpy()
    assert np.array_equal(whole, _band(20, 25, x0=8, x1=56))
    end = (hold_point_clicks(_logits(big), np.array([[48.0, 42.0]]), np.array([0]), input_size=64)[0, 0] > 0).numpy()
    assert end[40:45, 12:48].all() and not end[40:45, 48:52].any()


def test_an_end_click_cuts_a_surface_back_or_extends_it_to_the_click():
    logits = _logits(_band(20, 25, x0=8, x1=40))  # the surface ends at column 39
    longer = (apply_end_clicks(logits, np.array([[52.0, 30.0]]), input_size=64)[0, 0] > 0).numpy()
    assert longer[:, 40:53].any(axis=0).all() and not longer[:, 53:].any()  # reaches the click, no gap, not past it
    assert longer[30, 52] or longer[29:32, 52].any()  # at the click's depth: beyond the hold's 8-row reach
    # One column past the end, the model's pixels the source's: the surface goes on to it, not back.
    one = (apply_end_clicks(logits, np.array([[40.0, 22.5]]), input_size=64)[0, 0] > 0).numpy()
    assert one[20:26, 8:41].all() and not one[:, 41:].any()
    apart = _band(20, 25, x0=8, x1=40) | _band(20, 25, x0=46, x1=60)  # a false piece past the end
    cut = (apply_end_clicks(_logits(apart), np.array([[46.0, 22.5]]), input_size=64)[0, 0] > 0).numpy()
    assert np.array_equal(cut, _band(20, 25, x0=8, x1=40))  # at its near end: the whole piece goes


def test_end_clicks_with_nothing_to_end_change_nothing():
    empty = _logits(np.zeros((64, 64), bool))
    assert torch.equal(apply_end_clicks(empty, np.array([[30.0, 30.0]]), input_size=64), empty)
    far = _logits(_band(20, 25, x0=8, x1=20))  # the nearest end is 43 columns away at 64-column reach: in reach
    assert (apply_end_clicks(far, np.array([[63.0, 22.0]]), input_size=64)[0, 0, :, 63] > 0).any()
    wide = _logits(_band(20, 25, size=256, x0=8, x1=40))  # 200 columns from its end: out of reach
    assert torch.equal(apply_end_clicks(wide, np.array([[240.0, 22.0]]), input_size=256), wide)


def test_the_reader_ends_a_surface_where_the_true_one_ends():
    pred, gt = _band(20, 25, size=96, x0=10, x1=86), _band(20, 25, size=96, x0=10, x1=61)
    point, label = error_click(pred, gt)
    assert label == 0 and point[0] > 61
    end = surface_end_click(pred, gt, point, label)
    assert end == [61.0, 22.5]  # one column past the true end, the middle of the run
    assert np.array_equal((apply_end_clicks(_logits(pred), np.array([end]), input_size=96)[0, 0] > 0).numpy(), gt)
    short = _band(20, 25, size=96, x0=10, x1=40)  # the mask stops 21 columns short: the true end, its middle
    assert surface_end_click(short, gt, *error_click(short, gt)) == [60.0, 22.5]
    apart = pred.copy()
    apart[:, 62] = False  # the false run is a piece of its own, wholly past the end: its near end
    assert surface_end_click(apart, gt, *error_click(apart, gt)) == [63.0, 22.5]
    gap = short | _band(20, 25, size=96, x0=70, x1=86)
    assert surface_end_click(gap, _band(20, 25, size=96, x0=10, x1=86), *error_click(gap, _band(20, 25, size=96, x0=10, x1=86))) is None
    thick = _band(18, 25, size=96, x0=10, x1=86)  # a strip along the top: not about the surface's end
    assert surface_end_click(thick, pred, *error_click(thick, pred)) is None


def test_edge_click_prompts_are_checked():
    with pytest.raises(ValueError, match="end click coordinates must be finite"):
        Prompts(ends=[[np.inf, 2]])
    assert not Prompts(ends=[[1, 2]]).empty and Prompts(ends=[[1, 2]]).surface_clicks
    with pytest.raises(ValueError, match="edge labels"):
        Prompts(edges=[[1, 2]], edge_labels=[3])
    with pytest.raises(ValueError, match="2 edges but 1 labels"):
        Prompts(edges=[[1, 2], [3, 4]], edge_labels=[1])
    with pytest.raises(ValueError, match="finite"):
        Prompts(points=[[np.nan, 2]])
    assert not Prompts(edges=[[1, 2]]).empty


def _shipped_model_on_a_b_frame():
    """The shipped model, a B frame, its auto mask shown (encoding cached), the surface's columns, the
    middle one and the deep edge's row there."""
    from sam2rad.checkpoint import load_checkpoint
    from sam2rad.data.specs import load_spec

    model = load_checkpoint(None)
    sample = load_spec("rfsim:1:7")[0][0]
    auto = model.predict(sample.image, "auto")[0].masks[0]
    cols = np.nonzero(auto.any(axis=0))[0]
    x = int(cols[len(cols) // 2])
    return model, sample, auto, cols, x, int(np.nonzero(auto[:, x])[0].max())


def test_an_edge_click_on_the_shipped_model_moves_the_deep_edge_everywhere_without_re_encoding():
    model, sample, auto, cols, x, deep = _shipped_model_on_a_b_frame()
    calls = model.encoder_calls
    grown = model.predict(sample.image, "semi", Prompts(edges=[[x, deep + 3]], edge_labels=[1]))[0].masks[0]
    assert model.encoder_calls == calls  # the cached encoding: no encoder pass
    assert (grown >= auto).all()  # growing only adds
    added = (grown & ~auto).any(axis=0)
    far = np.abs(cols - x) > len(cols) // 4  # columns a quarter of the surface away from the click
    assert added[cols[far]].mean() > 0.5  # the edge moved there too, not only next to the click
    shrunk = model.predict(sample.image, "semi", Prompts(edges=[[x, deep]], edge_labels=[0]))[0].masks[0]
    assert (shrunk <= auto).all() and shrunk.sum() < auto.sum()
    with pytest.raises(ValueError, match="semi mode only"):
        model.predict(sample.image, "manual", Prompts(edges=[[x, deep]]))
    with pytest.raises(ValueError, match="semi mode only"):
        model.predict(sample.image, "manual", Prompts(ends=[[x, deep]]))
    # With a reader's box the box-prompted mask is taken whole, and an edge click moves its edge.
    ys, xs = np.nonzero(auto)
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    boxed = model.predict(sample.image, "semi", Prompts(box=box))[0].masks[0]
    deep_boxed = int(np.nonzero(boxed[:, x])[0].max())
    both = model.predict(sample.image, "semi", Prompts(box=box, edges=[[x, deep_boxed + 3]], edge_labels=[1]))[0].masks[0]
    assert (both >= boxed).all() and both.sum() > boxed.sum()


def test_a_point_click_on_the_shipped_model_ends_up_the_way_the_reader_said_near_the_click_only():
    model, sample, auto, cols, x, deep = _shipped_model_on_a_b_frame()
    calls = model.encoder_calls
    click = Prompts(points=[[x, deep + 3]], labels=[1])
    model.hold_window_px = None
    plain = model.predict(sample.image, "semi", click)[0].masks[0]
    model.hold_window_px = HOLD_WINDOW_PX
    held = model.predict(sample.image, "semi", click)[0].masks[0]
    assert model.encoder_calls == calls
    assert not plain[deep + 3, x] and held[deep + 3, x]  # the decoder alone did not take the pixel; the hold does
    reach = int(np.ceil((HOLD_WINDOW_PX + 1) / model.encode([sample.image])[0].geometry.scale)) + 2
    far = np.abs(np.arange(auto.shape[1]) - x) > reach
    assert np.array_equal(held[:, far], plain[:, far])  # a local move: nothing changes away from the click


def test_an_edge_click_moves_every_column_by_whole_source_rows_wherever_its_edge_sits_in_a_pixel():
    # Soft logits whose deep edge crosses the threshold anywhere inside a row, shown on a source grid
    # 1.25x finer (a 320-pixel frame in a 256 model input): a click one or two source rows past the
    # edge moves nearly every column's last source row by exactly that many rows.
    import torch.nn.functional as F

    size, source_side, scale = 64, 80, 0.8
    rows = np.arange(size)[:, None].astype(float)
    deep = 30 + np.random.default_rng(0).uniform(0, 1, size)
    values = np.minimum(rows - 20, deep[None, :] - rows) * 4.0
    values[:, :8] = values[:, 56:] = -5.0
    logits = torch.as_tensor(values, dtype=torch.float32)[None, None]

    def last_rows(lg):
        shown = (F.interpolate(lg, size=(source_side, source_side), mode="bilinear", align_corners=False)[0, 0] > 0)
        return np.array([np.nonzero(shown[:, c].numpy())[0][-1] for c in range(14, 66)])

    before = last_rows(logits)
    for label, rows_moved in ((1, 2), (1, 1), (0, -1)):
        col = 40
        clicked_row = before[col - 14] + rows_moved + (0 if label else 1)  # a grow reaches it, a shrink drops it
        model_px = (np.array([[col, clicked_row]]) + 0.5) * scale - 0.5
        moved = apply_edge_clicks(logits, model_px, np.array([label]), size, 0.0, source_scale=scale)
        assert np.mean(last_rows(moved) - before == rows_moved) >= 0.85


def test_an_end_click_extends_a_tapered_surface_with_its_body_not_its_one_pixel_tip():
    mask = _band(20, 25, x0=20, x1=56)
    mask[:, 20:22] = False
    mask[22, 20:22] = True  # the surface tapers to one row over its last two columns
    extended = apply_end_clicks(_logits(mask), np.array([[14.0, 22.0]]), input_size=64)
    for col in (15, 17, 19):
        top, deep = _rows(extended, col)
        assert deep - top >= 4  # as thick as the surface, not a one-row line


@pytest.mark.parametrize("click_x", [99.0, 100.0, 101.0, 102.0, 140.0])
def test_an_end_click_leaves_its_own_pixel_outside_the_mask_once_upsampled(click_x):
    """The cut is made on the logit grid, and the mask reaches the reader through bilinear upsampling:
    a kept logit column beside the click's exact position must not bring the clicked pixel back."""
    logits = _logits(_band(20, 25, x0=8, x1=60))  # 64 logit columns; the model input has 128
    cut = apply_end_clicks(logits, np.array([[click_x, 45.0]]), input_size=128)
    up = torch.nn.functional.interpolate(cut, size=(128, 128), mode="bilinear", align_corners=False)[0, 0] > 0
    x = int(click_x)
    assert not up[40:52, x:].any()  # the click and everything beyond it are gone
    assert up[40:52, 20:x].all()  # the pixel before the click stays: the cut ends between logit columns


@pytest.mark.parametrize("click_x", [21.0, 22.0, 23.0])
def test_an_end_click_near_the_start_of_a_surface_cuts_it_back_inwards_to_the_click(click_x):
    logits = _logits(_band(20, 25, x0=8, x1=60))
    cut = apply_end_clicks(logits, np.array([[click_x, 45.0]]), input_size=128)
    up = torch.nn.functional.interpolate(cut, size=(128, 128), mode="bilinear", align_corners=False)[0, 0] > 0
    x = int(click_x)
    assert not up[40:52, :x + 1].any() and up[40:52, x + 1:100].all()


@pytest.mark.parametrize("y,grow,expected", [
    (28, True, (23, 28)),   # below the deep edge: the deep edge reaches the click, the shallow edge follows
    (17, True, (17, 22)),   # above the shallow edge: up
    (21, False, (22, 27)),  # inside, nearer the shallow edge: the shallow edge moves past the click, the deep one too
])
def test_a_shift_click_moves_the_whole_surface_with_the_edge_it_names(y, grow, expected):
    moved = move_edge(_logits(_band()), x=30, y=y, grow=grow, translate=True)
    for col in (10, 30, 54):
        assert _rows(moved, col) == expected
    assert (moved[0, 0] > 0).sum() == (_logits(_band())[0, 0] > 0).sum()  # moved, not grown or thinned


def test_the_reader_shifts_a_surface_whose_edges_are_both_off_the_same_way():
    from sam2rad.clicks import surface_shift_click

    gt = _band(20, 25)
    shallow = _band(19, 24)  # the whole surface a row too shallow
    point, label = error_click(shallow, gt)
    click = surface_shift_click(shallow, gt, point, label)
    assert click is not None
    moved = move_edge(_logits(shallow), *click, grow=bool(label), translate=True)
    assert ((moved[0, 0] > 0).numpy() == gt).all()
    thin = _band(20, 23)  # only the deep edge is off: an edge click, not a shift
    assert surface_shift_click(thin, gt, *error_click(thin, gt)) is None
    piece = _band(19, 24)
    piece[40:46, 15:40] = True  # a false piece of its own, the largest error, away from the surface
    point, label = error_click(piece, gt)
    assert label == 0 and point[1] >= 40
    assert surface_shift_click(piece, gt, point, label) is None
