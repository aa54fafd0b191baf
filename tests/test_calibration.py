"""Calibration from ultrasound regions / PixelSpacing, and cropping the model input to the region."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipeline.calibration import (
    Calibration,
    CalibrationSource,
    RegionBounds,
    calibration_from_dataset,
    crop_to_region,
    uncrop_mask,
)
from pipeline.ingest import UsFrame
from tests.dicom_factory import add_region, grey_image, us_image


def _image(rows: int = 100, cols: int = 120):
    return us_image(grey_image(rows, cols))


def test_region_spacing_in_cm_becomes_mm_and_bounds_are_kept():
    ds = add_region(_image(), (10, 20, 109, 89), delta_cm=(0.015, 0.025))
    cal = calibration_from_dataset(ds)
    assert cal.source is CalibrationSource.ULTRASOUND_REGION
    # PhysicalDeltaX is along columns, PhysicalDeltaY along rows.
    assert cal.column_spacing_mm == pytest.approx(0.15)
    assert cal.row_spacing_mm == pytest.approx(0.25)
    assert cal.pixel_area_mm2 == pytest.approx(0.15 * 0.25)
    assert cal.region == RegionBounds(10, 20, 109, 89)
    assert cal.area_unit == "mm2" and cal.notes == ()


def test_prefers_2d_tissue_region_then_largest_area():
    ds = _image()
    add_region(ds, (0, 0, 119, 9), delta_cm=(0.5, 0.0), spatial_format=3, data_type=3, units=4)  # Doppler strip
    add_region(ds, (0, 10, 119, 99), delta_cm=(0.09, 0.09), data_type=2)  # 2-D colour flow, largest
    add_region(ds, (0, 10, 29, 39), delta_cm=(0.01, 0.01))  # small 2-D tissue
    add_region(ds, (30, 10, 99, 79), delta_cm=(0.02, 0.02))  # large 2-D tissue: the winner
    cal = calibration_from_dataset(ds)
    assert cal.region == RegionBounds(30, 10, 99, 79)
    assert cal.row_spacing_mm == pytest.approx(0.2)


def test_non_2d_regions_never_calibrate_and_fall_back_to_pixel_spacing():
    ds = add_region(_image(), (0, 0, 119, 99), delta_cm=(0.1, 0.1), spatial_format=3, units=4)
    ds.PixelSpacing = [0.3, 0.4]
    cal = calibration_from_dataset(ds)
    assert cal.source is CalibrationSource.PIXEL_SPACING
    assert (cal.row_spacing_mm, cal.column_spacing_mm) == (0.3, 0.4)
    assert cal.region is None


def test_2d_region_without_cm_units_keeps_crop_but_not_spacing():
    ds = add_region(_image(), (5, 5, 104, 94), units=0)
    cal = calibration_from_dataset(ds)
    assert cal.source is CalibrationSource.UNCALIBRATED
    assert cal.region == RegionBounds(5, 5, 104, 94)
    assert cal.area_unit == "px" and cal.pixel_area_mm2 is None
    assert any("no spacing in cm" in n for n in cal.notes)


def test_uncalibrated_without_regions_or_pixel_spacing():
    cal = calibration_from_dataset(_image())
    assert cal.source is CalibrationSource.UNCALIBRATED
    assert not cal.is_calibrated and cal.region is None
    assert cal.crop_bounds(100, 120) == RegionBounds(0, 0, 119, 99)


def test_off_by_one_region_end_is_tolerated_and_clipped():
    # Many scanners write MaxX1 = Columns; one pixel past the edge is still the same geometry.
    ds = add_region(_image(), (10, 10, 120, 100))
    cal = calibration_from_dataset(ds)
    assert cal.source is CalibrationSource.ULTRASOUND_REGION
    assert cal.region == RegionBounds(10, 10, 119, 99)


def test_region_far_outside_the_image_is_ignored_with_a_note():
    # A region drawn for a larger (pre-resize) frame: neither its crop nor its spacing can be trusted.
    ds = add_region(_image(), (10, 10, 239, 199), delta_cm=(0.01, 0.01))
    cal = calibration_from_dataset(ds)
    assert cal.source is CalibrationSource.UNCALIBRATED and cal.region is None
    assert any("outside" in n for n in cal.notes)


@pytest.mark.parametrize("name", ["examples_palette.dcm", "examples_ybr_color.dcm"])
def test_pydicom_examples_regions_exceed_their_downscaled_images(name):
    ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
    cal = calibration_from_dataset(ds)
    assert cal.source is CalibrationSource.UNCALIBRATED
    assert any("outside" in n for n in cal.notes)


def test_invalid_spacing_is_not_calibration():
    ds = add_region(_image(), (0, 0, 119, 99), delta_cm=(0.0, 0.0))
    assert calibration_from_dataset(ds).source is CalibrationSource.UNCALIBRATED


def test_crop_and_uncrop_round_trip():
    frame = np.arange(100 * 120, dtype=np.int64).reshape(100, 120)
    bounds = RegionBounds(10, 20, 59, 79)
    crop = crop_to_region(frame, bounds)
    assert crop.shape == (60, 50)
    assert crop[0, 0] == frame[20, 10] and crop[-1, -1] == frame[79, 59]
    mask = crop % 3 == 0
    full = uncrop_mask(mask, bounds, frame.shape)
    assert full.shape == frame.shape and full.dtype == bool
    assert np.array_equal(full[20:80, 10:60], mask)
    assert not full[:20].any() and not full[:, :10].any() and not full[80:].any() and not full[:, 60:].any()


def test_uncrop_keeps_class_axis_and_rejects_wrong_shapes():
    bounds = RegionBounds(0, 0, 9, 4)
    assert uncrop_mask(np.ones((5, 10, 2), bool), bounds, (8, 12)).shape == (8, 12, 2)
    with pytest.raises(ValueError, match="does not match the region"):
        uncrop_mask(np.ones((4, 10), bool), bounds, (8, 12))
    with pytest.raises(ValueError, match="does not fit"):
        uncrop_mask(np.ones((5, 10), bool), bounds, (4, 12))


def test_usframe_model_input_excludes_text_outside_region():
    image = np.full((100, 120), 200, np.uint8)  # "burned-in text" everywhere
    image[20:80, 10:60] = 50  # the imaging sector
    cal = Calibration(CalibrationSource.ULTRASOUND_REGION, 0.1, 0.1, RegionBounds(10, 20, 59, 79))
    frame = UsFrame("1.2.3", 1, image, cal)
    assert frame.model_input.shape == (60, 50) and (frame.model_input == 50).all()
    full = frame.mask_to_full_frame(np.ones((60, 50), bool))
    assert full.sum() == 60 * 50 and full[20, 10] and not full[19, 10]


def test_constructors_validate():
    with pytest.raises(ValueError):
        RegionBounds(10, 0, 5, 5)
    with pytest.raises(ValueError):
        RegionBounds(-1, 0, 5, 5)
    with pytest.raises(ValueError):
        Calibration(CalibrationSource.ULTRASOUND_REGION, 0.0, 0.1)
    with pytest.raises(ValueError):
        Calibration(CalibrationSource.UNCALIBRATED, 0.1, 0.1)
