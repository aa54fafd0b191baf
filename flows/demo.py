"""The embedded demo: bundled demo studies -> nightly flow -> Dice audit, all in Prefect's local mode
(no server to run, no GPU, no network)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary server migrates its database on first start: slow on 2 cores, so wait longer.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


@dataclass
class DemoResult:
    root: Path
    nightly: dict
    audit: dict


def run_demo(root: str | os.PathLike[str] = "demo-output", fresh: bool = True) -> DemoResult:
    from flows.audit import audit
    from flows.nightly import nightly
    from pipeline.demo_data import reset, write_demo_archive

    root = Path(root).resolve()
    if fresh:
        reset(root)
    archive = write_demo_archive(root)
    print(f"demo archive: {len(archive.files)} instances dated {archive.study_date} in {archive.inbox}")
    date = f"{archive.study_date[:4]}-{archive.study_date[4:6]}-{archive.study_date[6:]}"
    night = nightly(inbox=str(archive.inbox), outbox=str(root / "outbox"), start_date=date, end_date=date,
                    output_dir=str(root / "runs"))
    report = audit(seg_dir=str(root / "outbox"), reference_dir=str(archive.references),
                   output_dir=night["run_dir"], source_dir=str(archive.inbox))
    return DemoResult(root, night, report)
