"""Issue 14 goal 4: work pulled, not pushed. A night split into chunks, chunks pulled by free process
workers from a REAL Prefect server, and a worker killed with SIGKILL mid-chunk (with its flow-run
process): its chunk runs again on the other worker and the night ends with every instance stored once.

The workers' flow runs use a stand-in model (a `sitecustomize` on their PYTHONPATH replaces
`flows.runtime.load_model`) that sleeps like a GPU and holds no CPU, so the chunks take a known time
on 2 cores, and they send Prefect heartbeats every few seconds instead of every 30 or more, so the
dispatcher notices the dead worker in seconds; everything else (discover, fetch, ingest, SEG writing,
sink, ledger, journals, heartbeat events through the server) is real.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from flows.chunk_watch import Verdict, WatchLimits, verdict
from pipeline.ledger import Ledger
from pipeline.night_chunks import ChunkJournal, JournaledRecorder, night_records, read_attempts, split_night
from pipeline.run_tables import InstanceMetrics
from pipeline.studies import StudyRef
from tests.prefect_server import REPO_ROOT, PrefectServer, descendants, stop_process_tree

PROCESS_POOL = "sam2rad-gpu"
PREFECT_FILE = REPO_ROOT / "deploy" / "prefect.yaml"

# --------------------------------------------------------------------------------------------------
# without a server: chunks, journals, verdicts
# --------------------------------------------------------------------------------------------------


def _refs(n: int, instances: int = 2) -> list[StudyRef]:
    return [StudyRef(f"1.2.826.0.1.{i}", "20250101", ("US",), instances) for i in range(n)]


def test_a_night_splits_into_chunks_of_a_few_studies():
    chunks = split_night(_refs(7), studies_per_chunk=3)
    assert [len(c.studies) for c in chunks] == [3, 3, 1]
    assert [c.chunk_id for c in chunks] == ["0000", "0001", "0002"]
    assert [uid for c in chunks for uid in c.study_uids] == [r.study_uid for r in _refs(7)]
    by_instances = split_night(_refs(5, instances=3), studies_per_chunk=10, instances_per_chunk=6)
    assert [len(c.studies) for c in by_instances] == [2, 2, 1]
    assert split_night([], 4) == []
    with pytest.raises(ValueError):
        split_night(_refs(1), studies_per_chunk=0)


class _LedgerRecorder:
    """InstanceRecorder's two calls, on a real ledger, without a sink."""

    stored = kept_in_outbox = 0

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def is_done(self, sop_uid: str) -> bool:
        return self.ledger.is_done(sop_uid, "fp")

    def record(self, row: InstanceMetrics, seg) -> None:
        self.ledger.mark_started(row.sop_uid, "fp", study_uid=row.study_uid)
        self.ledger.mark_done(row.sop_uid, "fp", seg_sop_uid=f"{row.sop_uid}.9")


def _row(sop: str) -> InstanceMetrics:
    return InstanceMetrics(study_uid="1.2.3", series_uid="1.2.3.1", sop_uid=sop, path=f"/in/{sop}.dcm",
                           status="ok", n_frames=2, model_fingerprint="fp")


class _Seg:
    def __init__(self, sop: str) -> None:
        self.path = Path(f"/segs/{sop}.dcm")


def test_a_chunk_killed_mid_study_is_read_back_whole_after_its_second_attempt(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    first = JournaledRecorder(_LedgerRecorder(ledger), ChunkJournal(tmp_path, "0000", "try1", "w-a"))
    first.record(_row("1.1"), _Seg("1.1"))  # settled: journal, then ledger
    first.journal.instance(_row("1.2"), _Seg("1.2"))  # killed after the journal line, before the ledger
    with open(first.journal.path, "a") as torn:
        torn.write('{"kind": "instance", "row": {"study_')  # and in the middle of the next line
    second = JournaledRecorder(_LedgerRecorder(ledger), ChunkJournal(tmp_path, "0000", "try2", "w-b"))
    for sop in ("1.1", "1.2", "1.3"):
        if not second.is_done(sop):
            second.record(_row(sop), _Seg(sop))
    second.journal.study("1.2.3", second.already_done, 1.5)
    second.journal.close()

    attempts = read_attempts(tmp_path)
    assert [(a.worker, a.ended) for a in attempts] == [("w-a", False), ("w-b", True)]
    records = night_records(attempts, ledger)
    (study,) = records.results
    assert sorted(r.sop_uid for r in records.rows) == ["1.1", "1.2", "1.3"]  # each once, none lost
    assert (study.stored, study.already_done, study.frames) == (3, 0, 6)
    assert records.workers == {"0000": ["w-a", "w-b"]} and records.study_errors == {}
    dry = night_records(attempts, None)
    assert dry.results[0].stored == 0


def test_a_study_that_failed_in_every_attempt_is_an_error_with_its_settled_rows(tmp_path):
    journal = ChunkJournal(tmp_path, "0003", "try1", "w-a")
    journal.instance(_row("1.1"), None)
    journal.study("1.2.3", [], 0.2, error="PacsUnreachable: no answer")
    journal.close()
    records = night_records(read_attempts(tmp_path), None)
    assert records.results == [] and records.study_errors == {"1.2.3": "PacsUnreachable: no answer"}
    assert [r.sop_uid for r in records.rows] == ["1.1"]


def test_verdicts_for_chunk_flow_runs():
    from prefect.client.schemas.objects import StateType

    limits = WatchLimits(heartbeat_timeout_s=60, pending_timeout_s=300)
    now = dt.datetime(2025, 1, 1, 3, 0, tzinfo=dt.timezone.utc)
    ago = lambda s: now - dt.timedelta(seconds=s)  # noqa: E731
    assert verdict(StateType.COMPLETED, ago(5), None, now, limits) is Verdict.COMPLETED
    assert verdict(StateType.CRASHED, ago(5), None, now, limits) is Verdict.LOST
    assert verdict(StateType.FAILED, ago(5), None, now, limits) is Verdict.FAILED
    assert verdict(StateType.CANCELLED, ago(5), None, now, limits) is Verdict.FAILED
    assert verdict(StateType.SCHEDULED, ago(9999), None, now, limits) is Verdict.WAITING
    assert verdict(StateType.PENDING, ago(100), None, now, limits) is Verdict.WAITING
    assert verdict(StateType.PENDING, ago(301), None, now, limits) is Verdict.LOST
    assert verdict(StateType.RUNNING, ago(30), None, now, limits) is Verdict.RUNNING
    assert verdict(StateType.RUNNING, ago(600), ago(20), now, limits) is Verdict.RUNNING  # beating
    assert verdict(StateType.RUNNING, ago(600), ago(61), now, limits) is Verdict.LOST  # beats stopped
    assert verdict(StateType.RUNNING, ago(61), None, now, limits) is Verdict.LOST  # never beat


# --------------------------------------------------------------------------------------------------
# a real server, two process workers, one killed mid-chunk
# --------------------------------------------------------------------------------------------------

SECONDS_PER_IMAGE = 1.0  # the stand-in model's "GPU time": long enough to kill a worker between two instances
HEARTBEAT_S = 5  # how often the workers' flow runs beat (Prefect's own floor is 30 s; see the sitecustomize)
HEARTBEAT_TIMEOUT_S = 12  # the dispatcher's limit: over twice the beat, as deploy/README.md asks

# Loaded by every Python process of the workers (PYTHONPATH): the model becomes a stand-in that sleeps
# like a GPU, and a flow-run process beats every HEARTBEAT_S seconds instead of Prefect's minimum of 30
# (patched when prefect.flow_engine is first imported: importing it here would load prefect.engine
# before `python -m prefect.engine` runs it). Nothing else changes.
_SITECUSTOMIZE = f"""
import importlib.util
import os
import sys
import time
import types

import numpy as np

import flows.runtime


class _SleepingModel:
    class_names = ("bone",)
    checkpoint_sha256 = "5" * 64
    backbone = types.SimpleNamespace(name="sleeping-stand-in", fingerprint="sleeping-stand-in-1")

    def predict(self, images, mode="auto"):
        time.sleep({SECONDS_PER_IMAGE} * len(images))
        out = []
        for image in images:
            h, w = image.shape[:2]
            mask = np.zeros((1, h, w), dtype=bool)
            mask[:, h // 4:h // 2, w // 4:3 * w // 4] = True
            out.append(types.SimpleNamespace(masks=mask, boxes=np.array([[w / 4, h / 4, 3 * w / 4, h / 2]]),
                                             scores=np.array([0.9])))
        return out


flows.runtime.load_model = lambda checkpoint=None, device="cpu": _SleepingModel()


class _FastHeartbeats:
    \"\"\"Sets prefect.flow_engine's heartbeat interval as it is imported.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name != "prefect.flow_engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.MINIMUM_HEARTBEAT_INTERVAL = {HEARTBEAT_S}
            module.BaseFlowRunEngine.heartbeat_seconds = property(lambda self: {HEARTBEAT_S})

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("PREFECT__FLOW_RUN_ID"):  # a flow-run process started by a worker
    sys.meta_path.insert(0, _FastHeartbeats())
"""

_DISPATCH = """
import json, sys
from flows.dispatch import dispatch_night
from flows.night_tasks import StudiesFailed
try:
    summary = dispatch_night(**json.loads(sys.argv[1]))
except StudiesFailed as exc:
    summary = exc.summary
print("SUMMARY " + json.dumps(summary, default=str), flush=True)
"""


def _kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 the worker first (so it cannot report its flow run crashed), then its flow-run process."""
    children = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def _done_in_ledger(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        return {uid for (uid,) in db.execute("SELECT source_sop_uid FROM instances WHERE status = 'done'")}


def _wait_to_kill(run_root: Path, dispatcher: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Wait until a worker is mid-chunk with an instance settled (journal and ledger), the next one still
    in the model: (worker, chunk id)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dispatcher.poll() is not None:
            raise AssertionError(f"the dispatcher ended before a worker could be killed:\n{dispatcher.stdout.read()[-8000:]}")
        attempts = [a for d in run_root.glob("nightly-*") for a in read_attempts(d)]
        started = [a for a in attempts if not a.ended and a.instances]
        done = _done_in_ledger(run_root / "ledger.sqlite") if started else set()
        for attempt in started:
            if any(row.sop_uid in done for row, _ in attempt.instances):
                return attempt.worker, attempt.chunk_id
        time.sleep(0.1)
    raise AssertionError("no worker got mid-way into a chunk")


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    # Events persisted every second (Prefect's default: 5 s), so a heartbeat is readable soon after it is sent.
    with PrefectServer(tmp_path_factory.mktemp("prefect-server"),
                       server_env={"PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1"}) as server:
        yield server


@dataclass
class GpuPool:
    server: PrefectServer
    workers: dict[str, subprocess.Popen]
    env: dict[str, str]  # the workers' environment, for the dispatcher too


@pytest.fixture(scope="module")
def gpu_pool(prefect_server, tmp_path_factory):
    """The process pool from deploy/work-pools/process.json, the chunk deployment from prefect.yaml, and
    two process workers (`--limit 1`, like one per GPU) whose flow runs use the stand-in model."""
    root = tmp_path_factory.mktemp("gpu-pool")
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = {"SAM2RAD_HOME": str(REPO_ROOT), "PYTHONPATH": f"{site}{os.pathsep}{REPO_ROOT}", "OMP_NUM_THREADS": "1",
           "SAM2RAD_GPU_SLOTS": "2"}
    server = prefect_server
    server.cli("work-pool", "create", PROCESS_POOL, "--type", "process", "--base-job-template",
               str(REPO_ROOT / "deploy" / "work-pools" / "process.json"), "--overwrite")
    # The workers start up while the chunk deployment is deployed.
    workers = {name: server.start_worker(PROCESS_POOL, name=name, env=env, cwd=root) for name in ("w-a", "w-b")}
    deployed = server.cli("deploy", "--prefect-file", str(PREFECT_FILE), "--name", "chunk",
                          env={"SAM2RAD_HOME": None})
    assert "sam2rad-chunk/chunk" in deployed.stdout
    yield GpuPool(server, workers, env)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_free_workers_pull_chunks_and_a_killed_workers_chunk_runs_again(gpu_pool, tmp_path):
    from flows.demo.archive import write_demo_archive

    t0 = time.monotonic()
    server, workers = gpu_pool.server, gpu_pool.workers
    # Two studies of two images, one study a chunk, one chunk a worker: the first worker to settle an
    # instance is killed (its chunk's second instance still in the model), the other pulls the retry.
    archive = write_demo_archive(tmp_path / "archive", n_synthetic_studies=2, images_per_study=2, cine_frames=0,
                                 size=(96, 96), include_pydicom_examples=False)
    sources = {_sop_uid(p) for p in archive.files}
    day = archive.study_date
    outbox, runs = tmp_path / "outbox", tmp_path / "runs"
    parameters = {"inbox": str(archive.inbox), "outbox": str(outbox), "output_dir": str(runs),
                  "start_date": f"{day[:4]}-{day[4:6]}-{day[6:]}", "studies_per_chunk": 1,
                  "batch_size": 1,  # one model call per frame: a chunk settles instance by instance
                  "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S, "pending_timeout_s": 120, "poll_s": 1}
    dispatcher = subprocess.Popen([sys.executable, "-c", _DISPATCH, json.dumps(parameters)], cwd=REPO_ROOT,
                                  env=server.client_env(**gpu_pool.env), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        victim, killed_chunk = _wait_to_kill(runs, dispatcher, timeout=120)
        survivor = ({"w-a", "w-b"} - {victim}).pop()
        _kill_tree(workers[victim])
        t_kill = time.monotonic()
        out, _ = dispatcher.communicate(timeout=120)
        t_end = time.monotonic()
    finally:
        if dispatcher.poll() is None:
            dispatcher.kill()
    logs = f"{out[-6000:]}\n--- w-a ---\n{server.worker_log('w-a')}\n--- w-b ---\n{server.worker_log('w-b')}"
    assert dispatcher.returncode == 0, logs
    summary = json.loads(next(line for line in out.splitlines() if line.startswith("SUMMARY "))[8:])
    assert workers[survivor].poll() is None, "the surviving worker died"
    assert f"no heartbeat for {HEARTBEAT_TIMEOUT_S} s" in out, logs  # the dispatcher noticed: nobody was left to say so

    # the night's summary is complete: every study and instance, each SEG stored, nothing failed
    assert (summary["studies"], summary["failed_studies"]) == (2, 0), summary["headline"]
    assert (summary["instances"], summary["succeeded"], summary["failed"]) == (len(sources), len(sources), 0)
    assert summary["stored"] == len(sources), summary["headline"]
    chunks = summary["chunks"]
    assert chunks["count"] == 2 and chunks["lost"] == [] and chunks["failed"] == []
    assert chunks["resubmitted"] >= 1 and chunks["workers"][killed_chunk][:2] == [victim, survivor]

    # both workers pulled chunks; the survivor finished each one it took, the killed one's chunk included
    attempts = read_attempts(Path(summary["run_dir"]))
    assert {a.worker for a in attempts} == {"w-a", "w-b"}
    assert all(a.ended for a in attempts if a.worker == survivor)
    assert len({a.chunk_id for a in attempts if a.worker == survivor}) == 2  # its own, then the free one
    killed, *_, retry = [a for a in attempts if a.chunk_id == killed_chunk]
    assert (killed.worker, killed.ended, retry.worker, retry.ended) == (victim, False, survivor, True)
    # the retry redid only what the ledger had not finished
    assert sum(len(study["already_done"]) for study in retry.studies) >= 1, retry.studies

    # the ledger holds each source instance once, done, with its own SEG; the sink holds exactly those SEGs
    with sqlite3.connect(runs / "ledger.sqlite") as db:
        entries = db.execute("SELECT source_sop_uid, status, seg_sop_uid FROM instances").fetchall()
    assert sorted(e[0] for e in entries) == sorted(sources)
    assert {e[1] for e in entries} == {"done"}
    segs = sorted(outbox.rglob("*.dcm"))
    seg_uids = [_sop_uid(p) for p in segs]
    assert len(segs) == len(sources) and sorted(seg_uids) == sorted(e[2] for e in entries)
    instance_table = Path(summary["tables"]["instances_csv"]).read_text().splitlines()
    assert len(instance_table) == 1 + len(sources)
    print(f"chunks on two workers, one killed: {time.monotonic() - t0:.0f} s (to the kill {t_kill - t0:.0f} s, "
          f"from the kill to the night's end {t_end - t_kill:.0f} s)")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_dispatcher_is_served_with_the_nightly_schedule_and_parameters(prefect_server):
    """`python -m flows.dispatch serve` (deploy/README.md): a deployment with prefect.yaml's nightly
    cron, timezone and parameters, served by one process that needs no worker and no GPU."""
    import asyncio

    import yaml
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    config = yaml.safe_load(PREFECT_FILE.read_text())
    nightly = next(d for d in config["deployments"] if d["name"] == "nightly")
    schedule = config["definitions"]["schedules"]["nightly"]
    serving = subprocess.Popen([sys.executable, "-m", "flows.dispatch", "serve"], cwd=REPO_ROOT,
                               env=prefect_server.client_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)

    async def served_deployment():
        async with get_client() as client:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and serving.poll() is None:
                try:
                    return await client.read_deployment_by_name("sam2rad-dispatch/nightly-pool")
                except ObjectNotFound:
                    await asyncio.sleep(1)
        return None

    try:
        with prefect_server.settings():
            deployment = asyncio.run(served_deployment())
    finally:
        stop_process_tree(serving)
    assert deployment is not None, serving.stdout.read()[-4000:]
    (served,) = deployment.schedules
    assert (served.schedule.cron, served.schedule.timezone) == (schedule["cron"], schedule["timezone"])
    assert deployment.parameters == nightly["parameters"]
    assert deployment.work_pool_name is None  # served: it takes no worker of the GPU pool
