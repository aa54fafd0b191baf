"""Synthetic ultrasound DICOM, one builder for the demo archive and the tests (tests/dicom_factory.py).

Identity, pixel description, cine timing and ultrasound regions; callers add what their case needs.
"""
from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage

CM = 3  # PhysicalUnitsX/YDirection code for centimetres


def new_instance(sop_class: str, sop_uid: str, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """An empty instance with its file meta and SOP identity."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = UID(sop_class), sop_uid
    return ds


def describe_pixels(ds: Dataset, rows: int, cols: int, photometric: str = "MONOCHROME2", samples: int = 1,
                    bits: int = 8) -> None:
    """The Image Pixel module's description (not the data) of unsigned pixels."""
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if samples == 3:
        ds.PlanarConfiguration = 0


def make_cine(ds: Dataset, n_frames: int, frame_time_ms: float) -> None:
    """Turn ds into a US Multi-frame instance of n_frames frames."""
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.NumberOfFrames = n_frames
    ds.FrameTime = frame_time_ms
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")


def ultrasound_region(bounds: tuple[int, int, int, int], delta_cm: tuple[float, float], *, units: int = CM,
                      spatial_format: int = 1, data_type: int = 1,
                      reference_pixel: tuple[int, int] | None = None) -> Dataset:
    """One SequenceOfUltrasoundRegions item; bounds are (x0, y0, x1, y1) inclusive, delta (x, y) per pixel."""
    item = Dataset()
    item.RegionSpatialFormat = spatial_format  # 1: 2-D
    item.RegionDataType = data_type  # 1: tissue
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = int(bounds[0]), int(bounds[1])
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = int(bounds[2]), int(bounds[3])
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta_cm
    if reference_pixel is not None:
        item.ReferencePixelX0, item.ReferencePixelY0 = reference_pixel
    return item
