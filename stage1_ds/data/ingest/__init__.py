"""Read raw 1-minute bars: HistData ASCII, generic CSV with a header, and exchange kline dumps (Binance).

Files are read plain or compressed (gzip, bz2, xz, zstd), from a zip holding one or more CSV files, or from
Parquet (columns named as for CSV): which, the file's first bytes say, whatever its suffix (a note when the
suffix says otherwise). Compressed text expands through a cap (``max_input_mb``), so memory stays bounded.
A zip whose members name different instruments is one source per member. Every reader returns `M1Rows` in
file order with a `FileReport`; sorting, de-duplication and merging of several files of one instrument
happen in `clean_m1`. Bad rows either stop the run with the file, line number and row text
(``on_bad_rows="error"``) or are dropped and counted (``"drop"``). A file that cannot be read at all is a
`DataError` naming it and why, never a traceback.

Clocks: naive timestamps (HistData, ISO without offset) are taken as given, or converted from
``timezone`` (IANA) to UTC when one is given; timestamps with an offset and epoch timestamps are UTC. One
file may not mix naive and offset timestamps (such rows are bad rows), and one instrument's files must
share a clock (`check_clocks`). Epoch numbers are seconds, milliseconds, microseconds or nanoseconds, decided
per value by magnitude within 1990-2100 (`EARLIEST_UTC`, `LATEST_UTC`): a column whose values span two
units is an error; a value that is a date in none of them is a bad row.

Instrument names come from file names by one rule (`name_from_file`). Text is read as UTF-8, a byte-order
mark dropped; UTF-16 (with a byte-order mark or without) is re-encoded.

One module per format (`histdata`, `generic`, `binance`, `parquet`), one that opens containers
(`containers`), one that sniffs which layout a file has (`sniff`), one that finds the files and names
their instruments (`discover`), one that weighs how bars are stamped (`stamps`), and the checks every
reader shares (`timestamps`, `validate`); `read.read_source` reads one file.
"""

from stage1_ds.data.ingest.containers import MAX_INPUT_MB
from stage1_ds.data.ingest.discover import discover_inputs
from stage1_ds.data.ingest.read import read_source
from stage1_ds.data.ingest.sources import (
    AS_GIVEN,
    HISTDATA_CLOCK,
    BarTime,
    CsvColumns,
    FileReport,
    InputFormat,
    M1Rows,
    OnBadRows,
    SourceFile,
    name_from_file,
)
from stage1_ds.data.ingest.stamps import StampEvidence, check_bar_time, stamp_evidence
from stage1_ds.data.ingest.timestamps import EARLIEST_UTC, LATEST_UTC, check_clocks
from stage1_ds.data.ingest.validate import bad_row_reasons, check_parts, clean_m1, overlaps

__all__ = [
    "AS_GIVEN",
    "EARLIEST_UTC",
    "HISTDATA_CLOCK",
    "LATEST_UTC",
    "MAX_INPUT_MB",
    "BarTime",
    "CsvColumns",
    "FileReport",
    "InputFormat",
    "M1Rows",
    "OnBadRows",
    "SourceFile",
    "StampEvidence",
    "bad_row_reasons",
    "check_bar_time",
    "check_clocks",
    "check_parts",
    "clean_m1",
    "discover_inputs",
    "name_from_file",
    "overlaps",
    "read_source",
    "stamp_evidence",
]
