"""Atomic file replacement: readers see the old file or the new one, never half of one."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def replace_atomically(write: Callable[[Path], None], path: Path) -> None:
    """Call write(tmp) on a hidden temporary beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
