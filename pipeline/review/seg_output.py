"""The reviewed SEG: the nightly writer's SEG with the reader's mode, a reader-facing description and
the reader as content creator. Its algorithm card's mode ("semi" or "manual") gives it its own UIDs,
hence its own series beside the nightly SEG, with the same source references."""
from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset

from pipeline.ingest import UsInstance
from pipeline.seg import SegAlgorithm, SegWriter
from pipeline.seg.uids import SegUids

REVIEW_MODES = ("semi", "manual")


def reviewed_series_description(algorithm: SegAlgorithm) -> str:
    how = "corrected from the AI" if algorithm.mode == "semi" else "drawn from scratch"
    return f"{algorithm.name} SEG reviewed by a reader ({how})"[:64]


class ReviewedSegWriter(SegWriter):
    """SEMIAUTOMATIC for semi mode (AI prompts plus the reader's), MANUAL for manual (reader only)."""

    def __init__(self, algorithm: SegAlgorithm, reader: str, **kwargs) -> None:
        if algorithm.mode not in REVIEW_MODES:
            raise ValueError(f"a reviewed SEG is semi or manual, not {algorithm.mode!r}")
        super().__init__(algorithm, **kwargs)
        self.reader = reader

    def _segment_descriptions(self) -> list[hd.seg.SegmentDescription]:
        descriptions = super()._segment_descriptions()
        if self.algorithm.mode == "manual":
            for description in descriptions:
                description.SegmentAlgorithmType = hd.seg.SegmentAlgorithmTypeValues.MANUAL.value
        return descriptions

    def _finish(self, seg: Dataset, source: UsInstance, uids: SegUids) -> None:
        super()._finish(seg, source, uids)
        seg.SeriesDescription = reviewed_series_description(self.algorithm)
        seg.ContentCreatorName = self.reader
