"""Per-worker-process state and Prefect-only helpers shared by the flows.

The model is loaded once per worker process (not per task): loading LiteMedSAM and the PPN takes
seconds, a night has thousands of instances.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import lru_cache

GPU_LIMIT = "gpu"
# How long one model call may wait for a `gpu` slot before its study fails (never forever).
GPU_WAIT_ENV = "SAM2RAD_GPU_WAIT_SECONDS"
DEFAULT_GPU_WAIT_SECONDS = 1800.0
# A slot wait longer than this is logged (once per wait), so a stuck night says what it waits for.
_WAIT_LOG_AFTER_SECONDS = 5.0
_limit_checked: set[str] = set()
_lock = threading.Lock()
_local_slots: threading.BoundedSemaphore | None = None
log = logging.getLogger(__name__)


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow/task run's logger when there is one (so the wait shows in Prefect's UI), else ours."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (tests, scripts)
        return log


class GpuSlotTimeout(TimeoutError):
    """No `gpu` slot within the wait limit: the study fails (and says so) instead of hanging the night."""


@lru_cache(maxsize=4)
def load_model(checkpoint: str | None, device: str = "cpu"):
    """Sam2Rad from a PPN checkpoint (None: the shipped demo checkpoint), cached per process."""
    import torch

    from sam2rad.checkpoint import load_checkpoint

    if device == "cpu" and os.environ.get("SAM2RAD_THREADS"):
        torch.set_num_threads(int(os.environ["SAM2RAD_THREADS"]))
    model = load_checkpoint(checkpoint, backbone_checkpoint=os.environ.get("SAM2RAD_BACKBONE_CHECKPOINT"),
                            device=device)
    # Better masks on unseen scanners for a second encoder pass per frame (sam2rad/flip_tta.py).
    model.flip_test_time = os.environ.get("SAM2RAD_FLIP_TTA", "0") == "1"
    return model


def uses_prefect_server() -> bool:
    """True when PREFECT_API_URL points at a Prefect server; False in local mode (a temporary server
    that lives and dies with this process)."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


@contextmanager
def local_run_settings() -> Iterator[None]:
    """Around a flow called in this process: in local mode, no flow-run heartbeats.

    Without a server nothing watches them, and Prefect's heartbeat thread sleeps in 1 s steps that
    the end of every flow run waits for (up to 1 s a run, measured). Server runs keep their heartbeats:
    the dispatcher detects dead chunk workers by them."""
    if uses_prefect_server():
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _gpu_slots() -> int:
    return max(1, int(os.environ.get("SAM2RAD_GPU_SLOTS", "1")))


def gpu_wait_seconds() -> float:
    """The longest a model call waits for a `gpu` slot (SAM2RAD_GPU_WAIT_SECONDS, default 30 min)."""
    return float(os.environ.get(GPU_WAIT_ENV, DEFAULT_GPU_WAIT_SECONDS))


def ensure_gpu_limit(slots: int | None = None) -> None:
    """Create the `gpu` global concurrency limit when it is missing (server runs), once per process.

    A local run (no PREFECT_API_URL) needs none: its slots are an in-process semaphore (`gpu_slot`),
    so a killed run cannot leave a slot taken for the next one. Sites create the limit with
    deploy/create_concurrency_limits.py (slots = number of GPUs); an existing limit is never changed here.
    """
    if not uses_prefect_server():
        return
    with _lock:
        if GPU_LIMIT in _limit_checked:
            return
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(GPU_LIMIT)
            except ObjectNotFound:
                n = slots or _gpu_slots()
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=n, active=True))
                log.info("created global concurrency limit %r with %d slot(s)", GPU_LIMIT, n)
        _limit_checked.add(GPU_LIMIT)


def _local_semaphore() -> threading.BoundedSemaphore:
    global _local_slots
    with _lock:
        if _local_slots is None:
            _local_slots = threading.BoundedSemaphore(_gpu_slots())
        return _local_slots


@contextmanager
def _local_slot(first_wait: float, wait: float) -> Iterator[None]:
    slots = _local_semaphore()
    if not slots.acquire(timeout=first_wait):
        _run_logger().warning("waiting up to %.0f s for a local %r slot (held by another study of this run)", wait, GPU_LIMIT)
        if not slots.acquire(timeout=max(0.0, wait - first_wait)):
            raise GpuSlotTimeout(f"no {GPU_LIMIT!r} slot within {wait:.0f} s ({GPU_WAIT_ENV})")
    try:
        yield
    finally:
        slots.release()


@contextmanager
def _server_slot(first_wait: float, wait: float) -> Iterator[None]:
    from prefect.concurrency.sync import concurrency

    # Leases expire with their holder (lease_duration, renewed while held): a killed worker frees its slot.
    with ExitStack() as stack:
        try:
            stack.enter_context(concurrency(GPU_LIMIT, occupy=1, strict=True, timeout_seconds=first_wait))
        except TimeoutError:
            _run_logger().warning("waiting up to %.0f s for a %r concurrency slot on the Prefect server", wait, GPU_LIMIT)
            try:
                stack.enter_context(concurrency(GPU_LIMIT, occupy=1, strict=True,
                                                timeout_seconds=max(1.0, wait - first_wait)))
            except TimeoutError:
                raise GpuSlotTimeout(
                    f"no {GPU_LIMIT!r} slot within {wait:.0f} s ({GPU_WAIT_ENV}); are slots leaked? "
                    f"see deploy/README.md") from None
        yield


@contextmanager
def gpu_slot(wait_seconds: float | None = None) -> Iterator[None]:
    """Hold one `gpu` slot for one model call; waits at most `wait_seconds` (logged), then raises
    GpuSlotTimeout. Server runs use the strict global concurrency limit (shared by every worker);
    local runs an in-process semaphore of SAM2RAD_GPU_SLOTS slots, which dies with the process."""
    wait = gpu_wait_seconds() if wait_seconds is None else float(wait_seconds)
    first_wait = min(_WAIT_LOG_AFTER_SECONDS, wait)
    start = time.perf_counter()
    with (_server_slot if uses_prefect_server() else _local_slot)(first_wait, wait):
        waited = time.perf_counter() - start
        if waited > first_wait:
            _run_logger().info("got a %r slot after %.1f s", GPU_LIMIT, waited)
        yield


# Prefect settings our entry points need unless the site sets them: no analytics calls home, and the
# temporary server migrates its database on first start (slow on 2 cores), so it may take longer.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def apply_prefect_defaults() -> None:
    """Set PREFECT_DEFAULTS where the environment does not; call before importing prefect."""
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def default_device() -> str:
    return os.environ.get("SAM2RAD_DEVICE", "cpu")
