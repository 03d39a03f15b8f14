"""Parquet input (the optional `pyarrow` package): columns named as for a generic CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from stage1_ds.errors import DataError


def read_parquet(path: Path) -> pd.DataFrame:
    """The one place that needs the optional `pyarrow` package (``pip install 'stage1_ds[formats]'``)."""
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
    # pandas writes a DataFrame's time index as an index, not a column: make it the column it is.
    if isinstance(table.index, pd.DatetimeIndex) or table.index.name is not None:
        table = table.reset_index(names=table.index.name or "timestamp")
    return table
