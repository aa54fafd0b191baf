"""Training samples from archive DICOM + reference SEGs (issue 3, dataset source 3)."""
from __future__ import annotations

import numpy as np
import pytest

from flows.demo.archive import write_demo_archive
from pipeline.ingest import ingest
from pipeline.seg import SegAlgorithm, SegWriter
from pipeline.training_data import samples_from_dicom


def test_reference_segs_become_cropped_samples(tmp_path):
    archive = write_demo_archive(tmp_path, n_synthetic_studies=2, images_per_study=1, cine_frames=2,
                                 size=(160, 150), include_pydicom_examples=False)
    writer = SegWriter(SegAlgorithm("reference", "1", "labeller", "0" * 64, "manual", ("bone",)))
    truth = {}
    for inst in ingest([archive.inbox]).instances:
        ref = np.load(archive.references / f"{inst.sop_uid}.npz")["mask"]
        writer.write(inst, ref, tmp_path / "refsegs")
        bounds = inst.calibration.crop_bounds(inst.rows, inst.cols)
        truth[inst.sop_uid] = (ref, bounds, inst.calibration.row_spacing_mm)
    samples = samples_from_dicom([archive.inbox], [tmp_path / "refsegs"])
    assert len(samples) == 2 + 2  # two single frames, a two-frame cine
    for s in samples:
        sop, frame = s.name.rsplit("-f", 1)
        ref, bounds, spacing = truth[sop]
        assert np.array_equal(s.mask, ref[int(frame) - 1][bounds.slices()])
        assert s.image.shape == s.mask.shape and s.spacing_mm[0] == pytest.approx(spacing)
    with pytest.raises(ValueError, match="no source instance"):
        samples_from_dicom([archive.inbox], [tmp_path / "inbox" / "synthetic-0"])
