"""Opening an input: what its bytes are (a zip, gzip, bz2, xz, zstd, Parquet or text, told by their first
bytes whatever the suffix says), compressed text streamed through a cap on its expanded size, and text in
UTF-16 (with a byte-order mark or without) re-encoded as UTF-8."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import re
import zipfile
import zlib
from pathlib import Path
from typing import IO, Protocol

import pandas as pd

from stage1_ds.data.ingest.parquet import read_parquet
from stage1_ds.data.ingest.sources import InputFormat
from stage1_ds.errors import DataError

log = logging.getLogger(__name__)

HISTDATA_NAME = re.compile(r"(?:HISTDATA_COM_ASCII_|DAT_ASCII_)([A-Z0-9]+)_M1", re.IGNORECASE)
BOM = b"\xef\xbb\xbf"

#: The default cap on the expanded size of one compressed table (``--max-input-mb``): a year of 1-minute
#: bars is about 25 MB of text, ten years of klines a few hundred; a small file that expands past this is
#: more likely a mistake (or a decompression bomb) than data, and reading it whole would exhaust memory.
MAX_INPUT_MB = 512
CHUNK = 1 << 20

#: The first bytes of each container, and the suffixes that name it.
MAGIC = {
    "zip": (b"PK\x03\x04", b"PK\x05\x06"),
    "gzip": (b"\x1f\x8b",),
    "bz2": (b"BZh",),
    "xz": (b"\xfd7zXZ\x00",),
    "zstd": (b"\x28\xb5\x2f\xfd",),
    "parquet": (b"PAR1",),
}
SUFFIX_KIND = {
    ".zip": "zip",
    ".gz": "gzip",
    ".bz2": "bz2",
    ".xz": "xz",
    ".zst": "zstd",
    ".parquet": "parquet",
}


class Readable(Protocol):
    """A stream of bytes (a decompressor, a zip member)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def container_kind(path: Path) -> str:
    """What the file's first bytes say it is (`MAGIC`), ``text`` when no container's signature starts it."""
    with path.open("rb") as handle:
        head = handle.read(8)
    return next((kind for kind, marks in MAGIC.items() if head.startswith(marks)), "text")


def kind_of(path: Path) -> str:
    """The container kind, from the bytes; a note when the suffix says another (``.csv`` holding gzip).

    Raises:
        DataError: the suffix names a container and the bytes are none (a cut or mislabelled download).
    """
    kind = container_kind(path)
    named = SUFFIX_KIND.get(path.suffix.lower(), "text")
    if kind == "text" and named != "text":
        what = {"zip": "a zip archive", "parquet": "Parquet"}.get(named, f"{path.suffix} compressed data")
        raise DataError(
            f"{path}: not readable as {what}: its first bytes are not {named}'s signature (a cut download, or "
            "a file of another kind under this name?)"
        )
    if kind != named:
        log.info(
            "%s: its bytes are %s, whatever its suffix %r says: read as %s", path, kind, path.suffix, kind
        )
    return kind


def _zstd_reader(handle: IO[bytes], path: Path) -> Readable:
    """The one place that needs the optional `zstandard` package (``pip install 'stage1_ds[formats]'``)."""
    try:
        import zstandard
    except ImportError:
        raise DataError(
            f"{path}: reading zstd-compressed files needs the zstandard package: pip install 'stage1_ds[formats]'"
        ) from None
    return zstandard.ZstdDecompressor().stream_reader(handle)


def decompressing(kind: str, handle: IO[bytes], path: Path) -> Readable:
    """A stream of the decompressed bytes of ``handle`` (the caller closes it)."""
    if kind == "zstd":
        return _zstd_reader(handle, path)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=handle)
    if kind == "bz2":
        return bz2.BZ2File(handle)
    return lzma.LZMAFile(handle)


def read_capped(stream: Readable, display: str, max_bytes: int) -> bytes:
    """Every byte of a decompressing stream, read a chunk at a time, refused as soon as it passes
    ``max_bytes``: memory stays bounded by the cap, not by what the file expands to.

    Raises:
        DataError: naming the file, the cap and the flag that raises it.
    """
    out = bytearray()
    while chunk := stream.read(CHUNK):
        out += chunk
        if len(out) > max_bytes:
            raise DataError(
                f"{display}: expands past {max_bytes / 2**20:,.0f} MB of text (the cap on one decompressed "
                "file, --max-input-mb); raise --max-input-mb if it really holds that much data, or split it"
            )
    return bytes(out)


def data_members(archive: zipfile.ZipFile, fmt: InputFormat) -> list[str]:
    """The members of a zip that hold bars: its CSV files (HistData's zips hold a notice ``.txt`` beside
    the data; a zip of ``.txt`` tables only is read as those)."""
    names = [n for n in archive.namelist() if n.lower().endswith((".csv", ".txt"))]
    if fmt == InputFormat.HISTDATA:
        names = [n for n in names if HISTDATA_NAME.search(n)] or names
    return sorted([n for n in names if n.lower().endswith(".csv")] or names)


def open_tables(
    path: Path,
    fmt: InputFormat,
    member: str | None = None,
    max_bytes: int = MAX_INPUT_MB << 20,
    timestamp_column: str = "timestamp",
) -> list[tuple[bytes | pd.DataFrame, str]]:
    """The tables inside a file, with display names (``zip!member`` for a member of a zip): raw text bytes,
    or a DataFrame for Parquet. The container is told by the file's bytes; compressed text (and every
    member of a zip) expands through `read_capped`.

    Args:
        member: read only this member of a zip (an archive of several instruments, split by
            `discover_inputs`).
        timestamp_column: the time column asked for, for Parquet files whose index is a time too.

    Raises:
        DataError: the file is corrupt, a zip holds no CSV, or a table expands past ``max_bytes``.
    """
    kind = kind_of(path)
    try:
        if kind == "parquet":
            return [(read_parquet(path, timestamp_column), str(path))]
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                names = [member] if member is not None else data_members(archive, fmt)
                if not names:
                    raise DataError(f"{path}: zip holds no CSV file")
                tables = []
                for name in names:
                    with archive.open(name) as stream:
                        tables.append((read_capped(stream, f"{path}!{name}", max_bytes), f"{path}!{name}"))
                return tables
        if kind == "text":
            return [(path.read_bytes(), str(path))]
        with path.open("rb") as handle:
            expanded = decompressing(kind, handle, path)
            try:
                return [(read_capped(expanded, str(path), max_bytes), str(path))]
            finally:
                expanded.close()
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError, zlib.error) as error:
        what = {"zip": "a zip archive", "parquet": "Parquet"}.get(kind, f"{kind}-compressed data")
        raise DataError(f"{path}: not readable as {what}: {error}") from None
    except ValueError as error:  # bz2 and zstandard report corrupt data as ValueError
        raise DataError(f"{path}: not readable as {kind}-compressed data: {error}") from None


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UTF32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")
#: Bytes looked at to tell UTF-16 without a byte-order mark: ASCII text in UTF-16 has a zero in every
#: other byte, which no UTF-8 text (and no number or date) has.
UTF16_SAMPLE = 4096


def utf16_without_bom(raw: bytes) -> str | None:
    """``utf-16-le`` or ``utf-16-be`` when at least 90% of the odd (or even) bytes of the file's start
    are zero and almost none of the others; None otherwise."""
    sample = raw[: UTF16_SAMPLE - UTF16_SAMPLE % 2]
    if len(sample) < 16:
        return None
    even, odd = sample[0::2], sample[1::2]
    zeros_even, zeros_odd = even.count(0) / len(even), odd.count(0) / len(odd)
    if zeros_odd >= 0.9 and zeros_even < 0.05:
        return "utf-16-le"
    if zeros_even >= 0.9 and zeros_odd < 0.05:
        return "utf-16-be"
    return None


def as_utf8(raw: bytes, display: str = "") -> bytes:
    """UTF-16 text (with its byte-order mark, as some Windows tools export, or without: told by its zero
    bytes, with a note) and UTF-32 (with its mark) re-encoded as UTF-8; other bytes unchanged.

    Raises:
        DataError: text that looks like UTF-16 does not decode as it.
    """
    if raw.startswith(UTF32_BOMS):  # before UTF-16: UTF-32LE's mark starts with UTF-16LE's
        encoding = "utf-32"
    elif raw.startswith(UTF16_BOMS):
        encoding = "utf-16"
    else:
        found = utf16_without_bom(raw)
        if found is None:
            return raw
        encoding = found
        log.info("%s: text in %s without a byte-order mark: re-encoded as UTF-8", display, encoding.upper())
    try:
        return raw.decode(encoding).encode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{display}: looks like {encoding.upper()} text but does not decode: {error}"
        ) from None
