"""The report's worst cases: the lowest-Dice instances, each at its worst frame, with the source image."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.audit.comparison import ComparedPair
from pipeline.audit.rows import AuditFrameRow, AuditInstanceRow, ComparisonStatus
from pipeline.decode import iter_grey_frames, suppress_dicom_warnings
from pipeline.ingest import UsInstance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverlayCase:
    """One frame of one of the worst instances: what the report draws."""

    study_uid: str | None
    source_sop_uid: str
    seg_sop_uid: str
    frame_number: int
    class_label: str
    dice: float  # the instance's mean Dice
    frame_dice: float
    reference: np.ndarray  # (rows, cols) bool
    prediction: np.ndarray  # (rows, cols) bool
    image: np.ndarray | None  # (rows, cols) uint8 grey source frame, None without source_dir
    # The imaging region (row0, row1, col0, col1; ends exclusive): pixels outside it are blanked in
    # the image, since burned-in text (patient name, ID) sits there on many scanners.
    region: tuple[int, int, int, int] | None = None


def _decode_frame(instance: UsInstance, frame_number: int) -> np.ndarray | None:
    try:
        with suppress_dicom_warnings():
            frames = list(iter_grey_frames(instance.pixel_source(), instance.header, [frame_number - 1]))
    except Exception as exc:  # noqa: BLE001 - an overlay without its image is still an overlay
        log.warning("audit: could not decode frame %d of %s for the report: %s", frame_number,
                    instance.sop_uid, type(exc).__name__)
        return None
    return frames[0] if frames else None


def worst_cases(instances: Sequence[AuditInstanceRow], frames: Sequence[AuditFrameRow],
                load: Callable[[AuditInstanceRow], ComparedPair], sources: dict[str, UsInstance],
                n: int, show_images: bool = True) -> list[OverlayCase]:
    """The n compared instances with the lowest Dice, each at its worst frame and class; with the
    source frame when the source is known and show_images is on."""
    ok = sorted((r for r in instances if r.status == ComparisonStatus.OK and r.dice is not None),
                key=lambda r: (r.dice, r.source_sop_uid))
    cases = []
    for row in ok[: max(n, 0)]:
        try:
            pair = load(row)
        except Exception as exc:  # noqa: BLE001
            log.warning("audit: could not reload %s for the report: %s", row.source_sop_uid, type(exc).__name__)
            continue
        f = pair.frame_numbers.index(int(row.worst_frame))  # type: ignore[arg-type]
        c = pair.class_labels.index(str(row.worst_class))
        frame_dice = next((fr.dice for fr in frames if fr.source_sop_uid == row.source_sop_uid
                           and fr.seg_sop_uid == row.seg_sop_uid and fr.frame_number == row.worst_frame
                           and fr.class_index == c), float(row.min_frame_dice or 0.0))
        source = sources.get(row.source_sop_uid) if show_images else None
        image = _decode_frame(source, int(row.worst_frame)) if source is not None else None  # type: ignore[arg-type]
        region = None
        if image is not None and image.shape != pair.ref.shape[1:3]:
            image = None
        if image is not None and source is not None and source.calibration.region is not None:
            bounds = source.calibration.region.clipped(*image.shape)
            if bounds is not None:
                region = (bounds.min_y0, bounds.max_y1 + 1, bounds.min_x0, bounds.max_x1 + 1)
                blanked = np.zeros_like(image)
                blanked[bounds.slices()] = image[bounds.slices()]
                image = blanked
        cases.append(OverlayCase(row.study_uid, row.source_sop_uid, str(row.seg_sop_uid), int(row.worst_frame),  # type: ignore[arg-type]
                                 str(row.worst_class), float(row.dice), float(frame_dice),
                                 pair.ref[f, :, :, c].copy(), pair.pred[f, :, :, c].copy(), image, region))
    return cases
