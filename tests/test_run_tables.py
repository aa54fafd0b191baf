"""Metrics tables: per-instance and per-study rows, Parquet and CSV, failures included."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from pipeline.calibration import Calibration, CalibrationSource, UNCALIBRATED
from pipeline.ingest import IssueCode, decode_frames, decode_issue, ingest
from pipeline.tables import rows_to_frame
from pipeline.run_tables import (
    InstanceMetrics,
    PredictedBox,
    StudyMetrics,
    mask_areas,
    study_metrics,
    write_tables,
)
from pipeline.seg import SegAlgorithm, SegWriter
from tests.dicom_factory import BAD_INPUTS, add_region, grey_cine, grey_image, save, us_image

CARD = SegAlgorithm("Sam2Rad", "0.1.0", "bb:1", "ef" * 32, "auto", ("bone",))


def test_mask_area_in_mm2_when_calibrated_and_px_otherwise():
    masks = np.zeros((2, 10, 10, 1), bool)
    masks[0, :4, :5] = True  # 20 px
    masks[1, :2, :5] = True  # 10 px
    calibrated = Calibration(CalibrationSource.ULTRASOUND_REGION, 0.5, 0.2)
    areas = mask_areas(masks, calibrated)
    assert areas.unit == "mm2"
    assert areas.mean == pytest.approx(15 * 0.1) and areas.max == pytest.approx(20 * 0.1)
    assert areas.frames_with_mask == 2
    plain = mask_areas(masks[..., 0], UNCALIBRATED)
    assert (plain.unit, plain.mean, plain.max) == ("px", 15.0, 20.0)


def test_overlapping_classes_count_once():
    masks = np.zeros((1, 4, 4, 2), bool)
    masks[0, :2, :2, 0] = True
    masks[0, :2, :2, 1] = True
    assert mask_areas(masks, UNCALIBRATED).mean == 4.0


def _run_batch(tmp_path):
    """A small night: a calibrated cine, a plain image, every bad input; returns instance rows."""
    study = "1.2.826.0.1.3680043.8.498.77"
    cine = add_region(us_image(grey_cine(3), study_uid=study), (0, 0, 63, 47), delta_cm=(0.01, 0.01))
    save(cine, tmp_path / "in" / "cine.dcm")
    save(us_image(grey_image(), "RGB", study_uid=study), tmp_path / "in" / "plain.dcm")
    for name, (writer, _) in BAD_INPUTS.items():
        writer(tmp_path / "in" / "bad" / f"{name}.dcm")

    result = ingest([tmp_path / "in"])
    writer = SegWriter(CARD)
    rows = [InstanceMetrics.for_issue(issue, CARD) for issue in result.issues]
    for instance in result.instances:
        masks = (decode_frames(instance) > 128)[..., np.newaxis]
        written = writer.write(instance, masks, tmp_path / "seg")
        rows.append(
            InstanceMetrics.for_result(
                instance, masks, CARD, runtime_s=0.25,
                box=PredictedBox(1, 2, 30, 40), confidence=0.9, seg=written,
            )
        )
    return result, rows


def test_batch_rows_cover_every_file_with_reasons(tmp_path):
    result, rows = _run_batch(tmp_path)
    assert len(rows) == 2 + len(BAD_INPUTS)
    by_file = {r.path.rsplit("/", 1)[-1]: r for r in rows}
    for name, (_, code) in BAD_INPUTS.items():
        row = by_file[f"{name}.dcm"]
        assert row.status in ("failed", "skipped") and row.error_code == code and row.error
    cine = by_file["cine.dcm"]
    assert cine.status == "ok" and cine.n_frames == 3 and cine.area_unit == "mm2"
    assert cine.calibration_source == "ultrasound_region" and cine.row_spacing_mm == pytest.approx(0.1)
    assert cine.seg_sop_uid and cine.model_fingerprint == CARD.fingerprint and cine.mode == "auto"
    assert (cine.box_x0, cine.box_y1, cine.confidence) == (1, 40, 0.9)
    assert by_file["plain.dcm"].area_unit == "px"


def test_study_rows_aggregate_their_instances(tmp_path):
    _, rows = _run_batch(tmp_path)
    studies = {s.study_uid: s for s in study_metrics(rows)}
    night = studies["1.2.826.0.1.3680043.8.498.77"]
    assert (night.n_ok, night.n_instances, night.n_frames, night.n_calibrated) == (2, 2, 4, 1)
    assert night.status == "ok" and night.mean_confidence == pytest.approx(0.9)
    assert night.mean_mask_area_mm2 is not None and night.mean_mask_area_px is not None
    assert night.runtime_s == pytest.approx(0.5)
    factory_study = studies["1.2.826.0.1.3680043.8.498.1000001"]  # where the bad inputs live
    # 6 unusable US files failed, the CT was skipped, the non-DICOM file has no study
    assert (factory_study.status, factory_study.n_failed, factory_study.n_skipped) == ("failed", 6, 1)
    assert "truncated" in factory_study.error_codes


def test_partial_and_failed_study_status(tmp_path):
    result = ingest([save(us_image(grey_image()), tmp_path / "a.dcm")])
    instance = result.instances[0]
    masks = np.zeros((1, instance.rows, instance.cols, 1), bool)
    ok = InstanceMetrics.for_result(instance, masks, CARD, 0.1)
    failed = InstanceMetrics.for_failure(instance, RuntimeError("model crashed"), CARD, 0.2)
    decode_failed = InstanceMetrics.for_issue(decode_issue(instance, ValueError("bad pixels")), CARD)
    assert failed.status == "failed" and "model crashed" in failed.error
    assert decode_failed.error_code == IssueCode.DECODE_ERROR.value
    assert study_metrics([ok, failed])[0].status == "partial"
    assert study_metrics([failed, decode_failed])[0].status == "failed"


def test_tables_written_as_parquet_and_csv_with_stable_columns(tmp_path):
    _, rows = _run_batch(tmp_path)
    tables = write_tables(rows, tmp_path / "tables", stem="night")
    instances = pd.read_parquet(tables.instances_parquet)
    studies = pd.read_parquet(tables.studies_parquet)
    assert list(instances.columns) == [f.name for f in dataclasses.fields(InstanceMetrics)]
    assert list(studies.columns) == [f.name for f in dataclasses.fields(StudyMetrics)]
    assert len(instances) == len(rows) and len(studies) == len(study_metrics(rows))
    csv = pd.read_csv(tables.instances_csv)
    assert len(csv) == len(rows) and set(csv["status"]) <= {"ok", "failed", "skipped"}
    assert instances["mask_area_mean"].dtype == np.float64 and str(instances["n_frames"].dtype) == "Int64"
    # no PHI columns
    assert not any("patient" in c.lower() for c in instances.columns)
    # no temp files left next to the tables
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == sorted(
        p.name for p in (tables.instances_parquet, tables.instances_csv, tables.studies_parquet, tables.studies_csv)
    )


def test_empty_run_still_writes_typed_tables(tmp_path):
    tables = write_tables([], tmp_path)
    frame = pd.read_parquet(tables.instances_parquet)
    assert frame.empty and list(frame.columns) == [f.name for f in dataclasses.fields(InstanceMetrics)]
    assert rows_to_frame([], StudyMetrics).dtypes["n_ok"] == "Int64"


def test_rows_validate():
    with pytest.raises(ValueError):
        PredictedBox(10, 0, 5, 5)
    with pytest.raises(ValueError):
        PredictedBox(float("nan"), 0, 5, 5)
    fields = {f.name: None for f in dataclasses.fields(InstanceMetrics)}
    with pytest.raises(ValueError):
        InstanceMetrics(**{**fields, "status": "weird"})
    with pytest.raises(ValueError, match="reason"):
        InstanceMetrics(**{**fields, "status": "failed"})
