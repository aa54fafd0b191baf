"""Where a night stages the files it fetches: under its output folder, never in the system temp folder.

A fetched study is source DICOM (patient data). A run that is killed (OOM killer, node drained) cannot
clean up after itself, so each staging folder is named after its host and process, and the next start
sweeps the folders whose process is gone (or, from another host, that are older than a day).
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

STAGING_FOLDER = "staging"
_PREFIX = "fetch-"
STALE_AFTER_S = 24 * 3600.0  # a folder of another host's process: stale after this long


def staging_root(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / STAGING_FOLDER


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def _owner_prefix() -> str:
    """fetch-<host>-<pid>- (the host has no '-', nor has tempfile's random tail)."""
    return f"{_PREFIX}{_host()}-{os.getpid()}-"


@contextmanager
def study_staging(output_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A private folder under <output_dir>/staging for one study's fetched files, removed afterwards."""
    root = staging_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=_owner_prefix(), dir=root) as folder:
        yield Path(folder)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(folder: Path, now: float, stale_after_s: float) -> bool:
    parts = folder.name[len(_PREFIX):].split("-")
    if len(parts) == 3 and parts[0] == _host() and parts[1].isdigit():
        pid = int(parts[1])
        return pid != os.getpid() and not _process_alive(pid)
    try:  # another host's (or an unknown) folder: only by age
        return now - folder.stat().st_mtime > stale_after_s
    except OSError:
        return False


def sweep_stale_staging(output_dir: str | os.PathLike[str], stale_after_s: float = STALE_AFTER_S) -> int:
    """Remove staging folders left by killed runs; live runs' folders (other chunk workers, other nights) stay.
    Returns how many were removed."""
    root = staging_root(output_dir)
    if not root.is_dir():
        return 0
    now, removed = time.time(), 0
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.is_symlink() and folder.name.startswith(_PREFIX) \
                and _is_stale(folder, now, stale_after_s):
            shutil.rmtree(folder, ignore_errors=True)
            removed += not folder.exists()
    if removed:
        log.warning("removed %d staging folder(s) left by a killed run under %s", removed, root)
    return removed


__all__ = ["STAGING_FOLDER", "staging_root", "study_staging", "sweep_stale_staging"]
