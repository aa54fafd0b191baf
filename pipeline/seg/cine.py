"""SEG frames for cine loops (US Multi-frame), which highdicom refuses to build.

highdicom only accepts a single source frame when the source has no Frame of Reference, which is
the norm for ultrasound. We let highdicom build a correct one-frame SEG from a single-frame view of
the cine (every module, segment and equipment description), then give it one SEG frame per source
frame (per segment, for BINARY): each frame's DerivationImageSequence cites the source instance
and its ReferencedFrameNumber, and a Temporal Position Index dimension makes every frame's
dimension index unique.
"""
from __future__ import annotations

import copy

import numpy as np
from pydicom.uid import UltrasoundImageStorage
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder, pack_bits
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID



def single_frame_view(header: Dataset) -> Dataset:
    """The cine's metadata posing as one US image, so highdicom builds its one-frame SEG.

    Every reference to this stand-in SOP class is replaced by the real one afterwards.
    """
    view = copy.deepcopy(header)
    view.SOPClassUID = UltrasoundImageStorage
    for keyword in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "FrameTimeVector"):
        if keyword in view:
            delattr(view, keyword)
    return view


def _as_list(value: object) -> list[int]:
    if isinstance(value, (list, tuple, MultiValue)):
        return [int(v) for v in value]
    return [int(value)]  # type: ignore[call-overload]


def _temporal_dimension(organization_uid: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = organization_uid
    item.DimensionIndexPointer = Tag("TemporalPositionIndex")
    item.FunctionalGroupPointer = Tag("FrameContentSequence")
    item.DimensionDescriptionLabel = "Temporal Position Index"
    return item


def _cite_source_class(seg: Dataset, source_sop_uid: str, source_sop_class_uid: str) -> None:
    for series in seg.get("ReferencedSeriesSequence", []):
        for instance in series.get("ReferencedInstanceSequence", []):
            if instance.ReferencedSOPInstanceUID == source_sop_uid:
                instance.ReferencedSOPClassUID = source_sop_class_uid


def _uid_values(ds: Dataset) -> set[str]:
    """Every UI value anywhere in the dataset (to prove the stand-in class left no trace)."""
    found: set[str] = set()
    for element in ds.iterall():
        if element.VR == "UI" and element.value:
            values = element.value if isinstance(element.value, (list, MultiValue)) else [element.value]
            found.update(str(v) for v in values)
    return found


def _encapsulated_frames(labels: np.ndarray, transfer_syntax: UID, bits_allocated: int) -> bytes:
    """Compress each label frame losslessly (e.g. RLE) and encapsulate them, one fragment per frame."""
    encoder = get_encoder(transfer_syntax)
    description = dict(
        rows=labels.shape[1], columns=labels.shape[2], samples_per_pixel=1, number_of_frames=1,
        bits_allocated=bits_allocated, bits_stored=bits_allocated, pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
    )
    return encapsulate([encoder.encode(frame, **description) for frame in labels])


def expand_to_cine(
    seg: Dataset,
    source_sop_uid: str,
    source_sop_class_uid: str,
    masks: np.ndarray,
    labelmap: bool,
) -> Dataset:
    """Turn a one-frame SEG built from `single_frame_view` into the cine's SEG, in place.

    `masks` is (frames, rows, cols, segments) bool. BINARY frames are segment-major (all frames of
    segment 1, then segment 2 ...), as highdicom orders them; LABELMAP has one frame per source frame.
    """
    n_frames, rows, cols, n_segments = masks.shape
    templates = list(seg.PerFrameFunctionalGroupsSequence)
    expected_templates = 1 if labelmap else n_segments
    if len(templates) != expected_templates:
        raise ValueError(f"one-frame SEG has {len(templates)} frames, expected {expected_templates}")

    per_frame = Sequence()
    for template in templates:
        for frame_number in range(1, n_frames + 1):
            item = copy.deepcopy(template)
            reference = item.DerivationImageSequence[0].SourceImageSequence[0]
            if reference.ReferencedSOPInstanceUID != source_sop_uid:
                raise ValueError("one-frame SEG cites another instance than the cine")
            reference.ReferencedSOPClassUID = source_sop_class_uid
            reference.ReferencedFrameNumber = frame_number
            content = item.FrameContentSequence[0]
            content.DimensionIndexValues = _as_list(content.DimensionIndexValues) + [frame_number]
            content.TemporalPositionIndex = frame_number
            per_frame.append(item)
    seg.PerFrameFunctionalGroupsSequence = per_frame
    seg.DimensionIndexSequence.append(_temporal_dimension(seg.DimensionIndexSequence[0].DimensionOrganizationUID))
    seg.NumberOfFrames = len(per_frame)
    _cite_source_class(seg, source_sop_uid, source_sop_class_uid)

    if labelmap:
        labels = np.zeros((n_frames, rows, cols), dtype=np.uint8 if int(seg.BitsAllocated) == 8 else np.uint16)
        for s in range(n_segments):
            labels[masks[..., s]] = s + 1
        transfer_syntax = seg.file_meta.TransferSyntaxUID
        if transfer_syntax.is_compressed:
            seg.PixelData = _encapsulated_frames(labels, transfer_syntax, int(seg.BitsAllocated))
        else:
            pixel_bytes = labels.tobytes()
            seg.PixelData = pixel_bytes + (b"\0" if len(pixel_bytes) % 2 else b"")
    else:
        segment_major = np.ascontiguousarray(np.moveaxis(masks, 3, 0)).astype(np.uint8)
        seg.PixelData = pack_bits(segment_major.ravel(), pad=True)

    if UltrasoundImageStorage in _uid_values(seg) and source_sop_class_uid != UltrasoundImageStorage:
        raise RuntimeError("the stand-in US Image SOP class leaked into the cine SEG")
    return seg
