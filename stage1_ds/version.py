"""The code version recorded in manifests, checkpoints and exports."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

#: The package's version (`stage1_ds.__version__`).
__version__ = "0.1.0"
_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    """Output of a git command in this checkout (raises when git or the checkout is missing)."""
    run = subprocess.run(
        ["git", "-C", str(_ROOT), *args], capture_output=True, text=True, timeout=5, check=True
    )
    return run.stdout.strip()


@cache
def code_version() -> str:
    """``<package version>+g<commit>`` inside a git checkout (``.dirty`` when modified), else the version."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}" if commit else __version__
