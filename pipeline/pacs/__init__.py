"""Archives the pipeline reads studies from and writes SEGs to: a folder, a PACS over DIMSE, DICOMweb.

    settings = PacsSettings.from_env()          # SAM2RAD_PACS_KIND, SAM2RAD_PACS_HOST, ...
    archive = open_archive(settings)            # FolderArchive | DimseArchive | DicomWebArchive
    archive.check()                             # PacsError naming the setting to fix
    for study in archive.discover(window):      # StudyRef
        fetched = archive.fetch(study, workdir) # FetchedStudy (local files)
    deliver(seg, archive, Outbox(settings.store_outbox), ledger=..., ...)  # store, or keep for drain()
"""
from pipeline.pacs.base import (
    Archive,
    InstanceRef,
    PacsAccessDenied,
    PacsAssociationRejected,
    PacsConfigError,
    PacsError,
    PacsOperationError,
    PacsUnreachable,
    SegSink,
    StoreResult,
    StudyFilters,
    StudySource,
)
from pipeline.sop_classes import LABEL_MAP_SEGMENTATION_STORAGE, SEG_SOP_CLASSES
from pipeline.pacs.config import ENV, PacsSettings, RetryPolicy, env_name
from pipeline.pacs.dicomweb import DicomWebArchive
from pipeline.pacs.dimse import DimseArchive
from pipeline.pacs.folder import FolderArchive
from pipeline.pacs.outbox import (
    Delivery,
    DeliveryOutcome,
    DrainReport,
    Outbox,
    OutboxItem,
    deliver,
    drain,
    store_with_retry,
)


def open_archive(settings: PacsSettings) -> Archive:
    """The archive the settings describe (SAM2RAD_PACS_KIND: folder, dimse or dicomweb)."""
    if settings.kind == "dimse":
        return DimseArchive(settings)
    if settings.kind == "dicomweb":
        return DicomWebArchive(settings)
    return FolderArchive.from_settings(settings)


__all__ = [
    "ENV",
    "LABEL_MAP_SEGMENTATION_STORAGE",
    "SEG_SOP_CLASSES",
    "Archive",
    "Delivery",
    "DeliveryOutcome",
    "DicomWebArchive",
    "DimseArchive",
    "DrainReport",
    "FolderArchive",
    "InstanceRef",
    "Outbox",
    "OutboxItem",
    "PacsAccessDenied",
    "PacsAssociationRejected",
    "PacsConfigError",
    "PacsError",
    "PacsOperationError",
    "PacsSettings",
    "PacsUnreachable",
    "RetryPolicy",
    "SegSink",
    "StoreResult",
    "StudyFilters",
    "StudySource",
    "deliver",
    "drain",
    "env_name",
    "open_archive",
    "store_with_retry",
]
