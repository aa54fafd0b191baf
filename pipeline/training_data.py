"""Training and evaluation samples from the archive: ultrasound DICOM images with reference SEGs.

Each labelled frame becomes a `sam2rad.data.datasets.Sample` cropped to the imaging region, exactly
what the model sees at night, with the calibrated spacing when there is one.

`reviewed:RUNS_DIR` turns the review station's accepted reviews into such samples, so a site can
fine-tune the PPN on what its readers fixed (see `samples_from_reviews`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.ingest import UsInstance, ingest, iter_frames, read_instance
from pipeline.review.corrections import corrections_dir, read_corrections
from pipeline.review.worklist import list_runs, load_run
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
            samples.extend(_frame_samples(inst, read_seg_masks(seg_path, sop)))
            used.add(sop)
    if not samples:
        raise ValueError("no source instance is referenced by any reference SEG given")
    log.info("dicom training data: %d frames from %d instances (%d instances without a reference SEG)",
             len(samples), len(used), len(instances) - len(used))
    return samples


def _frame_samples(inst: UsInstance, masks: np.ndarray, drawn_only: bool = False,
                   prefix: str = "") -> list[Sample]:
    """One Sample per source frame from masks (frames, rows, cols, segments) on the full frame; the image
    and mask cropped to the imaging region (the model's input). `drawn_only` keeps frames with a mask."""
    labels = np.zeros(masks.shape[:3], np.uint8)
    for k in range(masks.shape[3]):
        labels[masks[..., k]] = k + 1
    cal = inst.calibration
    spacing = (cal.row_spacing_mm, cal.column_spacing_mm) if cal.is_calibrated else None
    samples = []
    for frame in iter_frames(inst):
        label = labels[frame.frame_number - 1]
        if drawn_only and not label.any():
            continue
        crop = frame.crop_bounds.slices()
        mask = label[crop] if masks.shape[3] > 1 else label[crop] > 0
        samples.append(Sample(frame.model_input, mask, spacing, f"{prefix}{inst.sop_uid}-f{frame.frame_number}"))
    return samples


def samples_from_reviews(runs_dir: str | Path) -> list[Sample]:
    """The accepted reviews of every run under runs_dir: the reviewed SEG's masks on their source frames.

    Read from each run's correction table (`<run>/review/review_corrections`, accepted rows only), the
    reviewed SEG the station kept (`<run>/review/segs/<study>/<SEG UID>.dcm`) and the source file the
    run's nightly table names. Rejected and undecided instances are left out; an instance accepted in
    several runs counts once (the latest decision). A semi review covers every frame (the reader accepted
    the untouched ones as the AI drew them); a manual review (from scratch) only the frames the reader
    drew, since an undrawn frame is empty for lack of time, not for lack of bone. Names are
    `<SOP Instance UID>-f<frame>`: UIDs only.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise ValueError(f"reviewed: {root} is not a folder of nightly runs")
    latest: dict[str, tuple[tuple[str, str], dict, Path]] = {}
    for run_name in list_runs(root):
        table = read_corrections(root / run_name)
        for row in table[(table.outcome == "accepted") & table.seg_sop_uid.notna()].to_dict("records"):
            key = (str(row.get("decided_at") or ""), run_name)
            if row["sop_uid"] not in latest or key > latest[row["sop_uid"]][0]:
                latest[row["sop_uid"]] = (key, row, root / run_name)
    samples: list[Sample] = []
    missing = 0
    source_paths: dict[Path, dict[str, str]] = {}
    for sop, (_, row, run_dir) in sorted(latest.items()):
        seg_path = corrections_dir(run_dir) / "segs" / str(row["study_uid"]) / f"{row['seg_sop_uid']}.dcm"
        if run_dir not in source_paths:
            source_paths[run_dir] = {i.sop_uid: i.source_path for i in load_run(run_dir).items}
        sources = source_paths[run_dir]
        inst = read_instance(sources[sop]) if sources.get(sop) else None
        if not seg_path.is_file() or not isinstance(inst, UsInstance) or inst.sop_uid != sop:
            missing += 1
            log.warning("reviewed data: instance %s left out (its reviewed SEG or source file is gone)", sop)
            continue
        samples.extend(_frame_samples(inst, read_seg_masks(seg_path, sop), drawn_only=row.get("mode") == "manual"))
    if not samples:
        raise ValueError(f"reviewed: no accepted review with a readable SEG and source under {root}")
    log.info("reviewed training data: %d frames from %d accepted reviews (%d left out)", len(samples),
             len(latest) - missing, missing)
    return samples


def load_data_spec(spec: str) -> tuple[list[Sample], str]:
    """A training/evaluation data spec -> (samples, description).

    `dicom:IMAGES_DIR:REFERENCE_SEG_DIR` pairs archive images with reference SEGs and
    `reviewed:RUNS_DIR` takes the review station's accepted reviews (this module);
    every other form (synthetic:N, PNG folders, NPZ files) is `sam2rad.data.specs.load_spec`'s.
    """
    if spec.startswith("reviewed:"):
        runs_dir = spec[len("reviewed:"):]
        if not runs_dir:
            raise ValueError(f"bad reviewed spec {spec!r}; use reviewed:RUNS_DIR")
        return samples_from_reviews(runs_dir), f"accepted reviews under {runs_dir}"
    if not spec.startswith("dicom:"):
        return load_spec(spec)
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"bad dicom spec {spec!r}; use dicom:IMAGES_DIR:REFERENCE_SEG_DIR")
    return samples_from_dicom([parts[1]], [parts[2]]), f"DICOM {parts[1]} + SEG {parts[2]}"
