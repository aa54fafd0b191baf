"""The `sam2rad` command line (console script; also `python -m flows`), one module per command group:
`runs` (demo, run-nightly, audit), `segment` (one-off DICOM -> SEG), `model` (train, evaluate).

Heavy imports happen inside each command, so `sam2rad --help` is instant and `sam2rad train` never
loads Prefect or DICOM libraries.
"""
from __future__ import annotations

import typer

from flows.cli import model, review, runs, segment
from flows.runtime import apply_prefect_defaults

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Sam2Rad Pipeline: autonomous ultrasound bone segmentation -> DICOM-SEG -> PACS.")
app.command("demo")(runs.demo)
app.command("run-nightly")(runs.run_nightly)
app.command("audit")(runs.audit)
app.command("segment")(segment.segment)
app.command("train")(model.train)
app.command("evaluate")(model.evaluate)
app.command("review")(review.review)


def main() -> None:
    apply_prefect_defaults()  # before any command imports Prefect
    app()
