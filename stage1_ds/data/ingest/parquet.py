"""Parquet input (the optional `pyarrow` package): columns named as for a generic CSV."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from stage1_ds.errors import DataError

log = logging.getLogger(__name__)


def read_parquet(path: Path, timestamp_column: str = "timestamp") -> pd.DataFrame:
    """The file's columns, its time index (pandas writes a DataFrame's index as an index, not a column)
    made the column it is; the one place that needs the optional `pyarrow` package
    (``pip install 'stage1_ds[formats]'``).

    A file with a time index AND a column named as the time asked for (``timestamp_column``) is read by
    its column, and one line says the index was left unread (and whether the two differ)."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs the pyarrow package: pip install 'stage1_ds[formats]'"
        ) from None
    try:
        table = parquet.read_table(path).to_pandas()
    except Exception as error:  # pyarrow raises its own error types for every kind of bad file
        raise DataError(f"{path}: not a readable Parquet file: {error}") from None
    if not (isinstance(table.index, pd.DatetimeIndex) or table.index.name is not None):
        return table
    name = table.index.name or timestamp_column
    if name not in table.columns:
        return table.reset_index(names=name)
    try:
        index = pd.to_datetime(pd.Series(table.index), utc=True)
        column = pd.to_datetime(table[name].reset_index(drop=True), utc=True)
        same = bool(index.equals(column))
    except (ValueError, TypeError):
        same = False
    log.info(
        "%s: both its index%s and its column %r hold times: the column is read, the index left unread%s",
        path,
        f" ({table.index.name!r})" if table.index.name else "",
        name,
        ""
        if same
        else " (they differ: to read the index, save it as a column of its own name and pass that name "
        "with --timestamp-column)",
    )
    return table.reset_index(drop=True)
