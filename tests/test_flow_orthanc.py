"""Issue 5 acceptance through the whole pipeline: the nightly flow against a real Orthanc.

Discover by date and modality (C-FIND / QIDO), retrieve (C-GET / WADO-RS), segment with the shipped
model, store SEGs (C-STORE / STOW-RS); then one SEG per source instance is found in its study and a
re-run stores nothing new. An outage at store time leaves SEGs in the outbox, and the next run
delivers each exactly once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from flows.demo.archive import write_demo_archive
from pipeline.ingest import ingest
from pipeline.ledger import Ledger
from pipeline.pacs import ENV as PACS_ENV
from pipeline.pacs import PacsSettings, open_archive
from tests.orthanc import orthanc_server  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-02-03"


def _env(settings: PacsSettings, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM2RAD_")}
    for name, var in PACS_ENV.items():
        if name == "store_outbox":  # let the flow keep it beside its run folders (tmp)
            continue
        value = getattr(settings, name)
        if value is not None and value != "":
            env[var] = str(value).lower() if isinstance(value, bool) else str(value)
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",
       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "PREFECT_HOME": str(tmp / "prefect"),
            "OMP_NUM_THREADS": "2"}
    return env


def run_nightly(env: dict[str, str], tmp: Path, **params) -> dict:
    script = ("import json, sys\nfrom flows.nightly import nightly\n"
              f"s = nightly(start_date={DAY!r}, output_dir={str(tmp / 'runs')!r}, **json.loads(sys.argv[1]))\n"
              "print('SUMMARY', json.dumps(s))\n")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(params)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return json.loads(out.stdout.split("SUMMARY ", 1)[1].splitlines()[0])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs-demo")
    date = __import__("datetime").date.fromisoformat(DAY)
    archive = write_demo_archive(root, study_date=date, n_synthetic_studies=2, images_per_study=1,
                                 cine_frames=3, size=(200, 200), include_pydicom_examples=False)
    instances = ingest([archive.inbox]).instances
    return archive, {i.sop_uid: i.study_uid for i in instances}



@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_nightly_flow_against_orthanc(orthanc_server, demo, kind, tmp_path):  # noqa: F811
    archive_files, sources = demo
    orthanc_server.clear()
    for path in archive_files.files:
        orthanc_server.upload(path)
    settings = orthanc_server.settings(kind)
    env = _env(settings, tmp_path)
    first = run_nightly(env, tmp_path, source_kind=kind)
    assert first["failed"] == 0 and first["succeeded"] == len(sources) and first["stored"] == len(sources)
    pacs = open_archive(settings)
    written = {}
    for path in first["seg_files"]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        referenced = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        assert ds.StudyInstanceUID == sources[referenced]
        written[str(ds.SOPInstanceUID)] = referenced
    assert sorted(written.values()) == sorted(sources)  # one SEG per source instance
    for study in set(sources.values()):
        in_pacs = {ref.sop_uid for ref in pacs.list_instances(study, modality="SEG")}
        assert in_pacs == {seg for seg, src in written.items() if sources[src] == study}
    total = orthanc_server.instance_count()
    assert total == 2 * len(sources)
    second = run_nightly(env, tmp_path, source_kind=kind)
    assert second["stored"] == 0 and second["succeeded"] == 0
    assert orthanc_server.instance_count() == total  # nothing stored twice


def test_store_outage_keeps_segs_then_delivers_once(orthanc_server, demo, tmp_path):  # noqa: F811
    """Source: the folder inbox; sink: Orthanc over DIMSE, down for the first night."""
    archive_files, sources = demo
    orthanc_server.clear()
    settings = orthanc_server.settings("dimse", inbox=archive_files.inbox)
    env = _env(settings, tmp_path)
    orthanc_server.stop()
    try:
        down = run_nightly(env, tmp_path, source_kind="folder", sink_kind="dimse")
    finally:
        orthanc_server.start()
    assert down["succeeded"] == len(sources) and down["stored"] == 0
    assert down["kept_in_outbox"] == len(sources)
    outbox = tmp_path / "runs" / "store-outbox"
    assert len(list(outbox.rglob("*.dcm"))) == len(sources)
    ledger = Ledger(tmp_path / "runs" / "ledger.sqlite")
    pending = ledger.pending_store()
    assert len(pending) == len(sources) and all(e.last_error for e in pending)
    assert orthanc_server.instance_count() == 0

    up = run_nightly(env, tmp_path, source_kind="folder", sink_kind="dimse")
    assert up["drained"] == len(sources) and up["stored"] == 0 and up["succeeded"] == 0
    assert not list(outbox.rglob("*.dcm"))
    assert orthanc_server.instance_count() == len(sources)  # every SEG arrived, none twice
    pacs = open_archive(settings)
    for study in set(sources.values()):
        assert len(pacs.list_instances(study, modality="SEG")) == sum(1 for s in sources.values() if s == study)
    assert not ledger.pending_store() and ledger.counts()["done"] == len(sources)
