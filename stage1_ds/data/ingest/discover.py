"""Which files `stage1 prepare` reads and the instrument each belongs to: folders expanded, names read by
one rule (`name_from_file`), zips of several instruments split into their members."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable
from pathlib import Path

from stage1_ds.data.ingest.containers import container_kind, data_members
from stage1_ds.data.ingest.sources import DATA_SUFFIXES, InputFormat, SourceFile, name_from_file
from stage1_ds.errors import DataError

log = logging.getLogger(__name__)


def discover_inputs(paths: Iterable[Path], fmt: InputFormat, instrument: str | None) -> list[SourceFile]:
    """Expand files and folders into `SourceFile`s, each with its instrument name (``instrument``, or from
    the file name by `name_from_file`) and quote side.

    A zip whose members' names name different instruments is one source per member, each under its
    member's name (never one series of several instruments).

    Raises:
        DataError: a path does not exist, a folder holds no data file, a file name leaves no instrument
            name without ``--instrument``, or ``--instrument`` names one zip of several instruments.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES and p.is_file())
            if not found:
                raise DataError(
                    f"{path}: folder holds no data file (expected {', '.join('*' + s for s in DATA_SUFFIXES)})"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    sources = []
    for path in files:
        members = _members_of_instruments(path, fmt, instrument)
        if members:  # the members' names name the instruments, whatever the archive's name says
            sources.extend(members)
            continue
        named = name_from_file(path)
        name = instrument or named.instrument
        if name is None:
            raise DataError(
                f"{path}: the file name holds no instrument name (only numbers, dates, intervals or source "
                "words); pass --instrument"
            )
        sources.append(SourceFile(path=path, instrument=name, format=fmt, side=named.side))
    _note_year_suffixes(sources, instrument)
    return sources


def _note_year_suffixes(sources: list[SourceFile], instrument: str | None) -> None:
    """Files that differ only by numbers (``BTC_2023.csv``, ``BTC_2024.csv``) are one instrument by the
    naming rule: say so, since a user may have meant otherwise."""
    if instrument is not None:
        return
    by_name: dict[str, list[str]] = {}
    for source in sources:
        by_name.setdefault(source.instrument, []).append(source.display.rsplit("/", 1)[-1])
    for name, files in by_name.items():
        if len(files) > 1:
            log.info("%s are one instrument, %s (numbers in file names are dates, not names)", files, name)


def _members_of_instruments(path: Path, fmt: InputFormat, instrument: str | None) -> list[SourceFile]:
    """One source per member of a zip whose members' names name two or more instruments (an archive of
    EURUSD and GBPUSD years); an empty list for any other file (read whole, as one instrument).

    Raises:
        DataError: ``--instrument`` was given for such an archive (naming the members and their names).
    """
    if container_kind(path) != "zip":
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            members = data_members(archive, fmt)
    except (OSError, zipfile.BadZipFile):
        return []  # read_source says what is wrong with it
    names = {member: name_from_file(Path(member)) for member in members}
    instruments = sorted({n.instrument for n in names.values() if n.instrument is not None})
    if len(instruments) < 2:
        return []
    listed = ", ".join(f"{m} ({n.instrument or 'no name'})" for m, n in names.items())
    if instrument is not None or any(n.instrument is None for n in names.values()):
        raise DataError(
            f"{path}: its members name {len(instruments)} instruments ({listed}); one series is one instrument: "
            + (
                "drop --instrument to prepare each member under its own name, or unzip it"
                if instrument is not None
                else "unzip it and give each file to --input under a name that says its instrument"
            )
        )
    log.info("%s holds %d instruments, each read from its own member: %s", path, len(instruments), listed)
    return [
        SourceFile(path=path, instrument=str(n.instrument), format=fmt, side=n.side, member=m)
        for m, n in names.items()
    ]
