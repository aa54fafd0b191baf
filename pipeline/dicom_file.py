"""Writing one DICOM file: durably and atomically, through the project's one atomic writer."""
from __future__ import annotations

import os
from pathlib import Path

from pydicom.dataset import Dataset

from sam2rad.atomic_files import write_durably


def write_dicom_file(data: bytes | Dataset, path: str | os.PathLike[str]) -> Path:
    """A dataset (saved as a DICOM file with its meta header) or a file's raw bytes; a crash leaves
    the old file or the new one, never a part."""
    if isinstance(data, Dataset):
        return write_durably(lambda fh: data.save_as(fh, enforce_file_format=True), path)
    return write_durably(data, path)
