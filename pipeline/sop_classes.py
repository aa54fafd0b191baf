"""SOP classes the pipeline recognises by UID, where pydicom has no name for them."""
from __future__ import annotations

from pydicom.uid import (
    UID,
    SegmentationStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

# pydicom 3.0 has no name for Label Map Segmentation Storage (Sup 243); highdicom writes it.
LABEL_MAP_SEGMENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.66.7")
SEG_SOP_CLASSES = frozenset({SegmentationStorage, LABEL_MAP_SEGMENTATION_STORAGE})
ULTRASOUND_SOP_CLASSES = frozenset({UltrasoundImageStorage, UltrasoundMultiFrameImageStorage})
