"""One instance through the model: decode -> crop to the imaging region -> predict -> uncrop -> SEG.

The model is anything with Sam2Rad's public `predict(images, mode)` API; this module never
reaches into model internals and never imports prefect.
"""
from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from pipeline.ingest import UsFrame, UsInstance, iter_frames
from pipeline.run_tables import InstanceMetrics, PredictedBox
from pipeline.seg import SegAlgorithm, SegWriter, WrittenSeg

log = logging.getLogger(__name__)


class PredictionLike(Protocol):
    masks: np.ndarray  # (C, H, W) bool
    boxes: np.ndarray  # (C, 4)
    scores: np.ndarray  # (C,)


class SegmentationModel(Protocol):
    class_names: tuple[str, ...]

    def predict(self, images: Sequence[np.ndarray], mode: str = "auto") -> list[PredictionLike]: ...


@dataclass
class InstanceOutcome:
    row: InstanceMetrics
    seg: WrittenSeg | None
    n_frames: int


def seg_algorithm_for(model, mode: str = "auto", name: str = "Sam2Rad") -> SegAlgorithm:
    """The SEG's algorithm identity, from the loaded checkpoint (its card and sha256)."""
    from sam2rad.checkpoint import describe

    info = describe(model)
    sha = info["checkpoint_sha256"]
    if len(sha) != 64:
        raise ValueError("the model has no checkpoint sha256: load it with sam2rad.checkpoint.load_checkpoint")
    from sam2rad import __version__

    # The model's version, not the code's git revision: a deploy must not re-segment the archive.
    return SegAlgorithm(name=name, version=__version__, backbone_fingerprint=info["backbone_fingerprint"],
                     checkpoint_sha256=sha, mode=mode, class_names=tuple(info["class_names"]))


BatchGuard = Callable[[], AbstractContextManager]


class InstancePrediction:
    """One instance's masks on the full frame, filled batch by batch (frames may arrive in batches shared
    with other instances), with the first finite box and every score."""

    def __init__(self, instance: UsInstance, n_classes: int, confidence_floor: float | None = None) -> None:
        self.masks = np.zeros((instance.n_frames, instance.rows, instance.cols, n_classes), dtype=bool)
        self.scores: list[float] = []
        self.first_box: PredictedBox | None = None
        self.confidence_floor = confidence_floor  # the model's, recorded beside the confidence

    def add(self, frame: UsFrame, pred: PredictionLike) -> None:
        for k in range(self.masks.shape[-1]):
            self.masks[frame.frame_number - 1, :, :, k] = frame.mask_to_full_frame(pred.masks[k])
        self.scores.extend(float(s) for s in pred.scores)
        if self.first_box is None and np.isfinite(pred.boxes[0]).all():
            b = frame.crop_bounds  # boxes come back in crop pixels; shift to the full frame
            x0, y0, x1, y1 = (float(v) for v in pred.boxes[0])
            self.first_box = PredictedBox(x0 + b.min_x0, y0 + b.min_y0, x1 + b.min_x0, y1 + b.min_y0)

    @property
    def confidence(self) -> float | None:
        return float(np.mean(self.scores)) if self.scores else None


def model_confidence_floor(model: object) -> float | None:
    """The score under which this model's masks need a reader: the lowest it gave its own training images
    (sam2rad/confidence.py); None for models without that reference (the worklist's fixed threshold applies)."""
    reference = getattr(model, "confidence_reference", None)
    return None if reference is None else float(reference.floor)


def predict_instance(instance: UsInstance, model: SegmentationModel, mode: str = "auto", batch_size: int = 4,
                     batch_guard: BatchGuard = nullcontext) -> tuple[np.ndarray, PredictedBox | None, float | None]:
    """Masks (frames, rows, cols, classes) on the full frame, the first frame's box and the mean confidence.

    `batch_guard` wraps each model call (the orchestrator passes its GPU concurrency slot here).
    """
    prediction = InstancePrediction(instance, len(model.class_names))
    batch: list[UsFrame] = []

    def flush() -> None:
        with batch_guard():
            preds = model.predict([f.model_input for f in batch], mode)
        for frame, pred in zip(batch, preds):
            prediction.add(frame, pred)
        batch.clear()

    for frame in iter_frames(instance):
        batch.append(frame)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return prediction.masks, prediction.first_box, prediction.confidence


def segment_instance(instance: UsInstance, model: SegmentationModel, writer: SegWriter, out_dir: str | Path,
                     mode: str = "auto", batch_size: int = 4, dry_run: bool = False,
                     batch_guard: BatchGuard = nullcontext) -> InstanceOutcome:
    """Segment one instance and write its SEG; failures become a row, never an exception."""
    start = time.perf_counter()
    try:
        masks, box, confidence = predict_instance(instance, model, mode, batch_size, batch_guard)
    except (MemoryError, TimeoutError):
        # Not a property of this instance (out of memory, no GPU slot in time): the orchestrator decides.
        raise
    except Exception as exc:  # noqa: BLE001 - one bad instance must not stop the batch
        return failed_instance(instance, exc, writer, start)
    return write_instance(instance, masks, box, confidence, writer, out_dir, dry_run, start,
                          confidence_floor=model_confidence_floor(model))


def write_instance(instance: UsInstance, masks: np.ndarray, box: PredictedBox | None, confidence: float | None,
                   writer: SegWriter, out_dir: str | Path, dry_run: bool, start: float,
                   confidence_floor: float | None = None) -> InstanceOutcome:
    """An instance's SEG (none in a dry run) and its row; `start` is when its work began (perf_counter).
    A failure to write becomes a row, never an exception."""
    try:
        seg = None if dry_run else writer.write(instance, masks, out_dir)
        row = InstanceMetrics.for_result(instance, masks, writer.algorithm, time.perf_counter() - start,
                                         box=box, confidence=confidence, confidence_floor=confidence_floor, seg=seg)
        return InstanceOutcome(row, seg, instance.n_frames)
    except (MemoryError, TimeoutError):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad instance must not stop the batch
        return failed_instance(instance, exc, writer, start)


def failed_instance(instance: UsInstance, exc: BaseException, writer: SegWriter, start: float) -> InstanceOutcome:
    """The row of an instance that failed (decode, prediction, SEG writing); UIDs only in the log."""
    row = InstanceMetrics.for_failure(instance, exc, writer.algorithm, time.perf_counter() - start)
    log.warning("instance %s failed: %s", instance.sop_uid, row.error)  # redacted: no patient values
    return InstanceOutcome(row, None, instance.n_frames)
