"""The embedded demo: bundled demo studies -> nightly flow -> Dice audit, all in Prefect's local mode
(no server to run, no GPU, no network).

`archive` writes the demo archive; `us_dicom` builds its synthetic ultrasound DICOM (the tests use it too).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flows.runtime import apply_prefect_defaults


@dataclass
class DemoResult:
    root: Path
    nightly: dict
    audit: dict


def run_demo(root: str | os.PathLike[str] = "demo-output", fresh: bool = True) -> DemoResult:
    apply_prefect_defaults()  # before Prefect is imported: its settings are read once
    from flows.audit import audit
    from flows.demo.archive import reset, write_demo_archive
    from flows.nightly import nightly

    root = Path(root).resolve()
    if fresh:
        reset(root)
    archive = write_demo_archive(root)
    print(f"demo archive: {len(archive.files)} instances dated {archive.study_date} in {archive.inbox}")
    date = f"{archive.study_date[:4]}-{archive.study_date[4:6]}-{archive.study_date[6:]}"
    from flows.runtime import local_run_settings

    with local_run_settings():
        night = nightly(inbox=str(archive.inbox), outbox=str(root / "outbox"), start_date=date, end_date=date,
                        output_dir=str(root / "runs"))
    report = audit(seg_dir=str(root / "outbox"), reference_dir=str(archive.references),
                   output_dir=night["run_dir"], source_dir=str(archive.inbox))
    return DemoResult(root, night, report)
