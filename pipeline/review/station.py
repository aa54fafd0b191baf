"""The review station: a reader opens a run's instance, corrects it, and accepts (-> reviewed SEG through the
nightly's sink, outbox and ledger) or rejects it; every decision adds a correction row.

Plain Python over the pipeline (no web framework, no prefect): the web app in flows/review/ is a thin
layer over `ReviewStation`, and tests drive this class directly.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.inference import predict_instance, seg_algorithm_for
from pipeline.ingest import UsInstance, iter_frames, read_instance
from pipeline.ledger import Ledger
from pipeline.pacs import Delivery, Outbox, RetryPolicy, SegSink, deliver
from pipeline.review.corrections import CorrectionRow, append_correction, corrections_dir, mask_change
from pipeline.review.decisions import Outcome, RejectReason, ReviewDecision, ReviewDecisions, check_reader
from pipeline.review.editing import InstanceEdit
from pipeline.review.seg_output import ReviewedSegWriter
from pipeline.review.worklist import (
    NightlyRun,
    ReviewNotFound,
    WorklistItem,
    list_runs,
    load_run,
    run_directory,
)
from pipeline.seg import read_seg_masks

log = logging.getLogger(__name__)
MAX_OPEN_EDITS = 16


@dataclass
class OpenEdit:
    edit_id: str
    run: NightlyRun
    item: WorklistItem
    instance: UsInstance
    edit: InstanceEdit
    opened_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class AcceptResult:
    decision: ReviewDecision
    seg_sop_uid: str
    seg_series_uid: str
    seg_path: Path
    delivery: str  # stored | kept-in-outbox | skipped
    message: str


@dataclass(frozen=True)
class Progress:
    reviewed: int
    to_do: int
    needs_review: int


class ReviewStation:
    def __init__(self, runs_dir: Path, model, sink: SegSink, outbox: Outbox, *, ledger_path: Path | None = None,
                 confidence_threshold: float | None = None, policy: RetryPolicy = RetryPolicy(),
                 prompts_type=None) -> None:
        self.runs_dir = Path(runs_dir)
        self.model, self.sink, self.outbox, self.policy = model, sink, outbox, policy
        self.ledger_path = Path(ledger_path) if ledger_path else self.runs_dir / "ledger.sqlite"
        self.decisions = ReviewDecisions(self.ledger_path)
        self.confidence_threshold = confidence_threshold
        if prompts_type is None:
            from sam2rad.model import Prompts as prompts_type
        self.prompts_type = prompts_type
        self._edits: OrderedDict[str, OpenEdit] = OrderedDict()
        self._lock = threading.RLock()  # the model and the edits are used by one request at a time
        if hasattr(model, "cache_size"):
            model.cache_size = max(int(model.cache_size), 64)  # a cine's frames stay encoded while scrubbed

    # -- runs and worklist ---------------------------------------------------------------------
    def runs(self) -> list[str]:
        return list_runs(self.runs_dir)

    def run(self, run_id: str) -> NightlyRun:
        return load_run(run_directory(self.runs_dir, run_id), self.confidence_threshold,
                        self.decisions.statuses(run_id))

    @staticmethod
    def progress(run: NightlyRun) -> Progress:
        reviewed = sum(i.status in ("accepted", "rejected") for i in run.items)
        return Progress(reviewed, len(run.items) - reviewed, sum(i.needs_review for i in run.items))

    # -- one instance ----------------------------------------------------------------------------
    def open(self, run_id: str, sop_uid: str) -> OpenEdit:
        run = self.run(run_id)
        item = run.item(sop_uid)
        source = Path(item.source_path)
        if not source.is_file():
            raise ReviewNotFound(f"the source of {sop_uid} is not readable here (the review station reads "
                                 "folder archives)")
        instance = read_instance(source)
        if not isinstance(instance, UsInstance) or instance.sop_uid != sop_uid:
            raise ReviewNotFound(f"the source file of {sop_uid} no longer holds that instance")
        with self._lock:
            frames = list(iter_frames(instance))
            ai_masks = self._ai_masks(run, item, instance)
            edit = InstanceEdit(sop_uid, frames, ai_masks, self.model, self.prompts_type)
            opened = OpenEdit(secrets.token_urlsafe(12), run, item, instance, edit)
            self._edits[opened.edit_id] = opened
            while len(self._edits) > MAX_OPEN_EDITS:
                self._edits.popitem(last=False)
        return opened

    def _ai_masks(self, run: NightlyRun, item: WorklistItem, instance: UsInstance) -> np.ndarray:
        """The nightly's masks, read back from its SEG; predicted again only when that SEG is gone."""
        expected = (instance.n_frames, instance.rows, instance.cols, len(self.model.class_names))
        seg_path = run.seg_path(item)
        if seg_path is not None:
            try:
                masks = read_seg_masks(seg_path, instance.sop_uid)
                if masks.shape == expected:
                    return masks
            except Exception as exc:  # noqa: BLE001 - fall back to the model
                log.warning("nightly SEG %s unreadable (%s); predicting again", item.seg_sop_uid, type(exc).__name__)
        masks, _, _ = predict_instance(instance, self.model)
        return masks

    def edit(self, edit_id: str) -> OpenEdit:
        with self._lock:
            if edit_id not in self._edits:
                raise ReviewNotFound("unknown or expired edit: open the instance again")
            return self._edits[edit_id]

    def locked(self):
        """Hold while calling the model through an edit (clicks, boxes, undo, masks)."""
        return self._lock

    # -- decisions -------------------------------------------------------------------------------
    def _row(self, opened: OpenEdit, decision: ReviewDecision, **values) -> CorrectionRow:
        item = opened.item
        return CorrectionRow(run_id=opened.run.run_id, study_uid=item.study_uid, series_uid=item.series_uid,
                             sop_uid=item.sop_uid, outcome=decision.outcome.value, clicks=opened.edit.corrections,
                             seconds=round(time.monotonic() - opened.opened_at, 3), decided_at=decision.decided_at,
                             **values)

    def accept(self, edit_id: str, reader: str) -> AcceptResult:
        """Write the reviewed SEG and store it like a nightly SEG (sink, else the outbox; ledger)."""
        check_reader(reader)
        opened = self.edit(edit_id)
        run_id, item, edit = opened.run.run_id, opened.item, opened.edit
        mode = edit.state.mode
        decision = self.decisions.decide(run_id, item.sop_uid, item.study_uid, Outcome.CLAIMED, reader, mode=mode)
        try:
            with self._lock:
                masks = edit.all_masks()
            algorithm = seg_algorithm_for(self.model, mode)
            seg_dir = corrections_dir(opened.run.directory) / "segs" / item.study_uid
            seg_dir.mkdir(parents=True, exist_ok=True)
            written = ReviewedSegWriter(algorithm, reader).write(opened.instance, masks, seg_dir)
            outcome = deliver(written.path, self.sink, self.outbox, ledger=Ledger(self.ledger_path),
                              source_sop_uid=item.sop_uid, fingerprint=algorithm.fingerprint, policy=self.policy)
        except BaseException:
            self.decisions.release_claim(run_id, item.sop_uid)
            raise
        decision = self.decisions.complete_accept(run_id, item.sop_uid, written.sop_uid)
        calibration = opened.instance.calibration
        spacing = ((calibration.row_spacing_mm, calibration.column_spacing_mm)
                   if calibration.is_calibrated else None)
        change = mask_change(edit.ai_masks, masks, spacing)
        append_correction(opened.run.directory, self._row(
            opened, decision, mode=mode, dice=change.dice, hd95=change.hd95, distance_unit=change.unit,
            frames_changed=change.frames_changed, seg_sop_uid=written.sop_uid))
        message = {Delivery.STORED: "reviewed SEG stored",
                   Delivery.KEPT: "the archive did not answer: the reviewed SEG waits in the outbox and is "
                                  "stored by the next run",
                   Delivery.SKIPPED: "a reviewed SEG of this instance by this model is already stored; not "
                                     "stored again"}[outcome.delivery]
        log.info("review %s: accepted (%s), SEG %s %s", item.sop_uid, mode, written.sop_uid, outcome.delivery.value)
        with self._lock:
            self._edits.pop(edit_id, None)
        return AcceptResult(decision, written.sop_uid, written.series_uid, written.path, outcome.delivery.value,
                            message)

    def reject(self, edit_id: str, reader: str, reason: str = RejectReason.OTHER.value) -> ReviewDecision:
        reason = RejectReason(reason).value
        opened = self.edit(edit_id)
        item = opened.item
        decision = self.decisions.decide(opened.run.run_id, item.sop_uid, item.study_uid, Outcome.REJECTED,
                                         reader, reason=reason)
        append_correction(opened.run.directory, self._row(opened, decision, reason=reason))
        log.info("review %s: rejected (%s)", item.sop_uid, reason)
        with self._lock:
            self._edits.pop(edit_id, None)
        return decision
