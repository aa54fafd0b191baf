"""Build and write the DICOM-SEG for one ultrasound instance."""
from __future__ import annotations

import copy
import functools
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import highdicom as hd
from highdicom.seg import SegmentationTypeValues
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RLELossless
from pydicom.valuerep import DA, TM

from pipeline.calibration import Calibration
from pipeline.decode import suppress_dicom_warnings
from pipeline.dicom_file import write_dicom_file
from pipeline.ingest import UsInstance
from pipeline.seg.cine import expand_to_cine, single_frame_view
from pipeline.seg.algorithm import SegAlgorithm, SegmentClass, segment_classes_for
from pipeline.seg.conform import conform_lengths
from pipeline.seg.uids import SegUids, derive_seg_uids

log = logging.getLogger(__name__)

MANUFACTURER = "Sam2Rad Pipeline"
# DCM 109102 "Processing Equipment": equipment that derived new content from the source.
_PROCESSING_EQUIPMENT = hd.sr.CodedConcept("109102", "DCM", "Processing Equipment")


# highdicom also knows FRACTIONAL; the model's masks are binary, so the writer makes these two.
SUPPORTED_SEGMENTATION_TYPES = (SegmentationTypeValues.BINARY, SegmentationTypeValues.LABELMAP)


@functools.lru_cache(maxsize=1)  # reading package metadata costs ~1.5 ms, twice per SEG
def _pipeline_version() -> str:
    try:
        return metadata.version("sam2rad-pipeline")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class WrittenSeg:
    """Where a SEG went and what identifies it (for the ledger and the metrics tables)."""

    path: Path
    sop_uid: str
    series_uid: str
    series_number: int
    source_sop_uid: str
    n_frames: int
    segmentation_type: SegmentationTypeValues


def normalise_masks(masks: np.ndarray, source: UsInstance, n_classes: int) -> np.ndarray:
    """Masks as a (frames, rows, cols, classes) bool array, checked against the source geometry.

    Accepted: that 4-D shape; (frames, rows, cols) when there is one class; (rows, cols) when there
    is one frame and one class. Values must be bool or 0/1.
    """
    masks = np.asarray(masks)
    if masks.ndim == 2 and source.n_frames == 1 and n_classes == 1:
        masks = masks[np.newaxis, ..., np.newaxis]
    elif masks.ndim == 3 and n_classes == 1:
        masks = masks[..., np.newaxis]
    expected = (source.n_frames, source.rows, source.cols, n_classes)
    if masks.shape != expected:
        raise ValueError(
            f"masks have shape {masks.shape}; the source needs (frames, rows, cols, classes) = {expected}"
        )
    if masks.dtype != bool:
        if masks.dtype.kind not in "uib" or not np.isin(masks, (0, 1)).all():
            raise ValueError(f"masks must be boolean (or 0/1), got dtype {masks.dtype}")
        masks = masks.astype(bool)
    return masks


def _labels(frame_masks: np.ndarray) -> np.ndarray:
    """(rows, cols, classes) bool -> (rows, cols) label image; LABELMAP cannot hold overlaps."""
    labels = np.zeros(frame_masks.shape[:2], dtype=np.uint8 if frame_masks.shape[-1] < 256 else np.uint16)
    for s in range(frame_masks.shape[-1]):
        labels[frame_masks[..., s]] = s + 1
    return labels


def _pixel_measures(calibration: Calibration, slice_thickness_mm: float) -> hd.PixelMeasuresSequence | None:
    if not calibration.is_calibrated:
        return None
    # SliceThickness means little for 2-D ultrasound and DICOM does not require it without a Frame
    # of Reference, but readers (highdicom, dcmqi) refuse a PixelMeasures item that lacks it.
    return hd.PixelMeasuresSequence(
        pixel_spacing=[calibration.row_spacing_mm, calibration.column_spacing_mm],
        slice_thickness=slice_thickness_mm,
    )


# Type 2 identity attributes highdicom copies from the source; an absent one becomes empty in the SEG.
_TYPE2_IDENTITY = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)


_DATE_TIME_IDENTITY = {"StudyDate": DA, "StudyTime": TM, "PatientBirthDate": DA}


def _conformant(value: object, vr: type) -> str | None:
    """A DA/TM value in today's form; old ACR-NEMA forms ('1997.04.24', '14:04:38') are repaired,
    anything else becomes empty rather than failing the SEG."""
    text = str(value or "").strip()
    if not text:
        return None
    try:
        parsed = vr(text.replace(".", "") if vr is DA else text.replace(":", ""))
    except ValueError:
        return None
    if vr is DA:
        return parsed.strftime("%Y%m%d")
    fraction = f".{parsed.microsecond:06d}" if parsed.microsecond else ""
    return parsed.strftime("%H%M%S") + fraction


def source_view(source: UsInstance) -> Dataset:
    """The source metadata as highdicom needs it: Type 2 identity present (maybe empty), dates and
    times conformant, values within their VR's length, and a cine posing as a single frame (see
    pipeline.seg.cine)."""
    view = single_frame_view(source.header) if source.is_multiframe else copy.deepcopy(source.header)
    for keyword in _TYPE2_IDENTITY:
        if keyword not in view:
            setattr(view, keyword, None)
    for keyword, vr in _DATE_TIME_IDENTITY.items():
        setattr(view, keyword, _conformant(view.get(keyword), vr))
    # PatientSex is M, F or O; real archives hold 'U', 'm', 'MALE': normalise, else empty (Type 2).
    view.PatientSex = _PATIENT_SEX.get(str(view.get("PatientSex", "") or "").strip().upper())
    conform_lengths(view)  # a 2360-character PatientName is cut to 64 (issue 16 (13))
    return view


_PATIENT_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}


def remove_partial_files(out_dir: str | os.PathLike[str]) -> int:
    """Delete temp files a killed writer left behind (hidden '.<name>.partial'); returns how many.

    A SIGKILL mid-write cannot clean up after itself, but it never leaves a file under a SEG's name.
    """
    removed = 0
    for leftover in Path(out_dir).glob(".*.partial"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


class SegWriter:
    """Builds DICOM-SEG objects from per-frame, per-class masks of one ultrasound instance.

    Every source frame is kept as a SEG frame even when its mask is empty (omit_empty_frames is
    off), so each frame of a cine has its answer, "nothing found" included.
    """

    def __init__(
        self,
        algorithm: SegAlgorithm,
        *,
        segmentation_type: SegmentationTypeValues | str = SegmentationTypeValues.BINARY,
        segment_classes: dict[str, SegmentClass] | None = None,
        manufacturer: str = MANUFACTURER,
        device_serial_number: str = "0",
        slice_thickness_mm: float = 1.0,
    ) -> None:
        if not isinstance(algorithm, SegAlgorithm):
            raise TypeError(f"algorithm must be a SegAlgorithm, got {type(algorithm).__name__}")
        if slice_thickness_mm <= 0:
            raise ValueError("slice_thickness_mm must be positive")
        self.algorithm = algorithm
        self.segmentation_type = SegmentationTypeValues(segmentation_type)
        if self.segmentation_type not in SUPPORTED_SEGMENTATION_TYPES:
            raise ValueError(f"segmentation_type must be BINARY or LABELMAP, got {self.segmentation_type.value}")
        self.segment_classes = segment_classes_for(algorithm, segment_classes)
        self.manufacturer = manufacturer
        self.device_serial_number = device_serial_number
        self.slice_thickness_mm = slice_thickness_mm
        # BINARY frames are bit-packed and must stay uncompressed; a LABELMAP spends a byte per
        # pixel, so it is RLE-compressed (lossless; masks are mostly runs).
        self.transfer_syntax_uid = (
            RLELossless if self.segmentation_type is SegmentationTypeValues.LABELMAP else ExplicitVRLittleEndian
        )

    # -- pieces -----------------------------------------------------------------------------

    def uids_for(self, source: UsInstance) -> SegUids:
        return derive_seg_uids(
            source.series_uid, source.sop_uid, self.algorithm.fingerprint, self.segmentation_type.value
        )

    def _algorithm(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=self.algorithm.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=self.algorithm.version,
            parameters=self.algorithm.algorithm_parameters(),
        )

    def _segment_descriptions(self) -> list[hd.seg.SegmentDescription]:
        algorithm = self._algorithm()
        algorithm_type = (
            hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
            if self.algorithm.mode == "auto"
            else hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
        )
        return [
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=cls.name,
                segmented_property_category=cls.category,
                segmented_property_type=cls.property_type,
                algorithm_type=algorithm_type,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*cls.display_rgb),
            )
            for number, cls in enumerate(self.segment_classes, start=1)
        ]

    def _contributing_equipment(self) -> hd.ContributingEquipment:
        card = self.algorithm
        return hd.ContributingEquipment(
            manufacturer=self.manufacturer,
            purpose_of_reference=_PROCESSING_EQUIPMENT,
            manufacturer_model_name=card.name[:64],
            software_versions=[_pipeline_version(), card.version],
            contribution_description=f"{card.name} {card.version} segmentation, mode {card.mode}"[:64],
        )

    # -- build / write ------------------------------------------------------------------------

    def build(self, source: UsInstance, masks: np.ndarray) -> hd.seg.Segmentation:
        """The SEG for `source`; masks are (frames, rows, cols, classes) bool at full-frame size."""
        masks = normalise_masks(masks, source, len(self.segment_classes))
        uids = self.uids_for(source)
        labelmap = self.segmentation_type is SegmentationTypeValues.LABELMAP
        if labelmap and (masks.sum(axis=-1) > 1).any():
            raise ValueError("classes overlap; a LABELMAP SEG cannot store overlapping segments (use BINARY)")
        # highdicom builds a one-frame SEG; a cine gets its other frames in expand_to_cine.
        first_frame = masks[:1]
        pixel_array = np.stack([_labels(m) for m in first_frame]) if labelmap else first_frame

        card = self.algorithm
        with suppress_dicom_warnings() as caught:
            # highdicom and pydicom quote attribute values (e.g. the patient's name) in warnings.
            header = source_view(source)
            seg = hd.seg.Segmentation(
                source_images=[header],
                pixel_array=pixel_array,
                segmentation_type=self.segmentation_type.value,
                segment_descriptions=self._segment_descriptions(),
                series_instance_uid=uids.series_uid,
                series_number=uids.series_number,
                sop_instance_uid=uids.sop_uid,
                instance_number=int(source.header.get("InstanceNumber", 1) or 1),
                manufacturer=self.manufacturer,
                manufacturer_model_name=card.name[:64],
                software_versions=[_pipeline_version(), card.version],
                device_serial_number=self.device_serial_number,
                content_label="SAM2RAD",
                content_description=f"{card.name} {card.version} {card.mode}"[:64],
                transfer_syntax_uid=self.transfer_syntax_uid,
                pixel_measures=_pixel_measures(source.calibration, self.slice_thickness_mm),
                omit_empty_frames=False,
                contributing_equipment=[self._contributing_equipment()],
            )
            if source.is_multiframe:
                expand_to_cine(seg, source.sop_uid, source.sop_class_uid, masks, labelmap)
            self._finish(seg, source, uids)
            if source.is_multiframe:
                # Re-read what we assembled: highdicom's parser checks frames, dimensions, references.
                seg = hd.seg.Segmentation.from_dataset(seg, copy=False)
        if caught:
            log.debug("%d warning(s) suppressed building SEG %s", len(caught), uids.sop_uid)
        return seg

    def _finish(self, seg: Dataset, source: UsInstance, uids: SegUids) -> None:
        old_organization = seg.DimensionIndexSequence[0].DimensionOrganizationUID
        for item in list(seg.DimensionIndexSequence) + list(seg.get("DimensionOrganizationSequence", [])):
            if item.DimensionOrganizationUID == old_organization:
                item.DimensionOrganizationUID = uids.dimension_organization_uid
        # General Image: PatientOrientation is Type 2C, required when there is no
        # ImageOrientationPatient, which ultrasound lacks; empty is allowed, the source's value is better.
        seg.PatientOrientation = source.header.get("PatientOrientation", None) or ""
        card = self.algorithm
        seg.SeriesDescription = f"SEG {card.name} {card.mode}"[:64]

    def write(self, source: UsInstance, masks: np.ndarray, out_dir: str | os.PathLike[str]) -> WrittenSeg:
        """Build the SEG and write it atomically as <out_dir>/<SEG SOP Instance UID>.dcm."""
        seg = self.build(source, masks)
        path = Path(out_dir) / f"{seg.SOPInstanceUID}.dcm"
        with suppress_dicom_warnings():
            write_dicom_file(seg, path)
        log.info("wrote SEG %s for source %s (%d frames)", seg.SOPInstanceUID, source.sop_uid, int(seg.NumberOfFrames))
        return WrittenSeg(
            path=path,
            sop_uid=str(seg.SOPInstanceUID),
            series_uid=str(seg.SeriesInstanceUID),
            series_number=int(seg.SeriesNumber),
            source_sop_uid=source.sop_uid,
            n_frames=int(seg.NumberOfFrames),
            segmentation_type=self.segmentation_type,
        )


def write_seg(
    source: UsInstance,
    masks: np.ndarray,
    algorithm: SegAlgorithm,
    out_dir: str | os.PathLike[str],
    *,
    segmentation_type: SegmentationTypeValues | str = SegmentationTypeValues.BINARY,
    segment_classes: dict[str, SegmentClass] | None = None,
) -> WrittenSeg:
    """One-call form of SegWriter(algorithm, ...).write(source, masks, out_dir)."""
    writer = SegWriter(algorithm, segmentation_type=segmentation_type, segment_classes=segment_classes)
    return writer.write(source, masks, out_dir)
