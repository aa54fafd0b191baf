"""Faults: unreachable PACS, wrong AE titles, wrong password, a PACS down during the store (outbox, then
drain), and the retry/backoff rules. The outage runs against a real Orthanc, stopped and restarted on
the same ports and storage."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from pipeline.ledger import Ledger, Status
from pipeline.pacs import (
    Delivery,
    DicomWebArchive,
    DimseArchive,
    Outbox,
    PacsAccessDenied,
    PacsAssociationRejected,
    PacsConfigError,
    PacsError,
    PacsOperationError,
    PacsUnreachable,
    RetryPolicy,
    StoreResult,
    deliver,
    drain,
    store_with_retry,
)
from tests.orthanc import (  # noqa: F401 - orthanc_server is a fixture
    DEMO_WINDOW,
    build_test_seg,
    find_orthanc,
    free_port,
    orthanc_server,
    write_demo_studies,
)

pytestmark = pytest.mark.timeout(120)


# -- clear errors for wrong settings (real Orthanc) --------------------------------------------
@pytest.mark.orthanc
def test_wrong_called_ae_title_is_refused_and_named(orthanc_server):
    archive = DimseArchive(orthanc_server.settings("dimse", called_aet="WRONG"))
    with pytest.raises(PacsAssociationRejected) as caught:
        archive.discover(DEMO_WINDOW)
    message = str(caught.value)
    assert f"rejected by 127.0.0.1:{orthanc_server.dicom_port}" in message
    assert "called AE title 'WRONG' unknown" in message and "SAM2RAD_PACS_AET" in message
    assert caught.value.setting == "SAM2RAD_PACS_AET" and not caught.value.retriable
    assert not archive.echo()


@pytest.mark.orthanc
def test_unknown_calling_ae_title_cannot_query(orthanc_server):
    archive = DimseArchive(orthanc_server.settings("dimse", calling_aet="STRANGER"))
    archive.check()  # C-ECHO is open to everyone (DicomAlwaysAllowEcho) ...
    with pytest.raises(PacsAccessDenied, match="'STRANGER'.*SAM2RAD_CALLING_AET"):  # ... C-FIND is not
        archive.discover(DEMO_WINDOW)


@pytest.mark.orthanc
def test_unknown_move_destination_is_named(orthanc_server):
    orthanc_server.upload(write_demo_studies(orthanc_server.workdir / "demo")[0].path)
    archive = DimseArchive(orthanc_server.settings("dimse", retrieve="move", move_aet="NOWHERE"))
    study = archive.discover(DEMO_WINDOW)[0]
    with pytest.raises(PacsError, match="'NOWHERE'.*SAM2RAD_MOVE_AET"):
        archive.fetch(study, orthanc_server.workdir / "fetched")


@pytest.mark.orthanc
def test_wrong_dicomweb_password_is_named(orthanc_server):
    archive = DicomWebArchive(orthanc_server.settings("dicomweb", dicomweb_password="not-the-password"))
    with pytest.raises(PacsAccessDenied, match="HTTP 401.*SAM2RAD_DICOMWEB_USER and SAM2RAD_DICOMWEB_PASSWORD"):
        archive.discover(DEMO_WINDOW)
    with pytest.raises(PacsAccessDenied):
        DicomWebArchive(orthanc_server.settings("dicomweb", dicomweb_user="", dicomweb_password="")).check()
    with pytest.raises(PacsConfigError, match="HTTP 404.*SAM2RAD_DICOMWEB_URL"):
        DicomWebArchive(orthanc_server.settings("dicomweb", dicomweb_url=orthanc_server.url + "/nothing")).check()


def test_unreachable_pacs_at_discovery_names_host_port_and_settings(tmp_path):
    port = free_port()  # nothing listens there
    settings = dict(host="127.0.0.1", port=port, called_aet="ORTHANC", timeout_s=5.0,
                    dicomweb_url=f"http://127.0.0.1:{port}/dicom-web")
    from pipeline.pacs import PacsSettings
    with pytest.raises(PacsUnreachable) as caught:
        DimseArchive(PacsSettings(kind="dimse", **settings)).discover(DEMO_WINDOW)
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "SAM2RAD_PACS_HOST" in message and "SAM2RAD_PACS_PORT" in message
    assert isinstance(caught.value, PacsError) and caught.value.retriable
    with pytest.raises(PacsUnreachable, match=f"127.0.0.1:{port}/dicom-web.*SAM2RAD_DICOMWEB_URL"):
        DicomWebArchive(PacsSettings(kind="dicomweb", **settings)).discover(DEMO_WINDOW)


# -- a PACS down at store time: outbox, ledger, drain (real Orthanc) ---------------------------
class CountingSink:
    def __init__(self, sink) -> None:
        self.sink = sink
        self.attempts: dict[str, int] = {}
        self.confirmed: dict[str, int] = {}

    def store(self, item):
        uid = str(item.SOPInstanceUID) if isinstance(item, Dataset) else item.stem
        self.attempts[uid] = self.attempts.get(uid, 0) + 1
        result = self.sink.store(item)
        self.confirmed[result.sop_uid] = self.confirmed.get(result.sop_uid, 0) + 1
        return result

    def list_instances(self, study_uid, modality=None):
        return self.sink.list_instances(study_uid, modality)

    def check(self):
        return self.sink.check()


@pytest.mark.orthanc
@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_outage_keeps_segs_in_outbox_then_drain_stores_each_once(orthanc_server, kind, tmp_path):
    sources = [i for i in write_demo_studies(tmp_path / "demo")
               if i.modality == "US" and i.n_frames == 1 and DEMO_WINDOW.contains(i.study_date)]
    fingerprint = f"outage-{kind}"
    segs = {s.sop_uid: build_test_seg(s.path, fingerprint) for s in sources}
    settings = orthanc_server.settings(kind, store_attempts=3, store_backoff_s=0.01, store_backoff_max_s=0.02)
    archive = DimseArchive(settings) if kind == "dimse" else DicomWebArchive(settings)
    sink = CountingSink(archive)
    outbox = Outbox(tmp_path / "store-outbox")
    slept: list[float] = []
    ledger = Ledger(tmp_path / "ledger.sqlite")

    orthanc_server.stop()
    try:
        for source in sources:
            ledger.mark_started(source.sop_uid, fingerprint, study_uid=source.study_uid)
            outcome = deliver(segs[source.sop_uid], sink, outbox, ledger=ledger, source_sop_uid=source.sop_uid,
                              fingerprint=fingerprint, policy=settings.retry_policy(), sleep=slept.append)
            assert outcome.delivery is Delivery.KEPT and "PacsUnreachable" in outcome.error
        # Every SEG is on disk, every failure in the ledger; each store was tried 3 times with backoff.
        assert {i.sop_uid for i in outbox.items()} == {seg.SOPInstanceUID for seg in segs.values()}
        assert all(n == 3 for n in sink.attempts.values()) and sink.confirmed == {}
        assert slept == [0.01, 0.02] * len(sources)
        pending = ledger.pending_store(fingerprint)
        assert {e.seg_sop_uid for e in pending} == {seg.SOPInstanceUID for seg in segs.values()}
        setting = "SAM2RAD_PACS_HOST" if kind == "dimse" else "SAM2RAD_DICOMWEB_URL"
        assert all(e.store_failures == 1 and setting in e.last_error for e in pending)

        # A drain while the PACS is still down stores nothing, loses nothing.
        report = drain(sink, outbox, ledger=ledger, policy=settings.retry_policy(), sleep=slept.append)
        assert report.stored == [] and report.remaining == len(sources) and len(report.failed) == len(sources)
        assert all(e.store_failures == 2 for e in ledger.pending_store(fingerprint))
    finally:
        orthanc_server.start()  # same ports, same storage

    report = drain(sink, outbox, ledger=ledger, policy=settings.retry_policy(), sleep=slept.append)
    assert sorted(report.stored) == sorted(seg.SOPInstanceUID for seg in segs.values())
    assert report.complete and report.failed == {} and len(outbox) == 0
    assert sink.confirmed == {seg.SOPInstanceUID: 1 for seg in segs.values()}  # each arrived exactly once
    assert ledger.counts(fingerprint)[Status.DONE.value] == len(sources) and ledger.pending_store() == []
    for study_uid in {s.study_uid for s in sources}:
        on_pacs = {r.sop_uid for r in archive.list_instances(study_uid, "SEG")}
        assert on_pacs >= {segs[s.sop_uid].SOPInstanceUID for s in sources if s.study_uid == study_uid}

    # A second drain has nothing to do; a SEG whose store succeeded unconfirmed is not sent again.
    assert drain(sink, outbox, ledger=ledger).stored == []
    already = segs[sources[0].sop_uid]
    outbox.put(already)
    report = drain(sink, outbox, ledger=ledger)
    assert report.already_there == [already.SOPInstanceUID] and report.stored == [] and len(outbox) == 0
    assert sink.confirmed[already.SOPInstanceUID] == 1
    ledger.close()


# -- retry rules (no PACS needed) --------------------------------------------------------------
class ScriptedSink:
    """Fails with the scripted errors, then stores."""

    def __init__(self, errors: list[PacsError]) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.stored: list[str] = []

    def store(self, item):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        ds = item if isinstance(item, Dataset) else __import__("pydicom").dcmread(item)
        self.stored.append(str(ds.SOPInstanceUID))
        return StoreResult(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), "scripted")

    def list_instances(self, study_uid, modality=None):
        return []

    def check(self):
        return "scripted"


@pytest.fixture(scope="module")
def one_seg(tmp_path_factory):
    source = next(i for i in write_demo_studies(tmp_path_factory.mktemp("demo")) if i.path.name.startswith("A_"))
    return build_test_seg(source.path)


def test_backoff_grows_exponentially_then_succeeds(one_seg):
    sink = ScriptedSink([PacsUnreachable("down"), PacsOperationError("busy", retriable=True)])
    slept: list[float] = []
    store_with_retry(sink, one_seg, RetryPolicy(attempts=4, initial_delay_s=0.5, max_delay_s=10), slept.append)
    assert slept == [0.5, 1.0] and sink.calls == 3 and sink.stored == [one_seg.SOPInstanceUID]


def test_non_retriable_error_goes_to_the_outbox_at_once(one_seg, tmp_path):
    sink = ScriptedSink([PacsAccessDenied("wrong password", setting="SAM2RAD_DICOMWEB_PASSWORD")])
    slept: list[float] = []
    outbox = Outbox(tmp_path / "outbox")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        outcome = deliver(one_seg, sink, outbox, ledger=ledger, source_sop_uid="1.2.3", fingerprint="fp",
                          policy=RetryPolicy(attempts=5, initial_delay_s=1), sleep=slept.append)
        assert outcome.delivery is Delivery.KEPT and "SAM2RAD_DICOMWEB_PASSWORD" in outcome.error
        assert slept == [] and sink.calls == 1 and len(outbox) == 1
        assert ledger.entry("1.2.3", "fp").status is Status.STORE_PENDING
        # Fixed password, next run: drain stores it; the file goes only after the confirmation.
        report = drain(sink, outbox, ledger=ledger)
        assert report.stored == [one_seg.SOPInstanceUID] and len(outbox) == 0
        assert ledger.is_done("1.2.3", "fp")


def test_drain_keeps_a_file_whose_store_failed(one_seg, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    item = outbox.put(one_seg)
    outbox.put(item.path)  # the same SOP Instance UID again: still one file
    assert len(outbox) == 1
    report = drain(ScriptedSink([PacsOperationError("0xA900 data set does not match")]), outbox,
                   policy=RetryPolicy(attempts=1))
    assert report.failed.keys() == {one_seg.SOPInstanceUID} and report.remaining == 1 and item.path.exists()


def test_missing_orthanc_fails_with_the_install_hint(monkeypatch):
    monkeypatch.delenv("ORTHANC_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="scripts/install.sh"):
        find_orthanc()


def test_an_unexpected_sink_error_still_keeps_the_seg(one_seg, tmp_path):
    class BrokenSink(ScriptedSink):
        def store(self, item):
            raise RuntimeError("bug in a sink")

    outbox = Outbox(tmp_path / "outbox")
    outcome = deliver(one_seg, BrokenSink([]), outbox, sleep=lambda s: None)
    assert outcome.delivery is Delivery.KEPT and "RuntimeError" in outcome.error and len(outbox) == 1


def test_drain_hands_a_lost_outbox_file_back_to_the_next_run(one_seg, tmp_path):
    outbox = Outbox(tmp_path / "outbox")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        deliver(one_seg, ScriptedSink([PacsUnreachable("down")]), outbox, ledger=ledger, source_sop_uid="1.2.3",
                fingerprint="fp", policy=RetryPolicy(attempts=1))
        assert ledger.todo(["1.2.3"], "fp") == []  # waiting in the outbox: not segmented again ...
        outbox.items()[0].path.unlink()  # ... until someone deletes the file
        report = drain(ScriptedSink([]), outbox, ledger=ledger)
        assert report.lost == [one_seg.SOPInstanceUID]
        assert ledger.entry("1.2.3", "fp").status is Status.FAILED and ledger.todo(["1.2.3"], "fp") == ["1.2.3"]
