"""Opening an input: the tables inside a zip, compressed text (gzip, bz2, xz, zstd), Parquet, and text in
UTF-16 re-encoded as UTF-8."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import zipfile
import zlib
from pathlib import Path

import pandas as pd

from stage1_ds.data.ingest.parquet import read_parquet
from stage1_ds.data.ingest.sources import InputFormat
from stage1_ds.errors import DataError

HISTDATA_NAME = re.compile(r"(?:HISTDATA_COM_ASCII_|DAT_ASCII_)([A-Z0-9]+)_M1", re.IGNORECASE)
BOM = b"\xef\xbb\xbf"


def decompress_zstd(data: bytes, path: Path) -> bytes:
    """The one place that needs the optional `zstandard` package (``pip install 'stage1_ds[formats]'``)."""
    try:
        import zstandard
    except ImportError:
        raise DataError(
            f"{path}: reading .zst files needs the zstandard package: pip install 'stage1_ds[formats]'"
        ) from None
    return bytes(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read())


DECOMPRESS = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}


def open_tables(path: Path, fmt: InputFormat) -> list[tuple[bytes | pd.DataFrame, str]]:
    """The tables inside a file, with display names (``zip!member`` for a member of a zip): raw CSV bytes,
    or a DataFrame for Parquet.

    Raises:
        DataError: the file is corrupt or of a kind its suffix does not say, or a zip holds no CSV.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return [(read_parquet(path), str(path))]
        if suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.lower().endswith((".csv", ".txt"))]
                if fmt == InputFormat.HISTDATA:  # the zips hold a notice .txt beside the data
                    names = [n for n in names if HISTDATA_NAME.search(n)] or names
                names = [n for n in names if n.lower().endswith(".csv")] or names
                if not names:
                    raise DataError(f"{path}: zip holds no CSV file")
                return [(archive.read(n), f"{path}!{n}") for n in sorted(names)]
        data = path.read_bytes()
        if suffix in DECOMPRESS:
            return [(DECOMPRESS[suffix](data), str(path))]
        if suffix == ".zst":
            return [(decompress_zstd(data, path), str(path))]
        return [(data, str(path))]
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError, zlib.error) as error:
        kind = {".zip": "a zip archive", ".parquet": "Parquet"}.get(suffix, f"{suffix} compressed data")
        raise DataError(f"{path}: not readable as {kind}: {error}") from None
    except ValueError as error:  # bz2 and zstandard report corrupt data as ValueError
        raise DataError(f"{path}: not readable as {suffix} compressed data: {error}") from None


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def as_utf8(raw: bytes) -> bytes:
    """UTF-16 text (with its byte-order mark, as some Windows tools export) re-encoded as UTF-8."""
    return raw.decode("utf-16").encode("utf-8") if raw.startswith(UTF16_BOMS) else raw
