"""The receiving side of DIMSE retrieval: what we offer and accept, and the C-STORE handler that
writes each arriving instance (C-GET on the same association, C-MOVE on our own Storage SCP)."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from pydicom.uid import SegmentationStorage
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.presentation import PresentationContext, build_context

from pipeline.dicom_file import write_dicom_file
from pipeline.pacs.base import instance_path
from pipeline.sop_classes import LABEL_MAP_SEGMENTATION_STORAGE

log = logging.getLogger(__name__)

# Transfer syntaxes offered for retrieval, one presentation context each, so the PACS can send every
# instance as stored instead of transcoding (it may not have the codec, e.g. JPEG 2000).
RETRIEVE_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (old ultrasound archives)
    "1.2.840.10008.1.2.1.99",  # Deflated
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)


def storage_context(sop_class_uid: str, transfer_syntaxes: list[str] | tuple[str, ...]) -> PresentationContext:
    return build_context(sop_class_uid, list(transfer_syntaxes))


def storage_scp_contexts() -> list[PresentationContext]:
    """What our own Storage SCP (C-MOVE destination) accepts: every storage SOP class, any syntax.

    LABELMAP SEG is not among pynetdicom's storage contexts, so it is added explicitly.
    """
    contexts = [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]
    known = {cx.abstract_syntax for cx in contexts}
    for uid in (SegmentationStorage, LABEL_MAP_SEGMENTATION_STORAGE):
        if uid not in known:
            contexts.append(build_context(uid, ALL_TRANSFER_SYNTAXES))
    return contexts


class InstanceReceiver:
    """C-STORE handler for C-GET and C-MOVE: writes each instance of the expected study as it arrives."""

    def __init__(self, dest_dir: Path, study_uid: str) -> None:
        self.dest_dir = dest_dir
        self.study_uid = study_uid
        self.files: list[Path] = []
        self.refused = 0
        self._lock = threading.Lock()  # the SCP may run handlers on several association threads

    def handle(self, event: evt.Event) -> int:
        try:
            ds = event.dataset
            study_uid = str(ds.get("StudyInstanceUID", ""))
            if study_uid != self.study_uid:
                with self._lock:
                    self.refused += 1
                return 0xA900  # never mix studies
            path = instance_path(self.dest_dir, study_uid, str(event.request.AffectedSOPInstanceUID))
            write_dicom_file(event.encoded_dataset(include_meta=True), path)
        except Exception:  # noqa: BLE001 - a failed write is reported to the sender as a failure status
            log.exception("could not write a received instance")
            return 0xA700
        with self._lock:
            if path not in self.files:
                self.files.append(path)
        return 0x0000
