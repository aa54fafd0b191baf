"""The Dice audit flow: SEGs against reference labels -> per-instance/study tables + HTML report."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.audit.rows import DEFAULT_DICE_THRESHOLD
from pipeline.audit.run import run_audit

SUMMARY_ARTIFACT = "sam2rad-audit-summary"


@task(name="audit-segs", cache_policy=NO_CACHE)
def audit_segs(seg_dir: str, reference_dir: str, output_dir: str, threshold: float, source_dir: str | None):
    # output_dir is <run>/audit: the run folder's review/ correction table, if any, feeds "AI vs reader".
    return run_audit(Path(seg_dir), Path(reference_dir), Path(output_dir), threshold=threshold,
                     source_dir=Path(source_dir) if source_dir else None, run_dir=Path(output_dir).parent)


@flow(name="sam2rad-audit", log_prints=True)
def audit(seg_dir: str, reference_dir: str, output_dir: str = "runs", threshold: float = DEFAULT_DICE_THRESHOLD,
          source_dir: str | None = None) -> dict:
    """Dice, IoU, HD95 and ASSD (mm) of every SEG in seg_dir against reference labels (reference SEGs
    or <SOPInstanceUID>.npz masks); studies below `threshold` mean Dice are flagged."""
    result = audit_segs(seg_dir, reference_dir, str(Path(output_dir) / "audit"), threshold, source_dir)
    create_markdown_artifact(key=SUMMARY_ARTIFACT, markdown=result.markdown(), description="Dice audit summary")
    create_link_artifact(key="sam2rad-audit-report", link=Path(result.report_html).resolve().as_uri(),
                         link_text="Dice audit HTML report")
    get_run_logger().info("audit: %d SEGs matched to references, mean Dice %s, studies flagged (mean Dice < %g): "
                          "%d; report %s", result.n_matched, result.summary.get("dice_mean"), threshold,
                          result.n_flagged_studies, result.report_html)
    return result.as_dict()
