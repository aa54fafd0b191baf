"""Table rows (frozen dataclasses) of the run tables and the audit: grouped by study, as typed
DataFrames, written as Parquet + CSV."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Protocol, TypeVar

import pandas as pd

from sam2rad.atomic_files import replace_atomically

# Nullable pandas dtypes by field annotation, so an empty table keeps its column types.
_PANDAS_DTYPES = {"str": "string", "int": "Int64", "float": "float64", "bool": "boolean"}


class _StudyRow(Protocol):
    study_uid: str | None


Row = TypeVar("Row", bound=_StudyRow)


def rows_by_study(rows: Iterable[Row]) -> dict[str, list[Row]]:
    """Rows grouped by study UID, in first-seen order; rows with no known study are left out."""
    by_study: dict[str, list[Row]] = {}
    for row in rows:
        if row.study_uid:
            by_study.setdefault(row.study_uid, []).append(row)
    return by_study


def rows_to_frame(rows: Sequence[object], row_type: type) -> pd.DataFrame:
    """A DataFrame with one column per dataclass field and stable dtypes, even with no rows.

    A row type's own fields come first, then those it inherits (e.g. an audit frame row: which frame,
    then its metrics).
    """
    own = getattr(row_type, "__annotations__", {})
    ordered = sorted(fields(row_type), key=lambda f: f.name not in own)  # stable: keeps declaration order
    columns = {f.name: _PANDAS_DTYPES[str(f.type).replace("| None", "").strip()] for f in ordered}
    frame = pd.DataFrame([asdict(r) for r in rows], columns=list(columns))  # type: ignore[call-overload]
    return frame.astype(columns)


def write_table(frame: pd.DataFrame, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """<out_dir>/<stem>.parquet and .csv, each written atomically."""
    parquet, csv = out_dir / f"{stem}.parquet", out_dir / f"{stem}.csv"
    replace_atomically(lambda p: frame.to_parquet(p, index=False, engine="pyarrow"), parquet)
    replace_atomically(lambda p: frame.to_csv(p, index=False), csv)
    return parquet, csv
