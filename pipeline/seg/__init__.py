"""DICOM-SEG for ultrasound: model card, deterministic UIDs, writer (single frames and cine loops), reader,
header (identity and references without pixels)."""
from pipeline.seg.algorithm import (
    BONE,
    KNOWN_SEGMENT_CLASSES,
    SEGMENTATION_MODES,
    TISSUE,
    SegAlgorithm,
    SegmentClass,
    segment_classes_for,
)
from pipeline.seg.header import SegHeader, read_seg_header, referenced_frame_numbers
from pipeline.seg.reader import read_seg_masks
from pipeline.seg.uids import SegUids, derive_seg_uids, hashed_uid
from pipeline.seg.writer import (
    SUPPORTED_SEGMENTATION_TYPES,
    SegWriter,
    WrittenSeg,
    normalise_masks,
    remove_partial_files,
    write_seg,
)

__all__ = [
    "SUPPORTED_SEGMENTATION_TYPES",
    "BONE",
    "KNOWN_SEGMENT_CLASSES",
    "SEGMENTATION_MODES",
    "TISSUE",
    "SegAlgorithm",
    "SegHeader",
    "SegUids",
    "SegWriter",
    "SegmentClass",
    "WrittenSeg",
    "derive_seg_uids",
    "hashed_uid",
    "normalise_masks",
    "read_seg_header",
    "read_seg_masks",
    "referenced_frame_numbers",
    "remove_partial_files",
    "segment_classes_for",
    "write_seg",
]
