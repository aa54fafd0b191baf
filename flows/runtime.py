"""Per-worker-process state and Prefect-only helpers shared by the flows.

The model is loaded once per worker process (not per task): loading LiteMedSAM and the PPN takes
seconds, a night has thousands of instances.
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import AbstractContextManager
from functools import lru_cache

GPU_LIMIT = "gpu"
_limit_checked: set[str] = set()
_lock = threading.Lock()
log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def load_model(checkpoint: str | None, device: str = "cpu"):
    """Sam2Rad from a PPN checkpoint (None: the shipped demo checkpoint), cached per process."""
    import torch

    from sam2rad.checkpoint import load_checkpoint

    if device == "cpu" and os.environ.get("SAM2RAD_THREADS"):
        torch.set_num_threads(int(os.environ["SAM2RAD_THREADS"]))
    return load_checkpoint(checkpoint, backbone_checkpoint=os.environ.get("SAM2RAD_BACKBONE_CHECKPOINT"),
                           device=device)


def ensure_gpu_limit(slots: int | None = None) -> None:
    """Create the `gpu` global concurrency limit when it is missing (local runs), once per process.

    Sites create it with deploy/create_concurrency_limits.py (slots = number of GPUs); an existing
    limit is never changed here.
    """
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
                n = slots or int(os.environ.get("SAM2RAD_GPU_SLOTS", "1"))
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=n, active=True))
                log.info("created global concurrency limit %r with %d slot(s)", GPU_LIMIT, n)
        _limit_checked.add(GPU_LIMIT)


def gpu_slot() -> AbstractContextManager:
    """Hold one slot of the `gpu` limit; strict, so a missing limit is an error, not a free pass."""
    from prefect.concurrency.sync import concurrency

    return concurrency(GPU_LIMIT, occupy=1, strict=True)


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
