"""Issue 16 defect 1: the `gpu` slot. A local run needs no global concurrency limit (a killed run
cannot leak a slot for the next one); every wait is bounded and logged; a re-run after kill -9 finishes."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows import runtime

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "OMP_NUM_THREADS": "2"}


@pytest.fixture
def local_mode(monkeypatch):
    monkeypatch.setattr(runtime, "uses_prefect_server", lambda: False)
    monkeypatch.setattr(runtime, "_local_slots", None)


def test_a_local_run_never_asks_the_server_for_a_slot(local_mode, monkeypatch):
    import prefect.client.orchestration
    import prefect.concurrency.sync

    def refuse(*args, **kwargs):
        raise AssertionError("a local run must not use the global concurrency limit")

    monkeypatch.setattr(prefect.concurrency.sync, "concurrency", refuse)
    monkeypatch.setattr(prefect.client.orchestration, "get_client", refuse)
    runtime.ensure_gpu_limit()
    with runtime.gpu_slot():
        pass
    with runtime.gpu_slot():  # released: the next call gets it at once
        pass


def test_a_slot_wait_is_bounded_and_logged(local_mode, caplog):
    held, release = threading.Event(), threading.Event()

    def holder():
        with runtime.gpu_slot():
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        start = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="flows.runtime"):
            with pytest.raises(runtime.GpuSlotTimeout, match="SAM2RAD_GPU_WAIT_SECONDS"):
                with runtime.gpu_slot(wait_seconds=0.3):
                    pass
        assert time.perf_counter() - start < 5
        assert "waiting up to" in caplog.text
    finally:
        release.set()
        thread.join()
    with runtime.gpu_slot(wait_seconds=0.3):  # free again once the holder is done
        pass


def test_a_gpu_slot_timeout_is_not_an_instance_failure():
    """segment_instance lets the wait's TimeoutError through: the study fails, not the instance."""
    from pipeline.inference import segment_instance

    class Writer:
        algorithm = None

    class Instance:
        sop_uid = "1.2.3"
        n_frames = 1

    def guard():
        raise runtime.GpuSlotTimeout("no slot")

    import pipeline.inference as inference

    original = inference.predict_instance
    try:
        inference.predict_instance = lambda *a, **k: guard()
        with pytest.raises(runtime.GpuSlotTimeout):
            segment_instance(Instance(), None, Writer(), ".")  # type: ignore[arg-type]
    finally:
        inference.predict_instance = original


_HOLD_A_SLOT = """
import time
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency

@flow
def hold():
    with get_client(sync_client=True) as client:  # what a run before this fix created in local mode
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=1, active=True))
    with concurrency("gpu", occupy=1, strict=True):
        print("HELD", flush=True)
        time.sleep(600)

hold()
"""


def test_a_rerun_after_kill_9_finishes(tmp_path):
    """A worker killed while holding the `gpu` slot of the local temporary server; the next local
    run of the same PREFECT_HOME finishes (before: it waited forever, logging nothing)."""
    from flows.demo.archive import write_demo_archive

    env = ENV | {"PREFECT_HOME": str(tmp_path / "prefect"), "SAM2RAD_GPU_WAIT_SECONDS": "60"}
    env.pop("PREFECT_API_URL", None)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_A_SLOT], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        lines = []
        while time.monotonic() < deadline:
            line = holder.stdout.readline()
            lines.append(line)
            if line.startswith("HELD") or (not line and holder.poll() is not None):
                break
        assert lines and lines[-1].startswith("HELD"), "".join(lines)[-3000:]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()

    archive = write_demo_archive(tmp_path, n_synthetic_studies=1, images_per_study=1, cine_frames=0,
                                 size=(96, 96), include_pydicom_examples=False)
    date = f"{archive.study_date[:4]}-{archive.study_date[4:6]}-{archive.study_date[6:]}"
    script = f"""
from flows.nightly import nightly
s = nightly(inbox={str(archive.inbox)!r}, outbox={str(tmp_path / 'outbox')!r}, start_date={date!r},
            output_dir={str(tmp_path / 'runs')!r})
print("STORED", s["stored"], s["failed"])
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=420)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "STORED 1 0" in out.stdout
    segs = list((tmp_path / "outbox").rglob("*.dcm"))
    assert len(segs) == 1
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith((".part", ".partial"))]
    assert leftovers == []
