"""`sam2rad review`: the review station web app over a nightly run's outputs and ledger."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from flows.cli.output import fail


def review(
    runs: Path = typer.Option(Path("runs"), help="The nightly output folder: run folders and ledger.sqlite."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback needs --token."),
    port: int = typer.Option(8765, help="Port to listen on."),
    token: Optional[str] = typer.Option(None, envvar="SAM2RAD_REVIEW_TOKEN",
                                        help="Access token (>= 16 characters); readers open /?token=... once."),
    outbox: Optional[str] = typer.Option(None, help="Folder sink (where the nightly stored its SEGs); "
                                                    "other sinks from the SAM2RAD_* environment."),
    sink_kind: Optional[str] = typer.Option(None, help="folder, dimse or dicomweb (default SAM2RAD_PACS_KIND)."),
    checkpoint: Optional[str] = typer.Option(None, help="PPN checkpoint (default: the shipped demo checkpoint)."),
    threshold: Optional[float] = typer.Option(
        None, min=0.0, max=1.0,
        help="Confidence under which every instance needs review. Default: each instance's model floor "
             "(the lowest confidence the model gave its own training images), or 0.6 for runs without one."),
) -> None:
    """Readers review a run's masks in a browser: correct, accept (-> reviewed SEG) or reject."""
    from flows.review.security import UnsafeBinding, check_binding

    try:
        check_binding(host, token)
    except UnsafeBinding as exc:
        fail(str(exc))
    if not runs.is_dir():
        fail(f"{runs} is not a folder of nightly runs (try --runs demo-output/runs after `sam2rad demo`)")
    import uvicorn

    from flows.review.app import create_app
    from flows.runtime import default_device, load_model
    from pipeline.pacs import Outbox, PacsSettings, open_archive
    from pipeline.review import ReviewStation

    changes: dict = {"kind": sink_kind} if sink_kind else {}
    if outbox:
        changes["outbox"] = Path(outbox)
    if "SAM2RAD_STORE_OUTBOX" not in os.environ:  # where the nightly keeps SEGs it could not store yet
        changes["store_outbox"] = runs.resolve() / "store-outbox"
    settings = PacsSettings.from_env().replace(**changes)
    station = ReviewStation(runs.resolve(), load_model(checkpoint, default_device()), open_archive(settings),
                            Outbox(settings.store_outbox), confidence_threshold=threshold,
                            policy=settings.retry_policy())
    hosts = ("*",) if host in ("0.0.0.0", "::") else (host, "127.0.0.1", "localhost", "::1")
    app = create_app(station, token=token, allowed_hosts=hosts)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    typer.echo(f"review station: http://{shown}:{port}/" + ("?token=<your token>" if token else ""))
    uvicorn.run(app, host=host, port=port, log_level="info")
