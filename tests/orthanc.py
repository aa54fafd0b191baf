"""A real Orthanc PACS as a test fixture: its own process on loopback, free ports, temporary storage.

Orthanc gets a generated JSON config: DICOMweb plugin on, HTTP basic auth on, `DicomCheckCalledAet`
on (a wrong called AE title is refused), the pipeline's AE registered with its Storage SCP port (for
C-MOVE). `OrthancServer.stop()` / `start()` keep ports and storage, so an outage can be simulated.

Use in a test module:  `from tests.orthanc import orthanc_server  # noqa: F401` (a module fixture).
A missing Orthanc binary FAILS the test (CI installs it with scripts/install.sh); it never skips.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import select
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.pacs.config import PacsSettings

ORTHANC_AET = "ORTHANC"
PIPELINE_AET = "SAM2RAD"
HTTP_USER = "sam2rad"
HTTP_PASSWORD = "s3cret-test-only"
LOOPBACK = "127.0.0.1"

_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins",
                "/usr/lib/x86_64-linux-gnu/orthanc", "/usr/lib/aarch64-linux-gnu/orthanc")
_INSTALL_HINT = ("run scripts/install.sh as root (it apt-installs orthanc orthanc-dicomweb dcmtk), "
                 "or set ORTHANC_BIN / ORTHANC_DICOMWEB_PLUGIN")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def find_orthanc() -> tuple[str, str]:
    """(Orthanc binary, DICOMweb plugin); pytest.fail with the install hint when either is missing."""
    binary = os.environ.get("ORTHANC_BIN") or shutil.which("Orthanc")
    if not binary or not Path(binary).is_file():
        pytest.fail(f"the Orthanc binary was not found on PATH; {_INSTALL_HINT}", pytrace=False)
    plugin = os.environ.get("ORTHANC_DICOMWEB_PLUGIN", "")
    if not plugin:
        for folder in _PLUGIN_DIRS:
            candidates = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []
            if candidates:
                plugin = str(candidates[0])
                break
    if not plugin or not Path(plugin).exists():
        pytest.fail(f"the Orthanc DICOMweb plugin (libOrthancDicomWeb.so) was not found; {_INSTALL_HINT}",
                    pytrace=False)
    return binary, plugin


@dataclass(frozen=True)
class TestPki:
    """A throw-away CA with a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_pki(dest: Path) -> TestPki:
    """Made with the openssl command line (EC keys: fast)."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is needed to make test certificates")
    dest.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=dest, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sam2rad test CA")
    (dest / "server.ext").write_text(f"subjectAltName=IP:{LOOPBACK}\n")
    for name, extra in (("server", ["-extfile", "server.ext"]), ("client", [])):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=sam2rad test {name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", *extra)
    return TestPki(ca=dest / "ca.pem", server_cert=dest / "server.crt", server_key=dest / "server.key",
                   client_cert=dest / "client.crt", client_key=dest / "client.key")


class TlsProxy:
    """HTTPS in front of Orthanc's HTTP port, requiring a client certificate from the test CA, as a
    hospital's reverse proxy would. (Debian's Orthanc 1.10.1 crashes on its own first HTTPS request.)"""

    def __init__(self, target_port: int, pki: TestPki) -> None:
        self.target_port = target_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self.context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            client.settimeout(10)
            secure = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()  # handshake refused: untrusted client or client that does not trust us
            return
        upstream = socket.create_connection((LOOPBACK, self.target_port), timeout=10)
        try:
            self._relay(secure, upstream)
        except OSError:
            pass
        finally:
            secure.close()
            upstream.close()

    @staticmethod
    def _relay(secure: ssl.SSLSocket, upstream: socket.socket) -> None:
        """Both directions in one thread: an SSL socket read in one thread while another writes to it
        can break a transfer (it did in one of two clean CI runs: IncompleteRead on a response)."""
        while True:
            # Bytes the SSL layer already decrypted do not make the socket readable for select.
            ready = [secure] if secure.pending() else select.select([secure, upstream], [], [], 10)[0]
            if not ready:
                return  # idle for 10 s
            for source in ready:
                data = source.recv(65536)
                if not data:
                    return
                (upstream if source is secure else secure).sendall(data)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


@dataclass
class OrthancServer:
    """One Orthanc process; ports and storage survive stop()/start()."""

    workdir: Path
    binary: str
    plugin: str
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    pipeline_scp_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def config(self) -> dict:
        storage = str(self.workdir / "storage")
        return {
            "Name": "sam2rad-test-pacs",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "Plugins": [self.plugin],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {HTTP_USER: HTTP_PASSWORD},
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            # Orthanc 1.10's DCMTK does not know LABELMAP SEG (1.2.840.10008.5.1.4.1.1.66.7) yet.
            "UnknownSopClassAccepted": True,
            "DicomModalities": {
                "sam2rad": {"AET": PIPELINE_AET, "Host": LOOPBACK, "Port": self.pipeline_scp_port},
            },
            "DicomScuTimeout": 10,
            "DicomScpTimeout": 10,
            "ConcurrentJobs": 2,
            "SaveJobs": False,
            "OverwriteInstances": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([self.binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.workdir, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Orthanc exited with code {self.process.returncode} during start-up:\n{self.log_tail()}",
                            pytrace=False)
            try:
                if self.get_json("/system").get("DicomAet") == ORTHANC_AET:
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"Orthanc did not answer /system within {timeout_s:g} s:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- REST, for test setup and checks (the pipeline itself uses DIMSE/DICOMweb) -------------
    def _request(self, path: str, data: bytes | None = None, method: str | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        token = base64.b64encode(f"{HTTP_USER}:{HTTP_PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        if data is not None:
            request.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def get_json(self, path: str):
        return json.loads(self._request(path))

    def upload(self, path: Path | str) -> str:
        """POST one file to /instances; returns Orthanc's instance id."""
        answer = json.loads(self._request("/instances", data=Path(path).read_bytes()))
        return answer["ID"]

    def instance_count(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])

    def clear(self) -> None:
        for patient in self.get_json("/patients"):
            self._request(f"/patients/{patient}", method="DELETE")

    # -- the pipeline's view -------------------------------------------------------------------
    def settings(self, kind: str = "dimse", **overrides) -> PacsSettings:
        base = PacsSettings(
            kind=kind, host=LOOPBACK, port=self.dicom_port, called_aet=ORTHANC_AET, calling_aet=PIPELINE_AET,
            scp_port=self.pipeline_scp_port, scp_bind=LOOPBACK, timeout_s=10.0,
            dicomweb_url=self.dicomweb_url, dicomweb_user=HTTP_USER, dicomweb_password=HTTP_PASSWORD,
            store_attempts=2, store_backoff_s=0.01, store_backoff_max_s=0.05,
        )
        return base.replace(**overrides)


def start_orthanc(workdir: Path | None = None) -> OrthancServer:
    binary, plugin = find_orthanc()
    server = OrthancServer(workdir=workdir or Path(tempfile.mkdtemp(prefix="sam2rad-orthanc-")),
                           binary=binary, plugin=plugin)
    server.start()
    return server


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory):
    """A running Orthanc for one test module (empty storage); stopped afterwards."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


# -- demo data: pydicom's real ultrasound files, re-dated into known studies ---------------------
import datetime as _dt  # noqa: E402

import highdicom as hd  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from pipeline.studies import DateWindow  # noqa: E402

DEMO_WINDOW = DateWindow(_dt.date(2026, 1, 1), _dt.date(2026, 1, 31))


@dataclass(frozen=True)
class DemoInstance:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    modality: str
    n_frames: int


# study key -> (StudyDate, PatientID, files). A and B are ultrasound in the window; C is ultrasound after
# it; D is CT inside it (the modality filter must drop it).
DEMO_STUDIES = {
    "A": ("20260105", "DEMO-A", ("examples_rgb_color.dcm", "examples_jpeg2k.dcm")),
    "B": ("20260120", "DEMO-B", ("examples_palette.dcm", "ExplVR_BigEnd.dcm")),
    "C": ("20260203", "DEMO-C", ("examples_ybr_color.dcm",)),
    "D": ("20260112", "DEMO-D", ("CT_small.dcm",)),
}


def demo_uid(*parts: str) -> str:
    """Deterministic UIDs, so every run of the tests sees the same studies and SEGs."""
    return generate_uid(entropy_srcs=["sam2rad-pacs-tests", *parts])


def write_demo_studies(dest: Path) -> list[DemoInstance]:
    """Copies of pydicom's test files with fresh study/series/instance UIDs and known study dates."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for key, (study_date, patient_id, names) in DEMO_STUDIES.items():
        study_uid = demo_uid("study", key)
        for name in names:
            ds = pydicom.dcmread(get_testdata_file(name))
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = demo_uid("series", key, name)
            ds.SOPInstanceUID = demo_uid("instance", key, name)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyDate = study_date
            ds.SeriesDate = study_date
            ds.StudyTime = "101500"
            ds.PatientID = patient_id
            ds.PatientName = f"Demo^{key}"
            ds.AccessionNumber = f"ACC{key}"
            path = dest / f"{key}_{name}"
            ds.save_as(path, enforce_file_format=True)
            written.append(DemoInstance(path=path, study_uid=study_uid, series_uid=ds.SeriesInstanceUID,
                                        sop_uid=ds.SOPInstanceUID, study_date=study_date, modality=ds.Modality,
                                        n_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    return written


def build_test_seg(source_path: Path, fingerprint: str = "test-model", labelmap: bool = False) -> Dataset:
    """A small valid SEG for a single-frame source: a threshold mask, deterministic UIDs.

    (The production SEG writer is pipeline/seg; this one only has to be a real SEG for the PACS tests.)
    """
    source = pydicom.dcmread(source_path)
    pixels = np.asarray(source.pixel_array, dtype=np.float32)
    grey = pixels.mean(axis=-1) if pixels.ndim == 3 else pixels
    mask = grey > np.median(grey)
    for keyword in ("ReferringPhysicianName", "PatientBirthDate", "PatientSex", "StudyID"):
        if keyword not in source:
            setattr(source, keyword, None)
    kind = hd.seg.SegmentationTypeValues.LABELMAP if labelmap else hd.seg.SegmentationTypeValues.BINARY
    algorithm = hd.AlgorithmIdentificationSequence(name="threshold", version="1",
                                                   family=codes.DCM.ArtificialIntelligence)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="bone", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Bone, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask.astype(np.uint8), segmentation_type=kind,
        segment_descriptions=[description],
        series_instance_uid=demo_uid("seg-series", str(source.SeriesInstanceUID), fingerprint),
        series_number=9001, sop_instance_uid=seg_uid_for(str(source.SOPInstanceUID), fingerprint),
        instance_number=1, manufacturer="Sam2Rad tests", manufacturer_model_name="threshold",
        software_versions="0", device_serial_number="0", omit_empty_frames=False)
    seg.PatientOrientation = ""  # Type 2C without ImageOrientationPatient (ultrasound)
    return seg


def seg_uid_for(source_sop_uid: str, fingerprint: str = "test-model") -> str:
    return demo_uid("seg", source_sop_uid, fingerprint)
