"""End-to-end instances per second of the nightly flow on the demo archive vs the bare model loop on
the same frames (target: orchestration + DICOM overhead <= 20% of the flow's wall time).

The bare loop is `model.predict` on already-decoded, already-cropped frames, batch by batch: the
least any pipeline could spend. The flow is timed after Prefect's temporary server has started (a
warm-up flow run), and the server start is reported on its own line.
Usage: .venv/bin/python benchmarks/bench_nightly.py [--threads 2] [--batch-size 4]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    os.environ["SAM2RAD_THREADS"] = str(args.threads)
    import torch
    from prefect import flow

    from flows.nightly import nightly
    from flows.runtime import load_model, local_run_settings
    from flows.demo.archive import write_demo_archive
    from pipeline.ingest import ingest, iter_frames

    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="sam2rad-bench-"))
    archive = write_demo_archive(root)
    instances = ingest([archive.inbox]).instances
    frames = [f.model_input for inst in instances for f in iter_frames(inst)]
    model = load_model(None, "cpu")
    model.predict(frames[:1])  # warm-up

    start = time.perf_counter()
    for i in range(0, len(frames), args.batch_size):
        model.predict(frames[i:i + args.batch_size])
        model.clear_cache()
    bare = time.perf_counter() - start

    @flow
    def warm_up() -> None:
        return None

    t0 = time.perf_counter()
    warm_up()
    server_start = time.perf_counter() - t0
    date = f"{archive.study_date[:4]}-{archive.study_date[4:6]}-{archive.study_date[6:]}"
    t0 = time.perf_counter()
    with local_run_settings():  # as `sam2rad run-nightly` calls it
        summary = nightly(inbox=str(archive.inbox), outbox=str(root / "outbox"), start_date=date,
                          output_dir=str(root / "runs"), batch_size=args.batch_size)
    flow_s = time.perf_counter() - t0
    n_inst, n_frames = summary["succeeded"], len(frames)
    overhead = (flow_s - bare) / flow_s
    print(f"\ndemo archive: {len(instances)} instances, {n_frames} frames; threads={args.threads}")
    print(f"{'path':<36}{'seconds':>9}{'instances/s':>13}{'frames/s':>10}")
    print(f"{'bare model loop (same frames)':<36}{bare:>9.1f}{len(instances) / bare:>13.3f}{n_frames / bare:>10.2f}")
    print(f"{'nightly flow (Prefect local mode)':<36}{flow_s:>9.1f}{n_inst / flow_s:>13.3f}{n_frames / flow_s:>10.2f}")
    print(f"{'(Prefect temporary server start)':<36}{server_start:>9.1f}")
    print(f"orchestration + DICOM overhead: {overhead:.1%} of the flow's wall time (target <= 20%)")


if __name__ == "__main__":
    main()
