"""Pixel spacing and imaging-region bounds of ultrasound images.

Ultrasound spacing rarely sits in PixelSpacing: scanners describe each screen region in the
SequenceOfUltrasoundRegions (PS3.3 C.8.5.5) with its own physical deltas. We pick the 2-D tissue
region, read its spacing in mm, and use its bounds to crop the model input so that burned-in text
and measurement overlays outside the imaging sector never reach the model.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

# Coded values of the ultrasound region attributes (PS3.3 C.8.5.5.1).
REGION_SPATIAL_FORMAT_2D = 1
REGION_DATA_TYPE_TISSUE = 1
PHYSICAL_UNITS_CM = 3
_MM_PER_CM = 10.0
# Ultrasound pixels span microns to a few millimetres; outside this (cm per pixel) a delta is an error.
PLAUSIBLE_DELTA_CM = (1e-5, 1.0)


class CalibrationSource(str, enum.Enum):
    """Where the pixel spacing came from."""

    ULTRASOUND_REGION = "ultrasound_region"
    PIXEL_SPACING = "pixel_spacing"
    UNCALIBRATED = "uncalibrated"


@dataclass(frozen=True)
class RegionBounds:
    """An inclusive pixel rectangle, as DICOM stores region locations (x = column, y = row)."""

    min_x0: int
    min_y0: int
    max_x1: int
    max_y1: int

    def __post_init__(self) -> None:
        if min(self.min_x0, self.min_y0) < 0:
            raise ValueError(f"region starts at a negative pixel: {self}")
        if self.max_x1 < self.min_x0 or self.max_y1 < self.min_y0:
            raise ValueError(f"region ends before it starts: {self}")

    @property
    def width(self) -> int:
        return self.max_x1 - self.min_x0 + 1

    @property
    def height(self) -> int:
        return self.max_y1 - self.min_y0 + 1

    @property
    def area(self) -> int:
        return self.width * self.height

    def slices(self) -> tuple[slice, slice]:
        """(row slice, column slice) that cut this region out of a frame."""
        return slice(self.min_y0, self.max_y1 + 1), slice(self.min_x0, self.max_x1 + 1)

    def clipped(self, rows: int, cols: int) -> "RegionBounds | None":
        """The part inside a rows x cols frame, or None when nothing of it is inside."""
        x0, y0 = max(self.min_x0, 0), max(self.min_y0, 0)
        x1, y1 = min(self.max_x1, cols - 1), min(self.max_y1, rows - 1)
        if x1 < x0 or y1 < y0:
            return None
        return RegionBounds(x0, y0, x1, y1)

    @classmethod
    def full_frame(cls, rows: int, cols: int) -> "RegionBounds":
        return cls(0, 0, cols - 1, rows - 1)


@dataclass(frozen=True)
class Calibration:
    """Spacing in mm per pixel (None when uncalibrated) and the imaging region to crop to.

    `region` is None when the image declares no usable 2-D region; the model then sees the full
    frame. `notes` records anything a reader of the metrics table should know (e.g. a region that
    extended past the image and was clipped, which hints at a resized image).
    """

    source: CalibrationSource
    row_spacing_mm: float | None = None
    column_spacing_mm: float | None = None
    region: RegionBounds | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        spacings = (self.row_spacing_mm, self.column_spacing_mm)
        if self.source is CalibrationSource.UNCALIBRATED:
            if any(s is not None for s in spacings):
                raise ValueError("an uncalibrated image cannot carry a spacing")
        else:
            if any(s is None or not np.isfinite(s) or s <= 0 for s in spacings):
                raise ValueError(f"calibrated spacing must be positive and finite, got {spacings}")

    @property
    def is_calibrated(self) -> bool:
        return self.source is not CalibrationSource.UNCALIBRATED

    @property
    def pixel_area_mm2(self) -> float | None:
        if not self.is_calibrated:
            return None
        return float(self.row_spacing_mm) * float(self.column_spacing_mm)  # type: ignore[arg-type]

    @property
    def area_unit(self) -> str:
        return "mm2" if self.is_calibrated else "px"

    def crop_bounds(self, rows: int, cols: int) -> RegionBounds:
        """The rectangle the model sees: the imaging region, else the full frame."""
        if self.region is None:
            return RegionBounds.full_frame(rows, cols)
        return self.region


UNCALIBRATED = Calibration(CalibrationSource.UNCALIBRATED)


@dataclass(frozen=True)
class UltrasoundRegion:
    """The fields of one SequenceOfUltrasoundRegions item that calibration needs."""

    bounds: RegionBounds
    spatial_format: int
    data_type: int
    units_x: int
    units_y: int
    delta_x: float
    delta_y: float

    @property
    def is_2d(self) -> bool:
        return self.spatial_format == REGION_SPATIAL_FORMAT_2D

    @property
    def is_tissue(self) -> bool:
        return self.data_type == REGION_DATA_TYPE_TISSUE

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """(row, column) spacing in mm, or None when the region is not calibrated in cm."""
        if self.units_x != PHYSICAL_UNITS_CM or self.units_y != PHYSICAL_UNITS_CM:
            return None
        if self.spacing_problem is not None:
            return None
        return self.delta_y * _MM_PER_CM, self.delta_x * _MM_PER_CM

    @property
    def spacing_problem(self) -> str | None:
        """Why PhysicalDeltaX/Y cannot be a pixel spacing (NaN, negative, 1e300 cm), or None."""
        for name, delta in (("PhysicalDeltaX", self.delta_x), ("PhysicalDeltaY", self.delta_y)):
            if not np.isfinite(delta) or not PLAUSIBLE_DELTA_CM[0] <= delta <= PLAUSIBLE_DELTA_CM[1]:
                return (f"{name} is not a plausible spacing (a positive number from {PLAUSIBLE_DELTA_CM[0]:g} "
                        f"to {PLAUSIBLE_DELTA_CM[1]:g} cm per pixel); region not calibrated")
        return None

    @classmethod
    def from_item(cls, item: Dataset) -> "UltrasoundRegion":
        """Read one region item; raises ValueError when a required field is missing or invalid."""
        try:
            bounds = RegionBounds(
                int(item.RegionLocationMinX0),
                int(item.RegionLocationMinY0),
                int(item.RegionLocationMaxX1),
                int(item.RegionLocationMaxY1),
            )
            return cls(
                bounds=bounds,
                spatial_format=int(item.RegionSpatialFormat),
                data_type=int(item.RegionDataType),
                units_x=int(item.get("PhysicalUnitsXDirection", 0) or 0),
                units_y=int(item.get("PhysicalUnitsYDirection", 0) or 0),
                delta_x=float(item.get("PhysicalDeltaX", 0.0) or 0.0),
                delta_y=float(item.get("PhysicalDeltaY", 0.0) or 0.0),
            )
        except (AttributeError, TypeError) as exc:
            raise ValueError(f"ultrasound region item lacks a required attribute: {exc}") from exc


def ultrasound_regions(ds: Dataset) -> list[UltrasoundRegion]:
    """Every well-formed region of the dataset; malformed items are ignored (they cannot calibrate)."""
    regions = []
    for item in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            regions.append(UltrasoundRegion.from_item(item))
        except ValueError:
            continue
    return regions


def select_imaging_region(
    regions: list[UltrasoundRegion], rows: int, cols: int
) -> UltrasoundRegion | None:
    """The 2-D region the model should see: tissue regions first, then the largest visible area.

    Doppler/M-mode strips are not 2-D and never win; a 2-D colour-flow or other region is only used
    when no 2-D tissue region exists.
    """
    candidates = [r for r in regions if r.is_2d and r.bounds.clipped(rows, cols) is not None]
    if not candidates:
        return None

    def rank(region: UltrasoundRegion) -> tuple[int, int]:
        visible = region.bounds.clipped(rows, cols)
        assert visible is not None
        return (1 if region.is_tissue else 0, visible.area)

    # max() keeps the first of equal ranks, so ties go to the earlier region in the sequence.
    return max(candidates, key=rank)


def _pixel_spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    spacing = ds.get("PixelSpacing", None)
    if spacing is None or len(spacing) != 2:
        return None
    try:
        row, col = float(spacing[0]), float(spacing[1])
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(row) and np.isfinite(col)) or row <= 0 or col <= 0:
        return None
    return row, col


def calibration_from_dataset(ds: Dataset, overhang_tolerance_px: int = 1) -> Calibration:
    """Calibrate one image: ultrasound region spacing, else PixelSpacing, else uncalibrated.

    A region that reaches past the image by more than `overhang_tolerance_px` (vendors often write
    MaxX1 = Columns) describes some other geometry, typically the frame before it was resized or
    cropped; its bounds and its spacing are then both untrustworthy, so it is ignored and noted.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    notes: list[str] = []
    consistent = []
    for region in ultrasound_regions(ds):
        b = region.bounds
        if b.max_x1 > cols - 1 + overhang_tolerance_px or b.max_y1 > rows - 1 + overhang_tolerance_px:
            notes.append(
                f"ultrasound region ({b.min_x0},{b.min_y0})-({b.max_x1},{b.max_y1}) lies outside "
                f"the {cols}x{rows} image; ignored"
            )
        else:
            consistent.append(region)
    region = select_imaging_region(consistent, rows, cols)
    bounds: RegionBounds | None = None
    if region is not None:
        bounds = region.bounds.clipped(rows, cols)
        spacing = region.spacing_mm
        if spacing is not None:
            return Calibration(
                CalibrationSource.ULTRASOUND_REGION, spacing[0], spacing[1], bounds, tuple(notes)
            )
        problem = region.spacing_problem if region.units_x == region.units_y == PHYSICAL_UNITS_CM else None
        notes.append(problem or "imaging region has no spacing in cm")

    spacing = _pixel_spacing_mm(ds)
    if spacing is not None:
        return Calibration(CalibrationSource.PIXEL_SPACING, spacing[0], spacing[1], bounds, tuple(notes))
    return Calibration(CalibrationSource.UNCALIBRATED, None, None, bounds, tuple(notes))


def crop_to_region(frame: np.ndarray, bounds: RegionBounds) -> np.ndarray:
    """The part of a (rows, cols, ...) frame inside the bounds (a view, not a copy)."""
    rows, cols = frame.shape[:2]
    if bounds.max_y1 >= rows or bounds.max_x1 >= cols:
        raise ValueError(f"region {bounds} does not fit a {cols}x{rows} frame")
    row_slice, col_slice = bounds.slices()
    return frame[row_slice, col_slice]


def uncrop_mask(mask: np.ndarray, bounds: RegionBounds, full_shape: tuple[int, int]) -> np.ndarray:
    """Place a mask predicted on the crop back into a full frame; outside the region is False.

    `mask` is (height, width) or (height, width, classes); the result has the full frame's rows and
    columns and the same trailing axes.
    """
    rows, cols = full_shape
    if mask.shape[:2] != (bounds.height, bounds.width):
        raise ValueError(
            f"mask shape {mask.shape[:2]} does not match the region {bounds.height}x{bounds.width}"
        )
    if bounds.max_y1 >= rows or bounds.max_x1 >= cols:
        raise ValueError(f"region {bounds} does not fit a {cols}x{rows} frame")
    full = np.zeros((rows, cols) + mask.shape[2:], dtype=bool)
    row_slice, col_slice = bounds.slices()
    full[row_slice, col_slice] = mask.astype(bool)
    return full
