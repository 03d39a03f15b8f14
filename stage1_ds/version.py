"""The code version recorded in manifests, checkpoints and exports."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

from stage1_ds import __version__


@cache
def code_version() -> str:
    """``<package version>+g<commit>`` inside a git checkout (``.dirty`` when modified), else the version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}" if commit else __version__
