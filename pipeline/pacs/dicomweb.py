"""A PACS over DICOMweb (dicomweb-client): QIDO-RS search, WADO-RS retrieve, STOW-RS store."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from pipeline.dicom_file import write_dicom_file
from pipeline.pacs.base import (
    answers,
    InstanceRef,
    PacsAccessDenied,
    PacsConfigError,
    PacsError,
    PacsOperationError,
    PacsUnreachable,
    StoreResult,
    StudyFilters,
    instance_path,
    load_dataset,
    instance_ref_from_answer,
    studies_from_answers,
)
from pipeline.pacs.config import PacsSettings, env_name
from pipeline.studies import DateWindow, FetchedStudy, StudyRef

log = logging.getLogger(__name__)

T = TypeVar("T")

# Ask for instances as stored: the default (Explicit VR Little Endian) makes the server transcode,
# which it may not be able to do for every codec.
_AS_STORED = (("application/dicom", "*"),)
# HTTP statuses where waiting and trying again can help.
_RETRIABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
# STOW-RS failure reasons (PS3.18 Table I.2-1 / PS3.4 Annex B) that are worth retrying.
_RETRIABLE_FAILURE_REASONS = {0xA700, 0x0110, 0x0213}


class _ConfiguredTlsSession(requests.Session):
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment override Session.verify;
    a CA bundle (or verify=false) configured for the PACS must win over a machine-wide default."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[override]
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            merged["verify"] = self.verify
        return merged


def build_session(settings: PacsSettings) -> requests.Session:
    """An HTTP session with the configured basic auth and TLS options."""
    session = _ConfiguredTlsSession()
    if settings.dicomweb_user:
        session.auth = (settings.dicomweb_user, settings.dicomweb_password)
    if settings.dicomweb_ca_bundle:
        if not Path(settings.dicomweb_ca_bundle).is_file():
            raise PacsConfigError(f"CA bundle {settings.dicomweb_ca_bundle} does not exist",
                                  setting=env_name("dicomweb_ca_bundle"))
        session.verify = str(settings.dicomweb_ca_bundle)
    elif not settings.dicomweb_verify:
        session.verify = False
    if settings.dicomweb_client_cert:
        for name in ("dicomweb_client_cert", "dicomweb_client_key"):
            path = getattr(settings, name)
            if path and not Path(path).is_file():
                raise PacsConfigError(f"{path} does not exist", setting=env_name(name))
        cert = str(settings.dicomweb_client_cert)
        session.cert = (cert, str(settings.dicomweb_client_key)) if settings.dicomweb_client_key else cert
    return session


class DicomWebArchive:
    """Discover, fetch and store against one DICOMweb service, configured by `PacsSettings`."""

    def __init__(self, settings: PacsSettings, session: requests.Session | None = None) -> None:
        settings.require("dicomweb_url")
        if not settings.dicomweb_url.startswith(("http://", "https://")):
            raise PacsConfigError(f"DICOMweb URL {settings.dicomweb_url!r} must start with http:// or https://",
                                  setting=env_name("dicomweb_url"))
        self.settings = settings
        self.url = settings.dicomweb_url.rstrip("/")
        try:
            self.client = DICOMwebClient(url=self.url, session=session or build_session(settings),
                                         timeout=settings.timeout_s)
        except ValueError as exc:
            raise PacsConfigError(f"invalid DICOMweb URL {self.url!r}: {exc}",
                                  setting=env_name("dicomweb_url")) from exc
        # Retries are ours (store loop + outbox); the client's own would multiply them.
        self.client.set_http_retry_params(retry=False)

    def __repr__(self) -> str:
        return f"DicomWebArchive({self.url})"

    # -- error mapping -----------------------------------------------------------------------
    def _call(self, purpose: str, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except PacsError:
            raise
        except requests.exceptions.SSLError as exc:
            raise PacsConfigError(
                f"{purpose}: TLS with {self.url} failed ({_short(exc)}); check {env_name('dicomweb_ca_bundle')}, "
                f"{env_name('dicomweb_verify')} and {env_name('dicomweb_client_cert')}",
                setting=env_name("dicomweb_ca_bundle")) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise PacsUnreachable(
                f"{purpose}: cannot reach the DICOMweb service at {self.url} ({_short(exc)}); check that it is "
                f"running and {env_name('dicomweb_url')}", setting=env_name("dicomweb_url")) from exc
        except requests.exceptions.HTTPError as exc:
            raise self._http_error(purpose, exc) from exc
        except requests.exceptions.RequestException as exc:  # broken transfers and the like
            raise PacsUnreachable(f"{purpose}: transfer with {self.url} failed ({_short(exc)})",
                                  setting=env_name("dicomweb_url")) from exc

    def _http_error(self, purpose: str, exc: requests.exceptions.HTTPError) -> PacsError:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (401, 403):
            who = repr(self.settings.dicomweb_user) if self.settings.dicomweb_user else "no user"
            return PacsAccessDenied(
                f"{purpose}: {self.url} answered HTTP {code} ({'wrong credentials' if code == 401 else 'forbidden'}"
                f" for {who}); set {env_name('dicomweb_user')} and {env_name('dicomweb_password')}",
                setting=env_name("dicomweb_password"))
        if code == 404:
            return PacsConfigError(
                f"{purpose}: {self.url} answered HTTP 404; is it the DICOMweb root (e.g. .../dicom-web)? "
                f"set {env_name('dicomweb_url')}", setting=env_name("dicomweb_url"))
        return PacsOperationError(f"{purpose}: {self.url} answered HTTP {code}", retriable=code in _RETRIABLE_HTTP)

    def _search_all(self, purpose: str, search: Callable[[int], list[dict]]) -> list[dict]:
        """All pages of a QIDO search. Some servers (Orthanc's plugin among them) ignore `offset` and
        answer every page with the same results, so paging stops at an empty page or one with nothing new
        (dicomweb-client's own get_remaining would loop for ever there)."""
        results: list[dict] = []
        seen: set[str] = set()
        while True:
            page = self._call(purpose, lambda: search(len(results)))
            fresh = [item for item in page if json_key(item) not in seen]
            if not fresh:
                return results
            seen.update(json_key(item) for item in fresh)
            results.extend(fresh)

    # -- connectivity ------------------------------------------------------------------------
    def check(self) -> str:
        self._call("QIDO-RS check", lambda: self.client.search_for_studies(limit=1, fields=["StudyInstanceUID"]))
        return f"DICOMweb {self.url}: ok"

    def echo(self) -> bool:
        return answers(self.check)

    # -- query -------------------------------------------------------------------------------
    def discover(self, window: DateWindow, filters: StudyFilters | None = None) -> list[StudyRef]:
        filters = filters or StudyFilters()
        answers: list[Dataset] = []
        for modality in filters.modalities:  # one query per modality: QIDO has no portable OR
            results = self._search_all("QIDO-RS studies", lambda offset, m=modality: self.client.search_for_studies(
                search_filters={"StudyDate": window.dicom_range(), "ModalitiesInStudy": m},
                fields=["StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"],
                offset=offset or None))
            answers += [Dataset.from_json(item) for item in results]
        result = studies_from_answers(answers, window, filters)
        log.info("QIDO-RS %s on %s: %d studies", window.dicom_range(), self.url, len(result))
        return result

    def list_instances(self, study_uid: str, modality: str | None = None) -> list[InstanceRef]:
        filters = {"Modality": modality} if modality else None
        results = self._search_all("QIDO-RS instances", lambda offset: self.client.search_for_instances(
            study_instance_uid=study_uid, search_filters=filters,
            fields=["SOPClassUID", "Modality", "SeriesInstanceUID"], offset=offset or None))
        found = {}
        for item in results:
            ref = instance_ref_from_answer(Dataset.from_json(item), study_uid, modality)
            if ref is not None:
                found[ref.sop_uid] = ref
        return sorted(found.values(), key=lambda r: (r.series_uid, r.sop_uid))

    # -- retrieve ----------------------------------------------------------------------------
    def fetch(self, study: StudyRef, dest_dir: Path) -> FetchedStudy:
        def retrieve() -> list[Path]:
            files = []
            for ds in self.client.iter_study(study.study_uid, media_types=_AS_STORED):
                if str(ds.get("StudyInstanceUID", "")) != study.study_uid:
                    continue  # never mix studies
                files.append(write_dicom_file(ds, instance_path(Path(dest_dir), study.study_uid,
                                                                 str(ds.SOPInstanceUID))))
            return files

        files = self._call(f"WADO-RS study {study.study_uid}", retrieve)
        if not files:
            raise PacsOperationError(f"WADO-RS of study {study.study_uid} from {self.url} returned no instances")
        log.info("WADO-RS %s: %d instances", study.study_uid, len(files))
        return FetchedStudy(ref=study, files=sorted(set(files)),
                            origins={f: f"{self.url}/studies/{study.study_uid}/instances/{f.stem}" for f in files})

    # -- store -------------------------------------------------------------------------------
    def store(self, item: Dataset | Path) -> StoreResult:
        ds = load_dataset(item)
        sop_uid, study_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        purpose = f"STOW-RS {sop_uid}"
        answer = self._call(purpose, lambda: self.client.store_instances([ds], study_instance_uid=study_uid))
        for failed in answer.get("FailedSOPSequence", []) or []:
            if str(failed.get("ReferencedSOPInstanceUID", "")) == sop_uid:
                reason = int(failed.get("FailureReason", 0) or 0)
                raise PacsOperationError(f"{purpose}: {self.url} refused the instance (failure reason "
                                         f"0x{reason:04X})", retriable=reason in _RETRIABLE_FAILURE_REASONS)
        stored = {str(r.get("ReferencedSOPInstanceUID", "")) for r in answer.get("ReferencedSOPSequence", []) or []}
        if stored and sop_uid not in stored:
            raise PacsOperationError(f"{purpose}: {self.url} did not confirm the instance", retriable=True)
        warning = str(answer.get("WarningReason", "") or "")
        log.info("STOW-RS %s to %s: ok", sop_uid, self.url)
        return StoreResult(sop_uid=sop_uid, study_uid=study_uid, destination=self.url, warning=warning)


def json_key(item: dict) -> str:
    """Identity of a QIDO result: its SOP/Series/Study Instance UID, whichever is most specific."""
    for tag in ("00080018", "0020000E", "0020000D"):
        value = (item.get(tag) or {}).get("Value")
        if value:
            return str(value[0])
    return repr(sorted(item.items()))


def _short(exc: Exception) -> str:
    """The last line of a requests/urllib3 error chain, without the noisy repr of the pool."""
    text = str(exc)
    for marker in ("Caused by ", "Failed to establish a new connection: "):
        if marker in text:
            text = text.split(marker)[-1]
    return text.strip("()'\" ")[:200]
