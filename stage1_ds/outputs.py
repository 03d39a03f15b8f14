"""Where commands write: checked before any computing, created with the folders above, readable by others.

A command that computes for minutes and then cannot write its report has lost the user's time; each
command calls `claim_file` / `claim_folder` on its outputs first, so a wrong path fails in well under a
second with the path named.
"""

from __future__ import annotations

import os
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
