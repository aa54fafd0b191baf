"""Audit written DICOM-SEG objects against reference labels: Dice, IoU, HD95 and ASSD per frame,
instance and study, tables (Parquet + CSV) and a self-contained HTML report.

`run_audit(seg_dir, reference_dir, output_dir)` is the whole audit as one call (a Prefect flow wraps
it; nothing here imports prefect). The data path:

    SEG files (seg_dir) --source SOP Instance UID--> reference labels (reference_dir)
        -> per frame and class: sam2rad.metrics.evaluate_pair -> instance mean -> study mean/min
        -> flagged = study mean Dice < threshold -> tables + report

One SEG per source instance enters the Dice means (`seg_roles.py`): the newest AI (AUTOMATIC) SEG.
A reader's reviewed SEG (SEMIAUTOMATIC/MANUAL, stored through the same sink) is scored against the
reference but reported apart (status `reviewed`); an older AI SEG of the same source is `superseded`.
When `run_dir` holds the review station's correction table, the report gains an "AI vs reader" section.

References are `<SOPInstanceUID>.npz` files (`mask`: frames x rows x cols [x classes] bool,
optional `spacing_mm` (row, col), optional `frame_numbers` (1-based source frames the mask rows are)
and `class_names`), or DICOM SEG files citing the same source instance (e.g. a reader's corrected
segmentation); the two SEGs are then compared frame by frame.

Distances are in mm when a pixel spacing is known, taken from (first found) the reference NPZ,
the source instance's ultrasound calibration (`source_dir`), the audited SEG's Pixel Measures, the
reference SEG's Pixel Measures; otherwise in pixels. The `unit` and `spacing_source` columns say
which. Tables, report and logs carry UIDs, counts and measurements only, never patient names, IDs
or birth dates.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from pipeline.audit.aggregation import study_rows, summarise
from pipeline.audit.comparison import ComparedPair, error_text, instance_row, load_pair, score_pair
from pipeline.audit.reader_review import reader_review, reader_section
from pipeline.audit.references import Reference, find_references, find_segs
from pipeline.audit.rows import (
    DEFAULT_DICE_THRESHOLD,
    DEFAULT_WORST_CASES,
    AuditFrameRow,
    AuditInstanceRow,
    AuditStudyRow,
    ComparisonStatus,
)
from pipeline.audit.seg_roles import SegRole, seg_roles
from pipeline.audit.worst_cases import worst_cases
from pipeline.ingest import UsInstance, ingest
from pipeline.seg.header import SegHeader
from pipeline.tables import rows_to_frame, write_table
from sam2rad.atomic_files import replace_atomically

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditResult:
    """What an audit wrote and found. Paths are under output_dir."""

    instances_parquet: Path
    instances_csv: Path
    studies_parquet: Path
    studies_csv: Path
    frames_parquet: Path
    frames_csv: Path
    summary_json: Path
    report_html: Path
    plots_dir: Path
    threshold: float
    n_segs: int  # SEG files audited
    n_matched: int  # source instances compared with a reference
    n_missing_reference: int  # source instances a SEG cites that have no reference
    n_missing_seg: int  # references no audited SEG cites
    n_failed: int  # pairs that could not be compared (see the instance table's error column)
    n_flagged_studies: int
    summary: dict[str, float | int | str | None]
    flagged_study_uids: tuple[str, ...]
    missing_reference_uids: tuple[str, ...]  # source SOP Instance UIDs
    missing_seg_uids: tuple[str, ...]  # source SOP Instance UIDs

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (paths as strings), e.g. a flow's return value."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else (list(value) if isinstance(value, tuple) else value)
        return out

    def markdown(self) -> str:
        """A short Markdown summary (UIDs and counts only), e.g. for a Prefect artifact."""
        s = self.summary

        def fmt(v: object, digits: int = 3) -> str:
            return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

        unit = s.get("distance_unit") or ""
        lines = [
            "# Sam2Rad Dice audit",
            "",
            "| | |", "|---|---|",
            f"| SEGs audited | {self.n_segs} |",
            f"| instances compared | {self.n_matched} |",
            f"| SEGs without reference | {self.n_missing_reference} |",
            f"| references without SEG | {self.n_missing_seg} |",
            f"| failed comparisons | {self.n_failed} |",
            f"| mean / median Dice | {fmt(s.get('dice_mean'))} / {fmt(s.get('dice_median'))} |",
            f"| mean / median IoU | {fmt(s.get('iou_mean'))} / {fmt(s.get('iou_median'))} |",
            f"| mean / median HD95 ({unit}) | {fmt(s.get('hd95_mean'), 2)} / {fmt(s.get('hd95_median'), 2)} |",
            f"| mean / median ASSD ({unit}) | {fmt(s.get('assd_mean'), 2)} / {fmt(s.get('assd_median'), 2)} |",
            f"| studies below Dice {self.threshold:g} | {self.n_flagged_studies} |",
        ]
        if s.get("n_reviewed_segs") or s.get("n_superseded_segs"):
            lines.append(f"| reviewed / superseded SEGs (not in the means) | {s.get('n_reviewed_segs')} / "
                         f"{s.get('n_superseded_segs')} |")
        if s.get("reader_n_reviewed"):
            lines += [
                f"| reader reviews: accepted / rejected | {s['reader_n_accepted']} / {s['reader_n_rejected']} |",
                f"| AI vs reader Dice mean / median | {fmt(s.get('reader_dice_mean'))} / "
                f"{fmt(s.get('reader_dice_median'))} |",
                f"| clicks per accepted review / s per review | {fmt(s.get('reader_clicks_per_accepted'), 1)} / "
                f"{fmt(s.get('reader_seconds_per_review_mean'), 0)} |"]
        if self.flagged_study_uids:
            lines += ["", "Flagged studies:", ""] + [f"- `{uid}`" for uid in self.flagged_study_uids]
        lines += ["", f"Report: `{self.report_html}`"]
        return "\n".join(lines)


def _folder(value: str | os.PathLike[str], what: str) -> Path:
    if value is None:
        raise ValueError(f"{what} is required")
    path = Path(value)
    if not path.exists():
        raise ValueError(f"{what} does not exist: {path}")
    if not path.is_dir():
        raise ValueError(f"{what} is not a folder: {path}")
    return path


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def run_audit(
    seg_dir: str | os.PathLike[str],
    reference_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    threshold: float = DEFAULT_DICE_THRESHOLD,
    source_dir: str | os.PathLike[str] | None = None,
    *,
    n_worst: int = DEFAULT_WORST_CASES,
    show_images: bool = True,
    stem: str = "audit",
    run_dir: str | os.PathLike[str] | None = None,
) -> AuditResult:
    """Audit every SEG under seg_dir against the references under reference_dir.

    Writes into output_dir: <stem>_instances / _studies / _frames as .parquet and .csv,
    <stem>_summary.json, <stem>_report.html (self-contained) and the report's plots as PNG under
    plots/. `source_dir` (optional) holds the source instances: their ultrasound calibration gives
    the spacing when the reference has none, and the report's overlays show the image.
    A study is flagged when the mean Dice of its compared instances is below `threshold`.
    The report shows the `n_worst` lowest-Dice instances; `show_images=False` draws their masks
    without the source image (the image is always limited to its imaging region, see OverlayCase).
    `run_dir` (optional): the nightly run folder; its review/ correction table, when there is one,
    gives the report's "AI vs reader" section and the summary's `reader_*` keys.
    """
    seg_root = _folder(seg_dir, "seg_dir")
    ref_root = _folder(reference_dir, "reference_dir")
    src_root = _folder(source_dir, "source_dir") if source_dir is not None else None
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold is a Dice value in [0, 1], got {threshold}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    segs, seen = [], set()
    for seg in find_segs(seg_root):  # one SEG file per SOP Instance UID (copies at other paths are left out)
        if seg.sop_uid not in seen:
            seen.add(seg.sop_uid)
            segs.append(seg)
    roles = seg_roles(segs)
    references = find_references(ref_root, exclude_sop_uids={s.sop_uid for s in segs})
    sources: dict[str, UsInstance] = {}
    if src_root is not None:
        sources = {i.sop_uid: i for i in ingest([src_root]).instances}
    log.info("audit: %d SEG(s), %d reference(s), %d source instance(s)", len(segs), len(references), len(sources))

    instance_rows: list[AuditInstanceRow] = []
    frame_rows: list[AuditFrameRow] = []
    cited: set[str] = set()
    pair_inputs: dict[tuple[str, str], tuple[SegHeader, Reference]] = {}
    for seg in segs:
        if not seg.source_sop_uids:
            instance_rows.append(instance_row(seg, "", seg.study_uid, None, ComparisonStatus.FAILED,
                                               "the SEG cites no source instance"))
            continue
        for source_uid in seg.source_sop_uids:
            cited.add(source_uid)
            study_uid = seg.study_uid or (sources[source_uid].study_uid if source_uid in sources else None)
            reference = references.get(source_uid)
            role, newer = roles[(seg.sop_uid, source_uid)]
            if role is SegRole.SUPERSEDED:
                instance_rows.append(instance_row(seg, source_uid, study_uid, reference, ComparisonStatus.SUPERSEDED,
                                                   f"a newer AI SEG of this source is audited: {newer}"))
                continue
            if role is SegRole.REVIEWED and reference is None:
                instance_rows.append(instance_row(seg, source_uid, study_uid, None, ComparisonStatus.REVIEWED,
                                                   "no reference label"))
                continue
            if reference is None:
                instance_rows.append(instance_row(seg, source_uid, study_uid, None, ComparisonStatus.MISSING_REFERENCE))
                continue
            try:
                pair = load_pair(seg, source_uid, reference, sources.get(source_uid))
                scored = score_pair(pair, study_uid, source_uid, seg.sop_uid)
            except Exception as exc:  # noqa: BLE001 - one bad pair must not stop the audit
                log.warning("audit: SEG %s vs reference for %s failed: %s", seg.sop_uid, source_uid,
                            type(exc).__name__)
                instance_rows.append(instance_row(seg, source_uid, study_uid, reference, ComparisonStatus.FAILED,
                                                   error_text(exc)))
                continue
            if role is SegRole.REVIEWED:  # scored, but kept out of the frame table and the means
                instance_rows.append(instance_row(seg, source_uid, study_uid, reference, ComparisonStatus.REVIEWED,
                                                   pair=pair, frames=scored))
                continue
            frame_rows.extend(scored)
            instance_rows.append(instance_row(seg, source_uid, study_uid, reference, ComparisonStatus.OK, pair=pair,
                                               frames=scored))
            pair_inputs[(seg.sop_uid, source_uid)] = (seg, reference)
    for source_uid, reference in sorted(references.items()):
        if source_uid not in cited:
            study_uid = (sources[source_uid].study_uid if source_uid in sources
                         else (reference.seg.study_uid if reference.seg else None))
            instance_rows.append(instance_row(None, source_uid, study_uid, reference, ComparisonStatus.MISSING_SEG))

    instance_rows.sort(key=lambda r: (r.study_uid or "", r.source_sop_uid, r.seg_sop_uid or ""))
    studies = study_rows(instance_rows, float(threshold))
    summary = summarise(instance_rows)
    flagged = tuple(s.study_uid for s in studies if s.flagged)
    missing_reference = tuple(r.source_sop_uid for r in instance_rows if r.status == ComparisonStatus.MISSING_REFERENCE)
    missing_seg = tuple(r.source_sop_uid for r in instance_rows if r.status == ComparisonStatus.MISSING_SEG)
    n_failed = sum(r.status == ComparisonStatus.FAILED for r in instance_rows)
    n_matched = sum(r.status == ComparisonStatus.OK for r in instance_rows)
    reviewed = [r for r in instance_rows if r.status == ComparisonStatus.REVIEWED]
    reader = reader_review(Path(run_dir), instance_rows) if run_dir is not None else None
    summary.update(reader.summary if reader else {})
    summary.update(n_segs=len(segs), n_reviewed_segs=len(reviewed),
                   n_superseded_segs=sum(r.status == ComparisonStatus.SUPERSEDED for r in instance_rows),
                   n_missing_reference=len(missing_reference), n_missing_seg=len(missing_seg),
                   n_failed=n_failed, n_studies=len(studies), n_flagged_studies=len(flagged),
                   threshold=float(threshold))

    instances_frame = rows_to_frame(instance_rows, AuditInstanceRow)
    studies_frame = rows_to_frame(studies, AuditStudyRow)
    frames_frame = rows_to_frame(frame_rows, AuditFrameRow)
    instances_parquet, instances_csv = write_table(instances_frame, out, f"{stem}_instances")
    studies_parquet, studies_csv = write_table(studies_frame, out, f"{stem}_studies")
    frames_parquet, frames_csv = write_table(frames_frame, out, f"{stem}_frames")
    summary_json = out / f"{stem}_summary.json"
    payload = {k: _json_safe(v) for k, v in summary.items()} | {
        "flagged_study_uids": list(flagged), "missing_reference_uids": list(missing_reference),
        "missing_seg_uids": list(missing_seg)}
    replace_atomically(lambda p: p.write_text(json.dumps(payload, indent=2)), summary_json)

    def reload(row: AuditInstanceRow) -> ComparedPair:
        seg, reference = pair_inputs[(str(row.seg_sop_uid), row.source_sop_uid)]
        return load_pair(seg, row.source_sop_uid, reference, sources.get(row.source_sop_uid))

    cases = worst_cases(instance_rows, frame_rows, reload, sources, n_worst, show_images)
    from pipeline.audit.report import write_report  # matplotlib is loaded only when a report is drawn

    plots_dir = out / "plots"
    report_html = write_report(out / f"{stem}_report.html", instances=instances_frame, studies=studies_frame,
                               summary=summary, threshold=float(threshold), cases=cases, plots_dir=plots_dir,
                               extra_html=reader_section(reader))
    log.info("audit: %d compared, %d without reference, %d without SEG, %d failed, %d of %d studies flagged "
             "(threshold %.2f)", n_matched, len(missing_reference), len(missing_seg), n_failed, len(flagged),
             len(studies), threshold)
    return AuditResult(
        instances_parquet=instances_parquet, instances_csv=instances_csv,
        studies_parquet=studies_parquet, studies_csv=studies_csv,
        frames_parquet=frames_parquet, frames_csv=frames_csv,
        summary_json=summary_json, report_html=report_html, plots_dir=plots_dir,
        threshold=float(threshold), n_segs=len(segs), n_matched=n_matched,
        n_missing_reference=len(missing_reference), n_missing_seg=len(missing_seg), n_failed=n_failed,
        n_flagged_studies=len(flagged), summary=summary, flagged_study_uids=flagged,
        missing_reference_uids=missing_reference, missing_seg_uids=missing_seg,
    )
