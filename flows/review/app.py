"""The review station's web app: a thin FastAPI layer over pipeline.review.ReviewStation.

URLs carry run folder names, SOP Instance UIDs and random edit ids only (no patient data). Every
state change is a POST (see flows/review/security.py for the rules).
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from pydantic import BaseModel, Field, field_validator

from flows.review.security import ReviewGuard, csrf_meta, new_csrf_token
from pipeline.review import (
    AlreadyReviewed,
    RejectReason,
    ReviewInputError,
    ReviewNotFound,
    ReviewStation,
)
from pipeline.review.decisions import check_reader
from pipeline.review.worklist import WorklistItem

STATIC = Path(__file__).parent / "static"
UID = r"^[0-9][0-9.]{0,63}$"
STATUS_FILTERS = ("all", "needs-review", "to-do", "accepted", "rejected")


class FrameBody(BaseModel):
    frame: int = Field(1, ge=1, le=10_000)


class ClickBody(FrameBody):
    x: float
    y: float
    foreground: bool = True
    edge: bool = False  # move the nearest edge of the whole surface to the click
    end: bool = False  # the surface ends at the click
    shift: bool = False  # the nearest edge goes to the click, the whole surface with it

    @field_validator("x", "y")
    @classmethod
    def finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("coordinates must be finite numbers")
        return v


class BoxBody(FrameBody):
    x0: float
    y0: float
    x1: float
    y1: float


class ReaderBody(BaseModel):
    reader: str = Field(..., min_length=1, max_length=64)

    @field_validator("reader")
    @classmethod
    def valid_reader(cls, v: str) -> str:
        return check_reader(v)


class RejectBody(ReaderBody):
    reason: Literal[tuple(r.value for r in RejectReason)] = RejectReason.OTHER.value  # type: ignore[valid-type]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def _item_json(item: WorklistItem) -> dict:
    return {"sop_uid": item.sop_uid, "study_uid": item.study_uid, "n_frames": item.n_frames,
            "confidence": item.confidence, "confidence_floor": item.confidence_floor,
            "frames_with_mask": item.frames_with_mask,
            "reasons": list(item.reasons), "needs_review": item.needs_review, "status": item.status}


def create_app(station: ReviewStation, *, token: str | None = None,
               allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")) -> FastAPI:
    csrf_token = new_csrf_token()
    app = FastAPI(title="Sam2Rad review station", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(ReviewGuard, token=token, csrf_token=csrf_token, allowed_hosts=allowed_hosts)
    page = (STATIC / "index.html").read_text(encoding="utf-8").replace("__CSRF_TOKEN__", csrf_meta(csrf_token))

    def call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ReviewNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except AlreadyReviewed as exc:
            raise HTTPException(409, str(exc)) from None
        except ReviewInputError as exc:
            raise HTTPException(422, str(exc)) from None

    def mask_json(edit_id: str, frame: int) -> dict:
        opened = call(station.edit, edit_id)
        with station.locked():
            mask = call(opened.edit.mask, frame).any(axis=-1)
            edit = opened.edit
            return {"frame": frame, "mask_png": base64.b64encode(_png(mask.astype(np.uint8) * 255)).decode(),
                    "pixels": int(mask.sum()), "mode": edit.state.mode, "corrections": edit.corrections,
                    "can_undo": edit.can_undo, "can_redo": edit.can_redo,
                    "prompts": [{"x": c.x, "y": c.y, "foreground": c.foreground, "edge": c.edge, "end": c.end,
                                 "shift": c.shift}
                                for c in edit.state.prompts(frame).clicks],
                    "box": edit.state.prompts(frame).box}

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                                                      "style-src 'self' 'unsafe-inline'"})

    @app.get("/static/review.js")
    def script() -> Response:
        return Response((STATIC / "review.js").read_bytes(), media_type="text/javascript")

    @app.get("/api/runs")
    def runs() -> dict:
        return {"runs": station.runs()}

    @app.get("/api/runs/{run_id}/worklist")
    def worklist(run_id: str, status: str = "all") -> dict:
        if status not in STATUS_FILTERS:
            raise HTTPException(422, f"status must be one of {STATUS_FILTERS}")
        run = call(station.run, run_id)
        progress = station.progress(run)
        items = [i for i in run.items if status == "all" or (status == "needs-review" and i.needs_review
                                                              and i.status == "to-do") or i.status == status]
        # threshold: the reader's override; null when each item is held to its model's floor
        return {"run_id": run_id, "threshold": station.confidence_threshold,
                "progress": {"reviewed": progress.reviewed, "to_do": progress.to_do,
                             "needs_review": progress.needs_review},
                "items": [_item_json(i) for i in items]}

    @app.post("/api/runs/{run_id}/instances/{sop_uid}/open")
    def open_instance(run_id: str, sop_uid: str) -> dict:
        opened = call(station.open, run_id, sop_uid)
        frame = opened.edit.frame(1)
        b = frame.crop_bounds
        cal = opened.instance.calibration
        return {"edit_id": opened.edit_id, "item": _item_json(opened.item), "n_frames": len(opened.edit.frames),
                "rows": frame.image.shape[0], "cols": frame.image.shape[1],
                "region": [b.min_x0, b.min_y0, b.max_x1, b.max_y1], "box": opened.item.box,
                "spacing_mm": [cal.row_spacing_mm, cal.column_spacing_mm] if cal.is_calibrated else None}

    @app.get("/api/edits/{edit_id}/frames/{frame}/image")
    def frame_image(edit_id: str, frame: int) -> Response:
        opened = call(station.edit, edit_id)
        image = call(opened.edit.frame, frame).image
        return Response(_png(image), media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @app.get("/api/edits/{edit_id}/frames/{frame}/mask")
    def frame_mask(edit_id: str, frame: int) -> dict:
        return mask_json(edit_id, frame)

    @app.post("/api/edits/{edit_id}/warm")
    def warm(edit_id: str, body: FrameBody) -> dict:
        opened = call(station.edit, edit_id)
        with station.locked():
            call(opened.edit.warm, body.frame)
        return {"frame": body.frame, "encoded": True}

    @app.post("/api/edits/{edit_id}/click")
    def click(edit_id: str, body: ClickBody) -> dict:
        opened = call(station.edit, edit_id)
        with station.locked():
            call(opened.edit.click, body.frame, body.x, body.y, body.foreground, body.edge, body.end, body.shift)
        return mask_json(edit_id, body.frame)

    @app.post("/api/edits/{edit_id}/box")
    def box(edit_id: str, body: BoxBody) -> dict:
        opened = call(station.edit, edit_id)
        with station.locked():
            call(opened.edit.draw_box, body.frame, body.x0, body.y0, body.x1, body.y1)
        return mask_json(edit_id, body.frame)

    @app.post("/api/edits/{edit_id}/accept")
    def accept(edit_id: str, body: ReaderBody) -> dict:
        result = call(station.accept, edit_id, body.reader)
        return {"outcome": "accepted", "seg_sop_uid": result.seg_sop_uid, "seg_series_uid": result.seg_series_uid,
                "delivery": result.delivery, "message": result.message, "decided_at": result.decision.decided_at}

    @app.post("/api/edits/{edit_id}/reject")
    def reject(edit_id: str, body: RejectBody) -> dict:
        decision = call(station.reject, edit_id, body.reader, body.reason)
        return {"outcome": "rejected", "reason": decision.reason, "decided_at": decision.decided_at,
                "message": "rejected: no SEG written"}

    # After accept/reject: a path parameter route would otherwise take their paths.
    @app.post("/api/edits/{edit_id}/{action}")
    def history(edit_id: str, action: Literal["undo", "redo", "scratch"], body: FrameBody) -> dict:
        opened = call(station.edit, edit_id)
        with station.locked():
            {"undo": opened.edit.undo, "redo": opened.edit.redo, "scratch": opened.edit.start_from_scratch}[action]()
        return mask_json(edit_id, body.frame)

    return app
