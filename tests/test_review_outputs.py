"""What reviews feed: the audit's "AI vs reader" section (reviewed SEGs in the same sink never enter the
Dice means twice) and `reviewed:RUNS_DIR` training data (accepted reviews only)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest

from pipeline.audit.run import run_audit
from pipeline.ingest import iter_frames, read_instance
from pipeline.review import read_corrections
from pipeline.seg import read_seg_masks
from pipeline.training_data import load_data_spec
from tests.review_run import RUN_ID, copy_review_run, missed_and_false_pixels, review_station


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    """A run with a semi accept (clicks), a manual accept of the cine (frame 1 drawn) and a reject."""
    run = copy_review_run(tmp_path_factory.mktemp("review-outputs"))
    station = review_station(run)
    items = station.run(RUN_ID).items
    singles = [i for i in items if i.n_frames == 1]
    cine = next(i for i in items if i.n_frames > 1)
    semi = None
    for item in singles:
        opened = station.open(RUN_ID, item.sop_uid)
        missed, false = missed_and_false_pixels(opened.edit.mask(1)[..., 0], run.reference(item.sop_uid)[0])
        if missed or false:
            if missed:
                opened.edit.click(1, *missed, foreground=True)
            if false:
                opened.edit.click(1, *false, foreground=False)
            semi = station.accept(opened.edit_id, "reader.one")
            break
    assert semi is not None, "no demo instance with an error to correct"
    opened = station.open(RUN_ID, cine.sop_uid)
    opened.edit.start_from_scratch()
    b = opened.edit.frame(1).crop_bounds
    opened.edit.draw_box(1, b.min_x0 + 20, b.min_y0 + 40, b.min_x0 + 140, b.min_y0 + 100)
    manual = station.accept(opened.edit_id, "reader.one")
    rejected = next(i for i in singles if i.sop_uid != semi.decision.sop_uid)
    station.reject(station.open(RUN_ID, rejected.sop_uid).edit_id, "reader.two", "poor-image")
    return run, semi, manual, rejected


def test_audit_reports_reviews_apart_and_ai_vs_reader(reviewed, tmp_path):
    run, semi, manual, rejected = reviewed
    before = json.loads((run.run_dir / "audit" / "audit_summary.json").read_text())  # audited before any review
    assert "AI vs reader" not in (run.run_dir / "audit" / "audit_report.html").read_text()
    result = run_audit(run.outbox, run.references, tmp_path / "audit", run_dir=run.run_dir)

    # Both reviewed SEGs sit in the sink beside the nightly ones, but the means are the AI's alone.
    assert result.n_segs == before["n_segs"] + 2
    assert result.n_matched == before["n_instances"] == 7
    assert result.summary["dice_mean"] == pytest.approx(before["dice_mean"])
    table = pd.read_parquet(result.instances_parquet)
    reviewed_rows = table[table.status == "reviewed"]
    assert set(reviewed_rows.seg_sop_uid) == {semi.seg_sop_uid, manual.seg_sop_uid}
    assert reviewed_rows.dice.notna().all()  # scored against the reference, reported apart
    assert not table.source_sop_uid[table.status == "ok"].duplicated().any()
    frames = pd.read_parquet(result.frames_parquet)
    assert not set(frames.seg_sop_uid) & {semi.seg_sop_uid, manual.seg_sop_uid}

    s = result.summary
    corrections = read_corrections(run.run_dir)
    accepted = corrections[corrections.outcome == "accepted"]
    assert (s["n_reviewed_segs"], s["reader_n_reviewed"], s["reader_n_accepted"], s["reader_n_rejected"]) == (2, 3, 2, 1)
    assert (s["reader_n_semi"], s["reader_n_manual"]) == (1, 1)
    assert s["reader_dice_mean"] == pytest.approx(accepted.dice.mean())
    assert s["reader_dice_median"] == pytest.approx(accepted.dice.median())
    assert s["reader_clicks_per_accepted"] == pytest.approx(accepted.clicks.mean())
    assert s["reader_seconds_per_review_mean"] == pytest.approx(corrections.seconds.mean())
    assert s["reader_reject_reasons"] == "poor-image: 1"
    assert s["reader_n_vs_reference"] == 2

    page = result.report_html.read_text()
    assert "AI vs reader" in page and "Instances the readers changed most" in page
    assert semi.decision.sop_uid in page and manual.decision.sop_uid in page
    assert "reader.one" not in page and "reader.two" not in page  # UIDs and measurements, no names
    assert "AI vs reader Dice" in result.markdown()
    saved = json.loads(result.summary_json.read_text())
    assert saved["reader_n_accepted"] == 2


def test_an_older_ai_seg_of_the_same_source_is_superseded(reviewed, tmp_path):
    run, *_ = reviewed
    segs = tmp_path / "segs"
    shutil.copytree(run.outbox, segs)
    nightly = next(p for p in sorted(segs.rglob("*.dcm"))
                   if pydicom.dcmread(p, stop_before_pixels=True).SegmentSequence[0].SegmentAlgorithmType
                   == "AUTOMATIC")
    newer = pydicom.dcmread(nightly)
    newer.SOPInstanceUID = newer.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    newer.ContentDate = "29991231"  # a later model version's SEG of the same source
    newer.save_as(nightly.with_name(f"{newer.SOPInstanceUID}.dcm"))
    result = run_audit(segs, run.references, tmp_path / "audit")
    table = pd.read_parquet(result.instances_parquet)
    assert result.n_matched == 7
    superseded = table[table.status == "superseded"]
    assert list(superseded.seg_sop_uid) == [nightly.stem]
    assert newer.SOPInstanceUID in superseded.error.iloc[0]
    assert newer.SOPInstanceUID in set(table.seg_sop_uid[table.status == "ok"])
    assert "AI vs reader" not in result.report_html.read_text()  # no run_dir: no review section


def test_reviewed_spec_gives_accepted_reviews_only(reviewed, tmp_path):
    run, semi, manual, rejected = reviewed
    samples, description = load_data_spec(f"reviewed:{run.runs_dir}")
    assert "accepted reviews" in description
    by_sop: dict[str, list] = {}
    for sample in samples:
        by_sop.setdefault(sample.name.rsplit("-f", 1)[0], []).append(sample)
    assert set(by_sop) == {semi.decision.sop_uid, manual.decision.sop_uid}  # the reject is left out
    assert [s.name for s in by_sop[manual.decision.sop_uid]] == [f"{manual.decision.sop_uid}-f1"]  # drawn frame

    item = next(i for i in review_station(run).run(RUN_ID).items if i.sop_uid == semi.decision.sop_uid)
    instance = read_instance(item.source_path)
    frame = next(iter_frames(instance))
    (sample,) = by_sop[semi.decision.sop_uid]
    assert sample.image.dtype == np.uint8 and np.array_equal(sample.image, frame.model_input)  # the model's crop
    reviewed_mask = read_seg_masks(semi.seg_path, semi.decision.sop_uid)[0, ..., 0]
    assert np.array_equal(sample.mask, reviewed_mask[frame.crop_bounds.slices()])
    cal = instance.calibration
    assert sample.spacing_mm == ((cal.row_spacing_mm, cal.column_spacing_mm) if cal.is_calibrated else None)

    with pytest.raises(ValueError, match="reviewed:RUNS_DIR"):
        load_data_spec("reviewed:")
    with pytest.raises(ValueError, match="not a folder"):
        load_data_spec(f"reviewed:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="no accepted review"):
        load_data_spec(f"reviewed:{tmp_path}")
