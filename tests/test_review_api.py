"""The review station's HTTP API: security rules (token off loopback, CSRF header, JSON bodies, bounded
sizes, Host check), validation (coordinates, unknown UIDs), click -> new mask, accept -> SEG, 409 on a
second accept."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from flows.review.app import create_app
from flows.review.security import CSRF_HEADER, MAX_BODY_BYTES, UnsafeBinding, check_binding
from tests.review_run import RUN_ID, copy_review_run, missed_and_false_pixels, review_station

SAM2RAD = Path(sys.executable).parent / "sam2rad"
TOKEN = "t" * 24
HOSTS = ("testserver", "127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run = copy_review_run(tmp_path_factory.mktemp("review-api"))
    station = review_station(run)
    client = TestClient(create_app(station, allowed_hosts=HOSTS))
    csrf = client.get("/").text.split("name=\"review-csrf\" content='\"")[1].split('"')[0]
    client.headers[CSRF_HEADER] = csrf
    return run, station, client


def test_binding_rules():
    check_binding("127.0.0.1", None)
    check_binding("::1", None)
    check_binding("localhost", None)
    with pytest.raises(UnsafeBinding, match="without a token"):
        check_binding("0.0.0.0", None)
    with pytest.raises(UnsafeBinding, match="16 characters"):
        check_binding("10.1.2.3", "short")
    check_binding("10.1.2.3", TOKEN)
    out = subprocess.run([str(SAM2RAD), "review", "--host", "0.0.0.0", "--runs", "."], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "without a token" in out.stderr


def test_token_cookie_csrf_and_body_rules(served):
    run, station, _ = served
    client = TestClient(create_app(station, token=TOKEN, allowed_hosts=HOSTS))
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {"runs": [RUN_ID]}
    assert client.get("/?token=wrong", follow_redirects=False).status_code == 401
    login = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
    assert client.get("/api/runs").status_code == 200  # the cookie now
    open_url = f"/api/runs/{RUN_ID}/instances/1.2.3/open"
    assert client.post(open_url, json={}).status_code == 403  # no CSRF header
    csrf = client.get("/").text.split("content='\"")[1].split('"')[0]
    headers = {CSRF_HEADER: csrf}
    assert client.post(open_url, content="{}", headers=headers | {"Content-Type": "text/plain"}).status_code == 415
    big = client.post(open_url, content=b"{" + b" " * (MAX_BODY_BYTES + 1) + b"}",
                      headers=headers | {"Content-Type": "application/json"})
    assert big.status_code == 413
    assert client.post(open_url, json={}, headers=headers).status_code == 404
    assert TestClient(create_app(station, allowed_hosts=("127.0.0.1",))).get("/api/runs").status_code == 400
    assert client.request("DELETE", "/api/runs").status_code == 405


def test_unknown_uids_and_bad_coordinates(served):
    run, station, client = served
    assert client.get("/api/runs/nightly-nope/worklist").status_code == 404
    assert client.get("/api/runs/..%2F..%2Fetc/worklist").status_code == 404
    missing = client.post(f"/api/runs/{RUN_ID}/instances/1.2.3.4/open", json={})
    assert missing.status_code == 404 and "1.2.3.4" in missing.json()["detail"]
    assert client.post("/api/edits/nope/click", json={"frame": 1, "x": 1, "y": 1}).status_code == 404
    sop = client.get(f"/api/runs/{RUN_ID}/worklist").json()["items"][0]["sop_uid"]
    opened = client.post(f"/api/runs/{RUN_ID}/instances/{sop}/open", json={}).json()
    edit = opened["edit_id"]
    outside = client.post(f"/api/edits/{edit}/click", json={"frame": 1, "x": opened["cols"] + 5, "y": 3})
    assert outside.status_code == 422 and "outside the frame" in outside.json()["detail"]
    region = client.post(f"/api/edits/{edit}/click", json={"frame": 1, "x": 0, "y": 0})
    assert region.status_code == 422 and "imaging region" in region.json()["detail"]
    assert client.post(f"/api/edits/{edit}/click", json={"frame": 99, "x": 5, "y": 5}).status_code == 422
    assert client.post(f"/api/edits/{edit}/click", json={"frame": 1, "x": "a", "y": 5}).status_code == 422
    bad_reader = client.post(f"/api/edits/{edit}/accept", json={"reader": "<script>"})
    assert bad_reader.status_code == 422
    bad_reason = client.post(f"/api/edits/{edit}/reject", json={"reader": "r1", "reason": "free text"})
    assert bad_reason.status_code == 422


def test_click_gives_new_mask_and_accept_writes_seg_once(served):
    run, station, client = served
    items = client.get(f"/api/runs/{RUN_ID}/worklist?status=to-do").json()["items"]
    for item in (i for i in items if i["n_frames"] == 1):
        opened = client.post(f"/api/runs/{RUN_ID}/instances/{item['sop_uid']}/open", json={}).json()
        edit = opened["edit_id"]
        mask = station.edit(edit).edit.mask(1)[..., 0]
        missed, _ = missed_and_false_pixels(mask, run.reference(item["sop_uid"])[0])
        if missed:
            break
    before = client.get(f"/api/edits/{edit}/frames/1/mask").json()
    image = client.get(f"/api/edits/{edit}/frames/1/image")
    assert image.headers["content-type"] == "image/png"
    assert client.post(f"/api/edits/{edit}/warm", json={"frame": 1}).json()["encoded"]
    after = client.post(f"/api/edits/{edit}/click", json={"frame": 1, "x": missed[0], "y": missed[1]}).json()
    assert after["corrections"] == 1 and after["can_undo"] and after["mask_png"] != before["mask_png"]
    undone = client.post(f"/api/edits/{edit}/undo", json={"frame": 1}).json()
    assert undone["mask_png"] == before["mask_png"] and undone["can_redo"]
    edged = client.post(f"/api/edits/{edit}/click", json={"frame": 1, "x": missed[0], "y": missed[1], "edge": True}).json()
    assert edged["prompts"] == [{"x": missed[0], "y": missed[1], "foreground": True, "edge": True, "end": False,
                                 "shift": False}]
    both = client.post(f"/api/edits/{edit}/click", json={"frame": 1, "x": missed[0], "y": missed[1], "edge": True, "end": True})
    assert both.status_code == 422 and "not several" in both.text
    client.post(f"/api/edits/{edit}/undo", json={"frame": 1})
    client.post(f"/api/edits/{edit}/redo", json={"frame": 1})
    accepted = client.post(f"/api/edits/{edit}/accept", json={"reader": "reader one"})
    assert accepted.status_code == 200, accepted.text
    result = accepted.json()
    assert result["delivery"] == "stored"
    seg = next(run.outbox.rglob(f"{result['seg_sop_uid']}.dcm"))
    assert pydicom.dcmread(seg, stop_before_pixels=True).SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    second = client.post(f"/api/runs/{RUN_ID}/instances/{item['sop_uid']}/open", json={}).json()
    refused = client.post(f"/api/edits/{second['edit_id']}/accept", json={"reader": "reader two"})
    assert refused.status_code == 409 and "reader one" in refused.json()["detail"]
    progress = client.get(f"/api/runs/{RUN_ID}/worklist").json()["progress"]
    assert progress["reviewed"] == 1
