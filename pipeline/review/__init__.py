"""Readers in the loop: a run's worklist, corrections (semi / manual), accept -> reviewed SEG through the
nightly's sink, outbox and ledger, reject, and the correction record. No web framework, no prefect."""
from pipeline.review.corrections import CorrectionRow, mask_change, read_corrections
from pipeline.review.decisions import AlreadyReviewed, Outcome, RejectReason, ReviewDecision, ReviewDecisions
from pipeline.review.editing import InstanceEdit, ReviewInputError
from pipeline.review.station import AcceptResult, OpenEdit, ReviewStation
from pipeline.review.worklist import NightlyRun, ReviewNotFound, WorklistItem, list_runs, load_run

__all__ = [
    "AcceptResult", "AlreadyReviewed", "CorrectionRow", "InstanceEdit", "NightlyRun", "OpenEdit", "Outcome",
    "RejectReason", "ReviewDecision", "ReviewDecisions", "ReviewInputError", "ReviewNotFound", "ReviewStation",
    "WorklistItem", "list_runs", "load_run", "mask_change", "read_corrections",
]
