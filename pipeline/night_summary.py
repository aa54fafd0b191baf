"""What a night did, in one dict (the flow's return value) and in Markdown (its Prefect artifact).

Counts, UIDs and paths only: no patient data.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline.run_tables import InstanceMetrics, RowStatus
from pipeline.study_processing import StudyResult
from pipeline.studies import DateWindow, RejectedFile


def night_summary(results: list[StudyResult], rows: list[InstanceMetrics], drained: int, seconds: float,
                  window: DateWindow, run_dir: Path, dry_run: bool, rejected: Sequence[RejectedFile] = (),
                  study_errors: dict[str, str] | None = None) -> dict:
    """`results` are the studies that finished; `study_errors` those that could not be processed (they
    count as studies, and as failed ones)."""
    study_errors = study_errors or {}
    n_studies = len(results) + len(study_errors)
    ok = [r for r in rows if r.status == RowStatus.OK.value]
    failed = [r for r in rows if r.status == RowStatus.FAILED.value]
    skipped = [r for r in rows if r.status == RowStatus.SKIPPED.value]
    frames = sum(res.frames for res in results)
    seg_seconds = sum(res.seconds for res in results)
    stored = sum(res.stored for res in results)
    done_before = sum(res.already_done for res in results)
    headline = (f"{n_studies} studies" + (f" ({len(study_errors)} failed)" if study_errors else "")
                + f", {len(ok)} instances segmented, {len(failed)} failed, {len(skipped)} "
                f"skipped; {stored} SEGs stored new, {drained} from earlier outbox"
                + (f"; {len(rejected)} files rejected" if rejected else "")
                + (f"; nothing new to store ({done_before} instances already done)" if stored == 0 and not dry_run else "")
                + (" [dry run: nothing written]" if dry_run else ""))
    return {
        "headline": headline, "window": window.dicom_range(), "run_dir": str(run_dir),
        "studies": n_studies, "failed_studies": len(study_errors), "study_errors": dict(study_errors),
        "instances": len(rows), "succeeded": len(ok), "failed": len(failed),
        "skipped": len(skipped), "already_done": done_before, "stored": stored,
        "kept_in_outbox": sum(res.kept_in_outbox for res in results), "drained": drained,
        "studies_from_cache": sum(1 for res in results if res.from_cache), "frames": frames,
        "seconds": round(seconds, 1),
        "images_per_second": round(frames / seg_seconds, 3) if seg_seconds else 0.0,
        "failures": [{"sop_uid": r.sop_uid, "code": r.error_code, "reason": r.error} for r in failed],
        "seg_files": [p for res in results for p in res.seg_paths],
        "rejected": [{"path": r.path, "code": r.code, "reason": r.reason} for r in rejected],
    }


def summary_markdown(summary: dict) -> str:
    lines = [f"# Sam2Rad nightly {summary['window']}", "", summary["headline"], "",
             "| studies | instances | succeeded | failed | skipped | already done | stored | runtime (s) | images/s |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {summary['studies']} | {summary['instances']} | {summary['succeeded']} | {summary['failed']} | "
             f"{summary['skipped']} | {summary['already_done']} | {summary['stored']} | {summary['seconds']} | "
             f"{summary['images_per_second']} |", ""]
    if summary["failures"]:
        lines += ["## Failures", "", "| SOP Instance UID | code | reason |", "|---|---|---|"]
        lines += [f"| {f['sop_uid']} | {f['code']} | {str(f['reason']).replace('|', '/')[:200]} |"
                  for f in summary["failures"]]
    if summary.get("study_errors"):
        lines += ["", "## Studies that could not be processed", "", "| Study Instance UID | error |", "|---|---|"]
        lines += [f"| {uid} | {str(err).replace('|', '/')[:200]} |" for uid, err in summary["study_errors"].items()]
    if summary.get("rejected"):
        lines += ["", f"## Files rejected ({len(summary['rejected'])})", "", "| file | code | reason |", "|---|---|---|"]
        lines += [f"| {r['path']} | {r['code']} | {r['reason']} |" for r in summary["rejected"][:100]]
    lines += ["", f"{summary['studies_from_cache']} studies skipped from the cache (finished on an earlier night).",
              "", f"Tables and SEGs: `{summary['run_dir']}`"]
    return "\n".join(lines)
