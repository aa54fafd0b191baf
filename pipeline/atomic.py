"""Atomic file replacement: readers see the old file or the new one, never half of one.

Temporaries are hidden `.<name>.<random>.partial` files beside the target, so scanners skip them
and `pipeline.seg.remove_partial_files` can sweep what a killed process left behind.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

from pydicom.dataset import Dataset


def replace_atomically(write: Callable[[Path], None], path: Path) -> None:
    """Call write(tmp) on a hidden temporary beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file_atomically(data: bytes | Dataset, path: Path) -> Path:
    """A DICOM dataset (written as a DICOM file) or raw bytes, durably (fsync) and atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            if isinstance(data, Dataset):
                data.save_as(fh, enforce_file_format=True)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    replace_atomically(write, path)
    return path
