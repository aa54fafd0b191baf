"""Create (or update) the global concurrency limit that guards GPU work.

The pipeline's model tasks occupy one slot of the global concurrency limit ``gpu`` while they hold a
GPU, so at most <slots> model steps run at once across every worker of the site. Set the slot count to
the number of GPUs the site's workers share (1 for a single-GPU box; 8 for two 4-GPU nodes).

Idempotent: running it again leaves an existing limit in place and only changes its slot count (and
re-activates it) when that differs. Uses the Prefect API given by PREFECT_API_URL (or the active
profile).

    python deploy/create_concurrency_limits.py                 # slots = $SAM2RAD_GPU_SLOTS or GPUs seen here
    python deploy/create_concurrency_limits.py --slots 4
    python deploy/create_concurrency_limits.py --slots 4 --name gpu --slot-decay 0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys

DEFAULT_NAME = "gpu"


def visible_gpu_count() -> int:
    """GPUs on this host by `nvidia-smi -L` (no torch import); 0 when there is no NVIDIA driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def default_slots() -> int:
    env = os.environ.get("SAM2RAD_GPU_SLOTS")
    if env:
        return int(env)
    # a CPU-only host still needs one slot, or every model task would wait forever
    return max(1, visible_gpu_count())


async def ensure_limit(name: str, slots: int, slot_decay_per_second: float = 0.0) -> str:
    """Create the limit or bring it to `slots`; returns "created", "updated" or "unchanged"."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    async with get_client() as client:
        try:
            current = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            current = None
        if current is None:
            try:
                await client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(
                        name=name, limit=slots, active=True,
                        slot_decay_per_second=slot_decay_per_second,
                    )
                )
                return "created"
            except Exception:
                # another process created it between our read and create: fall through to update
                current = await client.read_global_concurrency_limit_by_name(name)
        if (current.limit == slots and current.active
                and float(current.slot_decay_per_second or 0.0) == float(slot_decay_per_second)):
            return "unchanged"
        await client.update_global_concurrency_limit(
            name,
            GlobalConcurrencyLimitUpdate(
                limit=slots, active=True, slot_decay_per_second=slot_decay_per_second,
            ),
        )
        return "updated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=DEFAULT_NAME, help="limit name (default: %(default)s)")
    parser.add_argument("--slots", type=int, default=None,
                        help="slots = number of GPUs shared by the site's workers "
                             "(default: $SAM2RAD_GPU_SLOTS, else GPUs visible here, at least 1)")
    parser.add_argument("--slot-decay", type=float, default=0.0,
                        help="slot_decay_per_second (0 = plain concurrency limit, the default)")
    args = parser.parse_args(argv)
    slots = args.slots if args.slots is not None else default_slots()
    outcome = asyncio.run(ensure_limit(args.name, slots, args.slot_decay))
    print(f"global concurrency limit {args.name!r}: {slots} slot(s) ({outcome})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
