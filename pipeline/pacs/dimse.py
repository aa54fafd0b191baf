"""A PACS over DICOM DIMSE (pynetdicom): C-ECHO, C-FIND, C-GET / C-MOVE, C-STORE."""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context, build_role
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pipeline.pacs.base import (
    answers,
    InstanceRef,
    PacsAccessDenied,
    PacsAssociationRejected,
    PacsConfigError,
    PacsOperationError,
    PacsUnreachable,
    StoreResult,
    StudyFilters,
    load_dataset,
    instance_ref_from_answer,
    studies_from_answers,
)
from pipeline.pacs.config import PacsSettings, env_name
from pipeline.pacs.dimse_receiver import (
    RETRIEVE_TRANSFER_SYNTAXES,
    InstanceReceiver,
    storage_context,
    storage_scp_contexts,
)
from pipeline.sop_classes import LABEL_MAP_SEGMENTATION_STORAGE
from pipeline.studies import DateWindow, FetchedStudy, StudyRef

log = logging.getLogger(__name__)

_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.2"}
# Objects derived from images (ours among them); a retrieve may go without them, the pipeline reads images.
DERIVED_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "REG"})
_MAX_CONTEXTS = 128
_MOVE_SCP_LOCK = threading.Lock()  # DICOM limit per association (context IDs are odd numbers 1..255)

# C-FIND/C-GET/C-MOVE status codes worth naming in messages.
_PENDING = (0xFF00, 0xFF01)
_CANCEL = 0xFE00
_MOVE_DESTINATION_UNKNOWN = 0xA801

# A-ASSOCIATE-RJ diagnostics from the service user (PS3.8 9.3.4): what to fix for each.
_REJECT_REASONS = {
    2: ("application context name not supported", None),
    3: ("calling AE title {calling!r} not recognised", "calling_aet"),
    7: ("called AE title {called!r} unknown", "called_aet"),
}


def _status_code(status: Dataset) -> int | None:
    return int(status.Status) if status is not None and "Status" in status else None


class DimseArchive:
    """Discover, fetch and store against one PACS over DIMSE, configured by `PacsSettings`."""

    def __init__(self, settings: PacsSettings) -> None:
        settings.require("host", "port", "called_aet", "calling_aet")
        if settings.retrieve == "move":
            settings.require("scp_port")
        self.settings = settings

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def __repr__(self) -> str:
        s = self.settings
        return f"DimseArchive({s.calling_aet} -> {s.called_aet}@{self.address})"

    # -- association -------------------------------------------------------------------------
    def _new_ae(self) -> AE:
        ae = AE(ae_title=self.settings.calling_aet)
        timeout = self.settings.timeout_s
        ae.acse_timeout = timeout
        ae.dimse_timeout = timeout
        ae.network_timeout = timeout
        ae.connection_timeout = min(timeout, 10.0)
        return ae

    @contextmanager
    def _association(self, contexts: list[PresentationContext], purpose: str, *,
                     roles: list | None = None,
                     handlers: list | None = None) -> Iterator[Association]:
        s = self.settings
        ae = self._new_ae()
        try:
            assoc = ae.associate(s.host, s.port, contexts=contexts, ae_title=s.called_aet,
                                 ext_neg=roles, evt_handlers=handlers)
            if not assoc.is_established:
                raise self._association_error(assoc, purpose)
            try:
                yield assoc
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            ae.shutdown()

    def _association_error(self, assoc: Association, purpose: str) -> Exception:
        s = self.settings
        where = f"{self.address}"
        reply = getattr(assoc.acceptor, "primitive", None)
        if assoc.is_rejected and reply is not None:
            source, reason = int(reply.result_source or 0), int(reply.diagnostic or 0)
            transient = int(reply.result or 0) == 0x02
            if source == 1 and reason in _REJECT_REASONS:
                text, field_name = _REJECT_REASONS[reason]
                text = text.format(calling=s.calling_aet, called=s.called_aet)
                hint = ""
                if field_name == "calling_aet":
                    hint = f"; set {env_name('calling_aet')} to an AE title the PACS knows, or register it there"
                elif field_name == "called_aet":
                    hint = f"; set {env_name('called_aet')} to the PACS's AE title"
                return PacsAssociationRejected(
                    f"association for {purpose} rejected by {where}: {text}{hint}",
                    setting=env_name(field_name) if field_name else None, retriable=transient)
            return PacsAssociationRejected(
                f"association for {purpose} rejected by {where} ({reply.result_str}, source: {reply.source_str}, "
                f"reason: {reply.reason_str}); check {env_name('called_aet')} and {env_name('calling_aet')}",
                setting=env_name("called_aet"), retriable=transient)
        if reply is not None and int(reply.result or 0) == 0:
            # Accepted, then aborted by pynetdicom because no presentation context was accepted.
            proposed = sorted({str(cx.abstract_syntax) for cx in assoc.requestor.requested_contexts})
            hint = ""
            if LABEL_MAP_SEGMENTATION_STORAGE in proposed:
                hint = ("; Label Map Segmentation Storage is new and many archives do not know it yet: enable "
                        "it there (Orthanc: UnknownSopClassAccepted) or write BINARY SEGs")
            return PacsAssociationRejected(
                f"{where} ({s.called_aet}) accepted none of the presentation contexts proposed for {purpose} "
                f"(SOP classes {', '.join(proposed)}); the PACS must be configured to accept them{hint}")
        reason = _probe_tcp(s.host, s.port, min(s.timeout_s, 5.0))
        if reason:
            return PacsUnreachable(
                f"cannot connect to the PACS at {where} for {purpose}: {reason}; check that it is running and "
                f"that {env_name('host')} / {env_name('port')} point to it", setting=env_name("host"))
        return PacsUnreachable(
            f"association for {purpose} with {where} was aborted or timed out (the PACS accepted the TCP "
            f"connection but did not answer); check {env_name('port')} is its DICOM port and "
            f"{env_name('timeout_s')}", setting=env_name("port"))

    # -- connectivity ------------------------------------------------------------------------
    def check(self) -> str:
        with self._association([build_context(Verification)], "C-ECHO") as assoc:
            status = assoc.send_c_echo()
        code = _status_code(status)
        if code != 0x0000:
            raise PacsOperationError(f"C-ECHO to {self.address} returned status {code}")
        return f"C-ECHO {self.settings.calling_aet} -> {self.settings.called_aet}@{self.address}: ok"

    def echo(self) -> bool:
        return answers(self.check)

    # -- query -------------------------------------------------------------------------------
    def _peer_gave_up(self, started: float) -> bool:
        """An empty response well before our DIMSE timeout means the peer closed the association."""
        return time.monotonic() - started < 0.9 * self.settings.timeout_s

    def _find(self, query: Dataset, purpose: str) -> list[Dataset]:
        found = []
        with self._association([build_context(StudyRootQueryRetrieveInformationModelFind)], purpose) as assoc:
            started = time.monotonic()
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                code = _status_code(status)
                if code in _PENDING:
                    if identifier is not None:
                        found.append(identifier)
                    continue
                if code == 0x0000:
                    break
                raise self._operation_error(purpose, code, status, aborted=self._peer_gave_up(started))
        return found

    def _operation_error(self, purpose: str, code: int | None, status: Dataset | None,
                         aborted: bool = False) -> Exception:
        s = self.settings
        if code is None and aborted and purpose.startswith(("C-FIND", "C-GET", "C-MOVE")):
            # Orthanc, among others, aborts the association when an unknown AE asks to query/retrieve.
            return PacsAccessDenied(
                f"{purpose}: {self.address} aborted the association; it probably does not allow AE title "
                f"{s.calling_aet!r} to query/retrieve: register that AE title at the PACS, or set "
                f"{env_name('calling_aet')} to one it knows", setting=env_name("calling_aet"))
        if code is None:
            return PacsUnreachable(
                f"{purpose} on {self.address}: no answer (connection lost or timed out after "
                f"{s.timeout_s:g} s; see {env_name('timeout_s')})", setting=env_name("timeout_s"))
        comment = str(status.get("ErrorComment", "")) if status is not None else ""
        detail = f"status 0x{code:04X}" + (f" ({comment})" if comment else "")
        if code == _MOVE_DESTINATION_UNKNOWN:
            return PacsConfigError(
                f"{purpose} refused by {self.address}: move destination {s.move_destination!r} unknown to the "
                f"PACS; register it there with this host and port {s.scp_port} ({env_name('move_aet')}, "
                f"{env_name('scp_port')})", setting=env_name("move_aet"))
        if 0xA700 <= code <= 0xA7FF:
            return PacsOperationError(f"{purpose} failed on {self.address}: out of resources, {detail}",
                                      retriable=True)
        if purpose.startswith("C-MOVE"):
            # Orthanc answers 0xC000, not 0xA801, when it does not know the destination AE.
            return PacsOperationError(
                f"{purpose} failed on {self.address}: {detail}; if the PACS does not know the move destination "
                f"{s.move_destination!r}, register it there (this host, port {s.scp_port}) or set "
                f"{env_name('move_aet')} / {env_name('scp_port')}", setting=env_name("move_aet"))
        if code == 0x0124:  # "Not authorized"
            return PacsAccessDenied(
                f"{purpose} refused by {self.address}: {detail}; the PACS may not allow AE title "
                f"{s.calling_aet!r} to query/retrieve: register it there or set {env_name('calling_aet')}",
                setting=env_name("calling_aet"))
        return PacsOperationError(f"{purpose} failed on {self.address}: {detail}")

    def discover(self, window: DateWindow, filters: StudyFilters | None = None) -> list[StudyRef]:
        filters = filters or StudyFilters()
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.StudyDate = window.dicom_range()
        query.ModalitiesInStudy = "\\".join(filters.modalities)
        query.NumberOfStudyRelatedInstances = ""
        result = studies_from_answers(self._find(query, "C-FIND studies"), window, filters)
        log.info("C-FIND %s on %s: %d studies", window.dicom_range(), self.address, len(result))
        return result

    def list_instances(self, study_uid: str, modality: str | None = None) -> list[InstanceRef]:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        query.Modality = modality or ""
        found = {}
        for identifier in self._find(query, "C-FIND instances"):
            ref = instance_ref_from_answer(identifier, study_uid, modality)
            if ref is not None:
                found[ref.sop_uid] = ref
        return sorted(found.values(), key=lambda r: (r.series_uid, r.sop_uid))

    # -- retrieve ----------------------------------------------------------------------------
    def fetch(self, study: StudyRef, dest_dir: Path) -> FetchedStudy:
        if self.settings.retrieve == "move":
            return self.fetch_by_move(study, dest_dir)
        return self.fetch_by_get(study, dest_dir)

    def _study_query(self, study_uid: str) -> Dataset:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        return query

    def fetch_by_get(self, study: StudyRef, dest_dir: Path) -> FetchedStudy:
        """C-GET: the PACS sends the instances back over our own association."""
        instances = self.list_instances(study.study_uid)
        sop_classes = sorted({i.sop_class_uid for i in instances if i.sop_class_uid})
        if not sop_classes:
            raise PacsOperationError(f"study {study.study_uid} has no instances on {self.address}")
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
        # One context per (SOP class, transfer syntax) when it fits in 128; else one per class.
        per_syntax = len(sop_classes) * len(RETRIEVE_TRANSFER_SYNTAXES) + 1 <= _MAX_CONTEXTS
        for uid in sop_classes:
            if per_syntax:
                contexts += [storage_context(uid, [ts]) for ts in RETRIEVE_TRANSFER_SYNTAXES]
            else:
                contexts.append(storage_context(uid, RETRIEVE_TRANSFER_SYNTAXES))
        if len(contexts) > _MAX_CONTEXTS:
            raise PacsOperationError(f"study {study.study_uid} has {len(sop_classes)} SOP classes; C-GET can "
                                     f"negotiate at most {_MAX_CONTEXTS - 1}; use C-MOVE ({env_name('retrieve')}=move)")
        roles = [build_role(uid, scp_role=True) for uid in sop_classes]
        receiver = InstanceReceiver(Path(dest_dir), study.study_uid)
        handlers = [(evt.EVT_C_STORE, receiver.handle)]
        with self._association(contexts, "C-GET", roles=roles, handlers=handlers) as assoc:
            responses = assoc.send_c_get(self._study_query(study.study_uid), StudyRootQueryRetrieveInformationModelGet)
            failed = self._await_retrieve(responses, "C-GET", study)
        return self._fetched(study, receiver, "C-GET", instances, failed)

    def fetch_by_move(self, study: StudyRef, dest_dir: Path) -> FetchedStudy:
        """C-MOVE: the PACS opens an association to our Storage SCP (started for this fetch only)."""
        s = self.settings
        instances = self.list_instances(study.study_uid)
        receiver = InstanceReceiver(Path(dest_dir), study.study_uid)
        scp = AE(ae_title=s.move_destination)
        scp.supported_contexts = storage_scp_contexts()
        scp.network_timeout = scp.acse_timeout = scp.dimse_timeout = s.timeout_s
        with _MOVE_SCP_LOCK:  # one SCP port: this process's C-MOVEs take turns
            try:
                server = scp.start_server((s.scp_bind, s.scp_port), block=False,
                                          evt_handlers=[(evt.EVT_C_STORE, receiver.handle)])
            except OSError as exc:
                raise PacsConfigError(
                    f"cannot start the Storage SCP for C-MOVE on {s.scp_bind}:{s.scp_port}: {exc} (another "
                    f"process using the port? give each worker its own port, or use C-GET); set "
                    f"{env_name('scp_port')} (and {env_name('scp_bind')})", setting=env_name("scp_port")) from exc
            try:
                move = [build_context(StudyRootQueryRetrieveInformationModelMove)]
                with self._association(move, "C-MOVE") as assoc:
                    responses = assoc.send_c_move(self._study_query(study.study_uid), s.move_destination,
                                                  StudyRootQueryRetrieveInformationModelMove)
                    failed = self._await_retrieve(responses, "C-MOVE", study)
            finally:
                server.shutdown()
                scp.shutdown()
        return self._fetched(study, receiver, "C-MOVE", instances, failed)

    def _await_retrieve(self, responses: Iterator, purpose: str, study: StudyRef) -> int:
        """Wait for the final response; return how many sub-operations failed (0xB000 = some did)."""
        started = time.monotonic()
        for status, _identifier in responses:
            code = _status_code(status)
            if code in _PENDING:
                continue
            if code == 0x0000:
                return 0
            if code in (0xB000, _CANCEL):
                return int(status.get("NumberOfFailedSuboperations", 0) or 1)
            raise self._operation_error(f"{purpose} study {study.study_uid}", code, status,
                                        aborted=self._peer_gave_up(started))
        raise self._operation_error(f"{purpose} study {study.study_uid}", None, None,
                                    aborted=self._peer_gave_up(started))

    def _fetched(self, study: StudyRef, receiver: "InstanceReceiver", purpose: str,
                 instances: list[InstanceRef], failed: int) -> FetchedStudy:
        if receiver.refused:
            log.warning("%s %s: refused %d instance(s) of other studies", purpose, study.study_uid, receiver.refused)
        received = {p.stem for p in receiver.files}
        missing = [i for i in instances if i.sop_uid not in received]
        needed = [i for i in missing if i.modality not in DERIVED_MODALITIES]
        if needed or (failed and not missing):
            raise PacsOperationError(
                f"{purpose} of study {study.study_uid} from {self.address}: {max(failed, len(needed))} instance(s) "
                f"failed to transfer", retriable=True)
        if missing:
            # e.g. Orthanc 1.10 cannot send LABELMAP SEG over C-GET; derived objects are not our input.
            log.warning("%s %s: %d derived instance(s) (%s) not transferred", purpose, study.study_uid,
                        len(missing), ",".join(sorted({i.modality for i in missing})))
        if not receiver.files:
            raise PacsOperationError(f"{purpose} of study {study.study_uid} from {self.address} returned no instances")
        log.info("%s %s: %d instances", purpose, study.study_uid, len(receiver.files))
        return FetchedStudy(ref=study, files=sorted(receiver.files),
                            origins={f: f"dimse://{self.settings.called_aet}@{self.address}/{study.study_uid}/{f.stem}"
                                     for f in receiver.files})

    # -- store -------------------------------------------------------------------------------
    def store(self, item: Dataset | Path) -> StoreResult:
        ds = load_dataset(item)
        sop_class = str(ds.SOPClassUID)
        meta = getattr(ds, "file_meta", None)
        syntax = UID(str(meta.TransferSyntaxUID)) if meta is not None and "TransferSyntaxUID" in meta \
            else ExplicitVRLittleEndian
        syntaxes = [syntax] + ([ts for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if ts != syntax]
                               if syntax in _UNCOMPRESSED else [])
        purpose = f"C-STORE {ds.SOPInstanceUID}"
        with self._association([storage_context(sop_class, syntaxes)], purpose) as assoc:
            try:
                status = assoc.send_c_store(ds)
            except ValueError as exc:  # no accepted context for this SOP class / transfer syntax
                raise PacsAssociationRejected(
                    f"{self.address} ({self.settings.called_aet}) does not accept SOP class {sop_class} with "
                    f"transfer syntax {syntax}: {exc}") from exc
        code = _status_code(status)
        if code is None or not (code == 0x0000 or 0xB000 <= code <= 0xBFFF):
            raise self._operation_error(purpose, code, status)
        warning = f"status 0x{code:04X}" if code else ""
        log.info("C-STORE %s to %s: ok%s", ds.SOPInstanceUID, self.address, f" ({warning})" if warning else "")
        return StoreResult(sop_uid=str(ds.SOPInstanceUID), study_uid=str(ds.StudyInstanceUID),
                           destination=f"dimse://{self.settings.called_aet}@{self.address}", warning=warning)


def _probe_tcp(host: str, port: int, timeout: float) -> str:
    """Why a TCP connection fails ('' if it succeeds)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except TimeoutError:
        return "connection timed out"
    except OSError as exc:
        return exc.strerror or type(exc).__name__

