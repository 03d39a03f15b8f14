"""Where commands write: checked before any computing, created with the folders above, readable by others;
and only what the tool made is ever replaced or removed.

A command that computes for minutes and then cannot write its report has lost the user's time; each
command calls `claim_file` / `claim_folder` on its outputs first, so a wrong path fails in well under a
second with the path named.

Every folder the tool makes (a prepared folder, a run, an export, their ``.partial`` staging folders)
holds `MARK`, a small JSON naming the command that made it and the files it wrote. ``--force`` replaces
those files only, in a folder that carries the mark, and leaves whatever else the user put there; a folder
without the mark is refused, never emptied (`replace_own_files`, `remove_own_folder`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from stage1_ds.errors import Stage1Error


class OutputError(Stage1Error):
    """An output path cannot be written (a file where a folder should be, no permission, a full disk...)."""


def claim_folder(folder: Path, what: str) -> Path:
    """Create ``folder`` (and the folders above it) and check a file can be written in it.

    Args:
        what: the option or role of the path, for the message (``--json``, ``--out``).

    Raises:
        OutputError: naming ``what`` and the path, and why.
    """
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"{what} {folder}: {blocking} is a file, where a folder is expected")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{what} {folder}: cannot create this folder ({error.strerror})") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stage1-write-check-"):
            pass
    except OSError as error:
        raise OutputError(f"{what} {folder}: cannot write in this folder ({error.strerror})") from None
    return folder


def claim_file(path: Path, what: str) -> Path:
    """Create the folders above ``path`` and check it can be written (replaced, if it exists).

    Raises:
        OutputError: naming ``what`` and the path, and why.
    """
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder; expected a file name (e.g. {path / 'report.json'})")
    claim_folder(path.parent, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path}: exists and cannot be overwritten (permission denied)")
    return path


def make_readable(folder: Path) -> None:
    """Give every file in ``folder`` the mode a new file gets under the process's umask (0644 under the
    usual 022): some writers (safetensors' atomic save) create theirs 0600, which other users of a shared
    node cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


#: The file that says a folder was made by this tool, by which command, and which of its files it wrote.
MARK = ".stage1_ds.json"


def mark_folder(folder: Path, made_by: str, files: list[str] | None = None) -> None:
    """Write `MARK` into ``folder``: made by ``made_by`` (a command), with the files (relative paths, top
    level: a folder counts as one) it wrote; None: every entry now in the folder but the mark."""
    written = files if files is not None else sorted(p.name for p in folder.iterdir() if p.name != MARK)
    (folder / MARK).write_text(json.dumps({"made_by": made_by, "files": written}, indent=2) + "\n")


def made_by(folder: Path) -> str | None:
    """The command that made ``folder`` (its `MARK`), or None for a folder the tool did not make."""
    try:
        return str(json.loads((folder / MARK).read_text())["made_by"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _not_ours(folder: Path, what: str, expected: str) -> OutputError:
    return OutputError(
        f"{what} {folder}: exists and was not made by {expected} (it has no {MARK} naming it), so nothing "
        "in it is replaced or removed: choose another path, or move it away yourself"
    )


def replace_own_files(folder: Path, what: str, expected: str) -> None:
    """Remove the files ``expected`` (a command) wrote into ``folder`` before it writes them again, and
    nothing else; a folder that does not carry its mark is refused.

    Raises:
        OutputError: the folder was not made by ``expected``.
    """
    if made_by(folder) != expected:
        raise _not_ours(folder, what, expected)
    record = json.loads((folder / MARK).read_text())
    for name in record.get("files", []):
        path = folder / name
        if path.parent != folder or name in ("", ".", ".."):  # a name that leaves the folder is not ours
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    (folder / MARK).unlink()


def remove_own_folder(folder: Path, what: str, expected: str) -> None:
    """Remove ``folder`` whole if ``expected`` made it (a staging folder left by an interrupted run);
    nothing if it does not exist.

    Raises:
        OutputError: it exists and was not made by ``expected``.
    """
    if not folder.exists() and not folder.is_symlink():
        return
    if made_by(folder) != expected:
        raise _not_ours(folder, what, expected)
    shutil.rmtree(folder)
