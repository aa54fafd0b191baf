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
    # The folder archive's index: the study's files, found by the night's one scan, so each study's
    # fetch (in its own task, with its own archive object) reads only these instead of the inbox again.
    files: tuple[str, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class RejectedFile:
    """A file of the archive that discovery refused, and why (no PHI: a path, a code, a plain reason).

    The night's `rejected` table lists these, so a site sees every file it lost."""

    path: str
    code: str
    reason: str
    study_uid: str | None = None
    sop_uid: str | None = None


@dataclass
class FetchedStudy:
    """A study's instances materialised as local files (what ingest reads)."""

    ref: StudyRef
    files: list[Path] = field(default_factory=list)
    # Where each local file came from (archive path or PACS address): the fetch folder is temporary,
    # so the run tables record this instead.
    origins: dict[Path, str] = field(default_factory=dict)

    def origin_of(self, path: str | Path | None) -> str | None:
        """Where the file at `path` came from; the path itself when the source did not say."""
        if path is None:
            return None
        return self.origins.get(Path(path), str(path))


def parse_window(start_date: str | None, end_date: str | None, today: dt.date | None = None) -> DateWindow:
    """YYYY-MM-DD (or YYYYMMDD) bounds; both missing means yesterday, one missing means that one day."""
    def parse(value: str) -> dt.date:
        for fmt in ("%Y-%m-%d", "%Y%m%d"):
            try:
                return dt.datetime.strptime(value.strip(), fmt).date()
            except ValueError:
                pass
        raise ValueError(f"bad date {value!r}: use YYYY-MM-DD")

    if not start_date and not end_date:
        return DateWindow.yesterday(today)
    start = parse(start_date or end_date)  # type: ignore[arg-type]
    end = parse(end_date or start_date)  # type: ignore[arg-type]
    return DateWindow(start, end)
