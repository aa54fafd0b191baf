"""The records ingest hands on: an ultrasound instance, its frames, and why a file was not taken."""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UltrasoundMultiFrameImageStorage

from pipeline.calibration import Calibration, RegionBounds, crop_to_region, uncrop_mask
from pipeline.decode import suppress_dicom_warnings


class IssueKind(str, enum.Enum):
    SKIPPED = "skipped"  # not something this pipeline segments (SEG, SR, CT, ...)
    FAILED = "failed"  # meant to be segmented but unusable (truncated, undecodable, ...)


class IssueCode(str, enum.Enum):
    NOT_DICOM = "not_dicom"
    UNREADABLE = "unreadable"
    MISSING_IDENTITY = "missing_identity"
    SEGMENTATION = "segmentation"
    STRUCTURED_REPORT = "structured_report"
    PRESENTATION_STATE = "presentation_state"
    NOT_ULTRASOUND = "not_ultrasound"
    UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"
    NO_PIXEL_DATA = "no_pixel_data"
    TRUNCATED = "truncated"
    NO_FRAMES = "no_frames"
    TOO_MANY_FRAMES = "too_many_frames"
    IMAGE_TOO_SMALL = "image_too_small"
    IMAGE_TOO_LARGE = "image_too_large"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    UNSUPPORTED_PIXEL_FORMAT = "unsupported_pixel_format"
    DECODE_ERROR = "decode_error"
    DUPLICATE_SOP_UID = "duplicate_sop_uid"
    DUPLICATE_INSTANCE = "duplicate_sop_uid"  # the former name
    WRONG_STUDY = "wrong_study"
    INVALID_UID = "invalid_uid"
    NOT_REGULAR_FILE = "not_regular_file"
    OVER_BUDGET = "over_budget"


MAX_DECODED_BYTES_ENV = "SAM2RAD_MAX_DECODED_BYTES"
DEFAULT_MAX_DECODED_BYTES = 2 * 2**30


@dataclass(frozen=True)
class IngestLimits:
    """Resource guards checked on the header, before any pixel is decoded."""

    max_frames: int = 1000
    min_rows: int = 16
    min_cols: int = 16
    max_pixels_per_frame: int = 4096 * 4096
    # Decoded size an instance may declare (all frames); None: SAM2RAD_MAX_DECODED_BYTES, else 2 GiB.
    max_decoded_bytes: int | None = None

    def decoded_bytes_budget(self) -> int:
        """The memory budget for one instance's decoded pixels; a bad environment value is a ValueError
        naming the variable (a configuration error, not a bad file)."""
        if self.max_decoded_bytes is not None:
            return self.max_decoded_bytes
        text = os.environ.get(MAX_DECODED_BYTES_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_DECODED_BYTES
        try:
            budget = int(text)
        except ValueError:
            raise ValueError(f"{MAX_DECODED_BYTES_ENV} must be a number of bytes, got {text!r}") from None
        if budget < 1:
            raise ValueError(f"{MAX_DECODED_BYTES_ENV} must be positive, got {budget}")
        return budget

    def __post_init__(self) -> None:
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.max_frames}")
        if self.min_rows < 1 or self.min_cols < 1:
            raise ValueError("minimum image size must be at least 1x1")
        if self.max_pixels_per_frame < self.min_rows * self.min_cols:
            raise ValueError("max_pixels_per_frame is below the minimum image size")
        if self.max_decoded_bytes is not None and self.max_decoded_bytes < 1:
            raise ValueError(f"max_decoded_bytes must be positive, got {self.max_decoded_bytes}")


@dataclass(frozen=True)
class IngestIssue:
    """One file that was not ingested (or could not be decoded) and why; carries no PHI."""

    path: Path | None
    kind: IssueKind
    code: IssueCode
    reason: str
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None

    def __post_init__(self) -> None:
        if not self.reason:
            raise ValueError("an ingest issue needs a reason")


@dataclass(frozen=True, eq=False)
class UsInstance:
    """An ultrasound image instance accepted for segmentation (metadata only, no pixels).

    `header` is the dataset without pixel data (what the SEG writer copies identity from);
    `load_dataset()` gives the full dataset. patient_id is kept for the SEG, never logged, and
    hidden from repr.
    """

    path: Path | None
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    n_frames: int
    rows: int
    cols: int
    photometric: str
    transfer_syntax_uid: str
    calibration: Calibration
    patient_id: str = field(default="", repr=False)
    header: Dataset = field(default_factory=Dataset, repr=False)
    in_memory: Dataset | None = field(default=None, repr=False)
    warnings: tuple[str, ...] = ()  # e.g. a JPEG 2000 codestream at odds with the header (issue 16 (18))
    # What the pixel decoders warned while the frames were decoded (filled by iter_frames).
    decoder_messages: list[str] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("study_uid", "series_uid", "sop_uid", "sop_class_uid"):
            if not getattr(self, name):
                raise ValueError(f"UsInstance needs {name}")
        if self.n_frames < 1 or self.rows < 1 or self.cols < 1:
            raise ValueError(f"UsInstance needs frames and pixels, got {self.n_frames}x{self.rows}x{self.cols}")
        if self.path is None and self.in_memory is None:
            raise ValueError("UsInstance needs a file path or an in-memory dataset")

    @property
    def is_multiframe(self) -> bool:
        """True for the US Multi-frame SOP class (even with one frame): SEG frames then cite frame numbers."""
        return self.sop_class_uid == UltrasoundMultiFrameImageStorage

    @property
    def frame_numbers(self) -> range:
        """1-based frame numbers, as DICOM references them."""
        return range(1, self.n_frames + 1)

    def load_dataset(self) -> Dataset:
        """The full dataset, pixel data included."""
        if self.in_memory is not None:
            return self.in_memory
        assert self.path is not None
        with suppress_dicom_warnings():
            return pydicom.dcmread(self.path)

    def pixel_source(self) -> Path | Dataset:
        return self.in_memory if self.in_memory is not None else self.path  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class UsFrame:
    """One decoded frame: the full grey image, and the crop the model should see."""

    sop_uid: str
    frame_number: int
    image: np.ndarray
    calibration: Calibration

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.image.dtype != np.uint8:
            raise ValueError(f"a frame is a 2-D uint8 image, got {self.image.dtype} {self.image.shape}")
        if self.frame_number < 1:
            raise ValueError("frame numbers start at 1")

    @property
    def crop_bounds(self) -> RegionBounds:
        return self.calibration.crop_bounds(*self.image.shape)

    @property
    def model_input(self) -> np.ndarray:
        """The grey image cropped to the imaging region (no burned-in text around it)."""
        return crop_to_region(self.image, self.crop_bounds)

    def mask_to_full_frame(self, mask_on_crop: np.ndarray) -> np.ndarray:
        """Map a mask predicted on `model_input` back onto the full frame."""
        return uncrop_mask(mask_on_crop, self.crop_bounds, self.image.shape)


@dataclass(frozen=True)
class UsSeries:
    series_uid: str
    instances: tuple[UsInstance, ...]


@dataclass(frozen=True)
class UsStudy:
    study_uid: str
    series: tuple[UsSeries, ...]

    @property
    def instances(self) -> tuple[UsInstance, ...]:
        return tuple(i for s in self.series for i in s.instances)


@dataclass
class IngestResult:
    instances: list[UsInstance] = field(default_factory=list)
    issues: list[IngestIssue] = field(default_factory=list)

    def studies(self) -> list[UsStudy]:
        """Instances grouped by study then series, in first-seen order."""
        grouped: dict[str, dict[str, list[UsInstance]]] = {}
        for inst in self.instances:
            grouped.setdefault(inst.study_uid, {}).setdefault(inst.series_uid, []).append(inst)
        return [
            UsStudy(study, tuple(UsSeries(series, tuple(insts)) for series, insts in by_series.items()))
            for study, by_series in grouped.items()
        ]
