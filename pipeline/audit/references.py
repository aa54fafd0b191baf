"""Reference labels on disk: `<SOPInstanceUID>.npz` masks or reference SEGs, found by source instance."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.seg import read_seg_masks
from pipeline.seg.header import SegHeader, read_seg_header, valid_spacing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """A reference label for one source instance: an NPZ file or a reference SEG."""

    source_sop_uid: str
    kind: str  # "npz" | "seg"
    path: Path
    seg: SegHeader | None = None

    def load(self) -> tuple[np.ndarray, tuple[int, ...], tuple[str, ...], tuple[float, float] | None]:
        """(masks (frames, rows, cols, classes) bool, 1-based frame numbers, class labels, spacing_mm)."""
        if self.seg is not None:
            masks = read_seg_masks(self.path, self.source_sop_uid)
            return masks, self.seg.frame_numbers(self.source_sop_uid), self.seg.segment_labels, None
        with np.load(self.path, allow_pickle=False) as npz:
            if "mask" not in npz:
                raise ValueError("reference NPZ has no 'mask' array")
            masks = np.asarray(npz["mask"]) != 0
            spacing = valid_spacing(npz["spacing_mm"]) if "spacing_mm" in npz else None
            frames = tuple(int(v) for v in np.ravel(npz["frame_numbers"])) if "frame_numbers" in npz else None
            labels = tuple(str(v) for v in np.ravel(npz["class_names"])) if "class_names" in npz else ()
        if masks.ndim == 2:
            masks = masks[np.newaxis]
        if masks.ndim == 3:
            masks = masks[..., np.newaxis]
        if masks.ndim != 4:
            raise ValueError(f"reference mask must be (frames, rows, cols[, classes]), got shape {masks.shape}")
        if frames is None:
            frames = tuple(range(1, masks.shape[0] + 1))
        if len(frames) != masks.shape[0]:
            raise ValueError(f"reference has {masks.shape[0]} frames but {len(frames)} frame_numbers")
        return masks, frames, labels, spacing


def _files(folder: Path) -> list[Path]:
    # Hidden files include half-written '.<name>.partial' files of an interrupted writer.
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def find_segs(folder: Path) -> list[SegHeader]:
    """Every DICOM SEG under folder (recursive), in path order; other files are ignored."""
    return [h for h in (read_seg_header(p) for p in _files(folder) if p.suffix.lower() != ".npz") if h]


def find_references(folder: Path, exclude_sop_uids: Iterable[str] = ()) -> dict[str, Reference]:
    """Reference labels under folder by source SOP Instance UID: `<uid>.npz` files and reference SEGs.

    When one source has several, an NPZ wins over a SEG and otherwise the first path wins.
    """
    excluded = set(exclude_sop_uids)
    found: dict[str, Reference] = {}
    n_duplicates = 0
    for path in _files(folder):
        if path.suffix.lower() == ".npz":
            candidates = [Reference(path.stem, "npz", path)]
        else:
            header = read_seg_header(path)
            if header is None or header.sop_uid in excluded:
                continue
            candidates = [Reference(uid, "seg", path, header) for uid in header.source_sop_uids]
        for ref in candidates:
            previous = found.get(ref.source_sop_uid)
            if previous is None or (previous.kind == "seg" and ref.kind == "npz"):
                found[ref.source_sop_uid] = ref
            if previous is not None:
                n_duplicates += 1
    if n_duplicates:
        log.info("audit: %d source instance(s) have more than one reference; NPZ preferred", n_duplicates)
    return found
