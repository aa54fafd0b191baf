"""The embedded folder archive (inbox in, outbox out) and the archive settings."""
from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from pipeline.pacs import (
    ENV,
    Archive,
    DicomWebArchive,
    DimseArchive,
    FolderArchive,
    PacsConfigError,
    PacsSettings,
    RetryPolicy,
    StudyFilters,
    open_archive,
)
from pipeline.studies import StudyRef
from tests.orthanc import DEMO_WINDOW, build_test_seg, write_demo_studies


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    inbox = tmp_path_factory.mktemp("inbox")
    instances = write_demo_studies(inbox / "nested")
    (inbox / "README.txt").write_text("not DICOM")  # must be ignored
    (inbox / "nested" / "broken.dcm").write_bytes(b"DICM" * 10)
    return inbox, instances


def by_key(instances, key):
    return [i for i in instances if i.path.name.startswith(f"{key}_")]


def test_discover_groups_by_study_and_filters_window_and_modality(demo, tmp_path):
    inbox, instances = demo
    archive = FolderArchive(inbox, tmp_path / "out")
    studies = archive.discover(DEMO_WINDOW)
    a, b = by_key(instances, "A"), by_key(instances, "B")
    assert [s.study_uid for s in studies] == [a[0].study_uid, b[0].study_uid]  # C after, D is CT
    assert studies[0] == StudyRef(a[0].study_uid, "20260105", ("US",), 2)
    assert studies[1].n_instances == 2
    ct = archive.discover(DEMO_WINDOW, StudyFilters(modalities=("CT",)))
    assert [s.study_uid for s in ct] == [by_key(instances, "D")[0].study_uid]


def test_fetch_writes_the_study_instances_only(demo, tmp_path):
    inbox, instances = demo
    archive = FolderArchive(inbox, tmp_path / "out")
    study = archive.discover(DEMO_WINDOW)[0]
    fetched = archive.fetch(study, tmp_path / "work")
    expected = {i.sop_uid for i in by_key(instances, "A")}
    assert {p.stem for p in fetched.files} == expected
    assert all(p.parent == tmp_path / "work" / study.study_uid for p in fetched.files)
    for path in fetched.files:
        assert pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == study.study_uid
    # Without a prior discover (a fresh process), fetch finds the files itself.
    again = FolderArchive(inbox, tmp_path / "out").fetch(study, tmp_path / "work2")
    assert {p.stem for p in again.files} == expected


def test_store_is_atomic_and_keyed_by_sop_instance_uid(demo, tmp_path):
    inbox, instances = demo
    outbox = tmp_path / "out"
    archive = FolderArchive(inbox, outbox)
    source = by_key(instances, "A")[0]
    seg = build_test_seg(source.path)
    result = archive.store(seg)
    target = outbox / source.study_uid / f"{seg.SOPInstanceUID}.dcm"
    assert Path(result.destination) == target and target.exists()
    first_inode = os.stat(target).st_ino
    archive.store(seg)  # again: replaced by rename, not appended or duplicated
    assert sorted(p.name for p in (outbox / source.study_uid).iterdir()) == [target.name]  # no temp files left
    assert os.stat(target).st_ino != first_inode
    archive.store(target)  # a path works too
    segs = archive.list_instances(source.study_uid, "SEG")
    assert [s.sop_uid for s in segs] == [seg.SOPInstanceUID]
    assert {i.sop_uid for i in archive.list_instances(source.study_uid)} == \
        {i.sop_uid for i in by_key(instances, "A")} | {seg.SOPInstanceUID}


def test_check_names_the_missing_setting(tmp_path):
    with pytest.raises(PacsConfigError, match="SAM2RAD_INBOX"):
        FolderArchive(tmp_path / "missing", tmp_path / "out").check()
    with pytest.raises(PacsConfigError, match="SAM2RAD_OUTBOX"):
        FolderArchive(tmp_path, None).check()
    assert FolderArchive(tmp_path, tmp_path / "out").echo()
    assert isinstance(FolderArchive(tmp_path, tmp_path / "out"), Archive)  # the one interface


# -- settings ----------------------------------------------------------------------------------
def test_settings_from_env_and_config():
    env = {
        "SAM2RAD_PACS_KIND": "dimse", "SAM2RAD_PACS_HOST": "pacs.example", "SAM2RAD_PACS_PORT": "11112",
        "SAM2RAD_PACS_AET": "PACS", "SAM2RAD_CALLING_AET": "SAM2RAD_AI", "SAM2RAD_PACS_RETRIEVE": "move",
        "SAM2RAD_STORE_SCP_PORT": "11113", "SAM2RAD_DICOMWEB_VERIFY": "false", "SAM2RAD_STORE_ATTEMPTS": "6",
    }
    settings = PacsSettings.from_mapping({"host": "overridden", "timeout_s": 5}, env)
    assert (settings.host, settings.port, settings.called_aet, settings.calling_aet) == \
        ("pacs.example", 11112, "PACS", "SAM2RAD_AI")
    assert settings.retrieve == "move" and settings.scp_port == 11113 and settings.move_destination == "SAM2RAD_AI"
    assert settings.timeout_s == 5.0 and settings.dicomweb_verify is False
    assert settings.retry_policy() == RetryPolicy(attempts=6, initial_delay_s=2.0, max_delay_s=60.0)
    assert isinstance(open_archive(settings), DimseArchive) and isinstance(open_archive(settings), Archive)
    web = open_archive(settings.replace(kind="dicomweb", dicomweb_url="https://pacs.example/dicom-web"))
    assert isinstance(web, DicomWebArchive) and isinstance(web, Archive)
    assert "password" not in repr(settings.replace(dicomweb_password="hunter2")).replace("dicomweb_password", "")
    assert set(ENV.values()) >= {"SAM2RAD_PACS_HOST", "SAM2RAD_PACS_PORT", "SAM2RAD_PACS_AET",
                                 "SAM2RAD_CALLING_AET", "SAM2RAD_DICOMWEB_URL", "SAM2RAD_DICOMWEB_USER",
                                 "SAM2RAD_DICOMWEB_PASSWORD"}


def test_settings_errors_name_the_variable(tmp_path):
    with pytest.raises(PacsConfigError, match="SAM2RAD_PACS_PORT"):
        PacsSettings.from_env({"SAM2RAD_PACS_PORT": "eleven"})
    with pytest.raises(PacsConfigError, match="SAM2RAD_PACS_KIND"):
        PacsSettings.from_env({"SAM2RAD_PACS_KIND": "ftp"})
    with pytest.raises(PacsConfigError, match="SAM2RAD_PACS_AET"):
        PacsSettings.from_env({"SAM2RAD_PACS_AET": "A_TITLE_FAR_TOO_LONG"})
    with pytest.raises(PacsConfigError, match="SAM2RAD_PACS_HOST"):
        DimseArchive(PacsSettings.from_env({"SAM2RAD_PACS_KIND": "dimse"}))
    with pytest.raises(PacsConfigError, match="SAM2RAD_DICOMWEB_URL"):
        DicomWebArchive(PacsSettings.from_env({"SAM2RAD_PACS_KIND": "dicomweb"}))
    with pytest.raises(PacsConfigError, match="SAM2RAD_DICOMWEB_CA_BUNDLE"):
        DicomWebArchive(PacsSettings(kind="dicomweb", dicomweb_url="https://127.0.0.1:1/dicom-web",
                                     dicomweb_ca_bundle=tmp_path / "missing.pem"))
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    assert PacsSettings.from_env({"SAM2RAD_DICOMWEB_PASSWORD_FILE": str(secret)}).dicomweb_password == "from-a-file"


def test_retry_policy_delays_grow_and_cap():
    assert RetryPolicy(attempts=5, initial_delay_s=1, max_delay_s=5).delays() == [1, 2, 4, 5]
    assert RetryPolicy(attempts=1).delays() == []
    with pytest.raises(PacsConfigError, match="SAM2RAD_STORE_ATTEMPTS"):
        RetryPolicy(attempts=0)
