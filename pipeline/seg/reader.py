"""Read masks back out of a SEG (for audit and round-trip checks), via highdicom."""
from __future__ import annotations

import os

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from pipeline.decode import suppress_dicom_warnings


def _referenced_frame_numbers(seg: Dataset, source_sop_uid: str) -> list[int]:
    numbers: set[int] = set()
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            for ref in derivation.get("SourceImageSequence", []):
                if ref.ReferencedSOPInstanceUID == source_sop_uid and "ReferencedFrameNumber" in ref:
                    value = ref.ReferencedFrameNumber
                    numbers.update(int(v) for v in (value if isinstance(value, MultiValue) else [value]))
    return sorted(numbers)


def read_seg_masks(seg: str | os.PathLike[str] | Dataset, source_sop_uid: str) -> np.ndarray:
    """The masks a SEG holds for one source instance, as (frames, rows, cols, segments) bool.

    Frames follow the source: for a cine, frame i of the result is source frame i + 1.
    """
    with suppress_dicom_warnings():  # warnings may quote patient attributes
        if isinstance(seg, hd.seg.Segmentation):
            segmentation = seg
        elif isinstance(seg, Dataset):
            segmentation = hd.seg.Segmentation.from_dataset(seg)
        else:
            segmentation = hd.seg.segread(seg)
    # LABELMAP SEGs also describe segment 0 (background), which is not a class
    segment_numbers = [n for n in segmentation.segment_numbers if n > 0]
    frame_numbers = _referenced_frame_numbers(segmentation, source_sop_uid)
    if frame_numbers:
        pixels = segmentation.get_pixels_by_source_frame(
            source_sop_instance_uid=source_sop_uid,
            source_frame_numbers=frame_numbers,
            segment_numbers=segment_numbers,
            combine_segments=False,
        )
    else:
        pixels = segmentation.get_pixels_by_source_instance(
            source_sop_instance_uids=[source_sop_uid],
            segment_numbers=segment_numbers,
            combine_segments=False,
        )
    return pixels.astype(bool)
