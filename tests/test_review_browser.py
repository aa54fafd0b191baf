"""The review page in a real browser (Playwright driving Debian's chromium): open the worklist of a run made
from the demo archive, open an instance, click a missed part of the bone (the mask grows there), click the
background on a false part (it shrinks there), accept, and check the reviewed SEG end to end."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from flows.review.app import create_app
from tests.review_run import RUN_ID, copy_review_run, missed_and_false_pixels, review_station
from tests.test_flows import dciodvfy_errors

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOT_ENV = "SAM2RAD_REVIEW_SCREENSHOT"  # also save the page's screenshot there (docs/review-station.png)

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/install.sh)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    run = copy_review_run(tmp_path_factory.mktemp("review-browser"))
    station = review_station(run)
    port = _free_port()
    config = uvicorn.Config(create_app(station), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield run, station, f"http://127.0.0.1:{port}/"
    uv.should_exit = True
    thread.join(timeout=10)


def _target(run, station):
    """A single-frame instance whose nightly mask misses bone and marks non-bone, found at run time."""
    for item in station.run(RUN_ID).items:
        if item.n_frames == 1:
            mask = station.open(RUN_ID, item.sop_uid).edit.mask(1)[..., 0]
            missed, false = missed_and_false_pixels(mask, run.reference(item.sop_uid)[0])
            if missed and false:
                cols = np.nonzero(mask.any(axis=0))[0]
                x = int(cols[len(cols) // 4])  # away from the middle, where the point clicks may land
                end_x = int(cols[len(cols) * 9 // 10])  # a tenth in from the right end: where an end click cuts
                end = (end_x, int(round(np.nonzero(mask[:, end_x])[0].mean())))
                return item, missed, false, (x, int(np.nonzero(mask[:, x])[0].max()) + 4), end
    pytest.fail("no demo instance with both a missed and a false part")


def _near(page, x: int, y: int, r: int = 3) -> int:
    return page.evaluate(f"(() => {{ let n = 0; for (let dy = -{r}; dy <= {r}; dy++) for (let dx = -{r}; dx <= {r}; dx++)"
                         f" n += reviewMaskAt({x} + dx, {y} + dy) ? 1 : 0; return n; }})()")


def _click_canvas(page, cols: int, x: int, y: int, button: str = "left") -> int:
    before = int(page.get_attribute("#mask-pixels", "data-corrections"))
    box = page.locator("#view").bounding_box()
    scale = box["width"] / cols
    page.mouse.click(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale, button=button)
    page.wait_for_function(f"document.getElementById('mask-pixels').dataset.corrections == '{before + 1}'",
                           timeout=60_000)
    return before + 1


def test_reader_corrects_and_accepts_in_browser(server, tmp_path):
    run, station, url = server
    item, missed, false, below_edge, end = _target(run, station)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # bypass_csp: the page forbids eval, which Playwright's string predicates use
        page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.fill("#reader", "reader.browser")
        page.wait_for_selector(f"tr.item[data-sop='{item.sop_uid}']")
        assert "reviewed 0 / to do 7" in page.inner_text("#progress")
        page.click(f"tr.item[data-sop='{item.sop_uid}']")
        page.wait_for_function("document.getElementById('mask-pixels').dataset.frame == '1'")
        cols = int(page.evaluate("document.getElementById('view').width"))
        grown_before = _near(page, *missed)
        _click_canvas(page, cols, *missed)  # left click: bone here
        assert _near(page, *missed) > grown_before, "the mask did not grow at the missed bone"
        shrunk_before = _near(page, *false)
        _click_canvas(page, cols, *false, button="right")  # right click: not bone
        assert _near(page, *false) < shrunk_before, "the mask did not shrink at the false part"
        pixels = int(page.get_attribute("#mask-pixels", "data-pixels"))
        page.keyboard.press("e")  # edge clicks on: the deep edge of the whole surface moves to the click
        _click_canvas(page, cols, *below_edge)
        assert int(page.get_attribute("#mask-pixels", "data-pixels")) > pixels, "the edge click did not grow the mask"
        page.keyboard.press("u")  # undo it: what is accepted is the two point clicks
        page.wait_for_function(f"document.getElementById('mask-pixels').dataset.pixels == '{pixels}'", timeout=60_000)
        page.keyboard.press("x")  # end clicks on (edge clicks off): the surface ends at the click
        assert page.is_checked("#end-tool") and not page.is_checked("#edge-tool")
        _click_canvas(page, cols, *end, button="right")
        assert int(page.get_attribute("#mask-pixels", "data-pixels")) < pixels, "the end click did not cut the surface back"
        assert _near(page, *end, r=0) == 0, "the clicked run is still there"
        page.keyboard.press("u")
        page.wait_for_function(f"document.getElementById('mask-pixels').dataset.pixels == '{pixels}'", timeout=60_000)
        page.keyboard.press("w")  # whole-surface clicks (end clicks off): the surface moves down to the click
        assert page.is_checked("#shift-tool") and not page.is_checked("#end-tool") and not page.is_checked("#edge-tool")
        _click_canvas(page, cols, *below_edge)
        assert _near(page, *below_edge, r=0) == 1, "the whole-surface click did not reach the click"
        page.keyboard.press("u")
        page.wait_for_function(f"document.getElementById('mask-pixels').dataset.pixels == '{pixels}'", timeout=60_000)
        page.keyboard.press("e")  # back to edge clicks, as the screenshot shows them
        shot = tmp_path / "review-station.png"
        page.screenshot(path=str(shot))
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
        page.keyboard.press("a")  # accept
        page.wait_for_function("document.getElementById('message').textContent.startsWith('accepted')",
                               timeout=60_000)
        message = page.inner_text("#message")
        # The worklist refreshes after the accept's answer: wait for it rather than race it.
        page.wait_for_function("document.getElementById('progress').textContent.includes('reviewed 1 / to do 6')",
                               timeout=60_000)
        browser.close()
    assert not errors, errors

    seg_uid = message.split("(SEG ")[1].rstrip(")")
    stored = list(run.outbox.rglob(f"{seg_uid}.dcm"))
    assert len(stored) == 1  # in the sink
    assert dciodvfy_errors(stored[0]) == []
    ds = pydicom.dcmread(stored[0])
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert "reviewed" in ds.SeriesDescription
    referenced = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == item.sop_uid
    table = pd.read_csv(run.run_dir / "review" / "review_corrections.csv")
    row = table[table.sop_uid == item.sop_uid].iloc[0]
    assert row["outcome"] == "accepted" and row["clicks"] == 5 and row["seg_sop_uid"] == seg_uid  # the undone ones count
    assert np.isfinite(row["dice"]) and row["seconds"] > 0
