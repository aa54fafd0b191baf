"""Synthesise small ultrasound DICOM files (good and bad) for the DICOM-layer tests.

Everything is built with pydicom from a known grey image, so decoding can be checked against the
truth. Files are tiny (tens of kB) to keep the tests fast.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    BasicTextSRStorage,
    CTImageStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from flows.demo.us_dicom import describe_pixels, make_cine, new_instance, ultrasound_region

US_IMAGE = UltrasoundImageStorage
US_MULTIFRAME = UltrasoundMultiFrameImageStorage
SECONDARY_CAPTURE = SecondaryCaptureImageStorage
CT_IMAGE = CTImageStorage
SEGMENTATION = SegmentationStorage
BASIC_TEXT_SR = BasicTextSRStorage
GRAYSCALE_PR = GrayscaleSoftcopyPresentationStateStorage
MPEG2_MAIN_PROFILE = UID("1.2.840.10008.1.2.4.100")

STUDY_UID = "1.2.826.0.1.3680043.8.498.1000001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1000002"


def grey_image(rows: int = 48, cols: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth grey test image spanning 0..255 (smooth so lossy JPEG stays close)."""
    y, x = np.mgrid[0:rows, 0:cols]
    image = 127.5 + 127.5 * np.sin(x / cols * np.pi * 2 + seed) * np.cos(y / rows * np.pi)
    image = np.rint(image).astype(np.uint8)
    image[0, 0], image[0, 1] = 0, 255  # the full range, for min/max based mappings
    return image


def grey_cine(n_frames: int = 4, rows: int = 48, cols: int = 64) -> np.ndarray:
    return np.stack([grey_image(rows, cols, seed=i) for i in range(n_frames)])


def base_dataset(
    sop_class: str = US_IMAGE,
    modality: str = "US",
    *,
    study_uid: str = STUDY_UID,
    series_uid: str = SERIES_UID,
    sop_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """Patient/study/series/equipment identity of a small synthetic instance (no pixel description)."""
    ds = new_instance(sop_class, sop_uid or generate_uid(), transfer_syntax)
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYNTH-001"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Synthetic"
    ds.PatientOrientation = ""
    return ds


_pixel_description = describe_pixels


def add_region(
    ds: Dataset,
    bounds: tuple[int, int, int, int],
    delta_cm: tuple[float, float] = (0.01, 0.02),
    *,
    spatial_format: int = 1,
    data_type: int = 1,
    units: int = 3,
) -> Dataset:
    """Append one SequenceOfUltrasoundRegions item; bounds are (x0, y0, x1, y1) inclusive."""
    item = ultrasound_region(bounds, delta_cm, units=units, spatial_format=spatial_format, data_type=data_type)
    if "SequenceOfUltrasoundRegions" not in ds:
        ds.SequenceOfUltrasoundRegions = []
    ds.SequenceOfUltrasoundRegions.append(item)
    return ds


def _frames(grey: np.ndarray) -> tuple[np.ndarray, int]:
    frames = grey if grey.ndim == 3 else grey[np.newaxis]
    return frames, frames.shape[0]


def _as_cine(ds: Dataset, n_frames: int, force_multiframe: bool) -> None:
    if n_frames > 1 or force_multiframe:
        make_cine(ds, n_frames, frame_time_ms=33.3)


def us_image(
    grey: np.ndarray,
    photometric: str = "MONOCHROME2",
    *,
    multiframe: bool = False,
    **identity: object,
) -> Dataset:
    """An uncompressed US image (or cine, for a 3-D `grey`) whose grey rendering is `grey`.

    photometric: MONOCHROME2, MONOCHROME1 (stored inverted), RGB, YBR_FULL, YBR_FULL_422
    (subsampled native), PALETTE COLOR (16-bit grey ramp LUT).
    """
    frames, n = _frames(grey)
    rows, cols = frames.shape[1:]
    ds = base_dataset(**identity)  # type: ignore[arg-type]
    _as_cine(ds, n, multiframe)
    if photometric == "MONOCHROME2":
        _pixel_description(ds, rows, cols, photometric, 1)
        ds.PixelData = frames.tobytes()
    elif photometric == "MONOCHROME1":
        _pixel_description(ds, rows, cols, photometric, 1)
        ds.PixelData = (255 - frames).astype(np.uint8).tobytes()
    elif photometric in ("RGB", "YBR_FULL"):
        _pixel_description(ds, rows, cols, photometric, 3)
        rgb = np.repeat(frames[..., np.newaxis], 3, axis=-1)
        stored = rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", "YBR_FULL")
        ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint8).tobytes()
    elif photometric == "YBR_FULL_422":
        if cols % 2:
            raise ValueError("YBR_FULL_422 needs an even number of columns")
        _pixel_description(ds, rows, cols, photometric, 3)
        # Native 4:2:2 stores Y0 Y1 Cb Cr for each horizontal pixel pair; grey has Cb = Cr = 128.
        pairs = frames.reshape(n, rows, cols // 2, 2)
        chroma = np.full(pairs.shape, 128, dtype=np.uint8)
        ds.PixelData = np.concatenate([pairs, chroma], axis=-1).astype(np.uint8).tobytes()
    elif photometric == "PALETTE COLOR":
        _pixel_description(ds, rows, cols, photometric, 1)
        ramp = (np.arange(256, dtype=np.uint16) * 257).tobytes()
        for colour in ("Red", "Green", "Blue"):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", ramp)
        ds.PixelData = frames.tobytes()
    else:
        raise ValueError(f"unknown photometric {photometric}")
    return ds


def monochrome16(grey: np.ndarray, *, big_endian: bool = False, window: bool = False) -> Dataset:
    """12-bit MONOCHROME2 in 16-bit words (grey * 16); optionally big endian or with a VOI window."""
    frames, n = _frames(grey)
    rows, cols = frames.shape[1:]
    ds = base_dataset(transfer_syntax=ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian)
    _as_cine(ds, n, False)
    _pixel_description(ds, rows, cols, "MONOCHROME2", 1, bits=12)
    values = frames.astype(np.uint16) * 16
    ds.PixelData = values.astype(">u2" if big_endian else "<u2").tobytes()
    if window:
        # A window covering exactly the stored range maps it onto 0..255.
        ds.WindowCenter = (0 + 255 * 16) / 2 + 0.5
        ds.WindowWidth = 255 * 16 + 1
    return ds


def compressed(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Re-encode an uncompressed dataset losslessly (RLE, JPEG-LS, JPEG 2000) with pydicom's encoders."""
    ds.compress(transfer_syntax, generate_instance_uid=False)
    return ds


def jpeg_baseline(grey: np.ndarray, *, colour: bool = False, quality: int = 95) -> Dataset:
    """JPEG baseline via Pillow: MONOCHROME2, or YBR_FULL_422 (4:2:2 colour) like real US cines."""
    frames, n = _frames(grey)
    rows, cols = frames.shape[1:]
    ds = base_dataset(transfer_syntax=JPEGBaseline8Bit)
    _as_cine(ds, n, False)
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        if colour:
            image = Image.fromarray(np.repeat(frame[..., np.newaxis], 3, axis=-1), "RGB")
            image.save(buffer, "JPEG", quality=quality, subsampling=1)  # 1 = 4:2:2
        else:
            Image.fromarray(frame, "L").save(buffer, "JPEG", quality=quality)
        encoded.append(buffer.getvalue())
    if colour:
        _pixel_description(ds, rows, cols, "YBR_FULL_422", 3)
    else:
        _pixel_description(ds, rows, cols, "MONOCHROME2", 1)
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = ds.file_meta.TransferSyntaxUID
    ds.save_as(path, enforce_file_format=True, little_endian=not ts == ExplicitVRBigEndian, implicit_vr=False)
    return path


# ---------------------------------------------------------------------------------------------
# Bad inputs: each returns the path it wrote.


def truncated_file(path: Path) -> Path:
    """A valid US image cut in the middle of its pixel data."""
    full = save(us_image(grey_image(64, 64)), path)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) - 64 * 64 // 2])
    return path


def not_dicom_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a README, not a DICOM file\n")
    return path


def no_pixel_data_file(path: Path) -> Path:
    ds = us_image(grey_image())
    del ds.PixelData
    return save(ds, path)


def unsupported_transfer_syntax_file(path: Path) -> Path:
    """An ultrasound clip stored as MPEG-2 video, which no installed decoder handles."""
    ds = us_image(grey_image())
    ds.file_meta.TransferSyntaxUID = MPEG2_MAIN_PROFILE
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return save(ds, path)


def ct_image_file(path: Path) -> Path:
    ds = us_image(grey_image())
    ds.SOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.Modality = "CT"
    return save(ds, path)


def one_pixel_file(path: Path) -> Path:
    return save(us_image(np.array([[128]], dtype=np.uint8)), path)


def zero_frame_cine_file(path: Path) -> Path:
    ds = us_image(grey_cine(2))
    ds.NumberOfFrames = 0
    ds.PixelData = b""
    return save(ds, path)


def huge_cine_file(path: Path, n_frames: int = 2000) -> Path:
    """A cine whose header claims `n_frames` 8x8 frames; only one frame of pixels is stored, so any
    attempt to read or decode it would fail differently from the frame-limit rejection."""
    ds = us_image(grey_cine(2, 8, 8))
    ds.NumberOfFrames = n_frames
    ds.PixelData = bytes(64)
    return save(ds, path)


def segmentation_file(path: Path) -> Path:
    ds = base_dataset(SEGMENTATION, "SEG")
    return save(ds, path)


def structured_report_file(path: Path) -> Path:
    ds = base_dataset(BASIC_TEXT_SR, "SR")
    return save(ds, path)


def presentation_state_file(path: Path) -> Path:
    ds = base_dataset(GRAYSCALE_PR, "PR")
    return save(ds, path)


def secondary_capture_file(path: Path, modality: str = "US") -> Path:
    ds = us_image(grey_image())
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.Modality = modality
    return save(ds, path)


BAD_INPUTS = {
    "truncated": (truncated_file, "truncated"),
    "not_dicom": (not_dicom_file, "not_dicom"),
    "no_pixel_data": (no_pixel_data_file, "no_pixel_data"),
    "unsupported_ts": (unsupported_transfer_syntax_file, "unsupported_transfer_syntax"),
    "ct_image": (ct_image_file, "not_ultrasound"),
    "one_pixel": (one_pixel_file, "image_too_small"),
    "zero_frames": (zero_frame_cine_file, "no_frames"),
    "huge_cine": (huge_cine_file, "too_many_frames"),
}
"""name -> (writer(path) -> path, expected IssueCode value)."""


__all__ = [
    "BAD_INPUTS",
    "JPEG2000Lossless",
    "JPEGLSLossless",
    "RLELossless",
    "add_region",
    "base_dataset",
    "compressed",
    "grey_cine",
    "grey_image",
    "jpeg_baseline",
    "monochrome16",
    "save",
    "us_image",
]
