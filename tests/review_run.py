"""A small nightly run made from the demo archive, built once per test process and copied per test module.

Synthetic demo studies only (single frames and a short cine, with reference labels), segmented by the
shipped demo checkpoint through the same steps as the nightly flow (process_study, InstanceRecorder,
run tables, Dice audit) without Prefect, so the review tests cost seconds, not the demo's minutes.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

RUN_ID = "nightly-20260101-20260101-review"


@dataclass(frozen=True)
class ReviewRun:
    root: Path
    runs_dir: Path
    run_dir: Path
    inbox: Path
    outbox: Path  # the folder sink (the "PACS")
    store_outbox: Path  # SEGs waiting for a store
    references: Path

    def reference(self, sop_uid: str) -> np.ndarray:
        with np.load(self.references / f"{sop_uid}.npz") as npz:
            return np.asarray(npz["mask"]) != 0


@lru_cache(maxsize=1)
def demo_model():
    from sam2rad.checkpoint import load_checkpoint

    return load_checkpoint()


@lru_cache(maxsize=1)
def _built_run() -> Path:
    from flows.demo.archive import write_demo_archive
    from pipeline.audit.run import run_audit
    from pipeline.inference import seg_algorithm_for
    from pipeline.ledger import Ledger
    from pipeline.pacs import Outbox, PacsSettings, open_archive
    from pipeline.run_tables import write_tables
    from pipeline.seg import SegWriter
    from pipeline.studies import parse_window
    from pipeline.study_processing import InstanceRecorder, process_study

    root = Path(tempfile.mkdtemp(prefix="sam2rad-review-run-"))
    archive = write_demo_archive(root, n_synthetic_studies=3, cine_frames=3, include_pydicom_examples=False)
    date = archive.study_date
    settings = PacsSettings(kind="folder", inbox=archive.inbox, outbox=root / "outbox")
    source = open_archive(settings)
    model = demo_model()
    algorithm = seg_algorithm_for(model, "auto")
    run_dir = root / "runs" / RUN_ID
    ledger = Ledger(root / "runs" / "ledger.sqlite")
    rows = []
    for ref in source.discover(parse_window(date, date)):
        recorder = InstanceRecorder(ledger, algorithm.fingerprint, ref.study_uid, source, Outbox(root / "store-outbox"))
        seg_dir = run_dir / "segs" / ref.study_uid
        seg_dir.mkdir(parents=True, exist_ok=True)
        fetched = source.fetch(ref, root / "staging")
        outcome = process_study(fetched, model, SegWriter(algorithm), seg_dir, is_done=recorder.is_done,
                                on_result=recorder.record)
        rows.extend(outcome.rows)
    write_tables(rows, run_dir, "nightly")
    run_audit(root / "outbox", archive.references, run_dir / "audit")
    shutil.rmtree(root / "staging", ignore_errors=True)
    return root


def copy_review_run(dest: Path) -> ReviewRun:
    """A private copy of the built run (its ledger, sink and tables), so tests do not see each other's reviews."""
    root = Path(shutil.copytree(_built_run(), dest / "demo", symlinks=True))
    return ReviewRun(root=root, runs_dir=root / "runs", run_dir=root / "runs" / RUN_ID, inbox=root / "inbox",
                     outbox=root / "outbox", store_outbox=root / "store-outbox", references=root / "references")


def review_station(run: ReviewRun, **kwargs):
    from pipeline.pacs import Outbox, PacsSettings, open_archive
    from pipeline.review import ReviewStation

    sink = open_archive(PacsSettings(kind="folder", inbox=run.inbox, outbox=run.outbox))
    return ReviewStation(run.runs_dir, demo_model(), sink, Outbox(run.store_outbox), **kwargs)


def missed_and_false_pixels(mask: np.ndarray, reference: np.ndarray) -> tuple[tuple[int, int] | None,
                                                                                tuple[int, int] | None]:
    """(x, y) deep inside the largest missed region (reference but not mask) and the largest false
    region (mask but not reference), by distance to the region's border; None where there is none."""
    from scipy import ndimage

    def deepest(region: np.ndarray) -> tuple[int, int] | None:
        if not region.any():
            return None
        labels, n = ndimage.label(region)
        sizes = ndimage.sum(region, labels, range(1, n + 1))
        biggest = labels == (int(np.argmax(sizes)) + 1)
        depth = ndimage.distance_transform_edt(biggest)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return int(x), int(y)

    return deepest(reference & ~mask), deepest(mask & ~reference)
