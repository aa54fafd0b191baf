"""Issue 6 acceptance: the README's main command end to end, idempotent re-runs, and a corrupt
instance inside a study. Prefect runs in local mode (a temporary server, as on a laptop)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from flows.demo.archive import demo_uid, synthetic_us_dataset, write_demo_archive
from sam2rad.data.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
SAM2RAD = Path(sys.executable).parent / "sam2rad"
DCIODVFY = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "OMP_NUM_THREADS": "2"}


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """`sam2rad demo` twice: fresh, then --keep (same archive and ledger)."""
    root = tmp_path_factory.mktemp("demo")
    home = tmp_path_factory.mktemp("prefect-home")
    env = ENV | {"PREFECT_HOME": str(home)}
    first = subprocess.run([str(SAM2RAD), "demo", "--output", str(root)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = subprocess.run([str(SAM2RAD), "demo", "--output", str(root), "--keep"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return root, first.stdout, second.stdout


def test_demo_writes_valid_segs_tables_and_audit(demo_runs):
    root, out, _ = demo_runs
    inbox = sorted((root / "inbox").rglob("*.dcm"))
    segs = sorted((root / "outbox").rglob("*.dcm"))
    assert len(inbox) == 12 and len(segs) == len(inbox)  # one SEG per demo instance, cine included
    for seg in segs:
        assert dciodvfy_errors(seg) == [], seg
        ds = pydicom.dcmread(seg, stop_before_pixels=True)
        assert ds.Modality == "SEG"
    run_dir = Path(re.search(r"instances_csv\s+(\S+)", out).group(1)).parent
    table = pd.read_csv(run_dir / "nightly_instances.csv")
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in inbox}
    assert len(table) == len(inbox) and set(table.sop_uid) == sources
    assert (table.status == "ok").all()
    studies = pd.read_csv(run_dir / "nightly_studies.csv")
    assert len(studies) == len({pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in inbox})
    audit = pd.read_csv(run_dir / "audit" / "audit_instances.csv")
    refs = {p.stem for p in (root / "references").glob("*.npz")}
    matched = audit[audit.status == "ok"]
    assert set(matched.source_sop_uid) == refs  # every synthetic instance audited against its label
    assert (matched.unit == "mm").all()
    assert matched.dice.mean() > 0.5, matched.dice.describe()
    assert (run_dir / "audit" / "audit_report.html").stat().st_size > 10_000


def test_second_demo_run_stores_nothing_new(demo_runs):
    root, _, second = demo_runs
    assert "0 SEGs stored new" in second
    assert "nothing new to store" in second
    assert len(list((root / "outbox").rglob("*.dcm"))) == 12


def _study_with_corrupt_instance(inbox: Path, date: str) -> tuple[str, str]:
    study, series = demo_uid("corrupt-study"), demo_uid("corrupt-series")
    good = []
    for i in range(2):
        s = generate(31_000 + i, (160, 160), anatomy="wrist", text=False)
        sop = demo_uid("corrupt-good", i)
        ds = synthetic_us_dataset(s.image[None], s, study, series, sop, "SYNBAD", date, i + 1, False)
        ds.save_as(inbox / f"good{i}.dcm", enforce_file_format=True)
        good.append(sop)
    bad = synthetic_us_dataset(s.image[None], s, study, series, demo_uid("corrupt-bad"), "SYNBAD", date, 3, False)
    bad.save_as(inbox / "bad.dcm", enforce_file_format=True)
    data = (inbox / "bad.dcm").read_bytes()
    (inbox / "bad.dcm").write_bytes(data[: len(data) - 9000])  # pixel data cut short
    return study, str(bad.SOPInstanceUID)


def test_corrupt_instance_fails_alone(tmp_path):
    """A study with one truncated instance: the flow completes, the others get SEGs, the failure is in
    the table and in the artifact (read back through the Prefect API)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    study, bad_sop = _study_with_corrupt_instance(inbox, "20260301")
    script = f"""
import asyncio, json
from prefect.client.orchestration import get_client
from flows.nightly import nightly, SUMMARY_ARTIFACT
s = nightly(inbox={str(inbox)!r}, outbox={str(tmp_path / 'outbox')!r}, start_date="2026-03-01",
            output_dir={str(tmp_path / 'runs')!r})
async def art():
    async with get_client() as c:
        a = await c.read_latest_artifacts()
        return [x.data for x in a if x.key == SUMMARY_ARTIFACT]
print("SUMMARY", json.dumps({{k: s[k] for k in ("succeeded", "failed", "failures", "run_dir")}}))
print("ARTIFACT", json.dumps(asyncio.run(art())))
"""
    env = ENV | {"PREFECT_HOME": str(tmp_path / "prefect")}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import json

    summary = json.loads(out.stdout.split("SUMMARY ", 1)[1].splitlines()[0])
    artifact = json.loads(out.stdout.split("ARTIFACT ", 1)[1].splitlines()[0])
    assert summary["succeeded"] == 2 and summary["failed"] == 1
    assert summary["failures"][0]["sop_uid"] == bad_sop
    assert len(list((tmp_path / "outbox").rglob("*.dcm"))) == 2
    table = pd.read_csv(Path(summary["run_dir"]) / "nightly_instances.csv")
    bad_row = table[table.sop_uid == bad_sop].iloc[0]
    assert bad_row.status == "failed" and isinstance(bad_row.error, str) and bad_row.error
    assert artifact and bad_sop in artifact[0] and "Failures" in artifact[0]


def test_window_parsing_and_bad_parameters():
    from pipeline.studies import parse_window

    w = parse_window("2026-01-02", None)
    assert w.dicom_range() == "20260102-20260102"
    assert parse_window("20260101", "2026-01-31").dicom_range() == "20260101-20260131"
    with pytest.raises(ValueError, match="bad date"):
        parse_window("02/01/2026", None)
    with pytest.raises(ValueError, match="ends"):
        parse_window("2026-02-01", "2026-01-01")


def test_finished_study_is_skipped_from_cache_on_later_nights(tmp_path):
    """Night 1 segments; night 2 finds everything done in the ledger (stores nothing); night 3 skips
    the study from Prefect's cache (key: study UID + model fingerprint + code version)."""
    archive = write_demo_archive(tmp_path, n_synthetic_studies=1, images_per_study=1, cine_frames=0,
                                 size=(160, 160), include_pydicom_examples=False)
    date = f"{archive.study_date[:4]}-{archive.study_date[4:6]}-{archive.study_date[6:]}"
    script = f"""
import json
from flows.nightly import nightly
for night in range(3):
    s = nightly(inbox={str(archive.inbox)!r}, outbox={str(tmp_path / 'outbox')!r}, start_date={date!r},
                output_dir={str(tmp_path / 'runs')!r})
    print("NIGHT", json.dumps({{k: s[k] for k in ("succeeded", "stored", "already_done", "studies_from_cache")}}))
"""
    env = ENV | {"PREFECT_HOME": str(tmp_path / "prefect")}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    import json

    nights = [json.loads(line.split("NIGHT ", 1)[1]) for line in out.stdout.splitlines() if line.startswith("NIGHT ")]
    assert nights[0] == {"succeeded": 1, "stored": 1, "already_done": 0, "studies_from_cache": 0}
    assert nights[1] == {"succeeded": 0, "stored": 0, "already_done": 1, "studies_from_cache": 0}
    assert nights[2]["studies_from_cache"] == 1 and nights[2]["stored"] == 0
    assert len(list((tmp_path / "outbox").rglob("*.dcm"))) == 1
