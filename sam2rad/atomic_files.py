"""Atomic file replacement: readers see the old file or the new one, never half of one.

The project's one atomic writer (checkpoints, SEGs, PACS copies, tables, reports). It lives in the
bottom layer so `sam2rad` can use it without importing `pipeline`. Temporaries are hidden
`.<name>.<random>.partial` files beside the target, so scanners skip them and
`pipeline.seg.remove_partial_files` can sweep what a killed process left behind.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


def replace_atomically(write: Callable[[Path], None], path: str | os.PathLike[str]) -> Path:
    """Call write(tmp) on a hidden temporary beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_durably(data: bytes | Callable[[BinaryIO], None], path: str | os.PathLike[str]) -> Path:
    """Raw bytes, or whatever `data(file)` writes, flushed to disk (fsync) and renamed into place."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return replace_atomically(write, path)
