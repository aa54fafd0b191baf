"""Integration against a real Orthanc: discover, retrieve (C-GET, C-MOVE, WADO-RS), store SEGs (C-STORE,
STOW-RS), and the ledger-guarded path that never stores the same SEG twice."""
from __future__ import annotations

import pydicom
import pytest
from urllib3.exceptions import InsecureRequestWarning

from pipeline.ledger import Ledger, Status
from pydicom.uid import SegmentationStorage
from pipeline.pacs import (
    LABEL_MAP_SEGMENTATION_STORAGE,
    Delivery,
    DicomWebArchive,
    DimseArchive,
    FolderArchive,
    Outbox,
    PacsError,
    deliver,
)
from pipeline.pacs.dimse_receiver import storage_scp_contexts
from tests.orthanc import DEMO_WINDOW, build_test_seg, orthanc_server, write_demo_studies  # noqa: F401

pytestmark = [pytest.mark.orthanc, pytest.mark.timeout(120)]

FINGERPRINT = "sam2rad-test:integration"


class CountingSink:
    """A real sink that also counts stores per SOP Instance UID."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.stores: dict[str, int] = {}

    def store(self, item):
        result = self.sink.store(item)
        self.stores[result.sop_uid] = self.stores.get(result.sop_uid, 0) + 1
        return result

    def list_instances(self, study_uid, modality=None):
        return self.sink.list_instances(study_uid, modality)

    def check(self):
        return self.sink.check()


@pytest.fixture(scope="module")
def pacs(orthanc_server, tmp_path_factory):  # noqa: F811 - the fixture imported above
    instances = write_demo_studies(tmp_path_factory.mktemp("demo"))
    for instance in instances:
        orthanc_server.upload(instance.path)
    return orthanc_server, instances


def in_study(instances, key):
    return [i for i in instances if i.path.name.startswith(f"{key}_")]


def test_discover_by_date_and_modality_over_dimse_and_dicomweb(pacs):
    server, instances = pacs
    a, b = in_study(instances, "A"), in_study(instances, "B")
    dimse = DimseArchive(server.settings("dimse"))
    web = DicomWebArchive(server.settings("dicomweb"))
    assert "ok" in dimse.check() and "ok" in web.check()
    over_dimse = dimse.discover(DEMO_WINDOW)
    over_web = web.discover(DEMO_WINDOW)
    assert [s.study_uid for s in over_dimse] == [a[0].study_uid, b[0].study_uid]  # not C (February), not D (CT)
    assert [(s.study_date, s.modalities, s.n_instances) for s in over_dimse] == \
        [("20260105", ("US",), 2), ("20260120", ("US",), 2)]
    assert over_web == over_dimse
    # The embedded folder archive agrees on the same files.
    folder_inbox = instances[0].path.parent
    assert FolderArchive(folder_inbox, None).discover(DEMO_WINDOW) == over_dimse


@pytest.mark.parametrize("method", ["c-get", "c-move", "wado-rs"])
def test_retrieve_a_study_bit_exact(pacs, method, tmp_path):
    server, instances = pacs
    if method == "wado-rs":
        archive = DicomWebArchive(server.settings("dicomweb"))
    else:
        archive = DimseArchive(server.settings("dimse", retrieve="get" if method == "c-get" else "move"))
    for key in ("A", "B"):  # A has JPEG 2000 + RGB, B palette colour + big endian
        expected = {i.sop_uid: i for i in in_study(instances, key)}
        study = next(s for s in archive.discover(DEMO_WINDOW) if s.study_uid == next(iter(expected.values())).study_uid)
        fetched = archive.fetch(study, tmp_path / method)
        assert {p.stem for p in fetched.files} == set(expected)
        for path in fetched.files:
            got, original = pydicom.dcmread(path), pydicom.dcmread(expected[path.stem].path)
            assert got.StudyInstanceUID == study.study_uid
            assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID  # not transcoded
            assert got.PixelData == original.PixelData


def test_store_segs_one_per_source_and_never_twice(pacs, tmp_path):
    server, instances = pacs
    dimse = CountingSink(DimseArchive(server.settings("dimse")))
    web = CountingSink(DicomWebArchive(server.settings("dicomweb")))
    sources = [i for i in instances if i.modality == "US" and i.n_frames == 1 and DEMO_WINDOW.contains(i.study_date)]
    assert len(sources) == 4
    # Study A over DIMSE, study B over STOW-RS; one LABELMAP SEG each way (its own SOP class).
    plan = {s.sop_uid: (dimse if s.path.name.startswith("A_") else web, "rgb" in s.path.name or "palette" in s.path.name)
            for s in sources}
    segs = {s.sop_uid: build_test_seg(s.path, FINGERPRINT, labelmap=plan[s.sop_uid][1]) for s in sources}
    outbox = Outbox(tmp_path / "outbox")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for source in sources:
            ledger.mark_started(source.sop_uid, FINGERPRINT, study_uid=source.study_uid)
            sink = plan[source.sop_uid][0]
            outcome = deliver(segs[source.sop_uid], sink, outbox, ledger=ledger, source_sop_uid=source.sop_uid,
                              fingerprint=FINGERPRINT)
            assert outcome.delivery is Delivery.STORED, outcome.error
        assert ledger.counts(FINGERPRINT)[Status.DONE.value] == 4
        count_after_first_run = server.instance_count()

        # Second run over the same sources: the ledger stops every store.
        for source in sources:
            outcome = deliver(segs[source.sop_uid], plan[source.sop_uid][0], outbox, ledger=ledger,
                              source_sop_uid=source.sop_uid, fingerprint=FINGERPRINT)
            assert outcome.delivery is Delivery.SKIPPED
    assert sum(dimse.stores.values()) == 2 and sum(web.stores.values()) == 2
    assert server.instance_count() == count_after_first_run
    assert len(outbox) == 0

    # One SEG per source instance, in the source's study, referencing exactly that instance.
    query_dimse, query_web = DimseArchive(server.settings("dimse")), DicomWebArchive(server.settings("dicomweb"))
    for key in ("A", "B"):
        study_sources = {s.sop_uid for s in sources if s.path.name.startswith(f"{key}_")}
        study_uid = in_study(instances, key)[0].study_uid
        expected_segs = {segs[uid].SOPInstanceUID for uid in study_sources}
        assert {r.sop_uid for r in query_dimse.list_instances(study_uid, "SEG")} == expected_segs  # C-FIND
        assert {r.sop_uid for r in query_web.list_instances(study_uid, "SEG")} == expected_segs  # QIDO-RS
        study = next(s for s in query_dimse.discover(DEMO_WINDOW) if s.study_uid == study_uid)
        assert study.modalities == ("SEG", "US") and study.n_instances == 4
        fetched = query_web.fetch(study, tmp_path / "check")
        referenced = {}
        for path in fetched.files:
            ds = pydicom.dcmread(path)
            if ds.Modality != "SEG":
                continue
            assert ds.StudyInstanceUID == study_uid
            assert ds.SOPClassUID in (SegmentationStorage, LABEL_MAP_SEGMENTATION_STORAGE)
            source_uid = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            referenced.setdefault(source_uid, []).append(ds.SOPInstanceUID)
            assert ds.SOPClassUID == (LABEL_MAP_SEGMENTATION_STORAGE if plan[source_uid][1] else SegmentationStorage)
        assert referenced == {uid: [segs[uid].SOPInstanceUID] for uid in study_sources}
        # C-GET from Orthanc 1.10 cannot send LABELMAP SEG (its DCMTK lacks the SOP class): the sources
        # still arrive, the SEG is reported missing without failing the fetch. C-MOVE gets everything.
        got = {p.stem for p in query_dimse.fetch_by_get(study, tmp_path / "get").files}
        assert study_sources <= got
        moved = {p.stem for p in query_dimse.fetch_by_move(study, tmp_path / "move").files}
        assert moved == study_sources | expected_segs


def test_our_storage_scp_accepts_labelmap_seg():
    syntaxes = {cx.abstract_syntax for cx in storage_scp_contexts()}
    assert {SegmentationStorage, LABEL_MAP_SEGMENTATION_STORAGE} <= syntaxes


def test_dicomweb_over_tls_with_ca_bundle_and_client_certificate(pacs, tmp_path):
    from pipeline.pacs import PacsConfigError
    from tests.orthanc import TlsProxy, make_test_pki

    server, _ = pacs
    pki = make_test_pki(tmp_path / "pki")
    proxy = TlsProxy(server.http_port, pki)
    try:
        settings = server.settings("dicomweb", dicomweb_url=f"https://127.0.0.1:{proxy.port}/dicom-web",
                                   dicomweb_ca_bundle=pki.ca, dicomweb_client_cert=pki.client_cert,
                                   dicomweb_client_key=pki.client_key)
        archive = DicomWebArchive(settings)
        assert "ok" in archive.check()
        assert len(archive.discover(DEMO_WINDOW)) == 2
        with pytest.raises(PacsConfigError, match="TLS.*SAM2RAD_DICOMWEB_CA_BUNDLE"):  # server not trusted
            DicomWebArchive(settings.replace(dicomweb_ca_bundle=None)).check()
        with pytest.raises(PacsError, match="SAM2RAD_DICOMWEB_CLIENT_CERT"):  # no client certificate
            DicomWebArchive(settings.replace(dicomweb_client_cert=None, dicomweb_client_key=None)).check()
        insecure = DicomWebArchive(settings.replace(dicomweb_ca_bundle=None, dicomweb_verify=False))
        with pytest.warns(InsecureRequestWarning):
            assert "ok" in insecure.check()  # SAM2RAD_DICOMWEB_VERIFY=false: encrypted, server unchecked
    finally:
        proxy.stop()
