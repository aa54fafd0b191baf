"""DICOM-SEG for ultrasound: model card, deterministic UIDs, writer (single frames and cine loops), reader."""
from pipeline.seg.model_card import (
    BONE,
    KNOWN_SEGMENT_CLASSES,
    SEGMENTATION_MODES,
    TISSUE,
    ModelCard,
    SegmentClass,
    segment_classes_for,
)
from pipeline.seg.reader import read_seg_masks
from pipeline.seg.uids import SegUids, derive_seg_uids, hashed_uid
from pipeline.seg.writer import (
    SegmentationType,
    SegWriter,
    WrittenSeg,
    atomic_save,
    normalise_masks,
    remove_partial_files,
    write_seg,
)

__all__ = [
    "BONE",
    "KNOWN_SEGMENT_CLASSES",
    "SEGMENTATION_MODES",
    "TISSUE",
    "ModelCard",
    "SegUids",
    "SegWriter",
    "SegmentClass",
    "SegmentationType",
    "WrittenSeg",
    "atomic_save",
    "derive_seg_uids",
    "hashed_uid",
    "normalise_masks",
    "read_seg_masks",
    "remove_partial_files",
    "segment_classes_for",
    "write_seg",
]
