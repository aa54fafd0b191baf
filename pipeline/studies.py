"""Records that pass between discovery, fetching and ingest (shared by every source kind)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DateWindow:
    """Inclusive StudyDate range."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"date window ends ({self.end}) before it starts ({self.start})")

    @classmethod
    def yesterday(cls, today: dt.date | None = None) -> "DateWindow":
        day = (today or dt.date.today()) - dt.timedelta(days=1)
        return cls(day, day)

    def dicom_range(self) -> str:
        """The C-FIND / QIDO form, e.g. '20260101-20260131'."""
        return f"{self.start:%Y%m%d}-{self.end:%Y%m%d}"

    def contains(self, study_date: str | None) -> bool:
        if not study_date:
            return False
        try:
            day = dt.datetime.strptime(study_date.strip()[:8], "%Y%m%d").date()
        except ValueError:
            return False
        return self.start <= day <= self.end


@dataclass(frozen=True)
class StudyRef:
    """A study found by `discover`; identity only, no pixel data."""

    study_uid: str
    study_date: str = ""
    modalities: tuple[str, ...] = ()
    n_instances: int | None = None


@dataclass
class FetchedStudy:
    """A study's instances materialised as local files (what ingest reads)."""

    ref: StudyRef
    files: list[Path] = field(default_factory=list)
