"""Review logic without a browser: worklist, clicks (semi), from scratch (manual), undo/redo, accept ->
SEMIAUTOMATIC/MANUAL SEG through sink and ledger, second accept refused, reject, the correction table."""
from __future__ import annotations

import numpy as np
from scipy import ndimage
import pydicom
import pytest

from pipeline.ledger import Ledger
from pipeline.review import AlreadyReviewed, ReviewInputError, ReviewNotFound, read_corrections
from tests.review_run import RUN_ID, copy_review_run, demo_model, missed_and_false_pixels, review_station


@pytest.fixture(scope="module")
def station_run(tmp_path_factory):
    run = copy_review_run(tmp_path_factory.mktemp("review-station"))
    return run, review_station(run)


def test_worklist_puts_needs_review_first(station_run):
    run, station = station_run
    assert station.runs() == [RUN_ID]
    items = station.run(RUN_ID).items
    assert len(items) == 7  # 6 single frames + 1 cine of the synthetic demo studies
    flags = [i.needs_review for i in items]
    assert flags == sorted(flags, reverse=True)  # needs-review first
    floor = demo_model().confidence_reference.floor  # the nightly recorded the model's own floor
    for item in items:
        assert set(item.reasons) <= {"low-confidence", "empty-mask", "audit-flagged"}
        assert item.confidence_floor == pytest.approx(floor)
        assert ("low-confidence" in item.reasons) == (item.confidence < floor)
    progress = station.progress(station.run(RUN_ID))
    assert (progress.reviewed, progress.to_do) == (0, 7)
    with pytest.raises(ReviewNotFound):
        station.run("nightly-../../etc")
    with pytest.raises(ReviewNotFound):
        station.open(RUN_ID, "1.2.3.4")


def _single_frame_with_errors(station, run):
    """A single-frame instance whose nightly mask both misses bone and marks non-bone."""
    for item in station.run(RUN_ID).items:
        if item.n_frames != 1:
            continue
        opened = station.open(RUN_ID, item.sop_uid)
        missed, false = missed_and_false_pixels(opened.edit.mask(1)[..., 0], run.reference(item.sop_uid)[0])
        if missed and false:
            return opened, missed, false
    pytest.fail("no demo instance with both a missed and a false part")


def test_clicks_undo_redo_accept_and_second_accept(station_run):
    run, station = station_run
    opened, missed, false = _single_frame_with_errors(station, run)
    edit = opened.edit
    ai = edit.mask(1).copy()
    calls = station.model.encoder_calls
    grown = edit.click(1, *missed, foreground=True)
    assert grown.shape == ai.shape
    after_click = grown.copy()
    edit.click(1, *false, foreground=False)
    assert station.model.encoder_calls - calls <= 1  # one encoding of the frame, clicks decode only
    assert edit.undo() and np.array_equal(edit.mask(1), after_click)
    assert edit.redo() and edit.corrections == 2
    with pytest.raises(ReviewInputError, match="outside the frame"):
        edit.click(1, 10_000, 5)

    result = station.accept(opened.edit_id, "reader.one")
    assert result.delivery == "stored"
    ds = pydicom.dcmread(result.seg_path)
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert "reviewed" in ds.SeriesDescription
    assert ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == opened.item.sop_uid
    nightly = pydicom.dcmread(station.run(RUN_ID).seg_path(opened.item), stop_before_pixels=True)
    assert ds.SeriesInstanceUID != nightly.SeriesInstanceUID  # its own series
    assert list(run.outbox.rglob(f"{result.seg_sop_uid}.dcm"))  # in the sink
    entry = [e for e in Ledger(run.runs_dir / "ledger.sqlite").counts().items()]
    assert dict(entry)["done"] >= 8  # 7 nightly + 1 reviewed

    again = station.open(RUN_ID, opened.item.sop_uid)
    with pytest.raises(AlreadyReviewed, match="reader.one"):
        station.accept(again.edit_id, "reader.two")
    table = read_corrections(run.run_dir)
    row = table[table.sop_uid == opened.item.sop_uid].iloc[0]
    assert row["outcome"] == "accepted" and row["mode"] == "semi" and row["clicks"] == 2
    assert 0 <= row["dice"] <= 1 and row["seconds"] >= 0
    assert "reader" not in table.columns  # UIDs and measurements only


def test_an_edge_click_moves_the_whole_deep_edge_and_undoes(station_run):
    _, station = station_run
    items = [i for i in station.run(RUN_ID).items if i.status == "to-do" and i.n_frames == 1]
    opened = station.open(RUN_ID, items[-1].sop_uid)
    edit = opened.edit
    ai = edit.mask(1)[..., 0].copy()
    cols = np.nonzero(ai.any(axis=0))[0]
    x = int(cols[len(cols) // 2])
    deep = int(np.nonzero(ai[:, x])[0].max())
    grown = edit.click(1, x, deep + 4, foreground=True, edge=True)[..., 0]
    assert (grown >= ai).all() and grown.sum() > ai.sum()
    far = cols[np.abs(cols - x) > len(cols) // 4]  # a quarter of the surface away from the click
    assert (grown[:, far] & ~ai[:, far]).any(axis=0).mean() > 0.5
    assert edit.state.prompts(1).clicks[-1].edge
    assert edit.undo() and np.array_equal(edit.mask(1)[..., 0], ai)
    edit.start_from_scratch()
    with pytest.raises(ReviewInputError, match="edge clicks"):
        edit.click(1, x, deep + 4, edge=True)


def test_an_end_click_cuts_the_surface_back_to_the_click_and_undoes(station_run):
    _, station = station_run
    items = [i for i in station.run(RUN_ID).items if i.status == "to-do" and i.n_frames == 1]
    edit = station.open(RUN_ID, items[-1].sop_uid).edit
    ai = edit.mask(1)[..., 0].copy()
    cols = np.nonzero(ai.any(axis=0))[0]
    x = int(cols[len(cols) * 4 // 5])  # a fifth of the surface's columns in from its right end
    rows = np.nonzero(ai[:, x])[0]
    piece = ndimage.label(ai, structure=np.ones((3, 3)))[0]
    piece = piece == piece[rows[0], x]
    cut = edit.click(1, x, float(rows.mean()), foreground=False, end=True)[..., 0]
    assert not (cut & piece)[:, x + 2:].any() and (cut <= ai).all()  # from the click outwards: gone
    assert np.array_equal(cut[:, :x - 2], ai[:, :x - 2])  # the rest of the surface stays
    assert edit.state.prompts(1).clicks[-1].end
    assert edit.undo() and np.array_equal(edit.mask(1)[..., 0], ai)
    with pytest.raises(ReviewInputError, match="not several"):
        edit.click(1, x, float(rows.mean()), edge=True, end=True)


def test_a_whole_surface_click_moves_both_edges_and_undoes(station_run):
    _, station = station_run
    items = [i for i in station.run(RUN_ID).items if i.status == "to-do" and i.n_frames == 1]
    edit = station.open(RUN_ID, items[0].sop_uid).edit
    ai = edit.mask(1)[..., 0].copy()
    cols = np.nonzero(ai.any(axis=0))[0]
    x = int(cols[len(cols) // 2])
    top, deep = (int(r) for r in np.nonzero(ai[:, x])[0][[0, -1]])
    moved = edit.click(1, x, deep + 3, foreground=True, shift=True)[..., 0]
    assert np.nonzero(moved[:, x])[0][-1] == deep + 3  # the deep edge reaches the click ...
    assert np.nonzero(moved[:, x])[0][0] > top  # ... and the shallow edge moved down with it
    assert not moved[top, x] and edit.state.prompts(1).clicks[-1].kind == "shift"
    assert edit.undo() and np.array_equal(edit.mask(1)[..., 0], ai)
    edit.start_from_scratch()
    with pytest.raises(ReviewInputError, match="shift clicks"):
        edit.click(1, x, deep + 3, shift=True)


def test_from_scratch_is_manual_and_reject_is_recorded(station_run):
    run, station = station_run
    items = [i for i in station.run(RUN_ID).items if i.status == "to-do" and i.n_frames == 1]
    opened = station.open(RUN_ID, items[0].sop_uid)
    opened.edit.start_from_scratch()
    assert not opened.edit.mask(1).any()
    bounds = opened.edit.frame(1).crop_bounds
    x0, y0 = bounds.min_x0 + 20, bounds.min_y0 + 40
    opened.edit.draw_box(1, x0, y0, x0 + 120, y0 + 60)
    result = station.accept(opened.edit_id, "reader.one")
    ds = pydicom.dcmread(result.seg_path, stop_before_pixels=True)
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"

    rejected = station.open(RUN_ID, items[1].sop_uid)
    station.reject(rejected.edit_id, "reader.two", "poor-image")
    table = read_corrections(run.run_dir)
    assert set(table.outcome) == {"accepted", "rejected"}
    assert table[table.outcome == "rejected"].iloc[0].reason == "poor-image"
    statuses = {i.sop_uid: i.status for i in station.run(RUN_ID).items}
    assert statuses[items[1].sop_uid] == "rejected"
