"""Training and evaluation samples from the archive: ultrasound DICOM images with reference SEGs.

Each labelled frame becomes a `sam2rad.data.datasets.Sample` cropped to the imaging region, exactly
what the model sees at night, with the calibrated spacing when there is one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.ingest import ingest, iter_frames
from pipeline.seg import read_seg_header, read_seg_masks
from sam2rad.data.datasets import Sample
from sam2rad.data.specs import load_spec

log = logging.getLogger(__name__)


def samples_from_dicom(images: Iterable[str | Path], segs: Iterable[str | Path]) -> list[Sample]:
    """Pair source instances with the reference SEGs that cite them; one Sample per labelled frame.

    Multi-class SEGs become integer label masks (segment k -> label k). Instances without a reference
    SEG are left out (and counted in the log).
    """
    instances = {i.sop_uid: i for i in ingest(images).instances}
    seg_files = [p for p in (Path(s) for s in segs) for p in ([p] if p.is_file() else sorted(p.rglob("*.dcm")))]
    samples: list[Sample] = []
    used: set[str] = set()
    for seg_path in seg_files:
        header = read_seg_header(seg_path)
        for sop in header.source_sop_uids if header else ():
            inst = instances.get(sop)
            if inst is None or sop in used:
                continue
            masks = read_seg_masks(seg_path, sop)  # (frames, rows, cols, segments)
            labels = np.zeros(masks.shape[:3], np.uint8)
            for k in range(masks.shape[3]):
                labels[masks[..., k]] = k + 1
            cal = inst.calibration
            spacing = (cal.row_spacing_mm, cal.column_spacing_mm) if cal.is_calibrated else None
            for frame in iter_frames(inst):
                label = labels[frame.frame_number - 1]
                crop = frame.crop_bounds.slices()
                mask = label[crop] if masks.shape[3] > 1 else label[crop] > 0
                samples.append(Sample(frame.model_input, mask, spacing, f"{sop}-f{frame.frame_number}"))
            used.add(sop)
    if not samples:
        raise ValueError("no source instance is referenced by any reference SEG given")
    log.info("dicom training data: %d frames from %d instances (%d instances without a reference SEG)",
             len(samples), len(used), len(instances) - len(used))
    return samples


def load_data_spec(spec: str) -> tuple[list[Sample], str]:
    """A training/evaluation data spec -> (samples, description).

    `dicom:IMAGES_DIR:REFERENCE_SEG_DIR` pairs archive images with reference SEGs (this module);
    every other form (synthetic:N, PNG folders, NPZ files) is `sam2rad.data.specs.load_spec`'s.
    """
    if not spec.startswith("dicom:"):
        return load_spec(spec)
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"bad dicom spec {spec!r}; use dicom:IMAGES_DIR:REFERENCE_SEG_DIR")
    return samples_from_dicom([parts[1]], [parts[2]]), f"DICOM {parts[1]} + SEG {parts[2]}"
