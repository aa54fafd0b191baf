"""Dice audit: SEGs against NPZ or SEG references, the numbers sam2rad.metrics gives on the same
arrays, study flags, missing sides, spacing, multi-class, the HTML report, and no PHI anywhere."""
from __future__ import annotations

import base64
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from highdicom.sr.coding import CodedConcept

from pipeline.audit.comparison import match_classes
from pipeline.audit.run import AuditResult, run_audit
from flows.demo.archive import DemoArchive, demo_uid, write_demo_archive
from pipeline.ingest import UsInstance, ingest
from pipeline.seg import TISSUE, SegAlgorithm, SegmentClass, SegWriter
from sam2rad.metrics import evaluate_pair

CARD = SegAlgorithm("Sam2Rad", "0.1.0", "litemedsam:test", "cd" * 32, "auto", ("bone",))
READER_CARD = SegAlgorithm("Reader", "1", "manual:test", "ef" * 32, "manual", ("bone",))
JOINT = SegmentClass("joint", TISSUE, CodedConcept("39352004", "SCT", "Joint"), (128, 174, 128))
PATIENT_TEXT = ("DEMO^", "SYN000", "SYN001", "SYNCINE")  # the demo archive's patient names and IDs


@dataclass
class Setup:
    archive: DemoArchive
    by_study: list[list[UsInstance]]  # the two synthetic studies, instances in order
    cine: UsInstance
    preds: dict[str, np.ndarray]  # source SOP UID -> predicted (frames, rows, cols) masks
    seg_dir: Path
    seg_paths: dict[str, Path]  # source SOP UID -> SEG file


def reference(archive: DemoArchive, instance: UsInstance) -> tuple[np.ndarray, tuple[float, float]]:
    with np.load(archive.references / f"{instance.sop_uid}.npz") as npz:
        return npz["mask"].astype(bool), tuple(float(v) for v in npz["spacing_mm"])


def expected_instance(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
    """What the audit must report: evaluate_pair per frame, then the mean."""
    per_frame = [evaluate_pair(p, g, spacing) for p, g in zip(pred, ref)]
    return {"dice": float(np.mean([m.dice for m in per_frame])), "iou": float(np.mean([m.iou for m in per_frame])),
            "hd95": float(np.mean([m.hd95 for m in per_frame])), "assd": float(np.mean([m.assd for m in per_frame]))}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("audit")
    archive = write_demo_archive(root, n_synthetic_studies=2, images_per_study=2, cine_frames=3,
                                 size=(160, 150), include_pydicom_examples=False)
    instances = ingest([archive.inbox]).instances
    cine = next(i for i in instances if i.n_frames > 1)
    studies: dict[str, list[UsInstance]] = {}
    for inst in instances:
        if inst is not cine:
            studies.setdefault(inst.study_uid, []).append(inst)
    by_study = [sorted(v, key=lambda i: int(i.header.InstanceNumber)) for v in studies.values()]
    by_study.sort(key=lambda insts: insts[0].sop_uid != demo_uid("demo-instance", 0, 0))  # demo study 0 first
    (good_a, good_b), (shifted, missed) = by_study
    preds = {}
    for inst in (good_a, good_b):
        preds[inst.sop_uid] = reference(archive, inst)[0]  # exact: Dice 1
    preds[shifted.sop_uid] = np.roll(reference(archive, shifted)[0], 3, axis=2)
    preds[missed.sop_uid] = np.zeros_like(reference(archive, missed)[0])  # the model found nothing
    preds[cine.sop_uid] = np.roll(reference(archive, cine)[0], 1, axis=2)  # Dice about 0.8
    seg_dir = root / "segs"
    writer = SegWriter(CARD)
    seg_paths = {uid: writer.write(next(i for i in instances if i.sop_uid == uid), masks, seg_dir).path
                 for uid, masks in preds.items()}
    return Setup(archive, by_study, cine, preds, seg_dir, seg_paths)


@pytest.fixture(scope="module")
def audited(setup, tmp_path_factory) -> tuple[AuditResult, pd.DataFrame, pd.DataFrame, str]:
    out = tmp_path_factory.mktemp("audit-out")
    result = run_audit(setup.seg_dir, setup.archive.references, out, threshold=0.7, source_dir=setup.archive.inbox)
    instances = pd.read_parquet(result.instances_parquet).set_index("source_sop_uid")
    studies = pd.read_parquet(result.studies_parquet).set_index("study_uid")
    return result, instances, studies, result.report_html.read_text(encoding="utf-8")


def test_dice_and_distances_match_sam2rad_metrics_on_the_same_arrays(setup, audited):
    result, instances, _, _ = audited
    assert result.n_segs == 5 and result.n_matched == 5
    assert result.n_missing_reference == result.n_missing_seg == result.n_failed == 0
    for uid, pred in setup.preds.items():
        ref, spacing = reference(setup.archive, next(i for s in setup.by_study + [[setup.cine]] for i in s
                                                     if i.sop_uid == uid))
        row = instances.loc[uid]
        assert row["status"] == "ok" and row["unit"] == "mm" and row["spacing_source"] == "reference_npz"
        assert (row["row_spacing_mm"], row["column_spacing_mm"]) == pytest.approx(spacing)
        want = expected_instance(pred, ref, spacing)
        assert row["dice"] == pytest.approx(want["dice"], abs=1e-12)
        assert row["iou"] == pytest.approx(want["iou"], abs=1e-12)
        assert row["hd95"] == pytest.approx(want["hd95"], abs=1e-12)  # inf == inf for the missed one
        assert row["assd"] == pytest.approx(want["assd"], abs=1e-12)
        assert row["n_frames"] == ref.shape[0]
    exact = setup.by_study[0][0].sop_uid
    assert instances.loc[exact, "dice"] == 1.0 and instances.loc[exact, "hd95"] == 0.0
    assert 0.0 < instances.loc[setup.by_study[1][0].sop_uid, "dice"] < 1.0
    assert instances.loc[setup.by_study[1][1].sop_uid, "dice"] == 0.0
    assert np.isinf(instances.loc[setup.by_study[1][1].sop_uid, "hd95"])


def test_cine_is_scored_per_frame_then_averaged(setup, audited):
    result, instances, _, _ = audited
    frames = pd.read_parquet(result.frames_parquet)
    cine_rows = frames[frames["source_sop_uid"] == setup.cine.sop_uid].sort_values("frame_number")
    ref, spacing = reference(setup.archive, setup.cine)
    assert cine_rows["frame_number"].tolist() == [1, 2, 3]
    for (_, row), p, g in zip(cine_rows.iterrows(), setup.preds[setup.cine.sop_uid], ref):
        assert row["dice"] == pytest.approx(evaluate_pair(p, g, spacing).dice, abs=1e-12)
    assert instances.loc[setup.cine.sop_uid, "dice"] == pytest.approx(cine_rows["dice"].mean(), abs=1e-12)
    assert instances.loc[setup.cine.sop_uid, "min_frame_dice"] == pytest.approx(cine_rows["dice"].min())


def test_threshold_flags_the_study_whose_mean_dice_is_below_it(setup, audited):
    result, instances, studies, _ = audited
    good, bad = setup.by_study[0][0].study_uid, setup.by_study[1][0].study_uid
    bad_mean = np.mean([instances.loc[i.sop_uid, "dice"] for i in setup.by_study[1]])
    assert bad_mean < 0.7
    assert studies.loc[bad, "mean_dice"] == pytest.approx(bad_mean)
    assert studies.loc[bad, "min_dice"] == 0.0 and studies.loc[bad, "n_instances"] == 2
    assert bool(studies.loc[bad, "flagged"]) and not bool(studies.loc[good, "flagged"])
    assert result.flagged_study_uids == (bad,) == tuple(studies.index[studies["flagged"]])
    assert result.n_flagged_studies == 1
    cine_dice = instances.loc[setup.cine.sop_uid, "dice"]
    assert bool(studies.loc[setup.cine.study_uid, "flagged"]) == (cine_dice < 0.7)
    # the same data with a lower bar flags nothing
    low = run_audit(setup.seg_dir, setup.archive.references, result.report_html.parent / "low", threshold=0.0)
    assert low.flagged_study_uids == () and low.n_flagged_studies == 0


def test_summary_and_tables(setup, audited):
    result, instances, studies, _ = audited
    s = result.summary
    dice = instances["dice"].to_numpy(float)
    assert s["dice_mean"] == pytest.approx(dice.mean()) and s["dice_median"] == pytest.approx(np.median(dice))
    assert s["iou_mean"] == pytest.approx(instances["iou"].mean())
    finite = instances["hd95"][np.isfinite(instances["hd95"])]
    assert s["hd95_mean"] == pytest.approx(finite.mean()) and s["hd95_median"] == pytest.approx(finite.median())
    assert s["distance_unit"] == "mm" and s["n_infinite_distance"] == 1
    assert s["n_instances"] == 5 and s["n_frames"] == 7
    for path in (result.instances_csv, result.studies_csv, result.frames_csv, result.summary_json):
        assert path.is_file()
    assert len(pd.read_csv(result.studies_csv)) == len(studies) == 3
    assert "flagged_study_uids" in result.summary_json.read_text()
    assert setup.by_study[1][0].study_uid in result.markdown()
    assert json.loads(json.dumps(result.as_dict()))["n_matched"] == 5  # a flow can return it as is


def test_html_report_is_self_contained_with_plots_and_the_flagged_study(setup, audited):
    result, _, _, page = audited
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2 + 4  # histogram, study bars, 4 worst cases
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert setup.by_study[1][0].study_uid in page
    assert 'class="flagged"' in page
    assert "masks only" not in page  # with source_dir the overlays show the image
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing external to fetch
    plots = sorted(p.name for p in result.plots_dir.glob("*.png"))
    assert plots == ["dice_histogram.png", "study_dice.png", "worst_01.png", "worst_02.png", "worst_03.png",
                     "worst_04.png"]
    # the worst case is the missed instance, at its Dice
    assert page.index(setup.by_study[1][1].sop_uid) < page.index(setup.by_study[0][0].study_uid)


def test_missing_references_and_segs_are_counted_and_listed(setup, tmp_path):
    refs, segs = tmp_path / "refs", tmp_path / "segs"
    shutil.copytree(setup.archive.references, refs)
    no_reference = setup.by_study[0][0].sop_uid
    (refs / f"{no_reference}.npz").unlink()
    segs.mkdir()
    for uid, path in setup.seg_paths.items():
        if uid != setup.cine.sop_uid:  # the cine's reference will have no SEG
            shutil.copy(path, segs / path.name)
    (segs / "notes.txt").write_text("not DICOM")  # ignored, not an error
    result = run_audit(segs, refs, tmp_path / "out", source_dir=setup.archive.inbox)
    assert result.n_segs == 4 and result.n_matched == 3 and result.n_failed == 0
    assert result.n_missing_reference == 1 and result.missing_reference_uids == (no_reference,)
    assert result.n_missing_seg == 1 and result.missing_seg_uids == (setup.cine.sop_uid,)
    rows = pd.read_parquet(result.instances_parquet).set_index("source_sop_uid")
    assert rows.loc[no_reference, "status"] == "missing_reference" and pd.isna(rows.loc[no_reference, "dice"])
    assert rows.loc[setup.cine.sop_uid, "status"] == "missing_seg"
    assert rows.loc[setup.cine.sop_uid, "study_uid"] == setup.cine.study_uid  # known from source_dir
    studies = pd.read_parquet(result.studies_parquet).set_index("study_uid")
    assert studies.loc[setup.cine.study_uid, "n_missing_seg"] == 1
    assert pd.isna(studies.loc[setup.cine.study_uid, "mean_dice"])
    assert not studies.loc[setup.cine.study_uid, "flagged"]  # nothing compared, nothing to flag
    page = result.report_html.read_text()
    assert "SEGs without a reference (1)" in page and "References without a SEG (1)" in page


def test_reference_seg_mode_compares_two_segs_frame_by_frame(setup, tmp_path):
    refs = tmp_path / "reader-segs"
    reader = SegWriter(READER_CARD)
    sources = {i.sop_uid: i for i in ingest([setup.archive.inbox]).instances}
    for uid in setup.preds:
        reader.write(sources[uid], reference(setup.archive, sources[uid])[0], refs)
    result = run_audit(setup.seg_dir, refs, tmp_path / "out")  # no source_dir: spacing from the SEGs
    assert result.n_matched == 5 and result.n_missing_reference == result.n_missing_seg == 0
    rows = pd.read_parquet(result.instances_parquet).set_index("source_sop_uid")
    assert set(rows["reference_kind"]) == {"seg"}
    assert set(rows["spacing_source"]) == {"seg_pixel_measures"} and set(rows["unit"]) == {"mm"}
    for uid, pred in setup.preds.items():
        ref, _ = reference(setup.archive, sources[uid])
        cal = sources[uid].calibration
        want = expected_instance(pred, ref, (cal.row_spacing_mm, cal.column_spacing_mm))
        assert rows.loc[uid, "dice"] == pytest.approx(want["dice"], abs=1e-12)
        assert rows.loc[uid, "hd95"] == pytest.approx(want["hd95"], rel=1e-9)  # DS spacing: 14 digits
    frames = pd.read_parquet(result.frames_parquet)
    assert sorted(frames.loc[frames["source_sop_uid"] == setup.cine.sop_uid, "frame_number"]) == [1, 2, 3]
    assert "masks only" in result.report_html.read_text()  # no source_dir: overlays draw masks alone


def test_spacing_falls_back_from_npz_to_source_calibration_to_pixels(setup, tmp_path):
    inbox, refs, segs = tmp_path / "inbox", tmp_path / "refs", tmp_path / "segs"
    calibrated = setup.by_study[0][0]
    ds = pydicom.dcmread(calibrated.path)
    del ds.SequenceOfUltrasoundRegions
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = demo_uid("uncalibrated", 1)
    inbox.mkdir()
    ds.save_as(inbox / "uncalibrated.dcm")
    shutil.copy(calibrated.path, inbox / "calibrated.dcm")
    sources = {i.sop_uid: i for i in ingest([inbox]).instances}
    uncalibrated = sources[str(ds.SOPInstanceUID)]
    assert not uncalibrated.calibration.is_calibrated
    mask, spacing = reference(setup.archive, calibrated)
    pred = np.roll(mask, 2, axis=2)
    refs.mkdir()
    for inst in sources.values():  # references without spacing_mm
        np.savez_compressed(refs / f"{inst.sop_uid}.npz", mask=mask)
        SegWriter(CARD).write(inst, pred, segs)  # no PixelMeasures for the uncalibrated one
    result = run_audit(segs, refs, tmp_path / "out", source_dir=inbox)
    rows = pd.read_parquet(result.instances_parquet).set_index("source_sop_uid")
    assert rows.loc[calibrated.sop_uid, "spacing_source"] == "source_calibration"
    assert rows.loc[calibrated.sop_uid, "unit"] == "mm"
    cal = calibrated.calibration
    assert rows.loc[calibrated.sop_uid, "hd95"] == pytest.approx(
        evaluate_pair(pred[0], mask[0], (cal.row_spacing_mm, cal.column_spacing_mm)).hd95)
    assert rows.loc[uncalibrated.sop_uid, "spacing_source"] == "none"
    assert rows.loc[uncalibrated.sop_uid, "unit"] == "px"
    assert rows.loc[uncalibrated.sop_uid, "hd95"] == pytest.approx(evaluate_pair(pred[0], mask[0]).hd95)
    assert result.summary["distance_unit"] == "mm" and result.summary["n_other_unit"] == 1
    # without the source, the calibrated SEG's own PixelMeasures give the spacing
    no_source = run_audit(segs, refs, tmp_path / "out2")
    rows = pd.read_parquet(no_source.instances_parquet).set_index("source_sop_uid")
    assert rows.loc[calibrated.sop_uid, "spacing_source"] == "seg_pixel_measures"
    assert rows.loc[uncalibrated.sop_uid, "unit"] == "px"


def test_classes_are_matched_by_name_and_scored_separately(setup, tmp_path):
    inst = setup.by_study[0][1]
    bone, _ = reference(setup.archive, inst)
    joint = np.zeros_like(bone)
    joint[:, 100:120, 40:80] = True
    card = SegAlgorithm("Sam2Rad", "0.1.0", "litemedsam:test", "cd" * 32, "auto", ("bone", "joint"))
    SegWriter(card, segment_classes={"joint": JOINT}).write(
        inst, np.stack([bone, np.zeros_like(bone)], axis=-1), tmp_path / "segs")  # joint missed
    refs = tmp_path / "refs"
    refs.mkdir()
    np.savez_compressed(refs / f"{inst.sop_uid}.npz", mask=np.stack([joint, bone], axis=-1),  # other order
                        class_names=np.array(["joint", "bone"]), spacing_mm=np.array([0.2, 0.2]))
    result = run_audit(tmp_path / "segs", refs, tmp_path / "out")
    frames = pd.read_parquet(result.frames_parquet).set_index("class_label")
    assert frames.loc["bone", "dice"] == 1.0 and frames.loc["joint", "dice"] == 0.0
    row = pd.read_parquet(result.instances_parquet).iloc[0]
    assert row["n_classes"] == 2 and row["classes"] == "bone,joint"
    assert row["dice"] == 0.5 and row["worst_class"] == "joint"
    assert match_classes(("bone",), (), 1, 1) == [(0, 0, "bone")]
    with pytest.raises(ValueError, match="cannot match classes"):
        match_classes(("bone", "joint"), (), 2, 1)


def test_unusable_pair_is_a_failed_row_not_an_exception(setup, tmp_path):
    inst = setup.by_study[0][0]
    refs = tmp_path / "refs"
    refs.mkdir()
    np.savez_compressed(refs / f"{inst.sop_uid}.npz", mask=np.zeros((1, 20, 20), bool))  # wrong geometry
    result = run_audit(setup.seg_dir, refs, tmp_path / "out")
    assert result.n_failed == 1 and result.n_matched == 0 and result.n_missing_reference == 4
    row = pd.read_parquet(result.instances_parquet).set_index("source_sop_uid").loc[inst.sop_uid]
    assert row["status"] == "failed" and "geometry differs" in row["error"]
    assert result.report_html.is_file()


def test_missing_folders_and_bad_threshold_raise_clear_errors(setup, tmp_path):
    refs = setup.archive.references
    with pytest.raises(ValueError, match="seg_dir does not exist"):
        run_audit(tmp_path / "nope", refs, tmp_path / "out")
    with pytest.raises(ValueError, match="reference_dir does not exist"):
        run_audit(setup.seg_dir, tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ValueError, match="source_dir does not exist"):
        run_audit(setup.seg_dir, refs, tmp_path / "out", source_dir=tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="reference_dir is not a folder"):
        run_audit(setup.seg_dir, tmp_path / "file", tmp_path / "out")
    with pytest.raises(ValueError, match="threshold"):
        run_audit(setup.seg_dir, refs, tmp_path / "out", threshold=70)


def test_no_patient_identity_in_logs_tables_or_report(setup, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    result = run_audit(setup.seg_dir, setup.archive.references, tmp_path / "out", source_dir=setup.archive.inbox)
    texts = [caplog.text, result.report_html.read_text(), result.summary_json.read_text(), result.markdown()]
    texts += [p.read_text() for p in (result.instances_csv, result.studies_csv, result.frames_csv)]
    for text in texts:
        for needle in PATIENT_TEXT:
            assert needle not in text
    assert "audit:" in caplog.text  # it did log, with UIDs and counts
