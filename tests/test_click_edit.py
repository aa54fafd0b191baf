"""Clicks keep only the changes connected to them (sam2rad/click_edit.py)."""
import numpy as np
import torch
from scipy import ndimage

from sam2rad.click_edit import keep_changes_at_clicks
from sam2rad.mask_parts import auto_base


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.where(mask, 5.0, -5.0), dtype=torch.float32)[None, None]


def test_a_click_takes_the_change_it_touches_and_leaves_the_rest():
    base = np.zeros((64, 64), bool)
    base[10:14, 5:60] = True  # auto's surface
    new = base.copy()
    new[10:14, 40:60] = False  # the re-decoded mask lost a stretch far from the click ...
    new[30:34, 5:30] = True  # ... and found the missed part the reader clicked on
    out = keep_changes_at_clicks(_logits(base), _logits(new), np.array([[12.0, 31.0]]), input_size=64)
    got = out[0, 0].numpy() > 0
    assert got[30:34, 5:30].all()  # added where clicked
    assert got[10:14, 40:60].all()  # the far loss was not taken
    assert (got == (base | new)).all()


def test_a_remove_click_takes_the_removal_and_clicks_scale_to_coarser_logits():
    base = np.zeros((32, 32), bool)
    base[4:8, 2:30] = True
    base[20:24, 10:20] = True  # a false blob the reader removes
    new = base.copy()
    new[20:24, 10:20] = False
    new[4:8, 2:10] = False  # also lost, away from the click
    # The click is in model-input pixels (128); the logits are 32 wide.
    out = keep_changes_at_clicks(_logits(base), _logits(new), np.array([[60.0, 88.0]]), input_size=128)
    got = out[0, 0].numpy() > 0
    assert not got[20:24, 10:20].any()
    assert got[4:8, 2:10].all()


def test_with_labels_each_click_keeps_only_changes_in_its_own_direction():
    base = np.zeros((32, 32), bool)
    base[10:14, 2:30] = True  # a thin surface, rows 10-13
    new = base.copy()
    new[14, 8:20] = True  # the reader's foreground click on the missed deep row is followed ...
    new[13, 20:26] = False  # ... and the stretch beside it lost its deep row, touching the addition
    click = np.array([[14.0, 14.0]])
    undirected = keep_changes_at_clicks(_logits(base), _logits(new), click, input_size=32)[0, 0].numpy() > 0
    assert not undirected[13, 20:26].any()  # one region to the undirected rule: the loss came along
    got = keep_changes_at_clicks(_logits(base), _logits(new), click, input_size=32, labels=np.array([1]))[0, 0].numpy() > 0
    assert got[14, 8:20].all()  # the addition the click asked for
    assert got[13, 20:26].all()  # no loss from a foreground click
    # A background click in the same place takes no addition, and no removal it does not touch.
    bg = keep_changes_at_clicks(_logits(base), _logits(new), click, input_size=32, labels=np.array([0]))
    assert torch.equal(bg, _logits(base))


def test_a_background_click_on_an_edge_strip_takes_rows_only_as_deep_as_the_click():
    base = np.zeros((32, 32), bool)
    base[8:16, 2:30] = True  # the surface, rows 8-15
    base[24:28, 10:16] = True  # a false piece under it
    new = base.copy()
    new[8:14, 6:20] = False  # the decoder took 6 rows around a click on the second row from the top
    new[24:28, 10:16] = False
    labels = np.array([0])
    got = keep_changes_at_clicks(_logits(base), _logits(new), np.array([[12.0, 9.0]]), 32, labels=labels)[0, 0].numpy() > 0
    assert not got[8:10, 6:20].any()  # the clicked strip and the row above it go
    assert got[10:14, 6:20].all()  # deeper than the click: kept
    assert got[24:28, 10:16].all()  # not touched by the click
    piece = keep_changes_at_clicks(_logits(base), _logits(new), np.array([[12.0, 27.0]]), 32, labels=labels)
    assert not (piece[0, 0].numpy() > 0)[24:28, 10:16].any()  # a false piece goes whole, wherever clicked
    middle = keep_changes_at_clicks(_logits(base), _logits(new), np.array([[12.0, 11.5]]), 32, labels=labels)
    assert not (middle[0, 0].numpy() > 0)[8:14, 6:20].any()  # mid-run: the whole removal


def test_no_change_at_the_click_leaves_auto_as_it_was():
    base = np.zeros((32, 32), bool)
    base[4:8, 2:30] = True
    new = np.zeros((32, 32), bool)  # everything lost, but nowhere near the click
    out = keep_changes_at_clicks(_logits(base), _logits(new), np.array([[2.0, 28.0]]), input_size=32)
    assert torch.equal(out, _logits(base))


def test_auto_base_drops_autos_small_parts_so_a_click_elsewhere_does_not_bring_them_back():
    mask = np.zeros((40, 40), bool)
    mask[5:10, 2:38] = True  # 180 px
    mask[30:32, 30:32] = True  # 4 px: under a tenth of the largest part
    base = auto_base(_logits(mask), 0.0, 0.1)[0, 0].numpy() > 0
    assert base[5:10, 2:38].all() and not base[30:32, 30:32].any()
    assert (auto_base(_logits(mask), 0.0, None)[0, 0].numpy() > 0).sum() == mask.sum()


def test_semi_clicks_on_the_shipped_model_change_only_regions_that_touch_them():
    from sam2rad.checkpoint import load_checkpoint
    from sam2rad.data.specs import load_spec
    from sam2rad.model import Prompts
    from sam2rad.clicks import error_click

    model = load_checkpoint(None)
    sample = load_spec("rfsim:1:7")[0][0]
    gt = np.asarray(sample.mask) != 0
    auto = model.predict(sample.image, "auto")[0].masks[0]
    point, label = error_click(auto, gt)
    semi = model.predict(sample.image, "semi", Prompts(points=[point], labels=[label]))[0].masks[0]
    changed = auto ^ semi
    regions, n = ndimage.label(changed, structure=np.ones((3, 3), bool))
    x, y = int(point[0]), int(point[1])
    near = np.zeros_like(changed)
    near[max(0, y - 8):y + 9, max(0, x - 8):x + 9] = True  # 3 model px, resized to source, with slack
    touching = set(np.unique(regions[near])) - {0}
    assert n >= 1 and set(range(1, n + 1)) == touching  # the click changed something, all of it connected
