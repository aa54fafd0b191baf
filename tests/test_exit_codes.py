"""Issue 16 defect 12: exit codes say what happened, data problems print reasons (no traceback), and the
night's headline counts failed studies."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from pipeline.night_summary import night_summary
from pipeline.studies import DateWindow
from tests import dicom_factory as f

REPO = Path(__file__).resolve().parents[1]
SAM2RAD = Path(sys.executable).parent / "sam2rad"
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "2"}


def test_the_headline_counts_studies_that_failed():
    window = DateWindow(dt.date(2026, 1, 1), dt.date(2026, 1, 1))
    errors = {"1.2.3": "PacsOperationError: x", "1.2.4": "PacsOperationError: y", "1.2.5": "OSError: z"}
    summary = night_summary([], [], 0, 1.0, window, Path("/runs"), False, study_errors=errors)
    assert summary["studies"] == 3 and summary["failed_studies"] == 3
    assert summary["headline"].startswith("3 studies (3 failed)")


def test_run_nightly_exits_1_with_the_headline_when_studies_fail(monkeypatch):
    import flows.nightly
    from flows.cli import app

    summary = {"headline": "4 studies (3 failed), 1 instances segmented", "run_dir": "/runs/x", "failed": 0,
               "failed_studies": 3}

    def failing_night(**kwargs):
        raise flows.nightly.StudiesFailed(summary)

    monkeypatch.setattr(flows.nightly, "nightly", failing_night)
    result = CliRunner().invoke(app, ["run-nightly", "--inbox", "x", "--outbox", "y"])
    assert result.exit_code == 1, result.output
    assert "4 studies (3 failed)" in result.output and "Traceback" not in result.output


def test_help_documents_exit_codes():
    from flows.cli import app

    for command in ("segment", "run-nightly"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Exit status" in result.output and "2 a usage" in result.output


def test_segment_exits_1_for_bad_inputs_and_still_writes_the_good_seg(tmp_path):
    """A batch with a good image, a truncated one, one without BitsAllocated and a FIFO: the good one
    gets its SEG, each bad one a reason, no traceback, exit status 1 (was 0, or a crash of the batch)."""
    inputs = tmp_path / "in"
    f.save(f.us_image(f.grey_image(64, 64)), inputs / "good.dcm")
    f.truncated_file(inputs / "truncated.dcm")
    ds = f.us_image(f.grey_image(64, 64))
    ds["PixelData"].VR = "OB"
    del ds.BitsAllocated
    f.save(ds, inputs / "no_bits.dcm")
    os.mkfifo(inputs / "pipe.dcm")
    out = subprocess.run([str(SAM2RAD), "segment", str(inputs), "--out", str(tmp_path / "segs"), "--threads", "1"],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]
    assert "Traceback" not in text and "does not exist" not in text
    assert "truncated" in text and "BitsAllocated is missing" in text and "not_regular_file" in text
    assert len(list((tmp_path / "segs").glob("*.dcm"))) == 1


def test_run_nightly_dispatch_pool_without_a_server_is_a_usage_error(monkeypatch, tmp_path):
    """--dispatch pool hands chunks to the GPU pool's workers: without a Prefect server it cannot, and says so."""
    from flows.cli import app

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    result = CliRunner().invoke(app, ["run-nightly", "--dispatch", "pool", "--inbox", str(tmp_path)])
    assert result.exit_code == 2 and "needs a Prefect server" in result.output
    result = CliRunner().invoke(app, ["run-nightly", "--dispatch", "shards", "--inbox", str(tmp_path)])
    assert result.exit_code == 2 and "must be local or pool" in result.output
