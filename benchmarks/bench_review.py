"""Review station latency over its HTTP API (uvicorn on loopback, httpx client), LiteMedSAM backbone:
- first view of a frame: image + mask + the encoder run ("warm") that makes later clicks decode only;
- click to new mask: p50 / p95 of POST .../click round trips (target p95 < 300 ms on 2 CPU threads).

The run is the small demo-archive run the review tests use (tests/review_run.py). Clicks alternate
foreground/background points on the bone of each single-frame instance; an undo after each click keeps
the prompt count small, as a reader's corrections are.
Usage: .venv/bin/python benchmarks/bench_review.py [--threads 2] [--clicks 40]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clicks", type=int, default=40)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import httpx
    import uvicorn

    from flows.review.app import create_app
    from flows.review.security import CSRF_HEADER
    from tests.review_run import RUN_ID, copy_review_run, review_station

    run = copy_review_run(Path(tempfile.mkdtemp(prefix="bench-review-")))
    station = review_station(run)
    if hasattr(station.model, "clear_cache"):
        station.model.clear_cache()  # building the run encoded these frames: measure a cold first view
    encoder_calls = station.model.encoder_calls
    server = uvicorn.Server(uvicorn.Config(create_app(station), host="127.0.0.1", port=8799, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = httpx.Client(base_url="http://127.0.0.1:8799", timeout=120)
    csrf = client.get("/").text.split("content='\"")[1].split('"')[0]
    client.headers[CSRF_HEADER] = csrf
    items = [i for i in client.get(f"/api/runs/{RUN_ID}/worklist").json()["items"] if i["n_frames"] == 1]

    first_views, clicks = [], []
    per_item = max(1, args.clicks // len(items))
    for item in items:
        opened = client.post(f"/api/runs/{RUN_ID}/instances/{item['sop_uid']}/open", json={}).json()
        edit = opened["edit_id"]
        start = time.perf_counter()
        client.get(f"/api/edits/{edit}/frames/1/image")
        mask = client.get(f"/api/edits/{edit}/frames/1/mask").json()
        client.post(f"/api/edits/{edit}/warm", json={"frame": 1})
        first_views.append(time.perf_counter() - start)
        ys, xs = np.nonzero(station.edit(edit).edit.mask(1).any(axis=-1))
        x0, y0, x1, y1 = opened["region"]
        for k in range(per_item):
            if len(xs) and k % 2 == 0:
                j = (k * 7919) % len(xs)
                x, y = int(xs[j]), int(ys[j]) + 3
            else:
                x, y = (x0 + x1) // 2 + k, (y0 + y1) // 2
            x, y = min(max(x, x0), x1), min(max(y, y0), y1)
            start = time.perf_counter()
            r = client.post(f"/api/edits/{edit}/click", json={"frame": 1, "x": x, "y": y, "foreground": k % 2 == 0})
            clicks.append(time.perf_counter() - start)
            r.raise_for_status()
            client.post(f"/api/edits/{edit}/undo", json={"frame": 1})
        del mask
    server.should_exit = True
    ms = np.array(clicks) * 1000
    print(f"threads {args.threads}, {len(items)} frames, {len(clicks)} clicks over HTTP")
    print(f"first view of a frame (image + mask + encoder): median {np.median(first_views) * 1000:.0f} ms, "
          f"max {max(first_views) * 1000:.0f} ms")
    print(f"click -> new mask: p50 {np.percentile(ms, 50):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms "
          f"(target p95 < 300 ms: {'met' if np.percentile(ms, 95) < 300 else 'NOT met'})")
    print(f"encoder calls during the benchmark: {station.model.encoder_calls - encoder_calls} for {len(items)} frames")


if __name__ == "__main__":
    main()
