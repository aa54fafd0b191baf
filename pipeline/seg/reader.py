"""Read masks back out of a SEG (for audit and round-trip checks), via highdicom."""
from __future__ import annotations

import os

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from pipeline.decode import suppress_dicom_warnings
from pipeline.seg.header import referenced_frame_numbers


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
    frame_numbers = list(referenced_frame_numbers(segmentation, source_sop_uid))
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
