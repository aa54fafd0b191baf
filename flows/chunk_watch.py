"""Submit a night's chunks to the GPU work pool and watch them until each one is settled.

Every chunk becomes a flow run of the chunk deployment (`run_deployment(..., timeout=0)`); free
workers pull them. A chunk whose worker died is noticed two ways: the worker saw its flow-run process
die and marked the run Crashed, or nobody did (worker and process killed together) and the run's
heartbeats stopped (Prefect flow-run heartbeat events, every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds).
Either way the chunk is submitted again, at most `max_resubmits` times; the ledger makes sure the
second run stores nothing the first one stored.
"""
from __future__ import annotations

import datetime as dt
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.states import Crashed

from pipeline.night_chunks import NightChunk

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


@dataclass(frozen=True)
class WatchLimits:
    """When a chunk counts as lost, and how often it may be run again."""

    # Running with no heartbeat for this long: its worker is gone. Prefect's default heartbeat is every
    # 180 s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY on the workers, 30 s at the least): keep 2-3 beats of slack.
    heartbeat_timeout_s: float = 450.0
    # Taken by a worker (Pending) but never started for this long: the worker died while starting it.
    pending_timeout_s: float = 900.0
    max_resubmits: int = 2
    poll_s: float = 10.0


class Verdict(enum.Enum):
    WAITING = "waiting"  # scheduled, or pending within its time
    RUNNING = "running"  # running, heartbeats fresh
    COMPLETED = "completed"
    FAILED = "failed"  # the chunk's own code failed, or a person cancelled it: running it again would not help
    LOST = "lost"  # crashed, or its worker vanished: run it again


def verdict(state_type: StateType, since: dt.datetime, last_heartbeat: dt.datetime | None, now: dt.datetime,
            limits: WatchLimits) -> Verdict:
    """What a chunk's flow run state means for the night. `since`: when it entered that state."""
    if state_type is StateType.COMPLETED:
        return Verdict.COMPLETED
    if state_type is StateType.CRASHED:
        return Verdict.LOST
    if state_type in (StateType.FAILED, StateType.CANCELLED, StateType.CANCELLING):
        return Verdict.FAILED
    if state_type is StateType.RUNNING:
        alive = max(since, last_heartbeat) if last_heartbeat else since
        return Verdict.LOST if (now - alive).total_seconds() > limits.heartbeat_timeout_s else Verdict.RUNNING
    if state_type is StateType.PENDING and (now - since).total_seconds() > limits.pending_timeout_s:
        return Verdict.LOST
    return Verdict.WAITING


@dataclass
class ChunkRun:
    chunk: NightChunk
    flow_run_ids: list[UUID] = field(default_factory=list)  # one per attempt, the last is current
    verdict: Verdict = Verdict.WAITING
    message: str = ""


@dataclass(frozen=True)
class WatchOutcome:
    """How each chunk ended: completed, failed (not retried), or lost after every resubmission."""

    completed: list[str]
    failed: dict[str, str]
    lost: dict[str, str]
    attempts: dict[str, int]

    @property
    def resubmitted(self) -> int:
        return sum(n - 1 for n in self.attempts.values())


class ChunkWatch:
    """Submits chunks as flow runs of `deployment` and polls them until every chunk is settled."""

    def __init__(self, deployment: str, parameters: Callable[[NightChunk], dict], limits: WatchLimits,
                 night_key: str, log) -> None:
        self.deployment, self.parameters, self.limits = deployment, parameters, limits
        self.night_key, self.log = night_key, log
        self.runs: dict[str, ChunkRun] = {}

    def submit(self, chunk: NightChunk) -> None:
        run = self.runs.setdefault(chunk.chunk_id, ChunkRun(chunk))
        attempt = len(run.flow_run_ids) + 1
        flow_run = run_deployment(
            self.deployment, parameters=self.parameters(chunk), timeout=0,
            flow_run_name=f"chunk-{chunk.chunk_id}-try{attempt}", tags=["sam2rad", "chunk"],
            idempotency_key=f"{self.night_key}:{chunk.chunk_id}:{attempt}")  # a re-submitted call makes no twin
        run.flow_run_ids.append(flow_run.id)
        run.verdict = Verdict.WAITING

    def watch(self) -> WatchOutcome:
        """Poll until no chunk is waiting or running; resubmit lost chunks within the limit."""
        with get_client(sync_client=True) as client:
            while True:
                active = [run for run in self.runs.values() if run.verdict in (Verdict.WAITING, Verdict.RUNNING)]
                if not active:
                    break
                flow_runs = {fr.id: fr for fr in _read_flow_runs(client, [run.flow_run_ids[-1] for run in active])}
                for run in active:
                    flow_run = flow_runs.get(run.flow_run_ids[-1])
                    if flow_run is not None:
                        self._update(client, run, flow_run)
                if any(run.verdict in (Verdict.WAITING, Verdict.RUNNING) for run in self.runs.values()):
                    time.sleep(self.limits.poll_s)
        return WatchOutcome(
            completed=sorted(c for c, r in self.runs.items() if r.verdict is Verdict.COMPLETED),
            failed={c: r.message for c, r in self.runs.items() if r.verdict is Verdict.FAILED},
            lost={c: r.message for c, r in self.runs.items() if r.verdict is Verdict.LOST},
            attempts={c: len(r.flow_run_ids) for c, r in self.runs.items()})

    def _update(self, client: SyncPrefectClient, run: ChunkRun, flow_run: FlowRun) -> None:
        state = flow_run.state
        if state is None:
            return
        now = dt.datetime.now(dt.timezone.utc)
        beat = _last_heartbeat(client, flow_run.id, state.timestamp) if self._may_be_stale(state, now) else None
        run.verdict = verdict(state.type, state.timestamp, beat, now, self.limits)
        if run.verdict is Verdict.FAILED:
            run.message = f"{state.name}: {state.message or ''}".strip()
            self.log.error("chunk %s %s", run.chunk.chunk_id, run.message)
        if run.verdict is not Verdict.LOST:
            return
        if not state.is_final():  # nobody is left to say so: mark it, so the UI and a re-run agree
            run.message = (f"no heartbeat for {self.limits.heartbeat_timeout_s:.0f} s" if state.is_running()
                           else f"pending for over {self.limits.pending_timeout_s:.0f} s") + ": its worker is gone"
            client.set_flow_run_state(flow_run.id, Crashed(message=run.message), force=True)
        else:
            run.message = f"crashed: {state.message or ''}".strip()
        if len(run.flow_run_ids) > self.limits.max_resubmits:
            self.log.error("chunk %s lost %d times (%s); giving up on it", run.chunk.chunk_id,
                           len(run.flow_run_ids), run.message)
            return
        self.log.warning("chunk %s (flow run %s) %s; submitting it again", run.chunk.chunk_id, flow_run.id,
                         run.message)
        self.submit(run.chunk)

    def _may_be_stale(self, state, now: dt.datetime) -> bool:
        # Only a run older than the timeout can have missed its heartbeats: spare the events API otherwise.
        return state.is_running() and (now - state.timestamp).total_seconds() > self.limits.heartbeat_timeout_s


def _read_flow_runs(client: SyncPrefectClient, ids: list[UUID]) -> list[FlowRun]:
    found: list[FlowRun] = []
    for start in range(0, len(ids), 200):
        batch = ids[start:start + 200]
        found += client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=batch)),
                                       limit=len(batch))
    return found


def _last_heartbeat(client: SyncPrefectClient, flow_run_id: UUID, since: dt.datetime) -> dt.datetime | None:
    page = client.read_events(filter=EventFilter(
        occurred=EventOccurredFilter(since=since, until=dt.datetime.now(dt.timezone.utc)),
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"])), limit=1)
    return page.events[0].occurred if page.events else None
