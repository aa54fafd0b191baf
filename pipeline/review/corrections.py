"""The correction record: per reviewed instance, how far the reader moved the AI's masks and at what cost.

One table per run, `<run>/review/review_corrections.{parquet,csv}`: AI-vs-reviewed Dice and HD95 (mm
when calibrated, else pixels), clicks, seconds, outcome. UIDs, codes and measurements only (no reader
names, no free text, no patient data): it can be shared with whoever audits the model.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.tables import rows_to_frame, write_table
from sam2rad.metrics import evaluate_pair

CORRECTIONS_STEM = "review_corrections"


@dataclass(frozen=True)
class CorrectionRow:
    run_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    outcome: str  # accepted | rejected
    mode: str | None = None  # semi | manual (accepted only)
    dice: float | None = None  # AI (nightly) vs reviewed masks, mean over frames
    hd95: float | None = None
    distance_unit: str | None = None
    frames_changed: int | None = None
    clicks: int = 0
    seconds: float = 0.0
    reason: str | None = None  # coded reject reason
    seg_sop_uid: str | None = None
    decided_at: str | None = None


@dataclass(frozen=True)
class MaskChange:
    dice: float
    hd95: float | None
    unit: str
    frames_changed: int


def mask_change(ai: np.ndarray, reviewed: np.ndarray, spacing_mm: tuple[float, float] | None) -> MaskChange:
    """AI vs reviewed masks (frames, rows, cols, classes): mean per-frame Dice and HD95 over the frames
    where either has foreground (two empty frames agree and are left out)."""
    ai, reviewed = np.asarray(ai, bool), np.asarray(reviewed, bool)
    dices, distances, changed = [], [], 0
    for f in range(ai.shape[0]):
        a, r = ai[f].any(axis=-1), reviewed[f].any(axis=-1)
        changed += int((ai[f] != reviewed[f]).any())
        if not a.any() and not r.any():
            continue
        metrics = evaluate_pair(a, r, spacing_mm)
        dices.append(metrics.dice)
        if np.isfinite(metrics.hd95):
            distances.append(metrics.hd95)
    return MaskChange(dice=float(np.mean(dices)) if dices else 1.0,
                      hd95=float(np.mean(distances)) if distances else (0.0 if not dices else None),
                      unit="mm" if spacing_mm else "px", frames_changed=changed)


def corrections_dir(run_dir: Path) -> Path:
    return run_dir / "review"


def read_corrections(run_dir: Path) -> pd.DataFrame:
    path = corrections_dir(run_dir) / f"{CORRECTIONS_STEM}.parquet"
    return pd.read_parquet(path) if path.is_file() else rows_to_frame([], CorrectionRow)


def append_correction(run_dir: Path, row: CorrectionRow) -> tuple[Path, Path]:
    """Add (or replace, by SOP Instance UID) one row and rewrite the run's table atomically."""
    existing = read_corrections(run_dir)
    rows = [CorrectionRow(**{k: (None if pd.isna(v) else v) for k, v in r.items()})
            for r in existing.to_dict("records") if r["sop_uid"] != row.sop_uid]
    rows = [replace(r, clicks=int(r.clicks), seconds=float(r.seconds)) for r in rows] + [row]
    out = corrections_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_table(rows_to_frame(rows, CorrectionRow), out, CORRECTIONS_STEM)
